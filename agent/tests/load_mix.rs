//! The request mix of a load run against a real loopback server that records every request:
//! weights (exact: one worker sends in the smooth round-robin's order), `{{KNOB}}` templates in
//! path, headers and body, methods, and `expect_status` counting; and `agent load --scenario`
//! with a `--knob` override as a process.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use meshlat_agent::load::credentials::Credentials;
use meshlat_agent::load::mix::{RequestMix, SmoothWrr};
use meshlat_agent::load::plan::{Caps, Model, Schedule, Steps};
use meshlat_agent::load::{LoadEngine, LoadSpec};
use meshlat_agent::target::Target;
use meshlat_agent::tls::TlsClientOptions;
use meshlat_proto::pb;

/// One request as the server received it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    label: Option<String>,
    content_length: Option<String>,
    body: String,
}

/// A server on its own thread and runtime that records every request and answers by path:
/// `/oopsie` 500, `/limited` 429, `/orders` 201, anything else 200.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    fn start() -> Recorder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = Arc::clone(&seen);
        let addr = support::serve_http_on_thread(true, move || {
            let seen = Arc::clone(&s2);
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let seen = Arc::clone(&seen);
                async move { Ok::<_, Infallible>(answer(&seen, req).await) }
            });
            let on_close: Box<dyn FnOnce() + Send> = Box::new(|| {});
            (svc, on_close)
        });
        Recorder { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn answer(
    seen: &Mutex<Vec<Seen>>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
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
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .map(|v| v.to_str().unwrap_or("?").to_string())
    };
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        label: header("x-label"),
        content_length: header("content-length"),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let status = match parts.uri.path() {
        "/oopsie" => StatusCode::INTERNAL_SERVER_ERROR,
        "/limited" => StatusCode::TOO_MANY_REQUESTS,
        "/orders" => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    let mut r = Response::new(Full::new(Bytes::from_static(b"ok\n")));
    *r.status_mut() = status;
    r
}

const SCENARIO: &str = r#"{
  "description": "test mix",
  "knobs": { "ID": 7, "COLOUR": "blue", "ERROR_WEIGHT": 1 },
  "requests": [
    { "label": "item", "path": "/items/{{ID}}?c={{COLOUR}}", "weight": 3 },
    { "label": "order", "method": "POST", "path": "/orders",
      "headers": { "X-Label": "{{COLOUR}}-{{ID}}", "Content-Type": "application/json" },
      "body": "{\"item\": {{ID}}}", "expect_status": 201 },
    { "label": "error", "path": "/oopsie", "expect_status": 500, "weight": "{{ERROR_WEIGHT}}" },
    { "label": "wrong", "path": "/wrong", "expect_status": 204 },
    { "label": "limited", "path": "/limited", "expect_status": 200 }
  ]
}"#;

/// One closed-model worker sends the mix in the round-robin's order, so the server sees the
/// weights exactly; templates are rendered; expected statuses count as their class, others
/// as `status_other`, 429 as rate-limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_templates_and_expected_statuses() {
    let server = Recorder::start();
    let scenario = meshlat_proto::scenario::parse("mix.json", SCENARIO).unwrap();
    let mut load = pb::LoadSpec {
        // Overrides: the error page twice as often, a different id.
        knobs: [("ERROR_WEIGHT", "2"), ("ID", "42")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
        ..Default::default()
    };
    scenario.fill(&mut load).unwrap();
    let weights: Vec<u32> = load.requests.iter().map(|r| r.weight).collect();
    assert_eq!(weights, [3, 1, 2, 1, 1]);
    let mix = RequestMix::new(&load.requests, &load.knobs).unwrap();
    let spec = LoadSpec {
        target: Target::parse(&format!("http://{}/ignored", server.addr)).unwrap(),
        schedule: Schedule::new(
            Model::Closed,
            Steps {
                start: 1.0,
                step: 0.0,
                steps: 1,
                step_duration: Duration::ZERO,
            },
            Caps {
                max_connections: 4,
                max_rate: 10_000.0,
            },
        ),
        duration: Duration::from_secs(60),
        think_time: Duration::ZERO,
        timeout: Duration::from_secs(10),
        headers: http::HeaderMap::new(),
        mix,
        credentials: Credentials::default(),
        credentials_header: None,
        tls: TlsClientOptions::default(),
    };
    let handle = LoadEngine::new(spec).unwrap().start();
    const N: usize = 400;
    let got = support::eventually_async(Duration::from_secs(30), || server.seen().len() >= N).await;
    handle.stop();
    let summary = handle.join().await.unwrap();
    assert!(got, "only {} requests arrived", server.seen().len());
    let seen = server.seen();

    // Exactly the round-robin's order: 400 requests are 50 windows of weight 8.
    let labels = [
        "/items/42?c=blue",
        "/orders",
        "/oopsie",
        "/wrong",
        "/limited",
    ];
    let mut wrr = SmoothWrr::new(weights.clone());
    for (i, s) in seen.iter().take(N).enumerate() {
        assert_eq!(s.path, labels[wrr.pick()], "request {i}");
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in seen.iter().take(N) {
        *counts.entry(s.path.as_str()).or_default() += 1;
    }
    assert_eq!(
        counts,
        BTreeMap::from([
            ("/items/42?c=blue", 150),
            ("/orders", 50),
            ("/oopsie", 100),
            ("/wrong", 50),
            ("/limited", 50),
        ])
    );

    // Templates, method and body.
    let order = seen.iter().find(|s| s.path == "/orders").unwrap();
    assert_eq!(order.method, "POST");
    assert_eq!(order.label.as_deref(), Some("blue-42"));
    assert_eq!(order.body, "{\"item\": 42}");
    assert_eq!(order.content_length.as_deref(), Some("12"));
    let item = seen.iter().find(|s| s.path.starts_with("/items")).unwrap();
    assert_eq!((item.method.as_str(), item.body.as_str()), ("GET", ""));

    // What the engine counted matches what the server answered (the request in flight at the
    // stop may be answered but not counted: at most one).
    let answered = |p: &str| seen.iter().filter(|s| s.path == p).count() as u64;
    let st = summary.total.status;
    let near = |got: u64, want: u64| got <= want && got + 1 >= want;
    assert!(
        near(st.s2xx, answered("/items/42?c=blue") + answered("/orders")),
        "2xx {st:?}"
    );
    assert!(
        near(st.s5xx, answered("/oopsie")),
        "an expected 500 counts as 5xx: {st:?}"
    );
    assert!(
        near(st.other, answered("/wrong")),
        "200 where 204 was expected: {st:?}"
    );
    assert!(
        near(st.rate_limited, answered("/limited")),
        "429 stays rate-limited: {st:?}"
    );
    assert_eq!(st.s4xx, 0, "{st:?}");
}

/// `agent load --scenario FILE --knob ERROR_WEIGHT=0`: the shipped example, the error page
/// turned off, paths under the target's origin; an unknown knob is refused naming it.
#[test]
fn agent_load_runs_a_scenario_file_with_knobs() {
    let server = Recorder::start();
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/api_mix.json");
    let out = std::process::Command::new(support::agent_bin())
        .args(["load", "--scenario"])
        .arg(&file)
        .args(["--knob", "ERROR_WEIGHT=0", "--knob", "PRODUCT_ID=9"])
        .args(["-c", "2", "-d", "1"])
        .arg(format!("http://{}/base", server.addr))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = server.seen();
    assert!(seen.len() >= 20, "{} requests", seen.len());
    assert!(seen.iter().all(|s| s.path != "/oopsie"), "ERROR_WEIGHT=0");
    assert!(seen.iter().any(|s| s.path == "/api/products/9"));
    assert!(seen.iter().any(|s| s.path == "/api/label?name=foo_label"));
    assert!(
        seen.iter()
            .any(|s| s.method == "POST" && s.body.contains("\"id\": 9")),
        "the order with PRODUCT_ID=9"
    );
    let bad = std::process::Command::new(support::agent_bin())
        .args(["load", "--scenario"])
        .arg(&file)
        .args(["--knob", "NOPE=1", "-d", "1"])
        .arg(format!("http://{}/", server.addr))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("--knob") && err.contains("has no knob NOPE"),
        "{err}"
    );
}
