//! QUIC responder: a quinn server endpoint speaking meshlat's ALPN
//! ([`crate::probe::quic::ALPN`]) that echoes every datagram back, unchanged, on the connection it
//! came from.
//!
//! - The echo is the received bytes themselves, so a reply is never larger than its request.
//! - At most `--max-conns` connections are served at once and `--max-conns-per-ip` from one
//!   source address; further handshakes are refused at once (counted as `refused_total_cap` /
//!   `refused_per_ip_cap`). A handshake must finish within `--handshake-timeout`; idle
//!   connections close after `--idle-timeout` (quinn's idle timeout; [`super::DEFAULT_LIMITS`]).
//! - A failed handshake (bad ALPN, garbage, timeout) ends that connection only and is counted as
//!   `handshake_failed`; echoed datagrams are counted as `answered`; a reply quinn could not queue
//!   as `send_failed`.
//! - With server records on, the same events are counted per source address in `kind=serve`
//!   rows with `protocol=quic` ([`super::tally`]): `packets` = handshakes completed, `returned`
//!   = datagrams echoed, `bytes` = their bytes; drops `refused_total_cap`,
//!   `refused_per_ip_cap`, `handshake_failed`, `handshake_timeout` and `send_error`.
//! - On shutdown the endpoint closes every connection and waits up to [`SHUTDOWN_GRACE`] for the
//!   closes to be delivered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshlat_guard::{ConnLimits, Refused, Tracker};
use meshlat_proto::record::Protocol;
use quinn::crypto::rustls::QuicServerConfig;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::tally::{ConnDrop, ConnTally, conn_source};
use crate::metrics::{responder_drop, responder_event};
use crate::probe::quic::{ALPN, transport_config};
use crate::tls::Identity;

/// How long shutdown waits for connection closes to be delivered.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The QUIC responder.
#[derive(Debug)]
pub struct QuicResponder {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    /// Caps (counted per source address) and the handshake deadline.
    tracker: Arc<Tracker>,
    /// Server records' counts (see [`super::tally`]), when on.
    tally: Option<Arc<ConnTally>>,
}

impl QuicResponder {
    /// Binds with [`super::DEFAULT_LIMITS`].
    ///
    /// # Errors
    ///
    /// As [`QuicResponder::bind_with`].
    pub async fn bind(addr: SocketAddr, identity: &Identity) -> std::io::Result<Self> {
        Self::bind_with(addr, identity, super::DEFAULT_LIMITS).await
    }

    /// Binds a server endpoint on `addr` with `identity` as its certificate and these caps and
    /// deadlines.
    ///
    /// # Errors
    ///
    /// The bind error, or `InvalidInput` if the identity cannot make a TLS config.
    pub async fn bind_with(
        addr: SocketAddr,
        identity: &Identity,
        limits: ConnLimits,
    ) -> std::io::Result<Self> {
        crate::tls::install_crypto_provider();
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let tls = identity
            .server_config(&[ALPN])
            .map_err(|e| invalid(e.to_string()))?;
        let crypto = QuicServerConfig::try_from(tls).map_err(|e| invalid(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(transport_config(limits.idle_timeout)));
        let endpoint = quinn::Endpoint::server(server, addr)?;
        let addr = endpoint.local_addr()?;
        let tracker = Tracker::with_hook("quic", limits, None);
        Ok(QuicResponder {
            endpoint,
            addr,
            tracker,
            tally: None,
        })
    }

    /// Counts handshakes, echoes and drops per source in `tally` (server records).
    pub fn with_records(mut self, tally: Arc<ConnTally>) -> Self {
        self.tally = Some(tally);
        self
    }

    /// Bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let handshake_timeout = self.tracker.limits().handshake_timeout;
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                // Reap finished connection tasks so the set does not grow.
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let peer = incoming.remote_address();
                    let slot = match self.tracker.admit(peer) {
                        Ok(s) => s,
                        Err(refused) => {
                            let reason = match refused {
                                Refused::Total { .. } => ConnDrop::RefusedTotalCap,
                                Refused::PerIp { .. } => ConnDrop::RefusedPerIpCap,
                            };
                            responder_drop("quic", reason.as_str(), peer);
                            if let Some(t) = &self.tally {
                                t.dropped(conn_source(Protocol::Quic, peer), reason);
                            }
                            incoming.refuse();
                            continue;
                        }
                    };
                    let stop = shutdown.clone();
                    let tally = self.tally.clone();
                    conns.spawn(async move {
                        let _slot = slot;
                        serve(incoming, peer, handshake_timeout, tally, stop).await;
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
async fn serve(
    incoming: quinn::Incoming,
    peer: SocketAddr,
    handshake_timeout: Duration,
    tally: Option<Arc<ConnTally>>,
    shutdown: CancellationToken,
) {
    let src = conn_source(Protocol::Quic, peer);
    let conn = match tokio::time::timeout(handshake_timeout, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(message = "QUIC handshake failed.", %peer, error = %e);
            responder_drop("quic", "handshake_failed", peer);
            if let Some(t) = &tally {
                t.dropped(src, ConnDrop::HandshakeFailed);
            }
            return;
        }
        Err(_) => {
            tracing::debug!(message = "QUIC handshake timed out.", %peer);
            responder_drop("quic", "handshake_failed", peer);
            if let Some(t) = &tally {
                t.dropped(src, ConnDrop::HandshakeTimeout);
            }
            return;
        }
    };
    if let Some(t) = &tally {
        t.served(src, 0);
    }
    loop {
        let datagram = tokio::select! {
            () = shutdown.cancelled() => return,
            d = conn.read_datagram() => d,
        };
        match datagram {
            Ok(d) => {
                let len = d.len();
                match conn.send_datagram(d) {
                    Ok(()) => {
                        responder_event("quic", "answered");
                        if let Some(t) = &tally {
                            t.echoed(src, len);
                        }
                    }
                    Err(_) => {
                        responder_drop("quic", "send_failed", peer);
                        if let Some(t) = &tally {
                            t.send_failed(src, len);
                        }
                    }
                }
            }
            // Closed by the peer, idle timeout, or reset: nothing left to echo on.
            Err(_) => return,
        }
    }
}
