//! The controller session as the stats server's `GET /status` shows it: whether the agent is
//! connected, its id, and the controller's last refusal (code and reason), so an operator sees
//! *why* an agent measures nothing without reading its log — e.g. an advertised address the
//! controller does not accept (`permission_denied`, its `--agent-cidr` check).
//!
//! One process-wide value, like [`crate::metrics`]: the session task writes, the stats server
//! reads. `agent serve` and `agent probe` have no controller; their `/status` says so.

use std::sync::{LazyLock, Mutex};

/// The controller's last refusal of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The gRPC status code in snake case (`permission_denied`, `unauthenticated`, ...).
    pub code: String,
    /// The controller's message (e.g. which advertised address and why).
    pub reason: String,
    /// When, in Unix milliseconds.
    pub unix_ms: i64,
}

#[derive(Debug, Default)]
struct ControlStatus {
    /// `agent run` started a session task.
    controlled: bool,
    connected: bool,
    agent_id: Option<String>,
    refused: Option<Refusal>,
}

static STATUS: LazyLock<Mutex<ControlStatus>> = LazyLock::new(Mutex::default);

fn with<T>(f: impl FnOnce(&mut ControlStatus) -> T) -> T {
    f(&mut STATUS.lock().unwrap_or_else(|e| e.into_inner()))
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The session task started (`agent run`).
pub fn started(agent_id: Option<String>) {
    with(|s| {
        s.controlled = true;
        s.agent_id = agent_id;
    });
}

/// The controller welcomed the session as `agent_id`: any earlier refusal is over.
pub fn connected(agent_id: &str) {
    with(|s| {
        s.connected = true;
        s.agent_id = Some(agent_id.to_string());
        s.refused = None;
    });
}

/// The session ended; `refusal` is the controller's status if it refused the agent.
pub fn lost(refusal: Option<&tonic::Status>) {
    with(|s| {
        s.connected = false;
        if let Some(st) = refusal {
            s.refused = Some(Refusal {
                code: code_name(st.code()).into(),
                reason: st.message().to_string(),
                unix_ms: unix_ms(),
            });
        }
    });
}

/// The last refusal, if the agent has not been welcomed since.
pub fn refusal() -> Option<Refusal> {
    with(|s| s.refused.clone())
}

/// Whether a status is the controller refusing this agent (as opposed to a broken stream):
/// it will refuse again until the agent's token, identity, address or configuration change.
pub fn is_refusal(s: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        s.code(),
        Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::ResourceExhausted
            | Code::FailedPrecondition
    )
}

/// `GET /status` as JSON: `{"controlled", "connected", "agent_id", "refused": null |
/// {"code", "reason", "unix_ms"}}`.
pub fn json() -> serde_json::Value {
    with(|s| {
        serde_json::json!({
            "controlled": s.controlled,
            "connected": s.connected,
            "agent_id": s.agent_id,
            "refused": s.refused.as_ref().map(|r| serde_json::json!({
                "code": r.code,
                "reason": r.reason,
                "unix_ms": r.unix_ms,
            })),
        })
    })
}

fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code;
    match c {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_shows_until_the_next_welcome() {
        started(Some("a1".into()));
        lost(Some(&tonic::Status::permission_denied(
            "hello.endpoints[0].address \"10.0.0.9:7710\": not this agent's address",
        )));
        let v = json();
        assert_eq!(v["controlled"], true);
        assert_eq!(v["connected"], false);
        assert_eq!(v["refused"]["code"], "permission_denied");
        assert!(
            v["refused"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("10.0.0.9:7710")),
            "{v}"
        );
        // A broken stream is no refusal and keeps the last one.
        lost(None);
        assert!(refusal().is_some());
        connected("a1");
        let v = json();
        assert_eq!(v["connected"], true);
        assert!(v["refused"].is_null(), "{v}");
        assert!(is_refusal(&tonic::Status::permission_denied("")));
        assert!(!is_refusal(&tonic::Status::unavailable("")));
    }
}
