//! Accepting with caps ([`GuardedListener`]) and handshaking concurrently under a deadline
//! ([`incoming`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::io::Guarded;
use crate::limits::{Closed, ConnLimits, Refused, Slot, Tracker};

/// Pause after a failed `accept` (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A TCP listener that admits connections within its [`Tracker`]'s caps; those over a cap are
/// closed as soon as they are accepted (never left in the backlog).
#[derive(Debug)]
pub struct GuardedListener {
    listener: TcpListener,
    tracker: Arc<Tracker>,
}

impl GuardedListener {
    /// Guards `listener` (named `name` in logs) with `limits`.
    pub fn new(listener: TcpListener, name: &'static str, limits: ConnLimits) -> Self {
        Self::with_tracker(listener, Tracker::new(name, limits))
    }

    /// Guards `listener` with `tracker` (e.g. one made [`Tracker::with_hook`]).
    pub fn with_tracker(listener: TcpListener, tracker: Arc<Tracker>) -> Self {
        GuardedListener { listener, tracker }
    }

    /// The bound address.
    ///
    /// # Errors
    ///
    /// The socket's error.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The tracker (counters).
    pub fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }

    /// The next admitted connection. Refused ones are closed here; accept errors (`EMFILE`)
    /// are logged and retried after a short pause. Cancel-safe.
    pub async fn accept(&self) -> (TcpStream, SocketAddr, Slot) {
        self.accept_or_refuse(|_, _| {}).await
    }

    /// [`Self::accept`], telling `refused` of every connection closed over a cap (its peer
    /// and which cap), e.g. to count it per source.
    pub async fn accept_or_refuse(
        &self,
        mut refused: impl FnMut(SocketAddr, Refused),
    ) -> (TcpStream, SocketAddr, Slot) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => match self.tracker.admit(peer) {
                    Ok(slot) => {
                        let _ = stream.set_nodelay(true);
                        return (stream, peer, slot);
                    }
                    // Closed at once: dropping the stream. A linger of 0 would send RST;
                    // a plain close is enough and kinder to honest clients over the cap.
                    Err(r) => {
                        drop(stream);
                        refused(peer, r);
                    }
                },
                Err(error) => {
                    tracing::warn!(message = "Accept failed.", listener = self.tracker.name(), %error);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

/// Accepts from `listener` until `shutdown`, runs `handshake` (TLS, or `std::future::ready`
/// for plain text) on each admitted connection concurrently within the handshake timeout, and
/// yields the established streams wrapped in [`Guarded`] (with the HTTP/2 first-request
/// deadline when `h2` is set). Feed the stream to `tonic`'s `serve_with_incoming_shutdown` or
/// to an HTTP/1.1 accept loop.
pub fn incoming<IO, H, F>(
    listener: GuardedListener,
    handshake: H,
    h2: bool,
    shutdown: CancellationToken,
) -> ReceiverStream<io::Result<Guarded<IO>>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(TcpStream) -> F + Send + Sync + 'static,
    F: Future<Output = io::Result<IO>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let handshake = Arc::new(handshake);
    tokio::spawn(async move {
        loop {
            let (stream, peer, slot) = tokio::select! {
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
                c = listener.accept() => c,
            };
            let tx = tx.clone();
            let handshake = handshake.clone();
            let limit = listener.tracker.limits().handshake_timeout;
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let done = tokio::select! {
                    () = stop.cancelled() => return,
                    r = tokio::time::timeout(limit, handshake(stream)) => r,
                };
                match done {
                    Ok(Ok(io)) => {
                        let mut g = Guarded::new(io, peer, slot);
                        if h2 {
                            g = g.with_h2_header_deadline();
                        }
                        let _ = tx.send(Ok(g)).await;
                    }
                    Ok(Err(_)) | Err(_) => slot.tracker().closed(Closed::Handshake, peer),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits() -> ConnLimits {
        ConnLimits {
            max_conns: 4,
            max_conns_per_ip: 2,
            handshake_timeout: Duration::from_secs(1),
            header_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(5),
        }
    }

    /// A `Guarded` server end over a duplex pipe (no sockets: paused time applies).
    fn pair(
        h2: bool,
    ) -> (
        Guarded<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Arc<Tracker>,
    ) {
        let t = Tracker::new("test", limits());
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let slot = t.admit(peer).expect("admitted");
        let (server, client) = tokio::io::duplex(1024);
        let mut g = Guarded::new(server, peer, slot);
        if h2 {
            g = g.with_h2_header_deadline();
        }
        (g, client, t)
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_fails_after_the_idle_timeout_and_traffic_postpones_it() {
        let (mut g, mut c, t) = pair(false);
        let start = tokio::time::Instant::now();
        let mut buf = [0u8; 16];
        // Traffic every 4 s (< 5 s idle) keeps it open.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(4)).await;
            c.write_all(b"x").await.expect("write");
            assert_eq!(g.read(&mut buf).await.expect("read"), 1);
        }
        let e = g.read(&mut buf).await.expect_err("idle");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(12 + 5));
        assert_eq!(t.stats().idle_timeouts, 1);
        drop(g);
        assert_eq!(t.stats().open, 0, "the slot is freed with the stream");
    }

    #[tokio::test(start_paused = true)]
    async fn h2_first_request_head_must_arrive_within_the_header_timeout() {
        // A byte a second keeps the idle deadline away but not the header deadline.
        let (mut g, mut c, t) = pair(true);
        let start = tokio::time::Instant::now();
        let mut buf = [0u8; 64];
        let writer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if c.write_all(b"P").await.is_err() {
                    return;
                }
            }
        });
        let e = loop {
            if let Err(e) = g.read(&mut buf).await {
                break e;
            }
        };
        writer.abort();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(t.stats().header_timeouts, 1);

        // A complete first request head lifts the header deadline; then only idle applies.
        let (mut g, mut c, t) = pair(true);
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
        hello.extend_from_slice(&[0, 0, 1, 1, 5, 0, 0, 0, 1, 0x82]); // HEADERS, END_HEADERS
        c.write_all(&hello).await.expect("write");
        let mut n = 0;
        while n < hello.len() {
            n += g.read(&mut buf).await.expect("read");
        }
        let start = tokio::time::Instant::now();
        let e = g.read(&mut buf).await.expect_err("idle");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!((t.stats().header_timeouts, t.stats().idle_timeouts), (0, 1));
    }
}
