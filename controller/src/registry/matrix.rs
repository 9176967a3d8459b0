//! The live view: agents' rolling summaries kept in [`crate::live`], and the latency matrix built
//! from them.

use std::collections::BTreeMap;

use meshlat_proto::pb;
use tokio::time::Instant;

use super::error::{Problem, invalid};
use super::{DomainError, Registry, unix_ms};
use crate::live::By;

/// Which regions' pairs a matrix covers: a source region, a destination region, or both
/// (empty: any).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RegionFilter {
    /// Only pairs whose source agent is in this region.
    pub src_region: Option<String>,
    /// Only pairs whose destination is in this region.
    pub dst_region: Option<String>,
}

impl RegionFilter {
    /// Whether the filter lets every pair through.
    pub fn is_empty(&self) -> bool {
        self.src_region.is_none() && self.dst_region.is_none()
    }

    /// Whether a pair from `src` to `dst` (regions) passes.
    pub fn admits(&self, src: &str, dst: &str) -> bool {
        self.src_region.as_deref().is_none_or(|r| r == src)
            && self.dst_region.as_deref().is_none_or(|r| r == dst)
    }
}

impl Registry {
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
        self.matrix_within(by, protocol, &RegionFilter::default())
    }

    /// [`Registry::matrix`] of the pairs whose source and destination regions pass `filter`:
    /// the dashboard's agent × agent view of one region pair in a large mesh.
    ///
    /// # Errors
    ///
    /// [`DomainError::Invalid`] for an unknown `by` or protocol.
    pub fn matrix_within(
        &self,
        by: &str,
        protocol: &str,
        filter: &RegionFilter,
    ) -> Result<pb::Matrix, DomainError> {
        let by =
            By::parse(by).ok_or_else(|| invalid("by", Problem::Rule("must be agent or region")))?;
        let protocol = protocol.trim();
        if !protocol.is_empty() && !matches!(protocol, "udp" | "tcp" | "quic" | "http" | "https") {
            return Err(invalid(
                "protocol",
                Problem::Rule("must be one of udp, tcp, quic, http, https"),
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
        let cells = self.live.matrix_where(
            Instant::now(),
            &regions,
            by,
            (!protocol.is_empty()).then_some(protocol),
            |src, dst| filter.admits(src, dst),
        );
        Ok(pb::Matrix {
            cells,
            unix_ms: unix_ms(),
        })
    }
}
