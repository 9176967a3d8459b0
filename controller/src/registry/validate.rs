//! Bounds on what reaches the registry from outside the operator API: stored and peer jobs, Hellos,
//! and peer directory entries ([`crate::limits`]).

use meshlat_proto::pb;

use super::DomainError;
use super::error::{Problem, invalid};
use crate::limits;

/// A load job whose target is not on `--load-allow`, as a spec error naming the target.
pub(super) fn load_refused(e: crate::load_policy::LoadRefused) -> DomainError {
    DomainError::Spec(meshlat_proto::job::JobSpecError {
        field: format!("targets[{}]", e.index).into(),
        problem: meshlat_proto::job::Problem::Invalid(e.reason.into()),
    })
}

/// Why a stored or peer job cannot be scheduled: its field path and problem (a load job also
/// against this controller's `--load-allow`).
pub(super) fn check_job(
    job: &pb::Job,
    load_allow: &crate::load_policy::LoadAllow,
) -> Result<(), DomainError> {
    if job.id.trim().is_empty() || job.id.len() > meshlat_proto::job::MAX_AGENT_ID_BYTES {
        return Err(invalid(
            "id",
            Problem::IdLength {
                max: meshlat_proto::job::MAX_AGENT_ID_BYTES,
            },
        ));
    }
    let spec = job
        .spec
        .as_ref()
        .ok_or_else(|| invalid("spec", Problem::Rule("missing")))?;
    meshlat_proto::job::validate(spec).map_err(DomainError::Spec)?;
    load_allow.check(spec).map_err(load_refused)
}

/// Bounds a Hello's lists and strings ([`crate::limits`]).
pub(super) fn check_hello(h: &pb::Hello) -> Result<(), DomainError> {
    check_agent_fields(
        [&h.region, &h.az, &h.location, &h.version],
        &h.endpoints,
        &h.capabilities,
    )
}

/// [`check_hello`]'s checks: region, az, location, version; endpoints; capabilities.
fn check_agent_fields(
    labels: [&str; 4],
    endpoints: &[pb::ResponderEndpoint],
    capabilities: &[String],
) -> Result<(), DomainError> {
    let long = |field: &'static str, v: &str| {
        (v.len() > limits::MAX_HELLO_FIELD_BYTES).then(|| {
            invalid(
                field,
                Problem::TooLong {
                    len: v.len(),
                    max: limits::MAX_HELLO_FIELD_BYTES,
                },
            )
        })
    };
    for (field, v) in [
        "hello.region",
        "hello.az",
        "hello.location",
        "hello.version",
    ]
    .into_iter()
    .zip(labels)
    {
        if let Some(e) = long(field, v) {
            return Err(e);
        }
    }
    if endpoints.len() > limits::MAX_HELLO_ENDPOINTS {
        return Err(invalid(
            "hello.endpoints",
            Problem::TooMany {
                len: endpoints.len(),
                max: limits::MAX_HELLO_ENDPOINTS,
            },
        ));
    }
    if capabilities.len() > limits::MAX_HELLO_CAPABILITIES {
        return Err(invalid(
            "hello.capabilities",
            Problem::TooMany {
                len: capabilities.len(),
                max: limits::MAX_HELLO_CAPABILITIES,
            },
        ));
    }
    for e in endpoints {
        if let Some(e) = long("hello.endpoints.address", &e.address) {
            return Err(e);
        }
    }
    for c in capabilities {
        if let Some(e) = long("hello.capabilities", c) {
            return Err(e);
        }
    }
    Ok(())
}

/// A peer's directory entry passes the same bounds as a Hello.
pub(super) fn check_stored_agent(a: &pb::StoredAgent) -> Result<(), DomainError> {
    let Some(i) = &a.info else {
        return Err(invalid("directory.agent", Problem::Rule("missing info")));
    };
    if i.id.len() > meshlat_proto::job::MAX_AGENT_ID_BYTES {
        return Err(invalid("directory.agent.id", Problem::Rule("too long")));
    }
    check_agent_fields(
        [&i.region, &i.az, &i.location, &i.version],
        &a.endpoints,
        &a.capabilities,
    )
}
