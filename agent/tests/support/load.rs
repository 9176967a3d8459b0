//! Shared by the load-job tests (`tests/load_job.rs`, `tests/secrets_moto.rs`): a loopback
//! HTTP target that counts what it gets, a fake controller speaking `AgentService.Connect`,
//! and builders for load assignments.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use meshlat_proto::pb;
use meshlat_proto::record::Record;
use tokio::sync::watch;
use tokio::time::Instant;

// === test target ===

#[derive(Default)]
pub struct TargetState {
    pub requests: AtomicU64,
    pub connections: AtomicU64,
    pub open: AtomicU64,
    /// When the last request arrived.
    pub last: Mutex<Option<Instant>>,
    /// Credential header values seen.
    pub seen: Mutex<BTreeSet<String>>,
}

pub struct TestTarget {
    pub addr: SocketAddr,
    pub state: Arc<TargetState>,
}

impl TestTarget {
    /// Answers after `delay`; every `nth_429`-th request with 429 (0: never).
    pub fn start(delay: Duration, nth_429: u64) -> TestTarget {
        let state = Arc::new(TargetState::default());
        let st = Arc::clone(&state);
        let addr = super::support::serve_http_on_thread(true, move || {
            st.connections.fetch_add(1, Ordering::SeqCst);
            st.open.fetch_add(1, Ordering::SeqCst);
            let (st2, st_done) = (Arc::clone(&st), Arc::clone(&st));
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let st = Arc::clone(&st2);
                async move {
                    let n = st.requests.fetch_add(1, Ordering::SeqCst) + 1;
                    *st.last.lock().unwrap() = Some(Instant::now());
                    for h in ["authorization", "x-api-key"] {
                        if let Some(v) = req.headers().get(h) {
                            st.seen
                                .lock()
                                .unwrap()
                                .insert(format!("{h}: {}", v.to_str().unwrap_or("?")));
                        }
                    }
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let mut r = Response::new(Full::new(Bytes::from_static(b"pong\n")));
                    if nth_429 > 0 && n.is_multiple_of(nth_429) {
                        *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                    }
                    Ok::<_, Infallible>(r)
                }
            });
            let on_close: Box<dyn FnOnce() + Send> = Box::new(move || {
                st_done.open.fetch_sub(1, Ordering::SeqCst);
            });
            (svc, on_close)
        });
        TestTarget { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/ping", self.addr)
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }
}

pub fn load_job(version: u64, url: &str, duration_ms: u64, load: pb::LoadSpec) -> pb::Assignment {
    pb::Assignment {
        job: Some(pb::Job {
            id: "load-1".into(),
            version,
            spec: Some(pb::JobSpec {
                kind: pb::JobKind::Load as i32,
                protocols: vec![pb::Protocol::Http as i32],
                sources: vec![pb::Endpoint {
                    endpoint: Some(pb::endpoint::Endpoint::Selector("region=local".into())),
                }],
                targets: vec![pb::Endpoint {
                    endpoint: Some(pb::endpoint::Endpoint::Url(url.into())),
                }],
                duration_ms,
                timeout_ms: 5_000,
                load: Some(load),
                ..Default::default()
            }),
            ..Default::default()
        }),
        targets: vec![pb::AssignedTarget {
            target: url.into(),
            ..Default::default()
        }],
        key: Vec::new(),
        load_share_agents: 0,
    }
}

pub fn closed(start: f64) -> pb::LoadSpec {
    pb::LoadSpec {
        model: pb::LoadModel::Closed as i32,
        start,
        ..Default::default()
    }
}

/// Polls `f` every 20 ms until it holds or `within` has passed; whether it held.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === the agent process under a fake controller ===

/// A controller that welcomes one agent as `agent-x`, sends it each job set put in `sets`, and
/// keeps its acks.
#[derive(Clone)]
pub struct FakeController {
    pub sets: watch::Receiver<pb::JobSet>,
    pub acks: Arc<Mutex<Vec<pb::JobAck>>>,
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for FakeController {
    type ConnectStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::ControllerMessage, tonic::Status>>;

    async fn connect(
        &self,
        req: tonic::Request<tonic::Streaming<pb::AgentMessage>>,
    ) -> Result<tonic::Response<Self::ConnectStream>, tonic::Status> {
        use pb::controller_message::Msg;
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut sets = self.sets.clone();
        let acks = Arc::clone(&self.acks);
        tokio::spawn(async move {
            let _hello = inbound.message().await;
            let welcome = pb::Welcome {
                agent_id: "agent-x".into(),
                controller_region: "local".into(),
                ..Default::default()
            };
            let out = |m| Ok(pb::ControllerMessage { msg: Some(m) });
            if tx.send(out(Msg::Welcome(welcome))).await.is_err() {
                return;
            }
            sets.mark_changed();
            loop {
                tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Ack(a)) })) => {
                            acks.lock().unwrap().push(a);
                        }
                        Ok(Some(_)) => {}
                        _ => break,
                    },
                    c = sets.changed() => {
                        if c.is_err() {
                            break;
                        }
                        let set = sets.borrow_and_update().clone();
                        if tx.send(out(Msg::JobSet(set))).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }
}

impl FakeController {
    /// The ack of `generation`, once it came.
    pub fn ack(&self, generation: u64) -> Option<pb::JobAck> {
        self.acks
            .lock()
            .unwrap()
            .iter()
            .find(|a| a.generation == generation)
            .cloned()
    }
}

/// Every record in the file sink's directory tree.
pub fn file_records(dir: &std::path::Path) -> Vec<Record> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(text) = std::fs::read_to_string(&p) {
                out.extend(
                    text.lines()
                        .filter_map(|l| serde_json::from_str::<Record>(l).ok()),
                );
            }
        }
    }
    out
}

pub fn job_set(generation: u64, assignments: Vec<pb::Assignment>) -> pb::JobSet {
    pb::JobSet {
        generation,
        lease_ms: 60_000,
        assignments,
        ..Default::default()
    }
}

/// Serves `sets` as a [`FakeController`] on a loopback port and starts `agent run` against it
/// (`--no-state-dir`, region `local`, records to `out`, no responders, `-vv`, log in
/// `dir/agent.log`), with `extra` flags and `env` variables.
pub fn start_agent_under(
    sets: watch::Receiver<pb::JobSet>,
    dir: &std::path::Path,
    out: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (
    FakeController,
    super::support::Proc,
    tokio::task::JoinHandle<()>,
) {
    let fake = FakeController {
        sets,
        acks: Arc::default(),
    };
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let port = std_listener.local_addr().unwrap().port();
    let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
    let svc = pb::agent_service_server::AgentServiceServer::new(fake.clone());
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let controller = format!("http://127.0.0.1:{port}");
    let token = format!("mlt1.{}.{}", "ab".repeat(32), "cd".repeat(16));
    let mut args = vec![
        "run",
        "--controller",
        &controller,
        "--token",
        &token,
        "--no-state-dir",
        "--region",
        "local",
        "--out",
        out.to_str().unwrap(),
        "-vv",
    ];
    let off = super::support::responders_off_except(&[]);
    args.extend(off.iter().copied());
    args.extend(extra.iter().copied());
    let mut cmd = std::process::Command::new(super::support::agent_bin());
    cmd.args(&args).stdout(log.try_clone().unwrap()).stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let agent = super::support::Proc {
        child: cmd.spawn().unwrap(),
        name: "agent".into(),
    };
    (fake, agent, server)
}
