//! The load engine's HTTP/1.1 client: one keep-alive connection per worker, on the same stack
//! as the HTTP prober ([`crate::probe::http`]): the system resolver ([`crate::probe::resolve`]),
//! `TcpStream` with `TCP_NODELAY`, tokio-rustls with [`crate::tls::client_config`] (ALPN
//! `http/1.1`, SNI = the target host) and hyper's `client::conn::http1`.
//!
//! Unlike the prober, which opens a fresh connection per sample to time every phase, a load
//! worker keeps its connection for request after request and only reconnects when the server
//! closed it or a request failed on it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HOST, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use meshlat_proto::record::Protocol;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::mix::RequestMix;
use super::stats::ErrorClass;
use crate::probe::http::USER_AGENT_VALUE;
use crate::target::Target;
use crate::tls::TlsClientOptions;

/// Where requests go and what they carry; shared by all workers.
pub struct Endpoint {
    /// Host name or address to resolve, and port.
    host: String,
    port: u16,
    /// `Some` for https.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The requests of the mix, each with its whole header map (below) ready to clone.
    prepared: Vec<Prepared>,
    /// Chooses among `prepared` (the same order).
    mix: RequestMix,
}

/// One request of the mix as sent: method, path, headers and body.
struct Prepared {
    method: http::Method,
    /// The mix request's path, or the target URL's.
    path: http::Uri,
    /// `Host`, `User-Agent`, the `--header`s, then the mix request's headers (each may replace
    /// an earlier one of the same name).
    headers: HeaderMap,
    body: Bytes,
    /// The status of a success (0: any 2xx).
    expect_status: u16,
}

/// Why an endpoint cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The target is not http:// or https://.
    #[error("load targets are http:// or https:// URLs, not {0}")]
    Scheme(String),
    /// The path or host does not make a valid request.
    #[error("target {target}: {reason}")]
    Request {
        /// The target.
        target: String,
        /// What is wrong.
        reason: String,
    },
    /// The TLS configuration (CA file) is unusable.
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// One open connection: hyper's request sender and the connection future that does its I/O.
///
/// The connection is driven in the worker's own task, alongside each request (as the prober
/// does), not in a task of its own: no wake-up crosses tasks per request, and dropping the
/// worker's future drops the connection with it, so a cancelled worker stops at once. Between
/// requests nothing polls it, which HTTP/1.1 does not need: a close by the server is seen when
/// the next request is made ([`Conn::ready`]).
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>>,
    /// The driver has finished (the connection is closed); never poll it again.
    driver_done: bool,
}

// === impl Endpoint ===

impl Endpoint {
    /// Prepares the requests of `mix` to `target` with extra `headers`.
    ///
    /// # Errors
    ///
    /// [`EndpointError`] for a non-HTTP target, an unusable path or host, or TLS options that
    /// cannot be loaded.
    pub fn new(
        target: &Target,
        tls: &TlsClientOptions,
        extra: &HeaderMap,
        mix: RequestMix,
    ) -> Result<Self, EndpointError> {
        let https = match target.protocol {
            Protocol::Http => false,
            Protocol::Https => true,
            other => return Err(EndpointError::Scheme(format!("{other}://"))),
        };
        let bad = |reason: String| EndpointError::Request {
            target: target.raw.clone(),
            reason,
        };
        let path: http::Uri = target
            .path
            .parse()
            .map_err(|e| bad(format!("bad path: {e}")))?;
        let host = target.host_header(https);
        let mut headers = HeaderMap::new();
        headers.insert(
            HOST,
            HeaderValue::from_str(&host).map_err(|e| bad(format!("bad host: {e}")))?,
        );
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        // A `--header` replaces Host or User-Agent; repeated names keep every value.
        for name in extra.keys() {
            headers.remove(name);
        }
        for (name, value) in extra {
            headers.append(name.clone(), value.clone());
        }
        let prepared = mix
            .requests()
            .iter()
            .map(|r| {
                let mut h = headers.clone();
                for name in r.headers.keys() {
                    h.remove(name);
                }
                for (name, value) in &r.headers {
                    h.append(name.clone(), value.clone());
                }
                Prepared {
                    method: r.method.clone(),
                    path: r.path.clone().unwrap_or_else(|| path.clone()),
                    headers: h,
                    body: r.body.clone(),
                    expect_status: r.expect_status,
                }
            })
            .collect();
        let tls = if https {
            crate::tls::install_crypto_provider();
            let cfg = crate::tls::client_config(tls, &[b"http/1.1"])?;
            let name = ServerName::try_from(target.host.clone())
                .map_err(|e| bad(format!("not a valid TLS server name: {e}")))?;
            Some((TlsConnector::from(Arc::new(cfg)), name))
        } else {
            None
        };
        Ok(Endpoint {
            host: target.host.clone(),
            port: target.port,
            tls,
            prepared,
            mix,
        })
    }

    /// The next request of the mix ([`RequestMix::pick`]) with, if given, a credential header
    /// (`Authorization` or a job's named header), which replaces one of the same name; and the
    /// status it expects (0: any 2xx).
    pub fn request(&self, auth: Option<&(HeaderName, HeaderValue)>) -> (Request<Full<Bytes>>, u16) {
        let i = self.mix.pick();
        let Some(p) = self.prepared.get(i).or_else(|| self.prepared.first()) else {
            // A mix has at least one request (RequestMix's invariant); an empty GET otherwise.
            return (Request::new(Full::new(Bytes::new())), 0);
        };
        let mut req = Request::new(Full::new(p.body.clone()));
        *req.method_mut() = p.method.clone();
        *req.uri_mut() = p.path.clone();
        *req.headers_mut() = p.headers.clone();
        if let Some((name, value)) = auth {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        (req, p.expect_status)
    }

    /// Opens a connection: resolve, TCP connect (addresses in order), TLS for https, HTTP/1.1
    /// handshake.
    ///
    /// # Errors
    ///
    /// [`ErrorClass::Connect`] when resolving or connecting fails, [`ErrorClass::Tls`] when the
    /// handshake does, [`ErrorClass::Io`] when the HTTP handshake does.
    pub async fn connect(&self) -> Result<Conn, (ErrorClass, String)> {
        let addrs = crate::probe::resolve(&self.host, self.port)
            .await
            .map_err(|(_, detail)| (ErrorClass::Connect, detail))?;
        let mut last = None;
        let mut stream = None;
        for addr in &addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(format!("connect {addr}: {e}")),
            }
        }
        let Some(stream) = stream else {
            return Err((
                ErrorClass::Connect,
                last.unwrap_or_else(|| "no addresses".into()),
            ));
        };
        // Requests are small writes; don't let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| (ErrorClass::Tls, format!("tls handshake: {e}")))?;
                Conn::handshake(tls).await
            }
            None => Conn::handshake(stream).await,
        }
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("https", &self.tls.is_some())
            .field("requests", &self.prepared.len())
            .finish_non_exhaustive()
    }
}

// === impl Conn ===

impl Conn {
    async fn handshake<S>(io: S) -> Result<Self, (ErrorClass, String)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| classify(&e))?;
        Ok(Conn {
            sender,
            driver: Box::pin(conn),
            driver_done: false,
        })
    }

    /// Whether the server or a failure has closed the connection (then reconnect before the
    /// next request; a closed connection is not a failed request).
    pub fn is_closed(&self) -> bool {
        self.driver_done || self.sender.is_closed()
    }

    /// Polls `fut` and the connection's driver together until `fut` is done. If the driver ends
    /// first (the connection closed or failed), `fut` fails shortly after; the driver's error,
    /// often the more precise one, is returned instead of `fut`'s then.
    async fn drive<T>(
        driver: &mut Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>>,
        driver_done: &mut bool,
        fut: impl Future<Output = Result<T, hyper::Error>>,
    ) -> Result<T, hyper::Error> {
        tokio::pin!(fut);
        let mut driver_error = None;
        let r = loop {
            // The driver first: the bytes it reads complete `fut` in the same poll, without a
            // wake-up and another trip through the scheduler.
            tokio::select! {
                biased;
                d = driver.as_mut(), if !*driver_done => {
                    *driver_done = true;
                    driver_error = d.err();
                }
                r = &mut fut => break r,
            }
        };
        match (r, driver_error) {
            (Err(_), Some(e)) => Err(e),
            (r, _) => r,
        }
    }

    /// Waits until the connection can take a request; `false` when it cannot any more (the
    /// server closed it after the last response, e.g. `Connection: close`) — reconnect then,
    /// nothing failed.
    pub async fn ready(&mut self) -> bool {
        let Conn {
            sender,
            driver,
            driver_done,
        } = self;
        Self::drive(driver, driver_done, sender.ready())
            .await
            .is_ok()
    }

    /// Sends `req` and reads the response to the end; its status. Call [`Conn::ready`] first.
    ///
    /// # Errors
    ///
    /// [`ErrorClass::Io`] (or [`ErrorClass::Tls`] for a TLS alert) when the connection fails
    /// before the response is complete; the connection is then unusable.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<u16, (ErrorClass, String)> {
        let Conn {
            sender,
            driver,
            driver_done,
        } = self;
        let exchange = async {
            let response = sender.send_request(req).await?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                frame?;
            }
            Ok(status)
        };
        Self::drive(driver, driver_done, exchange)
            .await
            .map_err(|e| classify(&e))
    }
}

/// A hyper error as an error class: TLS when a rustls error is in its chain, else I/O.
fn classify(e: &hyper::Error) -> (ErrorClass, String) {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(ioe) = c.downcast_ref::<io::Error>()
            && ioe
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return (ErrorClass::Tls, e.to_string());
        }
        cause = c.source();
    }
    (ErrorClass::Io, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_host_user_agent_headers_and_auth() {
        let t = Target::parse("http://example.com:8080/a?b=1").unwrap();
        let mut extra = HeaderMap::new();
        extra.append("x-test", HeaderValue::from_static("1"));
        extra.append("x-test", HeaderValue::from_static("2"));
        extra.insert(USER_AGENT, HeaderValue::from_static("mine"));
        let e = Endpoint::new(
            &t,
            &TlsClientOptions::default(),
            &extra,
            RequestMix::default(),
        )
        .unwrap();
        let auth = (
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Basic eDp5"),
        );
        let (r, expect) = e.request(Some(&auth));
        assert_eq!((r.method(), expect), (&http::Method::GET, 0));
        assert_eq!(r.uri(), "/a?b=1");
        assert_eq!(r.headers()[HOST], "example.com:8080");
        assert_eq!(r.headers()[USER_AGENT], "mine");
        assert_eq!(r.headers().get_all("x-test").iter().count(), 2);
        assert_eq!(r.headers()[http::header::AUTHORIZATION], "Basic eDp5");
        assert!(
            e.request(None)
                .0
                .headers()
                .get(http::header::AUTHORIZATION)
                .is_none()
        );
        let key = (
            HeaderName::from_static("x-api-key"),
            HeaderValue::from_static("s3cret"),
        );
        let (r, _) = e.request(Some(&key));
        assert_eq!(r.headers()["x-api-key"], "s3cret");
        assert!(r.headers().get(http::header::AUTHORIZATION).is_none());
        let udp = Target::parse("udp://127.0.0.1:9").unwrap();
        assert!(matches!(
            Endpoint::new(
                &udp,
                &TlsClientOptions::default(),
                &HeaderMap::new(),
                RequestMix::default()
            ),
            Err(EndpointError::Scheme(_))
        ));
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let t = Target::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let e = Endpoint::new(
            &t,
            &TlsClientOptions::default(),
            &HeaderMap::new(),
            RequestMix::default(),
        )
        .unwrap();
        let err = e.connect().await.err().unwrap();
        assert_eq!(err.0, ErrorClass::Connect, "{err:?}");
    }
}
