//! `AgentService.Connect`: one bidirectional stream per agent.
//!
//! # Protocol
//!
//! 1. The agent sends `Hello` (within [`HELLO_TIMEOUT`]); anything else first is refused with
//!    `InvalidArgument`. A Hello advertising an address the agent may not
//!    ([`crate::address_policy`]) is refused with `PermissionDenied`.
//!    The session is authenticated by the agent's client certificate or its join token, and
//!    admitted by the identity rules ([`crate::identity`]); a Hello with a certificate request
//!    gets the agent's certificate in its Welcome.
//! 2. The controller answers `Welcome` with the agent's stable id, then its whole desired
//!    `JobSet` (generation + lease) as soon as the scheduler has computed it, and a new one
//!    whenever it changes.
//! 3. The agent acknowledges each job set (`JobAck`), sends a `Heartbeat` every few seconds and
//!    may send `Summaries` and, while it runs load jobs, `LoadReports` ([`crate::loadlive`]; a
//!    refused report is counted and logged, and the session goes on).
//!
//! # One controller, 10,000 sessions
//!
//! The route is served by [`AgentServer`] rather than the generated server so that job sets
//! go out as the bytes the registry encoded once ([`PushedSet`]), through [`SessionCodec`],
//! instead of being cloned and encoded again per session. The outgoing stream ([`Outbound`])
//! reads the session's job-set watch when the connection can take more, so a slow agent gets
//! the newest set, never a queue of stale ones. The codec's buffers start small: tonic's
//! default 8 KiB for each direction of each stream adds up. Incoming messages are not decoded
//! by tonic's `Streaming` (whose buffer keeps the size of the largest message for the life of
//! the stream) but by [`Inbound`], which holds a message's bytes only until it is decoded: an
//! idle session costs no decode buffer, whatever it sent before.
//!
//! A session task per stream reads the agent's messages until either side goes away, the
//! session is replaced, or the controller shuts down; it then ends the outgoing stream.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BufMut;
use meshlat_proto::pb;
use meshlat_proto::pb::agent_message::Msg;
use prost::Message;
use tokio::sync::oneshot;
use tokio_stream::Stream;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::{Request, Response, Status, Streaming};

use super::inbound::Inbound;
use super::status::{from_address, from_domain};
use crate::identity::{self, AgentCa, AgentProof};
use crate::jobset::PushedSet;
use crate::registry::{DomainError, Registry};

/// Why a session was refused: the identity rules, or the registry.
enum Refused {
    Identity(identity::Refusal),
    Domain(DomainError),
}

impl From<DomainError> for Refused {
    fn from(e: DomainError) -> Self {
        Refused::Domain(e)
    }
}

/// How long a new stream may take to say Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The gRPC path of `AgentService.Connect`.
pub const CONNECT_PATH: &str = "/meshlat.v1.AgentService/Connect";
/// Initial size of each stream's encode and decode buffers (they grow as messages need).
const BUFFER_SIZE: usize = 512;
/// Encoded bytes gathered before handing them to HTTP/2 (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// What the controller sends on a session.
#[derive(Debug)]
pub enum Outgoing {
    /// The session's first message.
    Welcome(pb::Welcome),
    /// A job set, already encoded.
    JobSet(Arc<PushedSet>),
}

/// The session's codec: [`Outgoing`] out (job sets as their pushed bytes, so the wire format
/// is `ControllerMessage`'s), `AgentMessage` in (prost).
#[derive(Clone, Copy, Debug, Default)]
pub struct SessionCodec;

fn buffers() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

impl Codec for SessionCodec {
    type Encode = Outgoing;
    type Decode = pb::AgentMessage;
    type Encoder = OutgoingEncoder;
    type Decoder = AgentMessageDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        OutgoingEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        AgentMessageDecoder(tonic_prost::ProstDecoder::new(buffers()))
    }
}

/// Encodes [`Outgoing`].
#[derive(Debug)]
pub struct OutgoingEncoder;

impl Encoder for OutgoingEncoder {
    type Item = Outgoing;
    type Error = Status;

    fn encode(&mut self, item: Outgoing, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Outgoing::Welcome(w) => pb::ControllerMessage {
                msg: Some(pb::controller_message::Msg::Welcome(w)),
            }
            .encode(dst)
            .map_err(|e| Status::internal(format!("encoding Welcome: {e}"))),
            Outgoing::JobSet(set) => {
                dst.put_slice(set.message());
                Ok(())
            }
        }
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffers()
    }
}

/// Decodes `AgentMessage` (prost) with the session's buffer settings.
#[derive(Debug)]
pub struct AgentMessageDecoder(tonic_prost::ProstDecoder<pb::AgentMessage>);

impl Decoder for AgentMessageDecoder {
    type Item = pb::AgentMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<pb::AgentMessage>, Status> {
        self.0.decode(src)
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffers()
    }
}

/// A session's outgoing messages: the Welcome, then each newest job set; ends with the session
/// (with a status if the session task sent one).
#[derive(Debug)]
pub struct Outbound {
    welcome: Option<pb::Welcome>,
    sets: WatchStream<Arc<PushedSet>>,
    end: oneshot::Receiver<Status>,
    done: bool,
}

impl Stream for Outbound {
    type Item = Result<Outgoing, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(w) = self.welcome.take() {
            return Poll::Ready(Some(Ok(Outgoing::Welcome(w))));
        }
        match Pin::new(&mut self.end).poll(cx) {
            Poll::Ready(end) => {
                self.done = true;
                return Poll::Ready(end.ok().map(Err));
            }
            Poll::Pending => {}
        }
        match Pin::new(&mut self.sets).poll_next(cx) {
            Poll::Ready(Some(set)) => Poll::Ready(Some(Ok(Outgoing::JobSet(set)))),
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The agent session service.
#[derive(Clone, Debug)]
pub struct AgentSvc {
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    /// Issues and checks agent certificates (`None` with `--plaintext`: no identities).
    ca: Option<Arc<AgentCa>>,
    /// `--require-agent-identity`.
    require_identity: bool,
}

impl AgentSvc {
    /// A service over `registry`; sessions end when `shutdown` is cancelled. Without
    /// [`AgentSvc::with_identity`] agents get no identities (`--plaintext`).
    pub fn new(registry: Arc<Registry>, shutdown: CancellationToken) -> Self {
        AgentSvc {
            registry,
            shutdown,
            ca: None,
            require_identity: false,
        }
    }

    /// Issues agent certificates from `ca` and enforces identities ([`crate::identity`]);
    /// with `require`, agents that do not ask for one are refused (told to upgrade).
    #[must_use]
    pub fn with_identity(mut self, ca: Arc<AgentCa>, require: bool) -> Self {
        self.ca = Some(ca);
        self.require_identity = require;
        self
    }

    /// Registers the session of `hello` authenticated by `proof`: issues its certificate if it
    /// asked for one and the identity rules admit it ([`crate::identity::admit`]).
    fn admit(
        &self,
        mut hello: pb::Hello,
        proof: &AgentProof,
    ) -> Result<(crate::registry::Session, Option<pb::AgentCertificate>), Status> {
        let Some(ca) = &self.ca else {
            let token = match proof {
                AgentProof::Token { token_id, .. } => token_id.as_str(),
                AgentProof::Certificate(_) => "",
            };
            return Ok((
                self.registry
                    .connect_as(hello, token)
                    .map_err(from_domain)?,
                None,
            ));
        };
        if hello.agent_id.trim().is_empty() {
            hello.agent_id = uuid::Uuid::now_v7().to_string();
        }
        let id = hello.agent_id.trim().to_string();
        let request = match std::mem::take(&mut hello.certificate_request) {
            r if r.is_empty() => None,
            r => Some(identity::Request::parse(&r).map_err(|e| {
                let mut s = Status::invalid_argument(e.to_string());
                s.metadata_mut().insert(
                    "x-meshlat-field",
                    tonic::metadata::MetadataValue::from_static("hello.certificate_request"),
                );
                s
            })?),
        };
        // Signed before the lock (it costs more than the rules); dropped if they refuse.
        let issued = match &request {
            Some(r) => Some(
                ca.issue(&id, r, std::time::SystemTime::now())
                    .map_err(|e| Status::internal(e.to_string()))?,
            ),
            None => None,
        };
        let requested = request.as_ref().map(|r| r.key_sha256);
        let version = hello.version.clone();
        let token = match proof {
            AgentProof::Token { token_id, .. } => token_id.clone(),
            AgentProof::Certificate(_) => String::new(),
        };
        let require = self.require_identity;
        let session = self
            .registry
            .connect_verified(hello, &token, |stored| {
                identity::admit(proof, &id, stored, requested, require, &version)
                    .map_err(Refused::Identity)
            })
            .map_err(|e| match e {
                Refused::Identity(r) => {
                    tracing::warn!(message = "Agent session refused: identity.", agent = %id, reason = %r);
                    crate::metrics::auth_failure("grpc", crate::metrics::AuthFailure::AgentIdentity);
                    match r {
                        identity::Refusal::UpgradeRequired { .. } => {
                            Status::failed_precondition(r.to_string())
                        }
                        _ => Status::permission_denied(r.to_string()),
                    }
                }
                Refused::Domain(d) => from_domain(d),
            })?;
        match (&issued, proof) {
            (Some(c), _) => {
                tracing::info!(message = "Agent certificate issued.", agent = %id, not_after_unix = c.not_after_unix);
            }
            (None, AgentProof::Token { .. }) => {
                tracing::warn!(message = "Agent joined without an identity (a version before per-agent identities): its join token can speak for it; upgrade it.", agent = %id, version = %version);
            }
            (None, AgentProof::Certificate(_)) => {}
        }
        Ok((session, issued))
    }

    /// Handles one `Connect` stream.
    ///
    /// # Errors
    ///
    /// A status when the first message is not a valid Hello.
    pub async fn connect(&self, req: Request<Inbound>) -> Result<Response<Outbound>, Status> {
        let remote = req.remote_addr();
        // The interceptor authenticated the session; without it (tests), the token names it.
        let proof = match req.extensions().get::<AgentProof>() {
            Some(p) => p.clone(),
            None => AgentProof::Token {
                name: String::new(),
                token_id: req
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(crate::auth::bearer)
                    .map(join_token_id)
                    .unwrap_or_default(),
            },
        };
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
        // Advertised addresses: the agent's own, or inside --agent-cidr (crate::address_policy).
        if let Err(refused) = self
            .registry
            .config()
            .address_policy
            .check(remote.map(|a| a.ip()), &hello.endpoints)
        {
            tracing::warn!(message = "Agent refused: it advertises an address it may not.", agent = %hello.agent_id, ?remote, error = %refused);
            return Err(from_address(refused));
        }
        let (session, certificate) = self.admit(hello, &proof)?;
        let (end_tx, end_rx) = oneshot::channel();
        let outbound = Outbound {
            welcome: Some(pb::Welcome {
                agent_id: session.agent_id.clone(),
                controller_region: self.registry.config().region.clone(),
                relay_refused: session.relay_refused.clone().unwrap_or_default(),
                certificate,
            }),
            // Only sets the scheduler pushes, not the placeholder.
            sets: WatchStream::from_changes(session.job_sets.clone()),
            end: end_rx,
            done: false,
        };
        let registry = self.registry.clone();
        let shutdown = self.shutdown.clone();
        tracing::debug!(message = "Session started.", agent = %session.agent_id, ?remote);
        let open = crate::metrics::session_opened();
        tokio::spawn(async move {
            // Counted in `meshlat_controller_sessions` until this task ends.
            let _open = open;
            let id = session.agent_id;
            // Ends when the registry drops the session's sender (replaced by a newer one).
            let mut watch = session.job_sets;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    changed = watch.changed() => if changed.is_err() { break },
                    msg = inbound.message() => match msg {
                        Ok(Some(m)) => match m.msg {
                            Some(Msg::Heartbeat(_)) => registry.heard(&id, session.session),
                            Some(Msg::Summaries(s)) => registry.summaries(&id, session.session, s),
                            Some(Msg::LoadReports(r)) => {
                                registry.load_reports(&id, session.session, r);
                            }
                            Some(Msg::Ack(a)) => registry.acked(&id, session.session, &a),
                            Some(Msg::Hello(_)) | None => {
                                let _ = end_tx.send(Status::invalid_argument("unexpected message after Hello"));
                                registry.disconnect(&id, session.session);
                                return;
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
            drop(end_tx);
            registry.disconnect(&id, session.session);
        });
        Ok(Response::new(outbound))
    }
}

/// An identifier of a join token (the first 8 bytes of the SHA-256 of its secret, in hex), for
/// counting agents per token without keeping the secret.
pub fn join_token_id(presented: &str) -> String {
    let secret = match meshlat_proto::token::JoinToken::parse(presented) {
        Ok(t) => t.secret,
        Err(_) => presented.trim().to_ascii_lowercase(),
    };
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    hex::encode(&d.as_ref()[..8])
}

/// `AgentService` as a tonic service (in place of the generated `AgentServiceServer`; same
/// name, path and wire format), to wrap in the join-token interceptor.
#[derive(Clone, Debug)]
pub struct AgentServer {
    svc: Arc<AgentSvc>,
}

impl AgentServer {
    /// Serves `svc`.
    pub fn new(svc: AgentSvc) -> Self {
        AgentServer { svc: Arc::new(svc) }
    }
}

impl tonic::server::NamedService for AgentServer {
    const NAME: &'static str = pb::agent_service_server::SERVICE_NAME;
}

/// The Connect call: tonic encodes the responses; the request body was taken for [`Inbound`]
/// (tonic's `Streaming` is built over an empty body and never read).
struct ConnectMethod {
    svc: Arc<AgentSvc>,
    inbound: Option<Inbound>,
}

impl tonic::server::StreamingService<pb::AgentMessage> for ConnectMethod {
    type Response = Outgoing;
    type ResponseStream = Outbound;
    type Future = BoxFuture<Response<Outbound>, Status>;

    fn call(&mut self, request: Request<Streaming<pb::AgentMessage>>) -> Self::Future {
        let svc = self.svc.clone();
        let inbound = self.inbound.take();
        Box::pin(async move {
            let inbound =
                inbound.ok_or_else(|| Status::internal("AgentService.Connect called twice"))?;
            let (metadata, extensions, _) = request.into_parts();
            svc.connect(Request::from_parts(metadata, extensions, inbound))
                .await
        })
    }
}

impl<B> Service<http::Request<B>> for AgentServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != CONNECT_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let limit =
            crate::limits::agent_message_limit(self.svc.registry.config().limits.max_summary_bytes);
        let (parts, body) = req.into_parts();
        let method = ConnectMethod {
            svc: self.svc.clone(),
            inbound: Some(Inbound::new(body, limit)),
        };
        let req = http::Request::from_parts(parts, http_body_util::Empty::<bytes::Bytes>::new());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(SessionCodec);
            Ok(grpc.streaming(method, req).await)
        })
    }
}
