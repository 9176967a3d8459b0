//! meshlat controller: assigns probe jobs to the agents of one region (DESIGN §3).
//!
//! # Layout
//!
//! - [`cli`]: the command line; [`config`]: validated configuration.
//! - [`address_policy`]: which addresses agents may advertise (`--agent-cidr`).
//! - [`app`]: [`app::Controller`]: `bind` (listeners, CA, credentials, state) and `run`.
//! - [`audit`]: the audit log of state-changing operator calls (target `audit`).
//! - [`auth`]: the controller's CA, server certificate, join token and operator credentials.
//! - [`store`]: the [`store::StateStore`] trait and its file implementation;
//!   [`store::mirror`] keeps the data directory (CA, credentials, state) in an S3 prefix
//!   ([`store::s3`], the only module using the AWS S3 SDK).
//! - [`aws`]: the AWS SDK setup (TLS, retries, timeouts) of the S3 and Secrets Manager clients.
//! - [`publish`]: writes the join token and the CA certificate into Secrets Manager
//!   (`--join-token-secret-arn`, `--ca-cert-secret-arn`; the only module using its SDK).
//! - [`identity`]: per-agent identities: client certificates from the CA, who may speak for an id.
//! - [`federation`]: exchanging directories and jobs with peer controllers.
//! - [`fsutil`]: durable file replacement (temporary file, fsync, rename, directory fsync),
//!   re-exported from [`meshlat_proto::fsutil`] (the agent's state files use it too).
//! - [`keys`]: the mesh wire key, the controller's Ed25519 relay-grant signing key (kept in
//!   the data directory, never sent), and grant expiry.
//! - [`limits`]: every cap (`--max-*` flags, expiries, message sizes) in one place.
//! - [`load_policy`]: where load jobs may send (`--load-allow`), checked for every load job
//!   scheduled, a peer's included.
//! - [`relay_policy`]: which agents are relays (`--relay-agent`), whatever they claim.
//! - [`live`]: agents' rolling summaries and the latency matrix.
//! - [`loadlive`]: agents' load seconds merged per job, step and region (load jobs' live view).
//! - [`metrics`]: the Prometheus registry served on `--stats-port` at `/metrics`.
//! - [`registry`]: the domain layer: jobs, the agent directory and federation, sessions; its
//!   recompute rounds push job sets, held encoded ([`jobset`]).
//! - [`pinglist`]: pinglists, i.e. which agent measures what (`full`, `per-region`,
//!   `k-random`, relays), pure functions.
//! - [`grpc`]: `AgentService`, `OperatorService`, interceptors, `Status` mapping.
//! - [`scenarios`]: the `--scenarios` directory of load-job scenarios, re-read when it changes,
//!   and the hook filling a load job's requests from one.
//! - [`rest`]: the REST/JSON mirror under `/api/v1`; [`json`]: the JSON form of jobs.
//! - [`client`]: `controller job ...` and `controller agents`.
//! - [`ui`]: the web dashboard's embedded files and the security headers of the REST listener.

pub mod address_policy;
pub mod app;
pub mod audit;
pub mod auth;
pub mod aws;
pub mod cli;
pub mod client;
pub mod config;
pub mod federation;
pub use meshlat_proto::fsutil;
pub mod grpc;
pub mod identity;
pub mod jobset;
pub mod json;
pub mod keys;
pub mod limits;
pub mod live;
pub mod load_policy;
pub mod loadlive;
pub mod metrics;
pub mod pinglist;
pub mod publish;
pub mod registry;
pub mod relay_policy;
pub mod rest;
pub mod scenarios;
pub mod store;
pub mod ui;
