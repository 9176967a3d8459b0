//! TCP responder. (Being built: see the foundation issue.)

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

/// The TCP responder.
#[derive(Debug)]
pub struct TcpResponder {
    listener: tokio::net::TcpListener,
}

impl TcpResponder {
    /// Binds the responder.
    ///
    /// # Errors
    ///
    /// The bind error.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(TcpResponder {
            listener: tokio::net::TcpListener::bind(addr).await?,
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
        shutdown.cancelled().await;
    }
}
