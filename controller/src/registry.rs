//! The domain layer: jobs, the agent directory and agent sessions, behind one lock.
//!
//! Every change (a job started, updated or stopped; an agent connecting, going away, or its
//! TTL running out) marks the pinglists stale and wakes the scheduler ([`Registry::run`]), which
//! recomputes them ([`crate::schedule`]) and pushes a new job set ([`PushedSet`]) to each
//! connected agent whose assignments changed, with a fresh generation.
//!
//! # The scheduler
//!
//! One task, so recomputations never overlap or apply out of order. Each round takes a
//! snapshot under the lock (live agents, jobs, and each session's last pushed set), computes
//! and encodes the plan on a blocking thread with the lock released, and then, under the lock
//! again, pushes the sets that changed. The lock is never held for the computation (about a
//! second for 10,000 agents), so heartbeats, acknowledgements and new sessions are served
//! meanwhile. A session that started after the snapshot, or anything that changed meanwhile,
//! is left stale for the next round. Saving the agent directory happens in the same round,
//! off the lock too.
//!
//! # Liveness
//!
//! An agent is scheduled (as a source or a target) while it is connected, and for
//! [`RegistryConfig::agent_ttl`] after it was last heard from. Agents loaded from the state store
//! count as heard from at start-up, so a restarted controller keeps every pair of the agents
//! that reconnect within the TTL instead of churning job sets while they come back one by one.
//!
//! # Session churn at scale
//!
//! A job change is scheduled at once. Sessions coming and going are too, unless recomputing
//! has lately been costly: then the next round waits until [`RECOMPUTE_SPACING`] times the last
//! one's duration has passed since it started, and covers every session that came or went
//! meanwhile. Small meshes see no difference; a storm of 10,000 reconnecting agents costs a
//! bounded share of the time instead of 10,000 recomputations of a 10,000-agent mesh. New
//! sessions are welcomed at once either way. Rounds quicker than [`DEFER_ABOVE`], or with
//! fewer than [`DEFER_MIN_AGENTS`] agents, are never deferred.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use meshlat_proto::pb;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::jobset::PushedSet;
use crate::keys::MeshKeys;
use crate::limits::{self, Limits};
use crate::live::{self, By, Live, LiveLimits, SUMMARY_TTL};
use crate::relay_policy::{RelayDecision, RelayPolicy};
use crate::schedule::{self, AgentView};
use crate::store::{StateStore, StoreError};
use meshlat_proto::job::JobSpecError;

/// After session churn, the next recomputation starts no sooner than this many times the last
/// one's duration after it (recomputing takes at most about a fifth of the time).
pub const RECOMPUTE_SPACING: u32 = 5;
/// Recomputations quicker than this are never deferred.
pub const DEFER_ABOVE: Duration = Duration::from_millis(10);
/// Nor are they with fewer agents than this, so a small mesh never waits on a busy machine's
/// noisy timing.
pub const DEFER_MIN_AGENTS: usize = 500;

/// A domain failure; [`crate::grpc::status`] and [`crate::rest`] map it to their status codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    /// The request is invalid; `field` is the field path.
    #[error("{field}: {reason}")]
    Invalid {
        /// Field path, e.g. `spec.timeout_ms`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A job spec failed [`meshlat_proto::job::validate`]; its field path is relative to the
    /// spec ([`DomainError::field`] gives `spec.<path>`).
    #[error("{}: {}", spec_field(.0), .0.problem)]
    Spec(JobSpecError),
    /// A cap of [`crate::limits`] is reached.
    #[error("{field}: {reason} (limit {limit}, {flag})")]
    Exhausted {
        /// What is counted, e.g. `jobs`.
        field: &'static str,
        /// The cap.
        limit: u64,
        /// The flag that sets it.
        flag: &'static str,
        /// What happened.
        reason: String,
    },
    /// No such job or agent.
    #[error("{what} {id:?} not found")]
    NotFound {
        /// `job` or `agent`.
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// `expected_version` does not match the stored version.
    #[error("job {id}: expected version {expected}, stored version is {actual}")]
    VersionMismatch {
        /// Job id.
        id: String,
        /// Version the caller expected.
        expected: u64,
        /// Stored version.
        actual: u64,
    },
    /// The job is stopped and cannot be updated.
    #[error("job {id} is stopped")]
    Stopped {
        /// Job id.
        id: String,
    },
    /// The state store failed; the change was not made.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `spec.<path>` for a spec error (`spec` for the whole spec).
fn spec_field(e: &JobSpecError) -> String {
    if e.field.is_empty() {
        "spec".into()
    } else {
        format!("spec.{}", e.field)
    }
}

impl DomainError {
    /// The field path at fault, for bad input.
    pub fn field(&self) -> Option<String> {
        match self {
            DomainError::Invalid { field, .. } => Some(field.clone()),
            DomainError::Spec(e) => Some(spec_field(e)),
            DomainError::Exhausted { field, .. } => Some((*field).to_string()),
            _ => None,
        }
    }

    /// The limit crossed, for bad input or a cap.
    pub fn limit(&self) -> Option<u64> {
        match self {
            DomainError::Spec(e) => e.limit(),
            DomainError::Exhausted { limit, .. } => Some(*limit),
            _ => None,
        }
    }
}

/// Why a stored or peer job cannot be scheduled: its field path and problem.
fn check_job(job: &pb::Job) -> Result<(), DomainError> {
    if job.id.trim().is_empty() || job.id.len() > meshlat_proto::job::MAX_AGENT_ID_BYTES {
        return Err(invalid(
            "id",
            format!(
                "must be 1 to {} bytes",
                meshlat_proto::job::MAX_AGENT_ID_BYTES
            ),
        ));
    }
    let spec = job
        .spec
        .as_ref()
        .ok_or_else(|| invalid("spec", "missing"))?;
    meshlat_proto::job::validate(spec).map_err(DomainError::Spec)
}

/// Bounds a Hello's lists and strings ([`crate::limits`]).
fn check_hello(h: &pb::Hello) -> Result<(), DomainError> {
    check_agent_fields(
        [&h.region, &h.az, &h.location, &h.version],
        &h.endpoints,
        &h.capabilities,
    )
}

/// [`check_hello`]'s checks: region, az, location, version; endpoints; capabilities.
fn check_agent_fields(
    labels: [&str; 4],
    endpoints: &[pb::ResponderEndpoint],
    capabilities: &[String],
) -> Result<(), DomainError> {
    let long = |field: &'static str, v: &str| {
        (v.len() > limits::MAX_HELLO_FIELD_BYTES).then(|| {
            invalid(
                field,
                format!(
                    "{} bytes exceed the limit of {}",
                    v.len(),
                    limits::MAX_HELLO_FIELD_BYTES
                ),
            )
        })
    };
    for (field, v) in [
        "hello.region",
        "hello.az",
        "hello.location",
        "hello.version",
    ]
    .into_iter()
    .zip(labels)
    {
        if let Some(e) = long(field, v) {
            return Err(e);
        }
    }
    if endpoints.len() > limits::MAX_HELLO_ENDPOINTS {
        return Err(invalid(
            "hello.endpoints",
            format!(
                "{} entries exceed the limit of {}",
                endpoints.len(),
                limits::MAX_HELLO_ENDPOINTS
            ),
        ));
    }
    if capabilities.len() > limits::MAX_HELLO_CAPABILITIES {
        return Err(invalid(
            "hello.capabilities",
            format!(
                "{} entries exceed the limit of {}",
                capabilities.len(),
                limits::MAX_HELLO_CAPABILITIES
            ),
        ));
    }
    for e in endpoints {
        if let Some(e) = long("hello.endpoints.address", &e.address) {
            return Err(e);
        }
    }
    for c in capabilities {
        if let Some(e) = long("hello.capabilities", c) {
            return Err(e);
        }
    }
    Ok(())
}

/// A peer's directory entry passes the same bounds as a Hello.
fn check_stored_agent(a: &pb::StoredAgent) -> Result<(), DomainError> {
    let Some(i) = &a.info else {
        return Err(invalid("directory.agent", "missing info"));
    };
    if i.id.len() > meshlat_proto::job::MAX_AGENT_ID_BYTES {
        return Err(invalid("directory.agent.id", "too long"));
    }
    check_agent_fields(
        [&i.region, &i.az, &i.location, &i.version],
        &a.endpoints,
        &a.capabilities,
    )
}

/// Tunables of the registry.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// This controller's region.
    pub region: String,
    /// Most agents a `full` job may involve.
    pub max_full_mesh: usize,
    /// Lease given with each job set: how long an agent runs it without hearing from us.
    pub lease: Duration,
    /// How long an agent stays scheduled after it was last heard from.
    pub agent_ttl: Duration,
    /// The mesh's wire key and this controller's relay-grant signer.
    pub keys: MeshKeys,
    /// Which agents are relays ([`crate::relay_policy`]).
    pub relay_policy: RelayPolicy,
    /// Which addresses agents may advertise ([`crate::address_policy`]; checked by the
    /// session service, which knows the peer address).
    pub address_policy: crate::address_policy::AddressPolicy,
    /// Grants are valid one to two of these ([`crate::keys::grant_expiry`]); at least the lease.
    pub grant_epoch: Duration,
    /// The caps ([`crate::limits`]).
    pub limits: Limits,
}

impl RegistryConfig {
    /// Expiry of the relay grants issued now ([`crate::keys::grant_expiry`]).
    fn grant_expiry_now(&self) -> u64 {
        let epoch = self.grant_epoch.max(self.lease).as_secs();
        crate::keys::grant_expiry(unix_ms().max(0) as u64 / 1000, epoch)
    }
}

/// What a connecting agent gets.
#[derive(Debug)]
pub struct Session {
    /// The agent's (possibly new) id.
    pub agent_id: String,
    /// Session number, to tell a stale session's disconnect from the current one's.
    pub session: u64,
    /// Its desired job sets, as pushed (the first is a placeholder of generation 0).
    pub job_sets: watch::Receiver<Arc<PushedSet>>,
    /// Why its `relay-udp` claim was refused (told to the agent in its Welcome).
    pub relay_refused: Option<String>,
}

#[derive(Debug)]
struct AgentEntry {
    stored: pb::StoredAgent,
    session: Option<(u64, watch::Sender<Arc<PushedSet>>)>,
    last_heard: Instant,
    generation: u64,
    acked: u64,
    /// The join token it last connected with ([`Registry::connect_as`]; empty: unknown, e.g.
    /// loaded from the state store and not back yet).
    token: String,
}

#[derive(Debug)]
struct Inner {
    jobs: BTreeMap<String, pb::Job>,
    agents: BTreeMap<String, AgentEntry>,
    /// Peer controllers' directories by region, with when they expire.
    peers: BTreeMap<String, (pb::Directory, Instant)>,
    /// Ids of the jobs each peer's last directory had refused (to log each once).
    refused_peer_jobs: BTreeMap<String, std::collections::BTreeSet<String>>,
    next_generation: u64,
    next_session: u64,
    /// The pinglists are stale: something changed since the last snapshot.
    pending: bool,
    /// A job changed: the next round is not deferred.
    urgent: bool,
    /// The agent directory changed since it was last saved.
    unsaved: bool,
    /// When the last round's snapshot was taken (its `now`) and how long the round took.
    recomputed: (Instant, Duration),
    /// Expiry of the relay grants the last recomputation issued; a new grant epoch recomputes.
    grants_expire: u64,
    /// The grant public keys relays were last pushed (ours and live peers'); a change is
    /// pushed to every relay.
    grant_keys: Vec<Vec<u8>>,
}

/// Jobs, agents and sessions.
#[derive(Debug)]
pub struct Registry {
    cfg: RegistryConfig,
    store: Arc<dyn StateStore>,
    inner: Mutex<Inner>,
    live: Live,
    changes: watch::Sender<u64>,
    /// Wakes the scheduler ([`Registry::run`]).
    kick: Notify,
}

/// Whether a stored agent is a relay: its `relay-udp` claim survived the operator's policy
/// ([`RelayPolicy::enforce`] runs on every Hello and on load, dropping refused claims).
fn is_relay(a: &pb::StoredAgent) -> bool {
    a.capabilities
        .iter()
        .any(|c| c == schedule::RELAY_CAPABILITY)
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> DomainError {
    DomainError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Registry {
    /// Loads jobs and agent identities from `store`.
    ///
    /// A stored job this version cannot schedule (one that fails today's validation, e.g. a
    /// `k` of 4294967295 saved by an old version) is quarantined: moved to the store's
    /// quarantine ([`StateStore::quarantine_jobs`]) with an error log line naming the job, the
    /// field and the limit, and left out; the controller starts with the others. Agents last
    /// seen longer than `--agent-expiry` ago are dropped.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    pub fn load(cfg: RegistryConfig, store: Arc<dyn StateStore>) -> Result<Self, StoreError> {
        let state = store.load()?;
        let now = Instant::now();
        let now_ms = unix_ms();
        let expiry_ms = i64::try_from(cfg.limits.agent_expiry.as_millis()).unwrap_or(i64::MAX);
        let mut expired = 0usize;
        let agents: BTreeMap<String, AgentEntry> = state
            .agents
            .into_iter()
            .filter_map(|mut a| {
                // The policy may have changed since it was saved.
                cfg.relay_policy.enforce(&mut a);
                let info = a.info.as_mut()?;
                info.connected = false;
                if info.last_seen_unix_ms > 0
                    && now_ms.saturating_sub(info.last_seen_unix_ms) > expiry_ms
                {
                    expired += 1;
                    return None;
                }
                Some((
                    info.id.clone(),
                    AgentEntry {
                        stored: a,
                        session: None,
                        last_heard: now,
                        generation: 0,
                        acked: 0,
                        token: String::new(),
                    },
                ))
            })
            .collect();
        if expired > 0 {
            tracing::info!(
                message = "Stored agents past --agent-expiry dropped.",
                agents = expired
            );
        }
        let (jobs, bad): (Vec<pb::Job>, Vec<pb::Job>) =
            state.jobs.into_iter().partition(|j| check_job(j).is_ok());
        if !bad.is_empty() {
            for j in &bad {
                let e = check_job(j).err();
                tracing::error!(
                    message = "Stored job quarantined: this version cannot schedule it.",
                    job = %j.id,
                    name = %j.spec.as_ref().map(|s| s.name.as_str()).unwrap_or_default(),
                    field = %e.as_ref().and_then(DomainError::field).unwrap_or_default(),
                    limit = ?e.as_ref().and_then(DomainError::limit),
                    error = %e.map(|e| e.to_string()).unwrap_or_default(),
                );
            }
            // Quarantine first: if it fails the jobs file keeps them (and they stay
            // unscheduled in this run), so nothing is lost.
            match store.quarantine_jobs(&bad) {
                Ok(()) => {
                    if let Err(error) = store.save_jobs(&jobs) {
                        tracing::error!(message = "Cannot save jobs after quarantine.", %error);
                    }
                }
                Err(error) => {
                    tracing::error!(message = "Cannot quarantine jobs; they stay in the jobs file, unscheduled.", %error);
                }
            }
        }
        // Generations only grow, across restarts too (agents ignore nothing, but logs compare).
        let next_generation = u64::try_from(unix_ms()).unwrap_or(1).max(1);
        let inner = Inner {
            jobs: jobs.into_iter().map(|j| (j.id.clone(), j)).collect(),
            agents,
            peers: BTreeMap::new(),
            refused_peer_jobs: BTreeMap::new(),
            next_generation,
            next_session: 1,
            // The scheduler's first round pushes to whoever has connected by then.
            pending: true,
            urgent: true,
            unsaved: false,
            recomputed: (now, Duration::ZERO),
            grants_expire: 0,
            grant_keys: Vec::new(),
        };
        let live = Live::new(
            SUMMARY_TTL,
            LiveLimits {
                per_agent_bytes: cfg.limits.max_summary_bytes,
                total_pairs: cfg.limits.max_live_pairs,
                total_bytes: cfg.limits.max_live_bytes,
            },
        );
        let r = Registry {
            cfg,
            store,
            inner: Mutex::new(inner),
            live,
            changes: watch::Sender::new(0),
            kick: Notify::new(),
        };
        Ok(r)
    }

    /// Bumped whenever local jobs or agents change (federation pushes on change).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Marks the pinglists stale and wakes the scheduler; `urgent` (a job change) skips the
    /// deferral of costly rounds.
    fn reschedule(&self, inner: &mut Inner, urgent: bool) {
        inner.pending = true;
        inner.urgent |= urgent;
        self.kick.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configuration.
    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    fn check_spec(&self, inner: &Inner, spec: &pb::JobSpec) -> Result<(), DomainError> {
        meshlat_proto::job::validate(spec).map_err(DomainError::Spec)?;
        let full = matches!(
            pb::PinglistStrategy::try_from(spec.strategy),
            Ok(pb::PinglistStrategy::Full | pb::PinglistStrategy::Unspecified) | Err(_)
        );
        if full {
            let size = schedule::mesh_size(spec, &inner.views(&self.cfg, Instant::now()));
            if size > self.cfg.max_full_mesh {
                return Err(invalid(
                    "spec.strategy",
                    format!(
                        "a full mesh of {size} agents exceeds the maximum of {} (--max-full-mesh); use per-region or k-random",
                        self.cfg.max_full_mesh
                    ),
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
        let spec = spec.ok_or_else(|| invalid("spec", "must be given"))?;
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
                "a default job needs a name (it is found by it)",
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

    /// Jobs, by id; stopped ones only if asked.
    pub fn list_jobs(&self, include_stopped: bool) -> Vec<pb::Job> {
        self.lock()
            .jobs
            .values()
            .filter(|j| include_stopped || !j.stopped)
            .cloned()
            .collect()
    }

    /// One job.
    ///
    /// # Errors
    ///
    /// [`DomainError::NotFound`].
    pub fn get_job(&self, id: &str) -> Result<pb::Job, DomainError> {
        self.lock()
            .jobs
            .get(id)
            .cloned()
            .ok_or_else(|| DomainError::NotFound {
                what: "job",
                id: id.into(),
            })
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
        let spec = spec.ok_or_else(|| invalid("spec", "must be given"))?;
        let mut inner = self.lock();
        let old = inner
            .jobs
            .get(id)
            .cloned()
            .ok_or_else(|| DomainError::NotFound {
                what: "job",
                id: id.into(),
            })?;
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
        let job = pb::Job {
            spec: Some(spec),
            version: old.version + 1,
            updated_unix_ms: unix_ms(),
            ..old.clone()
        };
        inner.jobs.insert(id.into(), job.clone());
        if let Err(e) = self.save_jobs(&inner) {
            inner.jobs.insert(id.into(), old);
            return Err(e);
        }
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
        let old = inner
            .jobs
            .get(id)
            .cloned()
            .ok_or_else(|| DomainError::NotFound {
                what: "job",
                id: id.into(),
            })?;
        if old.stopped {
            return Ok(old);
        }
        let job = pb::Job {
            stopped: true,
            version: old.version + 1,
            updated_unix_ms: unix_ms(),
            ..old.clone()
        };
        inner.jobs.insert(id.into(), job.clone());
        if let Err(e) = self.save_jobs(&inner) {
            inner.jobs.insert(id.into(), old);
            return Err(e);
        }
        tracing::info!(message = "Job stopped.", job = %id);
        self.reschedule(&mut inner, true);
        self.changed();
        Ok(job)
    }

    /// Known agents, by id.
    ///
    /// Agents of peer controllers (federation) follow, with their controller's region.
    pub fn list_agents(&self) -> Vec<pb::AgentInfo> {
        let inner = self.lock();
        let now = Instant::now();
        let mut v: Vec<pb::AgentInfo> = inner
            .agents
            .values()
            .filter_map(|a| a.stored.info.clone())
            .collect();
        for (dir, expires) in inner.peers.values() {
            if *expires > now {
                v.extend(
                    dir.directory
                        .iter()
                        .filter_map(|a| a.info.clone())
                        .filter(|i| !inner.agents.contains_key(&i.id)),
                );
            }
        }
        v
    }

    /// This controller's directory for its peers: its region, live agents with their
    /// endpoints, and its own running jobs (never stopped ones: a stopped job leaves the
    /// directory, and peers drop what is no longer in it at the next exchange).
    pub fn directory(&self, controller_url: &str, ttl: Duration) -> pb::Directory {
        let inner = self.lock();
        let now = Instant::now();
        let directory: Vec<pb::StoredAgent> = inner
            .agents
            .values()
            .filter(|e| {
                e.session.is_some() || now.duration_since(e.last_heard) < self.cfg.agent_ttl
            })
            .map(|e| e.stored.clone())
            .collect();
        pb::Directory {
            region: self.cfg.region.clone(),
            controller_url: controller_url.into(),
            agents: directory.iter().filter_map(|a| a.info.clone()).collect(),
            jobs: inner
                .jobs
                .values()
                .filter(|j| !j.stopped)
                .cloned()
                .collect(),
            ttl_ms: ttl.as_millis() as u64,
            unix_ms: unix_ms(),
            directory,
            grant_public_key: self.cfg.keys.grant_public_key().as_bytes().to_vec(),
        }
    }

    /// Merges a peer controller's directory: its agents become targets (and its jobs are
    /// scheduled for our agents) until `ttl` after now (the peer's `ttl_ms` if shorter).
    ///
    /// Peer jobs pass the same validation as local ones; a job that fails it, a stopped job,
    /// and jobs and agents beyond `--max-peer-jobs` and `--max-peer-agents` are ignored, each
    /// with a warning (once per peer and job until the peer's directory changes it).
    ///
    /// # Errors
    ///
    /// [`DomainError::Invalid`] for a directory without a region or claiming ours.
    pub fn merge_peer(&self, mut dir: pb::Directory, ttl: Duration) -> Result<(), DomainError> {
        let region = dir.region.trim().to_string();
        if region.is_empty() {
            return Err(invalid("directory.region", "must not be empty"));
        }
        if region == self.cfg.region {
            return Err(invalid(
                "directory.region",
                format!("{region:?} is this controller's own region"),
            ));
        }
        if !dir.grant_public_key.is_empty()
            && meshlat_proto::grant::GrantPublicKey::from_bytes(&dir.grant_public_key).is_err()
        {
            return Err(invalid(
                "directory.grant_public_key",
                format!(
                    "{} bytes; an Ed25519 public key is {}",
                    dir.grant_public_key.len(),
                    meshlat_proto::grant::PUBLIC_KEY_BYTES
                ),
            ));
        }
        let ttl = match dir.ttl_ms {
            0 => ttl,
            ms => ttl
                .min(Duration::from_millis(ms))
                .max(Duration::from_secs(1)),
        };
        // Only the peer's own jobs and agents of its region; the directory is what we schedule
        // against, so nothing else is trusted from it.
        dir.directory.retain(|a| {
            a.info.as_ref().is_some_and(|i| {
                i.region == region && !i.id.is_empty() && check_stored_agent(a).is_ok()
            })
        });
        let limits = &self.cfg.limits;
        if dir.directory.len() > limits.max_peer_agents {
            tracing::warn!(
                message = "Peer directory cut to --max-peer-agents.",
                peer_region = %region,
                agents = dir.directory.len(),
                limit = limits.max_peer_agents
            );
            dir.directory.truncate(limits.max_peer_agents);
        }
        dir.agents.clear();
        let mut refused = Vec::new();
        let mut kept = 0usize;
        dir.jobs.retain(|j| {
            if j.stopped {
                return false;
            }
            if let Err(e) = check_job(j) {
                refused.push((j.id.clone(), e));
                return false;
            }
            kept += 1;
            if kept > limits.max_peer_jobs {
                refused.push((
                    j.id.clone(),
                    DomainError::Exhausted {
                        field: "directory.jobs",
                        limit: limits.max_peer_jobs as u64,
                        flag: "--max-peer-jobs",
                        reason: "more jobs than accepted from one peer".into(),
                    },
                ));
                return false;
            }
            true
        });
        let mut inner = self.lock();
        let now = Instant::now();
        let fresh = !inner.peers.contains_key(&region);
        if fresh && inner.peers.len() >= limits::MAX_PEER_REGIONS {
            return Err(DomainError::Exhausted {
                field: "directory.region",
                limit: limits::MAX_PEER_REGIONS as u64,
                flag: "limits::MAX_PEER_REGIONS",
                reason: format!("{region:?} would be one peer region too many"),
            });
        }
        let known: std::collections::BTreeSet<String> = inner
            .refused_peer_jobs
            .get(&region)
            .cloned()
            .unwrap_or_default();
        for (job, e) in &refused {
            if !known.contains(job) {
                tracing::warn!(
                    message = "Peer job refused.",
                    peer_region = %region,
                    job = %job,
                    field = %e.field().unwrap_or_default(),
                    limit = ?e.limit(),
                    error = %e
                );
            }
        }
        inner.refused_peer_jobs.insert(
            region.clone(),
            refused.into_iter().map(|(id, _)| id).collect(),
        );
        inner.peers.insert(region.clone(), (dir, now + ttl));
        if fresh {
            tracing::info!(message = "Peer directory merged.", peer_region = %region);
        }
        self.reschedule(&mut inner, fresh);
        Ok(())
    }

    /// Registers a session from a Hello: keeps the agent's id if it has one, else makes a new
    /// one. A second session for an id replaces the first (its stream ends).
    ///
    /// # Errors
    ///
    /// [`DomainError::Invalid`] for a malformed Hello, or [`DomainError::Store`].
    pub fn connect(&self, hello: pb::Hello) -> Result<Session, DomainError> {
        self.connect_as(hello, "")
    }

    /// [`Registry::connect`] for an agent that presented join token `token` (an identifier
    /// of it, not the secret): a new agent id is refused beyond `--max-agents` in all or
    /// `--max-agents-per-token` with this token.
    ///
    /// # Errors
    ///
    /// [`DomainError::Invalid`] for a malformed Hello, [`DomainError::Exhausted`] at a cap.
    pub fn connect_as(&self, hello: pb::Hello, token: &str) -> Result<Session, DomainError> {
        self.connect_verified(hello, token, |_| Ok::<_, DomainError>(None))
    }

    /// [`Registry::connect_as`], with `verify` deciding under the lock whether the session may
    /// speak for the id ([`crate::identity::admit`]): it is given the id's recorded identity
    /// key (`None`: unknown id, or none recorded) and returns the identity to record (`None`:
    /// keep what is recorded). A refusal changes nothing. With an empty `token` (a session that
    /// presented a certificate) the agent keeps the token it joined with, for the per-token cap.
    ///
    /// # Errors
    ///
    /// What `verify` returns, and the errors of [`Registry::connect_as`].
    pub fn connect_verified<E: From<DomainError>>(
        &self,
        hello: pb::Hello,
        token: &str,
        verify: impl FnOnce(Option<&[u8]>) -> Result<Option<[u8; 32]>, E>,
    ) -> Result<Session, E> {
        let id = hello.agent_id.trim().to_string();
        if id.len() > 128 || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid("hello.agent_id", "at most 128 printable characters").into());
        }
        if hello.region.trim().is_empty() {
            return Err(invalid("hello.region", "must not be empty").into());
        }
        check_hello(&hello)?;
        let id = if id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            id
        };
        let now = Instant::now();
        let mut inner = self.lock();
        let recorded = inner
            .agents
            .get(&id)
            .map(|e| e.stored.identity_key_sha256.clone())
            .unwrap_or_default();
        let identity = match verify((!recorded.is_empty()).then_some(&recorded[..]))? {
            Some(k) => k.to_vec(),
            None => recorded,
        };
        if !inner.agents.contains_key(&id) {
            let limits = &self.cfg.limits;
            let same = inner.agents.values().filter(|e| e.token == token).count();
            if !token.is_empty() && same >= limits.max_agents_per_token {
                return Err(DomainError::Exhausted {
                    field: "agents",
                    limit: limits.max_agents_per_token as u64,
                    flag: "--max-agents-per-token",
                    reason: format!("{same} agents joined with this join token"),
                }
                .into());
            }
            if inner.agents.len() >= limits.max_agents {
                return Err(DomainError::Exhausted {
                    field: "agents",
                    limit: limits.max_agents as u64,
                    flag: "--max-agents",
                    reason: format!("{} agents are known", inner.agents.len()),
                }
                .into());
            }
        }
        let session = inner.next_session;
        inner.next_session += 1;
        let info = pb::AgentInfo {
            id: id.clone(),
            region: hello.region,
            az: hello.az,
            location: hello.location,
            version: hello.version,
            connected: true,
            last_seen_unix_ms: unix_ms(),
            controller_region: self.cfg.region.clone(),
        };
        let mut stored = pb::StoredAgent {
            info: Some(info),
            endpoints: hello.endpoints,
            capabilities: hello.capabilities,
            identity_key_sha256: identity,
        };
        // The relay role is the operator's decision, not the agent's claim.
        let relay_refused = match self.cfg.relay_policy.enforce(&mut stored) {
            RelayDecision::Refused(reason) => {
                tracing::warn!(message = "Agent claims relay-udp but is not a relay by policy; used as an ordinary agent.", agent = %id, %reason);
                Some(reason)
            }
            RelayDecision::Relay => {
                tracing::info!(message = "Agent is a relay by policy.", agent = %id);
                None
            }
            RelayDecision::NotClaimed => None,
        };
        let (tx, rx) = watch::channel(Arc::new(PushedSet::default()));
        let replaced = match inner.agents.get_mut(&id) {
            Some(e) => {
                e.stored = stored;
                e.last_heard = now;
                if !token.is_empty() {
                    e.token = token.to_string();
                }
                // Force a push on the new session.
                e.generation = 0;
                e.session.replace((session, tx)).is_some()
            }
            None => {
                inner.agents.insert(
                    id.clone(),
                    AgentEntry {
                        stored,
                        session: Some((session, tx)),
                        last_heard: now,
                        generation: 0,
                        acked: 0,
                        token: token.to_string(),
                    },
                );
                false
            }
        };
        tracing::info!(message = "Agent connected.", agent = %id, session, replaced);
        inner.unsaved = true;
        self.reschedule(&mut inner, false);
        drop(inner);
        self.changed();
        Ok(Session {
            agent_id: id,
            session,
            job_sets: rx,
            relay_refused,
        })
    }

    /// Notes a heartbeat (or any message) from a session.
    pub fn heard(&self, agent_id: &str, session: u64) {
        let mut inner = self.lock();
        if let Some(e) = inner.agents.get_mut(agent_id)
            && e.session.as_ref().is_some_and(|(s, _)| *s == session)
        {
            e.last_heard = Instant::now();
            if let Some(i) = e.stored.info.as_mut() {
                i.last_seen_unix_ms = unix_ms();
            }
        }
    }

    /// Keeps a session's latest rolling summaries for the live view (and notes it was heard).
    pub fn summaries(&self, agent_id: &str, session: u64, s: pb::Summaries) {
        let region = {
            let mut inner = self.lock();
            let Some(e) = inner.agents.get_mut(agent_id) else {
                return;
            };
            if e.session.as_ref().is_none_or(|(s, _)| *s != session) {
                return;
            }
            e.last_heard = Instant::now();
            e.stored
                .info
                .as_ref()
                .map(|i| i.region.clone())
                .unwrap_or_default()
        };
        tracing::trace!(message = "Summaries received.", agent = %agent_id, pairs = s.pairs.len());
        self.live.ingest(agent_id, &region, s, Instant::now());
    }

    /// The latency matrix from the agents' latest summaries, keyed `by` `agent` (or empty) or
    /// `region`, for one `protocol` (empty: all). See [`crate::live`] for how cells merge.
    ///
    /// # Errors
    ///
    /// [`DomainError::Invalid`] for an unknown `by` or protocol.
    pub fn matrix(&self, by: &str, protocol: &str) -> Result<pb::Matrix, DomainError> {
        let by = By::parse(by).ok_or_else(|| invalid("by", "must be agent or region"))?;
        let protocol = protocol.trim();
        if !protocol.is_empty() && !matches!(protocol, "udp" | "tcp" | "quic" | "http" | "https") {
            return Err(invalid(
                "protocol",
                "must be one of udp, tcp, quic, http, https",
            ));
        }
        // Our agents and the peers' (targets in other regions are named by their directories).
        let regions: BTreeMap<String, String> = {
            let inner = self.lock();
            let peers = inner
                .peers
                .values()
                .flat_map(|(dir, _)| dir.directory.iter())
                .filter_map(|a| a.info.as_ref());
            let own = inner.agents.values().filter_map(|e| e.stored.info.as_ref());
            peers
                .chain(own)
                .map(|i| (i.id.clone(), i.region.clone()))
                .collect()
        };
        let cells = self
            .live
            .cells(Instant::now(), |id| regions.get(id).cloned());
        Ok(pb::Matrix {
            cells: live::matrix(&cells, by, (!protocol.is_empty()).then_some(protocol)),
            unix_ms: unix_ms(),
        })
    }

    /// Notes a job-set acknowledgement.
    pub fn acked(&self, agent_id: &str, session: u64, ack: &pb::JobAck) {
        let mut inner = self.lock();
        if let Some(e) = inner.agents.get_mut(agent_id)
            && e.session.as_ref().is_some_and(|(s, _)| *s == session)
        {
            e.acked = ack.generation;
            e.last_heard = Instant::now();
            if !ack.rejected.is_empty() {
                tracing::warn!(message = "Agent rejected jobs.", agent = %agent_id, generation = ack.generation, rejected = ?ack.rejected);
            } else {
                tracing::debug!(message = "Job set acknowledged.", agent = %agent_id, generation = ack.generation);
            }
        }
    }

    /// Ends a session (if it is still the agent's current one).
    pub fn disconnect(&self, agent_id: &str, session: u64) {
        let mut inner = self.lock();
        let Some(e) = inner.agents.get_mut(agent_id) else {
            return;
        };
        if e.session.as_ref().is_none_or(|(s, _)| *s != session) {
            return;
        }
        e.session = None;
        e.last_heard = Instant::now();
        if let Some(i) = e.stored.info.as_mut() {
            i.connected = false;
            i.last_seen_unix_ms = unix_ms();
        }
        tracing::info!(message = "Agent disconnected.", agent = %agent_id, session);
        inner.unsaved = true;
        self.reschedule(&mut inner, false);
        drop(inner);
        self.changed();
    }

    /// Re-evaluates liveness (agents whose TTL ran out stop being scheduled), expires what
    /// outlived its time, and prunes the live summaries. Call periodically (every
    /// [`crate::app::SWEEP_INTERVAL`]).
    ///
    /// - Stopped jobs older than `--stopped-job-ttl` (since their stop) are deleted.
    /// - Disconnected agents not heard from for `--agent-expiry` are removed from the directory,
    ///   the live summaries (the matrix) and the saved state.
    /// - Summaries older than [`SUMMARY_TTL`] are dropped, whether or not anyone reads the
    ///   matrix.
    ///
    /// Reschedules only if a peer directory or a disconnected agent's TTL ran out since the last
    /// round, something was removed, or a new grant epoch started, not on every call.
    pub fn sweep(&self) {
        let pruned = self.live.prune(Instant::now());
        if pruned > 0 {
            let t = self.live.totals();
            tracing::debug!(
                message = "Live summaries expired.",
                agents = pruned,
                remaining_agents = t.agents,
                remaining_pairs = t.pairs,
                remaining_bytes = t.bytes
            );
        }
        let mut inner = self.lock();
        let now = Instant::now();
        let now_ms = unix_ms();
        let stopped_ttl =
            i64::try_from(self.cfg.limits.stopped_job_ttl.as_millis()).unwrap_or(i64::MAX);
        let old: Vec<String> = inner
            .jobs
            .values()
            .filter(|j| j.stopped && now_ms.saturating_sub(j.updated_unix_ms) > stopped_ttl)
            .map(|j| j.id.clone())
            .collect();
        let mut removed = false;
        if !old.is_empty() {
            let kept: Vec<pb::Job> = old.iter().filter_map(|id| inner.jobs.remove(id)).collect();
            match self.save_jobs(&inner) {
                Ok(()) => {
                    for id in &old {
                        tracing::info!(message = "Stopped job expired (--stopped-job-ttl).", job = %id);
                    }
                    removed = true;
                }
                // Keep them; the next sweep tries again.
                Err(_) => inner
                    .jobs
                    .extend(kept.into_iter().map(|j| (j.id.clone(), j))),
            }
        }
        let expiry = self.cfg.limits.agent_expiry;
        let gone: Vec<String> = inner
            .agents
            .iter()
            .filter(|(_, e)| e.session.is_none() && now.duration_since(e.last_heard) > expiry)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            inner.agents.remove(id);
            self.live.remove(id);
            tracing::info!(message = "Agent removed: not heard from for --agent-expiry.", agent = %id);
        }
        if !gone.is_empty() {
            inner.unsaved = true;
            removed = true;
        }
        let peers = inner.peers.len();
        inner.peers.retain(|region, (_, expires)| {
            let keep = *expires > now;
            if !keep {
                tracing::warn!(message = "Peer directory expired.", peer_region = %region);
            }
            keep
        });
        let Inner {
            peers: live_peers,
            refused_peer_jobs,
            ..
        } = &mut *inner;
        refused_peer_jobs.retain(|region, _| live_peers.contains_key(region));
        let since = inner.recomputed.0;
        let ttl = self.cfg.agent_ttl;
        let expired = removed
            || inner.peers.len() != peers
            || inner.agents.values().any(|e| {
                let until = e.last_heard + ttl;
                e.session.is_none() && since < until && until <= now
            });
        // Relay grants are reissued when a new grant epoch starts.
        let new_epoch = self.cfg.grant_expiry_now() != inner.grants_expire;
        if expired || new_epoch {
            self.reschedule(&mut inner, false);
        }
    }

    /// The scheduler: runs rounds (see the module doc) until `shutdown`. Spawn one per registry;
    /// nothing is pushed without it.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let due = self.lock().due();
            let now = Instant::now();
            match due {
                Some(at) if at <= now => {}
                Some(at) => {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep_until(at) => {}
                        () = self.kick.notified() => {}
                    }
                    continue;
                }
                None => {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = self.kick.notified() => {}
                    }
                    continue;
                }
            }
            let round = self.lock().snapshot(&self.cfg, now);
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.compute(round)).await {
                Ok(done) => self.lock().apply(&self.cfg, done),
                Err(error) => {
                    // A panic in the computation (a bug): agents keep their last sets; retry
                    // once a second rather than spinning.
                    tracing::error!(message = "Pinglist computation failed; retrying in 1 s.", %error);
                    self.lock().pending = true;
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// The blocking part of a round: saves the directory, computes the plan, encodes each
    /// session's assignments and keeps those that differ from what it has.
    fn compute(&self, round: Round) -> Computed {
        let started = Instant::now();
        if let Some(agents) = round.save
            && let Err(error) = self.store.save_agents(&agents)
        {
            tracing::error!(message = "Cannot save agents.", %error);
        }
        let signing = schedule::Signing {
            keys: &self.cfg.keys,
            expires_unix: round.grants_expire,
        };
        let jobs: Vec<&pb::Job> = round.jobs.iter().collect();
        let mut plan =
            schedule::compute_encoded(&jobs, &round.views, self.cfg.max_full_mesh, &signing);
        let planned = started.elapsed();
        drop(round.views);
        let pushes = round
            .sessions
            .into_iter()
            .filter_map(|s| {
                let want = Bytes::from(plan.remove(&s.id).unwrap_or_default());
                (s.force || want[..] != *s.pushed.assignments()).then_some(Push {
                    id: s.id,
                    session: s.session,
                    assignments: want,
                })
            })
            .collect();
        tracing::debug!(
            message = "Pinglists computed.",
            snapshot_ms = round.snapshot_cost.as_millis() as u64,
            plan_ms = planned.as_millis() as u64,
            encode_ms = (started.elapsed() - planned).as_millis() as u64
        );
        Computed {
            at: round.at,
            cost: round.snapshot_cost + started.elapsed(),
            grants_expire: round.grants_expire,
            grant_keys: round.grant_keys,
            pushes,
        }
    }

    /// The generation an agent last acknowledged (tests and diagnostics).
    pub fn acked_generation(&self, agent_id: &str) -> Option<u64> {
        self.lock().agents.get(agent_id).map(|e| e.acked)
    }

    fn save_jobs(&self, inner: &Inner) -> Result<(), DomainError> {
        let jobs: Vec<pb::Job> = inner.jobs.values().cloned().collect();
        self.store.save_jobs(&jobs).map_err(|e| {
            tracing::error!(message = "Cannot save jobs.", error = %e);
            DomainError::Store(e)
        })
    }
}

/// What a round computes from, taken under the lock.
struct Round {
    at: Instant,
    snapshot_cost: Duration,
    views: Vec<AgentView>,
    jobs: Vec<pb::Job>,
    grants_expire: u64,
    /// Grant public keys relays trust this round.
    grant_keys: Vec<Vec<u8>>,
    sessions: Vec<SessionSnap>,
    /// The agent directory, if it changed since it was last saved.
    save: Option<Vec<pb::StoredAgent>>,
}

/// A session at the snapshot, with the set it was last pushed.
struct SessionSnap {
    id: String,
    session: u64,
    pushed: Arc<PushedSet>,
    /// A new session: pushed even if its set is unchanged.
    force: bool,
}

/// A round's result, applied under the lock.
struct Computed {
    at: Instant,
    cost: Duration,
    grants_expire: u64,
    grant_keys: Vec<Vec<u8>>,
    pushes: Vec<Push>,
}

/// A changed set for a session.
struct Push {
    id: String,
    session: u64,
    assignments: Bytes,
}

impl Inner {
    /// Live local agents, then live peer agents (a local id wins).
    fn views(&self, cfg: &RegistryConfig, now: Instant) -> Vec<AgentView> {
        let view = |a: &pb::StoredAgent| {
            let i = a.info.as_ref()?;
            Some(AgentView {
                id: i.id.clone(),
                region: i.region.clone(),
                az: i.az.clone(),
                location: i.location.clone(),
                endpoints: a.endpoints.clone(),
                relay: a
                    .capabilities
                    .iter()
                    .any(|c| c == schedule::RELAY_CAPABILITY),
            })
        };
        let mut v: Vec<AgentView> = self
            .agents
            .values()
            .filter(|e| e.session.is_some() || now.duration_since(e.last_heard) < cfg.agent_ttl)
            .filter_map(|e| view(&e.stored))
            .collect();
        for (dir, expires) in self.peers.values() {
            if *expires > now {
                v.extend(
                    dir.directory
                        .iter()
                        .filter(|a| {
                            a.info
                                .as_ref()
                                .is_some_and(|i| !self.agents.contains_key(&i.id))
                        })
                        .filter_map(view),
                );
            }
        }
        v
    }

    /// The grant public keys relays trust: ours and those of live federation peers, sorted.
    fn grant_keys(&self, cfg: &RegistryConfig, now: Instant) -> Vec<Vec<u8>> {
        let mut keys = vec![cfg.keys.grant_public_key().as_bytes().to_vec()];
        keys.extend(
            self.peers
                .values()
                .filter(|(d, expires)| *expires > now && !d.grant_public_key.is_empty())
                .map(|(d, _)| d.grant_public_key.clone()),
        );
        keys.sort();
        keys.dedup();
        keys
    }

    /// Local jobs, then live peers' jobs not known locally.
    fn all_jobs(&self, now: Instant) -> Vec<&pb::Job> {
        let mut jobs: Vec<&pb::Job> = self.jobs.values().collect();
        let mut seen: std::collections::BTreeSet<&str> =
            self.jobs.keys().map(String::as_str).collect();
        for (dir, expires) in self.peers.values() {
            if *expires > now {
                for j in &dir.jobs {
                    if seen.insert(j.id.as_str()) {
                        jobs.push(j);
                    }
                }
            }
        }
        jobs
    }

    /// When the scheduler's next round is due: `None` if nothing is stale; a job change, or a
    /// quick last round, now; else [`RECOMPUTE_SPACING`] times the last round's cost after it.
    fn due(&self) -> Option<Instant> {
        if !self.pending && !self.unsaved {
            return None;
        }
        let (at, cost) = self.recomputed;
        let costly = cost >= DEFER_ABOVE && self.agents.len() >= DEFER_MIN_AGENTS;
        Some(if self.urgent || !costly {
            at
        } else {
            at + cost * RECOMPUTE_SPACING
        })
    }

    /// Takes a round's inputs and clears the stale flags (what changes from now on is stale
    /// again).
    fn snapshot(&mut self, cfg: &RegistryConfig, now: Instant) -> Round {
        let views = self.views(cfg, now);
        let jobs = self.all_jobs(now).into_iter().cloned().collect();
        let grant_keys = self.grant_keys(cfg, now);
        let keys_changed = grant_keys != self.grant_keys;
        let sessions = self
            .agents
            .iter()
            .filter_map(|(id, e)| {
                let (session, tx) = e.session.as_ref()?;
                Some(SessionSnap {
                    id: id.clone(),
                    session: *session,
                    pushed: tx.borrow().clone(),
                    force: e.generation == 0 || (keys_changed && is_relay(&e.stored)),
                })
            })
            .collect();
        let save = self
            .unsaved
            .then(|| self.agents.values().map(|a| a.stored.clone()).collect());
        self.pending = false;
        self.urgent = false;
        self.unsaved = false;
        Round {
            at: now,
            snapshot_cost: now.elapsed(),
            views,
            jobs,
            grants_expire: cfg.grant_expiry_now(),
            grant_keys,
            sessions,
            save,
        }
    }

    /// Pushes a round's changed sets to the sessions that are still the ones it computed for
    /// (a session that replaced one meanwhile is stale and gets the next round).
    fn apply(&mut self, cfg: &RegistryConfig, done: Computed) {
        let started = Instant::now();
        let lease_ms = cfg.lease.as_millis() as u64;
        let accept_keys = cfg.keys.accept_wire_secrets();
        let grant_keys = done.grant_keys;
        let mut pushed = 0usize;
        for p in done.pushes {
            let Some(e) = self.agents.get_mut(&p.id) else {
                continue;
            };
            let Some((session, tx)) = &e.session else {
                continue;
            };
            if *session != p.session {
                continue;
            }
            self.next_generation += 1;
            e.generation = self.next_generation;
            let relay = is_relay(&e.stored);
            let set = PushedSet::new(
                e.generation,
                lease_ms,
                &p.assignments,
                &accept_keys,
                if relay { &grant_keys } else { &[] },
            );
            tracing::debug!(message = "Pushing job set.", agent = %p.id, generation = e.generation, bytes = set.message().len());
            // No receiver means the session is ending; its disconnect cleans up.
            let _ = tx.send(Arc::new(set));
            pushed += 1;
        }
        let cost = done.cost + started.elapsed();
        tracing::debug!(
            message = "Pinglists recomputed.",
            agents = self.agents.len(),
            pushed,
            cost_ms = cost.as_millis() as u64
        );
        self.recomputed = (done.at, cost);
        self.grants_expire = done.grants_expire;
        self.grant_keys = grant_keys;
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
    use crate::store::FileStore;

    fn cfg() -> RegistryConfig {
        RegistryConfig {
            region: "r".into(),
            max_full_mesh: 10,
            lease: Duration::from_secs(60),
            agent_ttl: Duration::from_secs(120),
            keys: MeshKeys::new(b"test", crate::keys::test_signer(b"test")),
            relay_policy: RelayPolicy::default(),
            address_policy: Default::default(),
            grant_epoch: Duration::from_secs(3600),
            limits: Limits::default(),
        }
    }

    fn hello(id: &str, port: u16) -> pb::Hello {
        pb::Hello {
            agent_id: id.into(),
            region: "r".into(),
            endpoints: vec![pb::ResponderEndpoint {
                protocol: pb::Protocol::Udp as i32,
                address: format!("127.0.0.1:{port}"),
            }],
            ..Default::default()
        }
    }

    fn spec(timeout_ms: u32) -> pb::JobSpec {
        let sel = pb::Endpoint {
            endpoint: Some(pb::endpoint::Endpoint::Selector("region=r".into())),
        };
        pb::JobSpec {
            kind: pb::JobKind::Probe as i32,
            protocols: vec![pb::Protocol::Udp as i32],
            sources: vec![sel.clone()],
            targets: vec![sel],
            interval_ms: 1000,
            timeout_ms,
            ..Default::default()
        }
    }

    /// A registry with its scheduler running until the returned token is cancelled.
    fn running(store: Arc<FileStore>) -> (Arc<Registry>, CancellationToken) {
        let r = Arc::new(Registry::load(cfg(), store).expect("load"));
        let stop = CancellationToken::new();
        tokio::spawn(r.clone().run(stop.clone()));
        (r, stop)
    }

    /// The next set pushed to a session.
    async fn next_set(rx: &mut watch::Receiver<Arc<PushedSet>>) -> pb::JobSet {
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("a set is pushed within 10 s")
            .expect("session open");
        rx.borrow_and_update().decode()
    }

    #[tokio::test]
    async fn jobs_and_ids_persist_sets_are_pushed_and_versions_checked() {
        let dir = std::env::temp_dir().join(format!("meshlat-reg-{}", uuid::Uuid::now_v7()));
        let store = Arc::new(FileStore::open(&dir).expect("store"));
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

    #[tokio::test(start_paused = true)]
    async fn peer_directories_add_targets_and_jobs_until_their_ttl() {
        let dir = std::env::temp_dir().join(format!("meshlat-reg-{}", uuid::Uuid::now_v7()));
        let store = Arc::new(FileStore::open(&dir).expect("store"));
        let (r, stop) = running(store);
        let mut a = r.connect(hello("a1", 1)).expect("a");
        assert!(next_set(&mut a.job_sets).await.assignments.is_empty());
        let changes = r.changes();
        // Sources here, targets in the peer's region.
        let mut s = spec(500);
        s.targets = vec![pb::Endpoint {
            endpoint: Some(pb::endpoint::Endpoint::Selector("region=p".into())),
        }];
        r.start_job(Some(s)).expect("job");
        assert!(
            changes.has_changed().expect("open"),
            "a job start is a change"
        );

        let peer = |region: &str, jobs: Vec<pb::Job>| pb::Directory {
            region: region.into(),
            jobs,
            directory: vec![pb::StoredAgent {
                info: Some(pb::AgentInfo {
                    id: "p1".into(),
                    region: region.into(),
                    connected: true,
                    ..Default::default()
                }),
                endpoints: hello("p1", 9).endpoints,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(matches!(
            r.merge_peer(peer("r", vec![]), Duration::from_secs(10)),
            Err(DomainError::Invalid { .. })
        ));
        // A peer job with sources in our region is scheduled here too.
        let mut their = spec(500);
        their.targets = vec![pb::Endpoint {
            endpoint: Some(pb::endpoint::Endpoint::Url("udp://10.0.0.1:7".into())),
        }];
        let their_job = pb::Job {
            id: "peer-job".into(),
            spec: Some(their),
            version: 1,
            ..Default::default()
        };
        r.merge_peer(peer("p", vec![their_job]), Duration::from_secs(10))
            .expect("merge");
        let set = next_set(&mut a.job_sets).await;
        let mut targets: Vec<(String, String)> = set
            .assignments
            .iter()
            .flat_map(|x| {
                let job = x.job.as_ref().map(|j| j.id.clone()).unwrap_or_default();
                x.targets
                    .iter()
                    .map(move |t| (job.clone(), t.target.clone()))
            })
            .collect();
        targets.sort();
        assert_eq!(targets.len(), 2, "{targets:?}");
        assert!(
            targets.iter().any(|(_, t)| t == "udp://127.0.0.1:9"),
            "{targets:?}"
        );
        assert!(
            targets
                .iter()
                .any(|(j, t)| j == "peer-job" && t == "udp://10.0.0.1:7")
        );
        assert_eq!(r.list_agents().len(), 2);
        let own = r.directory("https://me", Duration::from_secs(10));
        assert_eq!(
            (own.region.as_str(), own.directory.len(), own.jobs.len()),
            ("r", 1, 1)
        );

        // Past the TTL the peer's agents and jobs are gone.
        tokio::time::advance(Duration::from_secs(11)).await;
        r.sweep();
        assert!(next_set(&mut a.job_sets).await.assignments.is_empty());
        assert_eq!(r.list_agents().len(), 1);
        stop.cancel();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ensure_job_creates_once_updates_on_change_and_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("meshlat-reg-{}", uuid::Uuid::now_v7()));
        let store = Arc::new(FileStore::open(&dir).expect("store"));
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

    #[tokio::test(start_paused = true)]
    async fn caps_refuse_with_the_flag_and_expiry_removes_agents_and_jobs() {
        let dir = std::env::temp_dir().join(format!("meshlat-reg-{}", uuid::Uuid::now_v7()));
        let store = Arc::new(FileStore::open(&dir).expect("store"));
        let mut c = cfg();
        c.limits.max_jobs = 2;
        c.limits.max_agents = 2;
        c.limits.max_agents_per_token = 1;
        c.limits.agent_expiry = Duration::from_secs(600);
        c.limits.stopped_job_ttl = Duration::from_millis(1);
        let r = Registry::load(c, store).expect("load");
        let a = r.start_job(Some(spec(500))).expect("1");
        r.start_job(Some(spec(500))).expect("2");
        let e = r.start_job(Some(spec(500))).expect_err("3");
        assert_eq!(
            (e.field().as_deref(), e.limit()),
            (Some("jobs"), Some(2)),
            "{e}"
        );
        assert!(e.to_string().contains("--max-jobs"), "{e}");
        // A stopped job counts until it expires; then there is room again.
        r.stop_job(&a.id).expect("stop");
        assert!(r.start_job(Some(spec(500))).is_err());
        std::thread::sleep(Duration::from_millis(5));
        r.sweep();
        assert!(matches!(
            r.get_job(&a.id),
            Err(DomainError::NotFound { .. })
        ));
        r.start_job(Some(spec(500))).expect("room after the expiry");

        let one = r.connect_as(hello("a1", 1), "tok-a").expect("a1");
        let e = r
            .connect_as(hello("a2", 2), "tok-a")
            .expect_err("per token");
        assert!(e.to_string().contains("--max-agents-per-token"), "{e}");
        let b1 = r.connect_as(hello("b1", 3), "tok-b").expect("b1");
        let e = r.connect_as(hello("c1", 4), "tok-c").expect_err("total");
        assert!(e.to_string().contains("(limit 2, --max-agents)"), "{e}");
        r.connect_as(hello("a1", 5), "tok-a")
            .expect("a known id reconnects");
        let mut h = hello("d1", 6);
        h.capabilities = vec!["x".into(); limits::MAX_HELLO_CAPABILITIES + 1];
        let e = r.connect_as(h, "tok-d").expect_err("too many capabilities");
        assert_eq!(e.field().as_deref(), Some("hello.capabilities"));

        // Gone longer than --agent-expiry: removed (the connected one stays).
        r.live
            .ingest("b1", "r", pb::Summaries::default(), Instant::now());
        r.disconnect("b1", b1.session);
        drop(one);
        tokio::time::advance(Duration::from_secs(601)).await;
        r.sweep();
        let ids: Vec<String> = r.list_agents().into_iter().map(|a| a.id).collect();
        assert_eq!(ids, vec!["a1".to_string()]);
        assert_eq!(r.live.totals().agents, 0, "its summaries went too");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(start_paused = true)]
    async fn peer_directories_are_bounded() {
        let dir = std::env::temp_dir().join(format!("meshlat-reg-{}", uuid::Uuid::now_v7()));
        let store = Arc::new(FileStore::open(&dir).expect("store"));
        let mut c = cfg();
        c.limits.max_peer_agents = 2;
        c.limits.max_peer_jobs = 1;
        let r = Registry::load(c, store).expect("load");
        let agent = |id: &str| pb::StoredAgent {
            info: Some(pb::AgentInfo {
                id: id.into(),
                region: "p".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut hostile = agent("p-wide");
        hostile.endpoints = vec![Default::default(); limits::MAX_HELLO_ENDPOINTS + 1];
        let job = |id: &str, k: u32| pb::Job {
            id: id.into(),
            spec: Some(pb::JobSpec {
                strategy: pb::PinglistStrategy::KRandom as i32,
                k,
                ..spec(500)
            }),
            ..Default::default()
        };
        let d = pb::Directory {
            region: "p".into(),
            directory: vec![hostile, agent("p1"), agent("p2"), agent("p3")],
            jobs: vec![job("bad", u32::MAX), job("j1", 2), job("j2", 2)],
            ..Default::default()
        };
        r.merge_peer(d, Duration::from_secs(10)).expect("merged");
        let ids: Vec<String> = r.list_agents().into_iter().map(|a| a.id).collect();
        assert_eq!(ids, vec!["p1".to_string(), "p2".to_string()]);
        let inner = r.lock();
        let jobs: Vec<&str> = inner
            .all_jobs(Instant::now())
            .iter()
            .map(|j| j.id.as_str())
            .collect();
        assert_eq!(
            jobs,
            vec!["j1"],
            "the hostile job and the one over --max-peer-jobs are ignored"
        );
        drop(inner);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The join-token attack of issue 10: an agent claiming `relay-udp` is a relay only by the
    /// operator's policy; a refused one is told why and gets no grant keys; an allowed relay gets
    /// public keys only (ours, then also a federation peer's, until that peer's TTL runs out) and
    /// never the retired HMAC grant key.
    #[tokio::test(start_paused = true)]
    async fn relay_role_comes_from_policy_and_relays_get_only_public_keys() {
        let dir = std::env::temp_dir().join(format!("meshlat-reg-{}", uuid::Uuid::now_v7()));
        let store = Arc::new(FileStore::open(&dir).expect("store"));
        let mut c = cfg();
        c.relay_policy = RelayPolicy::parse(&["relay-ok".into()]).expect("policy");
        let own_key = c.keys.grant_public_key().as_bytes().to_vec();
        let r = Arc::new(Registry::load(c, store.clone()).expect("load"));
        let stop = CancellationToken::new();
        tokio::spawn(r.clone().run(stop.clone()));
        let claim = |id: &str, port| {
            let mut h = hello(id, port);
            h.capabilities = vec!["udp".into(), schedule::RELAY_CAPABILITY.into()];
            h
        };
        let mut ok = r.connect(claim("relay-ok", 1)).expect("relay");
        let mut intruder = r.connect(claim("intruder", 2)).expect("intruder");
        assert_eq!(ok.relay_refused, None);
        let why = intruder.relay_refused.clone().expect("refused");
        assert!(why.contains("\"intruder\""), "{why}");

        let set = next_set(&mut ok.job_sets).await;
        assert_eq!(set.grant_public_keys, vec![own_key.clone()]);
        assert!(set.grant_keys.is_empty(), "no signing key material");
        let set = next_set(&mut intruder.job_sets).await;
        assert!(set.grant_public_keys.is_empty() && set.grant_keys.is_empty());
        // Peers (and relay jobs) see only the allowed relay as one; our key travels along.
        let d = r.directory("https://me", Duration::from_secs(10));
        let caps = |id: &str| {
            d.directory
                .iter()
                .find(|a| a.info.as_ref().is_some_and(|i| i.id == id))
                .map(|a| a.capabilities.clone())
                .unwrap_or_default()
        };
        assert!(
            caps("relay-ok")
                .iter()
                .any(|c| c == schedule::RELAY_CAPABILITY)
        );
        assert!(
            !caps("intruder")
                .iter()
                .any(|c| c == schedule::RELAY_CAPABILITY)
        );
        assert_eq!(d.grant_public_key, own_key);

        // A malformed peer key is refused, naming the field; a good one reaches the relay.
        let peer = |region: &str, key: Vec<u8>| pb::Directory {
            region: region.into(),
            grant_public_key: key,
            ..Default::default()
        };
        match r.merge_peer(peer("q", vec![1; 5]), Duration::from_secs(10)) {
            Err(DomainError::Invalid { field, .. }) => {
                assert_eq!(field, "directory.grant_public_key");
            }
            other => panic!("{other:?}"),
        }
        let peer_key = crate::keys::test_signer(b"peer")
            .public_key()
            .as_bytes()
            .to_vec();
        r.merge_peer(peer("p", peer_key.clone()), Duration::from_secs(10))
            .expect("merge");
        let mut want = vec![own_key.clone(), peer_key];
        want.sort();
        assert_eq!(next_set(&mut ok.job_sets).await.grant_public_keys, want);
        // The peer's TTL runs out: its key is no longer trusted.
        tokio::time::advance(Duration::from_secs(11)).await;
        r.sweep();
        assert_eq!(
            next_set(&mut ok.job_sets).await.grant_public_keys,
            vec![own_key]
        );
        assert!(
            !intruder.job_sets.has_changed().unwrap_or(true),
            "key changes are not pushed to non-relays"
        );

        // A restart with a policy that no longer names it: the saved claim is dropped on load.
        stop.cancel();
        drop(r);
        let r = Registry::load(cfg(), store).expect("load");
        let d = r.directory("https://me", Duration::from_secs(10));
        assert!(
            d.directory.iter().all(|a| !a
                .capabilities
                .iter()
                .any(|c| c == schedule::RELAY_CAPABILITY)),
            "{d:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
