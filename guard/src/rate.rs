//! Request rate limits: token buckets per source address and per credential, as a tower layer
//! over any `http` service (tonic services and HTTP routers alike).
//!
//! The source address comes from the request's extensions: [`PeerAddr`] (insert it in a hand
//! written accept loop) or, with the `tonic` feature, tonic's `TcpConnectInfo` /
//! `TlsConnectInfo`. The credential is the `authorization` header's value, held only as a
//! keyed hash; requests without one use the address bucket alone. A request must find a token
//! in both buckets; limits are checked before authentication, so a flood of bad credentials
//! costs no hashing.
//!
//! Memory is bounded: each table holds at most [`MAX_KEYS`] buckets; when full, buckets that
//! have refilled (idle keys) are dropped, and if none has, new keys are refused until some do.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;

/// Most buckets per table (per-address and per-credential).
pub const MAX_KEYS: usize = 65_536;

/// A request rate: `per_second` tokens refill a bucket of `burst`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quota {
    /// Sustained requests per second (> 0).
    pub per_second: f64,
    /// Requests allowed at once after a quiet spell (>= 1).
    pub burst: u32,
}

/// The peer address of a request, for services that do not get tonic's connection info.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Which bucket ran dry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The source address's.
    Address,
    /// The credential's.
    Credential,
    /// A table is full of active keys.
    Table,
}

/// A limited request: which bucket, and when a token will be there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    /// Which bucket.
    pub scope: Scope,
    /// Wait before retrying.
    pub retry_after: Duration,
}

impl Limited {
    /// Whole seconds to put in `Retry-After` (rounded up, at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        let ms = self.retry_after.as_millis() as u64;
        ms.div_ceil(1000).max(1)
    }

    /// A one-line explanation.
    pub fn message(&self) -> String {
        let what = match self.scope {
            Scope::Address => "requests from this address",
            Scope::Credential => "requests with this credential",
            Scope::Table => "distinct clients",
        };
        format!(
            "rate limit: too many {what}; retry after {} s",
            self.retry_after_secs()
        )
    }
}

/// The `Retry-After` wait of a refusal, sent along (e.g. as gRPC metadata `retry-after`).
pub type RetryAfter = Duration;

/// One token bucket (sans-IO: the time is an argument).
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(q: Quota, now: Instant) -> Self {
        Bucket {
            tokens: f64::from(q.burst),
            at: now,
        }
    }

    fn refill(&mut self, q: Quota, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * q.per_second).min(f64::from(q.burst));
        self.at = now;
    }

    /// Whether a token is there (without taking it), else the wait for one.
    fn check(&mut self, q: Quota, now: Instant) -> Result<(), Duration> {
        self.refill(q, now);
        if self.tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / q.per_second))
        }
    }

    fn is_full(&self, q: Quota, now: Instant) -> bool {
        let mut b = *self;
        b.refill(q, now);
        b.tokens >= f64::from(q.burst)
    }
}

/// Buckets for one kind of key.
#[derive(Debug)]
struct Table<K> {
    quota: Quota,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Copy> Table<K> {
    fn new(quota: Quota) -> Mutex<Self> {
        Mutex::new(Table {
            quota,
            buckets: HashMap::new(),
        })
    }

    fn check(&mut self, key: K, now: Instant) -> Result<(), (Scope, Duration)> {
        if !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_KEYS {
            let q = self.quota;
            self.buckets.retain(|_, b| !b.is_full(q, now));
            if self.buckets.len() >= MAX_KEYS {
                return Err((Scope::Table, Duration::from_secs(1)));
            }
        }
        let q = self.quota;
        self.buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(q, now))
            .check(q, now)
            .map_err(|w| (Scope::Address, w))
    }

    fn take(&mut self, key: K) {
        if let Some(b) = self.buckets.get_mut(&key) {
            b.tokens -= 1.0;
        }
    }
}

/// Token buckets per source address and per credential.
#[derive(Debug)]
pub struct RateLimiter {
    per_ip: Option<Mutex<Table<IpAddr>>>,
    per_credential: Option<Mutex<Table<u64>>>,
    hasher: RandomState,
}

impl RateLimiter {
    /// Limits with these quotas (`None`: that kind is not limited).
    pub fn new(per_ip: Option<Quota>, per_credential: Option<Quota>) -> Arc<Self> {
        Arc::new(RateLimiter {
            per_ip: per_ip.map(Table::new),
            per_credential: per_credential.map(Table::new),
            hasher: RandomState::new(),
        })
    }

    /// Takes a token for a request from `ip` with `credential`, or says how long to wait.
    /// A token is taken from neither bucket unless both have one.
    ///
    /// # Errors
    ///
    /// [`Limited`] when a bucket is empty.
    pub fn check(
        &self,
        ip: Option<IpAddr>,
        credential: Option<&[u8]>,
        now: Instant,
    ) -> Result<(), Limited> {
        let cred = credential.map(|c| self.hasher.hash_one(c));
        // Lock order: address table, then credential table, everywhere.
        let mut ips = self
            .per_ip
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()));
        let mut creds = self
            .per_credential
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()));
        if let (Some(t), Some(ip)) = (ips.as_mut(), ip) {
            t.check(ip, now)
                .map_err(|(scope, retry_after)| Limited { scope, retry_after })?;
        }
        if let (Some(t), Some(c)) = (creds.as_mut(), cred) {
            t.check(c, now).map_err(|(scope, retry_after)| Limited {
                scope: if scope == Scope::Address {
                    Scope::Credential
                } else {
                    scope
                },
                retry_after,
            })?;
        }
        if let (Some(t), Some(ip)) = (ips.as_mut(), ip) {
            t.take(ip);
        }
        if let (Some(t), Some(c)) = (creds.as_mut(), cred) {
            t.take(c);
        }
        Ok(())
    }
}

/// How a limited request is answered, and how the wrapped service's responses (with body
/// `Inner`) become the layer's responses.
pub trait Reject<Inner>: Clone + Send + Sync + 'static {
    /// Response body type of the layer.
    type Body;
    /// The answer to a limited request.
    fn reject(&self, limited: &Limited) -> Response<Self::Body>;
    /// A response of the wrapped service.
    fn pass(&self, response: Response<Inner>) -> Response<Self::Body>;
}

/// A tower layer limiting request rates ([`RateLimiter`]) and answering with `R`.
#[derive(Clone, Debug)]
pub struct RateLimitLayer<R> {
    limiter: Arc<RateLimiter>,
    reject: R,
}

impl<R> RateLimitLayer<R> {
    /// A layer over `limiter` answering limited requests with `reject`.
    pub fn new(limiter: Arc<RateLimiter>, reject: R) -> Self {
        RateLimitLayer { limiter, reject }
    }
}

impl<S, R: Clone> tower::Layer<S> for RateLimitLayer<R> {
    type Service = RateLimit<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
            reject: self.reject.clone(),
        }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Clone, Debug)]
pub struct RateLimit<S, R> {
    inner: S,
    limiter: Arc<RateLimiter>,
    reject: R,
}

/// The source address of a request, from [`PeerAddr`] or tonic's connection info.
fn peer_ip<B>(req: &Request<B>) -> Option<IpAddr> {
    if let Some(p) = req.extensions().get::<PeerAddr>() {
        return Some(p.0.ip());
    }
    #[cfg(feature = "tonic")]
    {
        use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
        let e = req.extensions();
        if let Some(a) = e
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
        {
            return Some(a.ip());
        }
        if let Some(a) = e
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.get_ref().remote_addr())
        {
            return Some(a.ip());
        }
    }
    None
}

impl<S, R, B, Inner> tower::Service<Request<B>> for RateLimit<S, R>
where
    S: tower::Service<Request<B>, Response = Response<Inner>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Reject<Inner>,
    R::Body: Send + 'static,
{
    type Response = Response<R::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ip = peer_ip(&req);
        let cred = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        match self.limiter.check(ip, cred, Instant::now()) {
            Ok(()) => {
                let fut = self.inner.call(req);
                let reject = self.reject.clone();
                Box::pin(async move { fut.await.map(|r| reject.pass(r)) })
            }
            Err(limited) => {
                tracing::debug!(message = "Request rate limited.", ip = ?ip, path = %req.uri().path(), scope = ?limited.scope);
                let resp = self.reject.reject(&limited);
                Box::pin(std::future::ready(Ok(resp)))
            }
        }
    }
}

#[cfg(feature = "tonic")]
impl<S: tonic::server::NamedService, R> tonic::server::NamedService for RateLimit<S, R> {
    const NAME: &'static str = S::NAME;
}

/// Answers limited gRPC calls with `RESOURCE_EXHAUSTED`, the wait in metadata `retry-after`
/// (whole seconds) and in the message.
#[cfg(feature = "tonic")]
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcReject;

#[cfg(feature = "tonic")]
impl<Inner> Reject<Inner> for GrpcReject
where
    Inner: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    Inner::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Body = tonic::body::Body;

    fn pass(&self, response: Response<Inner>) -> Response<Self::Body> {
        response.map(tonic::body::Body::new)
    }

    fn reject(&self, limited: &Limited) -> Response<Self::Body> {
        let mut s = tonic::Status::resource_exhausted(limited.message());
        s.metadata_mut().insert(
            "retry-after",
            tonic::metadata::MetadataValue::from(limited.retry_after_secs()),
        );
        s.into_http()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(per_second: f64, burst: u32) -> Quota {
        Quota { per_second, burst }
    }

    #[test]
    fn burst_then_refill_rate() {
        let l = RateLimiter::new(Some(q(2.0, 3)), None);
        let t0 = Instant::now();
        let ip = Some(IpAddr::from([10, 0, 0, 1]));
        for _ in 0..3 {
            l.check(ip, None, t0).expect("burst");
        }
        let e = l.check(ip, None, t0).expect_err("dry");
        assert_eq!(e.scope, Scope::Address);
        assert_eq!(e.retry_after, Duration::from_millis(500));
        assert_eq!(e.retry_after_secs(), 1);
        l.check(ip, None, t0 + Duration::from_millis(500))
            .expect("refilled one");
        assert!(l.check(ip, None, t0 + Duration::from_millis(500)).is_err());
        // Another address has its own bucket.
        l.check(Some(IpAddr::from([10, 0, 0, 2])), None, t0)
            .expect("other address");
    }

    #[test]
    fn credential_bucket_is_separate_and_both_must_have_a_token() {
        let l = RateLimiter::new(Some(q(1.0, 10)), Some(q(1.0, 2)));
        let t0 = Instant::now();
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        l.check(a, Some(b"Bearer k:s"), t0).expect("1");
        l.check(b, Some(b"Bearer k:s"), t0)
            .expect("2: other address, same credential");
        let e = l
            .check(a, Some(b"Bearer k:s"), t0)
            .expect_err("credential dry");
        assert_eq!(e.scope, Scope::Credential);
        // The refused request took no token from the address bucket: 9 left for a.
        for i in 0..9 {
            l.check(a, None, t0)
                .unwrap_or_else(|e| panic!("token {i}: {e:?}"));
        }
        assert_eq!(
            l.check(a, None, t0).expect_err("address dry").scope,
            Scope::Address
        );
    }

    #[test]
    fn tables_are_bounded_and_drop_idle_keys() {
        let l = RateLimiter::new(Some(q(1.0, 1)), None);
        let t0 = Instant::now();
        let ip = |i: u32| Some(IpAddr::from(i.to_be_bytes()));
        for i in 0..MAX_KEYS as u32 {
            l.check(ip(i), None, t0).expect("fill");
        }
        let e = l
            .check(ip(u32::MAX), None, t0)
            .expect_err("full of active keys");
        assert_eq!(e.scope, Scope::Table);
        // After a second every bucket refilled: idle keys are dropped, the new key gets in.
        l.check(ip(u32::MAX), None, t0 + Duration::from_secs(1))
            .expect("idle keys dropped");
        let n = l
            .per_ip
            .as_ref()
            .map(|t| t.lock().map(|t| t.buckets.len()).unwrap_or(0));
        assert_eq!(n, Some(1));
    }
}
