//! The audit log: one `tracing` event with target `audit` for every state-changing operator call
//! (REST and gRPC), naming the credential, the source address, the action, the object and the
//! outcome. Select it with `RUST_LOG=audit=info` or by target in JSON logs (`--log-json`).
//!
//! ```text
//! INFO audit: Operator call. credential=op-ci remote=10.0.3.7:51234 action=job.start object=7d3f.. outcome=ok
//! ```
//!
//! REST calls refused for a missing or wrong credential are logged with `credential="-"` and
//! `outcome="unauthenticated"`; gRPC calls refused by the credential interceptor never reach a
//! handler and are logged there (a warning with the source address).

use std::net::SocketAddr;

/// The authenticated caller of an operator call, put in the request's extensions by the
/// credential check.
#[derive(Clone, Debug, PartialEq)]
pub struct Caller {
    /// Credential name.
    pub credential: String,
}

/// Logs one state-changing operator call. `outcome` is `"ok"` or the error code
/// (`invalid_argument`, `not_found`, ...).
pub fn record(
    credential: Option<&str>,
    remote: Option<SocketAddr>,
    action: &str,
    object: &str,
    outcome: &str,
) {
    let remote = remote.map_or_else(|| "-".to_string(), |a| a.to_string());
    tracing::info!(
        target: "audit",
        message = "Operator call.",
        credential = credential.unwrap_or("-"),
        %remote,
        action,
        object,
        outcome,
    );
}
