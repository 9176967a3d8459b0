//! `OperatorService`: jobs, agents, the latency matrix and live stats (a matrix every
//! [`WATCH_INTERVAL`]).

use std::sync::Arc;

use meshlat_proto::pb;
use meshlat_proto::pb::operator_service_server::OperatorService;
use tonic::{Request, Response, Status};

use super::status::{from_credential, from_domain, from_scenario_lookup, outcome};
use crate::audit::{self, Caller};
use crate::auth::{Credentials, OperatorInfo};
use crate::live::WATCH_INTERVAL;
use crate::registry::Registry;
use crate::scenarios::ScenarioStore;

/// The operator API over the registry and the operator credentials.
#[derive(Clone, Debug)]
pub struct OperatorSvc {
    registry: Arc<Registry>,
    creds: Arc<Credentials>,
    /// The load-job scenarios (`--scenarios`; `None`: none).
    scenarios: Option<Arc<ScenarioStore>>,
}

impl OperatorSvc {
    /// A service over `registry` and `creds`.
    pub fn new(registry: Arc<Registry>, creds: Arc<Credentials>) -> Self {
        OperatorSvc {
            registry,
            creds,
            scenarios: None,
        }
    }

    /// Serves the scenarios of `store` (an empty listing without one).
    #[must_use]
    pub fn with_scenarios(mut self, store: Option<Arc<ScenarioStore>>) -> Self {
        self.scenarios = store;
        self
    }
}

/// Who called and from where (for the audit log).
fn caller<T>(req: &Request<T>) -> (Option<String>, Option<std::net::SocketAddr>) {
    (
        req.extensions()
            .get::<Caller>()
            .map(|c| c.credential.clone()),
        req.remote_addr(),
    )
}

/// Logs a state-changing call's outcome and returns it.
fn audited<T>(
    who: (Option<String>, Option<std::net::SocketAddr>),
    action: &str,
    object: &str,
    r: Result<T, Status>,
) -> Result<T, Status> {
    audit::record(who.0.as_deref(), who.1, action, object, outcome(&r));
    r
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A join token as the API shows it.
pub fn token_info(i: &crate::auth::TokenInfo) -> pb::JoinTokenInfo {
    let s = |v: Option<u64>| v.map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX));
    pb::JoinTokenInfo {
        name: i.name.clone(),
        created_unix: s(Some(i.created_unix)),
        expires_unix: s(i.expires_unix),
        revoked_unix: s(i.revoked_unix),
    }
}

fn info(i: &OperatorInfo) -> pb::CredentialInfo {
    pb::CredentialInfo {
        name: i.name.clone(),
        origin: i.origin.as_str().into(),
        created_unix: i.created_unix as i64,
    }
}

#[tonic::async_trait]
impl OperatorService for OperatorSvc {
    async fn start_job(
        &self,
        req: Request<pb::StartJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = caller(&req);
        let r = self
            .registry
            .start_job(req.into_inner().spec)
            .map_err(from_domain);
        let object = r
            .as_ref()
            .map_or_else(|_| "-".to_string(), |j| j.id.clone());
        audited(who, "job.start", &object, r).map(Response::new)
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let jobs = self.registry.list_jobs(req.into_inner().include_stopped);
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        self.registry
            .get_job(&req.into_inner().id)
            .map(Response::new)
            .map_err(from_domain)
    }

    async fn update_job(
        &self,
        req: Request<pb::UpdateJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        let res = self
            .registry
            .update_job(&r.id, r.spec, r.expected_version)
            .map_err(from_domain);
        audited(who, "job.update", &r.id, res).map(Response::new)
    }

    async fn stop_job(
        &self,
        req: Request<pb::StopJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = caller(&req);
        let id = req.into_inner().id;
        let r = self.registry.stop_job(&id).map_err(from_domain);
        audited(who, "job.stop", &id, r).map(Response::new)
    }

    async fn list_scenarios(
        &self,
        _req: Request<pb::ListScenariosRequest>,
    ) -> Result<Response<pb::ListScenariosResponse>, Status> {
        Ok(Response::new(
            self.scenarios
                .as_ref()
                .map(|s| s.list())
                .unwrap_or_default(),
        ))
    }

    async fn get_scenario(
        &self,
        req: Request<pb::GetScenarioRequest>,
    ) -> Result<Response<pb::ScenarioInfo>, Status> {
        let Some(store) = &self.scenarios else {
            return Err(Status::not_found(
                "this controller has no scenarios directory (--scenarios DIR)",
            ));
        };
        store
            .get(&req.get_ref().name)
            .map(|s| Response::new(crate::scenarios::info(&s)))
            .map_err(from_scenario_lookup)
    }

    async fn list_agents(
        &self,
        _req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        Ok(Response::new(pb::ListAgentsResponse {
            agents: self.registry.list_agents(),
        }))
    }

    async fn get_matrix(
        &self,
        req: Request<pb::GetMatrixRequest>,
    ) -> Result<Response<pb::Matrix>, Status> {
        let r = req.into_inner();
        self.registry
            .matrix(&r.by, &r.protocol)
            .map(Response::new)
            .map_err(from_domain)
    }

    type WatchStatsStream = tokio_stream::wrappers::ReceiverStream<Result<pb::Matrix, Status>>;

    async fn watch_stats(
        &self,
        req: Request<pb::WatchStatsRequest>,
    ) -> Result<Response<Self::WatchStatsStream>, Status> {
        let by = req.into_inner().by;
        // Refuse a bad `by` up front rather than on the stream.
        self.registry.matrix(&by, "").map_err(from_domain)?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let m = registry.matrix(&by, "").map_err(from_domain);
                // The receiver is gone when the client hangs up.
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    type WatchLoadStream = tokio_stream::wrappers::ReceiverStream<Result<pb::LoadStats, Status>>;

    async fn watch_load(
        &self,
        req: Request<pb::WatchLoadRequest>,
    ) -> Result<Response<Self::WatchLoadStream>, Status> {
        let id = req.into_inner().job_id;
        // Refuse an unknown job or another kind up front rather than on the stream.
        self.registry.load_view(&id).map_err(from_domain)?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::rest::LOAD_WATCH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let v = registry.load_view(&id).map_err(from_domain);
                // A job gone (its stop expired) ends the stream with the error; a done one
                // after its last view.
                let last = v.as_ref().map_or(true, |v| v.done);
                // The receiver is gone when the client hangs up.
                if tx.send(v).await.is_err() || last {
                    break;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn add_credential(
        &self,
        req: Request<pb::AddCredentialRequest>,
    ) -> Result<Response<pb::AddCredentialResponse>, Status> {
        let who = caller(&req);
        let name = req.into_inner().name;
        let r = self.creds.add_operator(&name).map_err(from_credential);
        let r = audited(who, "credential.add", &name, r)?;
        let listed = self.creds.list_operators();
        Ok(Response::new(pb::AddCredentialResponse {
            info: listed.iter().find(|i| i.name == name).map(info),
            credential: r,
        }))
    }

    async fn list_credentials(
        &self,
        _req: Request<pb::ListCredentialsRequest>,
    ) -> Result<Response<pb::ListCredentialsResponse>, Status> {
        Ok(Response::new(pb::ListCredentialsResponse {
            credentials: self.creds.list_operators().iter().map(info).collect(),
        }))
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        let expires = (r.expires_in_s > 0).then(|| unix_now().saturating_add(r.expires_in_s));
        let made = self
            .creds
            .create_token(&r.name, expires)
            .map_err(from_credential);
        let (i, secret) = audited(who, "token.create", &r.name, made)?;
        Ok(Response::new(pb::CreateJoinTokenResponse {
            info: Some(token_info(&i)),
            token: self.creds.token_string(&secret),
        }))
    }

    async fn list_join_tokens(
        &self,
        _req: Request<pb::ListJoinTokensRequest>,
    ) -> Result<Response<pb::ListJoinTokensResponse>, Status> {
        Ok(Response::new(pb::ListJoinTokensResponse {
            tokens: self.creds.list_tokens().iter().map(token_info).collect(),
        }))
    }

    async fn revoke_join_token(
        &self,
        req: Request<pb::RevokeJoinTokenRequest>,
    ) -> Result<Response<pb::JoinTokenInfo>, Status> {
        let who = caller(&req);
        let name = req.into_inner().name;
        let r = self.creds.revoke_token(&name).map_err(from_credential);
        audited(who, "token.revoke", &name, r).map(|i| Response::new(token_info(&i)))
    }

    async fn revoke_credential(
        &self,
        req: Request<pb::RevokeCredentialRequest>,
    ) -> Result<Response<pb::CredentialInfo>, Status> {
        let who = caller(&req);
        let name = req.into_inner().name;
        let r = self.creds.revoke_operator(&name).map_err(from_credential);
        audited(who, "credential.revoke", &name, r).map(|i| Response::new(info(&i)))
    }
}
