//! What meshlat's agent and controller must agree on.
//!
//! # Layout
//!
//! - [`pb`]: prost messages and tonic clients/servers generated from `meshlat/v1/*.proto`, plus
//!   [`FILE_DESCRIPTOR_SET`] for gRPC reflection.
//! - [`record`]: the measurement record (one JSON object per line) and its machine-readable
//!   field table [`record::FIELDS`], from which the Athena DDL and README's table are checked.
//! - [`job`]: job-spec validation shared by the controller (which refuses bad specs) and the
//!   agent (which never trusts what it is sent).
//! - [`scenario`]: load-job scenario files (weighted requests, knobs) parsed and resolved into
//!   a load job's requests; the `{{NAME}}` templates.
//! - [`backoff`]: the jittered exponential backoff of every retry loop.
//! - [`token`]: the join token (CA pin + agent secret) printed by a controller.
//! - [`grant`]: relay grants, signed by controllers (or a shared key) and verified by relays.
//! - [`sketch`]: the mergeable RTT histogram of live summaries, and the one nearest-rank
//!   percentile.
//! - [`state_file`]: the version header of binary state files (migrate old, refuse newer).
//! - [`fsutil`]: durable file replacement (temporary file, fsync, rename, directory fsync), for
//!   the controller's data directory and the agent's state directory.

pub mod backoff;
pub mod fsutil;
pub mod grant;
pub mod job;

/// Largest encoded `Summaries` message an agent sends (it sends the pairs that fit); the
/// controller decodes agent messages up to this and some room, and keeps at most its
/// `--max-summary-bytes` of each agent's pairs.
pub const MAX_SUMMARIES_BYTES: usize = 512 * 1024;
/// Largest encoded `LoadReports` message an agent sends (it sends the queued load seconds
/// that fit, the rest in the next message); within the controller's agent-message limit.
pub const MAX_LOAD_REPORTS_BYTES: usize = 256 * 1024;
pub mod record;
pub mod scenario;
pub mod sketch;
pub mod state_file;
pub mod token;

/// Generated protobuf and gRPC code for package `meshlat.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic, rust_2018_idioms)]
pub mod pb {
    tonic::include_proto!("meshlat.v1");
}

/// The encoded `FileDescriptorSet` of every meshlat proto file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/meshlat_descriptor.bin"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_set_decodes_and_names_every_service() {
        let fds = <prost_types::FileDescriptorSet as prost::Message>::decode(FILE_DESCRIPTOR_SET)
            .expect("descriptor set built by build.rs must decode");
        let services: Vec<String> = fds
            .file
            .iter()
            .flat_map(|f| f.service.iter().map(|s| s.name().to_string()))
            .collect();
        for want in ["AgentService", "OperatorService", "FederationService"] {
            assert!(
                services.iter().any(|s| s == want),
                "{want} missing from {services:?}"
            );
        }
    }
}
