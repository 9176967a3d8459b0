//! Relay targets: each (source, destination) pair of a relay job measured through every relay the
//! job names, with a grant for the destination's UDP address.

use meshlat_proto::pb;

use super::{AgentView, Signing, dst_target};

/// `relay://R/B` targets for every (destination, relay) of one source, with grants.
pub(super) fn relay_targets(
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
    use crate::pinglist::test_support::*;
    use meshlat_proto::pb;

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
        let out = plan(&[&j], &agents, 10);
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
        let out = plan(&[&j], &agents, 10);
        assert!(
            out.get("a").is_none_or(|v| v[0]
                .targets
                .iter()
                .all(|t| t.relay_agent != "a" && t.relay_agent != t.dst_agent)),
            "{out:?}"
        );
    }
}
