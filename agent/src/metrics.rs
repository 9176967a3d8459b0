//! The agent's one Prometheus registry (prometheus-client), served on `-s PORT` at `/metrics`.
//!
//! Every drop and error is counted where it happens through the event functions below, which log
//! and count in one place (Vector's `internal_events` idea), so logs and metrics cannot drift.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `meshlat_measurements_total`.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct MeasurementLabels {
    /// udp, tcp, ...
    pub protocol: String,
    /// `ok` or the error kind.
    pub result: String,
}

/// Labels for responder packet/connection counters.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct ResponderLabels {
    /// udp, tcp, quic, http, https.
    pub protocol: String,
    /// `answered` or the drop reason (`malformed`, `auth`, `oversize`, ...).
    pub result: String,
}

/// Labels for sink counters.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct SinkLabels {
    /// Sink name (`stdout`, `file`, `firehose`).
    pub sink: String,
}

/// Labels for sink error counters.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct SinkErrorLabels {
    /// Sink name.
    pub sink: String,
    /// What failed (`write`, `rotate`, `dropped_full`, ...).
    pub reason: String,
}

/// Labels of `meshlat_build_info`.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct BuildLabels {
    /// The binary's version.
    pub version: String,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    /// Measurements taken, by protocol and result.
    pub measurements: Family<MeasurementLabels, Counter>,
    /// Packets/connections seen by responders, by result.
    pub responder: Family<ResponderLabels, Counter>,
    /// Records accepted by each sink.
    pub sink_records: Family<SinkLabels, Counter>,
    /// Records a sink failed to deliver or had to drop, by reason.
    pub sink_errors: Family<SinkErrorLabels, Counter>,
    /// Records a sink delivered to its destination (acknowledged by it).
    pub sink_delivered: Family<SinkLabels, Counter>,
    /// Bytes a sink holds in memory waiting for delivery.
    pub sink_backlog_bytes: Family<SinkLabels, Gauge>,
    /// Bytes a sink holds in its disk spool.
    pub sink_spool_bytes: Family<SinkLabels, Gauge>,
    /// Records whose delivery a sink retries, by reason.
    pub sink_retries: Family<SinkErrorLabels, Counter>,
    /// Samples started late by more than 1 ms.
    pub sched_late: Counter,
    /// (job, target) pairs currently scheduled.
    pub scheduled_pairs: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("meshlat");
        let measurements = Family::<MeasurementLabels, Counter>::default();
        registry.register(
            "measurements",
            "Measurements taken, by protocol and result",
            measurements.clone(),
        );
        let responder = Family::<ResponderLabels, Counter>::default();
        registry.register(
            "responder_requests",
            "Packets or connections seen by responders, by result",
            responder.clone(),
        );
        let sink_records = Family::<SinkLabels, Counter>::default();
        registry.register(
            "sink_records",
            "Records accepted by each sink",
            sink_records.clone(),
        );
        let sink_errors = Family::<SinkErrorLabels, Counter>::default();
        registry.register(
            "sink_errors",
            "Records a sink failed to deliver or dropped, by reason",
            sink_errors.clone(),
        );
        let sink_delivered = Family::<SinkLabels, Counter>::default();
        registry.register(
            "sink_delivered_records",
            "Records a sink delivered to its destination",
            sink_delivered.clone(),
        );
        let sink_backlog_bytes = Family::<SinkLabels, Gauge>::default();
        registry.register(
            "sink_backlog_bytes",
            "Bytes a sink holds in memory waiting for delivery",
            sink_backlog_bytes.clone(),
        );
        let sink_spool_bytes = Family::<SinkLabels, Gauge>::default();
        registry.register(
            "sink_spool_bytes",
            "Bytes a sink holds in its disk spool",
            sink_spool_bytes.clone(),
        );
        let sink_retries = Family::<SinkErrorLabels, Counter>::default();
        registry.register(
            "sink_retries",
            "Records whose delivery a sink retries, by reason",
            sink_retries.clone(),
        );
        let sched_late = Counter::default();
        registry.register(
            "sched_late_samples",
            "Samples started more than 1 ms late",
            sched_late.clone(),
        );
        let scheduled_pairs = Gauge::default();
        registry.register(
            "scheduled_pairs",
            "(job, target) pairs currently scheduled",
            scheduled_pairs.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: crate::VERSION.into(),
            })
            .set(1);
        registry.register(
            "build_info",
            "1, labelled with the version of this binary",
            build_info,
        );
        Metrics {
            registry,
            measurements,
            responder,
            sink_records,
            sink_errors,
            sink_delivered,
            sink_backlog_bytes,
            sink_spool_bytes,
            sink_retries,
            sched_late,
            scheduled_pairs,
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

// === events ===

/// A responder answered or dropped something.
pub fn responder_event(protocol: &str, result: &str) {
    get()
        .responder
        .get_or_create(&ResponderLabels {
            protocol: protocol.into(),
            result: result.into(),
        })
        .inc();
}

/// A responder dropped input; logged at debug (floods must not flood the log) and counted.
pub fn responder_drop(protocol: &str, reason: &str, peer: std::net::SocketAddr) {
    tracing::debug!(message = "Responder dropped input.", protocol, reason, %peer);
    responder_event(protocol, reason);
}

/// A measurement finished.
pub fn measurement(protocol: &str, result: &str) {
    get()
        .measurements
        .get_or_create(&MeasurementLabels {
            protocol: protocol.into(),
            result: result.into(),
        })
        .inc();
}

/// A sink failed or dropped `n` records.
pub fn sink_error(sink: &str, reason: &str, n: u64, error: &dyn std::fmt::Display) {
    tracing::warn!(message = "Sink error.", sink, reason, records = n, %error);
    get()
        .sink_errors
        .get_or_create(&SinkErrorLabels {
            sink: sink.into(),
            reason: reason.into(),
        })
        .inc_by(n);
}

/// A sink will retry `n` records (throttling, partial failure, outage): logged at debug (these
/// repeat during an outage; the first warning is logged by the sink) and counted.
pub fn sink_retry(sink: &str, reason: &str, n: u64, error: &dyn std::fmt::Display) {
    tracing::debug!(message = "Sink retrying.", sink, reason, records = n, %error);
    get()
        .sink_retries
        .get_or_create(&SinkErrorLabels {
            sink: sink.into(),
            reason: reason.into(),
        })
        .inc_by(n);
}
