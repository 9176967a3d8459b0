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

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use meshlat_proto::pb;

use crate::keys::MeshKeys;

/// Default `k` of `k-random`.
pub const DEFAULT_K_RANDOM: usize = 3;
/// Default representatives per region of `per-region`.
pub const DEFAULT_PER_REGION: usize = 1;

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

/// A parsed selector: every given key must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    region: Option<String>,
    az: Option<String>,
    location: Option<String>,
    id: Option<String>,
}

impl Selector {
    /// Parses `key=value[,key=value]...` with keys `region`, `az`, `location`, `id`.
    ///
    /// # Errors
    ///
    /// A reason naming the bad key or pair.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut sel = Selector::default();
        for (k, v) in meshlat_proto::job::selector_pairs(s)? {
            let v = Some(v.to_string());
            match k {
                "region" => sel.region = v,
                "az" => sel.az = v,
                "location" => sel.location = v,
                // `selector_pairs` allows only the four keys.
                _ => sel.id = v,
            }
        }
        Ok(sel)
    }

    /// Whether `a` matches.
    pub fn matches(&self, a: &AgentView) -> bool {
        let eq = |want: &Option<String>, got: &str| want.as_deref().is_none_or(|w| w == got);
        eq(&self.region, &a.region)
            && eq(&self.az, &a.az)
            && eq(&self.location, &a.location)
            && eq(&self.id, &a.id)
    }
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

/// Agents an endpoint list names (sorted by id, deduplicated).
pub fn resolve<'a>(list: &[pb::Endpoint], agents: &'a [AgentView]) -> Vec<&'a AgentView> {
    let mut ids = BTreeSet::new();
    for e in list {
        match &e.endpoint {
            Some(pb::endpoint::Endpoint::AgentId(id)) if agents.iter().any(|a| &a.id == id) => {
                ids.insert(id.as_str());
            }
            Some(pb::endpoint::Endpoint::Selector(s)) => {
                if let Ok(sel) = Selector::parse(s) {
                    for a in agents.iter().filter(|a| sel.matches(a)) {
                        ids.insert(a.id.as_str());
                    }
                }
            }
            _ => {}
        }
    }
    agents
        .iter()
        .filter(|a| ids.contains(a.id.as_str()))
        .collect()
}

/// Number of distinct agents a `full` job would involve.
pub fn mesh_size(spec: &pb::JobSpec, agents: &[AgentView]) -> usize {
    let mut ids: BTreeSet<&str> = resolve(&spec.sources, agents)
        .iter()
        .map(|a| a.id.as_str())
        .collect();
    ids.extend(resolve(&spec.targets, agents).iter().map(|a| a.id.as_str()));
    ids.len()
}

/// Rendezvous score: a 64-bit FNV-1a over the parts, finished with a splitmix64 mix.
fn score(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    mix(h)
}

/// The splitmix64 finaliser.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The `k` targets with the highest k-random score `mix(src ^ dst)` for the source `s` (ties:
/// the lower id), `s` itself excluded. `src` is `s`'s hash as a source and `s_dst` as a target;
/// `dsts[i]` is `targets[i]`'s hash as a target, so the loop hashes no strings.
fn top_k_pairs<'a>(
    s: &AgentView,
    (src, s_dst): (u64, u64),
    targets: &[&'a AgentView],
    dsts: &[u64],
    k: usize,
) -> Vec<&'a AgentView> {
    use std::cmp::Reverse;
    // Never more than there are candidates, whatever `k` says (a k of 4294967295 once
    // allocated 137 GB here).
    let k = k.min(dsts.len());
    // A min-heap of the best `k` so far: its root is the one to beat, `floor` its score.
    let mut best: BinaryHeap<Reverse<(u64, Reverse<&str>, usize)>> =
        BinaryHeap::with_capacity(k + 1);
    let mut floor = 0;
    for (i, &dst) in dsts.iter().enumerate() {
        let score = mix(src ^ dst);
        if score < floor || (dst == s_dst && targets[i].id == s.id) {
            continue;
        }
        let key = (score, Reverse(targets[i].id.as_str()), i);
        if best.len() < k {
            best.push(Reverse(key));
        } else if best.peek().is_some_and(|Reverse(min)| key > *min) {
            best.pop();
            best.push(Reverse(key));
        } else {
            continue;
        }
        if best.len() == k {
            floor = best.peek().map_or(0, |Reverse((min, _, _))| *min);
        }
    }
    best.into_iter()
        .map(|Reverse((_, _, i))| targets[i])
        .collect()
}

/// [`top_k_pairs`] for every source, the sources split over the available cores.
fn k_random<'a>(
    job: &pb::Job,
    sources: &[&'a AgentView],
    targets: &[&'a AgentView],
    k: usize,
) -> Vec<(&'a AgentView, Vec<&'a AgentView>)> {
    let dst = |id: &str| score(&[&job.id, "dst", id]);
    let dsts: Vec<u64> = targets.iter().map(|t| dst(&t.id)).collect();
    let one = |s: &&'a AgentView| {
        let hashes = (score(&[&job.id, "src", &s.id]), dst(&s.id));
        (*s, top_k_pairs(s, hashes, targets, &dsts, k))
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Below this many pairs a thread costs more than it saves.
    if threads < 2 || sources.len().saturating_mul(targets.len()) < 1 << 20 {
        return sources.iter().map(one).collect();
    }
    let chunk = sources.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = sources
            .chunks(chunk)
            .map(|c| scope.spawn(move || c.iter().map(one).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            // A panic in a part is a bug in the loop above; surface it here.
            .flat_map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

fn top_k(mut cands: Vec<&AgentView>, k: usize, key: impl Fn(&AgentView) -> u64) -> Vec<&AgentView> {
    cands.sort_by(|a, b| key(b).cmp(&key(a)).then_with(|| a.id.cmp(&b.id)));
    cands.truncate(k);
    cands
}

/// Target agents each source of `job` measures, by source id.
fn pairs<'a>(
    job: &pb::Job,
    spec: &pb::JobSpec,
    agents: &'a [AgentView],
    max_full_mesh: usize,
) -> BTreeMap<&'a str, Vec<&'a AgentView>> {
    let sources = resolve(&spec.sources, agents);
    let targets = resolve(&spec.targets, agents);
    let mut out: BTreeMap<&str, Vec<&AgentView>> = BTreeMap::new();
    let strategy =
        pb::PinglistStrategy::try_from(spec.strategy).unwrap_or(pb::PinglistStrategy::Full);
    let others = |s: &AgentView| -> Vec<&'a AgentView> {
        targets.iter().copied().filter(|t| t.id != s.id).collect()
    };
    match strategy {
        pb::PinglistStrategy::Full | pb::PinglistStrategy::Unspecified => {
            let size = mesh_size(spec, agents);
            if size > max_full_mesh {
                tracing::warn!(
                    message = "Full-mesh job skipped: mesh larger than the configured maximum.",
                    job = %job.id,
                    size,
                    max_full_mesh
                );
                return out;
            }
            for s in &sources {
                out.insert(s.id.as_str(), others(s));
            }
        }
        pb::PinglistStrategy::KRandom => {
            let k = if spec.k == 0 {
                DEFAULT_K_RANDOM
            } else {
                spec.k as usize
            };
            // Clamped to the candidates (also in `top_k_pairs`, which allocates by it).
            let k = k.min(targets.len());
            for (s, chosen) in k_random(job, &sources, &targets, k) {
                out.insert(s.id.as_str(), chosen);
            }
        }
        pb::PinglistStrategy::PerRegion => {
            let k = if spec.k == 0 {
                DEFAULT_PER_REGION
            } else {
                spec.k as usize
            };
            let mut by_region: BTreeMap<&str, Vec<&AgentView>> = BTreeMap::new();
            for s in &sources {
                by_region.entry(s.region.as_str()).or_default().push(s);
            }
            let mut target_regions: BTreeMap<&str, Vec<&AgentView>> = BTreeMap::new();
            for t in &targets {
                target_regions.entry(t.region.as_str()).or_default().push(t);
            }
            // A target's score does not depend on the source: rank each region once, keeping
            // one spare for the representative that must skip itself.
            let ranked: Vec<Vec<&AgentView>> = target_regions
                .into_values()
                .map(|ts| top_k(ts, k.saturating_add(1), |t| score(&[&job.id, &t.id])))
                .collect();
            for (region, members) in by_region {
                for s in top_k(members, k, |a| score(&[&job.id, region, &a.id])) {
                    let mut chosen = Vec::new();
                    for ts in &ranked {
                        chosen.extend(ts.iter().copied().filter(|t| t.id != s.id).take(k));
                    }
                    out.insert(s.id.as_str(), chosen);
                }
            }
        }
    }
    // Sources that probe only external URLs still need an entry.
    for s in &sources {
        out.entry(s.id.as_str()).or_default();
    }
    out
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
        // Fields 1 (the job) and 3 (the key) of every assignment of this job.
        let mut head = Vec::new();
        prost::encoding::message::encode(1, *job, &mut head);
        let mut tail = Vec::new();
        if !wire_key.is_empty() {
            prost::encoding::bytes::encode(3, &wire_key, &mut tail);
        }
        for (src, dsts) in pairs(job, spec, agents, max_full_mesh) {
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
            let field = |len: usize| 1 + prost::encoding::encoded_len_varint(len as u64) + len;
            let len = head.len()
                + targets.iter().map(|(_, b)| field(b.len())).sum::<usize>()
                + tail.len();
            let buf = match out.get_mut(src) {
                Some(b) => b,
                None => out.entry(src.to_string()).or_default(),
            };
            buf.reserve(field(len));
            // JobSet.assignments (3), then Assignment.job (1), .targets (2), .key (3).
            prost::encoding::encode_key(3, prost::encoding::WireType::LengthDelimited, buf);
            prost::encoding::encode_varint(len as u64, buf);
            buf.extend_from_slice(&head);
            for (_, b) in &targets {
                prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, buf);
                prost::encoding::encode_varint(b.len() as u64, buf);
                buf.extend_from_slice(b);
            }
            buf.extend_from_slice(&tail);
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

/// `relay://R/B` targets for every (destination, relay) of one source, with grants.
fn relay_targets(
    job: &pb::Job,
    src: &str,
    dsts: &[&AgentView],
    relays: &[&AgentView],
    signing: &Signing<'_>,
) -> Vec<pb::AssignedTarget> {
    // Destinations: agents' advertised UDP addresses only (never an operator-given URL).
    let ends: Vec<(&str, &AgentView)> = dsts
        .iter()
        .filter_map(|d| Some((d.endpoint(pb::Protocol::Udp)?, *d)))
        .collect();
    let mut targets = Vec::new();
    for (addr, d) in ends {
        let Ok(dst) = addr.parse::<std::net::SocketAddr>() else {
            tracing::warn!(
                message = "Relay target skipped: a grant needs an IP address, not a name.",
                job = %job.id,
                target = %addr
            );
            continue;
        };
        let grant = signing.keys.sign(dst, signing.expires_unix).to_vec();
        for r in relays {
            if r.id == src || d.id == r.id {
                continue;
            }
            let Some(r_addr) = r.endpoint(pb::Protocol::Udp) else {
                continue;
            };
            let target = format!("relay://{r_addr}/{addr}");
            let mut t = dst_target(target, d);
            t.relay_agent = r.id.clone();
            t.relay_address = r_addr.to_string();
            t.relay_region = r.region.clone();
            t.relay_az = r.az.clone();
            t.relay_location = r.location.clone();
            t.grant = grant.clone();
            targets.push(t);
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, region: &str) -> AgentView {
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

    fn keys() -> MeshKeys {
        MeshKeys::new(b"test", crate::keys::test_signer(b"test"))
    }

    fn compute(
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

    fn sel(s: &str) -> pb::Endpoint {
        pb::Endpoint {
            endpoint: Some(pb::endpoint::Endpoint::Selector(s.into())),
        }
    }

    fn job(strategy: pb::PinglistStrategy, k: u32) -> pb::Job {
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

    fn pairs_of(out: &BTreeMap<String, Vec<pb::Assignment>>) -> BTreeSet<(String, String)> {
        out.iter()
            .flat_map(|(s, asg)| {
                asg.iter()
                    .flat_map(|a| a.targets.iter().map(|t| (s.clone(), t.dst_agent.clone())))
            })
            .collect()
    }

    #[test]
    fn full_mesh_pairs_everyone_but_self_with_identity_and_endpoint() {
        let agents = vec![agent("x", "a"), agent("y", "b")];
        let j = job(pb::PinglistStrategy::Full, 0);
        let out = compute(&[&j], &agents, 100);
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
        assert!(compute(&[&j], &agents, 1).is_empty(), "above the mesh size");
    }

    #[test]
    fn k_random_is_stable_and_adding_an_agent_moves_few_pairs() {
        let mut agents: Vec<AgentView> = (0..40)
            .map(|i| agent(&format!("ag{i}"), if i % 2 == 0 { "a" } else { "b" }))
            .collect();
        let j = job(pb::PinglistStrategy::KRandom, 4);
        let before = pairs_of(&compute(&[&j], &agents, 0));
        assert_eq!(before.len(), 40 * 4);
        assert_eq!(before, pairs_of(&compute(&[&j], &agents, 0)), "stable");
        agents.push(agent("newcomer", "a"));
        let after = pairs_of(&compute(&[&j], &agents, 0));
        let lost = before.difference(&after).count();
        // Each old source loses a pair only to the newcomer: expected 40 * 4/40 = 4.
        assert!(lost <= 12, "adding one agent moved {lost} of 160 pairs");
        assert!(
            after
                .difference(&before)
                .all(|(s, d)| s == "newcomer" || d == "newcomer")
        );
    }

    #[test]
    fn per_region_picks_k_representatives_per_region_pair() {
        let agents: Vec<AgentView> = (0..20)
            .map(|i| agent(&format!("ag{i}"), ["a", "b", "c"][i % 3]))
            .collect();
        let j = job(pb::PinglistStrategy::PerRegion, 1);
        let mut j = j;
        if let Some(s) = j.spec.as_mut() {
            s.sources.push(sel("region=c"));
            s.targets.push(sel("region=c"));
        }
        let out = compute(&[&j], &agents, 0);
        assert_eq!(out.len(), 3, "one representative source per region");
        for asg in out.values() {
            assert_eq!(asg[0].targets.len(), 3, "one target per region");
        }
    }

    #[test]
    fn urls_selectors_and_ids() {
        let agents = vec![agent("x", "a"), agent("y", "b")];
        let mut j = job(pb::PinglistStrategy::Full, 0);
        if let Some(s) = j.spec.as_mut() {
            s.sources = vec![pb::Endpoint {
                endpoint: Some(pb::endpoint::Endpoint::AgentId("x".into())),
            }];
            s.targets = vec![pb::Endpoint {
                endpoint: Some(pb::endpoint::Endpoint::Url("udp://10.0.0.1:9".into())),
            }];
        }
        let out = compute(&[&j], &agents, 10);
        assert_eq!(out.keys().collect::<Vec<_>>(), vec!["x"]);
        assert_eq!(out["x"][0].targets[0].target, "udp://10.0.0.1:9");
        assert!(Selector::parse("region=a,az=b").is_ok());
        assert!(Selector::parse("colour=red").is_err());
        if let Some(s) = j.spec.as_mut() {
            s.targets[0].endpoint = Some(pb::endpoint::Endpoint::Url("http://x/".into()));
        }
        let e = meshlat_proto::job::validate(j.spec.as_ref().expect("spec")).expect_err("http");
        assert_eq!(e.field, "targets[0]");
        assert!(e.to_string().contains("PROTOCOL_HTTP"), "{e}");
    }

    #[test]
    fn k_beyond_the_candidates_is_clamped_not_allocated() {
        let agents: Vec<AgentView> = (0..5).map(|i| agent(&format!("ag{i}"), "a")).collect();
        // Unvalidated (as an old version saved it): without the clamp this aborts the process
        // allocating a heap of 4294967296 entries.
        for strategy in [
            pb::PinglistStrategy::KRandom,
            pb::PinglistStrategy::PerRegion,
        ] {
            let j = job(strategy, u32::MAX);
            let out = compute(&[&j], &agents, 0);
            assert!(
                out.values().all(|a| a[0].targets.len() <= 4),
                "{strategy:?}: at most every other agent"
            );
            assert!(!out.is_empty(), "{strategy:?}");
        }
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
        let decoded = compute(&jobs, &agents, 100);
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

    #[test]
    fn relay_jobs_go_through_every_named_relay_with_grants_for_the_destination() {
        use meshlat_proto::grant::Grant;
        let ip_agent = |id: &str, region: &str, ip: &str, relay: bool| AgentView {
            endpoints: vec![pb::ResponderEndpoint {
                protocol: pb::Protocol::Udp as i32,
                address: format!("{ip}:7710"),
            }],
            relay,
            ..agent(id, region)
        };
        let agents = vec![
            ip_agent("a", "eu", "10.0.0.1", false),
            ip_agent("b", "us", "10.0.0.2", false),
            ip_agent("r", "mid", "10.0.0.3", true),
            // Named as a relay but not started with --relay: never used.
            ip_agent("q", "mid", "10.0.0.4", false),
        ];
        let mut j = job(pb::PinglistStrategy::Full, 0);
        if let Some(s) = j.spec.as_mut() {
            s.kind = pb::JobKind::Relay as i32;
            s.sources = vec![sel("region=eu")];
            s.targets = vec![
                sel("region=us"),
                pb::Endpoint {
                    endpoint: Some(pb::endpoint::Endpoint::Url("udp://192.0.2.9:862".into())),
                },
                pb::Endpoint {
                    endpoint: Some(pb::endpoint::Endpoint::Url(
                        "udp://named.example:862".into(),
                    )),
                },
            ];
            s.relays = vec![sel("region=mid")];
        }
        let out = compute(&[&j], &agents, 10);
        assert_eq!(out.keys().collect::<Vec<_>>(), vec!["a"]);
        let asg = &out["a"][0];
        assert_eq!(
            asg.key,
            keys().wire_secret(),
            "assignments carry the wire key"
        );
        let got: Vec<&str> = asg.targets.iter().map(|t| t.target.as_str()).collect();
        assert_eq!(
            got,
            vec!["relay://10.0.0.3:7710/10.0.0.2:7710"],
            "through r only; external targets (an IP or a name) are never granted"
        );
        let t = &asg.targets[0];
        assert_eq!(
            (
                t.dst_agent.as_str(),
                t.relay_agent.as_str(),
                t.relay_region.as_str()
            ),
            ("b", "r", "mid")
        );
        assert_eq!(t.relay_address, "10.0.0.3:7710");
        let relay_keys = [keys().grant_public_key()];
        let g = Grant::verify(&t.grant, &relay_keys, 9_999).expect("grant verifies at the relay");
        assert_eq!(g.dst, "10.0.0.2:7710".parse().expect("addr"));
        assert_eq!(g.expires_unix, 10_000);
        // A relay is never its own pair's source or destination.
        if let Some(s) = j.spec.as_mut() {
            s.relays = vec![sel("region=eu"), sel("region=mid")];
            s.targets = vec![sel("region=mid")];
        }
        let out = compute(&[&j], &agents, 10);
        assert!(
            out.get("a").is_none_or(|v| v[0]
                .targets
                .iter()
                .all(|t| t.relay_agent != "a" && t.relay_agent != t.dst_agent)),
            "{out:?}"
        );
    }
}
