//! The agents' acknowledgement of each job (issue 14): per agent, the jobs of the set last
//! pushed to its session ([`Assigned`], each with the generation that last changed its
//! assignment) and its last `JobAck` ([`LastAck`]: generation, arrival time, the jobs it
//! rejected and why). A job's status at an agent it is assigned to is
//!
//! - `pending` while the agent has not acknowledged a generation at or after the one that
//!   last changed its assignment;
//! - `rejected` (with the agent's reason) if that acknowledgement lists the job as refused;
//! - `acked` otherwise.
//!
//! A job unchanged by a push (a new agent elsewhere in the mesh) stays acknowledged. A new
//! session starts over: its first set is pending until acknowledged. A disconnected agent keeps
//! its last known statuses until it is removed (`--agent-expiry`).
//!
//! Statuses are computed when jobs are served (GetJob, ListJobs, the REST API), never stored.
//! Federation: each controller sends the statuses of its own agents for the jobs of other
//! controllers in its directory ([`pb::Directory::job_status`], at most
//! [`MAX_EXCHANGE_JOB_STATUSES`] entries), so a job's owner shows every region's agents.

use std::collections::{BTreeMap, BTreeSet};

use meshlat_proto::pb;
use tokio::time::Instant;

use super::{Inner, unix_ms};
use crate::limits::MAX_EXCHANGE_JOB_STATUSES;

/// `state` of a job whose assignment the agent has not acknowledged yet.
pub const PENDING: &str = "pending";
/// `state` of a job the agent runs.
pub const ACKED: &str = "acked";
/// `state` of a job the agent refused.
pub const REJECTED: &str = "rejected";
/// Longest rejection reason kept (bytes; longer ones are cut at a character boundary).
pub const MAX_REASON_BYTES: usize = 512;

/// The jobs of the set last pushed to an agent's session: job id → (hash of its assignment,
/// generation that last changed it).
#[derive(Debug, Default)]
pub(super) struct Assigned {
    jobs: BTreeMap<String, (u64, u64)>,
}

impl Assigned {
    /// A set of `generation` was pushed with `jobs` ([`crate::jobset::assigned_jobs`]): a job
    /// whose assignment is unchanged keeps the generation it had.
    pub(super) fn pushed(&mut self, jobs: Vec<(String, u64)>, generation: u64) {
        let old = std::mem::take(&mut self.jobs);
        self.jobs = jobs
            .into_iter()
            .map(|(id, hash)| {
                let since = match old.get(&id) {
                    Some((h, g)) if *h == hash => *g,
                    _ => generation,
                };
                (id, (hash, since))
            })
            .collect();
    }

    pub(super) fn contains(&self, job: &str) -> bool {
        self.jobs.contains_key(job)
    }
}

/// An agent's last acknowledgement.
#[derive(Debug)]
pub(super) struct LastAck {
    generation: u64,
    unix_ms: i64,
    /// Jobs it refused, of those assigned to it (reasons cut to [`MAX_REASON_BYTES`]).
    rejected: BTreeMap<String, String>,
}

impl LastAck {
    /// `ack` as it arrived now; rejections of jobs not assigned to the agent are ignored (an
    /// agent cannot grow the map beyond its assignments).
    pub(super) fn new(ack: &pb::JobAck, assigned: &Assigned) -> Self {
        LastAck {
            generation: ack.generation,
            unix_ms: unix_ms(),
            rejected: ack
                .rejected
                .iter()
                .filter(|(id, _)| assigned.contains(id))
                .map(|(id, why)| (id.clone(), cut(why)))
                .collect(),
        }
    }
}

/// `s` cut to at most [`MAX_REASON_BYTES`] at a character boundary.
fn cut(s: &str) -> String {
    let mut end = s.len().min(MAX_REASON_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The status of a job assigned to `agent` since generation `since`, given its last ack.
fn status(
    agent: &str,
    region: &str,
    job: &str,
    since: u64,
    ack: Option<&LastAck>,
) -> pb::JobAgentStatus {
    let (state, reason, at) = match ack {
        Some(a) if a.generation >= since => match a.rejected.get(job) {
            Some(why) => (REJECTED, why.clone(), a.unix_ms),
            None => (ACKED, String::new(), a.unix_ms),
        },
        _ => (PENDING, String::new(), 0),
    };
    pb::JobAgentStatus {
        agent: agent.into(),
        region: region.into(),
        state: state.into(),
        reason,
        acked_unix_ms: at,
    }
}

/// Whether a peer's status entry is well formed: a known state, an agent id, a reason within
/// bounds.
fn plausible(s: &pb::JobAgentStatus) -> bool {
    matches!(s.state.as_str(), PENDING | ACKED | REJECTED)
        && !s.agent.is_empty()
        && s.agent.len() <= 128
        && s.reason.len() <= MAX_REASON_BYTES
}

impl Inner {
    /// Our agents' statuses for the jobs `wanted` accepts, by job id.
    fn local_statuses(
        &self,
        wanted: impl Fn(&str) -> bool,
    ) -> BTreeMap<String, Vec<pb::JobAgentStatus>> {
        let mut out: BTreeMap<String, Vec<pb::JobAgentStatus>> = BTreeMap::new();
        for (id, e) in &self.agents {
            let region = e.stored.info.as_ref().map_or("", |i| i.region.as_str());
            for (job, (_, since)) in &e.assigned.jobs {
                if wanted(job) {
                    out.entry(job.clone()).or_default().push(status(
                        id,
                        region,
                        job,
                        *since,
                        e.last_ack.as_ref(),
                    ));
                }
            }
        }
        out
    }

    /// Fills each job's `agent_status`: our agents', then those live peers reported for
    /// agents not known here; sorted by region and agent.
    pub(super) fn fill_status(&self, jobs: &mut [pb::Job], now: Instant) {
        let ids: BTreeSet<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        let mut by_job = self.local_statuses(|j| ids.contains(j));
        for (dir, expires) in self.peers.values() {
            if *expires <= now {
                continue;
            }
            for js in &dir.job_status {
                if !ids.contains(js.job_id.as_str()) {
                    continue;
                }
                let v = by_job.entry(js.job_id.clone()).or_default();
                v.extend(
                    js.agents
                        .iter()
                        .filter(|s| !self.agents.contains_key(&s.agent))
                        .cloned(),
                );
            }
        }
        for j in jobs {
            let mut v = by_job.remove(&j.id).unwrap_or_default();
            v.sort_by(|a, b| (&a.region, &a.agent).cmp(&(&b.region, &b.agent)));
            v.dedup_by(|a, b| a.agent == b.agent);
            j.agent_status = v;
        }
    }

    /// Our agents' statuses for the jobs of live peers (what our directory tells them), at
    /// most [`MAX_EXCHANGE_JOB_STATUSES`] entries in all.
    pub(super) fn peer_job_statuses(&self, now: Instant) -> Vec<pb::JobStatuses> {
        let theirs: BTreeSet<&str> = self
            .all_jobs(now)
            .into_iter()
            .map(|j| j.id.as_str())
            .filter(|id| !self.jobs.contains_key(*id))
            .collect();
        if theirs.is_empty() {
            return Vec::new();
        }
        let mut left = MAX_EXCHANGE_JOB_STATUSES;
        let mut out = Vec::new();
        for (job_id, mut agents) in self.local_statuses(|j| theirs.contains(j)) {
            if left == 0 {
                tracing::warn!(
                    message = "Job statuses for peers cut to limits::MAX_EXCHANGE_JOB_STATUSES.",
                    limit = MAX_EXCHANGE_JOB_STATUSES
                );
                break;
            }
            agents.truncate(left);
            left -= agents.len();
            out.push(pb::JobStatuses { job_id, agents });
        }
        out
    }

    /// A peer's reported statuses, kept only for our own jobs and agents of its `region`,
    /// well formed, at most [`MAX_EXCHANGE_JOB_STATUSES`] entries.
    pub(super) fn accept_peer_statuses(&self, region: &str, dir: &mut pb::Directory) {
        let mut left = MAX_EXCHANGE_JOB_STATUSES;
        dir.job_status.retain_mut(|js| {
            if left == 0 || !self.jobs.contains_key(&js.job_id) {
                return false;
            }
            js.agents.retain(|s| s.region == region && plausible(s));
            js.agents.truncate(left);
            left -= js.agents.len();
            !js.agents.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::registry::Registry;
    use crate::registry::test_support::*;

    fn states(r: &Registry, job: &str) -> Vec<(String, String, String)> {
        r.get_job(job)
            .expect("job")
            .agent_status
            .into_iter()
            .map(|s| (s.agent, s.state, s.reason))
            .collect()
    }

    /// A job is pending at each source until its set is acknowledged, then acked or rejected
    /// with the agent's reason; a push that leaves its assignment unchanged keeps the status;
    /// a new session starts over; a peer's statuses for our job are merged (only for agents
    /// of its region) and age out with it; ours for the peer's jobs go into our directory.
    #[tokio::test(start_paused = true)]
    async fn statuses_follow_pushes_and_acks_and_cross_the_federation() {
        let (store, dir) = temp_store();
        let (r, stop) = running(store);
        let mut a = r.connect(hello("a1", 1)).expect("a1");
        let mut b = r.connect(hello("b1", 2)).expect("b1");
        next_set(&mut a.job_sets).await;
        next_set(&mut b.job_sets).await;
        let job = r.start_job(Some(spec(500))).expect("job");
        let sa = next_set(&mut a.job_sets).await;
        let sb = next_set(&mut b.job_sets).await;
        assert_eq!(
            states(&r, &job.id),
            vec![
                ("a1".into(), PENDING.into(), String::new()),
                ("b1".into(), PENDING.into(), String::new())
            ]
        );
        r.acked(
            "a1",
            a.session,
            &pb::JobAck {
                generation: sa.generation,
                rejected: Default::default(),
            },
        );
        let mut rejected = std::collections::HashMap::new();
        rejected.insert("not-assigned".to_string(), "ignored".to_string());
        rejected.insert(
            job.id.clone(),
            format!("tcp://x: {}", "é".repeat(MAX_REASON_BYTES)),
        );
        r.acked(
            "b1",
            b.session,
            &pb::JobAck {
                generation: sb.generation,
                rejected,
            },
        );
        let st = r.get_job(&job.id).expect("job").agent_status;
        assert_eq!((st[0].state.as_str(), st[0].reason.as_str()), (ACKED, ""));
        assert!(st[0].acked_unix_ms > 0);
        assert_eq!(st[1].state, REJECTED);
        assert!(
            st[1].reason.starts_with("tcp://x: é") && st[1].reason.len() <= MAX_REASON_BYTES,
            "cut at a character boundary: {}",
            st[1].reason.len()
        );

        // A third agent joins: a1's assignment of the job changes (a new target), b1's too,
        // so both are pending again until they acknowledge; the new one's first set too.
        let mut c = r.connect(hello("c1", 3)).expect("c1");
        let sa = next_set(&mut a.job_sets).await;
        next_set(&mut c.job_sets).await;
        let got = states(&r, &job.id);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].1, PENDING, "{got:?}");
        r.acked(
            "a1",
            a.session,
            &pb::JobAck {
                generation: sa.generation,
                rejected: Default::default(),
            },
        );
        assert_eq!(states(&r, &job.id)[0].1, ACKED);

        // A peer reports its agent p1 for our job (and a forged one for an agent of another
        // region, and one for a job that is not ours): only p1's is kept, until the TTL.
        let st = |agent: &str, region: &str| pb::JobAgentStatus {
            agent: agent.into(),
            region: region.into(),
            state: ACKED.into(),
            reason: String::new(),
            acked_unix_ms: 5,
        };
        r.merge_peer(
            pb::Directory {
                region: "p".into(),
                job_status: vec![
                    pb::JobStatuses {
                        job_id: job.id.clone(),
                        agents: vec![st("p1", "p"), st("x1", "elsewhere")],
                    },
                    pb::JobStatuses {
                        job_id: "unknown".into(),
                        agents: vec![st("p2", "p")],
                    },
                ],
                ..Default::default()
            },
            Duration::from_secs(10),
        )
        .expect("merge");
        let agents: Vec<String> = states(&r, &job.id).into_iter().map(|s| s.0).collect();
        assert_eq!(agents, ["p1", "a1", "b1", "c1"], "sorted by region, agent");
        tokio::time::advance(Duration::from_secs(11)).await;
        r.sweep();
        assert_eq!(states(&r, &job.id).len(), 3, "the peer's aged out");

        // A peer's job assigned to our agents: our directory carries their statuses.
        let mut theirs = spec(500);
        theirs.name = "theirs".into();
        r.merge_peer(
            pb::Directory {
                region: "p".into(),
                jobs: vec![pb::Job {
                    id: "peer-job".into(),
                    spec: Some(theirs),
                    version: 1,
                    ..Default::default()
                }],
                ..Default::default()
            },
            Duration::from_secs(10),
        )
        .expect("merge");
        next_set(&mut a.job_sets).await;
        let d = r.directory("https://me", Duration::from_secs(10));
        let js: Vec<&pb::JobStatuses> = d.job_status.iter().collect();
        assert_eq!(js.len(), 1, "{js:?}");
        assert_eq!(js[0].job_id, "peer-job");
        assert!(js[0].agents.iter().any(|s| s.agent == "a1"));
        assert!(
            d.jobs.iter().all(|j| j.agent_status.is_empty()),
            "statuses never travel inside jobs"
        );

        // A new session of a1 starts over.
        let mut a2 = r.connect(hello("a1", 1)).expect("a1 again");
        next_set(&mut a2.job_sets).await;
        assert_eq!(states(&r, &job.id)[0].1, PENDING);
        stop.cancel();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
