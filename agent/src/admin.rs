//! admin (being built).
