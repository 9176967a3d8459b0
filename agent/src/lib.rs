//! meshlat agent: responders, probers, scheduler and sinks.
//!
//! An agent answers probes (`agent serve`), takes measurements (`agent probe`, or jobs from a
//! controller) and writes one [`Record`](meshlat_proto::record::Record) per measurement to its
//! sinks.
//!
//! # Layout
//!
//! - [`clock`]: the process clock (monotonic, wall-clock timebase) and clock error bounds.
//! - [`target`]: parsing `proto://host:port` and URL targets.
//! - [`local_addr`]: this host's source address toward a target (`agent probe`'s default
//!   `src_location`, as perftest's From_Location).
//! - [`probe`]: one module per protocol behind [`probe::ProbeRunner`]; sans-IO timing cores.
//! - [`respond`]: UDP reflector, TCP, QUIC and HTTP(S) responders.
//! - [`udp`]: the UDP protocol both use: wire format, relay grants, socket calls, stamp mapping.
//! - [`scheduler`]: runs a watched job set: intervals, timeouts, records, fan-out to sinks.
//! - [`sink`]: the sink trait, batching, stdout (table/JSON) and file sinks.
//! - [`load`]: HTTP load (`agent load`): closed and open models, stepped, with latency
//!   corrected for coordinated omission; the foundation of load jobs.
//! - [`live`]: the agent's side of the live view (the controller's `live` module): rolling
//!   per-pair summaries (p50, p99, loss, RTT histogram) sent to the controller.
//! - [`metrics`]: the Prometheus registry and the events that count drops and errors.
//! - [`admin`]: the `-s PORT` server: `/health`, `/metrics`, `/memstats`.
//! - [`tls`]: rustls configuration (one provider: ring).
//! - [`control`]: running under a controller: session, fail-static, ECS identity.
//! - [`cli`]: the command line; [`config`]: validated configuration; [`app`]: bind + run.

pub mod admin;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod live;
pub mod load;
pub mod local_addr;
pub mod metrics;
pub mod probe;
pub mod respond;
pub mod scheduler;
pub mod sink;
pub mod target;
pub mod tls;
pub mod udp;

/// This agent's version, as written in records.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
