//! The agent's decoders of untrusted bytes, compiled from the agent's own source files (not
//! copies): `wire` is `agent/src/udp/wire.rs`, `spool` is
//! `agent/src/sink/firehose/spool.rs`. Both depend only on std and small crates, so the fuzz
//! targets build without the agent's runtime. A change that makes either file depend on the rest
//! of the agent fails this build — keep them self-contained (they are the parts that read bytes
//! from the network and the disk).
#![allow(dead_code, missing_docs, unused_imports)]

#[path = "../../src/udp/wire.rs"]
pub mod wire;

#[path = "../../src/sink/firehose/spool.rs"]
pub mod spool;
