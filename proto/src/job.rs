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
//! | `kind` | `probe`, `relay` or `load` |
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
//!
//! # Load jobs
//!
//! A `load` job (`validate_load`) takes `http`/`https` only, URL targets only, a `duration_ms`
//! of 1 to [`MAX_LOAD_DURATION_MS`] and a `timeout_ms` of 1 to [`MAX_TIMEOUT_MS`] per request;
//! the fields of probes it does not use (`relays`, `interval_ms`, `payload_bytes`, `packets`,
//! `packet_interval_ms`, `count`, `strategy`, `k`) must be left unset, so a spec never says
//! something that is silently ignored. Its `load` message:
//!
//! | field | allowed |
//! | --- | --- |
//! | `model` | `closed` or `open` |
//! | `start`, `step` | finite; closed: whole workers, every step's level 0 to [`MAX_LOAD_WORKERS`] and the first at least 1; open: every step's rate 0 to [`MAX_LOAD_RATE`] req/s and the first at least [`MIN_LOAD_RATE`] |
//! | `steps` | 0 to [`MAX_LOAD_STEPS`] (0 means 1) |
//! | `step_duration_ms` | 1000 to [`MAX_INTERVAL_MS`] when `steps` > 1, else 0 or that range |
//! | `rate_per_job` | open model only |
//! | `think_time_ms` | 0 to [`MAX_THINK_TIME_MS`], closed model only |
//! | `max_connections` | 0 to [`MAX_LOAD_CONNECTIONS`] |
//! | `max_rate` | finite, 0 to [`MAX_LOAD_RATE`] |
//! | `scenario` | at most [`MAX_SCENARIO_NAME_BYTES`] bytes of `[A-Za-z0-9_.-]` |
//! | `knobs` | at most [`MAX_KNOBS`]; names 1 to [`MAX_KNOB_NAME_BYTES`] bytes of `[A-Za-z0-9_]`, values at most [`MAX_KNOB_VALUE_BYTES`] bytes without control characters |
//! | `requests` | 0 to [`MAX_LOAD_REQUESTS`]; see [`check_load_request`] |
//! | `credentials` | at most one of `file` (absolute path, at most [`MAX_CREDENTIAL_PATH_BYTES`] bytes) and `secrets_manager_arn` (`arn:…:secretsmanager:…`, at most [`MAX_URL_BYTES`] bytes); `header` a header name (at most [`MAX_HEADER_NAME_BYTES`] bytes) and only with one of them |
//!
//! `{{NAME}}` in a request's path, header values and body must name a knob of `knobs`.

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

/// Longest load job (a day): load is a test, not a standing job.
pub const MAX_LOAD_DURATION_MS: u64 = 86_400_000;
/// Most workers per agent a closed-model step may ask for.
pub const MAX_LOAD_WORKERS: f64 = 10_000.0;
/// Highest rate (req/s) an open-model step may ask for.
pub const MAX_LOAD_RATE: f64 = 1_000_000.0;
/// Lowest rate of an open model's first step.
pub const MIN_LOAD_RATE: f64 = 0.1;
/// Most steps of a load schedule.
pub const MAX_LOAD_STEPS: u32 = 1_000;
/// Shortest step of a stepped load schedule: records are per second.
pub const MIN_LOAD_STEP_MS: u32 = 1_000;
/// Longest think time.
pub const MAX_THINK_TIME_MS: u32 = 600_000;
/// Largest `max_connections`.
pub const MAX_LOAD_CONNECTIONS: u32 = 100_000;
/// Most bytes of a scenario name.
pub const MAX_SCENARIO_NAME_BYTES: usize = 128;
/// Most knobs.
pub const MAX_KNOBS: usize = 64;
/// Most bytes of a knob name.
pub const MAX_KNOB_NAME_BYTES: usize = 64;
/// Most bytes of a knob value.
pub const MAX_KNOB_VALUE_BYTES: usize = 1_024;
/// Most requests in a load mix.
pub const MAX_LOAD_REQUESTS: usize = 64;
/// Most headers of one load request.
pub const MAX_LOAD_HEADERS: usize = 32;
/// Most bytes of a header name.
pub const MAX_HEADER_NAME_BYTES: usize = 128;
/// Most bytes of a header value.
pub const MAX_HEADER_VALUE_BYTES: usize = 1_024;
/// Most bytes of a request body.
pub const MAX_LOAD_BODY_BYTES: usize = 16_384;
/// Largest request weight.
pub const MAX_LOAD_WEIGHT: u32 = 1_000_000;
/// Most bytes of a request label.
pub const MAX_LOAD_LABEL_BYTES: usize = 64;
/// Most bytes of a credentials file path.
pub const MAX_CREDENTIAL_PATH_BYTES: usize = 4_096;
/// The methods a load request may use.
pub const LOAD_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

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
    if kind == pb::JobKind::Unspecified {
        return Err(JobSpecError::new(
            "kind",
            Problem::Invalid("must be probe, relay or load".into()),
        ));
    }
    if kind == pb::JobKind::Load {
        return validate_load(spec);
    }
    if spec.load.is_some() {
        return Err(JobSpecError::new(
            "load",
            Problem::Invalid("only load jobs have a load section".into()),
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

fn invalid(field: impl Into<Cow<'static, str>>, why: impl Into<Cow<'static, str>>) -> JobSpecError {
    JobSpecError::new(field, Problem::Invalid(why.into()))
}

fn too_long(
    field: impl Into<Cow<'static, str>>,
    len: usize,
    max: usize,
) -> Result<(), JobSpecError> {
    if len > max {
        Err(JobSpecError::new(field, Problem::TooLong { len, max }))
    } else {
        Ok(())
    }
}

/// The knob names `{{NAME}}` references in `s`, in order.
///
/// # Errors
///
/// A reason when a `{{` is not closed by `}}` or what it encloses is not a knob name.
pub fn template_refs(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    scan_template(s, |_, name| out.extend(name)).map_err(|e| match e {
        TemplateError::Unclosed => "\"{{\" without a closing \"}}\"".to_string(),
        TemplateError::BadName(name) => format!(
            "{{{{{name}}}}}: a knob name is 1 to {MAX_KNOB_NAME_BYTES} bytes of A-Z, a-z, 0-9, _"
        ),
    })?;
    Ok(out)
}

/// What is wrong with a `{{NAME}}` template ([`scan_template`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateError<'a> {
    /// A `{{` without a closing `}}`.
    Unclosed,
    /// What a `{{ }}` encloses (trimmed) is not a knob name.
    BadName(&'a str),
}

/// Walks a template: calls `f` with each literal run and, after it, the knob name of the
/// `{{NAME}}` that follows (`None` for the last run). One parser for checking
/// ([`template_refs`]) and rendering (`scenario::render`).
///
/// # Errors
///
/// The first malformed reference.
pub fn scan_template<'a>(
    s: &'a str,
    mut f: impl FnMut(&'a str, Option<&'a str>),
) -> Result<(), TemplateError<'a>> {
    let mut rest = s;
    while let Some(i) = rest.find("{{") {
        let after = &rest[i + 2..];
        let j = after.find("}}").ok_or(TemplateError::Unclosed)?;
        let name = after[..j].trim();
        if !knob_name_ok(name) {
            return Err(TemplateError::BadName(name));
        }
        f(&rest[..i], Some(name));
        rest = &after[j + 2..];
    }
    f(rest, None);
    Ok(())
}

/// Whether `n` is a knob name: 1 to [`MAX_KNOB_NAME_BYTES`] bytes of `[A-Za-z0-9_]`.
pub fn knob_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_KNOB_NAME_BYTES
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether `s` is a scenario name: 1 to [`MAX_SCENARIO_NAME_BYTES`] bytes of `[A-Za-z0-9_.-]`,
/// not starting with `.` (so never a path out of the scenarios directory).
pub fn scenario_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SCENARIO_NAME_BYTES
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Whether `n` is an HTTP header name (an RFC 9110 token).
pub fn header_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_template(
    field: impl Fn() -> Cow<'static, str>,
    s: &str,
    knobs: &std::collections::HashMap<String, String>,
) -> Result<(), JobSpecError> {
    let refs = template_refs(s).map_err(|r| invalid(field(), r))?;
    if let Some(missing) = refs.iter().find(|r| !knobs.contains_key(**r)) {
        return Err(invalid(
            field(),
            format!("{{{{{missing}}}}} names no knob of load.knobs"),
        ));
    }
    Ok(())
}

/// Checks request `i` of a load mix: method, path (empty, or starting with `/`, at most
/// [`MAX_URL_BYTES`]), headers (at most [`MAX_LOAD_HEADERS`]; names RFC 9110 tokens of at most
/// [`MAX_HEADER_NAME_BYTES`] bytes, not `Host`, `Content-Length`, `Transfer-Encoding` or
/// `Connection`; values at most [`MAX_HEADER_VALUE_BYTES`] bytes without CR, LF or NUL), body
/// (at most [`MAX_LOAD_BODY_BYTES`]), weight (at most [`MAX_LOAD_WEIGHT`]), `expect_status` (0
/// or 100–599), label (at most [`MAX_LOAD_LABEL_BYTES`]), and every `{{NAME}}` against `knobs`.
///
/// # Errors
///
/// [`JobSpecError`] with the path `load.requests[i]…`.
pub fn check_load_request(
    i: usize,
    r: &pb::LoadRequest,
    knobs: &std::collections::HashMap<String, String>,
) -> Result<(), JobSpecError> {
    let f = |name: &str| -> Cow<'static, str> { Cow::Owned(format!("load.requests[{i}].{name}")) };
    if !r.method.is_empty() && !LOAD_METHODS.contains(&r.method.as_str()) {
        return Err(invalid(
            f("method"),
            format!(
                "{:?}: use {}",
                r.method.chars().take(32).collect::<String>(),
                LOAD_METHODS.join(", ")
            ),
        ));
    }
    too_long(f("path"), r.path.len(), MAX_URL_BYTES)?;
    if !r.path.is_empty() && !r.path.starts_with('/') {
        return Err(invalid(
            f("path"),
            "must start with / (it is appended to the target's origin)",
        ));
    }
    if r.path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(invalid(
            f("path"),
            "no spaces or control characters (percent-encode them)",
        ));
    }
    check_template(|| f("path"), &r.path, knobs)?;
    if r.headers.len() > MAX_LOAD_HEADERS {
        return Err(JobSpecError::new(
            f("headers"),
            Problem::TooMany {
                len: r.headers.len(),
                max: MAX_LOAD_HEADERS,
            },
        ));
    }
    let mut names: Vec<&String> = r.headers.keys().collect();
    names.sort();
    for name in names {
        let value = &r.headers[name];
        let hf = || {
            f(&format!(
                "headers.{}",
                name.chars().take(64).collect::<String>()
            ))
        };
        too_long(hf(), name.len(), MAX_HEADER_NAME_BYTES)?;
        if !header_name_ok(name) {
            return Err(invalid(hf(), "not a header name (an RFC 9110 token)"));
        }
        if ["host", "content-length", "transfer-encoding", "connection"]
            .contains(&name.to_ascii_lowercase().as_str())
        {
            return Err(invalid(
                hf(),
                "set by the agent; a request may not override it",
            ));
        }
        too_long(hf(), value.len(), MAX_HEADER_VALUE_BYTES)?;
        if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(invalid(hf(), "a header value has no CR, LF or NUL"));
        }
        check_template(hf, value, knobs)?;
    }
    too_long(f("body"), r.body.len(), MAX_LOAD_BODY_BYTES)?;
    check_template(|| f("body"), &r.body, knobs)?;
    if r.weight > MAX_LOAD_WEIGHT {
        return Err(JobSpecError::new(
            f("weight"),
            Problem::OutOfRange {
                value: r.weight.into(),
                min: 0,
                max: MAX_LOAD_WEIGHT.into(),
            },
        ));
    }
    if r.expect_status != 0 && !(100..=599).contains(&r.expect_status) {
        return Err(invalid(
            f("expect_status"),
            format!("{} is not 0 (any 2xx) or 100..=599", r.expect_status),
        ));
    }
    too_long(f("label"), r.label.len(), MAX_LOAD_LABEL_BYTES)?;
    Ok(())
}

/// The level of each step of a load schedule: `start + i·step` for `i` in `0..steps`.
pub fn load_levels(l: &pb::LoadSpec) -> impl Iterator<Item = f64> + '_ {
    (0..l.steps.max(1)).map(move |i| l.start + f64::from(i) * l.step)
}

/// Checks a `load` job ([module docs](self#load-jobs)).
fn validate_load(spec: &pb::JobSpec) -> Result<(), JobSpecError> {
    let Some(l) = &spec.load else {
        return Err(JobSpecError::new("load", Problem::Empty));
    };
    list_len("protocols", spec.protocols.len(), 1, 2)?;
    for (i, p) in spec.protocols.iter().enumerate() {
        let p = pb::Protocol::try_from(*p).unwrap_or(pb::Protocol::Unspecified);
        if !matches!(p, pb::Protocol::Http | pb::Protocol::Https) {
            return Err(invalid(
                format!("protocols[{i}]"),
                "load jobs use http or https",
            ));
        }
        if let Some(first) = spec.protocols[..i].iter().position(|q| *q == p as i32) {
            return Err(JobSpecError::new(
                format!("protocols[{i}]"),
                Problem::Duplicate { first },
            ));
        }
    }
    list_len("sources", spec.sources.len(), 1, MAX_SOURCES)?;
    list_len("targets", spec.targets.len(), 1, MAX_TARGETS)?;
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
    for (i, e) in spec.sources.iter().enumerate() {
        check_endpoint("sources", i, e, &spec.protocols)?;
    }
    for (i, e) in spec.targets.iter().enumerate() {
        if !matches!(e.endpoint, Some(pb::endpoint::Endpoint::Url(_))) {
            return Err(invalid(
                format!("targets[{i}]"),
                "load jobs send to URLs (http:// or https://), not to agents",
            ));
        }
        check_endpoint("targets", i, e, &spec.protocols)?;
        if let Some(pb::endpoint::Endpoint::Url(u)) = &e.endpoint {
            let authority = u.split_once("://").map_or("", |(_, rest)| {
                rest.split(['/', '?', '#']).next().unwrap_or_default()
            });
            if authority.contains('@') {
                return Err(invalid(
                    format!("targets[{i}]"),
                    "no user@ in a load target (give credentials in load.credentials)",
                ));
            }
        }
    }
    for (field, unset) in [
        ("relays", spec.relays.is_empty()),
        ("interval_ms", spec.interval_ms == 0),
        ("payload_bytes", spec.payload_bytes == 0),
        ("packets", spec.packets == 0),
        ("packet_interval_ms", spec.packet_interval_ms == 0),
        ("count", spec.count == 0),
        (
            "strategy",
            matches!(
                pb::PinglistStrategy::try_from(spec.strategy),
                Ok(pb::PinglistStrategy::Unspecified | pb::PinglistStrategy::Full)
            ),
        ),
        ("k", spec.k == 0),
    ] {
        if !unset {
            return Err(invalid(
                field,
                "not used by load jobs; leave it unset (load has its own schedule)",
            ));
        }
    }
    range("duration_ms", spec.duration_ms, 1, MAX_LOAD_DURATION_MS)?;
    range(
        "timeout_ms",
        spec.timeout_ms.into(),
        1,
        MAX_TIMEOUT_MS.into(),
    )?;
    let model = pb::LoadModel::try_from(l.model).unwrap_or(pb::LoadModel::Unspecified);
    let closed = match model {
        pb::LoadModel::Closed => true,
        pb::LoadModel::Open => false,
        pb::LoadModel::Unspecified => {
            return Err(invalid(
                "load.model",
                "must be closed (workers) or open (arrival rate)",
            ));
        }
    };
    for (field, v) in [
        ("load.start", l.start),
        ("load.step", l.step),
        ("load.max_rate", l.max_rate),
    ] {
        if !v.is_finite() {
            return Err(invalid(field, "must be a finite number"));
        }
    }
    range("load.steps", l.steps.into(), 0, MAX_LOAD_STEPS.into())?;
    let (max, what) = if closed {
        (MAX_LOAD_WORKERS, "workers")
    } else {
        (MAX_LOAD_RATE, "req/s")
    };
    if closed && (l.start.fract() != 0.0 || l.step.fract() != 0.0) {
        return Err(invalid(
            "load.start",
            "closed-model levels are whole workers (start and step integers)",
        ));
    }
    let first_min = if closed { 1.0 } else { MIN_LOAD_RATE };
    if !(first_min..=max).contains(&l.start) {
        return Err(invalid(
            "load.start",
            format!("{} is out of range {first_min}..={max} {what}", l.start),
        ));
    }
    if let Some((i, v)) = load_levels(l)
        .enumerate()
        .find(|(_, v)| !(0.0..=max).contains(v))
    {
        return Err(invalid(
            "load.step",
            format!("step {i}'s level would be {v} {what}, outside 0..={max}"),
        ));
    }
    if l.steps > 1 || l.step_duration_ms != 0 {
        range(
            "load.step_duration_ms",
            l.step_duration_ms.into(),
            MIN_LOAD_STEP_MS.into(),
            MAX_INTERVAL_MS.into(),
        )?;
    }
    if l.rate_per_job && closed {
        return Err(invalid(
            "load.rate_per_job",
            "only the open model has a rate to share",
        ));
    }
    if l.think_time_ms != 0 && !closed {
        return Err(invalid(
            "load.think_time_ms",
            "only the closed model thinks between requests",
        ));
    }
    range(
        "load.think_time_ms",
        l.think_time_ms.into(),
        0,
        MAX_THINK_TIME_MS.into(),
    )?;
    range(
        "load.max_connections",
        l.max_connections.into(),
        0,
        MAX_LOAD_CONNECTIONS.into(),
    )?;
    if !(0.0..=MAX_LOAD_RATE).contains(&l.max_rate) {
        return Err(invalid(
            "load.max_rate",
            format!("{} is out of range 0..={MAX_LOAD_RATE} req/s", l.max_rate),
        ));
    }
    too_long("load.scenario", l.scenario.len(), MAX_SCENARIO_NAME_BYTES)?;
    if !l.scenario.is_empty() && !scenario_name_ok(&l.scenario) {
        return Err(invalid(
            "load.scenario",
            "a scenario name is [A-Za-z0-9_.-], not starting with .",
        ));
    }
    if l.knobs.len() > MAX_KNOBS {
        return Err(JobSpecError::new(
            "load.knobs",
            Problem::TooMany {
                len: l.knobs.len(),
                max: MAX_KNOBS,
            },
        ));
    }
    for (k, v) in &l.knobs {
        let kf = || {
            Cow::Owned(format!(
                "load.knobs.{}",
                k.chars().take(64).collect::<String>()
            ))
        };
        if !knob_name_ok(k) {
            return Err(invalid(
                kf(),
                format!("a knob name is 1 to {MAX_KNOB_NAME_BYTES} bytes of A-Z, a-z, 0-9, _"),
            ));
        }
        too_long(kf(), v.len(), MAX_KNOB_VALUE_BYTES)?;
        if v.chars().any(char::is_control) {
            return Err(invalid(kf(), "a knob value has no control characters"));
        }
    }
    list_len("load.requests", l.requests.len(), 0, MAX_LOAD_REQUESTS)?;
    for (i, r) in l.requests.iter().enumerate() {
        check_load_request(i, r, &l.knobs)?;
    }
    if let Some(c) = &l.credentials {
        if !c.file.is_empty() && !c.secrets_manager_arn.is_empty() {
            return Err(invalid(
                "load.credentials",
                "give file or secrets_manager_arn, not both",
            ));
        }
        if !c.file.is_empty() {
            too_long(
                "load.credentials.file",
                c.file.len(),
                MAX_CREDENTIAL_PATH_BYTES,
            )?;
            if !c.file.starts_with('/') || c.file.contains('\0') {
                return Err(invalid(
                    "load.credentials.file",
                    "an absolute path on each source agent",
                ));
            }
        }
        if !c.secrets_manager_arn.is_empty() {
            too_long(
                "load.credentials.secrets_manager_arn",
                c.secrets_manager_arn.len(),
                MAX_URL_BYTES,
            )?;
            let parts: Vec<&str> = c.secrets_manager_arn.split(':').collect();
            if parts.len() < 7
                || parts[0] != "arn"
                || parts[2] != "secretsmanager"
                || parts[5] != "secret"
            {
                return Err(invalid(
                    "load.credentials.secrets_manager_arn",
                    "an ARN like arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME",
                ));
            }
        }
        if c.file.is_empty() && c.secrets_manager_arn.is_empty() {
            return Err(invalid(
                "load.credentials",
                "name a file or a secrets_manager_arn (or leave credentials out)",
            ));
        }
        if !c.header.is_empty() {
            too_long(
                "load.credentials.header",
                c.header.len(),
                MAX_HEADER_NAME_BYTES,
            )?;
            if !header_name_ok(&c.header) {
                return Err(invalid(
                    "load.credentials.header",
                    "not a header name (an RFC 9110 token)",
                ));
            }
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
            (
                Box::new(|s| s.kind = 0),
                "kind: must be probe, relay or load",
            ),
            (
                Box::new(|s| s.load = Some(pb::LoadSpec::default())),
                "load: only load jobs",
            ),
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

    fn good_load() -> pb::JobSpec {
        pb::JobSpec {
            name: "l".into(),
            kind: pb::JobKind::Load as i32,
            protocols: vec![pb::Protocol::Http as i32],
            sources: vec![pb::Endpoint {
                endpoint: Some(pb::endpoint::Endpoint::Selector("region=a".into())),
            }],
            targets: vec![url("http://api.example:8080/health")],
            timeout_ms: 2000,
            duration_ms: 60_000,
            load: Some(pb::LoadSpec {
                model: pb::LoadModel::Closed as i32,
                start: 10.0,
                step: 10.0,
                steps: 5,
                step_duration_ms: 10_000,
                knobs: [("ID".to_string(), "7".to_string())].into(),
                requests: vec![pb::LoadRequest {
                    method: "POST".into(),
                    path: "/items/{{ID}}".into(),
                    headers: [("X-Id".to_string(), "{{ ID }}".to_string())].into(),
                    body: "{\"id\": {{ID}}}".into(),
                    weight: 3,
                    expect_status: 201,
                    label: "create".into(),
                }],
                credentials: Some(pb::LoadCredentials {
                    file: "/etc/meshlat/keys".into(),
                    header: "X-Api-Key".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn good_load_specs_pass() {
        assert_eq!(validate(&good_load()), Ok(()));
        // Open model, per job, descending to zero, a Secrets Manager ARN, no mix.
        let mut s = good_load();
        let l = s.load.as_mut().expect("load");
        l.model = pb::LoadModel::Open as i32;
        l.start = 2000.0;
        l.step = -500.0;
        l.rate_per_job = true;
        l.max_rate = 5000.0;
        l.requests.clear();
        l.credentials = Some(pb::LoadCredentials {
            secrets_manager_arn: "arn:aws:secretsmanager:eu-west-1:123456789012:secret:k-AbCd"
                .into(),
            ..Default::default()
        });
        assert_eq!(validate(&s), Ok(()));
        assert_eq!(
            load_levels(s.load.as_ref().expect("load")).collect::<Vec<_>>(),
            vec![2000.0, 1500.0, 1000.0, 500.0, 0.0]
        );
    }

    #[test]
    fn bad_load_specs_name_the_field() {
        type Mutate = Box<dyn Fn(&mut pb::JobSpec)>;
        fn l(s: &mut pb::JobSpec) -> &mut pb::LoadSpec {
            s.load.as_mut().expect("load")
        }
        fn r(s: &mut pb::JobSpec) -> &mut pb::LoadRequest {
            &mut l(s).requests[0]
        }
        let cases: Vec<(Mutate, &str)> = vec![
            (Box::new(|s| s.load = None), "load: must not be empty"),
            (
                Box::new(|s| s.protocols = vec![pb::Protocol::Udp as i32]),
                "protocols[0]: load jobs use http or https",
            ),
            (
                Box::new(|s| {
                    s.targets[0] = pb::Endpoint {
                        endpoint: Some(pb::endpoint::Endpoint::Selector("region=b".into())),
                    }
                }),
                "targets[0]: load jobs send to URLs",
            ),
            (
                Box::new(|s| s.targets[0] = url("https://h/")),
                "targets[0]: \"https://h/\" needs protocol PROTOCOL_HTTPS",
            ),
            (
                Box::new(|s| s.targets[0] = url("http://u:p@h/")),
                "targets[0]: no user@ in a load target",
            ),
            (
                Box::new(|s| s.interval_ms = 1000),
                "interval_ms: not used by load jobs",
            ),
            (Box::new(|s| s.count = 5), "count: not used by load jobs"),
            (
                Box::new(|s| s.strategy = pb::PinglistStrategy::KRandom as i32),
                "strategy: not used",
            ),
            (
                Box::new(|s| s.duration_ms = 0),
                "duration_ms: 0 is out of range 1..=86400000",
            ),
            (
                Box::new(|s| s.duration_ms = MAX_LOAD_DURATION_MS + 1),
                "duration_ms: 86400001 is out of range",
            ),
            (
                Box::new(|s| s.timeout_ms = 0),
                "timeout_ms: 0 is out of range",
            ),
            (Box::new(|s| l(s).model = 0), "load.model: must be closed"),
            (
                Box::new(|s| l(s).start = f64::NAN),
                "load.start: must be a finite number",
            ),
            (
                Box::new(|s| l(s).step = f64::INFINITY),
                "load.step: must be a finite number",
            ),
            (
                Box::new(|s| l(s).start = 0.5),
                "load.start: closed-model levels are whole workers",
            ),
            (
                Box::new(|s| l(s).start = 0.0),
                "load.start: 0 is out of range 1..=10000 workers",
            ),
            (
                Box::new(|s| l(s).start = 20_000.0),
                "load.start: 20000 is out of range",
            ),
            (
                Box::new(|s| l(s).step = -5.0),
                "load.step: step 3's level would be -5 workers",
            ),
            (
                Box::new(|s| l(s).step = 5000.0),
                "load.step: step 2's level would be 10010 workers",
            ),
            (
                Box::new(|s| l(s).steps = 1001),
                "load.steps: 1001 is out of range 0..=1000",
            ),
            (
                Box::new(|s| l(s).step_duration_ms = 10),
                "load.step_duration_ms: 10 is out of range 1000..=",
            ),
            (
                Box::new(|s| l(s).rate_per_job = true),
                "load.rate_per_job: only the open model",
            ),
            (
                Box::new(|s| {
                    l(s).model = pb::LoadModel::Open as i32;
                    l(s).think_time_ms = 5;
                }),
                "load.think_time_ms: only the closed model",
            ),
            (
                Box::new(|s| {
                    l(s).model = pb::LoadModel::Open as i32;
                    l(s).start = 0.01;
                }),
                "load.start: 0.01 is out of range 0.1..=1000000 req/s",
            ),
            (
                Box::new(|s| l(s).max_connections = 200_000),
                "load.max_connections: 200000 is out of range",
            ),
            (
                Box::new(|s| l(s).max_rate = -1.0),
                "load.max_rate: -1 is out of range",
            ),
            (
                Box::new(|s| l(s).scenario = "../etc/passwd".into()),
                "load.scenario: a scenario name is",
            ),
            (
                Box::new(|s| l(s).scenario = "s".repeat(200)),
                "load.scenario: 200 bytes exceed the limit of 128",
            ),
            (
                Box::new(|s| {
                    l(s).knobs.insert("bad name".into(), "1".into());
                }),
                "load.knobs.bad name: a knob name is",
            ),
            (
                Box::new(|s| {
                    l(s).knobs.insert("X".into(), "a\nb".into());
                }),
                "load.knobs.X: a knob value has no control",
            ),
            (
                Box::new(|s| {
                    let x = l(s).requests[0].clone();
                    l(s).requests = vec![x; 65];
                }),
                "load.requests: 65 entries exceed the limit of 64",
            ),
            (
                Box::new(|s| r(s).method = "TRACE".into()),
                "load.requests[0].method: \"TRACE\": use GET",
            ),
            (
                Box::new(|s| r(s).path = "items".into()),
                "load.requests[0].path: must start with /",
            ),
            (
                Box::new(|s| r(s).path = "/a b".into()),
                "load.requests[0].path: no spaces",
            ),
            (
                Box::new(|s| r(s).path = "/{{NOPE}}".into()),
                "load.requests[0].path: {{NOPE}} names no knob",
            ),
            (
                Box::new(|s| r(s).path = "/{{ID".into()),
                "load.requests[0].path: \"{{\" without a closing",
            ),
            (
                Box::new(|s| r(s).body = "{{a-b}}".into()),
                "load.requests[0].body: {{a-b}}: a knob name is",
            ),
            (
                Box::new(|s| {
                    r(s).headers.insert("Host".into(), "evil".into());
                }),
                "load.requests[0].headers.Host: set by the agent",
            ),
            (
                Box::new(|s| {
                    r(s).headers.insert("Bad Name".into(), "v".into());
                }),
                "load.requests[0].headers.Bad Name: not a header name",
            ),
            (
                Box::new(|s| {
                    r(s).headers
                        .insert("X-A".into(), "v\r\nX-Injected: 1".into());
                }),
                "load.requests[0].headers.X-A: a header value has no CR",
            ),
            (
                Box::new(|s| r(s).weight = 2_000_000),
                "load.requests[0].weight: 2000000 is out of range",
            ),
            (
                Box::new(|s| r(s).expect_status = 700),
                "load.requests[0].expect_status: 700 is not 0",
            ),
            (
                Box::new(|s| r(s).label = "l".repeat(65)),
                "load.requests[0].label: 65 bytes",
            ),
            (
                Box::new(|s| {
                    l(s).credentials.as_mut().expect("c").secrets_manager_arn =
                        "arn:aws:secretsmanager:r:1:secret:x".into()
                }),
                "load.credentials: give file or secrets_manager_arn, not both",
            ),
            (
                Box::new(|s| l(s).credentials.as_mut().expect("c").file = "keys.txt".into()),
                "load.credentials.file: an absolute path",
            ),
            (
                Box::new(|s| {
                    let c = l(s).credentials.as_mut().expect("c");
                    c.file.clear();
                    c.secrets_manager_arn = "arn:aws:s3:::bucket".into();
                }),
                "load.credentials.secrets_manager_arn: an ARN like",
            ),
            (
                Box::new(|s| l(s).credentials.as_mut().expect("c").file.clear()),
                "load.credentials: name a file",
            ),
            (
                Box::new(|s| l(s).credentials.as_mut().expect("c").header = "X Key".into()),
                "load.credentials.header: not a header name",
            ),
        ];
        for (mutate, want) in cases {
            let mut s = good_load();
            mutate(&mut s);
            let err = validate(&s).expect_err(want).to_string();
            assert!(err.contains(want), "got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn templates_name_knobs() {
        assert_eq!(template_refs("/a/{{X}}/{{ y_1 }}"), Ok(vec!["X", "y_1"]));
        assert_eq!(template_refs("plain {"), Ok(vec![]));
        assert!(template_refs("{{}}").is_err());
        assert!(template_refs("{{a").is_err());
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
