//! `AgentService.Connect`: one bidirectional stream per agent.
//!
//! # Protocol
//!
//! 1. The agent sends `Hello` (within [`HELLO_TIMEOUT`]); anything else first is refused with
//!    `InvalidArgument`.
//! 2. The controller answers `Welcome` with the agent's stable id, then its whole desired
//!    `JobSet` (generation + lease), and a new one whenever it changes.
//! 3. The agent acknowledges each job set (`JobAck`), sends a `Heartbeat` every few seconds and
//!    may send `Summaries`.
//!
//! A session task per stream (spawn + mpsc, so disconnects are observed) forwards job sets and
//! reads the agent's messages until either side goes away or the controller shuts down.

use std::sync::Arc;
use std::time::Duration;

use meshlat_proto::pb;
use meshlat_proto::pb::agent_message::Msg;
use meshlat_proto::pb::agent_service_server::AgentService;
use meshlat_proto::pb::controller_message::Msg as Out;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::status::from_domain;
use crate::registry::Registry;

/// How long a new stream may take to say Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent session service.
#[derive(Clone, Debug)]
pub struct AgentSvc {
    registry: Arc<Registry>,
    shutdown: CancellationToken,
}

impl AgentSvc {
    /// A service over `registry`; sessions end when `shutdown` is cancelled.
    pub fn new(registry: Arc<Registry>, shutdown: CancellationToken) -> Self {
        AgentSvc { registry, shutdown }
    }
}

fn out(msg: Out) -> Result<pb::ControllerMessage, Status> {
    Ok(pb::ControllerMessage { msg: Some(msg) })
}

#[tonic::async_trait]
impl AgentService for AgentSvc {
    type ConnectStream = ReceiverStream<Result<pb::ControllerMessage, Status>>;

    async fn connect(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let remote = req.remote_addr();
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await;
        let hello = match first {
            Ok(Ok(Some(pb::AgentMessage {
                msg: Some(Msg::Hello(h)),
            }))) => h,
            Ok(Err(s)) => return Err(s),
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "no Hello within 10 s of opening the stream",
                ));
            }
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on AgentService.Connect must be Hello",
                ));
            }
        };
        let mut session = self.registry.connect(hello).map_err(from_domain)?;
        let (tx, rx) = mpsc::channel(16);
        let welcome = Out::Welcome(pb::Welcome {
            agent_id: session.agent_id.clone(),
            controller_region: self.registry.config().region.clone(),
        });
        let _ = tx.send(out(welcome)).await;
        let registry = self.registry.clone();
        let shutdown = self.shutdown.clone();
        tracing::debug!(message = "Session started.", agent = %session.agent_id, ?remote);
        tokio::spawn(async move {
            let id = session.agent_id.clone();
            session.job_sets.mark_changed();
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    changed = session.job_sets.changed() => {
                        if changed.is_err() { break; }
                        let set = (**session.job_sets.borrow_and_update()).clone();
                        if tx.send(out(Out::JobSet(set))).await.is_err() { break; }
                    }
                    msg = inbound.message() => match msg {
                        Ok(Some(m)) => match m.msg {
                            Some(Msg::Heartbeat(_)) => registry.heard(&id, session.session),
                            Some(Msg::Summaries(s)) => registry.summaries(&id, session.session, s),
                            Some(Msg::Ack(a)) => registry.acked(&id, session.session, &a),
                            Some(Msg::Hello(_)) | None => {
                                let _ = tx.send(Err(Status::invalid_argument("unexpected message after Hello"))).await;
                                break;
                            }
                        },
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(message = "Session stream error.", agent = %id, %status);
                            break;
                        }
                    },
                }
            }
            registry.disconnect(&id, session.session);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
