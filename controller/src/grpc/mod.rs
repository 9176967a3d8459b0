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
    use crate::metrics::{AuthFailure, auth_failure};

    fn authorization<T>(req: &Request<T>) -> Option<&str> {
        req.metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
    }

    /// Authenticates an agent: by its client certificate when the connection presented one
    /// (checked against the CA, [`crate::identity::AgentCa::verify`]; the join token is then
    /// not needed nor looked at), else by its join token. Adds the
    /// [`AgentProof`](crate::identity::AgentProof) to the request for the service, which decides
    /// which id the session may speak for.
    pub fn agent(
        creds: Arc<Credentials>,
        ca: Option<Arc<crate::identity::AgentCa>>,
    ) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
        use crate::identity::AgentProof;
        move |mut req| {
            let certs = req.peer_certs().filter(|c| !c.is_empty());
            if let (Some(ca), Some(certs)) = (&ca, certs) {
                return match ca.verify(&certs, std::time::SystemTime::now()) {
                    Ok(p) => {
                        req.extensions_mut().insert(AgentProof::Certificate(p));
                        Ok(req)
                    }
                    Err(error) => {
                        tracing::warn!(message = "Agent call refused: bad client certificate.", %error, remote = ?req.remote_addr());
                        auth_failure("grpc", AuthFailure::ClientCertificate);
                        Err(Status::unauthenticated(error.to_string()))
                    }
                };
            }
            match authorization(&req).map(|t| (t, creds.check_join_token(t))) {
                Some((t, Ok(name))) => {
                    let token_id = super::agent::join_token_id(t);
                    req.extensions_mut()
                        .insert(AgentProof::Token { name, token_id });
                    Ok(req)
                }
                Some((_, Err(refusal))) => {
                    tracing::warn!(message = "Agent call refused: join token.", reason = %refusal, remote = ?req.remote_addr());
                    auth_failure("grpc", AuthFailure::JoinToken);
                    Err(Status::unauthenticated(refusal.to_string()))
                }
                None => {
                    tracing::warn!(message = "Agent call refused: bad join token.", remote = ?req.remote_addr());
                    auth_failure("grpc", AuthFailure::Missing);
                    Err(super::status::unauthenticated("join token"))
                }
            }
        }
    }

    /// Checks a peer controller's federation secret.
    pub fn federation(
        secret: crate::auth::FederationSecret,
    ) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
        move |req| match authorization(&req) {
            Some(s) if secret.check(s) => Ok(req),
            presented => {
                tracing::warn!(message = "Federation call refused: bad secret.", remote = ?req.remote_addr());
                auth_failure(
                    "grpc",
                    presented.map_or(AuthFailure::Missing, |_| AuthFailure::FederationSecret),
                );
                Err(super::status::unauthenticated("federation secret"))
            }
        }
    }

    /// Checks an operator's `key:secret` credential.
    pub fn operator(
        creds: Arc<Credentials>,
    ) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
        move |mut req| match authorization(&req).map(|c| creds.check_operator(c)) {
            Some(Some(credential)) => {
                // Handlers name the caller in the audit log.
                req.extensions_mut()
                    .insert(crate::audit::Caller { credential });
                Ok(req)
            }
            presented => {
                tracing::warn!(message = "Operator call refused: bad credential.", remote = ?req.remote_addr());
                auth_failure("grpc", AuthFailure::refused(presented.is_some()));
                Err(super::status::unauthenticated(
                    "operator credential key:secret",
                ))
            }
        }
    }
}
