//! The web dashboard's page and sessions (issue 14), against a real controller process over
//! TLS, as a browser and as an attacker would use them: the embedded page and the security
//! headers on every response; signing in exchanges the operator credential for an `HttpOnly;
//! SameSite=Strict; Secure` cookie; state-changing calls made with the cookie need the
//! session's CSRF token; a forged, signed-out or revoked operator's cookie gets `401`; a
//! sign-in that is not JSON (what a cross-site form can send) is refused.

mod support;
use support::{TestController, pinned_http1, tmp_dir};

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// The policy the controller must send (`controller/src/ui.rs`).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// A response: status, headers, body.
struct Resp {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
}

/// One request with exactly the given headers (no credential unless given).
async fn call(
    ctl: &TestController,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Resp> {
    let mut send = pinned_http1(&ctl.data, &ctl.rest).await?;
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = send
        .send_request(req.body(Full::new(bytes::Bytes::from(body.to_string())))?)
        .await?;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let b = res.into_body().collect().await?.to_bytes();
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&b).into_owned(),
    })
}

/// Signs in with `credential`: the cookie pair (`meshlat_session=…`) and the CSRF token.
async fn sign_in(ctl: &TestController, credential: &str) -> Result<(String, String)> {
    let body = serde_json::json!({ "credential": credential }).to_string();
    let r = call(
        ctl,
        "POST",
        "/api/v1/session",
        &[("content-type", "application/json")],
        &body,
    )
    .await?;
    anyhow::ensure!(r.status == 201, "sign-in: {} {}", r.status, r.body);
    let set = r.header("set-cookie");
    let pair = set.split(';').next().unwrap_or_default().trim().to_string();
    let csrf = r.json()["csrf_token"]
        .as_str()
        .context("csrf_token")?
        .to_string();
    Ok((pair, csrf))
}

fn job_spec(name: &str) -> String {
    serde_json::json!({
        "name": name, "protocols": ["udp"], "sources": ["region=nowhere"],
        "targets": ["udp://127.0.0.1:9"], "interval_ms": 1000, "timeout_ms": 500
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_safely_and_sessions_need_their_csrf_token() -> Result<()> {
    let root = tmp_dir("dash-session", "cookie");
    let ctl = TestController::builder(root.join("ctl"))
        .args(["--stats-port", "0"])
        .spawn()
        .await?;
    let cred = ctl.credential().to_string();
    let operator = cred.split_once(':').map(|(n, _)| n).unwrap_or_default();

    // The page and its assets, without a credential, with the security headers.
    for (path, ctype) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = call(&ctl, "GET", path, &[], "").await?;
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        assert!(r.header("content-type").starts_with(ctype), "GET {path}");
        assert_eq!(r.header("content-security-policy"), CSP, "GET {path}");
        assert_eq!(r.header("x-content-type-options"), "nosniff");
        assert_eq!(r.header("x-frame-options"), "DENY");
        assert_eq!(r.header("referrer-policy"), "no-referrer");
    }
    let page = call(&ctl, "GET", "/", &[], "").await?;
    assert!(page.body.contains("/ui/app.js"), "{}", page.body);
    // Nothing else is served as a file; the API still needs a credential, and its answers
    // carry the same headers and are never cached.
    for path in ["/ui/../Cargo.toml", "/ui/", "/index.htm", "/ui/app.js.map"] {
        let r = call(&ctl, "GET", path, &[], "").await?;
        assert_eq!(r.status, 401, "GET {path}: {}", r.body);
    }
    let r = call(&ctl, "GET", "/api/v1/jobs", &[], "").await?;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("content-security-policy"), CSP);
    assert_eq!(r.header("cache-control"), "no-store");
    let r = call(&ctl, "GET", "/api/v1/session", &[], "").await?;
    assert_eq!(r.status, 401, "not signed in: {}", r.body);

    // Sign-in: JSON only (a cross-site form can post text/plain or form data, not JSON
    // without a preflight), a wrong credential is 401, a missing one 400.
    let good = serde_json::json!({ "credential": cred }).to_string();
    for ctype in ["text/plain", "application/x-www-form-urlencoded", ""] {
        let h: Vec<(&str, &str)> = if ctype.is_empty() {
            vec![]
        } else {
            vec![("content-type", ctype)]
        };
        let r = call(&ctl, "POST", "/api/v1/session", &h, &good).await?;
        assert_eq!(r.status, 415, "content-type {ctype:?}: {}", r.body);
        assert!(r.header("set-cookie").is_empty());
    }
    let json = [("content-type", "application/json")];
    let wrong = serde_json::json!({ "credential": format!("{operator}:not-the-secret") });
    let r = call(&ctl, "POST", "/api/v1/session", &json, &wrong.to_string()).await?;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.header("set-cookie").is_empty());
    for bad in ["", "{}", r#"{"credential":7}"#, "[]"] {
        let r = call(&ctl, "POST", "/api/v1/session", &json, bad).await?;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.json()["error"]["field"], "credential", "{}", r.body);
    }
    let r = call(&ctl, "POST", "/api/v1/session", &json, &good).await?;
    assert_eq!(r.status, 201, "{}", r.body);
    let set = r.header("set-cookie");
    for attr in [
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Path=/",
        "Max-Age=",
    ] {
        assert!(set.contains(attr), "cookie lacks {attr}: {set}");
    }
    assert_eq!(r.json()["operator"], operator, "{}", r.body);
    let cookie = set.split(';').next().unwrap_or_default().to_string();
    let csrf = r.json()["csrf_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(csrf.len() >= 32, "csrf token too short: {csrf:?}");
    assert!(
        !r.body.contains(&cred),
        "the credential is echoed: {}",
        r.body
    );

    // Reads with the cookie; the session call gives the CSRF token back (a reloaded page).
    let c = [("cookie", cookie.as_str())];
    let r = call(&ctl, "GET", "/api/v1/jobs", &c, "").await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call(&ctl, "GET", "/api/v1/session", &c, "").await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["csrf_token"], csrf.as_str());
    assert_eq!(r.json()["operator"], operator);
    // Among other cookies, in any order.
    let mixed = format!("theme=dark; {cookie}; other=1");
    let r = call(&ctl, "GET", "/api/v1/agents", &[("cookie", &mixed)], "").await?;
    assert_eq!(r.status, 200, "{}", r.body);

    // Matrices are built once per view per second and shared: two dashboards watching the
    // same view get the same build; a second later, a new one.
    let m = |q: &'static str| {
        let ctl = &ctl;
        async move {
            let r = call(ctl, "GET", q, &c, "").await?;
            anyhow::ensure!(r.status == 200, "{q}: {}", r.body);
            Ok::<u64, anyhow::Error>(r.json()["unix_ms"].as_u64().unwrap_or_default())
        }
    };
    // (Two calls straddle a rebuild only if the machine stalls for a second between them:
    // some pair of five shares one.)
    let mut shared = None;
    for _ in 0..5 {
        let (a, b) = (
            m("/api/v1/matrix?by=region").await?,
            m("/api/v1/matrix?by=region").await?,
        );
        if a == b {
            shared = Some(a);
            break;
        }
    }
    let first = shared.context("five pairs of calls a moment apart never shared a build")?;
    assert_ne!(m("/api/v1/matrix?by=agent").await?, 0);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(
        m("/api/v1/matrix?by=region").await? > first,
        "never rebuilt"
    );

    // Writes with the cookie need the token: none, a wrong one, another session's.
    let (_, other_csrf) = sign_in(&ctl, &cred).await?;
    let spec = job_spec("dash-session");
    for token in [None, Some("0".repeat(csrf.len())), Some(other_csrf.clone())] {
        let mut h = vec![
            ("cookie", cookie.as_str()),
            ("content-type", "application/json"),
        ];
        if let Some(t) = &token {
            h.push(("x-csrf-token", t.as_str()));
        }
        let r = call(&ctl, "POST", "/api/v1/jobs", &h, &spec).await?;
        assert_eq!(r.status, 403, "token {token:?}: {}", r.body);
        assert_eq!(r.json()["error"]["field"], "x-csrf-token", "{}", r.body);
    }
    let ok = [
        ("cookie", cookie.as_str()),
        ("content-type", "application/json"),
        ("x-csrf-token", csrf.as_str()),
    ];
    let r = call(&ctl, "POST", "/api/v1/jobs", &ok, &spec).await?;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().context("job id")?.to_string();
    let r = call(&ctl, "DELETE", &format!("/api/v1/jobs/{id}"), &c, "").await?;
    assert_eq!(r.status, 403, "stop without token: {}", r.body);
    let r = call(&ctl, "DELETE", &format!("/api/v1/jobs/{id}"), &ok, "").await?;
    assert_eq!(r.status, 200, "{}", r.body);

    // Forged and malformed cookies are refused, never a crash.
    for forged in [
        "meshlat_session=".to_string(),
        format!("meshlat_session={}", "a".repeat(64)),
        format!("meshlat_session={}", "é".repeat(4000)),
        "meshlat_session=../../etc".to_string(),
    ] {
        let r = call(&ctl, "GET", "/api/v1/jobs", &[("cookie", &forged)], "").await?;
        assert!(
            matches!(r.status, 401 | 431 | 400),
            "{forged:.40}: {}",
            r.status
        );
    }
    // A bearer credential still wins over a cookie, and a bad one is not rescued by it.
    let bad_bearer = format!("Bearer {operator}:wrong");
    let h = [("cookie", cookie.as_str()), ("authorization", &bad_bearer)];
    let r = call(&ctl, "GET", "/api/v1/jobs", &h, "").await?;
    assert_eq!(r.status, 401, "{}", r.body);

    // Signing out needs the token, ends the session and clears the cookie.
    let r = call(&ctl, "DELETE", "/api/v1/session", &c, "").await?;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = call(&ctl, "DELETE", "/api/v1/session", &ok, "").await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["signed_out"], true, "{}", r.body);
    assert!(
        r.header("set-cookie").contains("Max-Age=0"),
        "{:?}",
        r.headers
    );
    let r = call(&ctl, "GET", "/api/v1/jobs", &c, "").await?;
    assert_eq!(r.status, 401, "a signed-out cookie still works: {}", r.body);

    // Revoking an operator ends its sessions at once.
    let r = ctl
        .rest(
            "POST",
            "/api/v1/credentials",
            r#"{"name":"night-shift"}"#,
            None,
        )
        .await?;
    assert_eq!(r.0, 201, "{}", r.1);
    let second = r.1["credential"]
        .as_str()
        .context("credential")?
        .to_string();
    let (second_cookie, _) = sign_in(&ctl, &second).await?;
    let c2 = [("cookie", second_cookie.as_str())];
    assert_eq!(
        call(&ctl, "GET", "/api/v1/jobs", &c2, "").await?.status,
        200
    );
    let r = ctl
        .rest("DELETE", "/api/v1/credentials/night-shift", "", None)
        .await?;
    assert_eq!(r.0, 200, "{}", r.1);
    let r = call(&ctl, "GET", "/api/v1/jobs", &c2, "").await?;
    assert_eq!(r.status, 401, "a revoked operator's session: {}", r.body);

    // The refusals are counted.
    let stats = ctl.stats.clone().context("stats address")?;
    let metrics = plain_get(&stats, "/metrics").await?;
    let csrf_refusals = metrics
        .lines()
        .find(|l| {
            l.starts_with("meshlat_controller_auth_failures_total")
                && l.contains("reason=\"csrf\"")
                && l.contains("surface=\"rest\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert!(
        csrf_refusals.is_some_and(|n| n >= 5.0),
        "csrf refusals not counted: {csrf_refusals:?}"
    );
    Ok(())
}

/// A plain-HTTP `GET` of the stats server: the body.
async fn plain_get(addr: &str, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}
