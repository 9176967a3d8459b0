//! Agent sessions: connecting (with the caps and the relay policy), heartbeats,
//! acknowledgements and disconnecting.

use std::sync::Arc;

use meshlat_proto::pb;
use tokio::sync::watch;
use tokio::time::Instant;

use super::error::{Problem, invalid};
use super::validate::check_hello;
use super::{AgentEntry, DomainError, Registry, unix_ms};
use crate::jobset::PushedSet;
use crate::relay_policy::RelayDecision;

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

impl Registry {
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
            return Err(invalid(
                "hello.agent_id",
                Problem::Rule("at most 128 printable characters"),
            )
            .into());
        }
        if hello.region.trim().is_empty() {
            return Err(invalid("hello.region", Problem::Empty).into());
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
            // Filled when listed (Registry::list_agents), never stored.
            roles: Vec::new(),
            control_mode: String::new(),
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
                // Force a push on the new session; its acknowledgements start over.
                e.generation = 0;
                e.assigned = Default::default();
                e.last_ack = None;
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
                        assigned: Default::default(),
                        last_ack: None,
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

    /// Notes a job-set acknowledgement.
    pub fn acked(&self, agent_id: &str, session: u64, ack: &pb::JobAck) {
        let mut inner = self.lock();
        if let Some(e) = inner.agents.get_mut(agent_id)
            && e.session.as_ref().is_some_and(|(s, _)| *s == session)
        {
            e.acked = ack.generation;
            e.last_ack = Some(super::status::LastAck::new(ack, &e.assigned));
            e.last_heard = Instant::now();
            crate::metrics::job_ack(!ack.rejected.is_empty());
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

    /// The generation an agent last acknowledged (tests and diagnostics).
    pub fn acked_generation(&self, agent_id: &str) -> Option<u64> {
        self.lock().agents.get(agent_id).map(|e| e.acked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pinglist;
    use crate::registry::test_support::*;
    use crate::relay_policy::RelayPolicy;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    /// The join-token attack of issue 10: an agent claiming `relay-udp` is a relay only by the
    /// operator's policy; a refused one is told why and gets no grant keys; an allowed relay gets
    /// public keys only (ours, then also a federation peer's, until that peer's TTL runs out) and
    /// never the retired HMAC grant key.
    #[tokio::test(start_paused = true)]
    async fn relay_role_comes_from_policy_and_relays_get_only_public_keys() {
        let (store, dir) = temp_store();
        let mut c = cfg();
        c.relay_policy = RelayPolicy::parse(&["relay-ok".into()]).expect("policy");
        let own_key = c.keys.grant_public_key().as_bytes().to_vec();
        let r = Arc::new(Registry::load(c, store.clone()).expect("load"));
        let stop = CancellationToken::new();
        tokio::spawn(r.clone().run_rounds(stop.clone()));
        let claim = |id: &str, port| {
            let mut h = hello(id, port);
            h.capabilities = vec!["udp".into(), pinglist::RELAY_CAPABILITY.into()];
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
                .any(|c| c == pinglist::RELAY_CAPABILITY)
        );
        assert!(
            !caps("intruder")
                .iter()
                .any(|c| c == pinglist::RELAY_CAPABILITY)
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
                .any(|c| c == pinglist::RELAY_CAPABILITY)),
            "{d:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
