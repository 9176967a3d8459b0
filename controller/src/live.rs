//! The live view: the latest rolling summaries of every agent and the latency matrix built
//! from them (DESIGN §3, issue 4 item 7).
//!
//! Each agent sends its whole window (`Summaries`, every few seconds); [`Live`] keeps the
//! latest per source agent with the time it arrived and ages it out after [`SUMMARY_TTL`].
//!
//! # Aggregation
//!
//! [`matrix`] groups pair summaries by (source, destination, protocol), where source and
//! destination are agent ids (`by=agent`) or regions (`by=region`); jobs measuring the same
//! pair merge too. A merged cell has
//!
//! - `samples`: the sum of the parts' samples;
//! - `loss`: Σ lost / Σ sent (exact);
//! - `p50_ms`: the sample-weighted median of the parts' p50s — exact when the parts have the
//!   same distribution, otherwise an approximation (true percentiles would need the samples);
//! - `p99_ms`: the largest of the parts' p99s (with at least one sample) — an upper bound of the
//!   merged p99, so the matrix never hides a slow pair behind fast ones.
//!
//! External targets (no destination agent) are keyed by their target URL in both views.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use meshlat_proto::pb;
use tokio::time::Instant;

/// How long an agent's summaries count after they arrived.
pub const SUMMARY_TTL: Duration = Duration::from_secs(30);
/// How often `WatchStats` and `/api/v1/stream` send a matrix.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// Most pairs kept from one `Summaries` message.
pub const MAX_PAIRS_PER_AGENT: usize = 10_000;

/// How matrix cells are keyed.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum By {
    /// Source and destination agent ids.
    Agent,
    /// Source and destination regions.
    Region,
}

impl By {
    /// Parses `agent` (or empty) and `region`.
    pub fn parse(s: &str) -> Option<By> {
        match s.trim() {
            "" | "agent" => Some(By::Agent),
            "region" => Some(By::Region),
            _ => None,
        }
    }
}

/// One pair summary with the identities the matrix needs.
#[derive(Clone, Debug, PartialEq)]
pub struct PairCell {
    /// Source agent id.
    pub src_agent: String,
    /// Source region.
    pub src_region: String,
    /// Destination agent id, or the target for external targets.
    pub dst: String,
    /// Destination region (the target for external targets).
    pub dst_region: String,
    /// The summary.
    pub summary: pb::PairSummary,
}

#[derive(Debug)]
struct AgentSummaries {
    region: String,
    at: Instant,
    pairs: Vec<pb::PairSummary>,
}

/// The latest summaries per source agent.
#[derive(Debug)]
pub struct Live {
    ttl: Duration,
    agents: Mutex<HashMap<String, AgentSummaries>>,
}

impl Live {
    /// An empty view whose entries age out after `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Live {
            ttl,
            agents: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces `agent`'s summaries (received `now`).
    pub fn ingest(&self, agent: &str, region: &str, mut s: pb::Summaries, now: Instant) {
        s.pairs.truncate(MAX_PAIRS_PER_AGENT);
        let mut m = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(
            agent.to_string(),
            AgentSummaries {
                region: region.to_string(),
                at: now,
                pairs: s.pairs,
            },
        );
    }

    /// Every pair not older than the TTL; `region_of` names destination agents' regions.
    /// Expired agents are forgotten.
    pub fn cells(&self, now: Instant, region_of: impl Fn(&str) -> Option<String>) -> Vec<PairCell> {
        let mut m = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, a| now.saturating_duration_since(a.at) <= self.ttl);
        let mut out = Vec::new();
        for (src, a) in m.iter() {
            for p in &a.pairs {
                let (dst, dst_region) = if p.dst_agent.is_empty() {
                    (p.target.clone(), p.target.clone())
                } else {
                    let r = region_of(&p.dst_agent).unwrap_or_else(|| "unknown".into());
                    (p.dst_agent.clone(), r)
                };
                out.push(PairCell {
                    src_agent: src.clone(),
                    src_region: a.region.clone(),
                    dst,
                    dst_region,
                    summary: p.clone(),
                });
            }
        }
        out
    }
}

/// Builds matrix cells from pair summaries, keyed `by` agent or region, for one protocol
/// (`None`: all). Sorted by source, destination, protocol. See the module docs for how parts
/// merge.
pub fn matrix(cells: &[PairCell], by: By, protocol: Option<&str>) -> Vec<pb::MatrixCell> {
    let mut groups: BTreeMap<(&str, &str, &str), Vec<&pb::PairSummary>> = BTreeMap::new();
    for c in cells {
        if protocol.is_some_and(|p| p != c.summary.protocol) {
            continue;
        }
        let (src, dst) = match by {
            By::Agent => (c.src_agent.as_str(), c.dst.as_str()),
            By::Region => (c.src_region.as_str(), c.dst_region.as_str()),
        };
        groups
            .entry((src, dst, c.summary.protocol.as_str()))
            .or_default()
            .push(&c.summary);
    }
    groups
        .into_iter()
        .map(|((src, dst, protocol), parts)| merge(src, dst, protocol, &parts))
        .collect()
}

fn merge(src: &str, dst: &str, protocol: &str, parts: &[&pb::PairSummary]) -> pb::MatrixCell {
    let samples: u64 = parts.iter().map(|p| p.samples).sum();
    let sent: u64 = parts.iter().map(|p| p.sent).sum();
    let lost: u64 = parts.iter().map(|p| p.lost).sum();
    let mut p50s: Vec<(f64, u64)> = parts
        .iter()
        .filter(|p| p.samples > 0)
        .map(|p| (p.p50_ms, p.samples))
        .collect();
    p50s.sort_by(|a, b| a.0.total_cmp(&b.0));
    let half = samples.div_ceil(2);
    let mut acc = 0;
    let mut p50 = 0.0;
    for (v, n) in &p50s {
        acc += n;
        p50 = *v;
        if acc >= half {
            break;
        }
    }
    let p99 = parts
        .iter()
        .filter(|p| p.samples > 0)
        .map(|p| p.p99_ms)
        .fold(0.0, f64::max);
    pb::MatrixCell {
        src: src.into(),
        dst: dst.into(),
        protocol: protocol.into(),
        p50_ms: p50,
        p99_ms: p99,
        loss: if sent == 0 {
            0.0
        } else {
            lost as f64 / sent as f64
        },
        samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(
        dst: &str,
        proto: &str,
        p50: f64,
        p99: f64,
        samples: u64,
        lost: u64,
    ) -> pb::PairSummary {
        pb::PairSummary {
            job_id: "j".into(),
            protocol: proto.into(),
            dst_agent: dst.into(),
            target: format!("{proto}://{dst}:1"),
            p50_ms: p50,
            p99_ms: p99,
            sent: samples + lost,
            lost,
            samples,
            window_end_unix_ms: 0,
        }
    }

    fn region_of(id: &str) -> Option<String> {
        match id {
            "a1" | "a2" => Some("ra".into()),
            "b1" => Some("rb".into()),
            _ => None,
        }
    }

    #[test]
    fn matrix_by_agent_and_region_merges_by_samples() {
        let live = Live::new(SUMMARY_TTL);
        let now = Instant::now();
        live.ingest(
            "a1",
            "ra",
            pb::Summaries {
                pairs: vec![
                    pair("b1", "udp", 10.0, 20.0, 300, 0),
                    pair("b1", "tcp", 1.0, 2.0, 10, 0),
                    pair("a2", "udp", 0.5, 0.9, 100, 0),
                ],
            },
            now,
        );
        live.ingest(
            "a2",
            "ra",
            pb::Summaries {
                pairs: vec![
                    pair("b1", "udp", 30.0, 90.0, 100, 100),
                    pair("", "udp", 5.0, 6.0, 10, 0),
                ],
            },
            now,
        );
        let cells = live.cells(now, region_of);
        assert_eq!(cells.len(), 5);

        let m = matrix(&cells, By::Agent, Some("udp"));
        let keys: Vec<(&str, &str)> = m.iter().map(|c| (c.src.as_str(), c.dst.as_str())).collect();
        assert_eq!(
            keys,
            [("a1", "a2"), ("a1", "b1"), ("a2", "b1"), ("a2", "udp://:1")]
        );
        assert_eq!(m[1].p50_ms, 10.0);
        assert!((m[2].loss - 0.5).abs() < 1e-9);

        let m = matrix(&cells, By::Region, Some("udp"));
        let ab = m
            .iter()
            .find(|c| c.src == "ra" && c.dst == "rb")
            .expect("ra -> rb");
        // 300 samples at p50 10 and 100 at p50 30: the weighted median is 10; p99 is the max.
        assert_eq!((ab.p50_ms, ab.p99_ms, ab.samples), (10.0, 90.0, 400));
        assert!((ab.loss - 100.0 / 500.0).abs() < 1e-9, "{}", ab.loss);
        assert!(m.iter().any(|c| c.src == "ra" && c.dst == "ra"));

        // All protocols: tcp appears as its own cell.
        let m = matrix(&cells, By::Region, None);
        assert!(m.iter().any(|c| c.protocol == "tcp" && c.dst == "rb"));
    }

    #[test]
    fn summaries_age_out_and_are_replaced() {
        let live = Live::new(Duration::from_secs(10));
        let t0 = Instant::now();
        live.ingest(
            "a1",
            "ra",
            pb::Summaries {
                pairs: vec![pair("b1", "udp", 1.0, 2.0, 5, 0)],
            },
            t0,
        );
        assert_eq!(live.cells(t0 + Duration::from_secs(10), region_of).len(), 1);
        live.ingest("a1", "ra", pb::Summaries { pairs: vec![] }, t0);
        assert!(live.cells(t0, region_of).is_empty(), "replaced");
        live.ingest(
            "a1",
            "ra",
            pb::Summaries {
                pairs: vec![pair("b1", "udp", 1.0, 2.0, 5, 0)],
            },
            t0,
        );
        assert!(
            live.cells(t0 + Duration::from_secs(11), region_of)
                .is_empty()
        );
    }

    #[test]
    fn by_parses() {
        assert_eq!(By::parse(""), Some(By::Agent));
        assert_eq!(By::parse("region"), Some(By::Region));
        assert_eq!(By::parse("az"), None);
    }
}
