//! HTTP and HTTPS prober: perftest's phase timings (DESIGN §4, §5) with hyper 1.
//!
//! hyper has no `httptrace`, so the driver runs each phase itself and stamps its end with
//! [`Clock::now_ns`]; [`timings`] turns the stamps into perftest's columns. One sample:
//!
//! 1. **resolve** `host` with the system resolver ([`super::resolve`]) — a fresh resolution and
//!    a fresh connection every sample, as perftest does;
//! 2. **connect**: `TcpStream::connect` to the resolved addresses in order, then the kernel's
//!    handshake RTT from `TCP_INFO` (`tcp_ms` when there is one: see [`timings`] and
//!    [`super::tcp::handshake`]);
//! 3. **TLS** (https): tokio-rustls with [`crate::tls::client_config`], ALPN `http/1.1`, SNI =
//!    the target host;
//! 4. **request**: `GET path` over a hyper HTTP/1.1 client connection, with `Host` and
//!    `User-Agent: meshlat/<version>`;
//! 5. **response head** and **body** to the end (counted, discarded).
//!
//! The request-written, first-byte and last-byte marks come from `TimedIo`, a thin wrapper
//! around the (TLS) stream under hyper: "request written" is the flush that completes the
//! request, "first byte" is the first read that returns response data — not the later moment
//! hyper finishes parsing the head — and "last byte" is the read that completes the body. With
//! TLS the wrapper sits above rustls, so handshake and session-ticket records are not mistaken
//! for response bytes.
//!
//! Redirects are not followed: a `3xx` is the sample's answer (status recorded, outcome ok), so
//! every timing belongs to one connection to the address that was resolved.
//!
//! Failures are outcomes (STYLE §4), with the marks of the phases completed so far: `dns`,
//! `refused`, `unreachable`, `reset`, `tls` (certificate or handshake, e.g. "certificate verify
//! failed: UnknownIssuer"), `http` (protocol errors, and status ≥ 400 — then with every timing,
//! `http_status` and `bytes` filled), and `timeout` (the whole sample is bounded by
//! [`ProbeSpec::timeout`]; the detail names the phase it was in).

pub mod timings;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::header::{HOST, HeaderValue, USER_AGENT};
use hyper_util::rt::TokioIo;
use meshlat_proto::record::{ErrorKind, Protocol};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsConnector;

pub use self::timings::{PhaseMarks, TimingError};
use super::{HttpData, Measurement, Outcome, ProbeSetupError, ProbeSpec, classify_io};
use crate::clock::Clock;
use crate::target::Target;

/// `User-Agent` of every probe request.
pub const USER_AGENT_VALUE: &str = concat!("meshlat/", env!("CARGO_PKG_VERSION"));

/// The HTTP/HTTPS prober.
pub struct HttpProbe {
    /// Bounds each sample.
    timeout: Duration,
    /// Built once from the spec's TLS options (CA file read at setup, not per sample).
    tls: TlsConnector,
}

impl HttpProbe {
    /// Builds the prober; loads the CA file of `spec.tls` if one is given.
    ///
    /// # Errors
    ///
    /// [`ProbeSetupError::Tls`] when the CA file is unusable, [`ProbeSetupError::Invalid`] for a
    /// zero timeout.
    pub fn new(spec: &ProbeSpec) -> Result<Self, ProbeSetupError> {
        if spec.timeout.is_zero() {
            return Err(ProbeSetupError::Invalid(
                "http probe timeout must be > 0".into(),
            ));
        }
        crate::tls::install_crypto_provider();
        let cfg = crate::tls::client_config(&spec.tls, &[b"http/1.1"])
            .map_err(|e| ProbeSetupError::Tls(e.to_string()))?;
        Ok(HttpProbe {
            timeout: spec.timeout,
            tls: TlsConnector::from(Arc::new(cfg)),
        })
    }

    /// One sample of `target` (`http://` or `https://`). Never fails: failures are in the
    /// outcome, with the phases completed before them.
    pub async fn run_once(&self, target: &Target) -> Measurement {
        let started = SystemTime::now();
        let mut p = Progress::new(Clock::now_ns());
        let result = tokio::time::timeout(self.timeout, self.sample(target, &mut p)).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(Failure::new(
                ErrorKind::Timeout,
                format!(
                    "timed out after {} ms during {}",
                    self.timeout.as_millis(),
                    p.phase_name()
                ),
            )),
        };
        p.into_measurement(started, result)
    }

    /// The phases, recording progress in `p` as they complete.
    async fn sample(&self, target: &Target, p: &mut Progress) -> Result<(), Failure> {
        let https = match target.protocol {
            Protocol::Http => false,
            Protocol::Https => true,
            other => {
                return Err(Failure::new(
                    ErrorKind::Local,
                    format!("http prober cannot probe {other} targets"),
                ));
            }
        };
        let request = build_request(target, https)?;

        p.phase = Phase::Dns;
        let addrs = super::resolve(&target.host, target.port)
            .await
            .map_err(|(kind, detail)| Failure::new(kind, detail))?;
        p.marks.dns_done = Some(Clock::now_ns());

        p.phase = Phase::Connect;
        p.marks.connect_start = Some(Clock::now_ns());
        let super::tcp::Connected {
            stream,
            addr,
            handshake_rtt_ns,
        } = match super::tcp::connect_any(&addrs).await {
            Ok(ok) => ok,
            Err((addr, e)) => {
                p.remote = Some(addr);
                return Err(Failure::new(
                    classify_io(&e),
                    format!("connect {addr}: {e}"),
                ));
            }
        };
        p.marks.connected = Some(Clock::now_ns());
        p.marks.handshake_rtt_ns = handshake_rtt_ns;
        p.remote = Some(addr);
        // The request is one small write; don't let Nagle hold any of it back.
        let _ = stream.set_nodelay(true);

        let io_marks = Arc::new(IoMarks::default());
        p.io = Some(Arc::clone(&io_marks));
        if https {
            p.phase = Phase::Tls;
            let name = ServerName::try_from(target.host.clone()).map_err(|e| {
                Failure::new(
                    ErrorKind::Local,
                    format!("{:?} is not a valid TLS server name: {e}", target.host),
                )
            })?;
            let tls = self.tls.connect(name, stream).await.map_err(tls_failure)?;
            p.marks.tls_done = Some(Clock::now_ns());
            p.tls_version = tls.get_ref().1.protocol_version().map(tls_version_name);
            exchange(TimedIo::new(tls, io_marks), request, p).await
        } else {
            exchange(TimedIo::new(stream, io_marks), request, p).await
        }
    }
}

impl std::fmt::Debug for HttpProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProbe")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Request → response head → body end on an established connection.
async fn exchange<S>(
    io: TimedIo<S>,
    request: Request<Empty<Bytes>>,
    p: &mut Progress,
) -> Result<(), Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    p.phase = Phase::Exchange;
    let io_marks = Arc::clone(&io.marks);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| hyper_failure(&e, None))?;
    let response = async {
        let response = sender.send_request(request).await?;
        p.status = Some(response.status().as_u16());
        p.http_version = Some(http_version_name(response.version()));
        p.phase = Phase::Body;
        p.bytes = Some(0);
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                p.bytes = Some(p.bytes.unwrap_or(0) + data.len() as u64);
            }
        }
        // The read that completed the body; an empty body ends with the head's read.
        p.marks.last_byte = Some(io_marks.last_read().unwrap_or_else(Clock::now_ns));
        Ok::<_, hyper::Error>(p.status)
    };
    // Drive the connection in this task alongside the exchange (no spawned task to outlive a
    // timed-out sample). If the connection fails first, the exchange fails too, shortly after;
    // keep the connection's error, which is often the more precise one.
    tokio::pin!(conn, response);
    let mut conn_done = false;
    let mut conn_error = None;
    let result = loop {
        tokio::select! {
            r = &mut response => break r,
            c = &mut conn, if !conn_done => {
                conn_done = true;
                conn_error = c.err();
            }
        }
    };
    match result {
        Ok(Some(status)) if status >= 400 => {
            Err(Failure::new(ErrorKind::Http, format!("status {status}")))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(hyper_failure(&e, conn_error.as_ref())),
    }
}

/// `GET path` with `Host` and `User-Agent`.
fn build_request(target: &Target, https: bool) -> Result<Request<Empty<Bytes>>, Failure> {
    let host = target.host_header(https);
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        Failure::new(
            ErrorKind::Local,
            format!("target {}: bad {what}: {e}", target.raw),
        )
    };
    let host = HeaderValue::from_str(&host).map_err(|e| bad("host", &e))?;
    Request::get(target.path.as_str())
        .header(HOST, host)
        .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
        .body(Empty::new())
        .map_err(|e| bad("path", &e))
}

// === Progress ===

/// Where a sample is, for the timeout detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before anything (validation).
    Setup,
    /// Resolving.
    Dns,
    /// TCP connecting.
    Connect,
    /// TLS handshake.
    Tls,
    /// Request sent or being sent, head not complete (refined with the I/O marks).
    Exchange,
    /// Reading the body.
    Body,
}

/// What a sample has done so far; survives a timeout (the sample future borrows it).
#[derive(Debug)]
struct Progress {
    phase: Phase,
    marks: PhaseMarks,
    /// The I/O wrapper's marks once a connection exists.
    io: Option<Arc<IoMarks>>,
    remote: Option<SocketAddr>,
    status: Option<u16>,
    bytes: Option<u64>,
    http_version: Option<String>,
    tls_version: Option<String>,
}

impl Progress {
    fn new(start: u64) -> Self {
        Progress {
            phase: Phase::Setup,
            marks: PhaseMarks {
                start,
                ..PhaseMarks::default()
            },
            io: None,
            remote: None,
            status: None,
            bytes: None,
            http_version: None,
            tls_version: None,
        }
    }

    /// The phase for error details, refined by what the wire saw.
    fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Setup => "setup",
            Phase::Dns => "dns",
            Phase::Connect => "connect",
            Phase::Tls => "tls handshake",
            Phase::Exchange => match &self.io {
                Some(io) if io.first_read().is_some() => "response head",
                Some(io) if io.request_written().is_some() => "first byte",
                _ => "request",
            },
            Phase::Body => "body",
        }
    }

    /// The marks including the I/O wrapper's.
    fn all_marks(&self) -> PhaseMarks {
        let mut m = self.marks;
        if let Some(io) = &self.io {
            m.request_written = io.request_written();
            // A server may answer before our request is fully written (an early error, say):
            // then the answer was there when we finished, i.e. a first-byte time of zero.
            m.first_byte = match (io.first_read(), m.request_written) {
                (Some(f), Some(w)) => Some(f.max(w)),
                (f, _) => f,
            };
            if let (Some(l), Some(f)) = (m.last_byte, m.first_byte) {
                m.last_byte = Some(l.max(f));
            }
        }
        m
    }

    fn into_measurement(self, started: SystemTime, result: Result<(), Failure>) -> Measurement {
        let mut outcome = match result {
            Ok(()) => Outcome::Ok,
            Err(f) => Outcome::failed(f.kind, f.detail),
        };
        let timings = match HttpData::from_marks(&self.all_marks()) {
            Ok(t) => t,
            Err(e) => {
                // Cannot happen with a monotonic clock; report it rather than panic.
                if outcome.is_ok() {
                    outcome = Outcome::failed(ErrorKind::Local, format!("internal: {e}"));
                }
                HttpData::default()
            }
        };
        let mut m = Measurement::new(started, outcome);
        m.data.remote_addr = self.remote;
        m.data.http = Some(HttpData {
            status: self.status,
            bytes: self.bytes,
            http_version: self.http_version,
            tls_version: self.tls_version,
            ..timings
        });
        m
    }
}

/// A classified failure.
#[derive(Debug)]
struct Failure {
    kind: ErrorKind,
    detail: String,
}

impl Failure {
    fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Failure {
            kind,
            detail: detail.into(),
        }
    }
}

/// A TLS handshake error from tokio-rustls (rustls errors arrive wrapped in `io::Error`).
fn tls_failure(e: io::Error) -> Failure {
    if let Some(re) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return Failure::new(ErrorKind::Tls, rustls_detail(re));
    }
    match e.kind() {
        io::ErrorKind::TimedOut => Failure::new(ErrorKind::Timeout, format!("tls handshake: {e}")),
        _ => Failure::new(ErrorKind::Tls, format!("handshake failed: {e}")),
    }
}

fn rustls_detail(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(ce) => format!("certificate verify failed: {ce}"),
        other => format!("handshake failed: {other}"),
    }
}

/// Classifies a hyper error, preferring the I/O cause anywhere in its chain (or in the
/// connection's error, when the request only saw "connection closed").
fn hyper_failure(e: &hyper::Error, conn_error: Option<&hyper::Error>) -> Failure {
    let detail = error_chain(e);
    for err in [Some(e), conn_error].into_iter().flatten() {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(c) = cause {
            if let Some(ioe) = c.downcast_ref::<io::Error>() {
                if let Some(re) = ioe
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                {
                    return Failure::new(ErrorKind::Tls, rustls_detail(re));
                }
                return Failure::new(classify_io(ioe), error_chain(err));
            }
            cause = c.source();
        }
    }
    if e.is_incomplete_message() {
        return Failure::new(ErrorKind::Reset, detail);
    }
    if e.is_timeout() {
        return Failure::new(ErrorKind::Timeout, detail);
    }
    if let Some(ce) = conn_error.filter(|_| e.is_canceled() || e.is_closed()) {
        return hyper_failure(ce, None);
    }
    Failure::new(ErrorKind::Http, detail)
}

/// `error: cause: cause…`, skipping causes whose text the previous level already includes.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

fn tls_version_name(v: rustls::ProtocolVersion) -> String {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        other => format!("{other:?}"),
    }
}

fn http_version_name(v: hyper::Version) -> String {
    match v {
        hyper::Version::HTTP_10 => "HTTP/1.0".into(),
        hyper::Version::HTTP_11 => "HTTP/1.1".into(),
        hyper::Version::HTTP_2 => "HTTP/2".into(),
        other => format!("{other:?}"),
    }
}

// === TimedIo ===

/// I/O timestamps shared between [`TimedIo`] (inside hyper) and the driver; 0 means "not yet"
/// (the process clock is in the Unix timebase, so a real mark is never 0).
#[derive(Debug, Default)]
struct IoMarks {
    /// Last successful write.
    last_write: AtomicU64,
    /// First successful flush after a write: the request is on the wire.
    request_written: AtomicU64,
    /// First read that returned data.
    first_read: AtomicU64,
    /// Latest read that returned data.
    last_read: AtomicU64,
}

impl IoMarks {
    fn get(a: &AtomicU64) -> Option<u64> {
        match a.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v),
        }
    }

    /// When the request was fully written: its flush, or failing that its last write.
    fn request_written(&self) -> Option<u64> {
        Self::get(&self.request_written).or_else(|| Self::get(&self.last_write))
    }

    fn first_read(&self) -> Option<u64> {
        Self::get(&self.first_read)
    }

    fn last_read(&self) -> Option<u64> {
        Self::get(&self.last_read)
    }
}

/// A stream that stamps writes, flushes and reads with the process clock, so first and last
/// byte are when the bytes were read off the connection, not when hyper got round to parsing.
#[derive(Debug)]
struct TimedIo<S> {
    inner: S,
    marks: Arc<IoMarks>,
}

impl<S> TimedIo<S> {
    fn new(inner: S, marks: Arc<IoMarks>) -> Self {
        TimedIo { inner, marks }
    }

    fn wrote(&self, n: usize) {
        if n > 0 {
            self.marks
                .last_write
                .store(Clock::now_ns(), Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = Clock::now_ns();
            let _ = this.marks.first_read.compare_exchange(
                0,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            this.marks.last_read.store(now, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.wrote(n);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.wrote(n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) && IoMarks::get(&this.marks.last_write).is_some() {
            let _ = this.marks.request_written.compare_exchange(
                0,
                Clock::now_ns(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(s: &str) -> Target {
        Target::parse(s).expect("valid target")
    }

    #[test]
    fn request_has_host_and_user_agent() {
        let r = build_request(&target("http://example.com/a?b=1"), false).expect("request");
        assert_eq!(r.uri(), "/a?b=1");
        assert_eq!(r.headers()[HOST], "example.com");
        assert!(
            r.headers()[USER_AGENT]
                .to_str()
                .is_ok_and(|ua| ua.starts_with("meshlat/"))
        );
        let r = build_request(&target("https://example.com:8443/"), true).expect("request");
        assert_eq!(r.headers()[HOST], "example.com:8443");
        let r = build_request(&target("http://[::1]:80/"), false).expect("request");
        assert_eq!(r.headers()[HOST], "[::1]");
    }

    #[test]
    fn early_answer_clamps_first_byte_to_request_written() {
        let mut p = Progress::new(100);
        p.marks.dns_done = Some(110);
        p.marks.connect_start = Some(120);
        p.marks.connected = Some(130);
        let io = Arc::new(IoMarks::default());
        io.last_write.store(140, Ordering::Relaxed);
        io.request_written.store(150, Ordering::Relaxed);
        io.first_read.store(145, Ordering::Relaxed);
        io.last_read.store(145, Ordering::Relaxed);
        p.io = Some(io);
        p.marks.last_byte = Some(145);
        let m = p.all_marks();
        assert_eq!(
            (m.request_written, m.first_byte, m.last_byte),
            (Some(150), Some(150), Some(150))
        );
        assert!(HttpData::from_marks(&m).is_ok());
    }

    #[test]
    fn timeout_phase_follows_the_wire() {
        let mut p = Progress::new(1);
        p.phase = Phase::Exchange;
        let io = Arc::new(IoMarks::default());
        p.io = Some(Arc::clone(&io));
        assert_eq!(p.phase_name(), "request");
        io.last_write.store(5, Ordering::Relaxed);
        assert_eq!(p.phase_name(), "first byte");
        io.first_read.store(6, Ordering::Relaxed);
        assert_eq!(p.phase_name(), "response head");
    }

    #[test]
    fn tls_errors_name_the_certificate_problem() {
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let f = tls_failure(e);
        assert_eq!(f.kind, ErrorKind::Tls);
        assert_eq!(f.detail, "certificate verify failed: UnknownIssuer");
    }

    #[test]
    fn run_once_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let probe = HttpProbe::new(&ProbeSpec::default()).expect("default spec");
        let t = target("http://127.0.0.1:1/");
        assert_send(&probe.run_once(&t));
    }
}
