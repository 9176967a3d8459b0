//! meshlat controller (skeleton).
//!
//! The control plane — agent sessions, jobs, federation, operator API — arrives with its own
//! issue; this crate currently provides the command-line contract of DESIGN §2 so that `--help`
//! documents what will be served.
//!
//! # Layout
//!
//! - [`cli`]: the command-line definition.

pub mod cli;
