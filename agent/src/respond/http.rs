//! HTTP and HTTPS responder: a small hyper 1 server (HTTP/1.1) for `http(s)://` probes.
//!
//! # Endpoints
//!
//! | method | path | answer |
//! | --- | --- | --- |
//! | `GET`, `HEAD` | `/ping` | `200`, body `pong\n` |
//! | `GET`, `HEAD` | `/bytes/N` | `200`, `N` bytes (zeros, streamed); `N` at most [`MAX_BYTES`], else `400` |
//! | `GET`, `HEAD` | `/health` | `200`, body `ok\n` |
//! | other methods | any of the above | `405` with `Allow: GET, HEAD` |
//! | any | anything else | `404` |
//!
//! HTTPS (when bound with an [`Identity`]) is tokio-rustls with ALPN `http/1.1`.
//!
//! # Limits
//!
//! Connections are admitted within the total and per-address caps (`--max-conns`,
//! `--max-conns-per-ip`; over-cap connections are closed as soon as they are accepted, never
//! left waiting); the TLS handshake must finish within `--handshake-timeout`, every request head
//! (the first, and each on a kept-alive connection) within `--header-timeout`, and a connection
//! with no traffic either way for `--idle-timeout` is closed ([`meshlat_guard`];
//! [`super::DEFAULT_LIMITS`]). A bad request or a failed handshake closes that connection only
//! and is counted in `meshlat_responder_requests_total` with `result="bad_request"`, `"tls"`,
//! `"timeout"` or `"io"`; refusals and deadline closes as `"refused_total_cap"`,
//! `"refused_per_ip_cap"` and `"idle_timeout"`; answered requests count as
//! `result="answered"`, with `protocol="http"` or `"https"`.
//!
//! With server records on, each source address's requests are counted in `kind=serve` rows
//! with `protocol="http"` or `"https"` ([`super::tally`]): `packets` = requests answered (any
//! status), `bytes` = their response body bytes; drops `refused_total_cap`,
//! `refused_per_ip_cap`, `handshake_failed`, `handshake_timeout` (HTTPS), `bad_request`,
//! `timeout` (request head) and `io` (including idle closes).
//!
//! On shutdown the responder stops accepting, lets in-flight requests finish for up to
//! [`SHUTDOWN_GRACE`] (idle keep-alive connections close at once), then drops the rest.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use meshlat_guard::{ConnLimits, Guarded, GuardedListener, Refused, Slot, Tracker};
use meshlat_proto::record::Protocol;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::tally::{ConnDrop, ConnTally, Source, conn_source};
use crate::metrics::{responder_drop, responder_event};
use crate::tls::Identity;

/// Largest `/bytes/N` body served (10 MiB).
pub const MAX_BYTES: u64 = 10 * 1024 * 1024;
/// How long in-flight requests may continue after shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Chunk size of streamed `/bytes/N` bodies.
const CHUNK: usize = 64 * 1024;
/// The bytes `/bytes/N` serves from; shared, never copied.
static ZEROS: [u8; CHUNK] = [0; CHUNK];

/// The HTTP or HTTPS responder.
pub struct HttpResponder {
    /// Admits connections within the caps (closing the others at once).
    listener: GuardedListener,
    /// `Some` for HTTPS.
    tls: Option<TlsAcceptor>,
    /// `http` or `https`: the metrics label.
    protocol: &'static str,
    /// Server records' counts (see [`super::tally`]), when on.
    tally: Option<Arc<ConnTally>>,
}

impl std::fmt::Debug for HttpResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpResponder")
            .field("listener", &self.listener)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl HttpResponder {
    /// Binds the responder with [`super::DEFAULT_LIMITS`]; `tls` makes it HTTPS.
    ///
    /// # Errors
    ///
    /// As [`HttpResponder::bind_with`].
    pub async fn bind(addr: SocketAddr, tls: Option<&Identity>) -> std::io::Result<Self> {
        Self::bind_with(addr, tls, super::DEFAULT_LIMITS).await
    }

    /// Binds the responder with these caps and deadlines; `tls` makes it HTTPS with that
    /// identity.
    ///
    /// # Errors
    ///
    /// The bind error, or `InvalidInput` when the identity's key does not fit its certificate.
    pub async fn bind_with(
        addr: SocketAddr,
        tls: Option<&Identity>,
        limits: ConnLimits,
    ) -> std::io::Result<Self> {
        let tls = match tls {
            Some(identity) => {
                let cfg = identity
                    .server_config(&[b"http/1.1"])
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                Some(TlsAcceptor::from(Arc::new(cfg)))
            }
            None => None,
        };
        let protocol = if tls.is_some() { "https" } else { "http" };
        let tracker = Tracker::with_hook(protocol, limits, Some(super::count_conn_event));
        Ok(HttpResponder {
            listener: GuardedListener::with_tracker(TcpListener::bind(addr).await?, tracker),
            tls,
            protocol,
            tally: None,
        })
    }

    /// Counts requests and drops per source in `tally` (server records).
    pub fn with_records(mut self, tally: Arc<ConnTally>) -> Self {
        self.tally = Some(tally);
        self
    }

    fn record_protocol(&self) -> Protocol {
        if self.tls.is_some() {
            Protocol::Https
        } else {
            Protocol::Http
        }
    }

    /// The next admitted connection. Over-cap ones are closed by the [`GuardedListener`] and
    /// counted per source here; accept errors are logged and retried there. Cancel-safe.
    async fn accept(&self) -> (TcpStream, SocketAddr, Slot) {
        self.listener
            .accept_or_refuse(|peer, refused| {
                if let Some(t) = &self.tally {
                    let reason = match refused {
                        Refused::Total { .. } => ConnDrop::RefusedTotalCap,
                        Refused::PerIp { .. } => ConnDrop::RefusedPerIpCap,
                    };
                    t.dropped(conn_source(self.record_protocol(), peer), reason);
                }
            })
            .await
    }

    /// Bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The connection counters.
    pub fn conn_stats(&self) -> meshlat_guard::ConnStats {
        self.listener.tracker().stats()
    }

    /// Serves until `shutdown` is cancelled, then drains (see the module doc).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut conns = JoinSet::new();
        loop {
            // Reap finished connection tasks so the set does not grow.
            while conns.try_join_next().is_some() {}
            let (stream, peer, slot) = tokio::select! {
                () = shutdown.cancelled() => break,
                c = self.accept() => c,
            };
            let conn = Conn {
                peer,
                protocol: self.protocol,
                tally: self.tally.clone(),
                src: conn_source(self.record_protocol(), peer),
            };
            let tls = self.tls.clone();
            let token = shutdown.clone();
            conns.spawn(async move {
                serve_connection(stream, conn, slot, tls, token).await;
            });
        }
        drop(self.listener);
        let drain = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            conns.abort_all();
            while conns.join_next().await.is_some() {}
        }
    }
}

/// One connection: who it is from and where its events are counted.
#[derive(Clone, Debug)]
struct Conn {
    peer: SocketAddr,
    /// The metrics label.
    protocol: &'static str,
    tally: Option<Arc<ConnTally>>,
    /// Its server records' row.
    src: Source,
}

impl Conn {
    /// Counts a connection or request ended early: in the metrics as `label`, in the server
    /// records as `reason`.
    fn count_drop(&self, label: &'static str, reason: ConnDrop) {
        responder_drop(self.protocol, label, self.peer);
        if let Some(t) = &self.tally {
            t.dropped(self.src, reason);
        }
    }
}

/// Handshakes (HTTPS) and serves one connection; every failure ends here, counted.
async fn serve_connection(
    stream: TcpStream,
    conn: Conn,
    slot: Slot,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let limits = *slot.tracker().limits();
    let peer = conn.peer;
    match tls {
        None => {
            let io = Guarded::new(stream, peer, slot);
            serve_http(io, conn, limits.header_timeout, shutdown).await;
        }
        Some(acceptor) => {
            let handshake = tokio::select! {
                () = shutdown.cancelled() => return,
                r = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)) => r,
            };
            match handshake {
                Ok(Ok(tls_stream)) => {
                    let io = Guarded::new(tls_stream, peer, slot);
                    serve_http(io, conn, limits.header_timeout, shutdown).await;
                }
                Ok(Err(_)) => conn.count_drop("tls", ConnDrop::HandshakeFailed),
                Err(_) => conn.count_drop("tls", ConnDrop::HandshakeTimeout),
            }
        }
    }
}

/// Serves HTTP/1.1 on an established (TLS) stream until the client leaves or shutdown.
async fn serve_http<S>(io: S, conn: Conn, header_timeout: Duration, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let protocol = conn.protocol;
    let (tally, src) = (conn.tally.clone(), conn.src);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let tally = tally.clone();
        async move {
            let resp = respond(req.method(), req.uri().path());
            responder_event(protocol, "answered");
            if let Some(t) = &tally {
                let body = usize::try_from(resp.body().len()).unwrap_or(usize::MAX);
                t.served(src, body);
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(http);
    let result = tokio::select! {
        r = http.as_mut() => r,
        () = shutdown.cancelled() => {
            // Finish the request in flight (if any), then close; run() bounds the wait.
            http.as_mut().graceful_shutdown();
            http.await
        }
    };
    if let Err(e) = result {
        let (label, reason) = if e.is_parse() || e.is_parse_too_large() {
            ("bad_request", ConnDrop::BadRequest)
        } else if e.is_timeout() {
            ("timeout", ConnDrop::Timeout)
        } else {
            ("io", ConnDrop::Io)
        };
        conn.count_drop(label, reason);
    }
}

/// The endpoint table of the module doc.
fn respond(method: &Method, path: &str) -> Response<ResponseBody> {
    let known = path == "/ping" || path == "/health" || path.starts_with("/bytes/");
    if !known {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/ping" => text(StatusCode::OK, "pong\n"),
        "/health" => text(StatusCode::OK, "ok\n"),
        _ => {
            let n = path.trim_start_matches("/bytes/");
            match n.parse::<u64>() {
                Ok(n) if n <= MAX_BYTES => {
                    let mut r = Response::new(ResponseBody::zeros(n));
                    r.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(n));
                    r
                }
                Ok(n) => text(
                    StatusCode::BAD_REQUEST,
                    format!("/bytes/{n}: at most {MAX_BYTES} bytes\n"),
                ),
                Err(_) => text(
                    StatusCode::BAD_REQUEST,
                    format!("/bytes/{n}: not a byte count\n"),
                ),
            }
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let body = body.into();
    let len = body.len();
    let mut r = Response::new(ResponseBody::bytes(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    r
}

// === ResponseBody ===

/// A response body: some bytes, then `remaining` zeros in [`CHUNK`]-sized frames, so a 10 MiB
/// answer costs no allocation.
#[derive(Debug)]
struct ResponseBody {
    head: Option<Bytes>,
    remaining: u64,
}

impl ResponseBody {
    fn bytes(b: Bytes) -> Self {
        ResponseBody {
            head: (!b.is_empty()).then_some(b),
            remaining: 0,
        }
    }

    fn zeros(n: u64) -> Self {
        ResponseBody {
            head: None,
            remaining: n,
        }
    }

    fn len(&self) -> u64 {
        self.head.as_ref().map_or(0, |b| b.len() as u64) + self.remaining
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(b) = this.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = this.remaining.min(CHUNK as u64) as usize;
        this.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZEROS[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.len() == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_over_the_per_ip_cap_is_closed_and_counted_for_its_source() {
        use tokio::io::AsyncReadExt;
        let limits = ConnLimits {
            max_conns_per_ip: 1,
            ..super::super::DEFAULT_LIMITS
        };
        let tally = ConnTally::new(8);
        let r = HttpResponder::bind_with("127.0.0.1:0".parse().expect("addr"), None, limits)
            .await
            .expect("bind")
            .with_records(tally.clone());
        let addr = r.local_addr();
        let stop = CancellationToken::new();
        let server = tokio::spawn(r.run(stop.clone()));
        let _held = tokio::net::TcpStream::connect(addr).await.expect("first");
        let mut over = tokio::net::TcpStream::connect(addr).await.expect("second");
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), over.read(&mut buf))
            .await
            .expect("closed within 5 s")
            .unwrap_or(0);
        assert_eq!(n, 0, "the over-cap connection is closed without an answer");
        let iv = tally.take(std::time::SystemTime::now()).expect("counted");
        let refused: u64 = iv
            .rows
            .iter()
            .map(|(_, c)| c.conn_dropped[ConnDrop::RefusedPerIpCap as usize].packets)
            .sum();
        assert_eq!(refused, 1, "{:#?}", iv.rows);
        stop.cancel();
        server.await.expect("server");
    }

    #[test]
    fn endpoint_table() {
        let status = |m: Method, p: &str| respond(&m, p).status();
        assert_eq!(status(Method::GET, "/ping"), StatusCode::OK);
        assert_eq!(status(Method::HEAD, "/ping"), StatusCode::OK);
        assert_eq!(status(Method::GET, "/health"), StatusCode::OK);
        assert_eq!(status(Method::GET, "/bytes/0"), StatusCode::OK);
        assert_eq!(status(Method::GET, "/bytes/10485760"), StatusCode::OK);
        assert_eq!(
            status(Method::GET, "/bytes/10485761"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status(Method::GET, "/bytes/-1"), StatusCode::BAD_REQUEST);
        assert_eq!(status(Method::GET, "/bytes/"), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(Method::POST, "/ping"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(status(Method::GET, "/"), StatusCode::NOT_FOUND);
        assert_eq!(status(Method::GET, "/pingx"), StatusCode::NOT_FOUND);
    }

    #[test]
    fn bytes_body_streams_exactly_n_bytes() {
        let mut body = ResponseBody::zeros(CHUNK as u64 * 2 + 5);
        assert_eq!(body.size_hint().exact(), Some(CHUNK as u64 * 2 + 5));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut total = 0;
        let mut frames = 0;
        while let Poll::Ready(Some(Ok(f))) = Pin::new(&mut body).poll_frame(&mut cx) {
            total += f.data_ref().map_or(0, Bytes::len);
            frames += 1;
        }
        assert_eq!((total, frames), (CHUNK * 2 + 5, 3));
        assert!(body.is_end_stream());
    }

    #[test]
    fn text_sets_content_length() {
        let r = respond(&Method::GET, "/ping");
        assert_eq!(r.headers()[CONTENT_LENGTH], "5");
        assert_eq!(r.body().size_hint().exact(), Some(5));
    }
}
