//! Running under a controller (`agent run`, DESIGN §3).
//!
//! # Layout
//!
//! - [`session`]: the session task: connect, Hello, job sets into the scheduler (and load jobs
//!   into the load runner, [`crate::load::runner`]), acks, heartbeats, reconnects.
//! - [`status`]: the session's state and the controller's last refusal, for `GET /status`.
//! - [`state`]: what `--state-dir` keeps (agent id, last job set, key and certificate;
//!   0700/0600).
//! - [`identity`]: the agent's key pair and the client certificate its controller issued.
//! - [`failstatic`]: the control mode (`connected`, `static`, `degraded`) and the lease.
//! - [`advertise`]: the advertised responder endpoints (`--advertise-endpoint`).
//! - [`convert`]: controller assignments into scheduler jobs (load jobs:
//!   [`crate::load::job`]).
//! - [`pin`]: TLS pinned by the join token, and the gRPC channel.
//! - [`ecs`]: region, AZ and address on ECS from the task metadata endpoint.
//! - [`config`]: `agent run`'s validated configuration ([`config::RunConfig`]).
//! - [`run`]: [`run::RunApp`], `bind` + `run` for the whole agent.

pub mod advertise;
pub mod config;
pub mod convert;
pub mod ecs;
pub mod failstatic;
pub mod identity;
pub mod pin;
pub mod run;
pub mod session;
pub mod state;
pub mod status;
