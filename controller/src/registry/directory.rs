//! The agent directory and federation: the agents listed to operators, the directory this
//! controller gives its peers, and peers' directories merged in (their agents become targets and
//! their jobs are scheduled for ours until their TTL runs out).

use std::time::Duration;

use meshlat_proto::pb;
use tokio::time::Instant;

use super::error::{Problem, invalid};
use super::validate::{check_job, check_stored_agent};
use super::{DomainError, Inner, Registry, RegistryConfig, unix_ms};
use crate::limits;
use crate::pinglist::{self, AgentView};

/// Agents in the directory by state ([`Registry::agent_counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentCounts {
    /// Known here, with a session open.
    pub connected: usize,
    /// Known here (in the saved directory), without a session: scheduled as a target for
    /// `--agent-ttl` after it was last heard from, kept until `--agent-expiry`.
    pub disconnected: usize,
    /// Listed by a live federation peer's directory and not known here.
    pub peer: usize,
}

/// `control_mode` of an agent with a live session here or at a federation peer.
pub const CONNECTED: &str = "connected";
/// `control_mode` of an agent without one (it may run on its lease or statically).
pub const DISCONNECTED: &str = "disconnected";
/// The role of an agent that relays for relay jobs.
pub const RELAY_ROLE: &str = "relay";

/// An agent's roles: [`RELAY_ROLE`] when its `relay-udp` claim stands (the operator's policy
/// dropped refused claims; a peer's directory lists only its own policy's relays).
pub fn roles(a: &pb::StoredAgent) -> Vec<String> {
    if a.capabilities
        .iter()
        .any(|c| c == pinglist::RELAY_CAPABILITY)
    {
        vec![RELAY_ROLE.to_string()]
    } else {
        Vec::new()
    }
}

impl Registry {
    /// Known agents, by id, each with its `roles` (`relay` for relays) and `control_mode`
    /// (`connected` while it has a session here or a live peer lists it connected, else
    /// `disconnected`).
    ///
    /// Agents of peer controllers (federation) follow, with their controller's region.
    pub fn list_agents(&self) -> Vec<pb::AgentInfo> {
        let inner = self.lock();
        let now = Instant::now();
        let live_peers = || inner.peers.values().filter(|(_, expires)| *expires > now);
        // Agents a live peer holds a session for.
        let at_peer: std::collections::BTreeSet<&str> = live_peers()
            .flat_map(|(dir, _)| dir.directory.iter())
            .filter_map(|a| a.info.as_ref())
            .filter(|i| i.connected)
            .map(|i| i.id.as_str())
            .collect();
        let listed = |a: &pb::StoredAgent, connected: bool| {
            let mut i = a.info.clone()?;
            i.roles = roles(a);
            i.control_mode = if connected { CONNECTED } else { DISCONNECTED }.into();
            Some(i)
        };
        let mut v: Vec<pb::AgentInfo> = inner
            .agents
            .iter()
            .filter_map(|(id, e)| {
                listed(
                    &e.stored,
                    e.session.is_some() || at_peer.contains(id.as_str()),
                )
            })
            .collect();
        for (dir, _) in live_peers() {
            v.extend(
                dir.directory
                    .iter()
                    .filter(|a| {
                        a.info
                            .as_ref()
                            .is_some_and(|i| !inner.agents.contains_key(&i.id))
                    })
                    .filter_map(|a| listed(a, a.info.as_ref().is_some_and(|i| i.connected))),
            );
        }
        v
    }

    /// How many agents [`Registry::list_agents`] lists, by state (the
    /// `meshlat_controller_agents` gauge).
    pub fn agent_counts(&self) -> AgentCounts {
        let inner = self.lock();
        let now = Instant::now();
        let connected = inner
            .agents
            .values()
            .filter(|e| e.session.is_some())
            .count();
        let peer = inner
            .peers
            .values()
            .filter(|(_, expires)| *expires > now)
            .flat_map(|(dir, _)| dir.directory.iter())
            .filter_map(|a| a.info.as_ref())
            .filter(|i| !inner.agents.contains_key(&i.id))
            .count();
        AgentCounts {
            connected,
            disconnected: inner.agents.len() - connected,
            peer,
        }
    }

    /// This controller's directory for its peers: its region, live agents with their
    /// endpoints, its own running jobs (never stopped ones: a stopped job leaves the
    /// directory, and peers drop what is no longer in it at the next exchange), how its
    /// agents acknowledged the peers' jobs (`registry::status`), and its own agents' latest
    /// live summaries (at most `--max-peer-summary-pairs` pairs; never a peer's).
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
            job_status: inner.peer_job_statuses(now),
            summaries: self.live.own(now, self.cfg.limits.max_peer_summary_pairs),
        }
    }

    /// Merges a peer controller's directory: its agents become targets (and its jobs are
    /// scheduled for our agents) until `ttl` after now (the peer's `ttl_ms` if shorter); its
    /// agents' live summaries join the matrix ([`crate::live::Live::ingest_peer`]).
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
            return Err(invalid("directory.region", Problem::Empty));
        }
        if region == self.cfg.region {
            return Err(invalid("directory.region", Problem::OwnRegion { region }));
        }
        if !dir.grant_public_key.is_empty()
            && meshlat_proto::grant::GrantPublicKey::from_bytes(&dir.grant_public_key).is_err()
        {
            return Err(invalid(
                "directory.grant_public_key",
                Problem::KeyLength {
                    len: dir.grant_public_key.len(),
                    want: meshlat_proto::grant::PUBLIC_KEY_BYTES,
                },
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
        for j in &mut dir.jobs {
            // Statuses travel in `job_status`, never inside jobs (which we push to agents).
            j.agent_status.clear();
        }
        dir.jobs.retain(|j| {
            if j.stopped {
                return false;
            }
            if let Err(e) = check_job(j, &self.cfg.load_allow) {
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
        inner.accept_peer_statuses(&region, &mut dir);
        // Its agents' live summaries go to the live view, not into the kept directory.
        let summaries = std::mem::take(&mut dir.summaries);
        self.live.ingest_peer(
            &region,
            summaries,
            now,
            limits.max_peer_summary_pairs,
            |id| inner.agents.contains_key(id),
        );
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
}

impl Inner {
    /// Live local agents, then live peer agents (a local id wins).
    pub(super) fn views(&self, cfg: &RegistryConfig, now: Instant) -> Vec<AgentView> {
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
                    .any(|c| c == pinglist::RELAY_CAPABILITY),
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
    pub(super) fn grant_keys(&self, cfg: &RegistryConfig, now: Instant) -> Vec<Vec<u8>> {
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
    pub(super) fn all_jobs(&self, now: Instant) -> Vec<&pb::Job> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::test_support::*;

    #[tokio::test(start_paused = true)]
    async fn peer_directories_add_targets_and_jobs_until_their_ttl() {
        let (store, dir) = temp_store();
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

    /// Roles come from the relay policy's verdict; the control mode is `connected` with a
    /// session here, or when a live peer lists the agent connected (it moved to the peer).
    #[tokio::test(start_paused = true)]
    async fn agents_are_listed_with_roles_and_control_mode() {
        let (store, dir) = temp_store();
        let mut c = cfg();
        c.relay_policy = crate::relay_policy::RelayPolicy::parse(&["r1".into()]).expect("policy");
        let r = Registry::load(c, store).expect("load");
        let claim = |id: &str, port| {
            let mut h = hello(id, port);
            h.capabilities = vec![pinglist::RELAY_CAPABILITY.into()];
            h
        };
        let _r1 = r.connect(claim("r1", 1)).expect("r1");
        let _x1 = r.connect(claim("x1", 2)).expect("x1");
        let mut moved = hello("m1", 3);
        moved.region = "p".into();
        let m1 = r.connect(moved).expect("m1");
        r.disconnect("m1", m1.session);
        let of = |id: &str| {
            r.list_agents()
                .into_iter()
                .find(|a| a.id == id)
                .map(|a| (a.control_mode, a.roles))
                .expect("listed")
        };
        assert_eq!(of("r1"), (CONNECTED.into(), vec![RELAY_ROLE.to_string()]));
        assert_eq!(of("x1"), (CONNECTED.into(), vec![]), "refused by policy");
        assert_eq!(of("m1"), (DISCONNECTED.into(), vec![]));
        // m1 now has a session at the peer of its region.
        let info = pb::AgentInfo {
            id: "m1".into(),
            region: "p".into(),
            connected: true,
            ..Default::default()
        };
        r.merge_peer(
            pb::Directory {
                region: "p".into(),
                directory: vec![pb::StoredAgent {
                    info: Some(info),
                    ..Default::default()
                }],
                ..Default::default()
            },
            Duration::from_secs(10),
        )
        .expect("merge");
        assert_eq!(of("m1"), (CONNECTED.into(), vec![]));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(of("m1").0, DISCONNECTED, "the peer's entries expired");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(start_paused = true)]
    async fn peer_directories_are_bounded() {
        let (store, dir) = temp_store();
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
}
