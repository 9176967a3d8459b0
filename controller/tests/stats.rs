//! The controller's stats server (`--stats-port`): `/health`, `/memstats` and `/metrics`
//! (Prometheus text) over plain HTTP, GET/HEAD only, with the figures of a controller that one
//! real agent joined and that ran a job: its session, the directory, recompute rounds, the
//! agent's job-set acknowledgement, and a refused REST credential.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message

mod support;

use anyhow::{Context, Result};
use support::{TestAgent, TestController, eventually, tmp_dir};

/// One HTTP/1.1 request (`Connection: close`) to `addr`: the status and the body.
async fn http(addr: &str, method: &str, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await?;
    c.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").context("no response head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    Ok((status, body.to_string()))
}

/// The value of the sample named exactly `series` (name and labels) in an exposition.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_server_serves_health_memstats_and_the_controllers_metrics() -> Result<()> {
    let root = tmp_dir("stats", "metrics");
    let ctl = TestController::builder(root.join("ctl"))
        .args(["--stats-port", "0"])
        .spawn()
        .await?;
    let stats = ctl.stats.clone().context("no `listening stats` line")?;
    assert!(
        stats.starts_with("127.0.0.1:"),
        "binds --listen's IP: {stats}"
    );

    let (st, body) = http(&stats, "GET", "/health").await?;
    assert_eq!((st, body.as_str()), (200, "ok\n"));
    let (st, body) = http(&stats, "GET", "/memstats").await?;
    assert_eq!(st, 200, "{body}");
    let mem: serde_json::Value = serde_json::from_str(&body)?;
    assert!(mem["rss_bytes"].as_u64().is_some_and(|v| v > 0), "{mem}");
    assert_eq!(mem["version"], env!("CARGO_PKG_VERSION"), "{mem}");
    for path in ["/metrics", "/health"] {
        let (st, body) = http(&stats, "POST", path).await?;
        assert_eq!(st, 405, "POST {path}: {body}");
    }
    let (st, _) = http(&stats, "GET", "/status").await?;
    assert_eq!(st, 404, "the controller has no /status");
    let (st, metrics) = http(&stats, "GET", "/metrics").await?;
    assert_eq!(st, 200);
    assert!(
        metrics.contains(&format!(
            "meshlat_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "meshlat_controller_sessions"), Some(0.0));

    let agent = TestAgent::builder(&ctl, root.join("out"), root.join("st")).spawn()?;
    eventually("the agent connects", 30, || async {
        ctl.agents().await.iter().any(|(_, c)| *c).then_some(())
    })
    .await?;
    let acked = |m: &str| sample(m, "meshlat_controller_job_acks_total{result=\"acked\"}");
    // Its first (empty) job set is acknowledged too: the job's must come on top.
    let before = eventually("the agent acknowledges its first job set", 30, || async {
        let (_, m) = http(&stats, "GET", "/metrics").await.ok()?;
        acked(&m).filter(|n| *n > 0.0)
    })
    .await?;
    let body = format!(
        r#"{{"name":"stats","protocols":["tcp"],"sources":["region=r1"],
        "targets":["tcp://{}"],"interval_ms":500,"timeout_ms":300}}"#,
        ctl.rest
    );
    let (st, v) = ctl.rest("POST", "/api/v1/jobs", &body, None).await?;
    assert_eq!(st, 201, "start job: {v}");

    let metrics = eventually("/metrics shows the job set's ack", 30, || async {
        let (_, m) = http(&stats, "GET", "/metrics").await.ok()?;
        (acked(&m)? > before).then_some(m)
    })
    .await?;
    println!("{metrics}");
    assert_eq!(sample(&metrics, "meshlat_controller_sessions"), Some(1.0));
    assert_eq!(
        sample(&metrics, "meshlat_controller_agents{state=\"connected\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "meshlat_controller_agents{state=\"disconnected\"}"
        ),
        Some(0.0)
    );
    assert!(
        sample(&metrics, "meshlat_controller_rounds_total").is_some_and(|n| n > 0.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "meshlat_controller_pinglist_seconds_count").is_some_and(|n| n > 0.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "meshlat_controller_federation_peers"),
        Some(0.0)
    );

    // A wrong REST credential is counted; a right one is not.
    let failures = |m: &str| {
        sample(
            m,
            "meshlat_controller_auth_failures_total{surface=\"rest\",reason=\"operator_credential\"}",
        )
        .unwrap_or(0.0)
    };
    let before = failures(&metrics);
    let (st, _) = ctl
        .rest("GET", "/api/v1/jobs", "", Some("op:wrong-secret"))
        .await?;
    assert_eq!(st, 401);
    let (st, _) = ctl.rest("GET", "/api/v1/jobs", "", None).await?;
    assert_eq!(st, 200);
    let (_, metrics) = http(&stats, "GET", "/metrics").await?;
    assert_eq!(failures(&metrics), before + 1.0, "{metrics}");

    drop(agent);
    drop(ctl);
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
