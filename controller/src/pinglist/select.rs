//! Selection: which agents an endpoint list names (agent ids and selectors such as
//! `region=a,az=b`).

use std::collections::BTreeSet;

use meshlat_proto::pb;

use super::AgentView;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pinglist::test_support::*;
    use meshlat_proto::pb;

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
        let out = plan(&[&j], &agents, 10);
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
}
