//! Simulated agents for the control-plane scale benchmark (`scripts/bench/bench.py`,
//! `control_scale`): `--agents` light sessions in one process, speaking the real
//! `AgentService.Connect` protocol over TLS pinned by the join token, as `agent run` does
//! (`meshlat_agent::control::pin`).
//!
//! Each session sends `Hello` (no id, like a first start, so the controller names it; a region
//! among `--regions`; UDP and TCP endpoints; a certificate request for its own key, so the
//! controller issues its client certificate, unless `--no-identity`), acknowledges every `JobSet` with its generation and
//! sends a heartbeat every 5 s. By default every session has its own TLS connection, as real
//! agents do; `--streams-per-connection M` multiplexes M sessions over one HTTP/2 connection.
//!
//! The run, as an operator with `--credential` over the gRPC `OperatorService`:
//!
//! 1. starts a `per-region` job and a `k-random` job over all regions;
//! 2. opens the sessions (`--connect-concurrency` handshakes at a time) and times until every
//!    one was welcomed, then until every one acknowledged a job set with the `k-random` job;
//! 3. updates the `k-random` job (`UpdateJob`, interval 1 s -> 2 s: every agent's set changes) and
//!    times from just before the call to the last session's acknowledgement of a set carrying
//!    the new version;
//! 4. keeps the sessions up for `--hold` seconds (heartbeats flow), then prints one JSON object.
//!
//! With `--controller-pid` it samples the controller's RSS (`/proc/PID/status`) every 100 ms and
//! reports the peak while sessions were up. Open files: one socket per connection; raise
//! `ulimit -n` for both processes (bench.py does).
//!
//! # Live summaries (`--summaries`)
//!
//! With `--summaries` each session also sends `Summaries` every `--summary-interval` seconds
//! (5, the real agent's interval), once every session is welcomed: one plausible UDP pair to each
//! of `--summary-peers` other agents (0, the default: all of them), with an RTT histogram
//! (`meshlat_proto::sketch`), p50/p99 from 20 samples around a base RTT that grows with the
//! region distance, and a little loss. The matrix of 500 agents is then full (500 × 499 pairs,
//! within the default `--max-live-pairs` of 250,000 and `--max-live-bytes`), for measuring a
//! dashboard at that size. Against a local controller (its join token and credential from its
//! first-start secrets file):
//!
//! ```text
//! target/release/controller serve --region r00 --data-dir /tmp/ctl &
//! cargo run --release -p meshlat-controller --example simagents -- \
//!     --controller 127.0.0.1:7400 --token "$TOKEN" --credential "$CREDENTIAL" \
//!     --agents 500 --regions 10 --no-identity --summaries --hold 3600
//! ```
//!
//! The sessions stay up (and keep reporting) for `--hold` seconds after the measurement; the
//! matrix is at `GET /api/v1/matrix` and `/api/v1/stream` meanwhile.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod sim;
use sim::{endpoints, region_and_az, spec};

use anyhow::{Context, Result, bail};
use clap::Parser;
use meshlat_agent::control::pin;
use meshlat_proto::pb;
use meshlat_proto::pb::agent_message::Msg;
use meshlat_proto::pb::controller_message::Msg as In;
use meshlat_proto::token::JoinToken;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Heartbeat interval (the real agent's).
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Give up on a connection after backing off up to this long (the agent's own cap is 30 s).
const MAX_BACKOFF: Duration = Duration::from_secs(8);

#[derive(Parser)]
#[command(about = "Simulated agents against one controller")]
struct Args {
    /// The controller's gRPC address, host:port (the host must be in its certificate).
    #[arg(long)]
    controller: String,
    /// Join token (`mlt1.<ca-sha256>.<secret>`): pins TLS and authenticates the sessions.
    #[arg(long, env = "MESHLAT_TOKEN")]
    token: String,
    /// Operator credential `key:secret` for the job calls.
    #[arg(long, env = "MESHLAT_CREDENTIAL")]
    credential: String,
    /// Sessions to open.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Regions the sessions say they are in (round robin).
    #[arg(long, default_value_t = 30)]
    regions: usize,
    /// Sessions per TLS connection (1: one connection per agent, as real agents).
    #[arg(long, default_value_t = 1)]
    streams_per_connection: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// `k` of the k-random job.
    #[arg(long, default_value_t = 32)]
    k: u32,
    /// `k` of the per-region job.
    #[arg(long, default_value_t = 3)]
    per_region_k: u32,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Seconds to keep the sessions up after the measurement.
    #[arg(long, default_value_t = 6.0)]
    hold: f64,
    /// Controller process id, to sample its RSS.
    #[arg(long)]
    controller_pid: Option<u32>,
    /// Send no certificate requests, as agents older than per-agent identities (by default each
    /// session's Hello asks for its client certificate, as a real agent's first join does).
    #[arg(long)]
    no_identity: bool,
    /// Each session also sends live summaries (see the module docs).
    #[arg(long)]
    summaries: bool,
    /// Seconds between a session's summaries.
    #[arg(long, default_value_t = 5.0)]
    summary_interval: f64,
    /// Pairs per session's summaries: to this many other agents (0: all of them).
    #[arg(long, default_value_t = 0)]
    summary_peers: usize,
}

/// What the sessions report, indexed by session.
struct Shared {
    base: Instant,
    /// The k-random job's id (set before any session starts).
    job: String,
    welcomed: AtomicUsize,
    welcomed_last_ns: AtomicU64,
    /// Welcomes that carried a client certificate.
    certificates: AtomicUsize,
    /// Latest k-random job version acknowledged by each session.
    version: Vec<AtomicU64>,
    /// When each session first acknowledged that version (ns since `base`).
    acked_ns: Vec<AtomicU64>,
    job_sets: AtomicU64,
    errors: AtomicUsize,
    first_error: Mutex<Option<String>>,
    /// Connection attempts retried (as agents do: jittered exponential backoff).
    retries: AtomicUsize,
    /// Each session's agent id, from its Welcome.
    ids: Vec<std::sync::OnceLock<String>>,
    /// `--summaries`: every how long, to how many others (0: all).
    summaries: Option<(Duration, usize)>,
    regions: usize,
    /// `Summaries` messages sent.
    summaries_sent: AtomicU64,
}

impl Shared {
    fn ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        f.get_or_insert(e);
    }

    /// Sessions whose acknowledged version is at least `v`, and the latest first-ack time.
    fn acked(&self, v: u64) -> (usize, u64) {
        let mut n = 0;
        let mut last = 0;
        for (ver, at) in self.version.iter().zip(&self.acked_ns) {
            if ver.load(Ordering::Acquire) >= v {
                n += 1;
                last = last.max(at.load(Ordering::Relaxed));
            }
        }
        (n, last)
    }
}

fn hello(i: usize, regions: usize) -> pb::Hello {
    let (region, az) = region_and_az(i, regions);
    pb::Hello {
        agent_id: String::new(),
        region,
        az,
        location: String::new(),
        // A distinct loopback address per agent: sessions come from 127.0.0.1, and a loopback
        // peer may advertise only loopback addresses (controller `address_policy`).
        endpoints: endpoints(127, i),
        capabilities: vec!["udp".into(), "tcp".into()],
        version: "simagents".into(),
        ..Default::default()
    }
}

fn bearer(s: &str) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    format!("Bearer {s}")
        .parse()
        .context("credential is not a valid header value")
}

/// A fresh key's certificate request (PKCS#10, DER), as an agent's first Hello carries.
fn certificate_request() -> Result<Vec<u8>> {
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
    Ok(csr.der().to_vec())
}

/// Session `i`'s simulated summaries: a UDP pair of job `job` to each of `peers` other agents
/// (0: all) that have an id yet, 20 samples around a base RTT growing with the region distance.
fn summaries(i: usize, shared: &Shared, peers: usize) -> pb::Summaries {
    use meshlat_proto::sketch::{RttHistogram, nearest_rank};
    let n = shared.ids.len();
    if n < 2 {
        return pb::Summaries::default();
    }
    let peers = if peers == 0 { n - 1 } else { peers.min(n - 1) };
    let regions = shared.regions.max(1);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let pairs = (1..=peers)
        .filter_map(|d| {
            let j = (i + d) % n;
            let dst = shared.ids[j].get()?;
            let (ri, rj) = ((i % regions) as f64, (j % regions) as f64);
            let base = 0.3 + 7.5 * (ri - rj).abs() + (i * 31 + j * 17) as f64 % 10.0 * 0.05;
            let mut samples: Vec<f64> = (0..20)
                .map(|k| {
                    let tail = if k == 19 && rand::random::<f64>() < 0.2 {
                        3.0
                    } else {
                        1.0
                    };
                    base * (1.0 + 0.08 * rand::random::<f64>()) * tail
                })
                .collect();
            samples.sort_by(f64::total_cmp);
            let mut h = RttHistogram::new();
            for v in &samples {
                h.record(*v);
            }
            let lost = u64::from(rand::random::<f64>() < 0.05);
            let ip = endpoints(127, j)[0].address.clone();
            Some(pb::PairSummary {
                job_id: shared.job.clone(),
                protocol: "udp".into(),
                dst_agent: dst.clone(),
                target: format!("udp://{ip}"),
                p50_ms: nearest_rank(&samples, 0.5).unwrap_or(0.0),
                p99_ms: nearest_rank(&samples, 0.99).unwrap_or(0.0),
                sent: 20 + lost,
                lost,
                samples: 20,
                window_end_unix_ms: now_ms,
                rtt_histogram: Some(h.to_pb()),
                ..Default::default()
            })
        })
        .collect();
    pb::Summaries { pairs }
}

fn msg(m: Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(m) }
}

/// One agent session until `stop`.
async fn session(
    i: usize,
    channel: Channel,
    hello: pb::Hello,
    auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Result<(), String> {
    let mut client = pb::agent_service_client::AgentServiceClient::with_interceptor(
        channel,
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", auth.clone());
            Ok(req)
        },
    );
    let (tx, rx) = mpsc::channel(4);
    let _ = tx.send(msg(Msg::Hello(hello))).await;
    let mut inbound = client
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("connect: {s}"))?
        .into_inner();
    // Spread heartbeats over the interval, as independent agents would be.
    let phase = HEARTBEAT.mul_f64((i % 1000) as f64 / 1000.0);
    let mut heartbeat = tokio::time::interval_at(Instant::now() + phase, HEARTBEAT);
    // Summaries (if asked), spread over their interval likewise.
    let (every, summary_peers) = shared.summaries.unwrap_or((Duration::from_secs(86_400), 0));
    let mut summary = tokio::time::interval_at(
        Instant::now() + every.mul_f64((i % 1000) as f64 / 1000.0),
        every,
    );
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut generation = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            m = inbound.message() => {
                let m = m.map_err(|s| format!("stream: {s}"))?.ok_or("the controller closed the session")?;
                match m.msg {
                    Some(In::Welcome(w)) => {
                        if w.certificate.is_some() {
                            shared.certificates.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = shared.ids[i].set(w.agent_id.clone());
                        shared.welcomed.fetch_add(1, Ordering::Relaxed);
                        shared.welcomed_last_ns.fetch_max(shared.ns(), Ordering::Relaxed);
                    }
                    Some(In::JobSet(set)) => {
                        generation = set.generation;
                        let version = set
                            .assignments
                            .iter()
                            .filter_map(|a| a.job.as_ref())
                            .filter(|j| j.id == shared.job)
                            .map(|j| j.version)
                            .max()
                            .unwrap_or(0);
                        let ack = pb::JobAck { generation, rejected: Default::default() };
                        tx.send(msg(Msg::Ack(ack))).await.map_err(|_| "session closed")?;
                        shared.job_sets.fetch_add(1, Ordering::Relaxed);
                        if version > shared.version[i].load(Ordering::Relaxed) {
                            shared.acked_ns[i].store(shared.ns(), Ordering::Relaxed);
                            shared.version[i].store(version, Ordering::Release);
                        }
                    }
                    None => return Err("empty controller message".into()),
                }
            }
            _ = heartbeat.tick() => {
                let hb = pb::Heartbeat { unix_ms: 0, generation };
                tx.send(msg(Msg::Heartbeat(hb))).await.map_err(|_| "session closed")?;
            }
            // Once every session is welcomed (so every pair has its destination's id).
            _ = summary.tick(), if shared.summaries.is_some()
                && shared.welcomed.load(Ordering::Relaxed) >= shared.ids.len() => {
                let s = summaries(i, &shared, summary_peers);
                tx.send(msg(Msg::Summaries(s))).await.map_err(|_| "session closed")?;
                shared.summaries_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Waits until `done` returns true, polling every 5 ms, or fails after `timeout`.
async fn until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let token = JoinToken::parse(&a.token).context("--token")?;
    let tls = Arc::new(pin::client_config(token.ca_sha256)?);
    let (host, port) = a
        .controller
        .rsplit_once(':')
        .context("--controller must be host:port")?;
    let port: u16 = port.parse().context("--controller port")?;
    let host = host.to_string();
    let timeout = Duration::from_secs_f64(a.timeout);

    // RSS sampling: peak while every session is up.
    let all_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rss_peak = Arc::new(AtomicU64::new(0));
    let rss_peak_up = Arc::new(AtomicU64::new(0));
    if let Some(pid) = a.controller_pid {
        let (all_up, peak, peak_up) = (all_up.clone(), rss_peak.clone(), rss_peak_up.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let Some(r) = rss_bytes(pid) else { return };
                peak.fetch_max(r, Ordering::Relaxed);
                if all_up.load(Ordering::Relaxed) {
                    peak_up.fetch_max(r, Ordering::Relaxed);
                }
            }
        });
    }

    // The operator's jobs.
    let op_channel = pin::connect(host.clone(), port, Some(tls.clone()))
        .await
        .context("operator connection")?;
    let op_auth = bearer(&a.credential)?;
    let mut op = pb::operator_service_client::OperatorServiceClient::with_interceptor(
        op_channel,
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", op_auth.clone());
            Ok(req)
        },
    );
    let start = |s| pb::StartJobRequest { spec: Some(s) };
    op.start_job(start(spec(
        pb::PinglistStrategy::PerRegion,
        a.per_region_k,
        a.regions,
        1000,
    )))
    .await
    .context("start per-region job")?;
    let kr = op
        .start_job(start(spec(
            pb::PinglistStrategy::KRandom,
            a.k,
            a.regions,
            1000,
        )))
        .await
        .context("start k-random job")?
        .into_inner();

    let shared = Arc::new(Shared {
        base: Instant::now(),
        job: kr.id.clone(),
        welcomed: AtomicUsize::new(0),
        welcomed_last_ns: AtomicU64::new(0),
        certificates: AtomicUsize::new(0),
        version: (0..a.agents).map(|_| AtomicU64::new(0)).collect(),
        acked_ns: (0..a.agents).map(|_| AtomicU64::new(0)).collect(),
        job_sets: AtomicU64::new(0),
        errors: AtomicUsize::new(0),
        retries: AtomicUsize::new(0),
        first_error: Mutex::new(None),
        ids: (0..a.agents).map(|_| std::sync::OnceLock::new()).collect(),
        summaries: a.summaries.then(|| {
            (
                Duration::from_secs_f64(a.summary_interval.max(0.1)),
                a.summary_peers,
            )
        }),
        regions: a.regions,
        summaries_sent: AtomicU64::new(0),
    });
    // Each session's key and certificate request, made before the clock starts (a real agent
    // makes its own before its first Hello).
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(if a.no_identity {
        Vec::new()
    } else {
        let t = Instant::now();
        let r = (0..a.agents)
            .map(|_| certificate_request())
            .collect::<Result<Vec<_>>>()?;
        eprintln!(
            "simagents: {} certificate requests made in {:.1} s",
            a.agents,
            t.elapsed().as_secs_f64()
        );
        r
    });
    let stop = CancellationToken::new();
    let auth = bearer(&a.token)?;
    let per = a.streams_per_connection.max(1);
    let connections = a.agents.div_ceil(per);
    let gate = Arc::new(Semaphore::new(a.connect_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let t_connect = shared.ns();
    eprintln!(
        "simagents: opening {} sessions over {connections} connections",
        a.agents
    );
    for c in 0..connections {
        let requests = requests.clone();
        let (host, tls, gate, shared, stop, auth) = (
            host.clone(),
            tls.clone(),
            gate.clone(),
            shared.clone(),
            stop.clone(),
            auth.clone(),
        );
        let (regions, n) = (a.regions, a.agents);
        tasks.spawn(async move {
            // Like a real agent: a failed connect (the controller's accept queue overflowing
            // during the storm) is retried with jittered exponential backoff.
            let mut backoff = Duration::from_millis(500);
            let channel = loop {
                let attempt = {
                    let _permit = gate.acquire().await;
                    pin::connect(host.clone(), port, Some(tls.clone())).await
                };
                match attempt {
                    Ok(ch) => break ch,
                    Err(e) if backoff <= MAX_BACKOFF => {
                        let _ = e;
                        shared.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(backoff.mul_f64(0.5 + rand::random::<f64>())).await;
                        backoff *= 2;
                    }
                    Err(e) => {
                        shared.error(format!("connect: {e}"));
                        return;
                    }
                }
            };
            let mut sessions = tokio::task::JoinSet::new();
            for i in (c * per)..((c + 1) * per).min(n) {
                let (ch, shared2, stop, auth) =
                    (channel.clone(), shared.clone(), stop.clone(), auth.clone());
                let request = requests.get(i).cloned().unwrap_or_default();
                sessions.spawn(async move {
                    // A session refused before its Welcome (no id yet, so no duplicate) is
                    // retried like a real agent's; anything later is an error.
                    let mut backoff = Duration::from_millis(500);
                    loop {
                        let r = session(
                            i,
                            ch.clone(),
                            pb::Hello {
                                certificate_request: request.clone(),
                                ..hello(i, regions)
                            },
                            auth.clone(),
                            shared2.clone(),
                            stop.clone(),
                        )
                        .await;
                        match r {
                            Err(e) if e.starts_with("connect:") && backoff <= MAX_BACKOFF => {
                                shared2.retries.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(backoff.mul_f64(0.5 + rand::random::<f64>()))
                                    .await;
                                backoff *= 2;
                            }
                            Err(e) => break shared2.error(e),
                            Ok(()) => break,
                        }
                    }
                });
            }
            while sessions.join_next().await.is_some() {}
        });
    }

    let mut report = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        report.insert(k.into(), v);
    };
    put("agents", a.agents.into());
    put("regions", a.regions.into());
    put("connections", connections.into());
    put("streams_per_connection", per.into());
    let res: Result<()> = async {
        until("every session welcomed", timeout, || {
            shared.welcomed.load(Ordering::Relaxed) + shared.errors.load(Ordering::Relaxed)
                >= a.agents
        })
        .await?;
        let up = shared.welcomed.load(Ordering::Relaxed);
        put("sessions_up", up.into());
        put(
            "certificates_issued",
            shared.certificates.load(Ordering::Relaxed).into(),
        );
        put(
            "connect_all_s",
            (shared
                .welcomed_last_ns
                .load(Ordering::Relaxed)
                .saturating_sub(t_connect) as f64
                / 1e9)
                .into(),
        );
        if up < a.agents {
            bail!("only {up} of {} sessions came up", a.agents);
        }
        all_up.store(true, Ordering::Relaxed);
        until("every session acked the k-random job", timeout, || {
            shared.acked(kr.version).0 >= a.agents
        })
        .await?;
        let (_, last) = shared.acked(kr.version);
        put(
            "initial_assign_all_s",
            (last.saturating_sub(t_connect) as f64 / 1e9).into(),
        );
        // Let the connect storm's last recomputations settle before the trigger.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t0 = shared.ns();
        let updated = op
            .update_job(pb::UpdateJobRequest {
                id: kr.id.clone(),
                spec: Some(spec(pb::PinglistStrategy::KRandom, a.k, a.regions, 2000)),
                expected_version: kr.version,
            })
            .await
            .context("update k-random job")?
            .into_inner();
        let t_call = shared.ns();
        until("every session acked the updated job", timeout, || {
            shared.acked(updated.version).0 >= a.agents
        })
        .await?;
        let (_, last) = shared.acked(updated.version);
        put("update_call_s", ((t_call - t0) as f64 / 1e9).into());
        put(
            "update_to_last_ack_s",
            ((last.max(t0) - t0) as f64 / 1e9).into(),
        );
        tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
        Ok(())
    }
    .await;
    put(
        "job_sets_received",
        shared.job_sets.load(Ordering::Relaxed).into(),
    );
    put(
        "session_errors",
        shared.errors.load(Ordering::Relaxed).into(),
    );
    put(
        "connect_retries",
        shared.retries.load(Ordering::Relaxed).into(),
    );
    if a.summaries {
        put(
            "summaries_sent",
            shared.summaries_sent.load(Ordering::Relaxed).into(),
        );
    }
    if let Some(e) = shared
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        put("first_error", e.into());
    }
    if a.controller_pid.is_some() {
        let mib = |v: &AtomicU64| v.load(Ordering::Relaxed) as f64 / f64::from(1 << 20);
        put("controller_rss_peak_mib", mib(&rss_peak).into());
        put("controller_rss_sessions_up_mib", mib(&rss_peak_up).into());
    }
    if let Err(e) = &res {
        put("error", format!("{e:#}").into());
    }
    println!("{}", serde_json::Value::Object(report));
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    res
}
