//! Load jobs end to end (issue 15, "what must be shown"), with the controller and two agents as
//! separate processes on loopback and a local HTTP target in the test: a stepped closed-model
//! job writes one `kind=load` record per agent, step and second with the right workers; `PUT`
//! doubling the workers of a running job is followed without a restart; `DELETE` (stop) ends
//! every request within about a second, counted at the target; an open job's `rate_per_job` is
//! divided over its agents.
//!
//! The agent binary is found next to the controller's (`target/debug/agent`): `cargo test
//! --workspace` builds it; with `-p meshlat-controller` alone, run
//! `cargo build -p meshlat-agent --bin agent` first.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::Value;
use support::{TestAgent, TestController, eventually, tmp_dir};

/// Counts at the target.
#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    connections: AtomicU64,
    open: AtomicU64,
}

/// An HTTP/1.1 target on its own thread and runtime, answering `pong` after 20 ms.
fn target() -> (SocketAddr, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let c = Arc::clone(&counts);
    let addr = support::serve_http_on_thread(move || {
        c.connections.fetch_add(1, Ordering::SeqCst);
        c.open.fetch_add(1, Ordering::SeqCst);
        let (c2, done) = (Arc::clone(&c), Arc::clone(&c));
        let svc = hyper::service::service_fn(move |_req| {
            let c = Arc::clone(&c2);
            async move {
                c.requests.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                    b"pong\n",
                ))))
            }
        });
        let on_close: Box<dyn FnOnce() + Send> = Box::new(move || {
            done.open.fetch_sub(1, Ordering::SeqCst);
        });
        (svc, on_close)
    });
    (addr, counts)
}

fn job(url: &str, duration_ms: u64, load: Value) -> String {
    serde_json::json!({
        "name": "load-e2e",
        "kind": "load",
        "protocols": ["http"],
        "sources": ["region=r1"],
        "targets": [url],
        "timeout_ms": 2000,
        "duration_ms": duration_ms,
        "load": load,
    })
    .to_string()
}

fn load_records(a: &TestAgent, job_id: &str) -> Vec<Value> {
    let mut v: Vec<Value> = a
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "load" && r["job_id"] == job_id)
        .collect();
    v.sort_by_key(|r| r["seq"].as_u64());
    v
}

async fn wait_until(budget: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + budget;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_jobs_step_update_and_stop_across_two_agents() -> Result<()> {
    let root = tmp_dir("load-e2e", "steps");
    let (addr, counts) = target();
    let url = format!("http://{addr}/ping");
    let ctl = TestController::builder(root.join("ctl"))
        .args(["--load-allow", "127.0.0.1"])
        .spawn()
        .await?;
    let agents = [
        TestAgent::builder(&ctl, root.join("out-1"), root.join("st-1"))
            .log(root.join("agent-1.log"))
            .spawn()?,
        TestAgent::builder(&ctl, root.join("out-2"), root.join("st-2"))
            .log(root.join("agent-2.log"))
            .spawn()?,
    ];
    eventually("both agents connected", 30, || async {
        let a = ctl.agents().await;
        (a.len() == 2 && a.iter().all(|(_, c)| *c)).then_some(())
    })
    .await?;
    let ids = [
        agents[0].stored_id("agent 1").await?,
        agents[1].stored_id("agent 2").await?,
    ];

    // 2 workers per agent for 2 s, then 4 for 2 s.
    let stepped = serde_json::json!({
        "model": "closed", "start": 2, "step": 2, "steps": 2, "step_duration_ms": 2000,
    });
    let (st, j) = ctl
        .rest("POST", "/api/v1/jobs", &job(&url, 4_000, stepped), None)
        .await?;
    assert_eq!(st, 201, "{j}");
    let id = j["id"].as_str().unwrap_or_default().to_string();
    for (a, agent_id) in agents.iter().zip(&ids) {
        let recs = eventually("four seconds of load records", 30, || async {
            let r = load_records(a, &id);
            (r.iter().filter(|r| r["seq"].as_u64() < Some(4)).count() == 4).then_some(r)
        })
        .await?;
        let seconds: Vec<(u64, u64, u64)> = recs
            .iter()
            .filter(|r| r["seq"].as_u64() < Some(4))
            .map(|r| {
                (
                    r["seq"].as_u64().unwrap_or(99),
                    r["load_step"].as_u64().unwrap_or(99),
                    r["load_workers"].as_u64().unwrap_or(99),
                )
            })
            .collect();
        assert_eq!(
            seconds,
            vec![(0, 0, 2), (1, 0, 2), (2, 1, 4), (3, 1, 4)],
            "{agent_id}"
        );
        for r in &recs {
            assert_eq!(r["src_agent"], agent_id.as_str(), "{r}");
            assert_eq!(r["target"], url.as_str(), "{r}");
            assert_eq!(r["control_mode"], "connected", "{r}");
            assert!(r["status_2xx"].as_u64() > Some(0), "{r}");
        }
    }

    // The controller's live view merges the same seconds: per step, both agents, and as many
    // requests as their records count.
    let mut by_step = [0u64; 2];
    for a in &agents {
        for r in load_records(a, &id) {
            if let Some(step) = r["load_step"].as_u64().filter(|s| *s < 2) {
                by_step[step as usize] += r["requests"].as_u64().unwrap_or(0);
            }
        }
    }
    let view = eventually(
        "the live view counts every record's requests",
        30,
        || async {
            let (st, v) = ctl
                .rest("GET", &format!("/api/v1/jobs/{id}/load"), "", None)
                .await
                .ok()?;
            let steps = v["steps"].as_array()?.clone();
            let live: Vec<u64> = (0..2)
                .map(|k| {
                    steps
                        .iter()
                        .filter(|x| x["step"].as_u64() == Some(k))
                        .map(|x| x["requests"].as_u64().unwrap_or(0))
                        .sum()
                })
                .collect();
            (st == 200 && live == by_step).then_some(v)
        },
    )
    .await?;
    for x in view["steps"].as_array().into_iter().flatten() {
        assert_eq!(x["agents"], 2, "{x}");
    }
    println!("figures load_e2e live_requests_by_step={by_step:?}");

    // A running job: 2 workers per agent, then a PUT to 4. Two more connections per agent,
    // no connection of the first two closed (no restart).
    let constant = |start: u64| serde_json::json!({"model": "closed", "start": start});
    let before = counts.connections.load(Ordering::SeqCst);
    let (st, j) = ctl
        .rest(
            "POST",
            "/api/v1/jobs",
            &job(&url, 120_000, constant(2)),
            None,
        )
        .await?;
    assert_eq!(st, 201, "{j}");
    let id = j["id"].as_str().unwrap_or_default().to_string();
    assert!(
        wait_until(Duration::from_secs(20), || counts
            .open
            .load(Ordering::SeqCst)
            == 4)
        .await,
        "2 workers on each agent"
    );
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let (st, j) = ctl
        .rest(
            "PUT",
            &format!("/api/v1/jobs/{id}"),
            &job(&url, 120_000, constant(4)),
            None,
        )
        .await?;
    assert_eq!(st, 200, "{j}");
    let put = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || counts
            .open
            .load(Ordering::SeqCst)
            == 8)
        .await,
        "4 workers on each agent"
    );
    let followed = put.elapsed();
    assert_eq!(
        counts.connections.load(Ordering::SeqCst) - before,
        8,
        "the first connections were kept: not restarted"
    );
    tokio::time::sleep(Duration::from_millis(2_000)).await;

    // Stop: every connection closed, and nothing more at the target.
    let (st, j) = ctl
        .rest("DELETE", &format!("/api/v1/jobs/{id}"), "", None)
        .await?;
    assert!(st == 200 || st == 204, "{st} {j}");
    let stop = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || counts
            .open
            .load(Ordering::SeqCst)
            == 0)
        .await,
        "every connection closed"
    );
    let stopped = stop.elapsed();
    let n = counts.requests.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        counts.requests.load(Ordering::SeqCst),
        n,
        "no request after"
    );
    println!(
        "figures load_e2e update_followed_ms={:.1} stop_ms={:.1}",
        followed.as_secs_f64() * 1000.0,
        stopped.as_secs_f64() * 1000.0
    );
    let scale = support::wait_scale();
    assert!(
        followed < Duration::from_millis(1_500) * scale,
        "update followed in {followed:?}"
    );
    assert!(
        stopped < Duration::from_millis(1_500) * scale,
        "stopped in {stopped:?}"
    );
    // One run on each agent: seconds once each.
    for a in &agents {
        let recs = eventually("records at 4 workers written", 10, || async {
            let r = load_records(a, &id);
            r.iter().any(|r| r["load_workers"] == 4).then_some(r)
        })
        .await?;
        let seqs: Vec<u64> = recs.iter().filter_map(|r| r["seq"].as_u64()).collect();
        let want: Vec<u64> = (0..seqs.len() as u64).collect();
        assert_eq!(seqs, want, "one run: each second once");
    }

    // An open job of 200 req/s for the whole job: each of the two agents offers 100.
    let shared = serde_json::json!({"model": "open", "start": 200, "rate_per_job": true});
    let (st, j) = ctl
        .rest("POST", "/api/v1/jobs", &job(&url, 3_000, shared), None)
        .await?;
    assert_eq!(st, 201, "{j}");
    let id = j["id"].as_str().unwrap_or_default().to_string();
    for a in &agents {
        let recs = eventually("two seconds of the shared-rate job", 30, || async {
            let r = load_records(a, &id);
            (r.iter().filter(|r| r["seq"].as_u64() < Some(2)).count() == 2).then_some(r)
        })
        .await?;
        for r in recs.iter().filter(|r| r["seq"].as_u64() < Some(2)) {
            assert_eq!(r["load_level"], 100.0, "{r}");
            let rate = r["intended_rps"].as_f64().unwrap_or_default();
            assert!((95.0..=105.0).contains(&rate), "{r}");
        }
    }
    for a in agents {
        a.stop().await?;
    }
    ctl.stop().await?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
