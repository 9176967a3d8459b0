//! Strategies: which targets each source of a job measures (`full`, `k-random`, `per-region`;
//! [`crate::pinglist`] describes each).

use std::collections::{BTreeMap, BinaryHeap};

use meshlat_proto::pb;

use super::AgentView;
use super::select::{mesh_size, resolve};

/// Default `k` of `k-random`.
pub const DEFAULT_K_RANDOM: usize = 3;
/// Default representatives per region of `per-region`.
pub const DEFAULT_PER_REGION: usize = 1;

/// Rendezvous score: a 64-bit FNV-1a over the parts, finished with a splitmix64 mix.
fn score(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    mix(h)
}

/// The splitmix64 finaliser.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The `k` targets with the highest k-random score `mix(src ^ dst)` for the source `s` (ties:
/// the lower id), `s` itself excluded. `src` is `s`'s hash as a source and `s_dst` as a target;
/// `dsts[i]` is `targets[i]`'s hash as a target, so the loop hashes no strings.
fn top_k_pairs<'a>(
    s: &AgentView,
    (src, s_dst): (u64, u64),
    targets: &[&'a AgentView],
    dsts: &[u64],
    k: usize,
) -> Vec<&'a AgentView> {
    use std::cmp::Reverse;
    // Never more than there are candidates, whatever `k` says (a k of 4294967295 once
    // allocated 137 GB here).
    let k = k.min(dsts.len());
    // A min-heap of the best `k` so far: its root is the one to beat, `floor` its score.
    let mut best: BinaryHeap<Reverse<(u64, Reverse<&str>, usize)>> =
        BinaryHeap::with_capacity(k + 1);
    let mut floor = 0;
    for (i, &dst) in dsts.iter().enumerate() {
        let score = mix(src ^ dst);
        if score < floor || (dst == s_dst && targets[i].id == s.id) {
            continue;
        }
        let key = (score, Reverse(targets[i].id.as_str()), i);
        if best.len() < k {
            best.push(Reverse(key));
        } else if best.peek().is_some_and(|Reverse(min)| key > *min) {
            best.pop();
            best.push(Reverse(key));
        } else {
            continue;
        }
        if best.len() == k {
            floor = best.peek().map_or(0, |Reverse((min, _, _))| *min);
        }
    }
    best.into_iter()
        .map(|Reverse((_, _, i))| targets[i])
        .collect()
}

/// [`top_k_pairs`] for every source, the sources split over the available cores.
fn k_random<'a>(
    job: &pb::Job,
    sources: &[&'a AgentView],
    targets: &[&'a AgentView],
    k: usize,
) -> Vec<(&'a AgentView, Vec<&'a AgentView>)> {
    let dst = |id: &str| score(&[&job.id, "dst", id]);
    let dsts: Vec<u64> = targets.iter().map(|t| dst(&t.id)).collect();
    let one = |s: &&'a AgentView| {
        let hashes = (score(&[&job.id, "src", &s.id]), dst(&s.id));
        (*s, top_k_pairs(s, hashes, targets, &dsts, k))
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Below this many pairs a thread costs more than it saves.
    if threads < 2 || sources.len().saturating_mul(targets.len()) < 1 << 20 {
        return sources.iter().map(one).collect();
    }
    let chunk = sources.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = sources
            .chunks(chunk)
            .map(|c| scope.spawn(move || c.iter().map(one).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            // A panic in a part is a bug in the loop above; surface it here.
            .flat_map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

fn top_k(mut cands: Vec<&AgentView>, k: usize, key: impl Fn(&AgentView) -> u64) -> Vec<&AgentView> {
    cands.sort_by(|a, b| key(b).cmp(&key(a)).then_with(|| a.id.cmp(&b.id)));
    cands.truncate(k);
    cands
}

/// Target agents each source of `job` measures, by source id.
pub(super) fn pairs<'a>(
    job: &pb::Job,
    spec: &pb::JobSpec,
    agents: &'a [AgentView],
    max_full_mesh: usize,
) -> BTreeMap<&'a str, Vec<&'a AgentView>> {
    let sources = resolve(&spec.sources, agents);
    let targets = resolve(&spec.targets, agents);
    let mut out: BTreeMap<&str, Vec<&AgentView>> = BTreeMap::new();
    let strategy =
        pb::PinglistStrategy::try_from(spec.strategy).unwrap_or(pb::PinglistStrategy::Full);
    let others = |s: &AgentView| -> Vec<&'a AgentView> {
        targets.iter().copied().filter(|t| t.id != s.id).collect()
    };
    match strategy {
        pb::PinglistStrategy::Full | pb::PinglistStrategy::Unspecified => {
            let size = mesh_size(spec, agents);
            if size > max_full_mesh {
                tracing::warn!(
                    message = "Full-mesh job skipped: mesh larger than the configured maximum.",
                    job = %job.id,
                    size,
                    max_full_mesh
                );
                return out;
            }
            for s in &sources {
                out.insert(s.id.as_str(), others(s));
            }
        }
        pb::PinglistStrategy::KRandom => {
            let k = if spec.k == 0 {
                DEFAULT_K_RANDOM
            } else {
                spec.k as usize
            };
            // Clamped to the candidates (also in `top_k_pairs`, which allocates by it).
            let k = k.min(targets.len());
            for (s, chosen) in k_random(job, &sources, &targets, k) {
                out.insert(s.id.as_str(), chosen);
            }
        }
        pb::PinglistStrategy::PerRegion => {
            let k = if spec.k == 0 {
                DEFAULT_PER_REGION
            } else {
                spec.k as usize
            };
            let mut by_region: BTreeMap<&str, Vec<&AgentView>> = BTreeMap::new();
            for s in &sources {
                by_region.entry(s.region.as_str()).or_default().push(s);
            }
            let mut target_regions: BTreeMap<&str, Vec<&AgentView>> = BTreeMap::new();
            for t in &targets {
                target_regions.entry(t.region.as_str()).or_default().push(t);
            }
            // A target's score does not depend on the source: rank each region once, keeping
            // one spare for the representative that must skip itself.
            let ranked: Vec<Vec<&AgentView>> = target_regions
                .into_values()
                .map(|ts| top_k(ts, k.saturating_add(1), |t| score(&[&job.id, &t.id])))
                .collect();
            for (region, members) in by_region {
                for s in top_k(members, k, |a| score(&[&job.id, region, &a.id])) {
                    let mut chosen = Vec::new();
                    for ts in &ranked {
                        chosen.extend(ts.iter().copied().filter(|t| t.id != s.id).take(k));
                    }
                    out.insert(s.id.as_str(), chosen);
                }
            }
        }
    }
    // Sources that probe only external URLs still need an entry.
    for s in &sources {
        out.entry(s.id.as_str()).or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pinglist::test_support::*;
    use meshlat_proto::pb;

    #[test]
    fn k_random_is_stable_and_adding_an_agent_moves_few_pairs() {
        let mut agents: Vec<AgentView> = (0..40)
            .map(|i| agent(&format!("ag{i}"), if i % 2 == 0 { "a" } else { "b" }))
            .collect();
        let j = job(pb::PinglistStrategy::KRandom, 4);
        let before = pairs_of(&plan(&[&j], &agents, 0));
        assert_eq!(before.len(), 40 * 4);
        assert_eq!(before, pairs_of(&plan(&[&j], &agents, 0)), "stable");
        agents.push(agent("newcomer", "a"));
        let after = pairs_of(&plan(&[&j], &agents, 0));
        let lost = before.difference(&after).count();
        // Each old source loses a pair only to the newcomer: expected 40 * 4/40 = 4.
        assert!(lost <= 12, "adding one agent moved {lost} of 160 pairs");
        assert!(
            after
                .difference(&before)
                .all(|(s, d)| s == "newcomer" || d == "newcomer")
        );
    }

    #[test]
    fn per_region_picks_k_representatives_per_region_pair() {
        let agents: Vec<AgentView> = (0..20)
            .map(|i| agent(&format!("ag{i}"), ["a", "b", "c"][i % 3]))
            .collect();
        let j = job(pb::PinglistStrategy::PerRegion, 1);
        let mut j = j;
        if let Some(s) = j.spec.as_mut() {
            s.sources.push(sel("region=c"));
            s.targets.push(sel("region=c"));
        }
        let out = plan(&[&j], &agents, 0);
        assert_eq!(out.len(), 3, "one representative source per region");
        for asg in out.values() {
            assert_eq!(asg[0].targets.len(), 3, "one target per region");
        }
    }

    #[test]
    fn k_beyond_the_candidates_is_clamped_not_allocated() {
        let agents: Vec<AgentView> = (0..5).map(|i| agent(&format!("ag{i}"), "a")).collect();
        // Unvalidated (as an old version saved it): without the clamp this aborts the process
        // allocating a heap of 4294967296 entries.
        for strategy in [
            pb::PinglistStrategy::KRandom,
            pb::PinglistStrategy::PerRegion,
        ] {
            let j = job(strategy, u32::MAX);
            let out = plan(&[&j], &agents, 0);
            assert!(
                out.values().all(|a| a[0].targets.len() <= 4),
                "{strategy:?}: at most every other agent"
            );
            assert!(!out.is_empty(), "{strategy:?}");
        }
    }
}
