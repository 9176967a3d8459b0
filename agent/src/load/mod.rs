//! HTTP load from one agent (issue 15). `agent load` runs it from the command line; under a
//! controller, `"kind":"load"` jobs run it ([`job`] converts them, [`runner`] runs them and
//! writes a `kind = load` record per second, [`record`]).
//!
//! Two models, as wrk/wrk2 and k6's executors have them:
//!
//! - **closed**: N workers, one keep-alive connection each, looping request → response
//!   (→ think time). Stepped: `start`, `step`, `steps`, `step duration` (10 → 50 workers in 5
//!   steps of 10 s).
//! - **open**: an arrival rate (req/s), constant or stepped. Requests are scheduled at intended
//!   send times and taken by whichever connection is free (more are opened, up to the cap, when
//!   none is); latency is measured from the **intended** time (corrected for coordinated
//!   omission, as wrk2) and also from the actual send (uncorrected) — see [`stats`].
//!
//! Per-agent caps on connections and rate hold whatever a run asks for. A running engine's
//! level can be changed ([`LoadHandle::set_level`]) and it can be stopped
//! ([`LoadHandle::stop`]); both take effect at once. Each second yields a [`SecondReport`]:
//! intended and achieved rate, responses by status class (429 as rate-limited), errors by kind,
//! p50/p90/p99/p99.9/max corrected and uncorrected, workers, step; histograms merge into step
//! and run summaries.
//!
//! # Layout
//!
//! - [`plan`]: the stepped schedule, caps and the open model's pacer (sans-IO).
//! - [`stats`]: samples → per-second tallies, status classes, latency histograms (sans-IO).
//! - [`credentials`]: `key:secret` files, basic auth, redaction.
//! - [`mix`]: the request mix (weighted requests, `{{KNOB}}` templates, expected statuses; sans-IO).
//! - [`client`]: one keep-alive HTTP/1.1 connection (the prober's hyper/rustls stack).
//! - [`engine`]: the run task and workers; [`LoadEngine`], [`LoadHandle`].
//! - [`live`]: [`LoadReporter`], each second to the controller's live view and the metrics.
//! - [`config`]: `agent load`'s flags validated; [`report`]: its text output;
//!   [`command`]: bind + run.
//! - [`job`]: a controller's load assignments into engine runs, within the agent's caps
//!   ([`job::LoadLimits`]); [`runner`]: starts, updates in place, restarts and stops them;
//!   [`record`]: a second's report as a `kind = load` record; [`secrets`]: credentials from
//!   AWS Secrets Manager.

pub mod client;
pub mod command;
pub mod config;
pub mod credentials;
pub mod engine;
pub mod job;
pub mod live;
pub mod mix;
pub mod plan;
pub mod record;
pub mod report;
pub mod runner;
pub mod secrets;
pub mod stats;

pub use self::engine::{LoadEngine, LoadHandle, LoadSpec, LoadSummary, StepSummary};
pub use self::live::LoadReporter;
pub use self::stats::SecondReport;
