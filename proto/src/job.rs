//! Job-spec validation shared by controller and agent: the one validator.
//!
//! The controller refuses a bad [`pb::JobSpec`] — from the REST API, gRPC, the CLI or a
//! federation peer — with a structured [`JobSpecError`] (field path, what is wrong, and the
//! limit crossed); the agent runs the same checks on what it is sent.
//!
//! # Ranges
//!
//! Every numeric and list field is bounded; the limits are the constants below (and the
//! comments of `proto/meshlat/v1/job.proto` and the README's "Limits" table say the same):
//!
//! | field | allowed |
//! | --- | --- |
//! | whole spec (encoded) | at most [`MAX_SPEC_BYTES`] bytes |
//! | `name` | at most [`MAX_NAME_BYTES`] bytes |
//! | `kind` | `probe` or `relay` |
//! | `protocols` | 1 to [`MAX_PROTOCOLS`], no duplicates; relay jobs `udp` only |
//! | `sources` | 1 to [`MAX_SOURCES`] |
//! | `targets` | 1 to [`MAX_TARGETS`] |
//! | `relays` | 0 to [`MAX_RELAYS`] (at least 1 for relay jobs) |
//! | an agent id | at most [`MAX_AGENT_ID_BYTES`] bytes, printable, no whitespace |
//! | a selector | at most [`MAX_SELECTOR_BYTES`] bytes of `key=value[,key=value]` with keys `region`, `az`, `location`, `id` |
//! | a URL (targets only) | at most [`MAX_URL_BYTES`] bytes, `udp://`, `tcp://`, `quic://`, `http://` or `https://`, its protocol among `protocols` |
//! | `interval_ms` | [`MIN_INTERVAL_MS`] to [`MAX_INTERVAL_MS`] |
//! | `timeout_ms` | 1 to [`MAX_TIMEOUT_MS`], and below `interval_ms` |
//! | `payload_bytes` | 0 to [`MAX_PAYLOAD_BYTES`] |
//! | `packets` | 0 to [`MAX_PACKETS`] |
//! | `packet_interval_ms` | 0 to [`MAX_PACKET_INTERVAL_MS`] |
//! | `count` | 0 to [`MAX_COUNT`] |
//! | `duration_ms` | 0 to [`MAX_DURATION_MS`] |
//! | `strategy` | `full` (or unspecified), `per-region`, `k-random` |
//! | `k` | 0 to [`MAX_K`]; for `k-random` whose targets are all agent ids, at most their number |
//!
//! A `k` larger than the agents a selector matches at run time is clamped by the scheduler.

use std::borrow::Cow;

use crate::pb;

/// Smallest allowed interval between samples of one pair.
pub const MIN_INTERVAL_MS: u32 = 10;
/// Largest interval between samples of one pair (a day).
pub const MAX_INTERVAL_MS: u32 = 86_400_000;
/// Largest per-sample timeout (two minutes).
pub const MAX_TIMEOUT_MS: u32 = 120_000;
/// Largest train an agent accepts.
pub const MAX_PACKETS: u32 = 10_000;
/// Default packets per train.
pub const DEFAULT_PACKETS: u32 = 10;
/// Largest UDP/QUIC payload (fits a 1500-byte MTU with IPv6 and UDP headers).
pub const MAX_PAYLOAD_BYTES: u32 = 1_452;
/// Largest gap between the packets of a train.
pub const MAX_PACKET_INTERVAL_MS: u32 = 10_000;
/// Largest `count` (samples per pair before the job stops).
pub const MAX_COUNT: u64 = 1_000_000_000;
/// Largest `duration_ms` (a leap year).
pub const MAX_DURATION_MS: u64 = 366 * 86_400_000;
/// Largest `k` (targets per source of `k-random`, representatives per region of `per-region`).
pub const MAX_K: u32 = 1_000;
/// Most bytes of `name`.
pub const MAX_NAME_BYTES: usize = 256;
/// Most entries of `protocols` (one of each).
pub const MAX_PROTOCOLS: usize = 5;
/// Most entries of `sources` (selectors match any number of agents).
pub const MAX_SOURCES: usize = 64;
/// Most entries of `targets`.
pub const MAX_TARGETS: usize = 256;
/// Most entries of `relays`.
pub const MAX_RELAYS: usize = 16;
/// Most bytes of an agent id (as `Hello.agent_id`).
pub const MAX_AGENT_ID_BYTES: usize = 128;
/// Most bytes of a selector.
pub const MAX_SELECTOR_BYTES: usize = 256;
/// Most bytes of a target URL.
pub const MAX_URL_BYTES: usize = 2_048;
/// Most bytes of a whole encoded spec, so a job list or a federation directory of
/// `--max-jobs` jobs stays bounded.
pub const MAX_SPEC_BYTES: usize = 32 * 1024;

/// Selector keys.
pub const SELECTOR_KEYS: [&str; 4] = ["region", "az", "location", "id"];

/// Why a job spec was refused: the field path (`targets[3]`, relative to the spec), what is
/// wrong, and (through [`JobSpecError::limit`]) the limit crossed.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct JobSpecError {
    /// Field path relative to the spec, e.g. `k` or `targets[3]`; empty for the whole spec.
    pub field: Cow<'static, str>,
    /// What is wrong.
    pub problem: Problem,
}

/// What is wrong with a field.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// A required field is empty.
    #[error("must not be empty")]
    Empty,
    /// A list has too many entries.
    #[error("{len} entries exceed the limit of {max}")]
    TooMany {
        /// Entries given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A string or message is too long.
    #[error("{len} bytes exceed the limit of {max}")]
    TooLong {
        /// Bytes given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A number is outside its range.
    #[error("{value} is out of range {min}..={max}")]
    OutOfRange {
        /// Given value.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed (the limit).
        max: u64,
    },
    /// A number must be below another field's value.
    #[error("{value} must be less than {bound_field} ({bound})")]
    NotBelow {
        /// Given value.
        value: u64,
        /// The other field.
        bound_field: &'static str,
        /// Its value.
        bound: u64,
    },
    /// A number must not exceed another field's count.
    #[error("{value} exceeds the {bound} {bound_field} given")]
    AboveCount {
        /// Given value.
        value: u64,
        /// What is counted.
        bound_field: &'static str,
        /// The count (the limit).
        bound: u64,
    },
    /// A list entry repeats an earlier one.
    #[error("duplicates entry {first}")]
    Duplicate {
        /// Index of the earlier entry.
        first: usize,
    },
    /// Any other problem, described.
    #[error("{0}")]
    Invalid(Cow<'static, str>),
}

impl std::fmt::Display for JobSpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "encoded spec: {}", self.problem)
        } else {
            write!(f, "{}: {}", self.field, self.problem)
        }
    }
}

impl std::error::Error for JobSpecError {}

impl JobSpecError {
    fn new(field: impl Into<Cow<'static, str>>, problem: Problem) -> Self {
        JobSpecError {
            field: field.into(),
            problem,
        }
    }

    /// The limit the value crossed, if the problem is one of size or range.
    pub fn limit(&self) -> Option<u64> {
        match &self.problem {
            Problem::TooMany { max, .. } | Problem::TooLong { max, .. } => Some(*max as u64),
            Problem::OutOfRange { max, .. } => Some(*max),
            Problem::NotBelow { bound, .. } | Problem::AboveCount { bound, .. } => Some(*bound),
            _ => None,
        }
    }
}

fn range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), JobSpecError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(JobSpecError::new(
            field,
            Problem::OutOfRange { value, min, max },
        ))
    }
}

fn list_len(field: &'static str, len: usize, min: usize, max: usize) -> Result<(), JobSpecError> {
    if len > max {
        return Err(JobSpecError::new(field, Problem::TooMany { len, max }));
    }
    if len < min {
        return Err(JobSpecError::new(field, Problem::Empty));
    }
    Ok(())
}

/// The protocol a target URL is measured with (`None`: not a meshlat target URL).
pub fn url_protocol(url: &str) -> Option<pb::Protocol> {
    let (scheme, rest) = url.split_once("://")?;
    if rest.is_empty() {
        return None;
    }
    Some(match scheme.to_ascii_lowercase().as_str() {
        "udp" => pb::Protocol::Udp,
        "tcp" => pb::Protocol::Tcp,
        "quic" => pb::Protocol::Quic,
        "http" => pb::Protocol::Http,
        "https" => pb::Protocol::Https,
        _ => return None,
    })
}

/// The `(key, value)` pairs of a selector `key=value[,key=value]...` (keys [`SELECTOR_KEYS`]).
///
/// # Errors
///
/// A reason naming the bad key or pair.
pub fn selector_pairs(s: &str) -> Result<Vec<(&str, &str)>, String> {
    let mut pairs = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("{part:?} is not key=value"));
        };
        let k = k.trim();
        if !SELECTOR_KEYS.contains(&k) {
            return Err(format!(
                "unknown selector key {k:?} (use region, az, location, id)"
            ));
        }
        pairs.push((k, v.trim()));
    }
    if pairs.is_empty() {
        return Err("empty selector".into());
    }
    Ok(pairs)
}

/// Checks one endpoint of list `name` at index `i`.
fn check_endpoint(
    name: &'static str,
    i: usize,
    e: &pb::Endpoint,
    protocols: &[i32],
) -> Result<(), JobSpecError> {
    use pb::endpoint::Endpoint as E;
    let field = || Cow::Owned(format!("{name}[{i}]"));
    let too_long = |len: usize, max: usize| {
        (len > max).then(|| JobSpecError::new(field(), Problem::TooLong { len, max }))
    };
    let s = match &e.endpoint {
        None => return Err(JobSpecError::new(field(), Problem::Empty)),
        Some(E::AgentId(s) | E::Selector(s) | E::Url(s)) => s,
    };
    if s.trim().is_empty() {
        return Err(JobSpecError::new(field(), Problem::Empty));
    }
    match &e.endpoint {
        Some(E::AgentId(id)) => {
            if let Some(e) = too_long(id.len(), MAX_AGENT_ID_BYTES) {
                return Err(e);
            }
            if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(JobSpecError::new(
                    field(),
                    Problem::Invalid("an agent id has no whitespace or control characters".into()),
                ));
            }
        }
        Some(E::Selector(sel)) => {
            if let Some(e) = too_long(sel.len(), MAX_SELECTOR_BYTES) {
                return Err(e);
            }
            selector_pairs(sel)
                .map_err(|r| JobSpecError::new(field(), Problem::Invalid(r.into())))?;
        }
        Some(E::Url(u)) => {
            if name != "targets" {
                return Err(JobSpecError::new(
                    field(),
                    Problem::Invalid("only targets may be external URLs".into()),
                ));
            }
            if let Some(e) = too_long(u.len(), MAX_URL_BYTES) {
                return Err(e);
            }
            let Some(p) = url_protocol(u) else {
                return Err(JobSpecError::new(
                    field(),
                    Problem::Invalid(
                        format!("{u:?} is not udp://, tcp://, quic://, http:// or https://").into(),
                    ),
                ));
            };
            if !protocols.contains(&(p as i32)) {
                return Err(JobSpecError::new(
                    field(),
                    Problem::Invalid(
                        format!("{u:?} needs protocol {} in protocols", p.as_str_name()).into(),
                    ),
                ));
            }
        }
        None => {}
    }
    Ok(())
}

/// Checks a job spec against every range in the module docs, returning the first problem.
///
/// # Errors
///
/// [`JobSpecError`] naming the offending field and, for sizes and ranges, the limit.
pub fn validate(spec: &pb::JobSpec) -> Result<(), JobSpecError> {
    if spec.name.len() > MAX_NAME_BYTES {
        return Err(JobSpecError::new(
            "name",
            Problem::TooLong {
                len: spec.name.len(),
                max: MAX_NAME_BYTES,
            },
        ));
    }
    let kind = pb::JobKind::try_from(spec.kind).unwrap_or(pb::JobKind::Unspecified);
    // Load jobs (issue 15) are refused until their validation and scheduling land.
    if matches!(kind, pb::JobKind::Unspecified | pb::JobKind::Load) {
        return Err(JobSpecError::new(
            "kind",
            Problem::Invalid("must be probe or relay".into()),
        ));
    }
    let relay = kind == pb::JobKind::Relay;
    list_len("protocols", spec.protocols.len(), 1, MAX_PROTOCOLS)?;
    for (i, p) in spec.protocols.iter().enumerate() {
        let field = || Cow::Owned(format!("protocols[{i}]"));
        let p = pb::Protocol::try_from(*p).unwrap_or(pb::Protocol::Unspecified);
        if p == pb::Protocol::Unspecified {
            return Err(JobSpecError::new(
                field(),
                Problem::Invalid("unknown protocol".into()),
            ));
        }
        if let Some(first) = spec.protocols[..i].iter().position(|q| *q == p as i32) {
            return Err(JobSpecError::new(field(), Problem::Duplicate { first }));
        }
        if relay && p != pb::Protocol::Udp {
            return Err(JobSpecError::new(
                field(),
                Problem::Invalid(
                    format!(
                        "relay jobs measure udp (relays forward meshlat UDP packets only), not {}",
                        p.as_str_name()
                    )
                    .into(),
                ),
            ));
        }
    }
    list_len("sources", spec.sources.len(), 1, MAX_SOURCES)?;
    list_len("targets", spec.targets.len(), 1, MAX_TARGETS)?;
    list_len("relays", spec.relays.len(), usize::from(relay), MAX_RELAYS)?;
    // Counts first (they name the list), then the whole size.
    let len = prost::Message::encoded_len(spec);
    if len > MAX_SPEC_BYTES {
        return Err(JobSpecError::new(
            "",
            Problem::TooLong {
                len,
                max: MAX_SPEC_BYTES,
            },
        ));
    }
    for (name, list) in [
        ("sources", &spec.sources),
        ("targets", &spec.targets),
        ("relays", &spec.relays),
    ] {
        for (i, e) in list.iter().enumerate() {
            check_endpoint(name, i, e, &spec.protocols)?;
        }
    }
    range(
        "interval_ms",
        spec.interval_ms.into(),
        MIN_INTERVAL_MS.into(),
        MAX_INTERVAL_MS.into(),
    )?;
    range(
        "timeout_ms",
        spec.timeout_ms.into(),
        1,
        MAX_TIMEOUT_MS.into(),
    )?;
    if spec.timeout_ms >= spec.interval_ms {
        return Err(JobSpecError::new(
            "timeout_ms",
            Problem::NotBelow {
                value: spec.timeout_ms.into(),
                bound_field: "interval_ms",
                bound: spec.interval_ms.into(),
            },
        ));
    }
    range(
        "payload_bytes",
        spec.payload_bytes.into(),
        0,
        MAX_PAYLOAD_BYTES.into(),
    )?;
    range("packets", spec.packets.into(), 0, MAX_PACKETS.into())?;
    range(
        "packet_interval_ms",
        spec.packet_interval_ms.into(),
        0,
        MAX_PACKET_INTERVAL_MS.into(),
    )?;
    range("count", spec.count, 0, MAX_COUNT)?;
    range("duration_ms", spec.duration_ms, 0, MAX_DURATION_MS)?;
    let strategy = pb::PinglistStrategy::try_from(spec.strategy).map_err(|_| {
        JobSpecError::new(
            "strategy",
            Problem::Invalid("must be full, per-region or k-random".into()),
        )
    })?;
    range("k", spec.k.into(), 0, MAX_K.into())?;
    if strategy == pb::PinglistStrategy::KRandom {
        let all_ids = spec
            .targets
            .iter()
            .all(|t| !matches!(t.endpoint, Some(pb::endpoint::Endpoint::Selector(_))));
        let ids = spec
            .targets
            .iter()
            .filter(|t| matches!(t.endpoint, Some(pb::endpoint::Endpoint::AgentId(_))))
            .count() as u64;
        if all_ids && u64::from(spec.k) > ids {
            return Err(JobSpecError::new(
                "k",
                Problem::AboveCount {
                    value: spec.k.into(),
                    bound_field: "agent-id targets",
                    bound: ids,
                },
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> pb::JobSpec {
        pb::JobSpec {
            name: "t".into(),
            kind: pb::JobKind::Probe as i32,
            protocols: vec![pb::Protocol::Udp as i32],
            sources: vec![pb::Endpoint {
                endpoint: Some(pb::endpoint::Endpoint::Selector("region=a".into())),
            }],
            targets: vec![pb::Endpoint {
                endpoint: Some(pb::endpoint::Endpoint::Selector("region=b".into())),
            }],
            interval_ms: 1000,
            timeout_ms: 500,
            ..Default::default()
        }
    }

    fn url(u: &str) -> pb::Endpoint {
        pb::Endpoint {
            endpoint: Some(pb::endpoint::Endpoint::Url(u.into())),
        }
    }

    fn id(s: &str) -> pb::Endpoint {
        pb::Endpoint {
            endpoint: Some(pb::endpoint::Endpoint::AgentId(s.into())),
        }
    }

    #[test]
    fn good_spec_passes() {
        assert_eq!(validate(&good()), Ok(()));
        let mut s = good();
        s.strategy = pb::PinglistStrategy::KRandom as i32;
        s.k = MAX_K;
        assert_eq!(validate(&s), Ok(()), "selectors: k is clamped at run time");
    }

    #[test]
    fn bad_specs_name_the_field() {
        type Mutate = Box<dyn Fn(&mut pb::JobSpec)>;
        let cases: Vec<(Mutate, &str)> = vec![
            (
                Box::new(|s| s.protocols.clear()),
                "protocols: must not be empty",
            ),
            (
                Box::new(|s| s.timeout_ms = 1000),
                "timeout_ms: 1000 must be less than interval_ms (1000)",
            ),
            (
                Box::new(|s| s.interval_ms = 1),
                "interval_ms: 1 is out of range 10..=86400000",
            ),
            (
                Box::new(|s| s.packets = 1_000_000),
                "packets: 1000000 is out of range 0..=10000",
            ),
            (Box::new(|s| s.kind = 0), "kind: must be probe or relay"),
            (
                Box::new(|s| s.targets[0].endpoint = None),
                "targets[0]: must not be empty",
            ),
            (
                Box::new(|s| s.sources[0] = url("http://x")),
                "sources[0]: only targets",
            ),
            (
                Box::new(|s| {
                    s.kind = pb::JobKind::Relay as i32;
                    s.relays = s.targets.clone();
                    s.protocols = vec![pb::Protocol::Http as i32];
                }),
                "relay jobs measure udp",
            ),
            (
                Box::new(|s| s.k = u32::MAX),
                "k: 4294967295 is out of range 0..=1000",
            ),
            (
                Box::new(|s| {
                    s.strategy = pb::PinglistStrategy::KRandom as i32;
                    s.targets = vec![id("a"), id("b")];
                    s.k = 3;
                }),
                "k: 3 exceeds the 2 agent-id targets given",
            ),
            (
                Box::new(|s| s.targets = vec![id("a"); MAX_TARGETS + 1]),
                "targets: 257 entries exceed the limit of 256",
            ),
            (
                Box::new(|s| s.name = "n".repeat(MAX_NAME_BYTES + 1)),
                "name: 257 bytes exceed the limit of 256",
            ),
            (
                Box::new(|s| s.targets[0] = url(&format!("udp://{}", "h".repeat(MAX_URL_BYTES)))),
                "targets[0]: 2054 bytes exceed the limit of 2048",
            ),
            (
                Box::new(|s| {
                    s.protocols = vec![pb::Protocol::Udp as i32, pb::Protocol::Udp as i32]
                }),
                "protocols[1]: duplicates entry 0",
            ),
            (
                Box::new(|s| {
                    s.sources[0].endpoint =
                        Some(pb::endpoint::Endpoint::Selector("colour=red".into()))
                }),
                "sources[0]: unknown selector key",
            ),
            (
                Box::new(|s| s.targets[0] = url("tcp://h:1")),
                "targets[0]: \"tcp://h:1\" needs protocol PROTOCOL_TCP",
            ),
            (Box::new(|s| s.strategy = 99), "strategy: must be"),
            (
                Box::new(|s| s.timeout_ms = 0),
                "timeout_ms: 0 is out of range",
            ),
            (
                Box::new(|s| {
                    s.interval_ms = MAX_INTERVAL_MS;
                    s.timeout_ms = MAX_TIMEOUT_MS + 1;
                }),
                "timeout_ms: 120001 is out of range 1..=120000",
            ),
            (
                Box::new(|s| s.count = u64::MAX),
                "count: 18446744073709551615 is out of range",
            ),
            (
                Box::new(|s| s.targets = vec![url(&format!("udp://{}", "h".repeat(1000))); 40]),
                "encoded spec: 40",
            ),
        ];
        for (mutate, want) in cases {
            let mut s = good();
            mutate(&mut s);
            let err = validate(&s).expect_err(want).to_string();
            assert!(err.contains(want), "got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn errors_are_structured_with_the_limit() {
        let mut s = good();
        s.k = u32::MAX;
        let e = validate(&s).expect_err("k");
        assert_eq!(e.field, "k");
        assert_eq!(e.limit(), Some(u64::from(MAX_K)));
        assert_eq!(
            e.problem,
            Problem::OutOfRange {
                value: u64::from(u32::MAX),
                min: 0,
                max: u64::from(MAX_K)
            }
        );
        s = good();
        s.targets = vec![id("x"); 40_000];
        let e = validate(&s).expect_err("too many");
        assert_eq!(
            (e.field.as_ref(), e.limit()),
            ("targets", Some(MAX_TARGETS as u64))
        );
        // Within the counts, the whole spec's size is bounded too.
        s.targets = vec![id(&"x".repeat(MAX_AGENT_ID_BYTES)); MAX_TARGETS];
        let e = validate(&s).expect_err("too big");
        assert_eq!(
            (e.field.as_ref(), e.limit()),
            ("", Some(MAX_SPEC_BYTES as u64))
        );
    }

    #[test]
    fn selectors_and_urls_parse() {
        assert_eq!(
            selector_pairs("region=a, az=b"),
            Ok(vec![("region", "a"), ("az", "b")])
        );
        assert!(selector_pairs(",").is_err());
        assert!(selector_pairs("region").is_err());
        assert_eq!(url_protocol("HTTPS://x"), Some(pb::Protocol::Https));
        assert_eq!(url_protocol("udp://"), None);
        assert_eq!(url_protocol("gopher://x"), None);
    }
}
