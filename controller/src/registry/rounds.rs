//! Recompute rounds: the one task ([`Registry::run_rounds`]) that recomputes the pinglists when
//! they are stale and pushes each session's changed job set (the module doc of
//! [`crate::registry`] tells how rounds are taken, deferred and applied).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use meshlat_proto::pb;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Inner, Registry, RegistryConfig, is_relay};
use crate::jobset::PushedSet;
use crate::pinglist::{self, AgentView};

/// After session churn, the next recomputation starts no sooner than this many times the last
/// one's duration after it (recomputing takes at most about a fifth of the time).
pub const RECOMPUTE_SPACING: u32 = 5;
/// Recomputations quicker than this are never deferred.
pub const DEFER_ABOVE: Duration = Duration::from_millis(10);
/// Nor are they with fewer agents than this, so a small mesh never waits on a busy machine's
/// noisy timing.
pub const DEFER_MIN_AGENTS: usize = 500;

impl Registry {
    /// The round loop: runs rounds (see [`crate::registry`]) until `shutdown`. Spawn one per
    /// registry; nothing is pushed without it.
    pub async fn run_rounds(self: Arc<Self>, shutdown: CancellationToken) {
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
        let signing = pinglist::Signing {
            keys: &self.cfg.keys,
            expires_unix: round.grants_expire,
        };
        let jobs: Vec<&pb::Job> = round.jobs.iter().collect();
        let mut plan =
            pinglist::compute_encoded(&jobs, &round.views, self.cfg.max_full_mesh, &signing);
        let planned = started.elapsed();
        drop(round.views);
        let pushes = round
            .sessions
            .into_iter()
            .filter_map(|s| {
                let want = Bytes::from(plan.remove(&s.id).unwrap_or_default());
                (s.force || want[..] != *s.pushed.assignments()).then(|| Push {
                    id: s.id,
                    session: s.session,
                    jobs: crate::jobset::assigned_jobs(&want),
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
    /// Its jobs ([`crate::jobset::assigned_jobs`]), for their acknowledgement status.
    jobs: Vec<(String, u64)>,
}

impl Inner {
    /// When the next round is due: `None` if nothing is stale; a job change, or a
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
            e.assigned.pushed(p.jobs, e.generation);
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
        crate::metrics::round_done(cost);
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
