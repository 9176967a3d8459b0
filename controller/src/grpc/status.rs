//! The one place domain errors become `tonic::Status` (STYLE §8).
//!
//! | error | code |
//! | --- | --- |
//! | [`DomainError::Invalid`], [`DomainError::Spec`] | `InvalidArgument`, message `field: reason`, field also in metadata `x-meshlat-field` (and the limit crossed, if any, in `x-meshlat-limit`) |
//! | [`DomainError::Exhausted`] | `ResourceExhausted`, as above (a cap of [`crate::limits`]) |
//! | [`DomainError::NotFound`] | `NotFound` |
//! | [`DomainError::VersionMismatch`], [`DomainError::Stopped`] | `FailedPrecondition` |
//! | [`DomainError::Store`] | `Internal` (logged with context; details not sent) |
//! | a missing or wrong credential | `Unauthenticated` |
//! | [`AddressRefused`] (an advertised address, [`crate::address_policy`]) | `PermissionDenied`, message `hello.endpoints[N].address "ADDR": reason`, field in `x-meshlat-field` |
//! | an agent's join token revoked or expired ([`crate::auth::TokenRefusal`]), or its client certificate not valid for this CA | `Unauthenticated`, with the reason |
//! | an agent session refused by the identity rules ([`crate::identity::Refusal`]) | `PermissionDenied`; `FailedPrecondition` for an agent too old to hold an identity under `--require-agent-identity` (told to upgrade) |
//! | [`CredentialError::BadName`] | `InvalidArgument` (field `name`) |
//! | [`CredentialError::Exists`] | `AlreadyExists` |
//! | [`CredentialError::NotFound`] | `NotFound` |
//! | [`CredentialError::Last`] | `FailedPrecondition` |
//! | [`CredentialError::Store`] | `Internal` (logged) |
//! | [`LookupError::NotFound`] (a scenario) | `NotFound` |
//! | [`LookupError::Invalid`] (a scenario whose file is invalid) | `FailedPrecondition`, naming file, line and problem |

use tonic::Status;

use crate::address_policy::AddressRefused;
use crate::auth::CredentialError;
use crate::registry::DomainError;
use crate::scenarios::LookupError;

/// Maps a failed scenario lookup to a gRPC status.
pub fn from_scenario_lookup(e: LookupError) -> Status {
    match e {
        LookupError::NotFound { .. } => Status::not_found(e.to_string()),
        _ => Status::failed_precondition(e.to_string()),
    }
}

/// Maps a domain error to a gRPC status.
pub fn from_domain(e: DomainError) -> Status {
    match &e {
        DomainError::Invalid { .. } | DomainError::Spec(_) | DomainError::Exhausted { .. } => {
            let mut s = if matches!(e, DomainError::Exhausted { .. }) {
                Status::resource_exhausted(e.to_string())
            } else {
                Status::invalid_argument(e.to_string())
            };
            if let Some(Ok(v)) = e.field().map(|f| f.parse()) {
                s.metadata_mut().insert("x-meshlat-field", v);
            }
            if let Some(Ok(v)) = e.limit().map(|l| l.to_string().parse()) {
                s.metadata_mut().insert("x-meshlat-limit", v);
            }
            s
        }
        DomainError::NotFound { .. } => Status::not_found(e.to_string()),
        DomainError::VersionMismatch { .. } | DomainError::Stopped { .. } => {
            Status::failed_precondition(e.to_string())
        }
        DomainError::Store(_) => {
            tracing::error!(message = "Internal error.", error = %e);
            Status::internal("internal error: the state store failed; see the controller log")
        }
    }
}

/// Maps a refused advertised address to a gRPC status.
pub fn from_address(e: AddressRefused) -> Status {
    let mut s = Status::permission_denied(e.to_string());
    if let Ok(v) = e.field().parse() {
        s.metadata_mut().insert("x-meshlat-field", v);
    }
    s
}

/// Maps a refused credential change to a gRPC status.
pub fn from_credential(e: CredentialError) -> Status {
    match &e {
        CredentialError::BadName { .. } => {
            let mut s = Status::invalid_argument(e.to_string());
            s.metadata_mut().insert(
                "x-meshlat-field",
                tonic::metadata::MetadataValue::from_static("name"),
            );
            s
        }
        CredentialError::Exists { .. } => Status::already_exists(e.to_string()),
        CredentialError::NotFound { .. } => Status::not_found(e.to_string()),
        CredentialError::Last { .. } => Status::failed_precondition(e.to_string()),
        CredentialError::Store(_) => {
            tracing::error!(message = "Internal error.", error = %e);
            Status::internal(
                "internal error: the credentials file could not be written; see the controller log",
            )
        }
    }
}

/// The audit outcome of a call: `ok` or the status code in snake case.
pub fn outcome<T>(r: &Result<T, Status>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(s) => match s.code() {
            tonic::Code::InvalidArgument => "invalid_argument",
            tonic::Code::NotFound => "not_found",
            tonic::Code::AlreadyExists => "already_exists",
            tonic::Code::FailedPrecondition => "failed_precondition",
            tonic::Code::Unauthenticated => "unauthenticated",
            tonic::Code::ResourceExhausted => "resource_exhausted",
            _ => "internal",
        },
    }
}

/// A refused credential.
pub fn unauthenticated(what: &str) -> Status {
    Status::unauthenticated(format!(
        "missing or invalid {what}: send metadata `authorization: Bearer <{what}>`"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Problem;
    use tonic::Code;

    #[test]
    fn codes() {
        let s = from_domain(DomainError::Invalid {
            field: "spec.timeout_ms",
            problem: Problem::Rule("too big"),
        });
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "spec.timeout_ms: too big");
        assert_eq!(
            s.metadata()
                .get("x-meshlat-field")
                .and_then(|v| v.to_str().ok()),
            Some("spec.timeout_ms")
        );
        let s = from_domain(DomainError::NotFound {
            what: "job",
            id: "x".into(),
        });
        assert_eq!(s.code(), Code::NotFound);
        let s = from_domain(DomainError::VersionMismatch {
            id: "x".into(),
            expected: 1,
            actual: 2,
        });
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(unauthenticated("x").code(), Code::Unauthenticated);
        let s = from_domain(DomainError::Exhausted {
            field: "jobs",
            limit: 3,
            flag: "--max-jobs",
            reason: "3 jobs are stored".into(),
        });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.message(), "jobs: 3 jobs are stored (limit 3, --max-jobs)");
        assert_eq!(
            s.metadata()
                .get("x-meshlat-limit")
                .and_then(|v| v.to_str().ok()),
            Some("3")
        );
    }
}
