//! The stats server (`-s PORT`, like perftest's `-s`): the shared server of
//! [`meshlat_guard::stats`] (`GET /health`, `GET /memstats`, GET/HEAD only, guarded accept loop)
//! with the agent's own routes:
//!
//! - `GET /status` — the controller session as JSON (`agent run`): `controlled`, `connected`,
//!   `agent_id`, and `refused` — the controller's last refusal (`code`, `reason`, `unix_ms`),
//!   e.g. an advertised address outside its `--agent-cidr`; `null` once welcomed again
//!   ([`crate::control::status`]).
//! - `GET /metrics` — Prometheus text exposition of [`crate::metrics`].
//!
//! It binds `--stats-listen` (default: the command's `--listen` address), and holds to the same
//! caps and deadlines as the responders (`--max-conns`, `--max-conns-per-ip`,
//! `--header-timeout`, `--idle-timeout`; [`meshlat_guard`]): over-cap connections are closed at
//! accept, request heads must arrive in time, idle connections are closed. Refusals and
//! closes count in `meshlat_responder_requests_total{protocol="stats"}`.

use std::net::SocketAddr;

use axum::routing::{MethodRouter, get};
use http::StatusCode;
use meshlat_guard::stats::{PROMETHEUS_TEXT, StatsServer, reply};
use meshlat_guard::{ConnLimits, Tracker};
use tokio_util::sync::CancellationToken;

/// The bound stats server.
#[derive(Debug)]
pub struct AdminServer {
    server: StatsServer,
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
            server: StatsServer::bind(addr, tracker).await?,
        })
    }

    /// Bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        self.server.run(routes(), crate::VERSION, shutdown).await;
    }
}

/// The agent's own endpoints (`GET`, and `HEAD` from `GET`).
fn routes() -> Vec<(&'static str, MethodRouter)> {
    vec![
        (
            "/status",
            get(|| async {
                reply(
                    StatusCode::OK,
                    "application/json",
                    crate::control::status::json().to_string(),
                )
            }),
        ),
        (
            "/metrics",
            get(|| async {
                reply(
                    StatusCode::OK,
                    PROMETHEUS_TEXT,
                    crate::metrics::get().encode(),
                )
            }),
        ),
    ]
}
