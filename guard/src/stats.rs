//! The stats server both binaries run (`agent -s PORT`, `controller --stats-port PORT`): a
//! guarded HTTP/1.1 accept loop serving an axum `Router` of read-only endpoints, unauthenticated.
//!
//! Every stats server has:
//!
//! - `GET /health` — `ok` (200) while the process runs.
//! - `GET /memstats` — runtime and memory figures as JSON ([`memstats`]): resident set size and
//!   its peak, virtual size, threads, open file descriptors, CPU seconds, uptime, version
//!   (perftest's memstats, with what a Rust process can report).
//!
//! and the routes its binary adds ([`StatsServer::run`]; the agent `/status` and `/metrics`, the
//! controller `/metrics`). Anything else is 404; only GET and HEAD are accepted (405 otherwise,
//! whatever the path: the method check wraps the whole router).
//!
//! The listener holds to its [`Tracker`]'s caps and deadlines like every other listener: over-cap
//! connections are closed at accept, request heads must arrive within the header deadline
//! (hyper's `header_read_timeout`), idle connections are closed ([`Guarded`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioTimer;
use tokio_util::sync::CancellationToken;

use crate::{Guarded, GuardedListener, Tracker};

/// `Content-Type` of a Prometheus text exposition.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A bound stats server.
#[derive(Debug)]
pub struct StatsServer {
    listener: GuardedListener,
}

impl StatsServer {
    /// Binds `addr`; connections are admitted and counted by `tracker`.
    ///
    /// # Errors
    ///
    /// The bind error.
    pub async fn bind(addr: SocketAddr, tracker: Arc<Tracker>) -> io::Result<Self> {
        Ok(StatsServer {
            listener: GuardedListener::with_tracker(
                tokio::net::TcpListener::bind(addr).await?,
                tracker,
            ),
        })
    }

    /// Bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves `/health`, `/memstats` (with `version`) and `routes` until cancelled.
    pub async fn run(
        self,
        routes: Vec<(&'static str, MethodRouter)>,
        version: &'static str,
        shutdown: CancellationToken,
    ) {
        let header_timeout = self.listener.tracker().limits().header_timeout;
        let app = app(routes, version, tokio::time::Instant::now());
        loop {
            let (stream, peer, slot) = tokio::select! {
                () = shutdown.cancelled() => return,
                c = self.listener.accept() => c,
            };
            let io = hyper_util::rt::TokioIo::new(Guarded::new(stream, peer, slot));
            let stop = shutdown.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    tower::ServiceExt::oneshot(app.clone(), req.map(axum::body::Body::new))
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(io, svc);
                let r = tokio::select! { r = conn => r, () = stop.cancelled() => Ok(()) };
                if let Err(error) = r {
                    tracing::debug!(message = "Stats connection closed with an error.", %peer, %error);
                }
            });
        }
    }
}

/// A response with this status, `Content-Type` and body.
pub fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response {
    (status, [(http::header::CONTENT_TYPE, ctype)], body).into_response()
}

/// `405` for any method but `GET` and `HEAD`, whatever the path.
async fn only_get(req: Request, next: Next) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    next.run(req).await
}

/// The whole service: the method check around the router of `/health`, `routes` and
/// `/memstats`; anything else is 404 naming the endpoints.
fn app(
    routes: Vec<(&'static str, MethodRouter)>,
    version: &'static str,
    started: tokio::time::Instant,
) -> impl tower::Service<
    Request,
    Response = Response,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    let mut paths = vec!["/health"];
    paths.extend(routes.iter().map(|(p, _)| *p));
    paths.push("/memstats");
    let listed = match paths.split_last() {
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    let mut router = Router::new().route(
        "/health",
        get(|| async { reply(StatusCode::OK, "text/plain", "ok\n".into()) }),
    );
    for (path, r) in routes {
        router = router.route(path, r);
    }
    let router = router
        .route(
            "/memstats",
            get(move || async move {
                reply(
                    StatusCode::OK,
                    "application/json",
                    memstats(started.elapsed().as_secs_f64(), version).to_string(),
                )
            }),
        )
        .fallback(move || {
            let body = format!("not found; try {listed}\n");
            async move { reply(StatusCode::NOT_FOUND, "text/plain", body) }
        });
    tower::Layer::layer(&axum::middleware::from_fn(only_get), router)
}

/// Process figures from `/proc/self` (Linux), with the binary's `version`. Missing figures are
/// `null`.
pub fn memstats(uptime_s: f64, version: &str) -> serde_json::Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v * 1024)
    };
    let threads = status
        .lines()
        .find(|l| l.starts_with("Threads:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok());
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; after ')' they are at 11 and 12.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .map(|t| t / 100.0)
    };
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .ok();
    serde_json::json!({
        "rss_bytes": kb("VmRSS:"),
        "rss_peak_bytes": kb("VmHWM:"),
        "virtual_bytes": kb("VmSize:"),
        "threads": threads,
        "open_fds": fds,
        "cpu_user_seconds": ticks(11),
        "cpu_system_seconds": ticks(12),
        "uptime_seconds": uptime_s,
        "version": version,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn memstats_reports_rss_and_threads() {
        let m = memstats(1.0, "9.9.9");
        assert!(
            m["rss_bytes"].as_u64().is_some_and(|v| v > 1024 * 1024),
            "{m}"
        );
        assert!(m["threads"].as_u64().is_some_and(|v| v >= 1), "{m}");
        assert!(m["cpu_user_seconds"].as_f64().is_some(), "{m}");
        assert_eq!(m["version"], "9.9.9");
    }

    async fn call(method: Method, path: &str) -> (StatusCode, String) {
        let routes = vec![(
            "/metrics",
            get(|| async { reply(StatusCode::OK, PROMETHEUS_TEXT, "m 1\n".into()) }),
        )];
        let app = app(routes, "1.2.3", tokio::time::Instant::now());
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let res = tower::ServiceExt::oneshot(app, req).await.unwrap();
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn endpoints_methods_and_fallback() {
        assert_eq!(
            call(Method::GET, "/health").await,
            (StatusCode::OK, "ok\n".into())
        );
        assert_eq!(
            call(Method::GET, "/metrics").await,
            (StatusCode::OK, "m 1\n".into())
        );
        assert_eq!(call(Method::HEAD, "/health").await.0, StatusCode::OK);
        let (s, body) = call(Method::GET, "/memstats").await;
        assert_eq!(s, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["version"], "1.2.3");
        for path in ["/health", "/nope"] {
            assert_eq!(
                call(Method::POST, path).await,
                (StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into())
            );
        }
        assert_eq!(
            call(Method::GET, "/nope").await,
            (
                StatusCode::NOT_FOUND,
                "not found; try /health, /metrics or /memstats\n".into()
            )
        );
    }
}
