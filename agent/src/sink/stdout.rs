//! Stdout sink (being built).
