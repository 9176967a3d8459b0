//! Every cap the controller enforces, in one place (issue 10 item 1).
//!
//! Job specs are bounded by [`meshlat_proto::job`] (the one validator, run for REST, gRPC, the
//! CLI, federation peers' jobs and the saved state). The controller's own caps are flags of
//! `controller serve`, collected in [`Limits`]; each refusal names the field and the flag:
//!
//! | flag | default | what happens at the cap |
//! | --- | --- | --- |
//! | `--max-jobs` | [`DEFAULT_MAX_JOBS`] | a new job is refused (`resource_exhausted`, HTTP 429, gRPC `RESOURCE_EXHAUSTED`); stopped jobs count until they expire |
//! | `--stopped-job-ttl` | [`DEFAULT_STOPPED_JOB_TTL`] | a stopped job is deleted this long after it was stopped |
//! | `--max-agents` | [`DEFAULT_MAX_AGENTS`] | a new agent id is refused (`RESOURCE_EXHAUSTED`); known ids reconnect |
//! | `--max-agents-per-token` | [`DEFAULT_MAX_AGENTS_PER_TOKEN`] | as `--max-agents`, per join token |
//! | `--agent-expiry` | [`DEFAULT_AGENT_EXPIRY`] | an agent not heard from this long is removed from the directory, the matrix and the saved state |
//! | `--max-summary-bytes` | [`DEFAULT_MAX_SUMMARY_BYTES`] | an agent's summaries are cut to the pairs that fit |
//! | `--max-live-pairs` | [`DEFAULT_MAX_LIVE_PAIRS`] | pairs beyond it (over all agents) are dropped |
//! | `--max-live-bytes` | [`DEFAULT_MAX_LIVE_BYTES`] | as `--max-live-pairs`, in bytes |
//! | `--max-peer-agents` | [`DEFAULT_MAX_PEER_AGENTS`] | a peer's directory is cut to this many agents per exchange |
//! | `--max-peer-jobs` | [`DEFAULT_MAX_PEER_JOBS`] | a peer's jobs beyond this many per exchange are ignored |
//! | `--max-peer-summary-pairs` | [`DEFAULT_MAX_PEER_SUMMARY_PAIRS`] | live summary pairs of our agents sent to a peer per exchange, and kept from one peer, are cut to this many (they count against `--max-live-pairs` and `--max-live-bytes` too) |
//!
//! Summary sizes are accounted as each pair's encoded size plus [`PAIR_OVERHEAD`] bytes (what
//! a decoded pair costs in memory besides its strings).
//!
//! Messages are bounded on the wire too: an agent's messages by [`agent_message_limit`], the
//! federation exchange by [`FEDERATION_MESSAGE_BYTES`], and clients decode operator answers up
//! to [`CLIENT_MESSAGE_BYTES`] (a job list of the largest `--max-jobs` jobs of
//! [`meshlat_proto::job::MAX_SPEC_BYTES`] fits).

use std::time::Duration;

/// Default `--max-jobs`.
pub const DEFAULT_MAX_JOBS: usize = 1_000;
/// Largest `--max-jobs`: a job list of that many of the largest jobs fits
/// [`CLIENT_MESSAGE_BYTES`].
pub const MAX_MAX_JOBS: usize = 2_000;
/// Default `--stopped-job-ttl` (7 days).
pub const DEFAULT_STOPPED_JOB_TTL: Duration = Duration::from_secs(7 * 86_400);
/// Default `--max-agents`.
pub const DEFAULT_MAX_AGENTS: usize = 20_000;
/// Default `--max-agents-per-token`.
pub const DEFAULT_MAX_AGENTS_PER_TOKEN: usize = 20_000;
/// Default `--agent-expiry` (24 h).
pub const DEFAULT_AGENT_EXPIRY: Duration = Duration::from_secs(86_400);
/// Default `--max-summary-bytes` per agent.
pub const DEFAULT_MAX_SUMMARY_BYTES: usize = 256 * 1024;
/// Default `--max-live-pairs`.
pub const DEFAULT_MAX_LIVE_PAIRS: usize = 250_000;
/// Default `--max-live-bytes`.
pub const DEFAULT_MAX_LIVE_BYTES: usize = 128 * 1024 * 1024;
/// Default `--max-peer-agents`.
pub const DEFAULT_MAX_PEER_AGENTS: usize = 20_000;
/// Default `--max-peer-jobs`.
pub const DEFAULT_MAX_PEER_JOBS: usize = 1_000;
/// Default `--max-peer-summary-pairs`.
pub const DEFAULT_MAX_PEER_SUMMARY_PAIRS: usize = 50_000;
/// Memory a summary pair costs besides its encoded bytes (struct and allocations).
pub const PAIR_OVERHEAD: usize = 192;
/// Largest federation `Directory` decoded (both directions).
pub const FEDERATION_MESSAGE_BYTES: usize = 96 * 1024 * 1024;
/// Largest operator answer the `controller` client commands decode.
pub const CLIENT_MESSAGE_BYTES: usize = 96 * 1024 * 1024;

/// Most job acknowledgement statuses ([`meshlat_proto::pb::JobStatuses`] entries) a federation
/// directory carries, and a receiver keeps from one peer: the statuses of the sender's agents
/// for other controllers' jobs (entries beyond are left out, with a warning).
pub const MAX_EXCHANGE_JOB_STATUSES: usize = 100_000;

/// Most peer regions (directories) kept at once; a directory from one more is refused.
pub const MAX_PEER_REGIONS: usize = 256;

/// Most endpoints an agent may advertise in its Hello.
pub const MAX_HELLO_ENDPOINTS: usize = 16;
/// Most capabilities in a Hello.
pub const MAX_HELLO_CAPABILITIES: usize = 32;
/// Most bytes of a Hello's region, az, location, version, capability or endpoint address.
pub const MAX_HELLO_FIELD_BYTES: usize = 256;

/// The caps of one controller (flags of `controller serve`; see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `--max-jobs`.
    pub max_jobs: usize,
    /// `--stopped-job-ttl`.
    pub stopped_job_ttl: Duration,
    /// `--max-agents`.
    pub max_agents: usize,
    /// `--max-agents-per-token`.
    pub max_agents_per_token: usize,
    /// `--agent-expiry`.
    pub agent_expiry: Duration,
    /// `--max-summary-bytes`.
    pub max_summary_bytes: usize,
    /// `--max-live-pairs`.
    pub max_live_pairs: usize,
    /// `--max-live-bytes`.
    pub max_live_bytes: usize,
    /// `--max-peer-agents`.
    pub max_peer_agents: usize,
    /// `--max-peer-jobs`.
    pub max_peer_jobs: usize,
    /// `--max-peer-summary-pairs`.
    pub max_peer_summary_pairs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_jobs: DEFAULT_MAX_JOBS,
            stopped_job_ttl: DEFAULT_STOPPED_JOB_TTL,
            max_agents: DEFAULT_MAX_AGENTS,
            max_agents_per_token: DEFAULT_MAX_AGENTS_PER_TOKEN,
            agent_expiry: DEFAULT_AGENT_EXPIRY,
            max_summary_bytes: DEFAULT_MAX_SUMMARY_BYTES,
            max_live_pairs: DEFAULT_MAX_LIVE_PAIRS,
            max_live_bytes: DEFAULT_MAX_LIVE_BYTES,
            max_peer_agents: DEFAULT_MAX_PEER_AGENTS,
            max_peer_jobs: DEFAULT_MAX_PEER_JOBS,
            max_peer_summary_pairs: DEFAULT_MAX_PEER_SUMMARY_PAIRS,
        }
    }
}

/// Largest `AgentMessage` an agent session decodes: the larger of what agents send
/// ([`meshlat_proto::MAX_SUMMARIES_BYTES`]) and `--max-summary-bytes`, and 64 KiB of room. A
/// bigger message ends the session with `RESOURCE_EXHAUSTED` before its bytes are buffered (a
/// message is held only while it arrives and is decoded, [`crate::grpc::inbound`], so this
/// bounds what one session holds at a time); pairs beyond `--max-summary-bytes` in a message
/// that fits are dropped.
pub fn agent_message_limit(max_summary_bytes: usize) -> usize {
    max_summary_bytes.max(meshlat_proto::MAX_SUMMARIES_BYTES) + 64 * 1024
}
