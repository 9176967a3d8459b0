//! The Firehose sink: records to an Amazon Data Firehose stream, packed, retried and spooled.
//!
//! Split as in Vector's `aws_kinesis` sinks (STYLE §5):
//!
//! - [`config`]: the validated settings and the `--firehose-*`/`--spool-*` flags' validation.
//! - [`FirehoseSink`] (`sink.rs`) is the [`Sink`](crate::sink::Sink): it *encodes* each record
//!   as one NDJSON line and hands lines to the dispatcher task through a bounded channel.
//! - The dispatcher (`dispatcher.rs`) owns sealed batches until delivered: delivery state,
//!   backoff and bounds (below).
//! - [`request`] *packs* lines into Firehose records (up to 1,000 KiB) and records into
//!   `PutRecordBatch` requests (up to 500 records, 4 MiB); a request is sealed when full or when
//!   its oldest line is older than the batch age.
//! - [`retry`] *classifies* failures and answers: delivered, resend only the failed records,
//!   throttled, outage, or rejected for good.
//! - [`client`] is the *transport*: the [`client::FirehoseApi`] trait and the AWS SDK adapter.
//! - [`spool`] keeps batches on disk during outages and across restarts.
//!
//! # Delivery
//!
//! The dispatcher task owns every sealed batch until Firehose accepts all of its records
//! (at-least-once; `record_id` makes duplicates removable). Batches are sent oldest first with at
//! most `max_in_flight` requests in flight. Outcomes:
//!
//! - **Delivered**: the batch is dropped from memory and its spool file, if any, deleted (the ack).
//! - **Partial failure** (`FailedPutCount > 0`): only the failed records are resent, after a
//!   jittered exponential backoff; a spooled batch is rewritten with just those records.
//! - **Errored**, transient (5xx): the batch is retried after a backoff.
//! - **Throttled**: the whole sink pauses with a growing backoff. It slows down, never drops:
//!   batches wait in memory, then in the spool.
//! - **Outage** (connect failures, timeouts): every batch in memory is written to the spool,
//!   new batches go straight to it, and one request at a time probes Firehose with backoff until
//!   it answers; then the spool is replayed in order.
//! - **Rejected** (invalid argument, unknown stream): the lines are appended to
//!   `dead-letter.ndjson` in the spool directory and counted (`sink_errors{reason="rejected"}`).
//!
//! # Bounds
//!
//! Batches in memory are bounded by `memory_max_bytes` (plus up to `max_in_flight` requests being
//! sent): beyond it the oldest batches move to the spool. The spool is bounded by
//! `spool_max_bytes`: beyond it the oldest spooled batch is deleted. Everything a bound forces out
//! is logged and counted in `meshlat_sink_errors_total{sink="firehose",reason=...}` (reasons
//! `spool_full`, `memory_full`), never dropped silently. Backlog and spool sizes are the gauges
//! `meshlat_sink_backlog_bytes` and `meshlat_sink_spool_bytes`.
//!
//! # What a crash loses
//!
//! A SIGTERM drains (below). A SIGKILL, an OOM kill or a power cut loses what is only in memory:
//! the lines being packed into the next request — at most `--firehose-batch-age` of records, as
//! a request is sealed when its oldest line is that old — plus sealed batches not yet delivered
//! and not spooled (normally just the requests in flight; while Firehose throttles, up to
//! `--firehose-memory-max-bytes`). With `--spool-always` every sealed batch is written (and
//! fsynced) to the spool before it is first sent, so a SIGKILL loses at most
//! `--firehose-batch-age` of records, at the cost of one file write per request. Spooled
//! batches are replayed at the next start (at-least-once; `record_id` removes duplicates).
//!
//! # Shutdown
//!
//! When the sink closes, the dispatcher seals what is packed and keeps sending for at most
//! `drain_timeout` (below the agent's shutdown grace); whatever is still undelivered then is written
//! to the spool, which the next start replays.

pub mod client;
pub mod config;
mod dispatcher;
pub mod request;
pub mod retry;
mod sink;
pub mod spool;

pub use self::config::FirehoseSinkConfig;
pub use self::sink::{FirehoseSink, FirehoseStartError, FirehoseStats};

/// The sink's name in metrics and errors.
const NAME: &str = "firehose";

#[cfg(test)]
mod tests;
