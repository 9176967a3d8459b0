//! The live view of load jobs (issue 15 item 5) on a real `controller` process: simulated
//! agents speaking the `AgentService.Connect` protocol send load seconds (`LoadReports`) for an
//! assigned load job, and `GET /api/v1/jobs/{id}/load`, its SSE stream and `controller job watch
//! ID` show the figures merged per step and source region; a lying agent's reports (a job not
//! assigned to it, a probe job, a malformed histogram, a histogram that does not count the
//! responses, absurd counts, a replayed second) are refused, counted in
//! `meshlat_controller_load_reports_total`, and the controller and the session go on.

mod support;
use support::{TestController, bearer, eventually, tmp_dir};

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use http_body_util::{BodyExt, Full};
use meshlat_proto::pb;
use meshlat_proto::pb::agent_message::Msg;
use meshlat_proto::sketch::RttHistogram;
use serde_json::Value;
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// A simulated agent session.
struct Session {
    id: String,
    tx: mpsc::Sender<pb::AgentMessage>,
    rx: tonic::Streaming<pb::ControllerMessage>,
}

impl Session {
    async fn open(ch: &Channel, token: &str, region: &str) -> Result<Self> {
        let (tx, rx) = mpsc::channel(16);
        let hello = pb::Hello {
            region: region.into(),
            az: format!("{region}a"),
            endpoints: vec![pb::ResponderEndpoint {
                protocol: pb::Protocol::Udp as i32,
                address: "127.0.0.1:9".into(),
            }],
            version: "load-live-test".into(),
            ..Default::default()
        };
        tx.send(pb::AgentMessage {
            msg: Some(Msg::Hello(hello)),
        })
        .await?;
        let mut client = pb::agent_service_client::AgentServiceClient::with_interceptor(
            ch.clone(),
            bearer(token),
        );
        let mut rx = client
            .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let id = match rx.message().await? {
            Some(pb::ControllerMessage {
                msg: Some(pb::controller_message::Msg::Welcome(w)),
            }) => w.agent_id,
            other => return Err(anyhow!("no Welcome: {other:?}")),
        };
        Ok(Session { id, tx, rx })
    }

    async fn send(&self, reports: Vec<pb::LoadReport>) -> Result<()> {
        self.tx
            .send(pb::AgentMessage {
                msg: Some(Msg::LoadReports(pb::LoadReports { reports })),
            })
            .await
            .map_err(|_| anyhow!("session {} closed", self.id))
    }

    /// Waits for a job set assigning every one of `jobs`.
    async fn assigned(&mut self, jobs: &[&str]) -> Result<()> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), self.rx.message())
                .await
                .context("no job set assigning the job")??
                .context("session ended")?;
            if let Some(pb::controller_message::Msg::JobSet(s)) = m.msg
                && jobs.iter().all(|job| {
                    s.assignments
                        .iter()
                        .any(|a| a.job.as_ref().is_some_and(|j| j.id == *job))
                })
            {
                return Ok(());
            }
        }
    }
}

/// One second: `n` responses of 200 at `ms` (both histograms) plus one 503 at `ms`, one
/// timeout; `level` workers.
fn second(job: &str, second: u64, step: u32, level: u32, n: u64, ms: f64) -> pb::LoadReport {
    let mut h = RttHistogram::new();
    for _ in 0..=n {
        h.record(ms);
    }
    pb::LoadReport {
        job_id: job.into(),
        target: "http://127.0.0.1:9/".into(),
        second,
        length_ms: 1000,
        step,
        workers: level,
        level: f64::from(level),
        intended: n + 2,
        sent: n + 2,
        status_2xx: n,
        status_5xx: 1,
        errors_timeout: 1,
        corrected: Some(h.to_pb()),
        uncorrected: Some(h.to_pb()),
        corrected_max_ms: Some(ms),
        uncorrected_max_ms: Some(ms),
        end_unix_ms: 1_700_000_000_000 + second as i64 * 1000,
        ..Default::default()
    }
}

fn load_job(sources: &str) -> String {
    serde_json::json!({
        "name": "live",
        "kind": "load",
        "protocols": ["http"],
        "sources": [sources],
        "targets": ["http://127.0.0.1:9/"],
        "timeout_ms": 1000,
        "duration_ms": 600_000,
        "load": {"model": "closed", "start": 10, "step": 10, "steps": 2, "step_duration_ms": 300_000}
    })
    .to_string()
}

fn near(v: &Value, want: f64) -> bool {
    v.as_f64()
        .is_some_and(|g| (g - want).abs() <= want * 0.005 + 1e-9)
}

/// The first `event: load` of the job's SSE stream, and the rest of the stream's text once it
/// ended (read until it ends or `secs` pass, after `then` ran).
async fn sse(
    ctl: &TestController,
    id: &str,
    then: impl std::future::Future<Output = Result<()>>,
) -> Result<(Value, String)> {
    let mut send = support::pinned_http1(&ctl.data, &ctl.rest).await?;
    let req = http::Request::builder()
        .uri(format!("/api/v1/jobs/{id}/load/stream"))
        .header("host", "127.0.0.1")
        .header("authorization", format!("Bearer {}", ctl.credential()))
        .body(Full::new(bytes::Bytes::new()))?;
    let res = send.send_request(req).await?;
    anyhow::ensure!(res.status() == 200, "stream answered {}", res.status());
    let mut body = res.into_body();
    let mut text = String::new();
    let first = loop {
        let frame = tokio::time::timeout(Duration::from_secs(15), body.frame())
            .await
            .context("no load event within 15 s")?
            .ok_or_else(|| anyhow!("stream ended"))??;
        if let Ok(d) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&d));
        }
        if let Some(at) = text.find("event: load\ndata: ") {
            let rest = &text[at + "event: load\ndata: ".len()..];
            if let Some(end) = rest.find('\n') {
                break serde_json::from_str::<Value>(&rest[..end])?;
            }
        }
    };
    then.await?;
    let mut tail = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(frame) = body.frame().await {
            if let Ok(d) = frame?.into_data() {
                tail.push_str(&String::from_utf8_lossy(&d));
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .await;
    anyhow::ensure!(ended.is_ok(), "the stream did not end: {tail}");
    Ok((first, tail))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_seconds_are_merged_per_step_and_region_and_lies_are_refused() -> Result<()> {
    let root = tmp_dir("load-live", "merge");
    let mut ctl = TestController::builder(root.join("ctl"))
        .log(root.join("ctl.log"))
        .args(["--load-allow", "127.0.0.1", "--stats-port", "0"])
        .spawn()
        .await?;
    let ch = ctl.grpc_channel().await?;
    let mut e1 = Session::open(&ch, ctl.token(), "eu").await?;
    let mut e2 = Session::open(&ch, ctl.token(), "eu").await?;
    let mut u1 = Session::open(&ch, ctl.token(), "us").await?;
    // Not a source of the job (another region).
    let liar = Session::open(&ch, ctl.token(), "xx").await?;
    let (st, j) = ctl
        .rest("POST", "/api/v1/jobs", &load_job("region=eu"), None)
        .await?;
    anyhow::ensure!(st == 201, "{st} {j}");
    let id = j["id"].as_str().context("job id")?.to_string();
    let (st, us_job) = ctl
        .rest("POST", "/api/v1/jobs", &load_job("region=us"), None)
        .await?;
    anyhow::ensure!(st == 201, "{st} {us_job}");
    let us_id = us_job["id"].as_str().context("job id")?.to_string();
    // A probe job assigned to e1: load seconds for it are refused.
    let probe = serde_json::json!({"name": "p", "protocols": ["udp"], "sources": ["region=eu"],
        "targets": ["region=us"], "interval_ms": 1000, "timeout_ms": 500})
    .to_string();
    let (st, p) = ctl.rest("POST", "/api/v1/jobs", &probe, None).await?;
    anyhow::ensure!(st == 201, "{st} {p}");
    let probe_id = p["id"].as_str().context("job id")?.to_string();
    e1.assigned(&[&id, &probe_id]).await?;
    e2.assigned(&[&id]).await?;
    u1.assigned(&[&us_id]).await?;
    // Before any second: an empty view.
    let (st, v) = ctl
        .rest("GET", &format!("/api/v1/jobs/{id}/load"), "", None)
        .await?;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["steps"].as_array().map(Vec::len), v["done"].as_bool()),
        (Some(0), Some(false)),
        "{v}"
    );
    // A probe job has no load view; an unknown job is 404.
    let (st, v) = ctl
        .rest("GET", &format!("/api/v1/jobs/{probe_id}/load"), "", None)
        .await?;
    assert_eq!(st, 400, "{v}");
    let (st, _) = ctl.rest("GET", "/api/v1/jobs/nope/load", "", None).await?;
    assert_eq!(st, 404);

    // eu: e1 and e2 two seconds of step 0 (e1 at 10 ms, e2 at 20 ms, 99 responses of 200 and
    // one 503 per second each), e1 one second of step 1 at 300 ms; us: u1, its own job.
    e1.send(vec![
        second(&id, 0, 0, 10, 99, 10.0),
        second(&id, 1, 0, 10, 99, 10.0),
    ])
    .await?;
    e2.send(vec![
        second(&id, 0, 0, 10, 99, 20.0),
        second(&id, 1, 0, 10, 99, 20.0),
    ])
    .await?;
    u1.send(vec![second(&us_id, 0, 0, 10, 9, 50.0)]).await?;

    // The lies, each refused: a job not assigned (the liar; u1 for the eu job), a probe job, a
    // malformed histogram, a histogram not counting the responses, absurd counts, a replay.
    liar.send(vec![second(&id, 5, 0, 10, 99, 1.0)]).await?;
    u1.send(vec![second(&id, 5, 0, 10, 99, 1.0)]).await?;
    e1.send(vec![second(&probe_id, 0, 0, 10, 99, 1.0)]).await?;
    let mut bad = second(&id, 7, 0, 10, 99, 1.0);
    bad.corrected = Some(pb::RttHistogram {
        index_deltas: vec![i32::MAX],
        counts: vec![u64::MAX],
        zero_count: 0,
    });
    let mut miscount = second(&id, 8, 0, 10, 99, 1.0);
    miscount.status_2xx = 5_000;
    let mut absurd = second(&id, 9, 0, 10, 99, 1.0);
    absurd.sent = u64::MAX;
    absurd.level = f64::INFINITY;
    let replay = second(&id, 1, 0, 10, 99, 1.0);
    e1.send(vec![bad, miscount, absurd, replay]).await?;
    // The session goes on: a later good second of e1 (step 1) counts.
    e1.send(vec![second(&id, 2, 1, 20, 49, 300.0)]).await?;

    let v = eventually("the eu job's merged view", 20, || async {
        let (st, v) = ctl
            .rest("GET", &format!("/api/v1/jobs/{id}/load"), "", None)
            .await
            .ok()?;
        (st == 200 && v["steps"].as_array().map(Vec::len) == Some(2)).then_some(v)
    })
    .await?;
    let steps = v["steps"].as_array().context("steps")?;
    let eu0 = &steps[0];
    assert_eq!(
        (&eu0["step"], &eu0["region"]),
        (&Value::from(0), &Value::from("eu")),
        "{v}"
    );
    assert_eq!(eu0["agents"], 2, "{v}");
    assert_eq!(eu0["seconds"], 4, "{v}");
    assert_eq!(eu0["workers"], 20, "{v}");
    assert_eq!(eu0["level"], 10.0, "{v}");
    assert_eq!(eu0["requests"], 4 * 101, "{v}");
    assert_eq!(eu0["responses"], 4 * 100, "{v}");
    assert_eq!(eu0["status"]["2xx"], 4 * 99, "{v}");
    assert_eq!(eu0["status"]["5xx"], 4, "{v}");
    assert_eq!(eu0["errors"]["timeout"], 4, "{v}");
    assert_eq!(eu0["error_count"], 8, "{v}");
    assert!(near(&eu0["error_share"], 8.0 / 404.0), "{v}");
    // Two agents × 100 responses per second: 200/s for the region.
    assert!(near(&eu0["achieved_rps"], 200.0), "{v}");
    // Merged histograms: half 10 ms, half 20 ms, so p50 10 and p99 20 (not an average of
    // the agents' percentiles, which would be 15).
    assert!(near(&eu0["p50_ms"], 10.0), "{v}");
    assert!(near(&eu0["p99_ms"], 20.0), "{v}");
    assert_eq!(eu0["max_ms"], 20.0, "{v}");
    let eu1 = &steps[1];
    assert_eq!(
        (&eu1["step"], &eu1["agents"], &eu1["seconds"]),
        (&Value::from(1), &Value::from(1), &Value::from(1)),
        "{v}"
    );
    assert!(
        near(&eu1["p99_ms"], 300.0) && near(&eu1["achieved_rps"], 50.0),
        "{v}"
    );
    // The us job has its own view; no lie reached either.
    let (_, us) = ctl
        .rest("GET", &format!("/api/v1/jobs/{us_id}/load"), "", None)
        .await?;
    assert_eq!(us["steps"].as_array().map(Vec::len), Some(1), "{us}");
    assert_eq!(
        (&us["steps"][0]["region"], &us["steps"][0]["responses"]),
        (&Value::from("us"), &Value::from(10)),
        "{us}"
    );

    // Counted by reason at /metrics.
    let stats = ctl.stats.clone().context("stats address")?;
    let metrics = eventually("load report counters", 10, || async {
        let text = http_get(&format!("http://{stats}/metrics")).await.ok()?;
        text.contains("meshlat_controller_load_reports_total{result=\"replayed\"} 1")
            .then_some(text)
    })
    .await?;
    for (result, n) in [
        ("accepted", 6),
        ("not_assigned", 2),
        ("not_load_job", 1),
        ("bad_histogram", 1),
        ("histogram_count", 1),
        ("out_of_range", 1),
        ("replayed", 1),
    ] {
        let line = format!("meshlat_controller_load_reports_total{{result=\"{result}\"}} {n}");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
    assert!(ctl.log_text().contains("Load reports refused."));

    // gRPC WatchLoad and `controller job watch` (not a terminal: the header, then rows as they
    // change) see the same figures, and end when the job is stopped; so does the SSE stream.
    let watch = {
        let cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_controller"));
        let ca = ctl.data.join("ca.pem");
        let (grpc, cred, id) = (ctl.grpc.clone(), ctl.credential().to_string(), id.clone());
        tokio::spawn(async move {
            support::controller_cli(cmd, &["job", "watch", &id], &grpc, &cred, &ca).await
        })
    };
    let stop = async {
        // Let the watcher print the running job first.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (st, j) = ctl
            .rest("DELETE", &format!("/api/v1/jobs/{id}"), "", None)
            .await?;
        anyhow::ensure!(st == 200, "{st} {j}");
        Ok(())
    };
    let (first, tail) = sse(&ctl, &id, stop).await?;
    assert_eq!(first["steps"][0]["responses"], 400, "{first}");
    assert!(
        tail.contains("\"done\":true") && tail.contains("event: end"),
        "{tail}"
    );
    let (ok, out, err) = tokio::time::timeout(Duration::from_secs(20), watch)
        .await
        .context("job watch did not end")???;
    assert!(ok, "job watch failed: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("STEP REGION"), "{out}");
    let row0 = lines
        .iter()
        .find(|l| l.split_whitespace().take(2).eq(["0", "eu"]))
        .with_context(|| format!("no step 0 eu row: {out}"))?;
    let cols: Vec<&str> = row0.split_whitespace().collect();
    // STEP REGION AGENTS LEVEL WORKERS INTENDED/s ACHIEVED/s P50 P99 ERRORS ERR%
    assert_eq!(&cols[2..5], ["2", "10", "20"], "{out}");
    assert_eq!(cols[6], "200.0", "{out}");
    let p50: f64 = cols[7].parse()?;
    let p99: f64 = cols[8].parse()?;
    assert!(
        (p50 - 10.0).abs() < 0.06 && (p99 - 20.0).abs() < 0.11,
        "{out}"
    );
    assert_eq!(&cols[9..], ["8", "2.0"], "{out}");
    assert_eq!(
        lines.last().copied(),
        Some(format!("job {id} done").as_str()),
        "{out}"
    );

    // `job watch` of a probe job is refused, naming why.
    let (ok, _, err) = ctl.cli(&["job", "watch", &probe_id]).await?;
    assert!(!ok && err.contains("not a load job"), "{err}");
    assert!(ctl.alive(), "the controller exited");
    drop((e1, e2, u1, liar));
    ctl.stop().await?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// A plain-HTTP GET's body (the stats listener).
async fn http_get(url: &str) -> Result<String> {
    let uri: http::Uri = url.parse()?;
    let host = uri.authority().context("host")?.to_string();
    let tcp = tokio::net::TcpStream::connect(&host).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let res = send
        .send_request(
            http::Request::get(uri.path())
                .header("host", host)
                .body(Full::new(bytes::Bytes::new()))?,
        )
        .await?;
    Ok(String::from_utf8_lossy(&res.into_body().collect().await?.to_bytes()).into_owned())
}

/// The agent's own side: `LoadReporter::report` (what a load job's runner calls for each
/// second) queues seconds onto the agent library's controller session (`agent run`'s, in this
/// process), which sends them to a real controller; its REST view shows them merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_load_reporter_reaches_the_controllers_view() -> Result<()> {
    use meshlat_agent::control::session::{self, ControlConfig, Outputs};
    use meshlat_agent::load::stats::{SecondReport, Tally};

    let root = tmp_dir("load-live", "reporter");
    let ctl = TestController::builder(root.join("ctl"))
        .log(root.join("ctl.log"))
        .args(["--load-allow", "127.0.0.1"])
        .spawn()
        .await?;
    let token = meshlat_proto::token::JoinToken::parse(ctl.token())?;
    let (host, port) = ctl.grpc.rsplit_once(':').context("grpc address")?;
    let reporter = meshlat_agent::load::LoadReporter::new();
    // Seconds reported before the session exists wait in the queue (best effort, bounded).
    let job_placeholder = "not-yet";
    let cfg = ControlConfig {
        host: host.to_string(),
        port: port.parse()?,
        tls: Some(std::sync::Arc::new(
            meshlat_agent::control::pin::client_config(token.ca_sha256)?,
        )),
        pin: token.ca_sha256,
        identity: None,
        token: ctl.token().to_string(),
        hello: pb::Hello {
            region: "eu".into(),
            endpoints: vec![pb::ResponderEndpoint {
                protocol: pb::Protocol::Udp as i32,
                address: "127.0.0.1:9".into(),
            }],
            version: "load-live-test".into(),
            ..Default::default()
        },
        state_dir: None,
        backoff: meshlat_proto::backoff::Retries::new(session::RECONNECT),
        key: meshlat_agent::udp::wire::Key::default_key(),
        summaries: None,
        load_limits: meshlat_agent::load::job::LoadLimits::default(),
        load_secrets: meshlat_agent::load::secrets::LoadSecrets::new(None),
        load: Some(reporter.clone()),
    };
    let (jobs, _jobs_rx) = tokio::sync::watch::channel(Default::default());
    // The load set is taken (so the job is acked) but not run: the test reports its seconds.
    let (loads, _loads_rx) = tokio::sync::watch::channel(Default::default());
    let (mode, _mode_rx) = tokio::sync::watch::channel(meshlat_proto::record::ControlMode::Static);
    let (id_tx, mut id_rx) = tokio::sync::watch::channel(None);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(session::run(
        cfg,
        Outputs {
            jobs,
            loads: Some(loads),
            mode,
            id: id_tx,
            keys: None,
        },
        shutdown.clone(),
    ));
    let agent = tokio::time::timeout(Duration::from_secs(20), id_rx.wait_for(Option::is_some))
        .await
        .context("no agent id")??
        .clone()
        .context("agent id")?;
    let (st, j) = ctl
        .rest("POST", "/api/v1/jobs", &load_job("region=eu"), None)
        .await?;
    anyhow::ensure!(st == 201, "{st} {j}");
    let id = j["id"].as_str().context("job id")?.to_string();
    eventually("the job assigned to the agent", 20, || async {
        let (_, j) = ctl
            .rest("GET", &format!("/api/v1/jobs/{id}"), "", None)
            .await
            .ok()?;
        j["agent_status"]
            .as_array()?
            .iter()
            .any(|s| s["agent"] == agent.as_str())
            .then_some(())
    })
    .await?;
    // A second of another job, then two of this one (step 0: 1 ms and 3 ms answers; one 429).
    let sec = |n: u64, ms: &[u64]| {
        let mut tally = Tally {
            intended: ms.len() as u64,
            sent: ms.len() as u64,
            ..Tally::default()
        };
        for (i, m) in ms.iter().enumerate() {
            tally.status.add(if i == 0 { 429 } else { 200 });
            tally.corrected.record(Duration::from_millis(*m));
            tally.uncorrected.record(Duration::from_millis(*m));
        }
        SecondReport {
            second: n,
            length: Duration::from_secs(1),
            step: 0,
            workers: 10,
            level: 10.0,
            tally,
        }
    };
    reporter.report(job_placeholder, "http://127.0.0.1:9/", &sec(0, &[1]));
    reporter.report(&id, "http://127.0.0.1:9/", &sec(0, &[1; 50]));
    reporter.report(&id, "http://127.0.0.1:9/", &sec(1, &[3; 50]));
    let v = eventually("the reporter's seconds in the view", 20, || async {
        let (_, v) = ctl
            .rest("GET", &format!("/api/v1/jobs/{id}/load"), "", None)
            .await
            .ok()?;
        (v["steps"][0]["seconds"] == 2).then_some(v)
    })
    .await?;
    let s0 = &v["steps"][0];
    assert_eq!(
        (&s0["region"], &s0["agents"], &s0["workers"]),
        (&Value::from("eu"), &Value::from(1), &Value::from(10)),
        "{v}"
    );
    assert_eq!(
        (&s0["responses"], &s0["status"]["429"], &s0["error_count"]),
        (&Value::from(100), &Value::from(2), &Value::from(2)),
        "{v}"
    );
    assert!(near(&s0["achieved_rps"], 50.0), "{v}");
    assert!(near(&s0["p50_ms"], 1.0) && near(&s0["p99_ms"], 3.0), "{v}");
    assert_eq!(reporter.queued(), 0);
    // The other job's second was refused, not fatal: the session still delivers.
    assert!(
        ctl.log_text().contains("Load reports refused."),
        "{}",
        ctl.log_text()
    );
    reporter.report(&id, "http://127.0.0.1:9/", &sec(2, &[2; 10]));
    eventually("a later second", 20, || async {
        let (_, v) = ctl
            .rest("GET", &format!("/api/v1/jobs/{id}/load"), "", None)
            .await
            .ok()?;
        (v["steps"][0]["seconds"] == 3).then_some(())
    })
    .await?;
    shutdown.cancel();
    let _ = task.await;
    ctl.stop().await?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
