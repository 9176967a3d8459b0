//! The domain layer: jobs, the agent directory and agent sessions, behind one lock.
//!
//! Every change (a job started, updated or stopped; an agent connecting, going away, or its
//! TTL running out) marks the pinglists stale and wakes the round loop
//! ([`Registry::run_rounds`]), which recomputes them ([`crate::pinglist`]) and pushes a new job
//! set ([`PushedSet`]) to each connected agent whose assignments changed, with a fresh
//! generation.
//!
//! One concept per file: this module holds [`Registry`], its configuration and the state behind
//! the lock, and loads it; `jobs` is job CRUD, `directory` the agent directory and federation
//! merge, `sessions` agent sessions, `matrix` the live view, `load` the live view of load
//! jobs, `expiry` the periodic sweep,
//! `rounds` the recompute rounds, `status` the agents' acknowledgement of each job; `validate`
//! bounds outside input and `error` holds [`DomainError`].
//!
//! # Recompute rounds
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

mod directory;
mod error;
mod expiry;
mod jobs;
mod load;
mod matrix;
mod rounds;
mod sessions;
mod status;
mod validate;

pub use directory::AgentCounts;
pub use error::{DomainError, Problem};
pub use jobs::Ensured;
pub use load::LOAD_END_GRACE_MS;
pub use matrix::RegionFilter;
pub use rounds::{DEFER_ABOVE, DEFER_MIN_AGENTS, RECOMPUTE_SPACING};
pub use sessions::Session;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshlat_proto::pb;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::jobset::PushedSet;
use crate::keys::MeshKeys;
use crate::limits::Limits;
use crate::live::{Live, LiveLimits, SUMMARY_TTL};
use crate::pinglist;
use crate::relay_policy::RelayPolicy;
use crate::store::{StateStore, StoreError};
use validate::check_job;

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
    /// Where load jobs may go ([`crate::load_policy`]): checked for every load job started
    /// here, stored, or read from a peer.
    pub load_allow: crate::load_policy::LoadAllow,
    /// Which addresses agents may advertise ([`crate::address_policy`]; checked by the
    /// session service, which knows the peer address).
    pub address_policy: crate::address_policy::AddressPolicy,
    /// Grants are valid one to two of these ([`crate::keys::grant_expiry`]); at least the lease.
    pub grant_epoch: Duration,
    /// The caps ([`crate::limits`]).
    pub limits: Limits,
    /// The load-job scenarios (`--scenarios`; `None`: none): a load job naming one is filled
    /// from it when started or updated here ([`crate::scenarios::ScenarioStore::resolve`]).
    pub scenarios: Option<std::sync::Arc<crate::scenarios::ScenarioStore>>,
}

impl RegistryConfig {
    /// Expiry of the relay grants issued now ([`crate::keys::grant_expiry`]).
    fn grant_expiry_now(&self) -> u64 {
        let epoch = self.grant_epoch.max(self.lease).as_secs();
        crate::keys::grant_expiry(unix_ms().max(0) as u64 / 1000, epoch)
    }
}

#[derive(Debug)]
struct AgentEntry {
    stored: pb::StoredAgent,
    session: Option<(u64, watch::Sender<Arc<PushedSet>>)>,
    last_heard: Instant,
    generation: u64,
    acked: u64,
    /// The jobs of the set last pushed to its current session ([`status`]).
    assigned: status::Assigned,
    /// Its last acknowledgement on the current session ([`status`]).
    last_ack: Option<status::LastAck>,
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
    /// The live view of load jobs ([`crate::loadlive`]).
    load_live: crate::loadlive::LoadLive,
    changes: watch::Sender<u64>,
    /// Wakes the round loop ([`Registry::run_rounds`]).
    kick: Notify,
}

/// Whether a stored agent is a relay: its `relay-udp` claim survived the operator's policy
/// ([`RelayPolicy::enforce`] runs on every Hello and on load, dropping refused claims).
fn is_relay(a: &pb::StoredAgent) -> bool {
    a.capabilities
        .iter()
        .any(|c| c == pinglist::RELAY_CAPABILITY)
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
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
                        assigned: Default::default(),
                        last_ack: None,
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
        let (jobs, bad): (Vec<pb::Job>, Vec<pb::Job>) = state
            .jobs
            .into_iter()
            .map(|mut j| {
                // Statuses are computed when served, never stored.
                j.agent_status.clear();
                j
            })
            .partition(|j| check_job(j, &cfg.load_allow).is_ok());
        if !bad.is_empty() {
            for j in &bad {
                let e = check_job(j, &cfg.load_allow).err();
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
            // The first round pushes to whoever has connected by then.
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
            load_live: crate::loadlive::LoadLive::new(),
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

    /// Marks the pinglists stale and wakes the round loop; `urgent` (a job change) skips the
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
}

#[cfg(test)]
mod test_support {
    use std::sync::Arc;
    use std::time::Duration;

    use meshlat_proto::pb;
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    use super::{Registry, RegistryConfig};
    use crate::jobset::PushedSet;
    use crate::keys::MeshKeys;
    use crate::limits::Limits;
    use crate::relay_policy::RelayPolicy;
    use crate::store::FileStore;

    /// A file store in a fresh directory under the system temp dir, and the directory (for the
    /// test to reopen or remove).
    pub(super) fn temp_store() -> (Arc<FileStore>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("meshlat-reg-{}", uuid::Uuid::now_v7()));
        let store = Arc::new(FileStore::open(&dir).expect("store"));
        (store, dir)
    }

    pub(super) fn cfg() -> RegistryConfig {
        RegistryConfig {
            region: "r".into(),
            max_full_mesh: 10,
            lease: Duration::from_secs(60),
            agent_ttl: Duration::from_secs(120),
            keys: MeshKeys::new(b"test", crate::keys::test_signer(b"test")),
            relay_policy: RelayPolicy::default(),
            load_allow: crate::load_policy::LoadAllow::default(),
            address_policy: Default::default(),
            grant_epoch: Duration::from_secs(3600),
            limits: Limits::default(),
            scenarios: None,
        }
    }

    pub(super) fn hello(id: &str, port: u16) -> pb::Hello {
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

    pub(super) fn spec(timeout_ms: u32) -> pb::JobSpec {
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

    /// A registry with its round loop running until the returned token is cancelled.
    pub(super) fn running(store: Arc<FileStore>) -> (Arc<Registry>, CancellationToken) {
        let r = Arc::new(Registry::load(cfg(), store).expect("load"));
        let stop = CancellationToken::new();
        tokio::spawn(r.clone().run_rounds(stop.clone()));
        (r, stop)
    }

    /// The next set pushed to a session.
    pub(super) async fn next_set(rx: &mut watch::Receiver<Arc<PushedSet>>) -> pb::JobSet {
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("a set is pushed within 10 s")
            .expect("session open");
        rx.borrow_and_update().decode()
    }
}
