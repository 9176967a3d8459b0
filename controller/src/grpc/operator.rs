//! `OperatorService`: jobs, agents, the latency matrix and live stats (a matrix every
//! [`WATCH_INTERVAL`]).

use std::sync::Arc;

use meshlat_proto::pb;
use meshlat_proto::pb::operator_service_server::OperatorService;
use tonic::{Request, Response, Status};

use super::status::from_domain;
use crate::live::WATCH_INTERVAL;
use crate::registry::Registry;

/// The operator API over the registry.
#[derive(Clone, Debug)]
pub struct OperatorSvc {
    registry: Arc<Registry>,
}

impl OperatorSvc {
    /// A service over `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        OperatorSvc { registry }
    }
}

#[tonic::async_trait]
impl OperatorService for OperatorSvc {
    async fn start_job(
        &self,
        req: Request<pb::StartJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        self.registry
            .start_job(req.into_inner().spec)
            .map(Response::new)
            .map_err(from_domain)
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
        let r = req.into_inner();
        self.registry
            .update_job(&r.id, r.spec, r.expected_version)
            .map(Response::new)
            .map_err(from_domain)
    }

    async fn stop_job(
        &self,
        req: Request<pb::StopJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        self.registry
            .stop_job(&req.into_inner().id)
            .map(Response::new)
            .map_err(from_domain)
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
}
