//! A scenario end to end: the controller's `--scenarios` directory, a load job naming the
//! scenario with a knob override, one agent process running it against a local target that
//! records every request: the weights, the templates, the knob that turns a request off, and
//! the expected statuses in the `kind=load` records.
//!
//! The agent binary is found next to the controller's (`target/debug/agent`): `cargo test
//! --workspace` builds it; with `-p meshlat-controller` alone, run
//! `cargo build -p meshlat-agent --bin agent` first.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use support::{TestAgent, TestController, eventually, tmp_dir};

/// (method, path, body) of each request the target got.
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// A target on its own thread and runtime: `/orders` 201, `/oopsie` 500, anything else 200.
fn target() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let s = Arc::clone(&seen);
    let addr = support::serve_http_on_thread(move || {
        let s = Arc::clone(&s);
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let s = Arc::clone(&s);
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let path = parts
                    .uri
                    .path_and_query()
                    .map_or_else(String::new, |p| p.as_str().to_string());
                if let Ok(mut v) = s.lock() {
                    v.push((
                        parts.method.to_string(),
                        path,
                        String::from_utf8_lossy(&body).into_owned(),
                    ));
                }
                let status = match parts.uri.path() {
                    "/orders" => 201,
                    "/oopsie" => 500,
                    _ => 200,
                };
                let mut r = hyper::Response::new(Full::new(Bytes::from_static(b"ok\n")));
                *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
                Ok::<_, Infallible>(r)
            }
        });
        let on_close: Box<dyn FnOnce() + Send> = Box::new(|| {});
        (svc, on_close)
    });
    (addr, seen)
}

const SHOP: &str = r#"{
  "description": "shop",
  "knobs": { "ERROR_WEIGHT": 1, "ID": "7" },
  "requests": [
    { "label": "item", "path": "/items/{{ID}}", "weight": 3 },
    { "label": "order", "method": "POST", "path": "/orders", "body": "{\"id\": {{ID}}}",
      "expect_status": 201 },
    { "label": "error", "path": "/oopsie", "weight": "{{ERROR_WEIGHT}}", "expect_status": 500 },
    { "label": "wrong", "path": "/wrong", "expect_status": 204 }
  ]
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_job_runs_its_mix_on_the_agents() -> Result<()> {
    let root = tmp_dir("scenario-e2e", "mix");
    let dir = root.join("scenarios");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("shop.json"), SHOP)?;
    let (addr, seen) = target();
    let url = format!("http://{addr}/base");
    let ctl = TestController::builder(root.join("ctl"))
        .args(["--load-allow", "127.0.0.1"])
        .arg("--scenarios")
        .arg(&dir)
        .spawn()
        .await?;
    let agent = TestAgent::builder(&ctl, root.join("out"), root.join("st"))
        .log(root.join("agent.log"))
        .spawn()?;
    eventually("the agent connects", 30, || async {
        ctl.agents().await.iter().any(|(_, c)| *c).then_some(())
    })
    .await?;
    let job = serde_json::json!({
        "name": "scenario-e2e",
        "kind": "load",
        "protocols": ["http"],
        "sources": ["region=r1"],
        "targets": [url],
        "timeout_ms": 2000,
        "duration_ms": 3_000,
        "load": {
            "model": "closed", "start": 1, "scenario": "shop",
            "knobs": {"ERROR_WEIGHT": "0", "ID": "42"},
        },
    });
    let (st, j) = ctl
        .rest("POST", "/api/v1/jobs", &job.to_string(), None)
        .await?;
    assert_eq!(st, 201, "{j}");
    let id = j["id"].as_str().unwrap_or_default().to_string();
    let recs: Vec<Value> = eventually("three seconds of load records", 30, || async {
        let r: Vec<Value> = agent
            .records()
            .into_iter()
            .filter(|r| r["kind"] == "load" && r["job_id"] == id.as_str())
            .collect();
        (r.len() >= 3).then_some(r)
    })
    .await?;

    let seen = seen.lock().map(|v| v.clone()).unwrap_or_default();
    assert!(seen.len() >= 20, "{} requests", seen.len());
    let mut by_path: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, p, _) in &seen {
        *by_path.entry(p.as_str()).or_default() += 1;
    }
    assert!(
        !by_path.contains_key("/oopsie"),
        "ERROR_WEIGHT=0: {by_path:?}"
    );
    // One worker sends in round-robin order: weights 3:1:1, within one window.
    let (items, orders, wrong) = (
        by_path.get("/items/42").copied().unwrap_or(0),
        by_path.get("/orders").copied().unwrap_or(0),
        by_path.get("/wrong").copied().unwrap_or(0),
    );
    assert!(
        items.abs_diff(3 * orders) <= 3 && orders.abs_diff(wrong) <= 1,
        "{by_path:?}"
    );
    let order = seen.iter().find(|(_, p, _)| p == "/orders").cloned();
    assert_eq!(
        order,
        Some(("POST".into(), "/orders".into(), "{\"id\": 42}".into()))
    );

    // The records count the expected 201 as 2xx and the 200 where 204 was expected as other.
    let sum = |k: &str| recs.iter().filter_map(|r| r[k].as_u64()).sum::<u64>();
    assert!(sum("status_2xx") > 0 && sum("status_other") > 0, "{recs:?}");
    assert_eq!(sum("status_5xx"), 0, "{recs:?}");
    let answered_wrong = wrong as u64;
    assert!(
        sum("status_other") <= answered_wrong && sum("status_other") + 2 >= answered_wrong,
        "status_other {} vs /wrong {answered_wrong}",
        sum("status_other")
    );
    agent.stop().await?;
    ctl.stop().await?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
