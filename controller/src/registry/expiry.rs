//! The periodic sweep: liveness re-evaluated, and stopped jobs, silent agents, peer directories and
//! live summaries expired.

use meshlat_proto::pb;
use tokio::time::Instant;

use super::{Inner, Registry, unix_ms};

impl Registry {
    /// Re-evaluates liveness (agents whose TTL ran out stop being scheduled), expires what
    /// outlived its time, and prunes the live summaries. Call periodically (every
    /// [`crate::app::SWEEP_INTERVAL`]).
    ///
    /// - Stopped jobs older than `--stopped-job-ttl` (since their stop) are deleted.
    /// - Disconnected agents not heard from for `--agent-expiry` are removed from the directory,
    ///   the live summaries (the matrix) and the saved state.
    /// - Summaries older than [`SUMMARY_TTL`](crate::live::SUMMARY_TTL) are dropped, whether or
    ///   not anyone reads the matrix.
    /// - Load views of jobs gone, or not heard from for
    ///   [`JOB_TTL`](crate::loadlive::JOB_TTL), are dropped.
    ///
    /// Reschedules only if a peer directory or a disconnected agent's TTL ran out since the last
    /// round, something was removed, or a new grant epoch started, not on every call.
    pub fn sweep(&self) {
        self.prune_load();
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
                self.live.remove_peer(region);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits;
    use crate::registry::DomainError;
    use crate::registry::test_support::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn caps_refuse_with_the_flag_and_expiry_removes_agents_and_jobs() {
        let (store, dir) = temp_store();
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
}
