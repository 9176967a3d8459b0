//! `agent` binary (being built).
fn main() {}
