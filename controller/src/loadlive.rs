//! The live view of load jobs (issue 15 item 5): agents' load seconds merged per job, step and
//! source region.
//!
//! Each agent running a load job sends every second of it, per target, as a `LoadReport`
//! (`AgentMessage.load_reports`; the agent's `load::live` module). The registry admits a report
//! only from the agent's current session and only for a load job assigned to that agent
//! ([`crate::registry::Registry::load_reports`]); [`check`] then refuses what a lying or broken
//! agent could send — malformed histograms ([`meshlat_proto::sketch::RttHistogram::from_pb`]),
//! histograms that do not count exactly the second's responses, counts beyond
//! [`MAX_PER_SECOND`], a length, level, worker count or step out of range — and [`LoadLive`]
//! refuses a second that is not later than the last one of the same agent, job and target on the
//! same session (a replay cannot inflate the figures; a restarted agent, on a new session,
//! counts from 0 again).
//!
//! # Aggregation
//!
//! A cell is one (job, step, source region). It sums its seconds' counts and merges their
//! latency histograms (corrected, from the intended send time, and uncorrected), so its
//! percentiles are those of every request of the step in the region, within the histogram's
//! 0.5 % — never an average of percentiles. Rates are per region: a source (agent and target)
//! contributes its own rate, so a cell's rate is its requests over the seconds covered per
//! source, `n / (Σ length / sources)`. `workers` is the sum of each source's latest figure and
//! `level` the largest latest level (per agent: workers, or req/s).
//!
//! # Bounds
//!
//! At most [`MAX_JOBS`] jobs are kept (the one heard from longest ago makes room), each with at
//! most [`MAX_CELLS_PER_JOB`] cells and [`MAX_SOURCES_PER_JOB`] sources; everything held (a
//! histogram bucket, a source in a cell) costs one unit of [`MAX_UNITS`] over all jobs. A report
//! beyond a cap is refused. A job not heard from for [`JOB_TTL`] is dropped ([`LoadLive::prune`],
//! from the registry's sweep), and so is a job the registry no longer holds.
//!
//! The view is best effort: agents drop seconds while the controller is away, and the records
//! in the sinks remain the truth (`infra/athena/load_curve.sql` computes the same figures from
//! them).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use meshlat_proto::pb;
use meshlat_proto::sketch::{HistogramError, RttHistogram};
use serde_json::{Value, json};
use tokio::time::Instant;

/// Most load jobs kept.
pub const MAX_JOBS: usize = 64;
/// Most (step, region) cells per job; beyond, the earliest step's cells make room.
pub const MAX_CELLS_PER_JOB: usize = 512;
/// Most (agent, target) sources per job.
pub const MAX_SOURCES_PER_JOB: usize = 20_000;
/// Most units (histogram buckets and sources in cells) held over all jobs: about 100 MB at
/// worst.
pub const MAX_UNITS: usize = 2_000_000;
/// A job not heard from for this long is dropped.
pub const JOB_TTL: Duration = Duration::from_secs(15 * 60);
/// Most requests (or responses, or failures) one source may claim in one second: above any
/// agent's rate cap.
pub const MAX_PER_SECOND: u64 = 10_000_000;
/// Largest `second` (a year of seconds).
pub const MAX_SECOND: u64 = 366 * 86_400;
/// Largest step index (a job has at most 1,000 steps).
pub const MAX_STEP: u32 = 1000;
/// Most workers or connections per agent (the job spec's bound on connections).
pub const MAX_WORKERS: u32 = 100_000;
/// Largest level (the job spec's bound on a rate).
pub const MAX_LEVEL: f64 = 1_000_000.0;
/// Longest job id and target accepted.
pub const MAX_ID_BYTES: usize = 128;
/// Longest target accepted.
pub const MAX_TARGET_BYTES: usize = 2048;

/// Why a load report was refused.
#[derive(Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The job is not assigned to the agent (or unknown).
    #[error("job {0:?} is not assigned to this agent")]
    NotAssigned(String),
    /// The job is not a load job.
    #[error("job {0:?} is not a load job")]
    NotLoadJob(String),
    /// A histogram was malformed.
    #[error("{which} histogram: {error}")]
    Histogram {
        /// `corrected` or `uncorrected`.
        which: &'static str,
        /// What is wrong.
        error: HistogramError,
    },
    /// A histogram does not count exactly the responses.
    #[error("{which} histogram counts {got} latencies for {responses} responses")]
    HistogramCount {
        /// `corrected` or `uncorrected`.
        which: &'static str,
        /// Its count.
        got: u64,
        /// The responses of the second.
        responses: u64,
    },
    /// A field out of its range.
    #[error("{field} out of range: {value}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
    },
    /// A second not later than the last one of the same agent, job and target.
    #[error("second {second} is not after {last}, already reported")]
    Replayed {
        /// The report's second.
        second: u64,
        /// The last one accepted.
        last: u64,
    },
    /// A cap of the live view is reached.
    #[error("the load live view is full ({0})")]
    Full(&'static str),
}

impl Refusal {
    /// A short, bounded name for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotAssigned(_) => "not_assigned",
            Refusal::NotLoadJob(_) => "not_load_job",
            Refusal::Histogram { .. } => "bad_histogram",
            Refusal::HistogramCount { .. } => "histogram_count",
            Refusal::OutOfRange { .. } => "out_of_range",
            Refusal::Replayed { .. } => "replayed",
            Refusal::Full(_) => "full",
        }
    }
}

/// A report that passed [`check`], its histograms decoded.
#[derive(Debug)]
pub struct Checked {
    report: pb::LoadReport,
    corrected: RttHistogram,
    uncorrected: RttHistogram,
}

/// Status classes in the order of the JSON and the proto: 2xx, 3xx, 4xx, 429, 5xx, other.
const STATUS_NAMES: [&str; 6] = ["2xx", "3xx", "4xx", "429", "5xx", "other"];
/// Error kinds: connect, timeout, tls, io.
const ERROR_NAMES: [&str; 4] = ["connect", "timeout", "tls", "io"];

fn statuses(r: &pb::LoadReport) -> [u64; 6] {
    [
        r.status_2xx,
        r.status_3xx,
        r.status_4xx,
        r.status_429,
        r.status_5xx,
        r.status_other,
    ]
}

fn errors(r: &pb::LoadReport) -> [u64; 4] {
    [
        r.errors_connect,
        r.errors_timeout,
        r.errors_tls,
        r.errors_io,
    ]
}

fn out_of_range(field: &'static str, value: impl std::fmt::Display) -> Refusal {
    Refusal::OutOfRange {
        field,
        value: value.to_string(),
    }
}

/// Checks one report on its own (module docs): ranges, counts and histograms.
///
/// # Errors
///
/// The [`Refusal`] naming the first thing wrong.
pub fn check(report: pb::LoadReport) -> Result<Checked, Refusal> {
    let r = &report;
    if r.job_id.is_empty() || r.job_id.len() > MAX_ID_BYTES {
        return Err(out_of_range("job_id", format!("{} bytes", r.job_id.len())));
    }
    if r.target.len() > MAX_TARGET_BYTES {
        return Err(out_of_range("target", format!("{} bytes", r.target.len())));
    }
    if r.second > MAX_SECOND {
        return Err(out_of_range("second", r.second));
    }
    if !(1..=1000).contains(&r.length_ms) {
        return Err(out_of_range("length_ms", r.length_ms));
    }
    if r.step > MAX_STEP {
        return Err(out_of_range("step", r.step));
    }
    if r.workers > MAX_WORKERS {
        return Err(out_of_range("workers", r.workers));
    }
    if !(r.level.is_finite() && (0.0..=MAX_LEVEL).contains(&r.level)) {
        return Err(out_of_range("level", r.level));
    }
    for (field, v) in [("intended", r.intended), ("sent", r.sent)]
        .into_iter()
        .chain(STATUS_NAMES.into_iter().zip(statuses(r)))
        .chain(ERROR_NAMES.into_iter().zip(errors(r)))
    {
        if v > MAX_PER_SECOND {
            return Err(out_of_range(field, v));
        }
    }
    let responses: u64 = statuses(r).iter().sum();
    if responses > MAX_PER_SECOND {
        return Err(out_of_range("responses", responses));
    }
    for (field, v) in [
        ("corrected_max_ms", r.corrected_max_ms),
        ("uncorrected_max_ms", r.uncorrected_max_ms),
    ] {
        if let Some(v) = v
            && !(v.is_finite() && (0.0..=meshlat_proto::sketch::MAX_MS).contains(&v))
        {
            return Err(out_of_range(field, v));
        }
    }
    let decode = |which: &'static str, h: &Option<pb::RttHistogram>| {
        let h = match h {
            Some(h) => {
                RttHistogram::from_pb(h).map_err(|error| Refusal::Histogram { which, error })?
            }
            None => RttHistogram::new(),
        };
        if h.count() != responses {
            return Err(Refusal::HistogramCount {
                which,
                got: h.count(),
                responses,
            });
        }
        Ok(h)
    };
    let corrected = decode("corrected", &r.corrected)?;
    let uncorrected = decode("uncorrected", &r.uncorrected)?;
    Ok(Checked {
        report,
        corrected,
        uncorrected,
    })
}

/// The live view of every load job (module docs).
#[derive(Debug, Default)]
pub struct LoadLive {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    jobs: HashMap<String, JobLoad>,
    /// Units held over all jobs.
    units: usize,
}

#[derive(Debug)]
struct JobLoad {
    last_report: Instant,
    last_unix_ms: i64,
    /// (agent, target) → (index, last second accepted, the session it came on).
    sources: HashMap<(String, String), (u32, u64, u64)>,
    cells: BTreeMap<(u32, String), Cell>,
    units: usize,
}

#[derive(Debug, Default)]
struct Cell {
    /// Source index → its agent (for counting agents), latest workers and level.
    sources: BTreeMap<u32, SourceNow>,
    seconds: u64,
    length_ms: u64,
    intended: u64,
    sent: u64,
    status: [u64; 6],
    errors: [u64; 4],
    corrected: RttHistogram,
    uncorrected: RttHistogram,
    corrected_max_ms: Option<f64>,
    uncorrected_max_ms: Option<f64>,
    last_unix_ms: i64,
}

#[derive(Debug)]
struct SourceNow {
    agent: String,
    workers: u32,
    level: f64,
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

// === impl LoadLive ===

impl LoadLive {
    /// An empty view.
    pub fn new() -> Self {
        LoadLive::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a checked second of `agent` (in `region`), received on its session `session`, now.
    ///
    /// # Errors
    ///
    /// [`Refusal::Replayed`] for a second not after the source's last on the same session (a
    /// new session — a restarted agent, whose engine counts from 0 again — starts over),
    /// [`Refusal::Full`] beyond a cap.
    pub fn ingest(
        &self,
        agent: &str,
        session: u64,
        region: &str,
        c: Checked,
        now: Instant,
    ) -> Result<(), Refusal> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let r = &c.report;
        if !st.jobs.contains_key(&r.job_id) && st.jobs.len() >= MAX_JOBS {
            // The job heard from longest ago makes room.
            if let Some(oldest) = st
                .jobs
                .iter()
                .min_by_key(|(_, j)| j.last_report)
                .map(|(id, _)| id.clone())
                && let Some(j) = st.jobs.remove(&oldest)
            {
                st.units -= j.units;
                tracing::debug!(message = "Load live view full; the job heard from longest ago dropped.", job = %oldest);
            }
        }
        let job = st.jobs.entry(r.job_id.clone()).or_insert_with(|| JobLoad {
            last_report: now,
            last_unix_ms: 0,
            sources: HashMap::new(),
            cells: BTreeMap::new(),
            units: 0,
        });
        let key = (agent.to_string(), r.target.clone());
        let next_index = u32::try_from(job.sources.len()).unwrap_or(u32::MAX);
        let index = match job.sources.get(&key) {
            Some(&(i, last, on)) => {
                if on == session && r.second <= last {
                    return Err(Refusal::Replayed {
                        second: r.second,
                        last,
                    });
                }
                i
            }
            None if job.sources.len() >= MAX_SOURCES_PER_JOB => {
                return Err(Refusal::Full("sources per job"));
            }
            None => next_index,
        };
        let cell_key = (r.step, region.to_string());
        if !job.cells.contains_key(&cell_key) && job.cells.len() >= MAX_CELLS_PER_JOB {
            // The earliest step's cells make room: the live view follows the running steps.
            if job
                .cells
                .first_key_value()
                .is_some_and(|(k, _)| *k < cell_key)
                && let Some((_, old)) = job.cells.pop_first()
            {
                let freed = old.corrected.buckets() + old.uncorrected.buckets() + old.sources.len();
                job.units -= freed;
                st.units -= freed;
            } else {
                return Err(Refusal::Full("steps and regions per job"));
            }
        }
        // Units this report may add: new buckets and a new source in the cell (an upper bound).
        let cell_now = job.cells.get(&cell_key);
        let before = cell_now.map_or(0, |cell| {
            cell.corrected.buckets() + cell.uncorrected.buckets() + cell.sources.len()
        });
        let bound = before
            + c.corrected.buckets()
            + c.uncorrected.buckets()
            + usize::from(cell_now.is_none_or(|cell| !cell.sources.contains_key(&index)));
        if st.units - before + bound > MAX_UNITS {
            return Err(Refusal::Full("units"));
        }
        job.sources.insert(key.clone(), (index, r.second, session));
        let cell = job.cells.entry(cell_key).or_default();
        cell.sources.insert(
            index,
            SourceNow {
                agent: agent.to_string(),
                workers: r.workers,
                level: r.level,
            },
        );
        cell.seconds += 1;
        cell.length_ms += u64::from(r.length_ms);
        cell.intended = cell.intended.saturating_add(r.intended);
        cell.sent = cell.sent.saturating_add(r.sent);
        for (a, b) in cell.status.iter_mut().zip(statuses(r)) {
            *a = a.saturating_add(b);
        }
        for (a, b) in cell.errors.iter_mut().zip(errors(r)) {
            *a = a.saturating_add(b);
        }
        cell.corrected.merge(&c.corrected);
        cell.uncorrected.merge(&c.uncorrected);
        cell.corrected_max_ms = max_opt(cell.corrected_max_ms, r.corrected_max_ms);
        cell.uncorrected_max_ms = max_opt(cell.uncorrected_max_ms, r.uncorrected_max_ms);
        cell.last_unix_ms = cell.last_unix_ms.max(r.end_unix_ms);
        let after = cell.corrected.buckets() + cell.uncorrected.buckets() + cell.sources.len();
        job.units = job.units - before + after;
        job.last_report = now;
        job.last_unix_ms = job.last_unix_ms.max(r.end_unix_ms);
        st.units = st.units - before + after;
        Ok(())
    }

    /// Drops jobs not heard from for [`JOB_TTL`] and those `keep` says no to (the registry no
    /// longer holds them); the jobs dropped.
    pub fn prune(&self, now: Instant, keep: impl Fn(&str) -> bool) -> usize {
        let mut st = self.lock();
        let before = st.jobs.len();
        let mut freed = 0;
        st.jobs.retain(|id, j| {
            let k = now.saturating_duration_since(j.last_report) <= JOB_TTL && keep(id);
            if !k {
                freed += j.units;
            }
            k
        });
        st.units -= freed;
        before - st.jobs.len()
    }

    /// Jobs kept and units held.
    pub fn totals(&self) -> (usize, usize) {
        let st = self.lock();
        (st.jobs.len(), st.units)
    }

    /// One job's cells (one per step and region, by step then region) and when it was last
    /// heard from; `None` if nothing arrived for it.
    pub fn snapshot(&self, job_id: &str) -> Option<(Vec<pb::LoadStepStats>, i64)> {
        let st = self.lock();
        let job = st.jobs.get(job_id)?;
        let steps = job
            .cells
            .iter()
            .map(|((step, region), c)| cell_stats(*step, region, c))
            .collect();
        Some((steps, job.last_unix_ms))
    }
}

fn cell_stats(step: u32, region: &str, c: &Cell) -> pb::LoadStepStats {
    let sources = c.sources.len();
    let mut agents: Vec<&str> = c.sources.values().map(|s| s.agent.as_str()).collect();
    agents.sort_unstable();
    agents.dedup();
    // Seconds per source: the rate is the region's, each source contributing its own.
    let per_source_s = c.length_ms as f64 / 1000.0 / sources.max(1) as f64;
    let rate = |n: u64| {
        if per_source_s > 0.0 {
            n as f64 / per_source_s
        } else {
            0.0
        }
    };
    let responses: u64 = c.status.iter().sum();
    let failed: u64 = c.errors.iter().sum();
    // What did not succeed for the target's reasons: 5xx, 429 and failed requests.
    let errors = c.status[4] + c.status[3] + failed;
    let [s2, s3, s4, s429, s5, so] = c.status;
    let [ec, et, etls, eio] = c.errors;
    pb::LoadStepStats {
        step,
        region: region.to_string(),
        agents: u32::try_from(agents.len()).unwrap_or(u32::MAX),
        sources: u32::try_from(sources).unwrap_or(u32::MAX),
        seconds: c.seconds,
        level: c.sources.values().map(|s| s.level).fold(0.0f64, f64::max),
        workers: c.sources.values().map(|s| u64::from(s.workers)).sum(),
        intended_rps: rate(c.intended),
        achieved_rps: rate(responses),
        requests: c.sent,
        responses,
        status_2xx: s2,
        status_3xx: s3,
        status_4xx: s4,
        status_429: s429,
        status_5xx: s5,
        status_other: so,
        errors_connect: ec,
        errors_timeout: et,
        errors_tls: etls,
        errors_io: eio,
        error_count: errors,
        error_share: (c.sent > 0).then(|| errors as f64 / c.sent as f64),
        p50_ms: c.corrected.quantile(0.5),
        p90_ms: c.corrected.quantile(0.9),
        p99_ms: c.corrected.quantile(0.99),
        p999_ms: c.corrected.quantile(0.999),
        max_ms: c.corrected_max_ms,
        uncorrected_p50_ms: c.uncorrected.quantile(0.5),
        uncorrected_p99_ms: c.uncorrected.quantile(0.99),
        uncorrected_max_ms: c.uncorrected_max_ms,
        last_unix_ms: c.last_unix_ms,
    }
}

/// The JSON form of a load job's live view (`GET /api/v1/jobs/{id}/load`, the `LoadView`
/// schema of the OpenAPI document): the fields of [`pb::LoadStats`], each step's status
/// classes and errors as objects (`status.2xx`, `errors.timeout`, ...), absent figures `null`.
pub fn stats_to_value(s: &pb::LoadStats) -> Value {
    let steps: Vec<Value> = s
        .steps
        .iter()
        .map(|c| {
            json!({
                "step": c.step,
                "region": c.region,
                "agents": c.agents,
                "sources": c.sources,
                "seconds": c.seconds,
                "level": c.level,
                "workers": c.workers,
                "intended_rps": c.intended_rps,
                "achieved_rps": c.achieved_rps,
                "requests": c.requests,
                "responses": c.responses,
                "status": {
                    "2xx": c.status_2xx, "3xx": c.status_3xx, "4xx": c.status_4xx,
                    "429": c.status_429, "5xx": c.status_5xx, "other": c.status_other,
                },
                "errors": {
                    "connect": c.errors_connect, "timeout": c.errors_timeout,
                    "tls": c.errors_tls, "io": c.errors_io,
                },
                "error_count": c.error_count,
                "error_share": c.error_share,
                "p50_ms": c.p50_ms,
                "p90_ms": c.p90_ms,
                "p99_ms": c.p99_ms,
                "p999_ms": c.p999_ms,
                "max_ms": c.max_ms,
                "uncorrected_p50_ms": c.uncorrected_p50_ms,
                "uncorrected_p99_ms": c.uncorrected_p99_ms,
                "uncorrected_max_ms": c.uncorrected_max_ms,
                "last_unix_ms": c.last_unix_ms,
            })
        })
        .collect();
    json!({
        "job_id": s.job_id,
        "stopped": s.stopped,
        "done": s.done,
        "updated_unix_ms": s.updated_unix_ms,
        "steps": steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second of `n` 2xx responses at `ms` each (both histograms), one 503 and one timeout.
    fn report(job: &str, second: u64, step: u32, n: u64, ms: f64) -> pb::LoadReport {
        let mut h = RttHistogram::new();
        for _ in 0..n + 1 {
            h.record(ms);
        }
        pb::LoadReport {
            job_id: job.into(),
            target: "http://t/".into(),
            second,
            length_ms: 1000,
            step,
            workers: 10 * (step + 1),
            level: f64::from(10 * (step + 1)),
            intended: n + 2,
            sent: n + 2,
            status_2xx: n,
            status_5xx: 1,
            errors_timeout: 1,
            corrected: Some(h.to_pb()),
            uncorrected: Some(h.to_pb()),
            corrected_max_ms: Some(ms),
            uncorrected_max_ms: Some(ms),
            end_unix_ms: 1_700_000_000_000 + second as i64 * 1000,
            ..Default::default()
        }
    }

    fn ok(live: &LoadLive, agent: &str, region: &str, r: pb::LoadReport) {
        live.ingest(agent, 1, region, check(r).expect("valid"), Instant::now())
            .expect("accepted");
    }

    fn near(got: &Value, want: f64) -> bool {
        got.as_f64()
            .is_some_and(|g| (g - want).abs() <= want * 0.005 + 1e-9)
    }

    /// A job's steps in their JSON form, and when it was last heard from.
    fn steps_of(live: &LoadLive, job: &str) -> Option<(Vec<Value>, i64)> {
        let (steps, last) = live.snapshot(job)?;
        let v = stats_to_value(&pb::LoadStats {
            steps,
            ..Default::default()
        });
        Some((v["steps"].as_array().cloned().unwrap_or_default(), last))
    }

    #[test]
    fn cells_merge_agents_and_seconds_per_step_and_region() {
        let live = LoadLive::new();
        // eu: two agents, two seconds each of step 0 (e1 at 10 ms, e2 at 20 ms); one second of
        // step 1 from e1 at 300 ms. us: one agent.
        ok(&live, "e1", "eu", report("j", 0, 0, 99, 10.0));
        ok(&live, "e1", "eu", report("j", 1, 0, 99, 10.0));
        ok(&live, "e2", "eu", report("j", 0, 0, 99, 20.0));
        ok(&live, "e2", "eu", report("j", 1, 0, 99, 20.0));
        ok(&live, "e1", "eu", report("j", 2, 1, 49, 300.0));
        ok(&live, "u1", "us", report("j", 0, 0, 9, 50.0));
        let (steps, last) = steps_of(&live, "j").expect("job");
        assert_eq!(last, 1_700_000_002_000);
        let keys: Vec<(u64, &str)> = steps
            .iter()
            .map(|s| {
                (
                    s["step"].as_u64().unwrap_or(99),
                    s["region"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(keys, [(0, "eu"), (0, "us"), (1, "eu")]);
        let eu0 = &steps[0];
        assert_eq!(eu0["agents"], 2);
        assert_eq!(eu0["seconds"], 4);
        assert_eq!(eu0["workers"], 20);
        assert_eq!(eu0["level"], 10.0);
        assert_eq!(eu0["requests"], 4 * 101);
        assert_eq!(eu0["responses"], 4 * 100);
        assert_eq!(eu0["status"]["5xx"], 4);
        assert_eq!(eu0["errors"]["timeout"], 4);
        assert_eq!(eu0["error_count"], 8);
        // 2 agents × 100 responses per second each: 200/s for the region.
        assert!(near(&eu0["achieved_rps"], 200.0), "{eu0}");
        assert!(near(&eu0["intended_rps"], 202.0), "{eu0}");
        // Merged: half the latencies 10 ms, half 20 ms: p50 is 10, p99 20 (not an average).
        assert!(near(&eu0["p50_ms"], 10.0), "{eu0}");
        assert!(near(&eu0["p99_ms"], 20.0), "{eu0}");
        assert_eq!(eu0["max_ms"], 20.0);
        let eu1 = &steps[2];
        assert_eq!(
            (eu1["agents"].as_u64(), eu1["workers"].as_u64()),
            (Some(1), Some(20))
        );
        assert!(near(&eu1["p99_ms"], 300.0));
        assert!(near(&eu1["achieved_rps"], 50.0));
        assert!(live.snapshot("other").is_none());
    }

    #[test]
    fn a_lying_agent_is_refused() {
        let good = report("j", 0, 0, 9, 5.0);
        // A histogram counting other than the responses.
        let mut r = good.clone();
        r.status_2xx += 5;
        assert!(matches!(check(r), Err(Refusal::HistogramCount { .. })));
        // A malformed histogram: bucket index out of range, zero count, length mismatch.
        for bad in [
            pb::RttHistogram {
                index_deltas: vec![100_000],
                counts: vec![10],
                zero_count: 0,
            },
            pb::RttHistogram {
                index_deltas: vec![1],
                counts: vec![0],
                zero_count: 10,
            },
            pb::RttHistogram {
                index_deltas: vec![1, 2],
                counts: vec![10],
                zero_count: 0,
            },
        ] {
            let mut r = good.clone();
            r.corrected = Some(bad);
            assert!(matches!(
                check(r),
                Err(Refusal::Histogram {
                    which: "corrected",
                    ..
                })
            ));
        }
        // Absurd counts and ranges.
        let mut r = good.clone();
        r.sent = MAX_PER_SECOND + 1;
        assert_eq!(
            check(r).map(|_| ()).map_err(|e| e.reason()),
            Err("out_of_range")
        );
        for tweak in [
            (|r: &mut pb::LoadReport| r.length_ms = 0) as fn(&mut pb::LoadReport),
            |r| r.length_ms = 5000,
            |r| r.level = f64::NAN,
            |r| r.level = -1.0,
            |r| r.workers = MAX_WORKERS + 1,
            |r| r.step = MAX_STEP + 1,
            |r| r.second = MAX_SECOND + 1,
            |r| r.job_id = String::new(),
            |r| r.corrected_max_ms = Some(f64::INFINITY),
        ] {
            let mut r = good.clone();
            tweak(&mut r);
            assert!(matches!(check(r), Err(Refusal::OutOfRange { .. })));
        }
        // A replayed second (or an older one) of the same agent, job and target.
        let live = LoadLive::new();
        ok(&live, "a", "eu", good.clone());
        let again = live.ingest(
            "a",
            1,
            "eu",
            check(good.clone()).expect("valid"),
            Instant::now(),
        );
        assert_eq!(again, Err(Refusal::Replayed { second: 0, last: 0 }));
        // A new session (a restarted agent counts from 0 again) starts over.
        let restarted = live.ingest(
            "a",
            2,
            "eu",
            check(good.clone()).expect("valid"),
            Instant::now(),
        );
        assert_eq!(restarted, Ok(()));
        // Another target of the same agent is another source.
        let mut other = good.clone();
        other.target = "http://u/".into();
        ok(&live, "a", "eu", other);
        let (steps, _) = steps_of(&live, "j").expect("job");
        assert_eq!(steps[0]["seconds"], 3);
        assert_eq!(steps[0]["agents"], 1);
        assert_eq!(steps[0]["sources"], 2);
    }

    #[test]
    fn memory_is_bounded_and_old_jobs_go() {
        let live = LoadLive::new();
        let t0 = Instant::now();
        for i in 0..MAX_JOBS + 3 {
            let job = format!("j{i}");
            live.ingest(
                "a",
                1,
                "eu",
                check(report(&job, 0, 0, 1, 1.0)).expect("valid"),
                t0 + Duration::from_secs(i as u64),
            )
            .expect("accepted");
        }
        // The jobs heard from longest ago made room.
        assert_eq!(live.totals().0, MAX_JOBS);
        assert!(live.snapshot("j0").is_none());
        assert!(live.snapshot(&format!("j{}", MAX_JOBS + 2)).is_some());
        // Cells per job are capped.
        for step in 0..=MAX_STEP {
            let r = live.ingest(
                &format!("a{step}"),
                1,
                "eu",
                check(report("big", u64::from(step), step, 1, 1.0)).expect("valid"),
                t0,
            );
            assert_eq!(r, Ok(()));
        }
        // The earliest steps made room for the later ones; an earlier step than any kept is
        // refused.
        let (steps, _) = steps_of(&live, "big").expect("job");
        assert_eq!(steps.len(), MAX_CELLS_PER_JOB);
        assert_eq!(
            steps[0]["step"],
            u64::from(MAX_STEP) + 1 - MAX_CELLS_PER_JOB as u64
        );
        let r = live.ingest(
            "late",
            1,
            "eu",
            check(report("big", 0, 0, 1, 1.0)).expect("valid"),
            t0,
        );
        assert_eq!(r, Err(Refusal::Full("steps and regions per job")));
        // The units account adds up, and pruning frees them.
        let (_, units) = live.totals();
        assert!(units > 0);
        let dropped = live.prune(
            t0 + JOB_TTL + Duration::from_secs(MAX_JOBS as u64 + 10),
            |_| true,
        );
        assert_eq!(dropped, MAX_JOBS);
        assert_eq!(live.totals(), (0, 0));
        // A job the registry no longer holds goes at once.
        ok(&live, "a", "eu", report("gone", 0, 0, 1, 1.0));
        ok(&live, "a", "eu", report("kept", 0, 0, 1, 1.0));
        assert_eq!(live.prune(Instant::now(), |id| id == "kept"), 1);
        assert!(live.snapshot("kept").is_some());
    }

    /// Units held, recomputed from the cells.
    fn units_recounted(live: &LoadLive) -> usize {
        let st = live.lock();
        st.jobs
            .values()
            .flat_map(|j| j.cells.values())
            .map(|c| c.corrected.buckets() + c.uncorrected.buckets() + c.sources.len())
            .sum()
    }

    fn any_histogram() -> impl proptest::strategy::Strategy<Value = Option<pb::RttHistogram>> {
        use proptest::prelude::*;
        prop::option::of(
            (
                prop::collection::vec(-3000i32..3000, 0..6),
                prop::collection::vec(0u64..5, 0..6),
                0u64..3,
            )
                .prop_map(|(index_deltas, counts, zero_count)| pb::RttHistogram {
                    index_deltas,
                    counts,
                    zero_count,
                }),
        )
    }

    proptest::proptest! {
        /// Whatever an agent sends, checking and merging never panic, and the memory account
        /// stays exact.
        #[test]
        fn any_report_is_checked_and_merged_without_panic(
            reports in proptest::collection::vec(
                (
                    0u64..4, 0u32..3, 0u64..6, 0u64..3, 0u64..3, 0u32..1200,
                    proptest::prop_oneof![0.0f64..100.0, proptest::prelude::any::<f64>()],
                    any_histogram(), any_histogram(), 0u8..3, 0u64..3,
                    proptest::option::of(proptest::collection::vec(0.0f64..5000.0, 1..8)),
                ),
                1..40,
            )
        ) {
            let live = LoadLive::new();
            for (second, step, s2xx, s5xx, timeout, length_ms, level, corrected, uncorrected, agent, session, honest) in reports {
                // An honest second (histograms counting its responses) or arbitrary ones.
                let (s2xx, s5xx, corrected, uncorrected) = match honest {
                    Some(ms) => {
                        let mut h = RttHistogram::new();
                        ms.iter().for_each(|v| h.record(*v));
                        let n = ms.len() as u64;
                        (n - s5xx.min(n), s5xx.min(n), Some(h.to_pb()), Some(h.to_pb()))
                    }
                    None => (s2xx, s5xx, corrected, uncorrected),
                };
                let r = pb::LoadReport {
                    job_id: format!("j{}", second % 2),
                    target: "http://t/".into(),
                    second,
                    length_ms,
                    step,
                    workers: 3,
                    level,
                    intended: s2xx + s5xx,
                    sent: s2xx + s5xx + timeout,
                    status_2xx: s2xx,
                    status_5xx: s5xx,
                    errors_timeout: timeout,
                    corrected,
                    uncorrected,
                    ..Default::default()
                };
                if let Ok(c) = check(r) {
                    let _ = live.ingest(&format!("a{agent}"), session, "eu", c, Instant::now());
                }
                proptest::prop_assert_eq!(live.totals().1, units_recounted(&live));
            }
            for job in ["j0", "j1"] {
                if let Some((steps, _)) = steps_of(&live, job) {
                    for s in steps {
                        let share = s["error_share"].as_f64().unwrap_or(0.0);
                        proptest::prop_assert!((0.0..=1.0).contains(&share), "{}", s);
                    }
                }
            }
        }
    }
}
