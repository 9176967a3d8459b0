//! QUIC responder. (Being built: see the foundation issue.)

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use crate::tls::Identity;

/// The QUIC responder.
#[derive(Debug)]
pub struct QuicResponder {
    addr: SocketAddr,
}

impl QuicResponder {
    /// Binds the responder.
    ///
    /// # Errors
    ///
    /// The bind error.
    pub async fn bind(addr: SocketAddr, identity: &Identity) -> std::io::Result<Self> {
        let _ = identity;
        Ok(QuicResponder { addr })
    }

    /// Bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        shutdown.cancelled().await;
    }
}
