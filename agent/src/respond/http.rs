//! HTTP/HTTPS responder. (Being built: see the foundation issue.)

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use crate::tls::Identity;

/// The HTTP or HTTPS responder.
#[derive(Debug)]
pub struct HttpResponder {
    listener: tokio::net::TcpListener,
}

impl HttpResponder {
    /// Binds the responder; `tls` makes it HTTPS.
    ///
    /// # Errors
    ///
    /// The bind error.
    pub async fn bind(addr: SocketAddr, tls: Option<&Identity>) -> std::io::Result<Self> {
        let _ = tls;
        Ok(HttpResponder {
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
