//! The agent's one Prometheus registry (prometheus-client), served on `-s PORT` at `/metrics`.
//!
//! Every drop and error is counted where it happens through the event functions below, which log
//! and count in one place (Vector's `internal_events` idea), so logs and metrics cannot drift.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};

use meshlat_proto::record::{ControlMode, Kind, Protocol, Record};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the RTT histograms' buckets: 0.05 ms to 5 s, classic buckets (native
/// histograms need a feature flag in Debian's Prometheus 2.42). 0.15 s is one for the seed's
/// HighLatency alert (p99 above 150 ms), which `histogram_quantile` then reads exactly at its
/// threshold.
pub const RTT_BUCKETS_SECONDS: [f64; 20] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,
    0.125, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0,
];

/// Default of `--metrics-max-pairs`.
pub const DEFAULT_MAX_PAIRS: usize = 1000;

/// One measured path's endpoints: the labels every per-path series starts with. Bounded: the
/// agent's own region, id and location, and at most `--metrics-max-pairs` destinations.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct PathLabels {
    /// This agent's region.
    pub src_region: String,
    /// This agent's id (empty for `agent probe`).
    pub src_agent: String,
    /// This agent's `--location` (empty without one): the name people read.
    pub src_location: String,
    /// The destination's region (empty for an external target).
    pub dst_region: String,
    /// The destination agent's id, or the target (host:port or URL) of an external target.
    pub dst: String,
    /// The destination agent's location (empty for an external target or without one).
    pub dst_location: String,
}

/// Labels of the per-pair series: one measured path of one protocol.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct PairLabels {
    /// The path.
    #[prometheus(flatten)]
    pub path: PathLabels,
    /// udp, tcp, quic, http, https (`relay` for a relay's penalty, counted against the cap).
    pub protocol: String,
}

/// Labels of the relay penalty gauge: a path and the relay between its ends.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct RelayLabels {
    /// The path.
    #[prometheus(flatten)]
    pub path: PathLabels,
    /// The relay agent's id.
    pub relay_agent: String,
    /// The relay agent's location.
    pub relay_location: String,
}

/// Labels of `meshlat_control_mode`.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct ModeLabels {
    /// standalone, connected, static, degraded.
    pub mode: String,
}

/// Labels of `meshlat_build_info`.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct BuildLabels {
    /// The agent's version.
    pub version: String,
}

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

/// Most load jobs with series of their own in `meshlat_load_requests_total` and
/// `meshlat_load_errors_total`; seconds of further jobs count under [`LOAD_OTHER_JOB`].
pub const MAX_LOAD_JOBS: usize = 16;
/// The `job` label of load seconds beyond [`MAX_LOAD_JOBS`] jobs.
pub const LOAD_OTHER_JOB: &str = "_other";

/// Labels of `meshlat_load_requests_total`.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct LoadRequestLabels {
    /// The load job's id (at most [`MAX_LOAD_JOBS`] of them, then [`LOAD_OTHER_JOB`]).
    pub job: String,
    /// `2xx`, `3xx`, `4xx`, `429`, `5xx`, `other` (a response's class), or `error` (no
    /// response: see `meshlat_load_errors_total`).
    pub status: String,
}

/// Labels of `meshlat_load_errors_total`.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct LoadErrorLabels {
    /// The load job's id (as [`LoadRequestLabels::job`]).
    pub job: String,
    /// `connect`, `timeout`, `tls` or `io`.
    pub kind: String,
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
    /// RTT of every sample, per pair (udp/quic: each packet; tcp: connect; http(s): total).
    pub rtt: Family<PairLabels, Histogram, fn() -> Histogram>,
    /// Packets sent per pair (tcp, http(s): probe attempts).
    pub probe_sent: Family<PairLabels, Counter>,
    /// Packets lost per pair (tcp, http(s): failed attempts).
    pub probe_lost: Family<PairLabels, Counter>,
    /// Last relay penalty (relayed - direct RTT, seconds) per pair and relay.
    pub relay_penalty: Family<RelayLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Samples not given per-pair series because `--metrics-max-pairs` was reached.
    pub pairs_over_cap: Counter,
    /// 1 for the current control mode, 0 for the others.
    pub control_mode: Family<ModeLabels, Gauge>,
    /// Load requests ended, per job and status class (`error`: no response).
    pub load_requests: Family<LoadRequestLabels, Counter>,
    /// Failed load requests, per job and kind.
    pub load_errors: Family<LoadErrorLabels, Counter>,
    /// Load seconds the live-view queue dropped (the controller was away or slow).
    pub load_live_dropped: Counter,
    /// Load jobs with series of their own (at most [`MAX_LOAD_JOBS`]).
    load_jobs: Mutex<HashSet<String>>,
    /// Pairs with series now, and the cap.
    pairs: Mutex<HashSet<PairLabels>>,
    max_pairs: AtomicUsize,
    warned_cap: AtomicBool,
}

fn rtt_histogram() -> Histogram {
    Histogram::new(RTT_BUCKETS_SECONDS)
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("meshlat");
        let rtt = Family::<PairLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            rtt_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "rtt",
            "Round-trip time of every sample per pair: udp/quic each packet, tcp the connect, \
             http(s) connect start to last byte",
            prometheus_client::registry::Unit::Seconds,
            rtt.clone(),
        );
        let relay_penalty = Family::default();
        registry.register_with_unit(
            "relay_penalty",
            "Last relay penalty per pair and relay: relayed minus direct RTT (negative: the relay \
             is faster)",
            prometheus_client::registry::Unit::Seconds,
            relay_penalty.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register("build_info", "The agent's version (value 1)", build);
        Metrics {
            measurements: registered(
                &mut registry,
                "measurements",
                "Measurements taken, by protocol and result",
            ),
            responder: registered(
                &mut registry,
                "responder_requests",
                "Packets or connections seen by responders, by result",
            ),
            sink_records: registered(
                &mut registry,
                "sink_records",
                "Records accepted by each sink",
            ),
            sink_errors: registered(
                &mut registry,
                "sink_errors",
                "Records a sink failed to deliver or dropped, by reason",
            ),
            sink_delivered: registered(
                &mut registry,
                "sink_delivered_records",
                "Records a sink delivered to its destination",
            ),
            sink_backlog_bytes: registered(
                &mut registry,
                "sink_backlog_bytes",
                "Bytes a sink holds in memory waiting for delivery",
            ),
            sink_spool_bytes: registered(
                &mut registry,
                "sink_spool_bytes",
                "Bytes a sink holds in its disk spool",
            ),
            sink_retries: registered(
                &mut registry,
                "sink_retries",
                "Records whose delivery a sink retries, by reason",
            ),
            sched_late: registered(
                &mut registry,
                "sched_late_samples",
                "Samples started more than 1 ms late",
            ),
            scheduled_pairs: registered(
                &mut registry,
                "scheduled_pairs",
                "(job, target) pairs currently scheduled",
            ),
            rtt,
            probe_sent: registered(
                &mut registry,
                "probe_sent",
                "Packets sent per pair (tcp, http, https: probe attempts)",
            ),
            probe_lost: registered(
                &mut registry,
                "probe_lost",
                "Packets lost per pair (tcp, http, https: failed attempts)",
            ),
            relay_penalty,
            pairs_over_cap: registered(
                &mut registry,
                "metrics_pairs_over_cap_samples",
                "Samples without per-pair series because --metrics-max-pairs was reached",
            ),
            control_mode: registered(
                &mut registry,
                "control_mode",
                "1 for the agent's current control mode (standalone, connected, static, degraded)",
            ),
            load_requests: registered(
                &mut registry,
                "load_requests",
                "Load requests ended, per load job and status class (error: no response); jobs \
                 beyond the first 16 count under job=\"_other\"",
            ),
            load_errors: registered(
                &mut registry,
                "load_errors",
                "Failed load requests, per load job and kind (connect, timeout, tls, io)",
            ),
            load_live_dropped: registered(
                &mut registry,
                "load_live_dropped_reports",
                "Load seconds dropped from the live-view queue to the controller (the records \
                 in the sinks are complete)",
            ),
            load_jobs: Mutex::new(HashSet::new()),
            pairs: Mutex::new(HashSet::new()),
            max_pairs: AtomicUsize::new(DEFAULT_MAX_PAIRS),
            warned_cap: AtomicBool::new(false),
            registry,
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

/// A new metric of type `M`, registered under `name` with `help`.
fn registered<M>(registry: &mut Registry, name: &str, help: &str) -> M
where
    M: prometheus_client::registry::Metric + Clone + Default,
{
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

// === events ===

/// Sets `--metrics-max-pairs`: the most pairs (destination and protocol) given series.
pub fn set_max_pairs(n: usize) {
    get().max_pairs.store(n, Ordering::Relaxed);
}

/// The control mode changed (or was set at start).
pub fn control_mode(mode: ControlMode) {
    for m in [
        ControlMode::Standalone,
        ControlMode::Connected,
        ControlMode::Static,
        ControlMode::Degraded,
    ] {
        get()
            .control_mode
            .get_or_create(&ModeLabels {
                mode: mode_name(m).into(),
            })
            .set(i64::from(m == mode));
    }
}

fn mode_name(m: ControlMode) -> &'static str {
    match m {
        ControlMode::Standalone => "standalone",
        ControlMode::Connected => "connected",
        ControlMode::Static => "static",
        ControlMode::Degraded => "degraded",
    }
}

impl Metrics {
    /// Whether `pair` may have series: it has them already, or there is room under the cap.
    fn admit(&self, pair: &PairLabels) -> bool {
        let mut pairs = self
            .pairs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pairs.contains(pair) {
            return true;
        }
        let cap = self.max_pairs.load(Ordering::Relaxed);
        if pairs.len() < cap {
            pairs.insert(pair.clone());
            return true;
        }
        drop(pairs);
        self.pairs_over_cap.inc();
        if !self.warned_cap.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                message = "Per-pair metrics are capped; further pairs are counted in meshlat_metrics_pairs_over_cap_samples_total only.",
                max_pairs = cap,
                dst = %pair.path.dst,
                protocol = %pair.protocol,
                hint = "raise --metrics-max-pairs",
            );
        }
        false
    }
}

/// Every RTT sample (milliseconds) of a probe record, passed to `sample`, and the record's packets
/// sent and lost, counted as the records' field table and the shipped SQL count them: UDP/QUIC
/// each packet of the train and the train's sent/lost; TCP the connect and HTTP(S) the total of a
/// successful attempt, each attempt one sent and a failed one lost. Used by the per-path series
/// here and by the EMF sink.
pub(crate) fn probe_samples(
    r: &Record,
    protocol: Protocol,
    mut sample: impl FnMut(f64),
) -> (u64, u64) {
    match protocol {
        Protocol::Udp | Protocol::Quic => {
            r.rtt_samples_ms.iter().flatten().for_each(|v| sample(*v));
            (
                u64::from(r.sent.unwrap_or(0)),
                u64::from(r.lost.unwrap_or(0)),
            )
        }
        _ => {
            let v = if protocol == Protocol::Tcp {
                r.rtt_ms
            } else {
                r.total_ms
            };
            if let (true, Some(v)) = (r.ok, v) {
                sample(v);
            }
            (1, u64::from(!r.ok))
        }
    }
}

/// A record was taken: its RTTs, sent and lost go into the pair's series (kind=probe), its
/// penalty into the relay gauge (kind=relay). Other kinds have no per-pair series.
pub fn observe(rec: &Record) {
    get().observe(rec);
}

impl Metrics {
    /// [`observe`] on this registry.
    fn observe(&self, rec: &Record) {
        let m = self;
        let (Some(kind), Some(protocol)) = (rec.kind, rec.protocol) else {
            return;
        };
        let path = PathLabels {
            src_region: rec.src_region.clone().unwrap_or_default(),
            src_agent: rec.src_agent.clone().unwrap_or_default(),
            src_location: rec.src_location.clone().unwrap_or_default(),
            dst_region: rec.dst_region.clone().unwrap_or_default(),
            dst: rec.dst_agent.clone().unwrap_or_else(|| rec.target.clone()),
            dst_location: rec.dst_location.clone().unwrap_or_default(),
        };
        match kind {
            Kind::Probe => {
                let pair = PairLabels {
                    path,
                    protocol: protocol.as_str().into(),
                };
                if !m.admit(&pair) {
                    return;
                }
                // A train's series exists from its first record, even one with every packet lost.
                let mut h = matches!(protocol, Protocol::Udp | Protocol::Quic)
                    .then(|| m.rtt.get_or_create(&pair));
                let (sent, lost) = probe_samples(rec, protocol, |ms| {
                    h.get_or_insert_with(|| m.rtt.get_or_create(&pair))
                        .observe(ms / 1000.0);
                });
                drop(h);
                m.probe_sent.get_or_create(&pair).inc_by(sent);
                m.probe_lost.get_or_create(&pair).inc_by(lost);
            }
            Kind::Relay => {
                let (Some(relay), Some(penalty)) = (rec.relay_agent.clone(), rec.relay_penalty_ms)
                else {
                    return;
                };
                // The relay's series counts against the cap as one more destination.
                let mut via = path.clone();
                via.dst = format!("{} via {relay}", path.dst);
                if !m.admit(&PairLabels {
                    path: via,
                    protocol: "relay".into(),
                }) {
                    return;
                }
                m.relay_penalty
                    .get_or_create(&RelayLabels {
                        path,
                        relay_agent: relay,
                        relay_location: rec.relay_location.clone().unwrap_or_default(),
                    })
                    .set(penalty / 1000.0);
            }
            _ => {}
        }
    }
}

/// One second of a load job ended: its requests by status class and its errors go into the
/// job's series (the first [`MAX_LOAD_JOBS`] jobs; later ones under [`LOAD_OTHER_JOB`]).
pub fn load_second(job_id: &str, tally: &crate::load::stats::Tally) {
    get().load_second(job_id, tally);
}

/// Load seconds the live-view queue dropped.
pub fn load_live_dropped(n: u64) {
    get().load_live_dropped.inc_by(n);
}

impl Metrics {
    /// [`load_second`] on this registry.
    fn load_second(&self, job_id: &str, t: &crate::load::stats::Tally) {
        let job = {
            let mut jobs = self
                .load_jobs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if jobs.contains(job_id) || jobs.len() < MAX_LOAD_JOBS && jobs.insert(job_id.into()) {
                job_id.to_string()
            } else {
                LOAD_OTHER_JOB.to_string()
            }
        };
        let s = &t.status;
        let e = &t.errors;
        for (status, n) in [
            ("2xx", s.s2xx),
            ("3xx", s.s3xx),
            ("4xx", s.s4xx),
            ("429", s.rate_limited),
            ("5xx", s.s5xx),
            ("other", s.other),
            ("error", e.total()),
        ] {
            // A class seen once keeps its series; untouched classes get none.
            if n > 0 {
                self.load_requests
                    .get_or_create(&LoadRequestLabels {
                        job: job.clone(),
                        status: status.into(),
                    })
                    .inc_by(n);
            }
        }
        for (kind, n) in [
            ("connect", e.connect),
            ("timeout", e.timeout),
            ("tls", e.tls),
            ("io", e.io),
        ] {
            if n > 0 {
                self.load_errors
                    .get_or_create(&LoadErrorLabels {
                        job: job.clone(),
                        kind: kind.into(),
                    })
                    .inc_by(n);
            }
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(protocol: Protocol, dst: &str) -> Record {
        let mut r = Record::new(std::time::SystemTime::now(), "j", dst, "0");
        r.kind = Some(Kind::Probe);
        r.protocol = Some(protocol);
        r.src_region = Some("eu".into());
        r.src_agent = Some("a1".into());
        r.src_location = Some("l-a1".into());
        r.dst_region = Some("us".into());
        r.dst_agent = Some(dst.into());
        r
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn load_seconds_count_per_job_and_class_with_bounded_jobs() {
        use crate::load::stats::Tally;
        let m = Metrics::new();
        let mut t = Tally::default();
        for code in [200, 200, 429, 503, 404] {
            t.status.add(code);
        }
        t.errors.add(crate::load::stats::ErrorClass::Timeout);
        m.load_second("job-a", &t);
        m.load_second("job-a", &t);
        let text = m.encode();
        assert_eq!(
            line(
                &text,
                "meshlat_load_requests_total{job=\"job-a\",status=\"2xx\"}"
            ),
            Some("meshlat_load_requests_total{job=\"job-a\",status=\"2xx\"} 4")
        );
        for (series, want) in [
            ("status=\"429\"} ", "2"),
            ("status=\"5xx\"} ", "2"),
            ("status=\"4xx\"} ", "2"),
            ("status=\"error\"} ", "2"),
        ] {
            let l = line(
                &text,
                &format!("meshlat_load_requests_total{{job=\"job-a\",{series}"),
            )
            .unwrap_or_else(|| panic!("{series} missing:\n{text}"));
            assert!(l.ends_with(want), "{l}");
        }
        assert!(text.contains("meshlat_load_errors_total{job=\"job-a\",kind=\"timeout\"} 2"));
        assert!(
            !text.contains("status=\"3xx\""),
            "no series for classes never seen"
        );
        // Jobs beyond the cap share one series.
        for i in 0..MAX_LOAD_JOBS + 5 {
            m.load_second(&format!("job-{i}"), &t);
        }
        let text = m.encode();
        let jobs: HashSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("meshlat_load_requests_total{"))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert_eq!(jobs.len(), MAX_LOAD_JOBS + 1, "{jobs:?}");
        assert!(jobs.contains(LOAD_OTHER_JOB));
        assert!(text.contains("meshlat_load_requests_total{job=\"_other\",status=\"2xx\"} 12"));
    }

    #[test]
    fn probe_records_fill_the_pair_histogram_and_loss_counters() {
        let m = Metrics::new();
        let mut udp = probe(Protocol::Udp, "b1");
        udp.rtt_samples_ms = Some(vec![10.0, 149.0, 160.0]);
        udp.sent = Some(4);
        udp.lost = Some(1);
        udp.ok = true;
        m.observe(&udp);
        let mut tcp = probe(Protocol::Tcp, "b1");
        tcp.ok = false;
        tcp.rtt_ms = Some(1.0);
        m.observe(&tcp);
        let mut https = probe(Protocol::Https, "b1");
        https.ok = true;
        https.total_ms = Some(42.0);
        m.observe(&https);
        let text = m.encode();
        let l = r#"src_region="eu",src_agent="a1",src_location="l-a1",dst_region="us",dst="b1",dst_location="",protocol="udp""#;
        assert!(
            line(
                &text,
                &format!(r#"meshlat_rtt_seconds_bucket{{le="0.15",{l}}} 2"#)
            )
            .is_some(),
            "{text}"
        );
        assert!(
            line(
                &text,
                &format!(r#"meshlat_rtt_seconds_bucket{{le="0.125",{l}}} 1"#)
            )
            .is_some()
        );
        assert!(line(&text, &format!("meshlat_rtt_seconds_count{{{l}}} 3")).is_some());
        assert!(line(&text, &format!("meshlat_probe_sent_total{{{l}}} 4")).is_some());
        assert!(line(&text, &format!("meshlat_probe_lost_total{{{l}}} 1")).is_some());
        // A failed TCP connect is one lost attempt and no RTT sample.
        let t = l.replace("udp", "tcp");
        assert!(line(&text, &format!("meshlat_probe_sent_total{{{t}}} 1")).is_some());
        assert!(line(&text, &format!("meshlat_probe_lost_total{{{t}}} 1")).is_some());
        assert!(line(&text, &format!("meshlat_rtt_seconds_count{{{t}}}")).is_none());
        let h = l.replace("udp", "https");
        assert!(
            line(
                &text,
                &format!(r#"meshlat_rtt_seconds_bucket{{le="0.05",{h}}} 1"#)
            )
            .is_some()
        );
        assert!(line(&text, &format!("meshlat_probe_lost_total{{{h}}} 0")).is_some());
        assert!(text.contains("# TYPE meshlat_rtt_seconds histogram"));
        assert!(text.contains("# UNIT meshlat_rtt_seconds seconds"));
        assert!(line(&text, "meshlat_build_info{version=").is_some());
    }

    #[test]
    fn pairs_beyond_the_cap_get_no_series_and_are_counted() {
        let m = Metrics::new();
        m.max_pairs.store(2, Ordering::Relaxed);
        for dst in ["c1", "c2", "c3", "c1"] {
            let mut r = probe(Protocol::Tcp, dst);
            r.ok = true;
            r.rtt_ms = Some(1.0);
            m.observe(&r);
        }
        let text = m.encode();
        assert_eq!(
            text.matches("meshlat_probe_sent_total{").count(),
            2,
            "{text}"
        );
        assert!(!text.contains(r#"dst="c3""#), "{text}");
        assert!(line(&text, r#"meshlat_probe_sent_total{src_region="eu",src_agent="a1",src_location="l-a1",dst_region="us",dst="c1",dst_location="",protocol="tcp"} 2"#).is_some(), "{text}");
        assert!(
            line(&text, "meshlat_metrics_pairs_over_cap_samples_total 1").is_some(),
            "{text}"
        );
    }

    #[test]
    fn relay_records_set_the_penalty_gauge_and_control_mode_is_one_hot() {
        let m = Metrics::new();
        let mut r = probe(Protocol::Udp, "d1");
        r.kind = Some(Kind::Relay);
        r.relay_agent = Some("r1".into());
        r.relay_penalty_ms = Some(-12.5);
        m.observe(&r);
        let text = m.encode();
        assert!(
            line(&text, r#"meshlat_relay_penalty_seconds{src_region="eu",src_agent="a1",src_location="l-a1",dst_region="us",dst="d1",dst_location="",relay_agent="r1",relay_location=""} -0.0125"#).is_some(),
            "{text}"
        );
        control_mode(ControlMode::Degraded);
        let text = get().encode();
        assert!(
            line(&text, r#"meshlat_control_mode{mode="degraded"} 1"#).is_some(),
            "{text}"
        );
        assert!(
            line(&text, r#"meshlat_control_mode{mode="connected"} 0"#).is_some(),
            "{text}"
        );
    }
}
