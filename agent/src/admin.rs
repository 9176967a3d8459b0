//! The stats server (`-s PORT`, like perftest's `-s`).
//!
//! Endpoints:
//!
//! - `GET /health` — `ok` (200) while the process runs.
//! - `GET /status` — the controller session as JSON (`agent run`): `controlled`, `connected`,
//!   `agent_id`, and `refused` — the controller's last refusal (`code`, `reason`, `unix_ms`),
//!   e.g. an advertised address outside its `--agent-cidr`; `null` once welcomed again
//!   ([`crate::control::status`]).
//! - `GET /metrics` — Prometheus text exposition of [`crate::metrics`].
//! - `GET /memstats` — runtime and memory figures as JSON: resident set size and its peak,
//!   virtual size, threads, open file descriptors, CPU seconds, uptime (perftest's memstats,
//!   with what a Rust process can report).
//!
//! Anything else is 404; only GET and HEAD are accepted. The endpoints are an axum `Router`
//! behind that method check, served by this module's accept loop (hyper, connection guards).
//!
//! It binds `--stats-listen` (default: the command's `--listen` address), and holds to the same
//! caps and deadlines as the responders (`--max-conns`, `--max-conns-per-ip`,
//! `--header-timeout`, `--idle-timeout`; [`meshlat_guard`]): over-cap connections are closed at
//! accept, request heads must arrive in time, idle connections are closed. Refusals and
//! closes count in `meshlat_responder_requests_total{protocol="stats"}`.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioTimer;
use meshlat_guard::{ConnLimits, Guarded, GuardedListener, Tracker};
use tokio_util::sync::CancellationToken;

/// The bound stats server.
#[derive(Debug)]
pub struct AdminServer {
    listener: GuardedListener,
}

impl AdminServer {
    /// Binds the stats server with these caps and deadlines.
    ///
    /// # Errors
    ///
    /// The bind error.
    pub async fn bind(addr: SocketAddr, limits: ConnLimits) -> std::io::Result<Self> {
        let tracker = Tracker::with_hook("stats", limits, Some(crate::respond::count_conn_event));
        Ok(AdminServer {
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

    /// Serves until cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let started = tokio::time::Instant::now();
        let header_timeout = self.listener.tracker().limits().header_timeout;
        // The method check wraps the whole router: it answers before routing, so an unknown
        // path with another method is 405 too.
        let app = tower::Layer::layer(&axum::middleware::from_fn(only_get), router(started));
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
fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response {
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

/// The endpoints (`GET`, and `HEAD` from `GET`); anything else is 404.
fn router(started: tokio::time::Instant) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { reply(StatusCode::OK, "text/plain", "ok\n".into()) }),
        )
        .route(
            "/status",
            get(|| async {
                reply(
                    StatusCode::OK,
                    "application/json",
                    crate::control::status::json().to_string(),
                )
            }),
        )
        .route(
            "/metrics",
            get(|| async {
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    crate::metrics::get().encode(),
                )
            }),
        )
        .route(
            "/memstats",
            get(move || async move {
                reply(
                    StatusCode::OK,
                    "application/json",
                    memstats(started.elapsed().as_secs_f64()).to_string(),
                )
            }),
        )
        .fallback(|| async {
            reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found; try /health, /status, /metrics or /memstats\n".into(),
            )
        })
}

/// Process figures from `/proc/self` (Linux). Missing figures are `null`.
pub fn memstats(uptime_s: f64) -> serde_json::Value {
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
        "version": crate::VERSION,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memstats_reports_rss_and_threads() {
        let m = memstats(1.0);
        assert!(
            m["rss_bytes"].as_u64().is_some_and(|v| v > 1024 * 1024),
            "{m}"
        );
        assert!(m["threads"].as_u64().is_some_and(|v| v >= 1), "{m}");
        assert!(m["cpu_user_seconds"].as_f64().is_some(), "{m}");
    }
}
