//! The REST API's OpenAPI document (`controller/src/openapi.json`, served at
//! `GET /api/v1/openapi.json`) cannot drift from the routes:
//!
//! - every route of the router in `controller/src/rest.rs` is documented, and every documented
//!   operation is a route (read from the source, so a new route without documentation fails);
//! - against a real controller, every documented operation answers with one of its documented
//!   status codes and never the router's catch-all "no such endpoint", and every error body has
//!   the documented shape;
//! - the document is served without a credential, byte for byte.
//!
//! `scripts/test_api.sh` (stage `api-fuzz`) then runs schemathesis from the same document.

mod support;
use support::TestController;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

const DOC: &str = include_str!("../src/openapi.json");
const ROUTER: &str = include_str!("../src/rest.rs");
const CREDENTIAL: &str = "openapi-test:openapi-test-secret-0123456789";

/// (METHOD, /path/{param}) of every documented operation.
fn documented() -> BTreeSet<(String, String)> {
    let doc: Value = serde_json::from_str(DOC).expect("openapi.json is JSON");
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (m, _) in item.as_object().expect("path item") {
            if m != "parameters" {
                out.insert((m.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// (METHOD, /path/{param}) of every route of rest.rs's axum router: each
/// `.route("/api/...", methods(..).on(M::X, handler)...)` gives one operation per `.on(M::X`,
/// plus the document's own route (answered before routing).
fn routed() -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let start = ROUTER.find("pub fn router(").unwrap_or(0);
    let router = &ROUTER[start..];
    let router = &router[..router.find("\n    }\n").unwrap_or(router.len())];
    for route in router.split(".route(").skip(1) {
        let Some(path) = route
            .trim_start()
            .strip_prefix('"')
            .and_then(|r| r.split_once('"'))
            .map(|(p, _)| p)
        else {
            continue;
        };
        for on in route.split(".on(M::").skip(1) {
            let method: String = on.chars().take_while(char::is_ascii_uppercase).collect();
            if path.starts_with("/api/") && !method.is_empty() {
                out.insert((method, path.to_string()));
            }
        }
    }
    out.insert(("GET".into(), "/api/v1/openapi.json".into()));
    out
}

#[test]
fn every_route_is_documented_and_every_documented_operation_is_routed() {
    let (doc, routes) = (documented(), routed());
    println!(
        "openapi: {} documented operations, {} routes",
        doc.len(),
        routes.len()
    );
    assert!(
        routes.len() >= 10,
        "the router parse found too few routes: {routes:?}"
    );
    let undocumented: Vec<_> = routes.difference(&doc).collect();
    let unrouted: Vec<_> = doc.difference(&routes).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes missing from controller/src/openapi.json: {undocumented:?}; \
         documented but not routed: {unrouted:?}"
    );
}

/// A live controller answers every documented operation with a documented status.
#[tokio::test]
async fn a_live_controller_answers_every_documented_operation_as_documented() -> Result<()> {
    let data = support::tmp_dir("openapi", "live");
    let mut ctl = TestController::builder(&data)
        .region("oa")
        .args(["--operator-credential", CREDENTIAL])
        .quiet()
        .announce_within(Duration::from_secs(30))
        .spawn()
        .await?;
    let rest = ctl.rest.clone();

    let call = |method: &str, path: &str, body: &str, auth: bool| {
        let (data, rest) = (data.clone(), rest.clone());
        let (method, path, body) = (method.to_string(), path.to_string(), body.to_string());
        async move {
            let mut send = support::pinned_http1(&data, &rest).await?;
            let mut req = http::Request::builder()
                .method(method.as_str())
                .uri(format!("https://{rest}{path}"))
                .header("host", rest.as_str())
                .header("content-type", "application/json");
            if auth {
                req = req.header("authorization", format!("Bearer {CREDENTIAL}"));
            }
            let resp = send
                .send_request(req.body(Full::new(bytes::Bytes::from(body)))?)
                .await?;
            let status = resp.status().as_u16();
            let ctype = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            // The event stream never ends: read its first chunk only.
            let mut b = resp.into_body();
            let bytes = if ctype.starts_with("text/event-stream") {
                match tokio::time::timeout(Duration::from_secs(5), b.frame()).await {
                    Ok(Some(Ok(f))) => f.into_data().unwrap_or_default(),
                    _ => bytes::Bytes::new(),
                }
            } else {
                b.collect().await?.to_bytes()
            };
            Ok::<_, anyhow::Error>((status, ctype, bytes))
        }
    };

    // The document itself, without a credential, is the committed file.
    let (st, ctype, body) = call("GET", "/api/v1/openapi.json", "", false).await?;
    assert_eq!((st, ctype.as_str()), (200, "application/json"));
    assert_eq!(
        body.as_ref(),
        DOC.as_bytes(),
        "served document differs from the file"
    );
    // Everything else needs the credential.
    let (st, _, body) = call("GET", "/api/v1/jobs", "", false).await?;
    assert_eq!(st, 401, "{}", String::from_utf8_lossy(&body));

    let doc: Value = serde_json::from_str(DOC)?;
    let spec = doc["components"]["schemas"]["JobSpec"]["example"].to_string();
    // A job, so {id} paths have something to find.
    let (st, _, body) = call("POST", "/api/v1/jobs", &spec, true).await?;
    assert_eq!(st, 201, "{}", String::from_utf8_lossy(&body));
    let job: Value = serde_json::from_slice(&body)?;
    let id = job["id"].as_str().context("job id")?.to_string();

    let mut checked = 0;
    for (method, path) in documented() {
        if path == "/api/v1/openapi.json" {
            continue;
        }
        let op = &doc["paths"][&path][method.to_ascii_lowercase()];
        let allowed: BTreeSet<u16> = op["responses"]
            .as_object()
            .context("responses")?
            .keys()
            .filter_map(|k| k.parse().ok())
            .collect();
        let concrete = path
            .replace("{id}", &id)
            .replace("{name}", "no-such-credential");
        let body = match (method.as_str(), path.as_str()) {
            ("POST" | "PUT", p) if p.starts_with("/api/v1/jobs") => spec.clone(),
            ("POST", "/api/v1/credentials") => r#"{"name":"openapi-added"}"#.to_string(),
            _ => String::new(),
        };
        let (st, ctype, resp) = call(&method, &concrete, &body, true).await?;
        let text = String::from_utf8_lossy(&resp);
        println!("openapi: {method} {concrete} -> {st}");
        assert!(
            allowed.contains(&st),
            "{method} {path}: status {st} not documented ({allowed:?}): {text}"
        );
        assert!(
            !text.contains("no such endpoint"),
            "{method} {path} is documented but not routed: {text}"
        );
        if st >= 400 {
            let v: Value = serde_json::from_slice(&resp)
                .with_context(|| format!("{method} {path}: error body is not JSON: {text}"))?;
            assert!(
                v["error"]["code"].is_string() && v["error"]["message"].is_string(),
                "{method} {path}: error body not in the documented shape: {text}"
            );
        } else if !ctype.starts_with("text/event-stream") {
            serde_json::from_slice::<Value>(&resp)
                .with_context(|| format!("{method} {path}: body is not JSON: {text}"))?;
        }
        checked += 1;
    }
    println!("openapi: {checked} operations answered as documented");
    assert!(checked >= 10);
    // An undocumented path gets the documented error shape too.
    let (st, _, body) = call("GET", "/api/v1/nope", "", true).await?;
    assert_eq!(st, 404, "{}", String::from_utf8_lossy(&body));
    ctl.child.start_kill()?;
    ctl.child.wait().await?;
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}
