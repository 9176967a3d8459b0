//! Which agents are relays: an operator decision (`--relay-agent`), never the agent's own claim.
//!
//! An agent started with `--relay` announces the `relay-udp` capability in its Hello. The
//! controller makes it a relay only if it also matches one of the operator's `--relay-agent`
//! entries — an agent id, or a selector `key=value[,key=value]` over `region`, `az`,
//! `location` and `id` (all given keys must match). Without any entry no agent is a relay.
//!
//! An agent that claims the capability without matching is used as an ordinary agent: the
//! capability is dropped from its directory entry (so no job routes through it, and federation
//! peers, which take a controller's word for its own agents, do not see it as a relay either),
//! its job sets carry no grant keys, the controller logs why, and the agent is told in its
//! `Welcome.relay_refused` (it logs it).
//!
//! What the role gives: traffic to forward, and the grant *public* keys to check it with. No
//! agent ever receives key material it can sign grants with ([`crate::keys`]), so the policy
//! decides where relayed measurements go, not who can open a relay. Selectors match what the
//! agent states in its Hello (region, zone, location); ids are as strong as agent identity
//! (per-agent credentials, when present, make them proven).

use meshlat_proto::grant::RELAY_CAPABILITY;

use crate::pinglist::{AgentView, Selector};

/// One `--relay-agent` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Rule {
    /// An agent id.
    Id(String),
    /// A selector.
    Selector(Selector),
}

/// The operator's relay allowlist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayPolicy {
    rules: Vec<Rule>,
}

/// The policy's answer for one agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayDecision {
    /// It did not claim `relay-udp`: an ordinary agent.
    NotClaimed,
    /// It claimed `relay-udp` and the policy allows it: a relay.
    Relay,
    /// It claimed `relay-udp` but the policy does not allow it: why.
    Refused(String),
}

impl RelayPolicy {
    /// Parses `--relay-agent` values: each an agent id or a selector (contains `=`).
    ///
    /// # Errors
    ///
    /// The bad value and why (an unknown selector key, an empty or malformed selector).
    pub fn parse(values: &[String]) -> Result<Self, (String, String)> {
        let mut rules = Vec::new();
        for v in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
            if v.contains('=') {
                let s = Selector::parse(v).map_err(|reason| (v.to_string(), reason))?;
                rules.push(Rule::Selector(s));
            } else if v
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == ',')
            {
                return Err((
                    v.to_string(),
                    "an agent id has no spaces or commas (or use key=value selectors)".into(),
                ));
            } else {
                rules.push(Rule::Id(v.to_string()));
            }
        }
        Ok(RelayPolicy { rules })
    }

    /// Whether the policy names no agent (then nothing is a relay).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `a` may be a relay.
    pub fn allows(&self, a: &AgentView) -> bool {
        self.rules.iter().any(|r| match r {
            Rule::Id(id) => *id == a.id,
            Rule::Selector(s) => s.matches(a),
        })
    }

    /// The decision for an agent with `capabilities`.
    pub fn decide(&self, a: &AgentView, capabilities: &[String]) -> RelayDecision {
        if !capabilities.iter().any(|c| c == RELAY_CAPABILITY) {
            RelayDecision::NotClaimed
        } else if self.allows(a) {
            RelayDecision::Relay
        } else if self.is_empty() {
            RelayDecision::Refused(
                "this controller has no relay policy (controller --relay-agent): no agent is a relay"
                    .into(),
            )
        } else {
            RelayDecision::Refused(format!(
                "agent {:?} (region {:?}, az {:?}, location {:?}) matches no --relay-agent entry",
                a.id, a.region, a.az, a.location
            ))
        }
    }

    /// Applies the decision to a stored agent: drops `relay-udp` from its capabilities unless
    /// it is allowed. Returns the decision.
    pub fn enforce(&self, agent: &mut meshlat_proto::pb::StoredAgent) -> RelayDecision {
        let view = match &agent.info {
            Some(i) => AgentView {
                id: i.id.clone(),
                region: i.region.clone(),
                az: i.az.clone(),
                location: i.location.clone(),
                ..Default::default()
            },
            None => AgentView::default(),
        };
        let d = self.decide(&view, &agent.capabilities);
        if matches!(d, RelayDecision::Refused(_)) {
            agent.capabilities.retain(|c| c != RELAY_CAPABILITY);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshlat_proto::pb;

    fn stored(id: &str, region: &str, caps: &[&str]) -> pb::StoredAgent {
        pb::StoredAgent {
            info: Some(pb::AgentInfo {
                id: id.into(),
                region: region.into(),
                az: format!("{region}a"),
                ..Default::default()
            }),
            endpoints: vec![],
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_claimed_and_allowed_agents_are_relays() {
        let p = RelayPolicy::parse(&["relay-7".into(), "region=eu,az=eua".into()])
            .expect("valid policy");
        let mut a = stored("relay-7", "us", &["udp", RELAY_CAPABILITY]);
        assert_eq!(p.enforce(&mut a), RelayDecision::Relay);
        assert!(a.capabilities.iter().any(|c| c == RELAY_CAPABILITY));
        let mut b = stored("x", "eu", &["udp", RELAY_CAPABILITY]);
        assert_eq!(p.enforce(&mut b), RelayDecision::Relay, "by selector");
        // Claimed, not allowed: the capability is dropped and the reason names the agent.
        let mut c = stored("intruder", "us", &["udp", RELAY_CAPABILITY]);
        match p.enforce(&mut c) {
            RelayDecision::Refused(why) => assert!(why.contains("intruder"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.capabilities, vec!["udp".to_string()]);
        // Allowed but not claimed: not a relay (it has no relay running).
        let mut d = stored("relay-7", "eu", &["udp"]);
        assert_eq!(p.enforce(&mut d), RelayDecision::NotClaimed);
        // No policy: nothing is a relay.
        let none = RelayPolicy::default();
        let mut e = stored("relay-7", "eu", &[RELAY_CAPABILITY]);
        assert!(matches!(none.enforce(&mut e), RelayDecision::Refused(_)));
        assert!(e.capabilities.is_empty());
    }

    #[test]
    fn bad_entries_are_refused_with_the_value() {
        let (v, why) = RelayPolicy::parse(&["colour=red".into()]).expect_err("unknown key");
        assert_eq!(v, "colour=red");
        assert!(why.contains("unknown selector key"), "{why}");
        assert!(RelayPolicy::parse(&["a b".into()]).is_err());
        assert!(
            RelayPolicy::parse(&["  ".into()])
                .expect("blank")
                .is_empty()
        );
    }
}
