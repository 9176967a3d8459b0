//! The JSON form of jobs and agents, shared by the REST API and the `controller job` CLI.
//!
//! A job spec in JSON (snake_case, the fields of `JobSpec` in `proto/meshlat/v1/job.proto`):
//!
//! ```json
//! {"name": "mesh", "kind": "probe", "protocols": ["udp", "tcp"],
//!  "sources": ["region=eu-west-1"], "targets": ["region=eu-west-1", "https://example.com/"],
//!  "interval_ms": 1000, "timeout_ms": 500, "strategy": "k-random", "k": 3}
//! ```
//!
//! Endpoints are strings: `proto://...` is an external URL, `key=value[,...]` a selector, anything
//! else an agent id. `kind` defaults to `probe`, `strategy` to `full`; numbers default to 0.
//! Unknown fields and wrong types are refused with the field path.
//!
//! A load job (`"kind": "load"`) has a `load` object with `LoadSpec`'s fields; `model` is
//! `closed` or `open`, `credentials` an object of `file`, `secrets_manager_arn` and `header`,
//! each request of `requests` an object of `LoadRequest`'s fields:
//!
//! ```json
//! {"name": "ramp", "kind": "load", "protocols": ["https"], "sources": ["region=eu-west-1"],
//!  "targets": ["https://api.example.com/"], "timeout_ms": 2000, "duration_ms": 50000,
//!  "load": {"model": "closed", "start": 10, "step": 10, "steps": 5, "step_duration_ms": 10000,
//!           "requests": [{"method": "GET", "path": "/items", "weight": 3}],
//!           "credentials": {"file": "/etc/meshlat/keys", "header": "X-Api-Key"}}}
//! ```

use meshlat_proto::pb;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// A JSON field that could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct JsonError {
    /// Field path (`.` for the whole document).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> JsonError {
    JsonError {
        field: field.into(),
        reason: reason.into(),
    }
}

const SPEC_FIELDS: &[&str] = &[
    "name",
    "kind",
    "protocols",
    "sources",
    "targets",
    "relays",
    "interval_ms",
    "timeout_ms",
    "payload_bytes",
    "packets",
    "packet_interval_ms",
    "count",
    "duration_ms",
    "strategy",
    "k",
    "load",
];

/// `LoadSpec` in JSON: every field optional (0, empty or false), unknown ones refused.
#[derive(Debug, Default, serde::Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct LoadJson {
    model: String,
    start: f64,
    step: f64,
    steps: u32,
    step_duration_ms: u32,
    rate_per_job: bool,
    think_time_ms: u32,
    max_connections: u32,
    max_rate: f64,
    scenario: String,
    knobs: std::collections::BTreeMap<String, String>,
    requests: Vec<LoadRequestJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credentials: Option<CredentialsJson>,
}

/// `LoadRequest` in JSON.
#[derive(Debug, Default, serde::Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct LoadRequestJson {
    method: String,
    path: String,
    headers: std::collections::BTreeMap<String, String>,
    body: String,
    weight: u32,
    expect_status: u32,
    label: String,
}

/// `LoadCredentials` in JSON: references only, never secrets.
#[derive(Debug, Default, serde::Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct CredentialsJson {
    file: String,
    secrets_manager_arn: String,
    header: String,
}

fn load_from_value(v: &Value) -> Result<pb::LoadSpec, JsonError> {
    let l: LoadJson = serde_json::from_value(v.clone()).map_err(|e| err("load", e.to_string()))?;
    let model = match l.model.as_str() {
        "closed" => pb::LoadModel::Closed,
        "open" => pb::LoadModel::Open,
        "" => pb::LoadModel::Unspecified,
        other => {
            return Err(err(
                "load.model",
                format!(
                    "{:?}: use closed (workers) or open (arrival rate)",
                    other.chars().take(32).collect::<String>()
                ),
            ));
        }
    };
    Ok(pb::LoadSpec {
        model: model as i32,
        start: l.start,
        step: l.step,
        steps: l.steps,
        step_duration_ms: l.step_duration_ms,
        rate_per_job: l.rate_per_job,
        think_time_ms: l.think_time_ms,
        max_connections: l.max_connections,
        max_rate: l.max_rate,
        scenario: l.scenario,
        knobs: l.knobs.into_iter().collect(),
        requests: l
            .requests
            .into_iter()
            .map(|r| pb::LoadRequest {
                method: r.method,
                path: r.path,
                headers: r.headers.into_iter().collect(),
                body: r.body,
                weight: r.weight,
                expect_status: r.expect_status,
                label: r.label,
            })
            .collect(),
        credentials: l.credentials.map(|c| pb::LoadCredentials {
            file: c.file,
            secrets_manager_arn: c.secrets_manager_arn,
            header: c.header,
        }),
    })
}

fn load_to_value(l: &pb::LoadSpec) -> Value {
    let model = match pb::LoadModel::try_from(l.model) {
        Ok(pb::LoadModel::Closed) => "closed",
        Ok(pb::LoadModel::Open) => "open",
        _ => "unspecified",
    };
    serde_json::to_value(LoadJson {
        model: model.into(),
        start: l.start,
        step: l.step,
        steps: l.steps,
        step_duration_ms: l.step_duration_ms,
        rate_per_job: l.rate_per_job,
        think_time_ms: l.think_time_ms,
        max_connections: l.max_connections,
        max_rate: l.max_rate,
        scenario: l.scenario.clone(),
        knobs: l.knobs.clone().into_iter().collect(),
        requests: l
            .requests
            .iter()
            .map(|r| LoadRequestJson {
                method: r.method.clone(),
                path: r.path.clone(),
                headers: r.headers.clone().into_iter().collect(),
                body: r.body.clone(),
                weight: r.weight,
                expect_status: r.expect_status,
                label: r.label.clone(),
            })
            .collect(),
        credentials: l.credentials.as_ref().map(|c| CredentialsJson {
            file: c.file.clone(),
            secrets_manager_arn: c.secrets_manager_arn.clone(),
            header: c.header.clone(),
        }),
    })
    .unwrap_or(Value::Null)
}

fn get<T: DeserializeOwned + Default>(
    obj: &Map<String, Value>,
    name: &str,
) -> Result<T, JsonError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| err(name, e.to_string())),
    }
}

/// Protocol names in JSON.
pub fn protocol_name(p: i32) -> &'static str {
    match pb::Protocol::try_from(p) {
        Ok(pb::Protocol::Udp) => "udp",
        Ok(pb::Protocol::Tcp) => "tcp",
        Ok(pb::Protocol::Quic) => "quic",
        Ok(pb::Protocol::Http) => "http",
        Ok(pb::Protocol::Https) => "https",
        _ => "unspecified",
    }
}

fn strategy_name(s: i32) -> &'static str {
    match pb::PinglistStrategy::try_from(s) {
        Ok(pb::PinglistStrategy::PerRegion) => "per-region",
        Ok(pb::PinglistStrategy::KRandom) => "k-random",
        _ => "full",
    }
}

fn endpoint(s: &str) -> pb::Endpoint {
    use pb::endpoint::Endpoint as E;
    let s = s.trim();
    let e = if s.contains("://") {
        E::Url(s.into())
    } else if s.contains('=') {
        E::Selector(s.into())
    } else {
        E::AgentId(s.into())
    };
    pb::Endpoint { endpoint: Some(e) }
}

fn endpoint_str(e: &pb::Endpoint) -> String {
    use pb::endpoint::Endpoint as E;
    match &e.endpoint {
        Some(E::Url(s) | E::Selector(s) | E::AgentId(s)) => s.clone(),
        None => String::new(),
    }
}

fn endpoints(obj: &Map<String, Value>, name: &str) -> Result<Vec<pb::Endpoint>, JsonError> {
    let v: Vec<Value> = get(obj, name)?;
    v.iter()
        .enumerate()
        .map(|(i, x)| match x {
            Value::String(s) => Ok(endpoint(s)),
            _ => Err(err(
                format!("{name}[{i}]"),
                "must be a string: an agent id, a selector key=value or a URL",
            )),
        })
        .collect()
}

/// Parses a JSON job spec.
///
/// # Errors
///
/// [`JsonError`] naming the field: malformed JSON, unknown field, wrong type or unknown name.
pub fn parse_spec(body: &[u8]) -> Result<pb::JobSpec, JsonError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| err(".", format!("malformed JSON: {e}")))?;
    spec_from_value(&v)
}

/// A job spec from a parsed JSON value.
///
/// # Errors
///
/// As [`parse_spec`].
pub fn spec_from_value(v: &Value) -> Result<pb::JobSpec, JsonError> {
    let obj = v
        .as_object()
        .ok_or_else(|| err(".", "a job spec must be a JSON object"))?;
    if let Some(k) = obj.keys().find(|k| !SPEC_FIELDS.contains(&k.as_str())) {
        return Err(err(
            k.as_str(),
            format!("unknown field; known: {}", SPEC_FIELDS.join(", ")),
        ));
    }
    let kind: String = get(obj, "kind")?;
    let kind = match kind.as_str() {
        "" | "probe" => pb::JobKind::Probe,
        "relay" => pb::JobKind::Relay,
        "load" => pb::JobKind::Load,
        other => return Err(err("kind", format!("{other:?}: use probe, relay or load"))),
    };
    let names: Vec<String> = get(obj, "protocols")?;
    let mut protocols = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let p = match n.to_ascii_lowercase().as_str() {
            "udp" => pb::Protocol::Udp,
            "tcp" => pb::Protocol::Tcp,
            "quic" => pb::Protocol::Quic,
            "http" => pb::Protocol::Http,
            "https" => pb::Protocol::Https,
            _ => {
                return Err(err(
                    format!("protocols[{i}]"),
                    format!("{n:?}: use udp, tcp, quic, http or https"),
                ));
            }
        };
        protocols.push(p as i32);
    }
    let strategy: String = get(obj, "strategy")?;
    let strategy = match strategy.as_str() {
        "" | "full" => pb::PinglistStrategy::Full,
        "per-region" | "per_region" => pb::PinglistStrategy::PerRegion,
        "k-random" | "k_random" => pb::PinglistStrategy::KRandom,
        other => {
            return Err(err(
                "strategy",
                format!("{other:?}: use full, per-region or k-random"),
            ));
        }
    };
    Ok(pb::JobSpec {
        name: get(obj, "name")?,
        kind: kind as i32,
        protocols,
        sources: endpoints(obj, "sources")?,
        targets: endpoints(obj, "targets")?,
        relays: endpoints(obj, "relays")?,
        interval_ms: get(obj, "interval_ms")?,
        timeout_ms: get(obj, "timeout_ms")?,
        payload_bytes: get(obj, "payload_bytes")?,
        packets: get(obj, "packets")?,
        packet_interval_ms: get(obj, "packet_interval_ms")?,
        count: get(obj, "count")?,
        duration_ms: get(obj, "duration_ms")?,
        strategy: strategy as i32,
        k: get(obj, "k")?,
        load: match obj.get("load") {
            None | Some(Value::Null) => None,
            Some(v) => Some(load_from_value(v)?),
        },
    })
}

/// A job spec as JSON.
pub fn spec_to_value(s: &pb::JobSpec) -> Value {
    let kind = match pb::JobKind::try_from(s.kind) {
        Ok(pb::JobKind::Relay) => "relay",
        Ok(pb::JobKind::Load) => "load",
        _ => "probe",
    };
    let mut v = serde_json::json!({
        "name": s.name,
        "kind": kind,
        "protocols": s.protocols.iter().map(|p| protocol_name(*p)).collect::<Vec<_>>(),
        "sources": s.sources.iter().map(endpoint_str).collect::<Vec<_>>(),
        "targets": s.targets.iter().map(endpoint_str).collect::<Vec<_>>(),
        "relays": s.relays.iter().map(endpoint_str).collect::<Vec<_>>(),
        "interval_ms": s.interval_ms,
        "timeout_ms": s.timeout_ms,
        "payload_bytes": s.payload_bytes,
        "packets": s.packets,
        "packet_interval_ms": s.packet_interval_ms,
        "count": s.count,
        "duration_ms": s.duration_ms,
        "strategy": strategy_name(s.strategy),
        "k": s.k,
    });
    if let (Some(l), Some(obj)) = (&s.load, v.as_object_mut()) {
        obj.insert("load".into(), load_to_value(l));
    }
    v
}

/// A job as JSON, with `agent_status`: `[{"agent", "region", "state", "reason",
/// "acked_unix_ms"}]`, each agent the job is assigned to and whether it acknowledged it
/// (`pending`, `acked` or `rejected` with the agent's reason).
pub fn job_to_value(j: &pb::Job) -> Value {
    let status: Vec<Value> = j
        .agent_status
        .iter()
        .map(|s| {
            serde_json::json!({
                "agent": s.agent,
                "region": s.region,
                "state": s.state,
                "reason": s.reason,
                "acked_unix_ms": s.acked_unix_ms,
            })
        })
        .collect();
    serde_json::json!({
        "id": j.id,
        "version": j.version,
        "created_unix_ms": j.created_unix_ms,
        "updated_unix_ms": j.updated_unix_ms,
        "stopped": j.stopped,
        "spec": j.spec.as_ref().map(spec_to_value),
        "agent_status": status,
    })
}

/// An agent as JSON: its `AgentInfo` fields, with `roles` (e.g. `["relay"]`) and
/// `control_mode` (`connected` or `disconnected`).
#[derive(Debug, Serialize)]
pub struct AgentJson<'a> {
    id: &'a str,
    region: &'a str,
    az: &'a str,
    location: &'a str,
    version: &'a str,
    connected: bool,
    last_seen_unix_ms: i64,
    controller_region: &'a str,
    roles: &'a [String],
    control_mode: &'a str,
}

/// An agent as JSON.
pub fn agent_to_value(a: &pb::AgentInfo) -> Value {
    serde_json::to_value(AgentJson {
        id: &a.id,
        region: &a.region,
        az: &a.az,
        location: &a.location,
        version: &a.version,
        connected: a.connected,
        last_seen_unix_ms: a.last_seen_unix_ms,
        controller_region: &a.controller_region,
        roles: &a.roles,
        control_mode: &a.control_mode,
    })
    .unwrap_or(Value::Null)
}

/// JSON form of the latency matrix: `{"unix_ms": ..., "cells": [{"src", "dst", "protocol",
/// "p50_ms", "p99_ms", "loss", "samples", "via", "relay_penalty_ms"}]}` (loss is a fraction, 0
/// to 1; `via` the relay agent of a relayed path, empty for direct ones; `relay_penalty_ms`
/// null for direct paths).
pub fn matrix_to_value(m: &pb::Matrix) -> Value {
    let cells: Vec<Value> = m
        .cells
        .iter()
        .map(|c| {
            serde_json::json!({
                "src": c.src,
                "dst": c.dst,
                "protocol": c.protocol,
                "p50_ms": c.p50_ms,
                "p99_ms": c.p99_ms,
                "loss": c.loss,
                "samples": c.samples,
                "via": c.via,
                "relay_penalty_ms": c.relay_penalty_ms,
            })
        })
        .collect();
    serde_json::json!({ "unix_ms": m.unix_ms, "cells": cells })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_and_bad_fields_are_named() {
        let body = br#"{"name":"m","protocols":["udp","https"],"sources":["region=a"],
            "targets":["ag-1","https://example.com/"],"interval_ms":1000,"timeout_ms":500,
            "strategy":"k-random","k":2}"#;
        let s = parse_spec(body).expect("valid");
        assert_eq!(s.strategy, pb::PinglistStrategy::KRandom as i32);
        assert_eq!(
            s.targets[0].endpoint,
            Some(pb::endpoint::Endpoint::AgentId("ag-1".into()))
        );
        let again = spec_from_value(&spec_to_value(&s)).expect("round trip");
        assert_eq!(again, s);
        for (bad, field) in [
            (&b"{"[..], "."),
            (br#"{"interval_ms":"soon"}"#, "interval_ms"),
            (br#"{"colour":1}"#, "colour"),
            (br#"{"protocols":["udp","gopher"]}"#, "protocols[1]"),
            (br#"{"sources":[1]}"#, "sources[0]"),
            (br#"{"strategy":"all"}"#, "strategy"),
            (br#"[1]"#, "."),
        ] {
            let e = parse_spec(bad).expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn load_spec_round_trips_and_bad_fields_are_named() {
        let body = br#"{"name":"ramp","kind":"load","protocols":["http"],
            "sources":["region=a"],"targets":["http://t.example:8080/"],
            "timeout_ms":2000,"duration_ms":50000,
            "load":{"model":"closed","start":10,"step":10,"steps":5,"step_duration_ms":10000,
              "think_time_ms":5,"knobs":{"ID":"7"},
              "requests":[{"method":"POST","path":"/i/{{ID}}","headers":{"X-A":"b"},
                "body":"x","weight":3,"expect_status":201,"label":"create"}],
              "credentials":{"file":"/etc/keys","header":"X-Api-Key"}}}"#;
        let s = parse_spec(body).expect("valid");
        assert_eq!(s.kind, pb::JobKind::Load as i32);
        let l = s.load.as_ref().expect("load");
        assert_eq!(l.model, pb::LoadModel::Closed as i32);
        assert_eq!((l.start, l.step, l.steps), (10.0, 10.0, 5));
        assert_eq!(l.requests[0].headers["X-A"], "b");
        assert_eq!(
            l.credentials.as_ref().map(|c| c.header.as_str()),
            Some("X-Api-Key")
        );
        meshlat_proto::job::validate(&s).expect("the example is a valid load job");
        let v = spec_to_value(&s);
        assert_eq!(v["kind"], "load");
        assert_eq!(v["load"]["model"], "closed");
        assert_eq!(spec_from_value(&v).expect("round trip"), s);
        // A probe job has no load key.
        let probe = parse_spec(br#"{"protocols":["udp"]}"#).expect("probe");
        assert!(spec_to_value(&probe).get("load").is_none());
        for (bad, field) in [
            (&br#"{"kind":"stress"}"#[..], "kind"),
            (
                br#"{"kind":"load","load":{"model":"sometimes"}}"#,
                "load.model",
            ),
            (br#"{"kind":"load","load":{"workers":4}}"#, "load"),
            (
                br#"{"kind":"load","load":{"requests":[{"verb":"GET"}]}}"#,
                "load",
            ),
            (
                br#"{"kind":"load","load":{"credentials":{"secret":"k:s"}}}"#,
                "load",
            ),
            (br#"{"kind":"load","load":{"start":"ten"}}"#, "load"),
            (br#"{"kind":"load","load":[1]}"#, "load"),
        ] {
            let e = parse_spec(bad).expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
    }
}
