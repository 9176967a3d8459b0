//! Connection hygiene shared by every meshlat listener (controller gRPC and REST, agent HTTP,
//! HTTPS and stats servers): nothing anonymous can hold a socket for long or take them all.
//!
//! The defences, in the order a connection meets them:
//!
//! 1. **Caps at accept** ([`GuardedListener`], [`Tracker`]): a connection over the total cap or
//!    its source address's cap is closed at once, counted and logged (a summary line at most
//!    every [`WARN_EVERY`]); it is never queued, so a flood cannot push the process to its file
//!    descriptor limit or make honest clients wait behind it.
//! 2. **TLS handshake deadline** ([`incoming`]): handshakes run concurrently, each within
//!    [`ConnLimits::handshake_timeout`]; a client that connects and says nothing is closed then.
//! 3. **Header deadline**: for HTTP/1.1, hyper's `header_read_timeout` (the servers set it);
//!    for HTTP/2 (gRPC) [`Guarded`] watches the frames and closes a connection whose first
//!    request head has not fully arrived within [`ConnLimits::header_timeout`] of the handshake
//!    ([`H2FirstHeaders`]).
//! 4. **Idle deadline** ([`Guarded`]): a connection with no bytes moving either way for
//!    [`ConnLimits::idle_timeout`] is closed.
//! 5. **Request rates** ([`RateLimitLayer`]): a tower layer with token buckets per source
//!    address and per credential, answering `429` with `Retry-After` (REST, via [`Reject`]) or
//!    `RESOURCE_EXHAUSTED` with `retry-after` metadata (gRPC, [`GrpcReject`] with the `tonic`
//!    feature). It wraps any `http` service, so tonic services and an HTTP router share it.
//!
//! # Layout
//!
//! - [`limits`]: [`ConnLimits`], the per-listener [`Tracker`] and its [`Slot`]s.
//! - [`io`]: [`Guarded`], the stream wrapper enforcing the header and idle deadlines.
//! - [`accept`]: [`GuardedListener`] and [`incoming`] (accept + concurrent handshakes).
//! - [`rate`]: token buckets, [`RateLimiter`] and the tower layer.
//! - [`tls`]: [`signatures_checked_by!`], the signature checks of custom rustls verifiers.
//! - `cli` (`clap` feature): the deadline flags both binaries take.
//! - `stats` (`stats` feature): the stats server both binaries run (`/health`, `/memstats`, and
//!   each binary's own routes) on a guarded listener.

pub mod accept;
#[cfg(feature = "clap")]
pub mod cli;
pub mod io;
pub mod limits;
pub mod rate;
#[cfg(feature = "stats")]
pub mod stats;
pub mod tls;

pub use accept::{GuardedListener, incoming};
pub use io::{Guarded, H2FirstHeaders};
pub use limits::{
    Closed, ConnLimits, ConnStats, EventHook, Refused, Slot, Tracker, WARN_EVERY, open_files_limit,
};
#[cfg(feature = "tonic")]
pub use rate::GrpcReject;
pub use rate::{
    Limited, PeerAddr, Quota, RateLimit, RateLimitLayer, RateLimiter, Reject, RetryAfter,
};
