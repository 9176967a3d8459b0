//! [`DomainError`]: what the registry refuses and why, as values the gRPC and REST layers map to
//! their statuses ([`crate::grpc::status`], [`crate::rest`]).

use meshlat_proto::job::JobSpecError;

use crate::store::StoreError;

/// A domain failure; [`crate::grpc::status`] and [`crate::rest`] map it to their status codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    /// The request is invalid; `field` is the field path.
    #[error("{field}: {reason}")]
    Invalid {
        /// Field path, e.g. `spec.timeout_ms`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A job spec failed [`meshlat_proto::job::validate`]; its field path is relative to the
    /// spec ([`DomainError::field`] gives `spec.<path>`).
    #[error("{}: {}", spec_field(.0), .0.problem)]
    Spec(JobSpecError),
    /// A cap of [`crate::limits`] is reached.
    #[error("{field}: {reason} (limit {limit}, {flag})")]
    Exhausted {
        /// What is counted, e.g. `jobs`.
        field: &'static str,
        /// The cap.
        limit: u64,
        /// The flag that sets it.
        flag: &'static str,
        /// What happened.
        reason: String,
    },
    /// No such job or agent.
    #[error("{what} {id:?} not found")]
    NotFound {
        /// `job` or `agent`.
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// `expected_version` does not match the stored version.
    #[error("job {id}: expected version {expected}, stored version is {actual}")]
    VersionMismatch {
        /// Job id.
        id: String,
        /// Version the caller expected.
        expected: u64,
        /// Stored version.
        actual: u64,
    },
    /// The job is stopped and cannot be updated.
    #[error("job {id} is stopped")]
    Stopped {
        /// Job id.
        id: String,
    },
    /// The state store failed; the change was not made.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `spec.<path>` for a spec error (`spec` for the whole spec).
fn spec_field(e: &JobSpecError) -> String {
    if e.field.is_empty() {
        "spec".into()
    } else {
        format!("spec.{}", e.field)
    }
}

impl DomainError {
    /// The field path at fault, for bad input.
    pub fn field(&self) -> Option<String> {
        match self {
            DomainError::Invalid { field, .. } => Some(field.clone()),
            DomainError::Spec(e) => Some(spec_field(e)),
            DomainError::Exhausted { field, .. } => Some((*field).to_string()),
            _ => None,
        }
    }

    /// The limit crossed, for bad input or a cap.
    pub fn limit(&self) -> Option<u64> {
        match self {
            DomainError::Spec(e) => e.limit(),
            DomainError::Exhausted { limit, .. } => Some(*limit),
            _ => None,
        }
    }
}

pub(super) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> DomainError {
    DomainError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}
