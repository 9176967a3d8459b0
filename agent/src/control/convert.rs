//! Assignments from the controller into the scheduler's job set.
//!
//! Each assignment becomes one scheduler [`Job`] per (protocol, agent-or-external) group, since
//! a scheduler job has one [`ProbeSpec`]. The groups of one controller job keep its id (records
//! carry it) and get distinct scheduler versions `version * 64 + group`, so a changed job
//! restarts its pairs and unchanged ones keep their cadence.
//!
//! - UDP packets are signed with `Assignment.key` (the mesh wire key the controller hands out;
//!   every agent's reflector accepts it via `JobSet.accept_keys`), or this agent's own `--key`
//!   when the controller sends none.
//! - Relay jobs' targets are `relay://R/B` with the controller's Ed25519 grant for B (96 bytes,
//!   else the job is refused, e.g. a 64-byte grant of an older controller) and the relay's identity for the record's `relay_*` fields; they run as
//!   [`Kind::Relay`]. Grants are reissued each grant epoch (DESIGN §4); a group's scheduler
//!   version folds in its grants' expiry, so new grants restart its pairs once per epoch.
//! - Targets that are agents are probed with TLS verification off for https/quic (responders use
//!   self-signed certificates by default); external URLs are verified as in `agent probe`.
//! - `duration_ms` becomes a sample count (`duration / interval`), combined with `count`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meshlat_proto::grant::{GRANT_BYTES, claimed_expiry};
use meshlat_proto::pb;
use meshlat_proto::record::Kind;

use crate::probe::{Key, ProbeSpec};
use crate::scheduler::{Job, JobSet, JobTarget, PeerInfo};
use crate::target::Target;
use crate::tls::TlsClientOptions;

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Converts a job set; returns it and the jobs refused (job id → reason) for the ack.
pub fn job_set(set: &pb::JobSet, key: &Key) -> (JobSet, BTreeMap<String, String>) {
    let mut jobs = Vec::new();
    let mut rejected = BTreeMap::new();
    for a in &set.assignments {
        let Some(job) = &a.job else { continue };
        let Some(spec) = &job.spec else {
            rejected.insert(job.id.clone(), "no spec".into());
            continue;
        };
        if let Err(e) = meshlat_proto::job::validate(spec) {
            rejected.insert(job.id.clone(), e.to_string());
            continue;
        }
        if spec.kind == pb::JobKind::Load as i32 {
            rejected.insert(
                job.id.clone(),
                "load jobs are not run by this agent yet".into(),
            );
            continue;
        }
        let relay = spec.kind == pb::JobKind::Relay as i32;
        let job_key = if a.key.is_empty() {
            key.clone()
        } else {
            match std::str::from_utf8(&a.key) {
                Ok(k) if !k.is_empty() => Key::from_secret(k),
                _ => {
                    rejected.insert(job.id.clone(), "key: not a UTF-8 key secret".into());
                    continue;
                }
            }
        };
        let mut groups: BTreeMap<(u8, bool), Vec<JobTarget>> = BTreeMap::new();
        for t in &a.targets {
            let mut target = match Target::parse(&t.target) {
                Ok(x) => x,
                Err(e) => {
                    rejected.insert(job.id.clone(), format!("{}: {e}", t.target));
                    continue;
                }
            };
            if relay != target.relay.is_some() {
                rejected.insert(
                    job.id.clone(),
                    format!(
                        "{}: relay jobs have relay:// targets, others none",
                        t.target
                    ),
                );
                continue;
            }
            if relay {
                match <[u8; GRANT_BYTES]>::try_from(t.grant.as_slice()) {
                    Ok(g) => target.grant = Some(g),
                    Err(_) => {
                        rejected.insert(
                            job.id.clone(),
                            format!(
                                "{}: grant is {} bytes, not {GRANT_BYTES}",
                                t.target,
                                t.grant.len()
                            ),
                        );
                        continue;
                    }
                }
            }
            let is_agent = !t.dst_agent.is_empty();
            groups
                .entry((target.protocol as u8, is_agent))
                .or_default()
                .push(JobTarget {
                    target,
                    dst: PeerInfo {
                        agent: opt(&t.dst_agent),
                        region: opt(&t.dst_region),
                        az: opt(&t.dst_az),
                        location: opt(&t.dst_location),
                    },
                    relay: PeerInfo {
                        agent: opt(&t.relay_agent),
                        region: opt(&t.relay_region),
                        az: opt(&t.relay_az),
                        location: opt(&t.relay_location),
                    },
                });
        }
        let interval = Duration::from_millis(spec.interval_ms.into());
        let by_duration = (spec.duration_ms > 0 && spec.interval_ms > 0)
            .then(|| (spec.duration_ms / u64::from(spec.interval_ms)).max(1));
        let count = match (spec.count, by_duration) {
            (0, d) => d,
            (c, None) => Some(c),
            (c, Some(d)) => Some(c.min(d)),
        };
        for (i, ((_, is_agent), targets)) in groups.into_iter().enumerate() {
            let protocol = targets[0].target.protocol;
            let probe = ProbeSpec {
                protocol,
                timeout: Duration::from_millis(spec.timeout_ms.into()),
                packets: if spec.packets == 0 {
                    meshlat_proto::job::DEFAULT_PACKETS
                } else {
                    spec.packets
                },
                packet_interval: if spec.packet_interval_ms == 0 {
                    ProbeSpec::default().packet_interval
                } else {
                    Duration::from_millis(spec.packet_interval_ms.into())
                },
                payload_bytes: spec.payload_bytes as usize,
                key: job_key.clone(),
                tls: TlsClientOptions {
                    skip_verify: is_agent,
                    ca_file: None,
                },
            };
            // Bits 32.. carry the grants' expiry (hours), so reissued grants restart the pairs.
            let grants_tag = targets
                .iter()
                .filter_map(|t| t.target.grant.map(|g| claimed_expiry(&g) / 3600))
                .max()
                .unwrap_or(0);
            jobs.push(Arc::new(Job {
                id: job.id.clone(),
                version: job.version.saturating_mul(64).saturating_add(i as u64)
                    ^ (grants_tag << 32),
                kind: if relay { Kind::Relay } else { Kind::Probe },
                spec: probe,
                targets,
                interval,
                count,
                spread_start: true,
            }));
        }
    }
    (
        JobSet {
            generation: set.generation,
            jobs,
        },
        rejected,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_become_jobs_per_protocol_with_identity() {
        let spec = pb::JobSpec {
            kind: pb::JobKind::Probe as i32,
            protocols: vec![pb::Protocol::Udp as i32, pb::Protocol::Tcp as i32],
            sources: vec![pb::Endpoint {
                endpoint: Some(pb::endpoint::Endpoint::Selector("region=a".into())),
            }],
            targets: vec![pb::Endpoint {
                endpoint: Some(pb::endpoint::Endpoint::Selector("region=a".into())),
            }],
            interval_ms: 1000,
            timeout_ms: 400,
            packets: 5,
            ..Default::default()
        };
        let set = pb::JobSet {
            generation: 7,
            lease_ms: 60_000,
            assignments: vec![pb::Assignment {
                job: Some(pb::Job {
                    id: "j".into(),
                    version: 2,
                    spec: Some(spec.clone()),
                    ..Default::default()
                }),
                targets: vec![
                    pb::AssignedTarget {
                        target: "udp://10.0.0.2:7710".into(),
                        dst_agent: "b".into(),
                        dst_region: "a".into(),
                        ..Default::default()
                    },
                    pb::AssignedTarget {
                        target: "tcp://10.0.0.2:7711".into(),
                        dst_agent: "b".into(),
                        ..Default::default()
                    },
                    pb::AssignedTarget {
                        target: "gopher://x".into(),
                        ..Default::default()
                    },
                ],
                key: Vec::new(),
            }],
            ..Default::default()
        };
        let (js, rejected) = job_set(&set, &Key::default_key());
        assert_eq!(js.generation, 7);
        assert_eq!(js.jobs.len(), 2, "one scheduler job per protocol");
        assert!(rejected.contains_key("j"), "bad target reported");
        let udp = js
            .jobs
            .iter()
            .find(|j| j.spec.protocol == meshlat_proto::record::Protocol::Udp)
            .expect("udp job");
        assert_eq!(udp.spec.packets, 5);
        assert_eq!(udp.interval, Duration::from_secs(1));
        assert_eq!(udp.targets[0].dst.agent.as_deref(), Some("b"));
        assert_eq!(udp.targets[0].dst.region.as_deref(), Some("a"));
        let versions: std::collections::BTreeSet<u64> = js.jobs.iter().map(|j| j.version).collect();
        assert_eq!(versions.len(), 2, "distinct scheduler versions");
    }

    #[test]
    fn relay_assignments_carry_grant_relay_identity_and_the_mesh_key() {
        use meshlat_proto::grant::GrantSigner;
        let spec = pb::JobSpec {
            kind: pb::JobKind::Relay as i32,
            protocols: vec![pb::Protocol::Udp as i32],
            sources: vec![pb::Endpoint {
                endpoint: Some(pb::endpoint::Endpoint::Selector("region=a".into())),
            }],
            targets: vec![pb::Endpoint {
                endpoint: Some(pb::endpoint::Endpoint::Selector("region=b".into())),
            }],
            relays: vec![pb::Endpoint {
                endpoint: Some(pb::endpoint::Endpoint::Selector("region=r".into())),
            }],
            interval_ms: 1000,
            timeout_ms: 400,
            ..Default::default()
        };
        let grant = |expires| {
            GrantSigner::derive_standalone(b"g")
                .sign("10.0.0.2:7710".parse().expect("addr"), expires)
                .to_vec()
        };
        let set = |expires, grant_bytes: Vec<u8>| pb::JobSet {
            generation: 3,
            lease_ms: 60_000,
            assignments: vec![pb::Assignment {
                job: Some(pb::Job {
                    id: "rj".into(),
                    version: 1,
                    spec: Some(spec.clone()),
                    ..Default::default()
                }),
                targets: vec![pb::AssignedTarget {
                    target: "relay://10.0.0.3:7710/10.0.0.2:7710".into(),
                    dst_agent: "b".into(),
                    dst_region: "b".into(),
                    relay_agent: "r".into(),
                    relay_region: "r".into(),
                    relay_address: "10.0.0.3:7710".into(),
                    grant: if grant_bytes.is_empty() {
                        grant(expires)
                    } else {
                        grant_bytes
                    },
                    ..Default::default()
                }],
                key: b"mesh-wire-key".to_vec(),
            }],
            ..Default::default()
        };
        let (js, rejected) = job_set(&set(7_200, Vec::new()), &Key::default_key());
        assert!(rejected.is_empty(), "{rejected:?}");
        let job = &js.jobs[0];
        assert_eq!(job.kind, Kind::Relay);
        assert_eq!(
            job.spec.key,
            Key::from_secret("mesh-wire-key"),
            "signed with the mesh key"
        );
        let t = &job.targets[0];
        assert_eq!(t.target.grant.map(|g| g.to_vec()), Some(grant(7_200)));
        assert_eq!(t.relay.agent.as_deref(), Some("r"));
        assert_eq!(t.relay.region.as_deref(), Some("r"));
        assert_eq!(t.dst.agent.as_deref(), Some("b"));
        // New grants (a new epoch) restart the pairs: a different scheduler version.
        let (later, _) = job_set(&set(14_400, Vec::new()), &Key::default_key());
        assert_ne!(later.jobs[0].version, job.version);
        // A grant of the wrong size refuses the job instead of probing without authorisation.
        let (bad, rejected) = job_set(&set(0, vec![1, 2, 3]), &Key::default_key());
        assert!(bad.jobs.is_empty());
        assert!(rejected["rj"].contains("grant is 3 bytes"), "{rejected:?}");
        // So does an old controller's 64-byte HMAC grant.
        let (old, rejected) = job_set(&set(0, vec![1; 64]), &Key::default_key());
        assert!(old.jobs.is_empty());
        assert!(
            rejected["rj"].contains("grant is 64 bytes, not 96"),
            "{rejected:?}"
        );
    }
}
