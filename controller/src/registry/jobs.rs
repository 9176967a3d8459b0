//! Job CRUD: start, ensure (`--default-jobs`), list, get, update and stop, each saved to the state
//! store before it is scheduled.

use meshlat_proto::pb;
use tokio::time::Instant;

use super::error::{Problem, invalid};
use super::{DomainError, Inner, Registry, unix_ms};
use crate::pinglist;

/// A copy of stored job `id`.
///
/// # Errors
///
/// [`DomainError::NotFound`].
fn stored_job(inner: &Inner, id: &str) -> Result<pb::Job, DomainError> {
    inner
        .jobs
        .get(id)
        .cloned()
        .ok_or_else(|| DomainError::NotFound {
            what: "job",
            id: id.into(),
        })
}

impl Registry {
    fn check_spec(&self, inner: &Inner, spec: &pb::JobSpec) -> Result<(), DomainError> {
        meshlat_proto::job::validate(spec).map_err(DomainError::Spec)?;
        self.cfg
            .load_allow
            .check(spec)
            .map_err(super::validate::load_refused)?;
        let full = matches!(
            pb::PinglistStrategy::try_from(spec.strategy),
            Ok(pb::PinglistStrategy::Full | pb::PinglistStrategy::Unspecified) | Err(_)
        );
        if full {
            let size = pinglist::mesh_size(spec, &inner.views(&self.cfg, Instant::now()));
            if size > self.cfg.max_full_mesh {
                return Err(invalid(
                    "spec.strategy",
                    Problem::FullMeshTooLarge {
                        size,
                        max: self.cfg.max_full_mesh,
                    },
                ));
            }
        }
        Ok(())
    }

    /// Starts a job: validates, assigns a UUID v7 id and version 1, stores, schedules.
    ///
    /// # Errors
    ///
    /// [`DomainError::Invalid`] naming the field, or [`DomainError::Store`].
    pub fn start_job(&self, spec: Option<pb::JobSpec>) -> Result<pb::Job, DomainError> {
        let spec = spec.ok_or_else(|| invalid("spec", Problem::Missing))?;
        let mut inner = self.lock();
        self.check_spec(&inner, &spec)?;
        let max = self.cfg.limits.max_jobs;
        if inner.jobs.len() >= max {
            let stopped = inner.jobs.values().filter(|j| j.stopped).count();
            return Err(DomainError::Exhausted {
                field: "jobs",
                limit: max as u64,
                flag: "--max-jobs",
                reason: format!(
                    "{} jobs are stored ({stopped} of them stopped, which count until --stopped-job-ttl after their stop)",
                    inner.jobs.len()
                ),
            });
        }
        let now = unix_ms();
        let job = pb::Job {
            id: uuid::Uuid::now_v7().to_string(),
            spec: Some(spec),
            version: 1,
            created_unix_ms: now,
            updated_unix_ms: now,
            stopped: false,
            agent_status: Vec::new(),
        };
        inner.jobs.insert(job.id.clone(), job.clone());
        if let Err(e) = self.save_jobs(&inner) {
            inner.jobs.remove(&job.id);
            return Err(e);
        }
        tracing::info!(message = "Job started.", job = %job.id);
        self.reschedule(&mut inner, true);
        self.changed();
        Ok(job)
    }

    /// Makes sure a job named like `spec` runs with exactly `spec` (`--default-jobs`): starts
    /// it if no running job of this controller has that name, replaces the spec of the oldest
    /// one that has if it differs, and otherwise changes nothing. A deployment can therefore
    /// apply its default jobs at every start without ever duplicating them.
    ///
    /// # Errors
    ///
    /// As [`Registry::start_job`] and [`Registry::update_job`]; a spec without a name is
    /// [`DomainError::Invalid`].
    pub fn ensure_job(&self, spec: pb::JobSpec) -> Result<(pb::Job, Ensured), DomainError> {
        if spec.name.is_empty() {
            return Err(invalid(
                "name",
                Problem::Rule("a default job needs a name (it is found by it)"),
            ));
        }
        let existing = self
            .lock()
            .jobs
            .values()
            .filter(|j| !j.stopped && j.spec.as_ref().is_some_and(|s| s.name == spec.name))
            .min_by_key(|j| (j.created_unix_ms, j.id.clone()))
            .cloned();
        match existing {
            Some(j) if j.spec.as_ref() == Some(&spec) => Ok((j, Ensured::Unchanged)),
            Some(j) => Ok((
                self.update_job(&j.id, Some(spec), j.version)?,
                Ensured::Updated,
            )),
            None => Ok((self.start_job(Some(spec))?, Ensured::Created)),
        }
    }

    /// Jobs, by id; stopped ones only if asked. Each with its agents' acknowledgement
    /// status (`agent_status`, `registry::status`).
    pub fn list_jobs(&self, include_stopped: bool) -> Vec<pb::Job> {
        let inner = self.lock();
        let mut jobs: Vec<pb::Job> = inner
            .jobs
            .values()
            .filter(|j| include_stopped || !j.stopped)
            .cloned()
            .collect();
        inner.fill_status(&mut jobs, Instant::now());
        jobs
    }

    /// One job, with its agents' acknowledgement status (`agent_status`, `registry::status`).
    ///
    /// # Errors
    ///
    /// [`DomainError::NotFound`].
    pub fn get_job(&self, id: &str) -> Result<pb::Job, DomainError> {
        let inner = self.lock();
        let mut job = stored_job(&inner, id)?;
        inner.fill_status(std::slice::from_mut(&mut job), Instant::now());
        Ok(job)
    }

    /// Replaces a job's spec and bumps its version; `expected_version` 0 skips the check.
    ///
    /// # Errors
    ///
    /// [`DomainError::NotFound`], [`DomainError::VersionMismatch`], [`DomainError::Stopped`],
    /// [`DomainError::Invalid`] or [`DomainError::Store`].
    pub fn update_job(
        &self,
        id: &str,
        spec: Option<pb::JobSpec>,
        expected_version: u64,
    ) -> Result<pb::Job, DomainError> {
        let spec = spec.ok_or_else(|| invalid("spec", Problem::Missing))?;
        let mut inner = self.lock();
        let old = stored_job(&inner, id)?;
        if expected_version != 0 && expected_version != old.version {
            return Err(DomainError::VersionMismatch {
                id: id.into(),
                expected: expected_version,
                actual: old.version,
            });
        }
        if old.stopped {
            return Err(DomainError::Stopped { id: id.into() });
        }
        self.check_spec(&inner, &spec)?;
        let job = self.store_revision(&mut inner, id, old, |j| j.spec = Some(spec))?;
        tracing::info!(message = "Job updated.", job = %id, version = job.version);
        self.reschedule(&mut inner, true);
        self.changed();
        Ok(job)
    }

    /// Stops a job (kept, marked stopped; idempotent).
    ///
    /// # Errors
    ///
    /// [`DomainError::NotFound`] or [`DomainError::Store`].
    pub fn stop_job(&self, id: &str) -> Result<pb::Job, DomainError> {
        let mut inner = self.lock();
        let old = stored_job(&inner, id)?;
        if old.stopped {
            return Ok(old);
        }
        let job = self.store_revision(&mut inner, id, old, |j| j.stopped = true)?;
        tracing::info!(message = "Job stopped.", job = %id);
        self.reschedule(&mut inner, true);
        self.changed();
        Ok(job)
    }

    /// Stores the next version of job `id` (`old` changed by `change`, version + 1, updated
    /// now) and saves the jobs; on a save error `old` is put back.
    fn store_revision(
        &self,
        inner: &mut Inner,
        id: &str,
        old: pb::Job,
        change: impl FnOnce(&mut pb::Job),
    ) -> Result<pb::Job, DomainError> {
        let mut job = old.clone();
        change(&mut job);
        job.version = old.version + 1;
        job.updated_unix_ms = unix_ms();
        inner.jobs.insert(id.into(), job.clone());
        if let Err(e) = self.save_jobs(inner) {
            inner.jobs.insert(id.into(), old);
            return Err(e);
        }
        Ok(job)
    }

    pub(super) fn save_jobs(&self, inner: &Inner) -> Result<(), DomainError> {
        let jobs: Vec<pb::Job> = inner.jobs.values().cloned().collect();
        self.store.save_jobs(&jobs).map_err(|e| {
            tracing::error!(message = "Cannot save jobs.", error = %e);
            DomainError::Store(e)
        })
    }
}

/// What [`Registry::ensure_job`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ensured {
    /// No running job had the name: started.
    Created,
    /// A running job had the name and another spec: replaced (version bumped).
    Updated,
    /// A running job had the name and this spec.
    Unchanged,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::test_support::*;
    use crate::store::FileStore;
    use std::sync::Arc;

    #[tokio::test]
    async fn jobs_and_ids_persist_sets_are_pushed_and_versions_checked() {
        let (store, dir) = temp_store();
        let (r, stop) = running(store.clone());
        let mut a = r.connect(hello("", 1)).expect("a");
        let b = r.connect(hello("", 2)).expect("b");
        assert_ne!(a.agent_id, b.agent_id);
        // Every new session gets a set, here an empty one.
        let first = next_set(&mut a.job_sets).await;
        assert!(first.assignments.is_empty());
        assert!(first.generation > 0);

        let e = r
            .start_job(Some(spec(1000)))
            .expect_err("timeout >= interval");
        assert!(
            matches!(&e, DomainError::Spec(_)) && e.field().as_deref() == Some("spec.timeout_ms"),
            "{e}"
        );
        let job = r.start_job(Some(spec(500))).expect("valid");
        assert_eq!(job.version, 1);
        let set = next_set(&mut a.job_sets).await;
        assert!(set.generation > first.generation);
        assert_eq!(set.lease_ms, 60_000);
        assert_eq!(set.accept_keys, vec![cfg().keys.wire_secret()]);
        assert!(set.grant_keys.is_empty(), "not a relay");
        assert!(set.grant_public_keys.is_empty(), "not a relay");
        assert_eq!(set.assignments[0].targets[0].target, "udp://127.0.0.1:2");
        assert_eq!(set.assignments[0].targets[0].dst_agent, b.agent_id);

        assert!(matches!(
            r.update_job(&job.id, Some(spec(400)), 7),
            Err(DomainError::VersionMismatch { actual: 1, .. })
        ));
        assert_eq!(
            r.update_job(&job.id, Some(spec(400)), 1)
                .expect("update")
                .version,
            2
        );
        assert!(matches!(
            r.get_job("nope"),
            Err(DomainError::NotFound { .. })
        ));

        let updated = next_set(&mut a.job_sets).await;
        assert_eq!(
            updated.assignments[0].job.as_ref().map(|j| j.version),
            Some(2)
        );

        // A restart keeps jobs and ids; reconnecting with a stored id does not duplicate it.
        stop.cancel();
        drop(r);
        let (r, stop) = running(store);
        assert_eq!(r.get_job(&job.id).expect("kept").version, 2);
        assert_eq!(r.list_agents().len(), 2);
        let mut a2 = r.connect(hello(&a.agent_id, 3)).expect("again");
        assert_eq!(a2.agent_id, a.agent_id);
        assert_eq!(r.list_agents().len(), 2, "no duplicate");
        assert_eq!(
            next_set(&mut a2.job_sets).await.assignments.len(),
            1,
            "b is still scheduled within its TTL after the restart"
        );
        stop.cancel();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ensure_job_creates_once_updates_on_change_and_survives_a_restart() {
        let (store, dir) = temp_store();
        let r = Registry::load(cfg(), store).expect("load");
        let named = |name: &str, timeout: u32| pb::JobSpec {
            name: name.into(),
            ..spec(timeout)
        };
        let (a, what) = r.ensure_job(named("mesh-r", 500)).expect("create");
        assert_eq!((what, a.version), (Ensured::Created, 1));
        let (b, what) = r.ensure_job(named("mesh-r", 500)).expect("again");
        assert_eq!((what, b.id.as_str()), (Ensured::Unchanged, a.id.as_str()));
        let (c, what) = r.ensure_job(named("mesh-r", 600)).expect("changed");
        assert_eq!(
            (what, c.id.as_str(), c.version),
            (Ensured::Updated, a.id.as_str(), 2)
        );
        r.ensure_job(named("relay-r", 500)).expect("another name");
        assert_eq!(r.list_jobs(false).len(), 2);
        let e = r.ensure_job(spec(500)).expect_err("no name");
        assert_eq!(e.field().as_deref(), Some("name"), "{e}");
        drop(r);
        // A restart (the same data directory): found again by name, nothing duplicated.
        let store = Arc::new(FileStore::open(&dir).expect("store"));
        let r = Registry::load(cfg(), store).expect("reload");
        let (d, what) = r.ensure_job(named("mesh-r", 600)).expect("after restart");
        assert_eq!((what, d.id.as_str()), (Ensured::Unchanged, a.id.as_str()));
        assert_eq!(r.list_jobs(false).len(), 2);
        // A stopped job does not count: the default job comes back.
        r.stop_job(&a.id).expect("stop");
        let (e, what) = r.ensure_job(named("mesh-r", 600)).expect("recreated");
        assert_eq!(what, Ensured::Created);
        assert_ne!(e.id, a.id);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
