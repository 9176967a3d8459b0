//! UDP reflector. (Being built: see the foundation issue.)

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use crate::probe::Key;

/// The UDP reflector.
#[derive(Debug)]
pub struct UdpReflector {
    socket: tokio::net::UdpSocket,
    keys: Vec<Key>,
}

impl UdpReflector {
    /// Binds the reflector.
    ///
    /// # Errors
    ///
    /// The bind error.
    pub async fn bind(addr: SocketAddr, keys: Vec<Key>) -> std::io::Result<Self> {
        Ok(UdpReflector {
            socket: tokio::net::UdpSocket::bind(addr).await?,
            keys,
        })
    }

    /// Bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let _ = &self.keys;
        shutdown.cancelled().await;
    }
}
