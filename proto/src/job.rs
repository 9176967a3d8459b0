//! Job-spec validation shared by controller and agent.
//!
//! The controller refuses a bad [`pb::JobSpec`] with the field path and the
//! reason ([`JobSpecError`]); the agent runs the same checks on what it is sent.

use crate::pb;

/// Smallest allowed interval between samples of one pair.
pub const MIN_INTERVAL_MS: u32 = 10;
/// Largest train an agent accepts.
pub const MAX_PACKETS: u32 = 10_000;
/// Default packets per train.
pub const DEFAULT_PACKETS: u32 = 10;
/// Largest UDP/QUIC payload (fits a 1500-byte MTU with IPv6 and UDP headers).
pub const MAX_PAYLOAD_BYTES: u32 = 1_452;

/// Why a job spec was refused. Each variant names the field path.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum JobSpecError {
    /// A required field is empty.
    #[error("{field}: must not be empty")]
    Empty {
        /// Field path.
        field: &'static str,
    },
    /// A field is out of its allowed range.
    #[error("{field}: {value} is out of range ({range})")]
    OutOfRange {
        /// Field path.
        field: String,
        /// Given value.
        value: u64,
        /// Allowed range, human-readable.
        range: String,
    },
    /// timeout_ms must be below interval_ms.
    #[error("timeout_ms ({timeout}) must be less than interval_ms ({interval})")]
    TimeoutNotBelowInterval {
        /// Given timeout.
        timeout: u32,
        /// Given interval.
        interval: u32,
    },
    /// A field has a value not allowed in this context.
    #[error("{field}: {reason}")]
    Invalid {
        /// Field path.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// Checks a job spec, returning the first problem found.
///
/// # Errors
///
/// [`JobSpecError`] naming the offending field.
pub fn validate(spec: &pb::JobSpec) -> Result<(), JobSpecError> {
    let kind = pb::JobKind::try_from(spec.kind).unwrap_or(pb::JobKind::Unspecified);
    if kind == pb::JobKind::Unspecified {
        return Err(JobSpecError::Invalid {
            field: "kind".into(),
            reason: "must be probe or relay".into(),
        });
    }
    if spec.protocols.is_empty() {
        return Err(JobSpecError::Empty { field: "protocols" });
    }
    for (i, p) in spec.protocols.iter().enumerate() {
        let p = pb::Protocol::try_from(*p).unwrap_or(pb::Protocol::Unspecified);
        if p == pb::Protocol::Unspecified {
            return Err(JobSpecError::Invalid {
                field: format!("protocols[{i}]"),
                reason: "unknown protocol".into(),
            });
        }
        if kind == pb::JobKind::Relay && p != pb::Protocol::Udp {
            return Err(JobSpecError::Invalid {
                field: format!("protocols[{i}]"),
                reason: format!(
                    "relay jobs measure udp (relays forward meshlat UDP packets only), not {}",
                    p.as_str_name()
                ),
            });
        }
    }
    if spec.sources.is_empty() {
        return Err(JobSpecError::Empty { field: "sources" });
    }
    if spec.targets.is_empty() {
        return Err(JobSpecError::Empty { field: "targets" });
    }
    if kind == pb::JobKind::Relay && spec.relays.is_empty() {
        return Err(JobSpecError::Empty { field: "relays" });
    }
    for (name, list) in [
        ("sources", &spec.sources),
        ("targets", &spec.targets),
        ("relays", &spec.relays),
    ] {
        for (i, e) in list.iter().enumerate() {
            match &e.endpoint {
                None => {
                    return Err(JobSpecError::Empty {
                        field: leak(format!("{name}[{i}]")),
                    });
                }
                Some(
                    pb::endpoint::Endpoint::AgentId(s)
                    | pb::endpoint::Endpoint::Selector(s)
                    | pb::endpoint::Endpoint::Url(s),
                ) if s.trim().is_empty() => {
                    return Err(JobSpecError::Empty {
                        field: leak(format!("{name}[{i}]")),
                    });
                }
                Some(pb::endpoint::Endpoint::Url(_)) if name != "targets" => {
                    return Err(JobSpecError::Invalid {
                        field: format!("{name}[{i}]"),
                        reason: "only targets may be external URLs".into(),
                    });
                }
                _ => {}
            }
        }
    }
    if spec.interval_ms < MIN_INTERVAL_MS {
        return Err(JobSpecError::OutOfRange {
            field: "interval_ms".into(),
            value: spec.interval_ms.into(),
            range: format!(">= {MIN_INTERVAL_MS}"),
        });
    }
    if spec.timeout_ms == 0 || spec.timeout_ms >= spec.interval_ms {
        return Err(JobSpecError::TimeoutNotBelowInterval {
            timeout: spec.timeout_ms,
            interval: spec.interval_ms,
        });
    }
    if spec.packets > MAX_PACKETS {
        return Err(JobSpecError::OutOfRange {
            field: "packets".into(),
            value: spec.packets.into(),
            range: format!("0..={MAX_PACKETS}"),
        });
    }
    if spec.payload_bytes > MAX_PAYLOAD_BYTES {
        return Err(JobSpecError::OutOfRange {
            field: "payload_bytes".into(),
            value: spec.payload_bytes.into(),
            range: format!("0..={MAX_PAYLOAD_BYTES}"),
        });
    }
    Ok(())
}

/// Field paths are few and short-lived in errors; keeping `Empty` a `&'static str` keeps the
/// common case allocation-free, so indexed paths are leaked (bounded by the number of bad specs
/// a human submits).
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
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

    #[test]
    fn good_spec_passes() {
        assert_eq!(validate(&good()), Ok(()));
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
                "timeout_ms (1000) must be less than interval_ms (1000)",
            ),
            (
                Box::new(|s| s.interval_ms = 1),
                "interval_ms: 1 is out of range",
            ),
            (Box::new(|s| s.packets = 1_000_000), "packets: 1000000"),
            (Box::new(|s| s.kind = 0), "kind: must be probe or relay"),
            (
                Box::new(|s| s.targets[0].endpoint = None),
                "targets[0]: must not be empty",
            ),
            (
                Box::new(|s| {
                    s.sources[0].endpoint = Some(pb::endpoint::Endpoint::Url("http://x".into()))
                }),
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
        ];
        for (mutate, want) in cases {
            let mut s = good();
            mutate(&mut s);
            let err = validate(&s).expect_err(want).to_string();
            assert!(err.contains(want), "got {err:?}, want {want:?}");
        }
    }
}
