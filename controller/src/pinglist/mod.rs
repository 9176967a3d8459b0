//! Pinglists: which agent measures what, for every job (DESIGN §3). Pure functions over the job
//! list and the agent directory, so they are unit-tested without a server.
//!
//! - Sources and targets resolve from agent ids, selectors (`region=a,az=b,location=l,id=x`) and,
//!   for targets, external URLs (probed by every source).
//! - `full`: every source probes every target agent; a job whose agents exceed the configured
//!   mesh size is refused when started and skipped (with a warning) if the mesh grows past it.
//! - `k-random`: each source probes the `k` (default [`DEFAULT_K_RANDOM`]) target agents with the
//!   highest rendezvous score `h(job, source, target)`: stable, and adding an agent moves only
//!   the pairs it wins. The score mixes a per-source and a per-target hash, so ranking every
//!   target costs a few nanoseconds each (10,000 sources × 10,000 targets well within a second).
//! - `per-region`: in each region the `k` (default [`DEFAULT_PER_REGION`]) sources with the highest
//!   `h(job, region, source)` are its representatives; each probes the `k` highest-scoring
//!   targets `h(job, target)` of every region (itself excluded).
//! - Per protocol, a target agent's advertised endpoint for that protocol becomes the probe
//!   target (`udp://host:port`, `http://host:port/ping`, ...); agents that do not advertise it
//!   are skipped for that protocol.
//! - Relay jobs pair sources and targets the same way; each pair is measured through every relay
//!   the job names that is a relay (it claims `relay-udp` and the operator's policy allows it,
//!   [`crate::relay_policy`]), other than the pair's own two agents: target
//!   `relay://R_UDP/B_UDP` with the relay's identity and a grant for B's UDP address, signed
//!   with this controller's Ed25519 grant key ([`crate::keys`]). Grants name only UDP addresses
//!   agents advertise (here or in a federation peer's directory): a relay job's external
//!   `udp://` URL targets are skipped with a warning, and so are targets whose UDP address is
//!   not an IP literal.
//! - Every assignment carries the mesh wire key its UDP packets are signed with.
//!
//! Layout: `select` resolves endpoint lists to agents ([`resolve`], [`Selector`]), `strategy`
//! pairs sources with targets, `relay` builds relay targets, and this module turns the pairs
//! into each agent's encoded assignments ([`compute_encoded`]), written by
//! [`crate::jobset::encode`].

mod relay;
mod select;
mod strategy;

pub use select::{Selector, mesh_size, resolve};
pub use strategy::{DEFAULT_K_RANDOM, DEFAULT_PER_REGION};

use std::collections::BTreeMap;

use meshlat_proto::pb;

use crate::jobset::encode::AssignmentParts;
use crate::keys::MeshKeys;
use relay::relay_targets;
use strategy::pairs;

/// One agent as the pinglist computation sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentView {
    /// Agent id.
    pub id: String,
    /// Region.
    pub region: String,
    /// Availability zone.
    pub az: String,
    /// Location label.
    pub location: String,
    /// Advertised responder endpoints.
    pub endpoints: Vec<pb::ResponderEndpoint>,
    /// Whether it relays (capability `relay-udp`).
    pub relay: bool,
}

pub use meshlat_proto::grant::RELAY_CAPABILITY;

impl AgentView {
    /// The advertised address for `p`.
    pub fn endpoint(&self, p: pb::Protocol) -> Option<&str> {
        self.endpoints
            .iter()
            .find(|e| e.protocol == p as i32)
            .map(|e| e.address.as_str())
    }
}

/// What signs relay grants in assignments.
#[derive(Clone, Copy, Debug)]
pub struct Signing<'a> {
    /// The mesh's keys.
    pub keys: &'a MeshKeys,
    /// Expiry of the grants issued now ([`crate::keys::grant_expiry`]).
    pub expires_unix: u64,
}

pub use meshlat_proto::job::url_protocol;

/// The probe target for an advertised endpoint.
pub fn endpoint_target(p: pb::Protocol, address: &str) -> Option<String> {
    Some(match p {
        pb::Protocol::Udp => format!("udp://{address}"),
        pb::Protocol::Tcp => format!("tcp://{address}"),
        pb::Protocol::Quic => format!("quic://{address}"),
        pb::Protocol::Http => format!("http://{address}/ping"),
        pb::Protocol::Https => format!("https://{address}/ping"),
        pb::Protocol::Unspecified => return None,
    })
}

/// Every agent's assignments for `jobs` (stopped jobs are ignored). Agents without work are
/// absent. Targets within an assignment are sorted, so equal inputs give equal outputs.
///
/// The struct form of [`compute_encoded`] (tests and tools; the registry keeps the bytes).
pub fn compute(
    jobs: &[&pb::Job],
    agents: &[AgentView],
    max_full_mesh: usize,
    signing: &Signing<'_>,
) -> BTreeMap<String, Vec<pb::Assignment>> {
    use prost::Message;
    compute_encoded(jobs, agents, max_full_mesh, signing)
        .into_iter()
        .map(|(id, b)| {
            let set = pb::JobSet::decode(&b[..]).unwrap_or_default();
            (id, set.assignments)
        })
        .collect()
}

/// [`compute`], with each agent's assignments encoded as the `assignments` fields of a
/// `JobSet` (what [`crate::jobset::PushedSet`] sends), byte for byte what prost would encode.
///
/// Built without the struct form: each job and each (agent, protocol) target is encoded once,
/// and an agent's assignment copies those bytes, instead of cloning the job's spec and five
/// strings per target for each of 10,000 agents and encoding them all again.
/// [`crate::jobset::encode`] writes the assignments around them.
pub fn compute_encoded(
    jobs: &[&pb::Job],
    agents: &[AgentView],
    max_full_mesh: usize,
    signing: &Signing<'_>,
) -> BTreeMap<String, Vec<u8>> {
    use prost::Message;
    let mut out: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let wire_key = signing.keys.wire_secret();
    let live: Vec<&&pb::Job> = jobs.iter().filter(|j| !j.stopped).collect();
    // Every agent's probe target for each protocol a probe job uses, encoded.
    let mut protocols: Vec<pb::Protocol> = live
        .iter()
        .filter_map(|j| j.spec.as_ref())
        .filter(|s| s.kind != pb::JobKind::Relay as i32)
        .flat_map(|s| s.protocols.iter())
        .filter_map(|p| pb::Protocol::try_from(*p).ok())
        .collect();
    protocols.sort_unstable();
    protocols.dedup();
    let probes = ProbeTargets::new(agents, &protocols);
    for job in live {
        let Some(spec) = &job.spec else { continue };
        let urls: Vec<&str> = spec
            .targets
            .iter()
            .filter_map(|e| match &e.endpoint {
                Some(pb::endpoint::Endpoint::Url(u)) => Some(u.as_str()),
                _ => None,
            })
            .collect();
        let relay = spec.kind == pb::JobKind::Relay as i32;
        if relay && !urls.is_empty() {
            tracing::warn!(
                message = "Relay job's URL targets skipped: grants name only addresses agents advertise.",
                job = %job.id,
                urls = urls.len()
            );
        }
        let relays: Vec<&AgentView> = if relay {
            resolve(&spec.relays, agents)
                .into_iter()
                .filter(|r| r.relay && r.endpoint(pb::Protocol::Udp).is_some())
                .collect()
        } else {
            Vec::new()
        };
        let spec_protocols: Vec<pb::Protocol> = spec
            .protocols
            .iter()
            .filter_map(|p| pb::Protocol::try_from(*p).ok())
            .collect();
        // URL targets, the same for every source: (protocol, target, encoded).
        let url_targets: Vec<(pb::Protocol, &str, Vec<u8>)> = urls
            .iter()
            .filter_map(|u| {
                let t = pb::AssignedTarget {
                    target: (*u).to_string(),
                    ..Default::default()
                };
                Some((url_protocol(u)?, *u, t.encode_to_vec()))
            })
            .collect();
        // The job and the key, shared by every assignment of this job.
        let pairs = pairs(job, spec, agents, max_full_mesh);
        // A load job's shared rate is divided over every source agent of the mesh that it
        // resolves to (a peer's included: each controller sees the same directory).
        let load_share = match &spec.load {
            Some(l) if spec.kind == pb::JobKind::Load as i32 && l.rate_per_job => {
                u32::try_from(pairs.len()).unwrap_or(u32::MAX)
            }
            _ => 0,
        };
        let parts = AssignmentParts::new(job, &wire_key, load_share);
        for (src, dsts) in pairs {
            let owned: Vec<EncodedTarget> = if relay {
                relay_targets(job, src, &dsts, &relays, signing)
                    .into_iter()
                    .map(|t| {
                        let b = t.encode_to_vec();
                        (t.target, b)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let mut targets: Vec<(&str, &[u8])> =
                owned.iter().map(|(t, b)| (t.as_str(), &b[..])).collect();
            if !relay {
                for p in &spec_protocols {
                    targets.extend(dsts.iter().filter_map(|d| probes.get(*p, d)));
                    targets.extend(
                        url_targets
                            .iter()
                            .filter(|(up, _, _)| up == p)
                            .map(|(_, t, b)| (*t, &b[..])),
                    );
                }
            }
            if targets.is_empty() {
                continue;
            }
            // Stable: of equal targets the first (an agent's, with its identity) stays.
            targets.sort_by(|a, b| a.0.cmp(b.0));
            targets.dedup_by(|a, b| a.0 == b.0);
            let buf = match out.get_mut(src) {
                Some(b) => b,
                None => out.entry(src.to_string()).or_default(),
            };
            parts.append(targets.iter().map(|(_, b)| *b), buf);
        }
    }
    out
}

/// A target string and its encoded `AssignedTarget`.
type EncodedTarget = (String, Vec<u8>);

/// Every agent's probe target (`proto://address`, with its identity) per protocol, encoded
/// once per computation.
struct ProbeTargets<'a> {
    agents: &'a [AgentView],
    /// By protocol: each agent's target, if it has an endpoint for the protocol.
    by_protocol: Vec<(pb::Protocol, Vec<Option<EncodedTarget>>)>,
}

impl<'a> ProbeTargets<'a> {
    fn new(agents: &'a [AgentView], protocols: &[pb::Protocol]) -> Self {
        use prost::Message;
        let by_protocol = protocols
            .iter()
            .map(|&p| {
                let encoded = agents
                    .iter()
                    .map(|d| {
                        let t = dst_target(endpoint_target(p, d.endpoint(p)?)?, d);
                        let b = t.encode_to_vec();
                        Some((t.target, b))
                    })
                    .collect();
                (p, encoded)
            })
            .collect();
        ProbeTargets {
            agents,
            by_protocol,
        }
    }

    /// `d`'s target for `p`, if it has a `p` endpoint (`d` is one of the agents).
    fn get(&self, p: pb::Protocol, d: &AgentView) -> Option<(&str, &[u8])> {
        // `d` is a reference into `agents` (selectors resolve to them): its index by address.
        let size = std::mem::size_of::<AgentView>().max(1);
        let off = (d as *const AgentView as usize).checked_sub(self.agents.as_ptr() as usize)?;
        let i = off / size;
        if off % size != 0 || !self.agents.get(i).is_some_and(|a| std::ptr::eq(a, d)) {
            return None;
        }
        let (_, encoded) = self.by_protocol.iter().find(|(q, _)| *q == p)?;
        encoded[i].as_ref().map(|(t, b)| (t.as_str(), &b[..]))
    }
}

fn dst_target(target: String, d: &AgentView) -> pb::AssignedTarget {
    pb::AssignedTarget {
        target,
        dst_agent: d.id.clone(),
        dst_region: d.region.clone(),
        dst_az: d.az.clone(),
        dst_location: d.location.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod test_support {
    use std::collections::{BTreeMap, BTreeSet};

    use meshlat_proto::pb;

    use super::{AgentView, Signing};
    use crate::keys::MeshKeys;

    pub(super) fn agent(id: &str, region: &str) -> AgentView {
        AgentView {
            id: id.into(),
            region: region.into(),
            az: format!("{region}a"),
            location: String::new(),
            endpoints: vec![pb::ResponderEndpoint {
                protocol: pb::Protocol::Udp as i32,
                address: format!("{id}.host:7710"),
            }],
            relay: false,
        }
    }

    pub(super) fn keys() -> MeshKeys {
        MeshKeys::new(b"test", crate::keys::test_signer(b"test"))
    }

    pub(super) fn plan(
        jobs: &[&pb::Job],
        agents: &[AgentView],
        max_full_mesh: usize,
    ) -> BTreeMap<String, Vec<pb::Assignment>> {
        let k = keys();
        let signing = Signing {
            keys: &k,
            expires_unix: 10_000,
        };
        super::compute(jobs, agents, max_full_mesh, &signing)
    }

    pub(super) fn sel(s: &str) -> pb::Endpoint {
        pb::Endpoint {
            endpoint: Some(pb::endpoint::Endpoint::Selector(s.into())),
        }
    }

    pub(super) fn job(strategy: pb::PinglistStrategy, k: u32) -> pb::Job {
        pb::Job {
            id: "job-1".into(),
            version: 1,
            spec: Some(pb::JobSpec {
                kind: pb::JobKind::Probe as i32,
                protocols: vec![pb::Protocol::Udp as i32],
                sources: vec![sel("region=a"), sel("region=b")],
                targets: vec![sel("region=a"), sel("region=b")],
                interval_ms: 1000,
                timeout_ms: 500,
                strategy: strategy as i32,
                k,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub(super) fn pairs_of(
        out: &BTreeMap<String, Vec<pb::Assignment>>,
    ) -> BTreeSet<(String, String)> {
        out.iter()
            .flat_map(|(s, asg)| {
                asg.iter()
                    .flat_map(|a| a.targets.iter().map(|t| (s.clone(), t.dst_agent.clone())))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pinglist::test_support::*;

    #[test]
    fn full_mesh_pairs_everyone_but_self_with_identity_and_endpoint() {
        let agents = vec![agent("x", "a"), agent("y", "b")];
        let j = job(pb::PinglistStrategy::Full, 0);
        let out = plan(&[&j], &agents, 100);
        let x = &out["x"][0].targets[0];
        assert_eq!(
            (
                x.target.as_str(),
                x.dst_agent.as_str(),
                x.dst_region.as_str()
            ),
            ("udp://y.host:7710", "y", "b")
        );
        assert_eq!(pairs_of(&out).len(), 2);
        assert!(plan(&[&j], &agents, 1).is_empty(), "above the mesh size");
    }

    #[test]
    fn a_shared_load_rate_names_every_source_of_the_mesh() {
        let agents: Vec<AgentView> = (0..5)
            .map(|i| agent(&format!("ag{i}"), if i < 3 { "a" } else { "b" }))
            .collect();
        let mut load = job(pb::PinglistStrategy::Full, 0);
        load.id = "load".into();
        if let Some(s) = load.spec.as_mut() {
            s.kind = pb::JobKind::Load as i32;
            s.protocols = vec![pb::Protocol::Http as i32];
            s.targets = vec![pb::Endpoint {
                endpoint: Some(pb::endpoint::Endpoint::Url("http://127.0.0.1:9/".into())),
            }];
            s.load = Some(pb::LoadSpec {
                model: pb::LoadModel::Open as i32,
                start: 100.0,
                rate_per_job: true,
                ..Default::default()
            });
        }
        let out = plan(&[&load], &agents, 100);
        assert_eq!(out.len(), 5, "every source gets the job");
        for a in out.values().flatten() {
            assert_eq!(a.load_share_agents, 5);
            assert_eq!(a.targets[0].target, "http://127.0.0.1:9/");
        }
        // Per agent: no share; a probe job: none either.
        if let Some(l) = load.spec.as_mut().and_then(|s| s.load.as_mut()) {
            l.rate_per_job = false;
        }
        let probe = job(pb::PinglistStrategy::Full, 0);
        let out = plan(&[&load, &probe], &agents, 100);
        assert!(out.values().flatten().all(|a| a.load_share_agents == 0));
    }

    #[test]
    fn encoded_plans_are_what_prost_encodes_and_agent_targets_win_over_equal_urls() {
        let mut agents: Vec<AgentView> = (0..12)
            .map(|i| agent(&format!("ag{i}"), if i % 3 == 0 { "a" } else { "b" }))
            .collect();
        agents[4].relay = true;
        agents[4].endpoints[0].address = "10.0.0.4:7710".into();
        agents[5].endpoints[0].address = "10.0.0.5:7710".into();
        let mut probe = job(pb::PinglistStrategy::KRandom, 4);
        if let Some(s) = probe.spec.as_mut() {
            s.protocols.push(pb::Protocol::Tcp as i32);
            // The same address as ag5's endpoint, and another.
            s.targets.push(pb::Endpoint {
                endpoint: Some(pb::endpoint::Endpoint::Url("udp://10.0.0.5:7710".into())),
            });
            s.targets.push(pb::Endpoint {
                endpoint: Some(pb::endpoint::Endpoint::Url("tcp://10.9.9.9:1".into())),
            });
        }
        let mut relay = job(pb::PinglistStrategy::PerRegion, 1);
        relay.id = "job-relay".into();
        if let Some(s) = relay.spec.as_mut() {
            s.kind = pb::JobKind::Relay as i32;
            s.relays = vec![pb::Endpoint {
                endpoint: Some(pb::endpoint::Endpoint::AgentId("ag4".into())),
            }];
        }
        let k = keys();
        let signing = Signing {
            keys: &k,
            expires_unix: 10_000,
        };
        let jobs = [&probe, &relay];
        let encoded = compute_encoded(&jobs, &agents, 100, &signing);
        let decoded = plan(&jobs, &agents, 100);
        assert_eq!(encoded.len(), decoded.len());
        assert!(encoded.len() >= 10, "most agents have work");
        for (id, bytes) in &encoded {
            let again = crate::jobset::encode_assignments(decoded[id].clone());
            assert_eq!(
                &again[..],
                &bytes[..],
                "{id}: prost encodes the decoded plan the same"
            );
        }
        // A URL equal to an agent's endpoint is that agent's target, with its identity.
        let mut picked = 0;
        for a in decoded.values().flatten() {
            if a.job.as_ref().is_some_and(|j| j.id == "job-1") {
                let same: Vec<_> = a
                    .targets
                    .iter()
                    .filter(|t| t.target == "udp://10.0.0.5:7710")
                    .collect();
                assert_eq!(same.len(), 1, "deduplicated");
                picked += usize::from(same[0].dst_agent == "ag5");
            }
        }
        assert!(picked > 0, "some source measures ag5 as an agent");
        let with_url = decoded["ag0"]
            .iter()
            .find(|a| a.job.as_ref().is_some_and(|j| j.id == "job-1"))
            .expect("ag0 probes");
        assert!(
            with_url
                .targets
                .iter()
                .any(|t| t.target == "tcp://10.9.9.9:1" && t.dst_agent.is_empty())
        );
        assert!(
            with_url
                .targets
                .windows(2)
                .all(|w| w[0].target < w[1].target),
            "sorted, no duplicates"
        );
    }
}
