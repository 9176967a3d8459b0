//! QUIC responder: a quinn server endpoint speaking meshlat's ALPN
//! ([`crate::probe::quic::ALPN`]) that echoes every datagram back, unchanged, on the connection it
//! came from.
//!
//! - The echo is the received bytes themselves, so a reply is never larger than its request.
//! - At most [`MAX_CONNECTIONS`] connections are served at once; further handshakes are refused
//!   (counted as `refused_busy`). Idle connections close after [`IDLE_TIMEOUT`].
//! - A failed handshake (bad ALPN, garbage, timeout) ends that connection only and is counted as
//!   `handshake_failed`; echoed datagrams are counted as `answered`; a reply quinn could not queue
//!   as `send_failed`.
//! - On shutdown the endpoint closes every connection and waits up to [`SHUTDOWN_GRACE`] for the
//!   closes to be delivered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::{responder_drop, responder_event};
use crate::probe::quic::{ALPN, transport_config};
use crate::tls::Identity;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// A connection with no traffic for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for connection closes to be delivered.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The QUIC responder.
#[derive(Debug)]
pub struct QuicResponder {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
}

impl QuicResponder {
    /// Binds a server endpoint on `addr` with `identity` as its certificate.
    ///
    /// # Errors
    ///
    /// The bind error, or `InvalidInput` if the identity cannot make a TLS config.
    pub async fn bind(addr: SocketAddr, identity: &Identity) -> std::io::Result<Self> {
        crate::tls::install_crypto_provider();
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let tls = identity
            .server_config(&[ALPN])
            .map_err(|e| invalid(e.to_string()))?;
        let crypto = QuicServerConfig::try_from(tls).map_err(|e| invalid(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(transport_config(IDLE_TIMEOUT)));
        let endpoint = quinn::Endpoint::server(server, addr)?;
        let addr = endpoint.local_addr()?;
        Ok(QuicResponder { endpoint, addr })
    }

    /// Bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                // Reap finished connection tasks so the set does not grow.
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let peer = incoming.remote_address();
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        responder_drop("quic", "refused_busy", peer);
                        incoming.refuse();
                        continue;
                    };
                    let stop = shutdown.clone();
                    conns.spawn(async move {
                        let _permit = permit;
                        serve(incoming, peer, stop).await;
                    });
                }
            }
        }
        self.endpoint.close(0u32.into(), b"shutdown");
        conns.abort_all();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.endpoint.wait_idle()).await;
    }
}

/// Completes one handshake and echoes datagrams until the connection ends.
async fn serve(incoming: quinn::Incoming, peer: SocketAddr, shutdown: CancellationToken) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(message = "QUIC handshake failed.", %peer, error = %e);
            responder_drop("quic", "handshake_failed", peer);
            return;
        }
    };
    loop {
        let datagram = tokio::select! {
            () = shutdown.cancelled() => return,
            d = conn.read_datagram() => d,
        };
        match datagram {
            Ok(d) => match conn.send_datagram(d) {
                Ok(()) => responder_event("quic", "answered"),
                Err(_) => responder_drop("quic", "send_failed", peer),
            },
            // Closed by the peer, idle timeout, or reset: nothing left to echo on.
            Err(_) => return,
        }
    }
}
