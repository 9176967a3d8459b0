//! The live view of load jobs: agents' load seconds admitted (only from the agent's current
//! session, only for load jobs assigned to it) and merged in [`crate::loadlive`], and the view
//! of one job served.

use meshlat_proto::pb;
use tokio::time::Instant;

use super::error::{Problem, invalid};
use super::{DomainError, Inner, Registry, unix_ms};
use crate::loadlive::{self, Refusal};

/// A job counts as done this long after its duration ran out (its agents' last seconds are
/// still on their way).
pub const LOAD_END_GRACE_MS: i64 = 3_000;

/// The stored job `id`, ours or a federation peer's.
fn any_job<'a>(inner: &'a Inner, id: &str) -> Option<&'a pb::Job> {
    inner.jobs.get(id).or_else(|| {
        inner
            .peers
            .values()
            .find_map(|(d, _)| d.jobs.iter().find(|j| j.id == id))
    })
}

fn is_load(job: &pb::Job) -> bool {
    job.spec
        .as_ref()
        .is_some_and(|s| s.kind == pb::JobKind::Load as i32)
}

impl Registry {
    /// Admits an agent's load seconds into the live view: only from the agent's current
    /// session, only for load jobs assigned to it, and each as [`loadlive::check`] and
    /// [`loadlive::LoadLive::ingest`] allow. Refusals are counted
    /// (`meshlat_controller_load_reports_total{result}`) and logged once per message; the
    /// session goes on. Returns the reports accepted and refused.
    pub fn load_reports(&self, agent_id: &str, session: u64, m: pb::LoadReports) -> (usize, usize) {
        let admitted: Vec<Result<String, Refusal>> = {
            let mut inner = self.lock();
            let region = {
                let Some(e) = inner.agents.get_mut(agent_id) else {
                    return (0, 0);
                };
                if e.session.as_ref().is_none_or(|(s, _)| *s != session) {
                    return (0, 0);
                }
                e.last_heard = Instant::now();
                e.stored
                    .info
                    .as_ref()
                    .map(|i| i.region.clone())
                    .unwrap_or_default()
            };
            let inner = &*inner;
            let Some(e) = inner.agents.get(agent_id) else {
                return (0, 0);
            };
            m.reports
                .iter()
                .map(|r| {
                    if !e.assigned.contains(&r.job_id) {
                        Err(Refusal::NotAssigned(r.job_id.clone()))
                    } else if !any_job(inner, &r.job_id).is_some_and(is_load) {
                        Err(Refusal::NotLoadJob(r.job_id.clone()))
                    } else {
                        Ok(region.clone())
                    }
                })
                .collect()
        };
        let now = Instant::now();
        let (mut accepted, mut refused) = (0usize, 0usize);
        let mut first: Option<Refusal> = None;
        for (r, admitted) in m.reports.into_iter().zip(admitted) {
            let res = admitted.and_then(|region| {
                let c = loadlive::check(r)?;
                self.load_live.ingest(agent_id, session, &region, c, now)
            });
            crate::metrics::load_report(res.as_ref().err().map(Refusal::reason));
            match res {
                Ok(()) => accepted += 1,
                Err(e) => {
                    refused += 1;
                    first.get_or_insert(e);
                }
            }
        }
        if let Some(error) = first {
            tracing::warn!(message = "Load reports refused.", agent = %agent_id, refused, accepted, %error);
        } else {
            tracing::trace!(message = "Load reports received.", agent = %agent_id, accepted);
        }
        (accepted, refused)
    }

    /// The live view of load job `id` (ours or a peer's; the seconds of this controller's
    /// agents): per step and source region ([`crate::loadlive`]); `done` once it is stopped or
    /// its duration ran out [`LOAD_END_GRACE_MS`] ago.
    ///
    /// # Errors
    ///
    /// [`DomainError::NotFound`] for an unknown job, [`DomainError::Invalid`] for a job that is
    /// not a load job.
    pub fn load_view(&self, id: &str) -> Result<pb::LoadStats, DomainError> {
        let (stopped, done) = {
            let inner = self.lock();
            let job = any_job(&inner, id).ok_or_else(|| DomainError::NotFound {
                what: "job",
                id: id.into(),
            })?;
            if !is_load(job) {
                return Err(invalid("id", Problem::Rule("not a load job (kind load)")));
            }
            let duration = job
                .spec
                .as_ref()
                .map_or(0, |s| i64::try_from(s.duration_ms).unwrap_or(i64::MAX));
            let ran_out = duration > 0
                && unix_ms()
                    > job
                        .created_unix_ms
                        .saturating_add(duration)
                        .saturating_add(LOAD_END_GRACE_MS);
            (job.stopped, job.stopped || ran_out)
        };
        let (steps, updated_unix_ms) = self.load_live.snapshot(id).unwrap_or_default();
        Ok(pb::LoadStats {
            job_id: id.to_string(),
            stopped,
            // Stopped, or its duration ran out LOAD_END_GRACE_MS ago: no more seconds will come.
            done,
            updated_unix_ms,
            steps,
        })
    }

    /// Drops load views of jobs no longer held (ours or a peer's) or not heard from for
    /// [`loadlive::JOB_TTL`]; from the sweep.
    pub(super) fn prune_load(&self) {
        let known: std::collections::HashSet<String> = {
            let inner = self.lock();
            inner
                .jobs
                .keys()
                .cloned()
                .chain(
                    inner
                        .peers
                        .values()
                        .flat_map(|(d, _)| d.jobs.iter().map(|j| j.id.clone())),
                )
                .collect()
        };
        let dropped = self
            .load_live
            .prune(Instant::now(), |id| known.contains(id));
        if dropped > 0 {
            let (jobs, units) = self.load_live.totals();
            tracing::debug!(message = "Load live views expired.", dropped, jobs, units);
        }
    }
}
