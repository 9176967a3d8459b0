//! Times the controller's real pinglist computation
//! ([`meshlat_controller::pinglist::compute_encoded`], encoded job sets as the registry pushes them)
//! for a large mesh: `--agents` agents spread over `--regions` regions, each advertising a UDP
//! and a TCP responder, with a `per-region` job, a `k-random` job and both together (what the
//! registry recomputes when anything changes). Used by `scripts/bench/bench.py` (`control_scale`).
//!
//! ```sh
//! cargo run --release -p meshlat-controller --example pinglist_bench -- --agents 10000 --regions 30
//! ```
//!
//! Prints one JSON object: the median wall time of `--rounds` runs of each case, in seconds, and
//! the number of (source, target) pairs each produced.

mod sim;
use sim::{endpoints, region_and_az, spec};

use clap::Parser;
use meshlat_controller::pinglist::{self, AgentView};
use meshlat_proto::pb;
use tokio::time::Instant;

#[derive(Parser)]
#[command(about = "Time pinglist computation for a large simulated mesh")]
struct Args {
    /// Agents in the mesh.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Regions the agents are spread over (round robin).
    #[arg(long, default_value_t = 30)]
    regions: usize,
    /// `k` of the k-random job.
    #[arg(long, default_value_t = 32)]
    k: u32,
    /// Representatives per region (and targets per region) of the per-region job.
    #[arg(long, default_value_t = 3)]
    per_region_k: u32,
    /// Runs of each case; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn agents(n: usize, regions: usize) -> Vec<AgentView> {
    (0..n)
        .map(|i| {
            let (region, az) = region_and_az(i, regions);
            AgentView {
                // The controller names agents with UUID v7s; use ids of the same shape.
                id: uuid::Uuid::now_v7().to_string(),
                region,
                az,
                location: String::new(),
                endpoints: endpoints(10, i),
                relay: false,
            }
        })
        .collect()
}

fn job(id: &str, strategy: pb::PinglistStrategy, k: u32, regions: usize) -> pb::Job {
    pb::Job {
        id: id.into(),
        version: 1,
        spec: Some(spec(strategy, k, regions, 1000)),
        ..Default::default()
    }
}

/// Median seconds of `rounds` runs, and the pairs of the last run.
fn time(rounds: usize, jobs: &[&pb::Job], agents: &[AgentView]) -> (f64, usize) {
    let mut secs = Vec::new();
    let mut pairs = 0;
    for _ in 0..rounds.max(1) {
        let t0 = Instant::now();
        let keys = meshlat_controller::keys::MeshKeys::new(
            b"bench",
            meshlat_proto::grant::GrantSigner::derive_standalone(b"bench"),
        );
        let signing = pinglist::Signing {
            keys: &keys,
            expires_unix: 0,
        };
        let plan = pinglist::compute_encoded(jobs, agents, 0, &signing);
        secs.push(t0.elapsed().as_secs_f64());
        // Counted outside the timing, from the bytes the registry would push.
        pairs = plan
            .values()
            .map(|b| {
                <pb::JobSet as prost::Message>::decode(&b[..])
                    .map(|s| s.assignments.iter().map(|x| x.targets.len()).sum::<usize>())
                    .unwrap_or(0)
            })
            .sum();
    }
    secs.sort_by(f64::total_cmp);
    (secs[secs.len() / 2], pairs)
}

fn main() {
    let a = Args::parse();
    let views = agents(a.agents, a.regions);
    let pr = job(
        "job-per-region",
        pb::PinglistStrategy::PerRegion,
        a.per_region_k,
        a.regions,
    );
    let kr = job(
        "job-k-random",
        pb::PinglistStrategy::KRandom,
        a.k,
        a.regions,
    );
    let (per_region_s, per_region_pairs) = time(a.rounds, &[&pr], &views);
    let (k_random_s, k_random_pairs) = time(a.rounds, &[&kr], &views);
    let (both_s, _) = time(a.rounds, &[&pr, &kr], &views);
    let out = serde_json::json!({
        "agents": a.agents,
        "regions": a.regions,
        "k": a.k,
        "per_region_k": a.per_region_k,
        "per_region_s": per_region_s,
        "per_region_pairs": per_region_pairs,
        "k_random_s": k_random_s,
        "k_random_pairs": k_random_pairs,
        "both_s": both_s,
    });
    println!("{out}");
}
