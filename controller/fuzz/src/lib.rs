//! The controller's JSON job-spec parser, compiled from its own source file (not a copy):
//! `json` is `controller/src/json.rs`. It depends only on serde, serde_json and meshlat-proto,
//! so the fuzz target builds without the controller's runtime; a change that makes it depend on
//! the rest of the controller fails this build — keep it self-contained.
#![allow(dead_code, missing_docs, unused_imports)]

#[path = "../../src/json.rs"]
pub mod json;
