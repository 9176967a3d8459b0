//! The live view: the latest rolling summaries of every agent and the latency matrix built
//! from them (DESIGN §3, issue 4 item 7).
//!
//! Each agent sends its whole window (`Summaries`, every few seconds); [`Live`] keeps the
//! latest per source agent with the time it arrived and ages it out after [`SUMMARY_TTL`]
//! (federation peers' agents too: [`Live::ingest_peer`] keeps what a peer sent of its own
//! agents, [`Live::own`] gives ours for the exchange, never the peers', so nothing is
//! forwarded twice; a peer's go when its entries expire, [`Live::remove_peer`]):
//! the registry's periodic sweep calls [`Live::prune`], so expired summaries go whether or not
//! anyone reads the matrix, and a removed agent's go with it ([`Live::remove`]).
//!
//! # Bounds
//!
//! A summary costs its pairs' encoded size plus [`PAIR_OVERHEAD`] each ([`pair_cost`]). An
//! agent's latest summary is cut to the pairs that fit `--max-summary-bytes`, and to what is
//! left of `--max-live-pairs` and `--max-live-bytes` over all agents (its own previous summary
//! is replaced, so it does not count against itself); cut pairs are dropped, logged once per
//! agent until its summaries fit again ([`crate::limits`]).
//!
//! # Aggregation
//!
//! [`matrix`] groups pair summaries by (source, destination, protocol), where source and
//! destination are agent ids (`by=agent`) or regions (`by=region`); jobs measuring the same
//! pair merge too. A merged cell has
//!
//! - `samples`: the sum of the parts' samples;
//! - `loss`: Σ lost / Σ sent (exact);
//! - `p50_ms`, `p99_ms`: one part's own (nearest rank over its samples); for several parts, the
//!   quantiles of their merged RTT histograms (`meshlat_proto::sketch`): within 0.5 % of the
//!   exact nearest-rank quantiles of the union of the samples;
//! - where a part has no histogram (an agent older than the histogram), as before: p50 the
//!   sample-weighted median of the parts' p50s (an approximation), p99 the largest of their
//!   p99s (an upper bound, so the matrix never hides a slow pair behind fast ones).
//!
//! A histogram that is malformed or does not count exactly the pair's samples makes the pair
//! implausible: it is dropped at ingest with the other lies.
//!
//! External targets (no destination agent) are keyed by their target URL in both views.
//!
//! Relayed paths (relay jobs' summaries, which name their relay agent) are keyed by the relay
//! agent too, in both views: a cell's `via` is the relay agent (empty for direct paths), so a
//! pair's direct path and its path through each relay are separate cells, never merged. A
//! relayed cell carries the sample-weighted median of its parts' relay penalties.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use meshlat_proto::pb;
use meshlat_proto::sketch::{self, MergedHistogram};
use prost::Message;
use tokio::time::Instant;

use crate::limits::PAIR_OVERHEAD;

/// How long an agent's summaries count after they arrived.
pub const SUMMARY_TTL: Duration = Duration::from_secs(30);
/// How often `WatchStats` and `/api/v1/stream` send a matrix.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// Most pairs kept from one `Summaries` message.
pub const MAX_PAIRS_PER_AGENT: usize = 10_000;

/// What a pair costs in memory, as accounted against the caps.
pub fn pair_cost(p: &pb::PairSummary) -> usize {
    p.encoded_len() + PAIR_OVERHEAD
}

/// The caps of the live view ([`crate::limits::Limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveLimits {
    /// `--max-summary-bytes`: per agent.
    pub per_agent_bytes: usize,
    /// `--max-live-pairs`: over all agents.
    pub total_pairs: usize,
    /// `--max-live-bytes`: over all agents.
    pub total_bytes: usize,
}

impl Default for LiveLimits {
    fn default() -> Self {
        let l = crate::limits::Limits::default();
        LiveLimits {
            per_agent_bytes: l.max_summary_bytes,
            total_pairs: l.max_live_pairs,
            total_bytes: l.max_live_bytes,
        }
    }
}

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
    /// Accounted size of `pairs` ([`pair_cost`]).
    bytes: usize,
    /// The last summary was cut (logged once until one fits again).
    cut: bool,
    /// The region of the federation peer that sent them (`None`: our own agent's).
    peer: Option<String>,
}

#[derive(Debug, Default)]
struct Agents {
    by_id: HashMap<String, AgentSummaries>,
    pairs: usize,
    bytes: usize,
}

impl Agents {
    fn remove(&mut self, agent: &str) -> Option<AgentSummaries> {
        let old = self.by_id.remove(agent)?;
        self.pairs -= old.pairs.len();
        self.bytes -= old.bytes;
        Some(old)
    }
}

/// The latest summaries per source agent.
#[derive(Debug)]
pub struct Live {
    ttl: Duration,
    limits: LiveLimits,
    agents: Mutex<Agents>,
}

/// Totals of the live view (tests and diagnostics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveTotals {
    /// Agents with summaries.
    pub agents: usize,
    /// Pairs over all agents.
    pub pairs: usize,
    /// Accounted bytes over all agents.
    pub bytes: usize,
}

impl Live {
    /// An empty view whose entries age out after `ttl`, bounded by `limits`.
    pub fn new(ttl: Duration, limits: LiveLimits) -> Self {
        Live {
            ttl,
            limits,
            agents: Mutex::new(Agents::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Agents> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces `agent`'s summaries (received `now`), cut to the caps (module docs).
    pub fn ingest(&self, agent: &str, region: &str, mut s: pb::Summaries, now: Instant) {
        clean(agent, &mut s, MAX_PAIRS_PER_AGENT);
        let mut m = self.lock();
        let was_cut = m.remove(agent).is_some_and(|o| o.cut);
        self.insert(&mut m, agent, region, s.pairs, now, None, was_cut);
    }

    /// Replaces what federation peer `peer_region` sent last with `list` (its own agents'
    /// summaries, received `now`): entries of other regions, of agents known here
    /// (`is_local`) or held for another peer, and those older than the TTL are ignored; at most
    /// `max_pairs` pairs in all, then the caps as for our own agents. Returns the pairs kept.
    pub fn ingest_peer(
        &self,
        peer_region: &str,
        list: Vec<pb::AgentSummaries>,
        now: Instant,
        max_pairs: usize,
        is_local: impl Fn(&str) -> bool,
    ) -> usize {
        let mut m = self.lock();
        let theirs: Vec<String> = m
            .by_id
            .iter()
            .filter(|(_, a)| a.peer.as_deref() == Some(peer_region))
            .map(|(id, _)| id.clone())
            .collect();
        let mut was_cut = std::collections::HashSet::new();
        for id in theirs {
            if m.remove(&id).is_some_and(|o| o.cut) {
                was_cut.insert(id);
            }
        }
        let mut left = max_pairs;
        let mut kept = 0;
        for a in list {
            if left == 0 {
                break;
            }
            let age = Duration::from_millis(a.age_ms);
            if a.region != peer_region
                || a.agent_id.is_empty()
                || a.agent_id.len() > 128
                || age > self.ttl
                || is_local(&a.agent_id)
                || m.by_id.contains_key(&a.agent_id)
            {
                continue;
            }
            let mut s = pb::Summaries { pairs: a.pairs };
            clean(&a.agent_id, &mut s, left.min(MAX_PAIRS_PER_AGENT));
            let at = now.checked_sub(age).unwrap_or(now);
            let cut = was_cut.contains(&a.agent_id);
            let n = self.insert(
                &mut m,
                &a.agent_id,
                peer_region,
                s.pairs,
                at,
                Some(peer_region.to_string()),
                cut,
            );
            left -= n;
            kept += n;
        }
        kept
    }

    /// Our own agents' latest summaries not older than the TTL, for the federation exchange:
    /// at most `max_pairs` pairs in all (agents in id order).
    pub fn own(&self, now: Instant, max_pairs: usize) -> Vec<pb::AgentSummaries> {
        let m = self.lock();
        let mut ids: Vec<&String> = m
            .by_id
            .iter()
            .filter(|(_, a)| a.peer.is_none() && now.saturating_duration_since(a.at) <= self.ttl)
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        let mut left = max_pairs;
        let mut out = Vec::new();
        for id in ids {
            if left == 0 {
                break;
            }
            let a = &m.by_id[id];
            let n = a.pairs.len().min(left);
            left -= n;
            out.push(pb::AgentSummaries {
                agent_id: id.clone(),
                region: a.region.clone(),
                pairs: a.pairs[..n].to_vec(),
                age_ms: now.saturating_duration_since(a.at).as_millis() as u64,
            });
        }
        out
    }

    /// Forgets what federation peer `peer_region` sent (its entries expired).
    pub fn remove_peer(&self, peer_region: &str) {
        let mut m = self.lock();
        let theirs: Vec<String> = m
            .by_id
            .iter()
            .filter(|(_, a)| a.peer.as_deref() == Some(peer_region))
            .map(|(id, _)| id.clone())
            .collect();
        for id in theirs {
            m.remove(&id);
        }
    }

    /// Inserts `agent`'s pairs (its old entry already removed) cut to the caps; returns how
    /// many were kept. `was_cut`: its previous summaries were cut (the warning was logged).
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &self,
        m: &mut Agents,
        agent: &str,
        region: &str,
        mut pairs: Vec<pb::PairSummary>,
        at: Instant,
        peer: Option<String>,
        was_cut: bool,
    ) -> usize {
        let given = pairs.len();
        let pairs_left = self.limits.total_pairs.saturating_sub(m.pairs);
        let bytes_left = self
            .limits
            .total_bytes
            .saturating_sub(m.bytes)
            .min(self.limits.per_agent_bytes);
        let mut bytes = 0;
        let mut keep = 0;
        for p in &pairs {
            let c = pair_cost(p);
            if keep == pairs_left || bytes + c > bytes_left {
                break;
            }
            bytes += c;
            keep += 1;
        }
        pairs.truncate(keep);
        pairs.shrink_to_fit();
        let cut = keep < given;
        if cut && !was_cut {
            tracing::warn!(
                message = "Summaries cut to the live view's caps (--max-summary-bytes, --max-live-pairs, --max-live-bytes, --max-peer-summary-pairs).",
                agent = %agent,
                peer_region = peer.as_deref().unwrap_or_default(),
                pairs = given,
                kept = keep,
                kept_bytes = bytes
            );
        }
        m.pairs += keep;
        m.bytes += bytes;
        m.by_id.insert(
            agent.to_string(),
            AgentSummaries {
                region: region.to_string(),
                at,
                pairs,
                bytes,
                cut,
                peer,
            },
        );
        keep
    }

    /// Forgets summaries older than the TTL; returns how many agents' went.
    pub fn prune(&self, now: Instant) -> usize {
        let mut m = self.lock();
        let expired: Vec<String> = m
            .by_id
            .iter()
            .filter(|(_, a)| now.saturating_duration_since(a.at) > self.ttl)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            m.remove(id);
        }
        if m.by_id.is_empty() {
            // Give the table's memory back after a burst of sessions.
            m.by_id.shrink_to_fit();
        }
        expired.len()
    }

    /// Forgets an agent's summaries (the agent was removed).
    pub fn remove(&self, agent: &str) {
        self.lock().remove(agent);
    }

    /// Totals over all agents.
    pub fn totals(&self) -> LiveTotals {
        let m = self.lock();
        LiveTotals {
            agents: m.by_id.len(),
            pairs: m.pairs,
            bytes: m.bytes,
        }
    }

    /// Every pair not older than the TTL; `region_of` names destination agents' regions.
    /// Expired agents are forgotten.
    pub fn cells(&self, now: Instant, region_of: impl Fn(&str) -> Option<String>) -> Vec<PairCell> {
        self.prune(now);
        let m = self.lock();
        let mut out = Vec::new();
        for (src, a) in m.by_id.iter() {
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
    type Key<'a> = (&'a str, &'a str, &'a str, &'a str);
    let mut groups: BTreeMap<Key<'_>, Vec<&pb::PairSummary>> = BTreeMap::new();
    for c in cells {
        if protocol.is_some_and(|p| p != c.summary.protocol) {
            continue;
        }
        let (src, dst) = match by {
            By::Agent => (c.src_agent.as_str(), c.dst.as_str()),
            By::Region => (c.src_region.as_str(), c.dst_region.as_str()),
        };
        groups
            .entry((
                src,
                dst,
                c.summary.protocol.as_str(),
                c.summary.relay_agent.as_str(),
            ))
            .or_default()
            .push(&c.summary);
    }
    cells_of(groups)
}

/// Cells of grouped parts: `(src, dst, protocol, via)` → the summaries to merge.
type Groups<'a> = BTreeMap<(&'a str, &'a str, &'a str, &'a str), Vec<&'a pb::PairSummary>>;

fn cells_of(groups: Groups<'_>) -> Vec<pb::MatrixCell> {
    groups
        .into_iter()
        .map(|((src, dst, protocol, via), parts)| {
            let mut cell = merge(src, dst, protocol, &parts);
            cell.via = via.to_string();
            cell.relay_penalty_ms = penalty(&parts);
            cell
        })
        .collect()
}

impl Live {
    /// [`matrix`] of the pairs whose source and destination regions `keep` admits, built under
    /// the table's lock from references: nothing is copied but the cells (a 500-agent mesh's
    /// 250,000 pairs, histograms included, are not cloned for a 100-cell region view).
    /// `regions` maps agent ids to regions (destinations not in it are `unknown`).
    pub fn matrix_where(
        &self,
        now: Instant,
        regions: &BTreeMap<String, String>,
        by: By,
        protocol: Option<&str>,
        keep: impl Fn(&str, &str) -> bool,
    ) -> Vec<pb::MatrixCell> {
        self.prune(now);
        let m = self.lock();
        let mut groups: Groups<'_> = BTreeMap::new();
        for (src, a) in m.by_id.iter() {
            for p in &a.pairs {
                if protocol.is_some_and(|x| x != p.protocol) {
                    continue;
                }
                let (dst, dst_region) = if p.dst_agent.is_empty() {
                    (p.target.as_str(), p.target.as_str())
                } else {
                    let r = regions.get(&p.dst_agent).map_or("unknown", String::as_str);
                    (p.dst_agent.as_str(), r)
                };
                if !keep(&a.region, dst_region) {
                    continue;
                }
                let (s, d) = match by {
                    By::Agent => (src.as_str(), dst),
                    By::Region => (a.region.as_str(), dst_region),
                };
                groups
                    .entry((s, d, p.protocol.as_str(), p.relay_agent.as_str()))
                    .or_default()
                    .push(p);
            }
        }
        cells_of(groups)
    }
}

/// The sample-weighted median of the parts' relay penalties (`None`: no part has one).
fn penalty(parts: &[&pb::PairSummary]) -> Option<f64> {
    let mut v: Vec<(f64, u64)> = parts
        .iter()
        .filter_map(|p| Some((p.relay_penalty_ms?, p.samples.max(1))))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let half = v.iter().map(|x| x.1).sum::<u64>().div_ceil(2);
    let mut acc = 0;
    v.into_iter().find_map(|(x, n)| {
        acc += n;
        (acc >= half).then_some(x)
    })
}

/// Cuts `s` to `max` pairs and drops implausible ones (logged).
fn clean(agent: &str, s: &mut pb::Summaries, max: usize) {
    s.pairs.truncate(max);
    let before = s.pairs.len();
    s.pairs.retain(plausible);
    if s.pairs.len() < before {
        tracing::warn!(
            message = "Implausible summaries dropped (non-finite or negative latency, p50 above p99, lost above sent, or counts over 10^12).",
            agent = %agent,
            dropped = before - s.pairs.len()
        );
    }
}

/// Largest count a summary may carry (a million samples a second for 11 days): far above any
/// agent's window, low enough that sums over every agent of a mesh cannot overflow.
const MAX_SUMMARY_COUNT: u64 = 1_000_000_000_000;
/// Largest latency a summary may carry, in ms (an hour).
const MAX_SUMMARY_MS: f64 = 3_600_000.0;

/// Whether an agent's summary pair could be true. A lying or broken agent must not poison the
/// matrix (NaN sorts anywhere, huge counts overflow sums): such pairs are dropped at ingest.
fn plausible(p: &pb::PairSummary) -> bool {
    let ms = |v: f64| v.is_finite() && (0.0..=MAX_SUMMARY_MS).contains(&v);
    ms(p.p50_ms)
        && ms(p.p99_ms)
        && p.p50_ms <= p.p99_ms
        && p.sent <= MAX_SUMMARY_COUNT
        && p.samples <= MAX_SUMMARY_COUNT
        && p.lost <= p.sent
        && p.relay_penalty_ms.is_none_or(|v| v.is_finite() && v.abs() <= MAX_SUMMARY_MS)
        // A histogram must be well formed and count exactly the pair's samples.
        && p
            .rtt_histogram
            .as_ref()
            .is_none_or(|h| sketch::validate(h).is_ok_and(|n| n == p.samples))
}

fn merge(src: &str, dst: &str, protocol: &str, parts: &[&pb::PairSummary]) -> pb::MatrixCell {
    let sum =
        |f: fn(&pb::PairSummary) -> u64| parts.iter().fold(0u64, |a, p| a.saturating_add(f(p)));
    let samples = sum(|p| p.samples);
    let sent = sum(|p| p.sent);
    let lost = sum(|p| p.lost);
    // Exact within the sketch's error when every part with samples carries its histogram
    // (agents of this version); otherwise (an older agent among them) the approximation below.
    // A single part is its agent's own nearest-rank figures.
    if parts.len() > 1 {
        let mut h = MergedHistogram::new();
        let all = parts
            .iter()
            .filter(|p| p.samples > 0)
            .all(|p| p.rtt_histogram.as_ref().is_some_and(|x| h.add(x).is_ok()));
        if all && h.count() == samples {
            return cell(
                src,
                dst,
                protocol,
                h.quantile(0.50).unwrap_or(0.0),
                h.quantile(0.99).unwrap_or(0.0),
                (sent, lost, samples),
            );
        }
    }
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
    cell(src, dst, protocol, p50, p99, (sent, lost, samples))
}

fn cell(
    src: &str,
    dst: &str,
    protocol: &str,
    p50_ms: f64,
    p99_ms: f64,
    (sent, lost, samples): (u64, u64, u64),
) -> pb::MatrixCell {
    pb::MatrixCell {
        src: src.into(),
        dst: dst.into(),
        protocol: protocol.into(),
        p50_ms,
        p99_ms,
        loss: if sent == 0 {
            0.0
        } else {
            lost as f64 / sent as f64
        },
        samples,
        via: String::new(),
        relay_penalty_ms: None,
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
            rtt_histogram: None,
            relay_agent: String::new(),
            relay_penalty_ms: None,
        }
    }

    /// `agent`, in region `ra`, reports `pairs` at `now`.
    fn report(live: &Live, agent: &str, pairs: Vec<pb::PairSummary>, now: Instant) {
        live.ingest(agent, "ra", pb::Summaries { pairs }, now);
    }

    fn region_of(id: &str) -> Option<String> {
        match id {
            "a1" | "a2" => Some("ra".into()),
            "b1" => Some("rb".into()),
            _ => None,
        }
    }

    /// An agent that lies (NaN, negative or inverted latencies, lost above sent, counts that
    /// would overflow the merged sums) cannot poison the matrix: its implausible pairs are
    /// dropped, its honest ones kept, and merging huge but allowed counts never panics.
    #[test]
    fn implausible_summaries_are_dropped_and_merging_cannot_overflow() {
        let live = Live::new(SUMMARY_TTL, LiveLimits::default());
        let now = Instant::now();
        let mut lost_above_sent = pair("b1", "udp", 1.0, 2.0, 10, 0);
        lost_above_sent.lost = 11;
        let mut huge = pair("b1", "udp", 1.0, 2.0, 0, 0);
        huge.samples = u64::MAX;
        huge.sent = u64::MAX;
        report(
            &live,
            "a1",
            vec![
                pair("b1", "udp", f64::NAN, 2.0, 10, 0),
                pair("b1", "udp", 1.0, f64::INFINITY, 10, 0),
                pair("b1", "udp", -1.0, 2.0, 10, 0),
                pair("b1", "udp", 5.0, 2.0, 10, 0),
                lost_above_sent,
                huge,
                pair("b1", "udp", 10.0, 20.0, 300, 0),
            ],
            now,
        );
        let cells = live.cells(now, region_of);
        assert_eq!(cells.len(), 1, "only the honest pair is kept: {cells:?}");
        assert_eq!(
            (cells[0].summary.p50_ms, cells[0].summary.samples),
            (10.0, 300)
        );

        // The largest allowed counts from many agents sum without overflow.
        let big = |id: &str| {
            let mut p = pair("b1", "udp", 1.0, 2.0, MAX_SUMMARY_COUNT, 0);
            p.sent = MAX_SUMMARY_COUNT;
            report(&live, id, vec![p], now);
        };
        for i in 0..40 {
            big(&format!("x{i}"));
        }
        let m = matrix(&live.cells(now, region_of), By::Region, Some("udp"));
        assert!(m.iter().all(|c| c.p50_ms.is_finite()), "{m:?}");
    }

    #[test]
    fn matrix_by_agent_and_region_merges_by_samples() {
        let live = Live::new(SUMMARY_TTL, LiveLimits::default());
        let now = Instant::now();
        report(
            &live,
            "a1",
            vec![
                pair("b1", "udp", 10.0, 20.0, 300, 0),
                pair("b1", "tcp", 1.0, 2.0, 10, 0),
                pair("a2", "udp", 0.5, 0.9, 100, 0),
            ],
            now,
        );
        report(
            &live,
            "a2",
            vec![
                pair("b1", "udp", 30.0, 90.0, 100, 100),
                pair("", "udp", 5.0, 6.0, 10, 0),
            ],
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

    /// The dashboard's views, built from references under the lock, equal the matrix of the
    /// copied cells, and a region filter keeps only its pairs.
    #[test]
    fn matrix_where_equals_the_matrix_of_the_cells_and_filters_regions() {
        let live = Live::new(SUMMARY_TTL, LiveLimits::default());
        let now = Instant::now();
        report(
            &live,
            "a1",
            vec![
                pair("b1", "udp", 10.0, 20.0, 300, 0),
                pair("b1", "tcp", 1.0, 2.0, 10, 0),
                pair("a2", "udp", 0.5, 0.9, 100, 0),
            ],
            now,
        );
        report(
            &live,
            "a2",
            vec![pair("b1", "udp", 30.0, 90.0, 100, 100)],
            now,
        );
        let regions: BTreeMap<String, String> = [("a1", "ra"), ("a2", "ra"), ("b1", "rb")]
            .into_iter()
            .map(|(a, r)| (a.to_string(), r.to_string()))
            .collect();
        let region_of = |id: &str| regions.get(id).cloned();
        let cells = live.cells(now, region_of);
        for by in [By::Agent, By::Region] {
            for proto in [None, Some("udp"), Some("tcp")] {
                assert_eq!(
                    live.matrix_where(now, &regions, by, proto, |_, _| true),
                    matrix(&cells, by, proto),
                    "{by:?} {proto:?}"
                );
            }
        }
        let to_rb = live.matrix_where(now, &regions, By::Agent, Some("udp"), |_, d| d == "rb");
        let keys: Vec<(&str, &str)> = to_rb
            .iter()
            .map(|c| (c.src.as_str(), c.dst.as_str()))
            .collect();
        assert_eq!(keys, [("a1", "b1"), ("a2", "b1")]);
        assert!(
            live.matrix_where(now, &regions, By::Region, None, |_, _| false)
                .is_empty()
        );
    }

    /// A pair summary as an agent of this version sends it: from samples, with its histogram.
    fn pair_of(dst: &str, samples: &[f64]) -> pb::PairSummary {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mut h = sketch::RttHistogram::new();
        for v in samples {
            h.record(*v);
        }
        let q = |p| sketch::nearest_rank(&sorted, p).expect("samples");
        let mut p = pair(dst, "udp", q(0.5), q(0.99), samples.len() as u64, 0);
        p.rtt_histogram = Some(h.to_pb());
        p
    }

    /// Item 5 of the architecture issue: merged p50/p99 are exact within the sketch's error
    /// (p99 within 1 % of the union's), where the old merge said p50 = 10 and p99 = the slow
    /// part's p99; an older agent's pair (no histogram) falls back to that approximation; a
    /// histogram that does not count the pair's samples is a lie and dropped.
    #[test]
    fn merged_cells_are_exact_within_the_sketch_error() {
        let live = Live::new(SUMMARY_TTL, LiveLimits::default());
        let now = Instant::now();
        // a1 -> b1: 300 samples around 10 ms; a2 -> b1: 100 samples around 30 ms with a tail.
        let fast: Vec<f64> = (0..300).map(|i| 10.0 + f64::from(i % 7) * 0.1).collect();
        let slow: Vec<f64> = (0..100)
            .map(|i| {
                if i % 25 == 0 {
                    90.0
                } else {
                    30.0 + f64::from(i % 5)
                }
            })
            .collect();
        report(&live, "a1", vec![pair_of("b1", &fast)], now);
        report(&live, "a2", vec![pair_of("b1", &slow)], now);
        let mut union: Vec<f64> = fast.iter().chain(&slow).copied().collect();
        union.sort_by(f64::total_cmp);
        let exact = |p| sketch::nearest_rank(&union, p).expect("samples");
        let m = matrix(&live.cells(now, region_of), By::Region, Some("udp"));
        let ab = m.iter().find(|c| c.dst == "rb").expect("ra -> rb");
        println!(
            "merged p50 {:.3} (exact {:.3}), p99 {:.3} (exact {:.3})",
            ab.p50_ms,
            exact(0.5),
            ab.p99_ms,
            exact(0.99)
        );
        assert_eq!(ab.samples, 400);
        for (got, want) in [(ab.p50_ms, exact(0.5)), (ab.p99_ms, exact(0.99))] {
            assert!((got - want).abs() <= want * 0.01, "{got} vs exact {want}");
        }
        // Parts that disagree the way the old merge got wrong: two of the slow part's 100
        // samples at 500 ms make its own p99 500, but they are 2 of the union's 400.
        let slow2: Vec<f64> = (0..100).map(|i| if i < 2 { 500.0 } else { 30.0 }).collect();
        report(&live, "a2", vec![pair_of("b1", &slow2)], now);
        let m = matrix(&live.cells(now, region_of), By::Region, Some("udp"));
        let ab = m.iter().find(|c| c.dst == "rb").expect("ra -> rb");
        // Union of 400: rank 396 is 30 ms; the old merge answered 500.
        assert!((ab.p99_ms - 30.0).abs() <= 0.3, "p99 {}", ab.p99_ms);

        // An older agent's pair (no histogram) among them: the approximation (max of p99s).
        let mut old = pair_of("b1", &slow2);
        old.rtt_histogram = None;
        report(&live, "a2", vec![old], now);
        let m = matrix(&live.cells(now, region_of), By::Region, Some("udp"));
        let ab = m.iter().find(|c| c.dst == "rb").expect("ra -> rb");
        assert_eq!(ab.p99_ms, 500.0);

        // A histogram counting other than the pair's samples is dropped with the pair.
        let mut lie = pair_of("b1", &slow2);
        lie.samples = 99;
        report(&live, "a2", vec![lie], now);
        let cells = live.cells(now, region_of);
        assert_eq!(cells.len(), 1, "only a1's pair is left: {cells:?}");
    }

    #[test]
    fn summaries_age_out_and_are_replaced() {
        let live = Live::new(Duration::from_secs(10), LiveLimits::default());
        let t0 = Instant::now();
        report(&live, "a1", vec![pair("b1", "udp", 1.0, 2.0, 5, 0)], t0);
        assert_eq!(live.cells(t0 + Duration::from_secs(10), region_of).len(), 1);
        report(&live, "a1", vec![], t0);
        assert!(live.cells(t0, region_of).is_empty(), "replaced");
        report(&live, "a1", vec![pair("b1", "udp", 1.0, 2.0, 5, 0)], t0);
        assert!(
            live.cells(t0 + Duration::from_secs(11), region_of)
                .is_empty()
        );
    }

    #[test]
    fn summaries_are_cut_to_the_caps_and_pruned_without_readers() {
        let one = pair("b1", "udp", 1.0, 2.0, 5, 0);
        let cost = pair_cost(&one);
        let live = Live::new(
            Duration::from_secs(10),
            LiveLimits {
                per_agent_bytes: cost * 3,
                total_pairs: 5,
                total_bytes: usize::MAX,
            },
        );
        let t0 = Instant::now();
        let ten = || pb::Summaries {
            pairs: vec![one.clone(); 10],
        };
        live.ingest("a1", "ra", ten(), t0);
        assert_eq!(live.totals().pairs, 3, "per-agent bytes");
        live.ingest("a1", "ra", ten(), t0);
        assert_eq!(
            live.totals().pairs,
            3,
            "a replacement does not count against itself"
        );
        live.ingest("a2", "ra", ten(), t0);
        assert_eq!(
            live.totals(),
            LiveTotals {
                agents: 2,
                pairs: 5,
                bytes: 5 * cost
            },
            "total pairs"
        );
        live.ingest("a3", "ra", ten(), t0 + Duration::from_secs(5));
        assert_eq!(live.totals().agents, 3);
        assert_eq!(live.prune(t0 + Duration::from_secs(11)), 2);
        assert_eq!(
            live.totals(),
            LiveTotals {
                agents: 1,
                pairs: 0,
                bytes: 0
            },
            "a3 got nothing: the total was used up when it sent"
        );
        live.remove("a3");
        assert_eq!(live.totals().agents, 0);
    }

    /// Direct and relayed paths of one pair are separate cells in both views; direct cells
    /// are what they were; relayed ones name the relay and carry the penalty.
    #[test]
    fn relayed_paths_are_cells_of_their_own() {
        let live = Live::new(SUMMARY_TTL, LiveLimits::default());
        let now = Instant::now();
        let relayed = |relay: &str, p50: f64, pen: f64, n: u64| {
            let mut p = pair("b1", "udp", p50, p50, n, 0);
            p.relay_agent = relay.into();
            p.relay_penalty_ms = Some(pen);
            p
        };
        report(
            &live,
            "a1",
            vec![
                pair("b1", "udp", 1.0, 2.0, 10, 0),
                relayed("r1", 5.0, 4.0, 10),
                relayed("r2", 3.0, -0.5, 10),
            ],
            now,
        );
        report(&live, "a2", vec![relayed("r1", 8.0, 7.0, 30)], now);
        let m = matrix(&live.cells(now, region_of), By::Agent, Some("udp"));
        let got: Vec<(&str, &str, f64, Option<f64>)> = m
            .iter()
            .map(|c| (c.src.as_str(), c.via.as_str(), c.p50_ms, c.relay_penalty_ms))
            .collect();
        assert_eq!(
            got,
            [
                ("a1", "", 1.0, None),
                ("a1", "r1", 5.0, Some(4.0)),
                ("a1", "r2", 3.0, Some(-0.5)),
                ("a2", "r1", 8.0, Some(7.0)),
            ]
        );
        let m = matrix(&live.cells(now, region_of), By::Region, Some("udp"));
        let got: Vec<(&str, u64, Option<f64>)> = m
            .iter()
            .map(|c| (c.via.as_str(), c.samples, c.relay_penalty_ms))
            .collect();
        // ra -> rb: direct (10), via r1 (10 + 30: the weighted median penalty is a2's 7), via r2.
        assert_eq!(
            got,
            [
                ("", 10, None),
                ("r1", 40, Some(7.0)),
                ("r2", 10, Some(-0.5))
            ]
        );
        // A non-finite penalty is a lie: dropped at ingest.
        report(&live, "a2", vec![relayed("r1", 8.0, f64::NAN, 30)], now);
        assert_eq!(live.totals().pairs, 3);
    }

    /// A peer's agents' summaries join the view (ours are never overwritten, nor sent back),
    /// are replaced by its next exchange, bounded per exchange, age with their age at the
    /// sender, and go with the peer.
    #[test]
    fn peer_summaries_merge_bounded_and_never_forwarded() {
        let live = Live::new(Duration::from_secs(10), LiveLimits::default());
        let t0 = Instant::now();
        report(&live, "a1", vec![pair("b1", "udp", 1.0, 2.0, 5, 0)], t0);
        let of = |id: &str, region: &str, n: usize, age_ms: u64| pb::AgentSummaries {
            agent_id: id.into(),
            region: region.into(),
            pairs: vec![pair("a1", "udp", 3.0, 4.0, 5, 0); n],
            age_ms,
        };
        let kept = live.ingest_peer(
            "rb",
            vec![
                of("b1", "rb", 2, 0),
                of("a1", "rb", 1, 0),        // ours: ignored
                of("x1", "elsewhere", 1, 0), // another region: ignored
                of("b2", "rb", 1, 20_000),   // older than the TTL: ignored
                of("b3", "rb", 5, 9_000),    // cut to what is left of 4
            ],
            t0,
            4,
            |id| id == "a1",
        );
        assert_eq!(kept, 4);
        let cells = live.cells(t0, region_of);
        let srcs: Vec<(&str, &str)> = cells
            .iter()
            .map(|c| (c.src_agent.as_str(), c.src_region.as_str()))
            .collect();
        assert_eq!(srcs.len(), 5, "{srcs:?}");
        assert!(srcs.contains(&("b1", "rb")) && srcs.contains(&("b3", "rb")));
        // Only our own agent is sent on.
        let own = live.own(t0, 100);
        assert_eq!(own.len(), 1);
        assert_eq!((own[0].agent_id.as_str(), own[0].pairs.len()), ("a1", 1));
        assert!(live.own(t0, 0).is_empty());
        // b3's arrived 9 s before: gone 1 s later; b1's still there.
        let later: Vec<String> = live
            .cells(t0 + Duration::from_secs(2), region_of)
            .into_iter()
            .map(|c| c.src_agent)
            .collect();
        assert!(!later.contains(&"b3".to_string()), "{later:?}");
        // The next exchange replaces the previous one.
        live.ingest_peer("rb", vec![of("b2", "rb", 1, 0)], t0, 4, |_| false);
        let mut srcs: Vec<String> = live
            .cells(t0, region_of)
            .into_iter()
            .map(|c| c.src_agent)
            .collect();
        srcs.sort();
        assert_eq!(srcs, ["a1", "b2"]);
        assert_eq!(live.totals().agents, 2);
        live.remove_peer("rb");
        assert_eq!(live.totals().agents, 1, "the peer's went with it");
    }

    #[test]
    fn by_parses() {
        assert_eq!(By::parse(""), Some(By::Agent));
        assert_eq!(By::parse("region"), Some(By::Region));
        assert_eq!(By::parse("az"), None);
    }
}
