//! scheduler (being built).
