//! [`DomainError`]: what the registry refuses and why, as values the gRPC and REST layers map to
//! their statuses ([`crate::grpc::status`], [`crate::rest`]).

use meshlat_proto::job::JobSpecError;

use crate::store::StoreError;

/// A domain failure; [`crate::grpc::status`] and [`crate::rest`] map it to their status codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    /// The request is invalid; `field` is the field path.
    #[error("{field}: {problem}")]
    Invalid {
        /// Field path, e.g. `hello.region`.
        field: &'static str,
        /// What is wrong.
        problem: Problem,
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
            DomainError::Invalid { field, .. } => Some((*field).to_string()),
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

/// What is wrong with a field of a request, Hello or peer directory ([`DomainError::Invalid`]);
/// its message follows the field path.
///
/// The limits here are told in the message only: [`DomainError::limit`] reports those of a spec
/// ([`DomainError::Spec`]) and of the caps ([`DomainError::Exhausted`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// A required part is absent from the request.
    #[error("must be given")]
    Missing,
    /// A required string is empty.
    #[error("must not be empty")]
    Empty,
    /// An id outside 1 to `max` bytes.
    #[error("must be 1 to {max} bytes")]
    IdLength {
        /// Most bytes.
        max: usize,
    },
    /// A string longer than its limit.
    #[error("{len} bytes exceed the limit of {max}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A list longer than its limit.
    #[error("{len} entries exceed the limit of {max}")]
    TooMany {
        /// Its entries.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A `full` job whose mesh exceeds `--max-full-mesh`.
    #[error(
        "a full mesh of {size} agents exceeds the maximum of {max} (--max-full-mesh); use per-region or k-random"
    )]
    FullMeshTooLarge {
        /// Agents the job would involve.
        size: usize,
        /// `--max-full-mesh`.
        max: usize,
    },
    /// A peer directory claiming this controller's region.
    #[error("{region:?} is this controller's own region")]
    OwnRegion {
        /// The region claimed.
        region: String,
    },
    /// A key of the wrong length.
    #[error("{len} bytes; an Ed25519 public key is {want}")]
    KeyLength {
        /// Its length in bytes.
        len: usize,
        /// The length of a key.
        want: usize,
    },
    /// A rule the value breaks, stated in full (e.g. `must be agent or region`).
    #[error("{0}")]
    Rule(&'static str),
}

/// [`DomainError::Invalid`] for `field`.
pub(super) fn invalid(field: &'static str, problem: Problem) -> DomainError {
    DomainError::Invalid { field, problem }
}
