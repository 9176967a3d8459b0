//! gRPC services: plain structs holding the shared [`Registry`](crate::registry::Registry);
//! handlers convert the request, call the domain layer and convert the reply (STYLE §9).
//!
//! - [`agent`][]: `AgentService.Connect`, one bidirectional stream per agent.
//! - [`inbound`][]: an agent session's incoming messages, with no buffer outliving its message.
//! - [`operator`][]: `OperatorService`.
//! - [`federation`][]: `FederationService` (peer controllers).
//! - [`status`][]: domain errors to `tonic::Status`.
//! - [`auth`][]: interceptors checking the join token and operator credentials on every call.

pub mod agent;
pub mod federation;
pub mod inbound;
pub mod operator;
pub mod status;

/// Interceptors: every call to the agent and operator services carries a credential.
pub mod auth {
    use std::sync::Arc;

    use tonic::{Request, Status};

    use crate::auth::{Credentials, bearer};

    fn authorization<T>(req: &Request<T>) -> Option<&str> {
        req.metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
    }

    /// Checks an agent's join token.
    pub fn agent(
        creds: Arc<Credentials>,
    ) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
        move |req| match authorization(&req) {
            Some(t) if creds.check_agent(t) => Ok(req),
            _ => {
                tracing::warn!(message = "Agent call refused: bad join token.", remote = ?req.remote_addr());
                Err(super::status::unauthenticated("join token"))
            }
        }
    }

    /// Checks a peer controller's federation secret.
    pub fn federation(
        secret: crate::auth::FederationSecret,
    ) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
        move |req| match authorization(&req) {
            Some(s) if secret.check(s) => Ok(req),
            _ => {
                tracing::warn!(message = "Federation call refused: bad secret.", remote = ?req.remote_addr());
                Err(super::status::unauthenticated("federation secret"))
            }
        }
    }

    /// Checks an operator's `key:secret` credential.
    pub fn operator(
        creds: Arc<Credentials>,
    ) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
        move |mut req| match authorization(&req).and_then(|c| creds.check_operator(c)) {
            Some(credential) => {
                // Handlers name the caller in the audit log.
                req.extensions_mut()
                    .insert(crate::audit::Caller { credential });
                Ok(req)
            }
            None => {
                tracing::warn!(message = "Operator call refused: bad credential.", remote = ?req.remote_addr());
                Err(super::status::unauthenticated(
                    "operator credential key:secret",
                ))
            }
        }
    }
}
