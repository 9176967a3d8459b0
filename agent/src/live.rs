//! The agent's side of the live view (the controller's `live` module holds the other): rolling
//! per-pair summaries (DESIGN §3, issue 4 item 7).
//!
//! [`SummaryWindow`] keeps, per (job, protocol, destination agent, target, relay agent), the RTT
//! samples,
//! packets sent and packets lost of the last [`DEFAULT_WINDOW`] (5 minutes) and computes p50,
//! p99 (nearest rank), a mergeable RTT histogram (`meshlat_proto::sketch`: the controller merges
//! pairs by their buckets, within 0.5 %) and loss on demand. Relay records are keyed by their
//! relay agent too (a relayed path is never merged with the direct one or another relay's) and
//! carry the median of their trains' relay penalties. [`SummarySink`] feeds it from the
//! same records every other sink gets; the controller session sends [`SummaryWindow::snapshot`]
//! as `Summaries` every [`SUMMARY_INTERVAL`].
//!
//! # Bounded memory
//!
//! - Samples older than the window are dropped on every insert and snapshot.
//! - A pair holds at most [`MAX_SAMPLES_PER_PAIR`] RTT samples: beyond that the oldest
//!   contributions are dropped first (the window then covers less than its nominal length,
//!   which keeps the percentiles about recent traffic).
//! - At most [`MAX_PAIRS`] pairs are tracked; records for further pairs are not summarised
//!   (they still reach every other sink).
//! - A snapshot holds the pairs that fit [`meshlat_proto::MAX_SUMMARIES_BYTES`] encoded (in
//!   key order; the controller refuses larger messages).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshlat_proto::pb;
use meshlat_proto::record::{Kind, Record};
use meshlat_proto::sketch::RttHistogram;
use tokio::time::Instant;

use crate::sink::{SharedRecord, Sink, SinkError};

/// Default summary window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(5 * 60);
/// How often the session sends summaries to the controller.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(5);
/// Most RTT samples held per pair.
pub const MAX_SAMPLES_PER_PAIR: usize = 4096;
/// Most pairs tracked.
pub const MAX_PAIRS: usize = 10_000;

#[derive(Clone, Debug, Eq, Ord, PartialEq, PartialOrd)]
struct PairKey {
    job_id: String,
    protocol: String,
    dst_agent: String,
    target: String,
    /// The relay agent of relay records (empty: a direct path).
    relay_agent: String,
}

#[derive(Debug)]
struct Contribution {
    at: Instant,
    rtts: Vec<f64>,
    sent: u64,
    lost: u64,
    /// A relay train's penalty (relayed minus direct RTT, ms).
    relay_penalty_ms: Option<f64>,
}

#[derive(Debug, Default)]
struct Pair {
    parts: VecDeque<Contribution>,
    held: usize,
}

impl Pair {
    fn prune(&mut self, cutoff: Option<Instant>) {
        while let Some(front) = self.parts.front() {
            let old = cutoff.is_some_and(|c| front.at < c);
            if !old && self.held <= MAX_SAMPLES_PER_PAIR {
                break;
            }
            self.held -= front.rtts.len();
            self.parts.pop_front();
        }
    }
}

/// Rolling per-pair windows of RTT samples and loss.
#[derive(Debug)]
pub struct SummaryWindow {
    window: Duration,
    pairs: BTreeMap<PairKey, Pair>,
}

/// A window shared by the [`SummarySink`] and the controller session.
pub type SharedSummaries = Arc<Mutex<SummaryWindow>>;

/// Nearest-rank percentile of sorted values (`p` in 0..=1); 0 when there are none.
fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    meshlat_proto::sketch::nearest_rank(sorted, p).unwrap_or(0.0)
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl SummaryWindow {
    /// An empty window of length `window`.
    pub fn new(window: Duration) -> Self {
        SummaryWindow {
            window,
            pairs: BTreeMap::new(),
        }
    }

    /// A window shared between a sink and the session.
    pub fn shared(window: Duration) -> SharedSummaries {
        Arc::new(Mutex::new(SummaryWindow::new(window)))
    }

    /// Pairs currently tracked.
    pub fn pairs(&self) -> usize {
        self.pairs.len()
    }

    fn cutoff(&self, now: Instant) -> Option<Instant> {
        now.checked_sub(self.window)
    }

    /// Adds one record measured at `now`. Trains contribute every per-packet RTT; other
    /// probes their single RTT (or total time) when they succeeded. A failed single probe
    /// counts as one packet sent and lost.
    pub fn record(&mut self, r: &Record, now: Instant) {
        // Server records count what others sent this agent; they are no measurement of a pair.
        // Load seconds go to the controller as load reports (`crate::load::live`) instead.
        if matches!(r.kind, Some(Kind::Serve | Kind::RelayServe | Kind::Load)) {
            return;
        }
        let Some(protocol) = r.protocol else { return };
        let rtts: Vec<f64> = match &r.rtt_samples_ms {
            Some(v) if !v.is_empty() => v.iter().copied().filter(|x| x.is_finite()).collect(),
            _ if r.ok => r
                .rtt_ms
                .or(r.total_ms)
                .or(r.handshake_ms)
                .into_iter()
                .filter(|x| x.is_finite())
                .collect(),
            _ => Vec::new(),
        };
        let sent = r.sent.map_or(1, u64::from);
        let lost = r.lost.map_or(u64::from(!r.ok), u64::from);
        let key = PairKey {
            job_id: r.job_id.clone(),
            protocol: protocol.as_str().to_string(),
            dst_agent: r.dst_agent.clone().unwrap_or_default(),
            target: r.target.clone(),
            relay_agent: r.relay_agent.clone().unwrap_or_default(),
        };
        if !self.pairs.contains_key(&key) && self.pairs.len() >= MAX_PAIRS {
            self.prune(now);
            if self.pairs.len() >= MAX_PAIRS {
                tracing::debug!(
                    message = "Summary pair limit reached; record not summarised.",
                    limit = MAX_PAIRS
                );
                return;
            }
        }
        let cutoff = self.cutoff(now);
        let pair = self.pairs.entry(key).or_default();
        pair.held += rtts.len();
        pair.parts.push_back(Contribution {
            at: now,
            rtts,
            sent,
            lost,
            relay_penalty_ms: r.relay_penalty_ms.filter(|v| v.is_finite()),
        });
        pair.prune(cutoff);
    }

    /// Drops what is older than the window, and pairs left empty.
    pub fn prune(&mut self, now: Instant) {
        let cutoff = self.cutoff(now);
        self.pairs.retain(|_, p| {
            p.prune(cutoff);
            !p.parts.is_empty()
        });
    }

    /// The summary of every pair over the window ending `now`.
    pub fn snapshot(&mut self, now: Instant) -> Vec<pb::PairSummary> {
        self.prune(now);
        let end = unix_ms();
        self.pairs
            .iter()
            .map(|(k, p)| {
                let mut all: Vec<f64> = p
                    .parts
                    .iter()
                    .flat_map(|c| c.rtts.iter().copied())
                    .collect();
                all.sort_by(f64::total_cmp);
                let mut hist = RttHistogram::new();
                for v in &all {
                    hist.record(*v);
                }
                let mut penalties: Vec<f64> =
                    p.parts.iter().filter_map(|c| c.relay_penalty_ms).collect();
                penalties.sort_by(f64::total_cmp);
                pb::PairSummary {
                    job_id: k.job_id.clone(),
                    protocol: k.protocol.clone(),
                    dst_agent: k.dst_agent.clone(),
                    target: k.target.clone(),
                    p50_ms: nearest_rank(&all, 0.50),
                    p99_ms: nearest_rank(&all, 0.99),
                    sent: p.parts.iter().map(|c| c.sent).sum(),
                    lost: p.parts.iter().map(|c| c.lost).sum(),
                    samples: all.len() as u64,
                    window_end_unix_ms: end,
                    rtt_histogram: Some(hist.to_pb()),
                    relay_agent: k.relay_agent.clone(),
                    relay_penalty_ms: meshlat_proto::sketch::nearest_rank(&penalties, 0.5),
                }
            })
            // Each pair costs its length, a tag byte and a length varint (at most 3 bytes).
            .scan(0usize, |bytes, p: pb::PairSummary| {
                *bytes += prost::Message::encoded_len(&p) + 4;
                (*bytes <= meshlat_proto::MAX_SUMMARIES_BYTES).then_some(p)
            })
            .collect()
    }
}

/// A sink feeding a [`SummaryWindow`].
#[derive(Debug)]
pub struct SummarySink {
    window: SharedSummaries,
}

impl SummarySink {
    /// A sink adding every record to `window`.
    pub fn new(window: SharedSummaries) -> Self {
        SummarySink { window }
    }
}

impl Sink for SummarySink {
    fn name(&self) -> &'static str {
        "summary"
    }

    async fn write(&mut self, batch: &[SharedRecord]) -> Result<(), SinkError> {
        let now = Instant::now();
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        for r in batch {
            w.record(r, now);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshlat_proto::record::Protocol;

    fn train(dst: &str, rtts: &[f64], lost: u32) -> Record {
        Record {
            job_id: "j".into(),
            protocol: Some(Protocol::Udp),
            dst_agent: Some(dst.into()),
            target: format!("udp://{dst}:1"),
            ok: true,
            sent: Some(rtts.len() as u32 + lost),
            lost: Some(lost),
            rtt_samples_ms: Some(rtts.to_vec()),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn window_computes_percentiles_and_loss_and_ages_out() {
        let mut w = SummaryWindow::new(Duration::from_secs(60));
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        w.record(&train("b", &samples, 0), Instant::now());
        tokio::time::advance(Duration::from_secs(30)).await;
        w.record(&train("b", &[], 100), Instant::now());
        w.record(
            &Record {
                job_id: "j".into(),
                protocol: Some(Protocol::Tcp),
                dst_agent: Some("b".into()),
                target: "tcp://b:2".into(),
                ok: false,
                ..Default::default()
            },
            Instant::now(),
        );
        let s = w.snapshot(Instant::now());
        assert_eq!(s.len(), 2);
        let udp = s.iter().find(|p| p.protocol == "udp").expect("udp pair");
        assert_eq!((udp.p50_ms, udp.p99_ms), (50.0, 99.0));
        assert_eq!((udp.sent, udp.lost, udp.samples), (200, 100, 100));
        // The histogram counts the same samples, and its quantiles are within 0.5 %.
        let h = meshlat_proto::sketch::RttHistogram::from_pb(
            udp.rtt_histogram.as_ref().expect("a histogram"),
        )
        .expect("well formed");
        assert_eq!(h.count(), 100);
        let q99 = h.quantile(0.99).expect("samples");
        assert!((q99 - 99.0).abs() <= 99.0 * 0.005, "{q99}");
        let tcp = s.iter().find(|p| p.protocol == "tcp").expect("tcp pair");
        assert_eq!((tcp.sent, tcp.lost, tcp.samples), (1, 1, 0));

        // 31 s later the first train is out of the 60 s window; the loss-only train remains.
        tokio::time::advance(Duration::from_secs(31)).await;
        let s = w.snapshot(Instant::now());
        let udp = s.iter().find(|p| p.protocol == "udp").expect("udp pair");
        assert_eq!((udp.sent, udp.lost, udp.samples), (100, 100, 0));
        // Everything ages out, and empty pairs are forgotten.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(w.snapshot(Instant::now()).is_empty());
        assert_eq!(w.pairs(), 0);
    }

    /// A relay job's trains through two relays and the direct probe of the same pair are
    /// three summaries: keyed by relay agent, each relayed one with its median penalty.
    #[tokio::test(start_paused = true)]
    async fn relayed_paths_are_kept_apart_with_their_penalty() {
        let mut w = SummaryWindow::new(DEFAULT_WINDOW);
        w.record(&train("b", &[1.0, 1.2], 0), Instant::now());
        let relayed = |relay: &str, rtt: f64, penalty: f64| {
            let mut r = train("b", &[rtt], 0);
            r.kind = Some(Kind::Relay);
            r.relay_agent = Some(relay.into());
            r.relay_penalty_ms = Some(penalty);
            r
        };
        for (rtt, pen) in [(5.0, 4.0), (6.0, 5.0), (7.0, 9.0)] {
            w.record(&relayed("r1", rtt, pen), Instant::now());
        }
        w.record(&relayed("r2", 3.0, -0.5), Instant::now());
        let s = w.snapshot(Instant::now());
        let by: Vec<(&str, Option<f64>, f64)> = s
            .iter()
            .map(|p| (p.relay_agent.as_str(), p.relay_penalty_ms, p.p50_ms))
            .collect();
        assert_eq!(
            by,
            [
                ("", None, 1.0),
                ("r1", Some(5.0), 6.0),
                ("r2", Some(-0.5), 3.0)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn server_records_are_not_pairs() {
        let mut w = SummaryWindow::new(DEFAULT_WINDOW);
        for kind in [Kind::Serve, Kind::RelayServe, Kind::Load] {
            let mut r = train("b", &[], 0);
            r.kind = Some(kind);
            r.packets = Some(10);
            w.record(&r, Instant::now());
        }
        assert_eq!(
            w.pairs(),
            0,
            "serve rows must not show up as measured pairs"
        );
        let mut r = train("b", &[1.0], 0);
        r.kind = Some(Kind::Probe);
        w.record(&r, Instant::now());
        assert_eq!(w.pairs(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn snapshots_fit_the_controllers_message_limit() {
        let mut w = SummaryWindow::new(DEFAULT_WINDOW);
        let long = "d".repeat(200);
        for i in 0..MAX_PAIRS {
            w.record(&train(&format!("{long}-{i}"), &[1.0], 0), Instant::now());
        }
        let s = w.snapshot(Instant::now());
        let len = prost::Message::encoded_len(&pb::Summaries { pairs: s.clone() });
        assert!(len <= meshlat_proto::MAX_SUMMARIES_BYTES, "{len}");
        assert!(s.len() > 500 && s.len() < MAX_PAIRS, "{}", s.len());
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded_per_pair() {
        let mut w = SummaryWindow::new(DEFAULT_WINDOW);
        let samples = vec![1.0; 1000];
        for _ in 0..10 {
            w.record(&train("b", &samples, 0), Instant::now());
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let s = w.snapshot(Instant::now());
        assert!(
            s[0].samples <= MAX_SAMPLES_PER_PAIR as u64,
            "{}",
            s[0].samples
        );
        assert!(s[0].samples >= 3000);
    }
}
