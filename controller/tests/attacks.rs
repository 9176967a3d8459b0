//! The attack regression suite (issue 10): each test reproduces an attack on real `controller`
//! processes on loopback and shows it now fails safely — the input is refused naming the field
//! and the limit, the controller stays up and keeps serving.
//!
//! - [`hostile_k_is_refused_over_rest_grpc_and_cli`]: `k = 4294967295` (it used to abort the
//!   controller allocating 137 GB, at every restart).
//! - [`a_saved_job_this_version_cannot_schedule_is_quarantined`]: the same job in the saved
//!   state, as an old version wrote it.
//! - [`a_federation_peer_cannot_plant_a_hostile_job`]: a peer's hostile jobs are ignored.
//! - [`targets_and_jobs_are_capped_and_job_list_works_at_the_caps`]: 40,000 targets; the job
//!   cap; `controller job list` over 4 MiB.
//! - [`stopped_jobs_are_not_sent_to_peers_and_expire`].
//! - [`hostile_summaries_keep_rss_bounded_and_expire_unread`]: RSS with maximum-size summaries.
//! - [`agents_are_capped_and_removed_after_the_expiry`].
//!
//! Sessions are simulated over the real `AgentService.Connect` protocol (as
//! `controller/examples/simagents.rs` does), many streams on one TLS connection.

mod support;
use support::{TestController as Ctl, bearer, eventually, tmp_dir};

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use meshlat_proto::pb;
use prost::Message;
use serde_json::Value;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;

/// A federation secret long enough for any minimum length.
const FED_SECRET: &str = "attack-suite-federation-secret-0123456789abcdef";

/// A controller of region `r1` with `extra` flags, its secrets printed (`--print-secrets`) and
/// kept in `data/attack-secrets` for a restart; its log goes to `data/../<name>.log`.
async fn start(data: &Path, extra: &[&str]) -> Result<Ctl> {
    start_limited(data, extra, None).await
}

/// [`start`] with the open-files limit (soft and hard) set to `nofile` (`prlimit`).
async fn start_limited(data: &Path, extra: &[&str], nofile: Option<u64>) -> Result<Ctl> {
    std::fs::create_dir_all(data)?;
    let mut b = Ctl::builder(data)
        .print_secrets(data.join("attack-secrets"))
        .args(extra)
        .env("RUST_LOG", "info,meshlat_controller::registry=debug")
        .env("NO_COLOR", "1")
        .log_append(data.with_extension("log"))
        .announce_within(Duration::from_secs(30));
    if let Some(n) = nofile {
        b = b.nofile(n);
    }
    b.spawn().await
}

/// The end of a test: the controller still serves ([`Ctl::serves`]); `root` is removed.
async fn still_serving_then_clean_up(mut ctl: Ctl, root: &Path) -> Result<()> {
    ctl.serves().await?;
    let _ = std::fs::remove_dir_all(root);
    Ok(())
}

/// What this suite needs of a controller beyond the harness's.
impl Ctl {
    /// The controller keeps serving: REST answers a job list.
    async fn serves(&mut self) -> Result<()> {
        assert!(
            self.alive(),
            "controller exited; see {}",
            self.log
                .as_deref()
                .unwrap_or(Path::new("its log"))
                .display()
        );
        let (st, v) = self.rest("GET", "/api/v1/jobs", "", None).await?;
        anyhow::ensure!(st == 200, "GET /api/v1/jobs: {st} {v}");
        Ok(())
    }

    /// `POST /api/v1/jobs` of [`HOSTILE_K`] with a sane `k` (3).
    async fn start_sane_job(&self) -> Result<(u16, Value)> {
        let body = HOSTILE_K.replace("4294967295", "3");
        self.rest("POST", "/api/v1/jobs", &body, None).await
    }
}

/// A simulated agent session: its sender and the controller's messages.
struct Session {
    id: String,
    tx: mpsc::Sender<pb::AgentMessage>,
    rx: tonic::Streaming<pb::ControllerMessage>,
}

impl Session {
    /// Opens a session on `ch` with `token`, saying Hello as `id` (empty: a new agent).
    async fn open(ch: &Channel, token: &str, id: &str) -> Result<Self, tonic::Status> {
        Self::open_in(ch, token, id, "r1").await
    }

    /// [`Session::open`] for an agent of `region`.
    async fn open_in(
        ch: &Channel,
        token: &str,
        id: &str,
        region: &str,
    ) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(4);
        let hello = pb::Hello {
            agent_id: id.into(),
            region: region.into(),
            az: format!("{region}a"),
            endpoints: vec![pb::ResponderEndpoint {
                protocol: pb::Protocol::Udp as i32,
                address: "127.0.0.1:9".into(),
            }],
            version: "attack".into(),
            ..Default::default()
        };
        tx.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Hello(hello)),
        })
        .await
        .map_err(|_| tonic::Status::internal("send"))?;
        let mut client = pb::agent_service_client::AgentServiceClient::with_interceptor(
            ch.clone(),
            bearer(token),
        )
        .max_encoding_message_size(64 << 20);
        let mut rx = client
            .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let id = match rx.message().await? {
            Some(pb::ControllerMessage {
                msg: Some(pb::controller_message::Msg::Welcome(w)),
            }) => w.agent_id,
            other => return Err(tonic::Status::internal(format!("no Welcome: {other:?}"))),
        };
        Ok(Session { id, tx, rx })
    }

    async fn send(&self, m: pb::agent_message::Msg) -> Result<()> {
        self.tx
            .send(pb::AgentMessage { msg: Some(m) })
            .await
            .map_err(|_| anyhow!("session {} closed", self.id))
    }

    /// The next job set (skipping nothing else: the controller sends only job sets now).
    async fn job_set(&mut self, secs: u64) -> Result<pb::JobSet> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(secs), self.rx.message())
                .await
                .context("no job set in time")??
                .context("session ended")?;
            if let Some(pb::controller_message::Msg::JobSet(s)) = m.msg {
                return Ok(s);
            }
        }
    }

    /// The ids of the jobs in the next job set.
    async fn job_ids(&mut self, secs: u64) -> Result<Vec<String>> {
        let set = self.job_set(secs).await?;
        Ok(set
            .assignments
            .iter()
            .filter_map(|a| a.job.as_ref().map(|j| j.id.clone()))
            .collect())
    }
}

fn sel(s: &str) -> pb::Endpoint {
    pb::Endpoint {
        endpoint: Some(pb::endpoint::Endpoint::Selector(s.into())),
    }
}

fn spec(name: &str, strategy: pb::PinglistStrategy, k: u32) -> pb::JobSpec {
    pb::JobSpec {
        name: name.into(),
        kind: pb::JobKind::Probe as i32,
        protocols: vec![pb::Protocol::Udp as i32],
        sources: vec![sel("region=r1")],
        targets: vec![sel("region=r1")],
        interval_ms: 1000,
        timeout_ms: 500,
        strategy: strategy as i32,
        k,
        ..Default::default()
    }
}

fn job(id: &str, spec: pb::JobSpec) -> pb::Job {
    pb::Job {
        id: id.into(),
        spec: Some(spec),
        version: 1,
        created_unix_ms: 1,
        updated_unix_ms: 1,
        stopped: false,
        agent_status: Vec::new(),
    }
}

const HOSTILE_K: &str = r#"{"name":"boom","protocols":["udp"],"sources":["region=r1"],
    "targets":["region=r1"],"interval_ms":1000,"timeout_ms":500,"strategy":"k-random","k":4294967295}"#;

/// A new agent's session with `token`, which must be refused as over a cap
/// (`ResourceExhausted`): the refusal.
async fn refused_at_a_cap(ch: &Channel, token: &str, what: &str) -> Result<tonic::Status> {
    let e = Session::open(ch, token, "")
        .await
        .err()
        .with_context(|| format!("{what} is refused"))?;
    println!("{what}: {e}");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    Ok(e)
}

/// The protobuf message of a state file (after its format header).
fn state_message(file: &[u8]) -> Result<&[u8]> {
    Ok(meshlat_proto::state_file::decode(file)?.1)
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_k_is_refused_over_rest_grpc_and_cli() -> Result<()> {
    let root = tmp_dir("attacks", "k");
    let ctl = start(&root.join("ctl"), &[]).await?;
    // An agent, so a k-random job is scheduled at once (the old abort needed a source).
    let ch = ctl.grpc_channel().await?;
    let mut s = Session::open(&ch, ctl.token(), "").await?;
    s.job_set(10).await?;
    // And one to measure to.
    let _other = Session::open(&ch, ctl.token(), "").await?;

    let (st, v) = ctl.rest("POST", "/api/v1/jobs", HOSTILE_K, None).await?;
    println!("POST k=4294967295: {st} {v}");
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["field"], "spec.k", "{v}");
    assert_eq!(v["error"]["limit"], 1000, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("4294967295") && msg.contains("0..=1000"),
        "{msg}"
    );

    let mut op = pb::operator_service_client::OperatorServiceClient::with_interceptor(
        ch.clone(),
        bearer(ctl.credential()),
    );
    let e = op
        .start_job(pb::StartJobRequest {
            spec: Some(spec("boom", pb::PinglistStrategy::KRandom, u32::MAX)),
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let md = |k: &str| {
        e.metadata()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(
        (md("x-meshlat-field"), md("x-meshlat-limit")),
        (Some("spec.k".into()), Some("1000".into()))
    );

    let file = root.join("boom.json");
    std::fs::write(&file, HOSTILE_K)?;
    let (ok, _, err) = ctl
        .cli(&["job", "start", file.to_str().context("path")?])
        .await?;
    assert!(!ok && err.contains("spec.k"), "{err}");

    // Still serving: a sane k-random job starts and reaches the agent.
    let (st, v) = ctl.start_sane_job().await?;
    assert_eq!(st, 201, "{v}");
    let set = s.job_set(10).await?;
    assert_eq!(set.assignments.len(), 1);
    still_serving_then_clean_up(ctl, &root).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_job_this_version_cannot_schedule_is_quarantined() -> Result<()> {
    let root = tmp_dir("attacks", "quarantine");
    let data = root.join("ctl");
    // The state an old version saved: a sane job, the hostile one, and two agents (loaded
    // agents are scheduled at start, so the old version aborted in its first round).
    let state = data.join("state");
    std::fs::create_dir_all(&state)?;
    let good = job("good-job", spec("ok", pb::PinglistStrategy::KRandom, 1));
    let bad = job(
        "bad-job",
        spec("boom", pb::PinglistStrategy::KRandom, u32::MAX),
    );
    std::fs::write(
        state.join("jobs.pb"),
        pb::StoredJobs {
            jobs: vec![good.clone(), bad.clone()],
        }
        .encode_to_vec(),
    )?;
    let agent = |id: &str, port: u16| pb::StoredAgent {
        info: Some(pb::AgentInfo {
            id: id.into(),
            region: "r1".into(),
            ..Default::default()
        }),
        endpoints: vec![pb::ResponderEndpoint {
            protocol: pb::Protocol::Udp as i32,
            address: format!("127.0.0.1:{port}"),
        }],
        ..Default::default()
    };
    std::fs::write(
        state.join("agents.pb"),
        pb::StoredAgents {
            agents: vec![agent("a1", 9), agent("a2", 10)],
        }
        .encode_to_vec(),
    )?;

    let mut ctl = start(&data, &[]).await?;
    // Past the first scheduling round.
    let ch = ctl.grpc_channel().await?;
    let mut s = Session::open(&ch, ctl.token(), "a1").await?;
    assert_eq!(s.job_ids(10).await?, vec!["good-job".to_string()]);
    ctl.serves().await?;
    let log = ctl.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("Stored job quarantined"))
        .context("a quarantine log line")?;
    println!("{line}");
    assert!(
        line.contains("bad-job") && line.contains("spec.k") && line.contains("1000"),
        "{line}"
    );
    let (_, v) = ctl
        .rest("GET", "/api/v1/jobs?include_stopped=true", "", None)
        .await?;
    let ids: Vec<&str> = v["jobs"]
        .as_array()
        .context("jobs")?
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["good-job"]);
    let q = pb::StoredJobs::decode(state_message(&std::fs::read(
        state.join("jobs.quarantined.pb"),
    )?)?)?;
    assert_eq!(q.jobs, vec![bad], "moved aside intact");
    drop(s);
    ctl.stop().await?;

    // A restart finds a clean state: no second quarantine.
    let mut ctl = start(&data, &[]).await?;
    ctl.serves().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        ctl.log_text().matches("Stored job quarantined").count(),
        1,
        "quarantined once"
    );
    let q = pb::StoredJobs::decode(state_message(&std::fs::read(
        state.join("jobs.quarantined.pb"),
    )?)?)?;
    assert_eq!(q.jobs.len(), 1);
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federation_peer_cannot_plant_a_hostile_job() -> Result<()> {
    let root = tmp_dir("attacks", "peer");
    let mut ctl = start(&root.join("ctl"), &["--federation-secret", FED_SECRET]).await?;
    let ch = ctl.grpc_channel().await?;
    let mut s = Session::open(&ch, ctl.token(), "").await?;
    s.job_set(10).await?;
    // And one to measure to.
    let _other = Session::open(&ch, ctl.token(), "").await?;

    // A peer (holding the federation secret) offers jobs for our region: a benign one, the
    // hostile k, 40,000 targets, and a stopped one.
    let mut many = spec("many", pb::PinglistStrategy::Full, 0);
    many.targets = (0..40_000)
        .map(|i| pb::Endpoint {
            endpoint: Some(pb::endpoint::Endpoint::AgentId(format!("x{i}"))),
        })
        .collect();
    let mut stopped = job("peer-stopped", spec("old", pb::PinglistStrategy::Full, 0));
    stopped.stopped = true;
    let dir = pb::Directory {
        region: "evil".into(),
        controller_url: "https://127.0.0.1:1".into(),
        jobs: vec![
            job(
                "peer-benign",
                spec("fine", pb::PinglistStrategy::KRandom, 2),
            ),
            job(
                "peer-hostile-k",
                spec("boom", pb::PinglistStrategy::KRandom, u32::MAX),
            ),
            job("peer-many-targets", many),
            stopped,
        ],
        ttl_ms: 30_000,
        unix_ms: 1,
        ..Default::default()
    };
    let mut fed = pb::federation_service_client::FederationServiceClient::with_interceptor(
        ch.clone(),
        bearer(FED_SECRET),
    )
    .max_encoding_message_size(64 << 20);
    for _ in 0..3 {
        fed.exchange(dir.clone()).await?;
    }
    // The benign job is scheduled for our agent; the others never.
    assert_eq!(s.job_ids(10).await?, vec!["peer-benign".to_string()]);
    ctl.serves().await?;
    let log = ctl.log_text();
    for (id, field) in [
        ("peer-hostile-k", "spec.k"),
        ("peer-many-targets", "spec.targets"),
    ] {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("Peer job refused") && l.contains(id))
            .collect();
        println!("{lines:?}");
        assert_eq!(
            lines.len(),
            1,
            "logged once over three exchanges: {lines:?}"
        );
        assert!(lines[0].contains(field), "{}", lines[0]);
    }
    assert!(
        !log.contains("peer-stopped"),
        "a stopped peer job is dropped silently"
    );
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_and_jobs_are_capped_and_job_list_works_at_the_caps() -> Result<()> {
    const JOBS: usize = 150;
    let root = tmp_dir("attacks", "caps");
    let ctl = start(&root.join("ctl"), &["--max-jobs", &JOBS.to_string()]).await?;

    let targets: Vec<String> = (0..40_000).map(|i| format!("\"agent-{i}\"")).collect();
    let body = format!(
        r#"{{"name":"wide","protocols":["udp"],"sources":["region=r1"],"targets":[{}],
        "interval_ms":1000,"timeout_ms":500}}"#,
        targets.join(",")
    );
    let (st, v) = ctl.rest("POST", "/api/v1/jobs", &body, None).await?;
    println!("40,000 targets: {st} {v}");
    assert_eq!(
        (st, &v["error"]["field"], &v["error"]["limit"]),
        (400, &Value::from("spec.targets"), &Value::from(256)),
        "{v}"
    );

    // Fill the cap with the largest jobs: 256 URL targets each, just under 32 KiB encoded.
    let mut op = pb::operator_service_client::OperatorServiceClient::with_interceptor(
        ctl.grpc_channel().await?,
        bearer(ctl.credential()),
    );
    let big = |n: usize| {
        let mut s = spec(&format!("big-{n}"), pb::PinglistStrategy::Full, 0);
        s.protocols = vec![pb::Protocol::Http as i32];
        s.targets = (0..256)
            .map(|i| {
                let host = format!("http://h{n}-{i}.example.invalid:8080/");
                pb::Endpoint {
                    endpoint: Some(pb::endpoint::Endpoint::Url(format!("{host:x<118}"))),
                }
            })
            .collect();
        s
    };
    let size = big(0).encoded_len();
    assert!(
        (31_000..=meshlat_proto::job::MAX_SPEC_BYTES).contains(&size),
        "{size}"
    );
    let started = Instant::now();
    for n in 0..JOBS {
        op.start_job(pb::StartJobRequest { spec: Some(big(n)) })
            .await?;
    }
    println!(
        "{JOBS} jobs of {size} bytes started in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (st, v) = ctl.start_sane_job().await?;
    println!("job {}: {st} {v}", JOBS + 1);
    assert_eq!(st, 429, "{v}");
    assert_eq!(
        (
            &v["error"]["code"],
            &v["error"]["field"],
            &v["error"]["limit"]
        ),
        (
            &Value::from("resource_exhausted"),
            &Value::from("jobs"),
            &Value::from(JOBS)
        ),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--max-jobs")),
        "{v}"
    );

    // The list is over gRPC's default 4 MiB; the CLI reads it whole.
    let listed = op
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .map(|r| r.into_inner().encoded_len());
    println!("ListJobs with the default 4 MiB decode limit: {listed:?}");
    let (ok, out, err) = ctl.cli(&["job", "list"]).await?;
    assert!(ok, "controller job list: {err}");
    assert_eq!(out.lines().count(), JOBS + 1, "header and every job");
    let (st, v) = ctl.rest("GET", "/api/v1/jobs", "", None).await?;
    assert_eq!((st, v["jobs"].as_array().map(Vec::len)), (200, Some(JOBS)));
    still_serving_then_clean_up(ctl, &root).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_jobs_are_not_sent_to_peers_and_expire() -> Result<()> {
    let root = tmp_dir("attacks", "stopped");
    let ctl = start(
        &root.join("ctl"),
        &["--federation-secret", FED_SECRET, "--stopped-job-ttl", "2"],
    )
    .await?;
    let mut fed = pb::federation_service_client::FederationServiceClient::with_interceptor(
        ctl.grpc_channel().await?,
        bearer(FED_SECRET),
    );
    let peer = pb::Directory {
        region: "p".into(),
        ttl_ms: 30_000,
        ..Default::default()
    };
    let (st, j) = ctl.start_sane_job().await?;
    assert_eq!(st, 201, "{j}");
    let id = j["id"].as_str().context("id")?.to_string();
    let sent = fed.exchange(peer.clone()).await?.into_inner();
    assert_eq!(
        sent.jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        vec![id.as_str()]
    );
    let (st, _) = ctl
        .rest("DELETE", &format!("/api/v1/jobs/{id}"), "", None)
        .await?;
    assert_eq!(st, 200);
    let sent = fed.exchange(peer.clone()).await?.into_inner();
    assert!(
        sent.jobs.is_empty(),
        "a stopped job is not sent: {:?}",
        sent.jobs
    );
    let (_, v) = ctl
        .rest("GET", "/api/v1/jobs?include_stopped=true", "", None)
        .await?;
    assert_eq!(v["jobs"][0]["stopped"], true, "kept until the expiry: {v}");

    // Expired by the periodic sweep (every 5 s) after --stopped-job-ttl 2.
    let started = Instant::now();
    eventually("the stopped job expired", 20, || async {
        let (_, v) = ctl
            .rest("GET", "/api/v1/jobs?include_stopped=true", "", None)
            .await
            .ok()?;
        v["jobs"]
            .as_array()
            .is_some_and(Vec::is_empty)
            .then_some(())
    })
    .await?;
    println!(
        "stopped job gone after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let stored = pb::StoredJobs::decode(state_message(&std::fs::read(
        ctl.data.join("state/jobs.pb"),
    )?)?)?;
    assert!(stored.jobs.is_empty(), "deleted from the saved state too");
    assert!(ctl.log_text().contains("Stopped job expired"));
    still_serving_then_clean_up(ctl, &root).await
}

/// A `Summaries` of `pairs` pairs with realistic string sizes (~150 bytes each encoded).
fn summaries(agent: &str, pairs: usize) -> pb::Summaries {
    pb::Summaries {
        pairs: (0..pairs)
            .map(|i| pb::PairSummary {
                job_id: format!("0190f0e0-0000-7000-8000-{i:012}"),
                protocol: "udp".into(),
                dst_agent: format!("0190f0e0-1111-7000-8000-{i:012}"),
                target: format!(
                    "udp://10.{}.{}.{}:7710/{agent}",
                    i % 250,
                    i / 250 % 250,
                    i % 7
                ),
                p50_ms: 1.0,
                p99_ms: 2.0,
                sent: 10,
                lost: 0,
                samples: 10,
                window_end_unix_ms: 1,
                rtt_histogram: None,
                relay_agent: String::new(),
                relay_penalty_ms: None,
            })
            .collect(),
    }
}

/// Just under the session's message limit (decoded, then cut to --max-summary-bytes): (the
/// limit, pairs per [`summaries`] message, its encoded size).
fn largest_summaries() -> (usize, usize, usize) {
    let limit = meshlat_controller::limits::agent_message_limit(
        meshlat_controller::limits::DEFAULT_MAX_SUMMARY_BYTES,
    );
    let mut per_msg = 100;
    while summaries("s99", per_msg + 100).encoded_len() < limit - 4096 {
        per_msg += 100;
    }
    (limit, per_msg, summaries("s99", per_msg).encoded_len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_summaries_keep_rss_bounded_and_expire_unread() -> Result<()> {
    const SESSIONS: usize = 100;
    let root = tmp_dir("attacks", "summaries");
    let mut ctl = start(&root.join("ctl"), &[]).await?;
    let pid = ctl.pid();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid).context("rss")?;
    let ch = ctl.grpc_channel().await?;

    let (limit, per_msg, msg_bytes) = largest_summaries();
    assert!(msg_bytes < limit, "{msg_bytes} < {limit}");
    let mut sessions = Vec::new();
    let mut peak = before;
    for i in 0..SESSIONS {
        let s = Session::open(&ch, ctl.token(), "").await?;
        let m = pb::agent_message::Msg::Summaries(summaries(&format!("s{i}"), per_msg));
        // Three rounds each: the latest replaces the previous.
        for _ in 0..3 {
            s.send(m.clone()).await?;
        }
        sessions.push(s);
        peak = peak.max(rss_kib(pid).unwrap_or(0));
    }
    // One over the message limit ends its own session, nothing else.
    let big = Session::open(&ch, ctl.token(), "").await?;
    big.send(pb::agent_message::Msg::Summaries(summaries(
        "big",
        per_msg * 10,
    )))
    .await?;
    let mut big = big;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match big.rx.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await?;
    println!("oversized summaries: {end:?}");
    assert!(
        matches!(&end, Err(s) if s.code() == tonic::Code::ResourceExhausted)
            || matches!(end, Ok(None)),
        "the oversized session ends"
    );
    // Everything sent has been ingested once every session has been heard (heartbeats flow
    // in order after the summaries).
    for s in &sessions {
        s.send(pb::agent_message::Msg::Heartbeat(pb::Heartbeat::default()))
            .await?;
    }
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(rss_kib(pid).unwrap_or(0));
    }
    let loaded = rss_kib(pid).context("rss")?;
    let sent_mib = (SESSIONS * 3 * msg_bytes) as f64 / 1048576.0;
    println!(
        "RSS before {before} KiB, peak {peak} KiB, after {SESSIONS} sessions x 3 summaries of {msg_bytes} bytes ({per_msg} pairs; {sent_mib:.0} MiB sent) {loaded} KiB"
    );
    // Kept: at most --max-summary-bytes (256 KiB) per session, ~25 MiB for 100, plus each
    // session's decode buffer (up to its message limit); uncut, the decoded pairs (~1.5 MiB
    // per session) alone would be ~150 MiB.
    assert!(
        peak.saturating_sub(before) < 96 * 1024,
        "RSS grew by {} KiB",
        peak - before
    );
    ctl.serves().await?;

    // Nobody reads the matrix: the sweep drops the summaries after their 30 s TTL.
    drop(sessions);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "RSS 2 s after the sessions left (summaries still live): {} KiB",
        rss_kib(pid).unwrap_or(0)
    );
    let line = eventually("summaries expired by the sweep", 60, || async {
        ctl.log_text()
            .lines()
            .find(|l| l.contains("Live summaries expired") && l.contains("remaining_agents=0"))
            .map(str::to_string)
    })
    .await?;
    let after = rss_kib(pid).context("rss")?;
    println!(
        "{line}\nexpired {:.1} s after the last summary; RSS after expiry {after} KiB",
        started.elapsed().as_secs_f64()
    );
    assert!(
        line.contains(&format!("agents={SESSIONS}")) || line.contains("remaining_pairs=0"),
        "{line}"
    );
    still_serving_then_clean_up(ctl, &root).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_capped_and_removed_after_the_expiry() -> Result<()> {
    let root = tmp_dir("attacks", "agents");
    let data = root.join("ctl");
    // Two agents an earlier run knew (their join token unknown: they count in the total only).
    std::fs::create_dir_all(data.join("state"))?;
    let stored = |id: &str| pb::StoredAgent {
        info: Some(pb::AgentInfo {
            id: id.into(),
            region: "r1".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    std::fs::write(
        data.join("state/agents.pb"),
        pb::StoredAgents {
            agents: vec![stored("old-0"), stored("old-1")],
        }
        .encode_to_vec(),
    )?;
    let ctl = start(
        &data,
        &[
            "--max-agents",
            "4",
            "--max-agents-per-token",
            "3",
            "--agent-ttl",
            "1",
            "--agent-expiry",
            "3",
        ],
    )
    .await?;
    let ch = ctl.grpc_channel().await?;
    let mut sessions = Vec::new();
    for _ in 0..2 {
        sessions.push(Session::open(&ch, ctl.token(), "").await?);
    }
    let e = refused_at_a_cap(&ch, ctl.token(), "a fifth agent").await?;
    assert!(
        e.message().starts_with("agents:") && e.message().contains("(limit 4, --max-agents)"),
        "{e}"
    );
    // A known id comes back at the cap (now with the token: three agents joined with it).
    sessions.push(Session::open(&ch, ctl.token(), "old-0").await?);
    let e = refused_at_a_cap(&ch, ctl.token(), "a fourth agent with the token").await?;
    assert!(
        e.message().contains("(limit 3, --max-agents-per-token)"),
        "{e}"
    );

    for s in &sessions {
        s.send(pb::agent_message::Msg::Summaries(summaries(&s.id, 3)))
            .await?;
        s.send(pb::agent_message::Msg::Heartbeat(pb::Heartbeat::default()))
            .await?;
    }
    let cells = |v: &Value| v["cells"].as_array().map_or(0, Vec::len);
    let v = eventually("summaries in the matrix", 10, || async {
        let (_, v) = ctl.rest("GET", "/api/v1/matrix", "", None).await.ok()?;
        (cells(&v) > 0).then_some(v)
    })
    .await?;
    println!("matrix cells while connected: {}", cells(&v));
    let (ok, out, err) = ctl.cli(&["agents"]).await?;
    assert!(ok, "{err}");
    assert!(out.lines().count() >= 4, "header and the agents: {out}");

    // They leave; past --agent-expiry (3 s) the sweep removes them everywhere.
    drop(sessions);
    let started = Instant::now();
    eventually("agents removed", 30, || async {
        let (ok, out, _) = ctl.cli(&["agents"]).await.ok()?;
        (ok && out.lines().count() == 1).then_some(())
    })
    .await?;
    println!(
        "agents removed {:.1} s after leaving",
        started.elapsed().as_secs_f64()
    );
    // Their summaries are younger than the 30 s summary TTL: gone because the agents are.
    let (_, v) = ctl.rest("GET", "/api/v1/matrix", "", None).await?;
    assert_eq!(cells(&v), 0, "{v}");
    let path = ctl.data.join("state/agents.pb");
    eventually("removed from the saved state", 10, || async {
        let stored =
            pb::StoredAgents::decode(state_message(&std::fs::read(&path).ok()?).ok()?).ok()?;
        stored.agents.is_empty().then_some(())
    })
    .await?;
    assert!(ctl.log_text().contains("Agent removed"));
    // Room again for new agents.
    Session::open(&ch, ctl.token(), "").await?;
    still_serving_then_clean_up(ctl, &root).await
}

/// A field of `/proc/PID/status` in KiB (`VmRSS:`, `VmHWM:`, ...).
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Newest `ts` of a record under `dir` whose `dst_agent` is `dst` and which succeeded.
fn newest_ok_record(dir: &Path, dst: &str) -> Option<String> {
    fn walk(d: &Path, dst: &str, best: &mut Option<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, dst, best);
            } else if p.extension().is_some_and(|x| x == "ndjson") {
                for l in std::fs::read_to_string(&p).unwrap_or_default().lines() {
                    let Ok(r) = serde_json::from_str::<Value>(l) else {
                        continue;
                    };
                    if r["dst_agent"] == dst
                        && r["ok"] == true
                        && let Some(ts) = r["ts"].as_str()
                        && best.as_deref().is_none_or(|b| ts > b)
                    {
                        *best = Some(ts.to_string());
                    }
                }
            }
        }
    }
    let mut best = None;
    walk(dir, dst, &mut best);
    best
}

/// The issue's 1,000 hostile sessions: a controller limited to 4096 open files; 1,000 sessions
/// with fresh ids, each on its own TLS connection, each sending a maximum-size summaries
/// message (just under the session's message limit), while two real agents measure each other.
/// The controller's peak RSS (VmHWM) stays under 256 MiB, and the honest agents stay connected
/// and keep measuring. Figures are printed also when passing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_hostile_sessions_keep_rss_under_256_mib() -> Result<()> {
    const HOSTILE: usize = 1000;
    const RSS_LIMIT_KIB: u64 = 256 * 1024;
    let root = tmp_dir("attacks", "thousand");
    let mut ctl = start_limited(&root.join("ctl"), &[], Some(4096)).await?;
    let pid = ctl.pid();
    let nofile = std::fs::read_to_string(format!("/proc/{pid}/limits"))?
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(nofile.contains("4096"), "{nofile}");

    // Two honest agents (real processes) measuring each other.
    let mut agents = Vec::new();
    for name in ["h1", "h2"] {
        let state = root.join(format!("state-{name}"));
        let child = Command::new(support::agent_bin())
            .args(["run", "--controller", &format!("https://{}", ctl.grpc)])
            .args(["--token", ctl.token(), "--region", "r1", "--az", name])
            .args([
                "--listen",
                "127.0.0.1",
                "--udp-port",
                "0",
                "--tcp-port",
                "off",
            ])
            .args([
                "--quic-port",
                "off",
                "--http-port",
                "off",
                "--https-port",
                "off",
            ])
            .args(["--flush-interval", "1", "--out"])
            .arg(root.join(format!("records-{name}")))
            .arg("--state-dir")
            .arg(&state)
            .env_remove("MESHLAT_CONTROLLER")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(
                root.join(format!("{name}.log")),
            )?))
            .kill_on_drop(true)
            .spawn()?;
        agents.push((child, state));
    }
    let ids = eventually("honest agents joined", 30, || async {
        let id = |s: &Path| {
            std::fs::read_to_string(s.join("agent-id"))
                .ok()
                .map(|s| s.trim().to_string())
        };
        Some((id(&agents[0].1)?, id(&agents[1].1)?))
    })
    .await?;
    let job = root.join("job.json");
    std::fs::write(
        &job,
        r#"{"name":"honest","protocols":["udp"],"sources":["region=r1"],"targets":["region=r1"],
            "interval_ms":500,"timeout_ms":400,"packets":3}"#,
    )?;
    let (ok, out, err) = ctl
        .cli(&["job", "start", job.to_str().context("path")?])
        .await?;
    assert!(ok, "{out}{err}");
    let pairs = [("h1", &ids.1), ("h2", &ids.0)];
    for (name, dst) in pairs {
        let dir = root.join(format!("records-{name}"));
        eventually(&format!("{name} measures the other"), 30, || async {
            newest_ok_record(&dir, dst)
        })
        .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = status_kib(pid, "VmRSS:").context("rss")?;
    let hwm_before = status_kib(pid, "VmHWM:").context("hwm")?;

    let (_, per_msg, msg_bytes) = largest_summaries();
    let flood_started = chrono_now();
    let t0 = Instant::now();
    let mut sessions = Vec::with_capacity(HOSTILE);
    for i in 0..HOSTILE {
        // Each on its own TLS connection, as 1,000 hostile agents would come.
        let ch = ctl.grpc_channel().await?;
        let s = Session::open_in(&ch, ctl.token(), "", "hostile").await?;
        s.send(pb::agent_message::Msg::Summaries(summaries(
            &format!("s{i}"),
            per_msg,
        )))
        .await?;
        sessions.push((s, ch));
    }
    // Heartbeats flow in order after the summaries: once all are sent and the controller has
    // heard them, every summary has been decoded.
    for (s, _) in &sessions {
        s.send(pb::agent_message::Msg::Heartbeat(pb::Heartbeat::default()))
            .await?;
    }
    let flood_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let loaded = status_kib(pid, "VmRSS:").context("rss")?;
    let peak = status_kib(pid, "VmHWM:").context("hwm")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    let per_session = peak.saturating_sub(before) as f64 / HOSTILE as f64;
    println!(
        "figures a_thousand_hostile_sessions rss_before_kib={before} hwm_before_kib={hwm_before} \
         rss_loaded_kib={loaded} rss_peak_kib={peak} per_session_kib={per_session:.1} \
         sessions={HOSTILE} msg_bytes={msg_bytes} pairs_per_msg={per_msg} open_fds={fds} \
         flood_secs={flood_secs:.1}"
    );
    ctl.serves().await?;
    // The honest agents are still connected and still measure each other.
    let (ok, out, err) = ctl.cli(&["agents"]).await?;
    assert!(ok, "{err}");
    for id in [&ids.0, &ids.1] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(id.as_str()) && l.contains("true")),
            "{id} connected:\n{}",
            out.lines()
                .filter(|l| !l.contains("hostile"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    for (name, dst) in pairs {
        let dir = root.join(format!("records-{name}"));
        let ts = eventually(&format!("{name} measures after the flood"), 20, || async {
            newest_ok_record(&dir, dst).filter(|ts| *ts > flood_started)
        })
        .await?;
        println!("{name}: newest ok record {ts} (flood started {flood_started})");
    }
    assert!(
        peak < RSS_LIMIT_KIB,
        "controller peak RSS {peak} KiB >= {RSS_LIMIT_KIB} KiB with {HOSTILE} hostile sessions"
    );
    drop(sessions);
    for (mut c, _) in agents {
        let _ = c.start_kill();
    }
    ctl.stop().await?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// Now as RFC 3339 UTC with microseconds (the records' `ts` format), for comparing.
fn chrono_now() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}
