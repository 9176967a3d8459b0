//! Load jobs as the controller assigns them, against a real loopback HTTP target.
//!
//! - The first tests drive the load runner in-process through its seam, the `watch` channel of
//!   load sets the controller session feeds from each job set (`load::job::load_set`, the
//!   validation included), records collected from the agent's sink set. Two agents are two
//!   runners with their own identities.
//! - [`an_agent_process_runs_updates_and_stops_a_load_job_from_its_controller`] runs the real
//!   `agent run` process against a fake controller (the `AgentService.Connect` protocol over
//!   plain HTTP/2): job sets in, acks out, records in its file sink, its log read for secrets.
//!   The controller side of load jobs (REST, assignment to sources) is not there yet; the
//!   controller's end-to-end test will replace the fake.
//!
//! The target runs on its own thread and runtime, counts requests and connections, stamps the
//! arrival of the last request, answers 429 to every n-th request if told, and records the
//! `Authorization` and `X-Api-Key` values it sees. Assertions compare counts and ratios with
//! generous bounds (two shared cores).

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use meshlat_agent::config::AgentIdentity;
use meshlat_agent::load::job::{LoadLimits, LoadSet, load_set};
use meshlat_agent::load::runner::LoadRunner;
use meshlat_agent::sink::{SharedRecord, Sink, SinkError, SinkSet};
use meshlat_proto::pb;
use meshlat_proto::record::{ControlMode, Kind, Record};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

// === test target ===

#[derive(Default)]
struct TargetState {
    requests: AtomicU64,
    connections: AtomicU64,
    open: AtomicU64,
    /// When the last request arrived.
    last: Mutex<Option<Instant>>,
    /// Credential header values seen.
    seen: Mutex<BTreeSet<String>>,
}

struct TestTarget {
    addr: SocketAddr,
    state: Arc<TargetState>,
}

impl TestTarget {
    /// Answers after `delay`; every `nth_429`-th request with 429 (0: never).
    fn start(delay: Duration, nth_429: u64) -> TestTarget {
        let state = Arc::new(TargetState::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let st = Arc::clone(&state);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(l.local_addr().unwrap()).unwrap();
                loop {
                    let Ok((s, _)) = l.accept().await else {
                        continue;
                    };
                    st.connections.fetch_add(1, Ordering::SeqCst);
                    st.open.fetch_add(1, Ordering::SeqCst);
                    let st = Arc::clone(&st);
                    tokio::spawn(async move {
                        let st2 = Arc::clone(&st);
                        let svc = hyper::service::service_fn(
                            move |req: Request<hyper::body::Incoming>| {
                                let st = Arc::clone(&st2);
                                async move {
                                    let n = st.requests.fetch_add(1, Ordering::SeqCst) + 1;
                                    *st.last.lock().unwrap() = Some(Instant::now());
                                    for h in ["authorization", "x-api-key"] {
                                        if let Some(v) = req.headers().get(h) {
                                            st.seen.lock().unwrap().insert(format!(
                                                "{h}: {}",
                                                v.to_str().unwrap_or("?")
                                            ));
                                        }
                                    }
                                    if !delay.is_zero() {
                                        tokio::time::sleep(delay).await;
                                    }
                                    let mut r =
                                        Response::new(Full::new(Bytes::from_static(b"pong\n")));
                                    if nth_429 > 0 && n.is_multiple_of(nth_429) {
                                        *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                                    }
                                    Ok::<_, Infallible>(r)
                                }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(s), svc)
                            .await;
                        st.open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            });
        });
        TestTarget {
            addr: rx.recv().unwrap(),
            state,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/ping", self.addr)
    }

    fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }
}

// === an agent: a load runner and a collecting sink ===

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<SharedRecord>>>);

impl Sink for Collect {
    fn name(&self) -> &'static str {
        "collect"
    }
    async fn write(&mut self, batch: &[SharedRecord]) -> Result<(), SinkError> {
        self.0.lock().unwrap().extend(batch.iter().cloned());
        Ok(())
    }
    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

struct TestAgent {
    sets: watch::Sender<LoadSet>,
    records: Collect,
    sinks: Option<SinkSet>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestAgent {
    fn start(id: &str) -> TestAgent {
        let records = Collect::default();
        let mut sinks = SinkSet::new();
        sinks.add(records.clone());
        let (tx, rx) = watch::channel(LoadSet::default());
        let (_mode_tx, mode_rx) = watch::channel(ControlMode::Connected);
        let identity = AgentIdentity {
            agent_id: Some(id.into()),
            region: "local".into(),
            az: None,
            location: None,
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(
            LoadRunner::new(identity, sinks.handle(), mode_rx).run(rx, shutdown.clone()),
        );
        TestAgent {
            sets: tx,
            records,
            sinks: Some(sinks),
            shutdown,
            task: Some(task),
        }
    }

    /// Hands the runner the load tasks of a job set of `assignments`, as the session does
    /// (validation included: none is refused).
    fn assign(&self, generation: u64, assignments: &[pb::Assignment]) {
        let limits = LoadLimits {
            max_connections: 64,
            max_rate: 10_000.0,
        };
        let (set, rejected) = load_set(
            &pb::JobSet {
                generation,
                assignments: assignments.to_vec(),
                ..Default::default()
            },
            &limits,
            &Default::default(),
        );
        assert!(rejected.is_empty(), "{rejected:?}");
        self.sets.send_replace(set);
    }

    fn records(&self) -> Vec<Record> {
        self.records
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|r| (**r).clone())
            .collect()
    }

    /// Stops the runner and flushes the sinks.
    async fn finish(mut self) -> Vec<Record> {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
        if let Some(s) = self.sinks.take() {
            s.close(Duration::from_secs(5)).await;
        }
        self.records()
    }
}

fn load_job(version: u64, url: &str, duration_ms: u64, load: pb::LoadSpec) -> pb::Assignment {
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

fn closed(start: f64) -> pb::LoadSpec {
    pb::LoadSpec {
        model: pb::LoadModel::Closed as i32,
        start,
        ..Default::default()
    }
}

/// Polls `f` every 20 ms until it holds or `within` has passed; whether it held.
async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
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

/// Records by seq, checking each seq comes once (one run).
fn by_second(records: &[Record]) -> Vec<Record> {
    let mut full: Vec<Record> = records.to_vec();
    full.sort_by_key(|r| r.seq);
    let seqs: Vec<u64> = full.iter().map(|r| r.seq).collect();
    let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(
        seqs.len(),
        distinct.len(),
        "one record per second: {seqs:?}"
    );
    full
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stepped_closed_job_from_two_agents_writes_one_record_per_agent_step_and_second() {
    // Answers in 20 ms: the rate is the workers' (50 req/s each), not the machine's.
    let target = TestTarget::start(Duration::from_millis(20), 0);
    let agents = [TestAgent::start("agent-a"), TestAgent::start("agent-b")];
    // 2 workers for 2 s, then 4 for 2 s.
    let job = load_job(
        1,
        &target.url(),
        4_000,
        pb::LoadSpec {
            step: 2.0,
            steps: 2,
            step_duration_ms: 2_000,
            ..closed(2.0)
        },
    );
    for a in &agents {
        a.assign(1, std::slice::from_ref(&job));
    }
    tokio::time::sleep(Duration::from_millis(4_600)).await;
    let mut sent = 0;
    for (a, id) in agents.into_iter().zip(["agent-a", "agent-b"]) {
        let records = a.finish().await;
        let full = by_second(&records);
        let seconds: Vec<(u64, Option<u32>, Option<u32>)> = full
            .iter()
            .filter(|r| r.seq < 4)
            .map(|r| (r.seq, r.load_step, r.load_workers))
            .collect();
        assert_eq!(
            seconds,
            vec![
                (0, Some(0), Some(2)),
                (1, Some(0), Some(2)),
                (2, Some(1), Some(4)),
                (3, Some(1), Some(4)),
            ],
            "{id}"
        );
        for r in &full {
            assert_eq!(r.kind, Some(Kind::Load));
            assert_eq!(r.src_agent.as_deref(), Some(id));
            assert_eq!(r.job_id, "load-1");
            assert_eq!(r.target, target.url());
            assert_eq!(r.control_mode, Some(ControlMode::Connected));
            assert!(r.lat_hist_ms.is_some() && r.lat_p99_ms.is_some(), "{r:?}");
        }
        // Four workers do about twice what two do.
        let rate = |s: u64| full[s as usize].achieved_rps.unwrap();
        assert!(rate(3) > 1.4 * rate(1), "{id}: {} vs {}", rate(3), rate(1));
        sent += records.iter().map(|r| r.requests.unwrap()).sum::<u64>();
    }
    // Everything the target answered was recorded, but for requests cut at the end (at most
    // one per worker).
    let at_target = target.requests();
    assert!(
        at_target >= sent && at_target <= sent + 8,
        "target {at_target}, records {sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_doubling_the_workers_takes_effect_at_once_without_a_restart() {
    // Answers in 40 ms: 25 req/s per worker whatever else the machine does.
    let target = TestTarget::start(Duration::from_millis(40), 0);
    let agent = TestAgent::start("agent-a");
    let url = target.url();
    agent.assign(1, &[load_job(1, &url, 6_000, closed(2.0))]);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    agent.assign(2, &[load_job(2, &url, 6_000, closed(4.0))]);
    let updated = Instant::now();
    assert!(
        eventually(Duration::from_secs(1), || {
            target.state.connections.load(Ordering::SeqCst) >= 4
        })
        .await,
        "the new workers connect within a second"
    );
    assert!(updated.elapsed() < Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    let records = agent.finish().await;
    let full = by_second(&records);
    // One run: seconds 0..=5 once each (a restart would start at 0 again).
    let seqs: Vec<u64> = full.iter().map(|r| r.seq).filter(|s| *s < 6).collect();
    assert_eq!(seqs, vec![0, 1, 2, 3, 4, 5]);
    let workers: Vec<Option<u32>> = full.iter().map(|r| r.load_workers).collect();
    assert_eq!(&workers[..2], &[Some(2), Some(2)], "{workers:?}");
    assert!(workers[3..6].iter().all(|w| *w == Some(4)), "{workers:?}");
    // The first two connections were kept: four in all, not six.
    assert_eq!(target.state.connections.load(Ordering::SeqCst), 4);
    let (before, after) = (full[1].achieved_rps.unwrap(), full[4].achieved_rps.unwrap());
    assert!(after > 1.5 * before, "{before} -> {after} req/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_job_shared_by_agents_follows_a_rate_update() {
    let target = TestTarget::start(Duration::from_millis(5), 0);
    let agent = TestAgent::start("agent-a");
    let url = target.url();
    // 400 req/s for the job, shared by 4 agents: 100 here; then 800 (200 here).
    let job = |version, start| {
        let mut a = load_job(
            version,
            &url,
            4_000,
            pb::LoadSpec {
                model: pb::LoadModel::Open as i32,
                start,
                rate_per_job: true,
                ..Default::default()
            },
        );
        a.load_share_agents = 4;
        a
    };
    agent.assign(1, &[job(1, 400.0)]);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    agent.assign(2, &[job(2, 800.0)]);
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let records = agent.finish().await;
    let full = by_second(&records);
    let seqs: Vec<u64> = full.iter().map(|r| r.seq).filter(|s| *s < 4).collect();
    assert_eq!(seqs, vec![0, 1, 2, 3], "one run");
    assert_eq!(full[0].load_level, Some(100.0));
    assert_eq!(full[2].load_level, Some(200.0));
    let (before, after) = (full[0].intended_rps.unwrap(), full[2].intended_rps.unwrap());
    assert!((95.0..=105.0).contains(&before), "{before}");
    assert!((190.0..=210.0).contains(&after), "{after}");
    assert!(
        full[2].achieved_rps.unwrap() > 150.0,
        "{:?}",
        full[2].achieved_rps
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_beyond_the_level_restarts_the_run() {
    let target = TestTarget::start(Duration::from_millis(20), 0);
    let agent = TestAgent::start("agent-a");
    let url = target.url();
    agent.assign(1, &[load_job(1, &url, 10_000, closed(2.0))]);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let thinking = load_job(
        2,
        &url,
        10_000,
        pb::LoadSpec {
            think_time_ms: 5,
            ..closed(2.0)
        },
    );
    agent.assign(2, &[thinking]);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let records = agent.finish().await;
    let zeros = records.iter().filter(|r| r.seq == 0).count();
    assert_eq!(zeros, 2, "a new run: its seconds start at 0 again");
    assert_eq!(
        target.state.connections.load(Ordering::SeqCst),
        4,
        "new connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_job_ends_every_request_within_a_second() {
    let target = TestTarget::start(Duration::from_millis(50), 0);
    let agent = TestAgent::start("agent-a");
    agent.assign(1, &[load_job(1, &target.url(), 60_000, closed(8.0))]);
    assert!(
        eventually(Duration::from_secs(5), || target.requests() > 50).await,
        "load is running"
    );
    // The job stopped: the controller's next job set no longer has it.
    agent.assign(2, &[]);
    let stopped = Instant::now();
    assert!(
        eventually(Duration::from_secs(1), || {
            target.state.open.load(Ordering::SeqCst) == 0
        })
        .await,
        "every connection closed within a second"
    );
    let count = target.requests();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(target.requests(), count, "no request after the stop");
    let last = target.state.last.lock().unwrap().unwrap();
    assert!(
        last.saturating_duration_since(stopped) < Duration::from_secs(1),
        "last request {:?} after the stop",
        last.saturating_duration_since(stopped)
    );
    let records = agent.finish().await;
    // The run's last, partial second is written too: every request the target answered is in
    // the records, but for those cut by the stop (at most one per worker).
    let sent: u64 = records.iter().map(|r| r.requests.unwrap()).sum();
    assert!(
        count >= sent && count <= sent + 8,
        "target {count}, records {sent} in {} records",
        records.len()
    );
}

/// Log lines written while the test runs (every level), to look for secrets in them.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_answers_count_as_429_and_credentials_rotate_unseen() {
    let logs = LogBuf::default();
    let w = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || w.clone())
        .finish();
    // Global: the runner's tasks log from the runtime's worker threads.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let dir = std::env::temp_dir().join(format!("meshlat-loadjob-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("creds");
    let secrets = ["s3cret-one", "s3cret-two", "s3cret-three"];
    std::fs::write(
        &file,
        format!(
            "# keys\nkey1:{}\nkey2:{}\nkey3:{}\n",
            secrets[0], secrets[1], secrets[2]
        ),
    )
    .unwrap();
    let target = TestTarget::start(Duration::from_millis(10), 3);
    let agent = TestAgent::start("agent-a");
    let with = |id: &str, header: &str| {
        let mut a = load_job(
            1,
            &target.url(),
            2_000,
            pb::LoadSpec {
                credentials: Some(pb::LoadCredentials {
                    file: file.display().to_string(),
                    header: header.into(),
                    ..Default::default()
                }),
                ..closed(3.0)
            },
        );
        a.job.as_mut().unwrap().id = id.into();
        a
    };
    // One job sends basic auth, the other the secret in X-Api-Key.
    agent.assign(1, &[with("basic", ""), with("keyed", "X-Api-Key")]);
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    let records = agent.finish().await;

    let seen = target.state.seen.lock().unwrap().clone();
    for (i, s) in secrets.iter().enumerate() {
        assert!(seen.contains(&format!("x-api-key: {s}")), "{s} in {seen:?}");
        let basic = format!(
            "authorization: Basic {}",
            base64(format!("key{}:{s}", i + 1).as_bytes())
        );
        assert!(seen.contains(&basic), "{basic} in {seen:?}");
    }
    assert_eq!(seen.len(), 6, "one header per job: {seen:?}");

    let (mut ok, mut limited, mut other) = (0, 0, 0);
    for r in &records {
        ok += r.status_2xx.unwrap();
        limited += r.status_429.unwrap();
        other += r.status_4xx.unwrap() + r.status_other.unwrap();
    }
    assert!(limited > 10, "429s counted: {limited}");
    assert_eq!(other, 0);
    // Every third request is refused: about twice as many successes as 429s.
    let ratio = ok as f64 / limited as f64;
    assert!((1.7..=2.3).contains(&ratio), "{ok} ok, {limited} limited");

    let lines: String = records.iter().map(Record::to_json_line).collect();
    let log = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("Load job started."), "logs captured: {log}");
    for s in secrets {
        let basic_of = |k: &str| base64(format!("{k}:{s}").as_bytes());
        for needle in [
            s.to_string(),
            basic_of("key1"),
            basic_of("key2"),
            basic_of("key3"),
        ] {
            assert!(!lines.contains(&needle), "a record holds {needle}");
            assert!(!log.contains(&needle), "the log holds {needle}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Standard base64 with padding, to build the basic-auth values the target must see.
fn base64(input: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            out.push(if k <= chunk.len() {
                char::from(A[((n >> shift) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

// === the agent process under a fake controller ===

/// A controller that welcomes one agent as `agent-x`, sends it each job set put in `sets`, and
/// keeps its acks.
#[derive(Clone)]
struct FakeController {
    sets: watch::Receiver<pb::JobSet>,
    acks: Arc<Mutex<Vec<pb::JobAck>>>,
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
    fn ack(&self, generation: u64) -> Option<pb::JobAck> {
        self.acks
            .lock()
            .unwrap()
            .iter()
            .find(|a| a.generation == generation)
            .cloned()
    }
}

/// Every record in the file sink's directory tree.
fn file_records(dir: &std::path::Path) -> Vec<Record> {
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

fn job_set(generation: u64, assignments: Vec<pb::Assignment>) -> pb::JobSet {
    pb::JobSet {
        generation,
        lease_ms: 60_000,
        assignments,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_process_runs_updates_and_stops_a_load_job_from_its_controller() {
    let scale = support::wait_scale();
    let secs = |s: u64| Duration::from_secs(s * u64::from(scale));
    let dir = support::tmpdir("load-job");
    let out = dir.join("records");
    let creds = dir.join("creds");
    let secrets = ["zebra-secret-1", "zebra-secret-2"];
    std::fs::write(&creds, format!("k1:{}\nk2:{}\n", secrets[0], secrets[1])).unwrap();
    let target = TestTarget::start(Duration::from_millis(20), 0);
    let url = target.url();
    let job = |version, start: f64, credentials: &std::path::Path, id: &str| {
        let mut a = load_job(
            version,
            &url,
            60_000,
            pb::LoadSpec {
                credentials: Some(pb::LoadCredentials {
                    file: credentials.display().to_string(),
                    header: "X-Api-Key".into(),
                    ..Default::default()
                }),
                ..closed(start)
            },
        );
        a.job.as_mut().unwrap().id = id.into();
        a
    };
    let missing = dir.join("no-such-file");
    let (sets_tx, sets_rx) = watch::channel(job_set(
        1,
        vec![job(1, 2.0, &creds, "good"), job(1, 2.0, &missing, "bad")],
    ));
    let fake = FakeController {
        sets: sets_rx,
        acks: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::agent_service_server::AgentServiceServer::new(
                fake.clone(),
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
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
    let off = support::responders_off_except(&[]);
    args.extend(off.iter().copied());
    let mut agent = support::Proc {
        child: std::process::Command::new(support::agent_bin())
            .args(&args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
        name: "agent".into(),
    };

    // The job that cannot run is refused in the ack, with the reason; the other runs.
    assert!(
        eventually(secs(20), || fake.ack(1).is_some()).await,
        "ack of generation 1"
    );
    let ack = fake.ack(1).unwrap();
    assert!(
        ack.rejected
            .get("bad")
            .is_some_and(|r| r.contains("load.credentials.file")),
        "{ack:?}"
    );
    assert!(!ack.rejected.contains_key("good"), "{ack:?}");
    assert!(
        eventually(secs(5), || target.state.connections.load(Ordering::SeqCst)
            == 2)
        .await,
        "two workers"
    );
    tokio::time::sleep(Duration::from_millis(2_200)).await;

    // An update doubling the workers: two more connections within a second, no restart.
    sets_tx.send_replace(job_set(2, vec![job(2, 4.0, &creds, "good")]));
    let sent = Instant::now();
    assert!(
        eventually(secs(5), || target.state.connections.load(Ordering::SeqCst)
            >= 4)
        .await,
        "four workers"
    );
    assert!(
        sent.elapsed() < secs(1) + Duration::from_millis(500),
        "{:?}",
        sent.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(2_200)).await;

    // Stopped: every connection closed within a second of the job set, no request after.
    let stopped_job = {
        let mut a = job(3, 4.0, &creds, "good");
        a.job.as_mut().unwrap().stopped = true;
        a
    };
    sets_tx.send_replace(job_set(3, vec![stopped_job]));
    let stop = Instant::now();
    assert!(
        eventually(secs(5), || target.state.open.load(Ordering::SeqCst) == 0).await,
        "connections closed"
    );
    assert!(
        stop.elapsed() < secs(1) + Duration::from_millis(500),
        "{:?}",
        stop.elapsed()
    );
    let count = target.requests();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(target.requests(), count, "no request after the stop");
    assert_eq!(
        target.state.connections.load(Ordering::SeqCst),
        4,
        "never restarted"
    );
    assert!(fake.ack(3).is_some_and(|a| a.rejected.is_empty()));

    agent.terminate();
    server.abort();
    let records = file_records(&out);
    let load: Vec<&Record> = records
        .iter()
        .filter(|r| r.kind == Some(Kind::Load))
        .collect();
    assert!(load.len() >= 4, "{} load records", load.len());
    let mut seqs: Vec<u64> = load.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    let want: Vec<u64> = (0..seqs.len() as u64).collect();
    assert_eq!(seqs, want, "one run, one record per second");
    for r in &load {
        assert_eq!(r.job_id, "good");
        assert_eq!(r.src_agent.as_deref(), Some("agent-x"));
        assert_eq!(r.src_region.as_deref(), Some("local"));
        assert_eq!(r.control_mode, Some(ControlMode::Connected));
        assert_eq!(r.target, url);
    }
    let workers = |s: u64| {
        load.iter()
            .find(|r| r.seq == s)
            .and_then(|r| r.load_workers)
    };
    assert_eq!(workers(0), Some(2));
    assert_eq!(workers(seqs.len() as u64 - 2), Some(4));
    let seen = target.state.seen.lock().unwrap().clone();
    for s in secrets {
        assert!(seen.contains(&format!("x-api-key: {s}")), "{s} in {seen:?}");
    }
    let files = std::fs::read_to_string(dir.join("agent.log")).unwrap();
    assert!(files.contains("Load job started."), "{files}");
    assert!(files.contains("Load job updated in place."), "{files}");
    assert_eq!(
        files.matches("Load job started.").count(),
        1,
        "started once: {files}"
    );
    let lines: String = records.iter().map(Record::to_json_line).collect();
    for s in secrets {
        assert!(!files.contains(s), "the agent's log holds a secret");
        assert!(!lines.contains(s), "a record holds a secret");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
