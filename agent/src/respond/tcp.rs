//! TCP responder: the target of `tcp://` connect-time probes.
//!
//! Accepts each connection and closes it at once; the probe measures the handshake, which the
//! kernel completes before `accept` returns. Each accepted connection counts as
//! `meshlat_responder_requests_total{protocol="tcp",result="answered"}`, and, with server
//! records on, in its source's `kind=serve` row (`protocol=tcp`, `packets` = connections
//! accepted, `bytes` = 0; see [`super::tally`]). Nothing is spawned per
//! connection, so at most one accepted socket is open at a time; accept errors (say, out of file
//! descriptors) are logged and retried after a short pause, never fatal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshlat_proto::record::Protocol;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::tally::{ConnTally, conn_source};
use crate::metrics::responder_event;

/// Pause after a failed `accept` before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The TCP responder.
#[derive(Debug)]
pub struct TcpResponder {
    listener: TcpListener,
    /// Server records' counts (see [`super::tally`]), when on.
    tally: Option<Arc<ConnTally>>,
}

impl TcpResponder {
    /// Binds the responder.
    ///
    /// # Errors
    ///
    /// The bind error.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(TcpResponder {
            listener: TcpListener::bind(addr).await?,
            tally: None,
        })
    }

    /// Counts every accepted connection per source in `tally` (server records).
    pub fn with_records(mut self, tally: Arc<ConnTally>) -> Self {
        self.tally = Some(tally);
        self
    }

    /// Bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Accepts and closes connections until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                r = self.listener.accept() => match r {
                    Ok((stream, peer)) => {
                        drop(stream);
                        responder_event("tcp", "answered");
                        if let Some(t) = &self.tally {
                            t.served(conn_source(Protocol::Tcp, peer), 0);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(message = "Accept failed.", protocol = "tcp", error = %e);
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        }
                    }
                },
            }
        }
    }
}
