//! File sink (being built).
