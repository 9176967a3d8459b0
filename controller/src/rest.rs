//! REST/JSON mirror of `OperatorService` (DESIGN §3), so `curl` works.
//!
//! # Endpoints
//!
//! Every request carries `Authorization: Bearer KEY:SECRET` (the operator credential), or the
//! web dashboard's session cookie from `POST /api/v1/session` ([`crate::auth::session`]; then
//! `POST`, `PUT` and `DELETE` also need its CSRF token in `X-CSRF-Token`, `403` otherwise).
//! `GET /` and `/ui/*` serve the dashboard's embedded files ([`crate::ui`]) without one.
//!
//! | method | path | body | answer |
//! | --- | --- | --- | --- |
//! | `POST` | `/api/v1/jobs` | job spec ([`crate::json`]) | `201` job |
//! | `GET` | `/api/v1/jobs[?include_stopped=true]` | | `200` `{"jobs": [...]}` |
//! | `GET` | `/api/v1/jobs/{id}` | | `200` job |
//! | `PUT` | `/api/v1/jobs/{id}` | job spec; optional `If-Match: <version>` | `200` job |
//! | `DELETE` | `/api/v1/jobs/{id}` | | `200` stopped job |
//! | `GET` | `/api/v1/agents` | | `200` `{"agents": [...]}` |
//! | `GET` | `/api/v1/matrix[?by=agent\|region][&protocol=udp][&src_region=R][&dst_region=R]` | | `200` matrix ([`crate::json::matrix_to_value`]) |
//! | `GET` | `/api/v1/stream[?by=...][&protocol=...][&src_region=...][&dst_region=...]` | | `200` `text/event-stream` |
//! | `GET` | `/api/v1/jobs/{id}/load` | | `200` a load job's live view ([`crate::loadlive::stats_to_value`]; `400` for another kind) |
//! | `GET` | `/api/v1/jobs/{id}/load/stream` | | `200` `text/event-stream` of it |
//! | `GET` | `/api/v1/session` | | `200` `{"operator", "csrf_token", "expires_unix"}` |
//! | `POST` | `/api/v1/session` | `{"credential": "NAME:SECRET"}` (`Content-Type: application/json`; no `Authorization`) | `201` session + `Set-Cookie` |
//! | `DELETE` | `/api/v1/session` | | `200` `{"signed_out": bool}`, cookie cleared |
//! | `GET` | `/api/v1/credentials` | | `200` `{"credentials": [{"name", "origin", "created_unix"}]}` |
//! | `POST` | `/api/v1/credentials` | `{"name": "NAME"}` | `201` `{"name", ..., "credential": "NAME:SECRET"}` (shown once) |
//! | `DELETE` | `/api/v1/credentials/{name}` | | `200` the revoked credential (its next call gets `401`) |
//! | `GET` | `/api/v1/tokens` | | `200` `{"tokens": [{"name", "created_unix", "expires_unix", "revoked_unix"}]}` |
//! | `POST` | `/api/v1/tokens` | `{"name": "NAME", "expires_in_s": SECONDS}` (expiry optional) | `201` `{"name", ..., "token": "mlt1...."}` (shown once) |
//! | `DELETE` | `/api/v1/tokens/{name}` | | `200` the revoked join token (it admits no new agent) |
//! | `GET` | `/api/v1/scenarios` | | `200` `{"dir", "scenarios": [...], "invalid": [{"file", "line", "column", "error"}]}` ([`crate::scenarios`]) |
//! | `GET` | `/api/v1/scenarios/{name}` | | `200` the scenario, requests with headers and body; `404` none, `409` its file is invalid |
//! | `GET` | `/api/v1/openapi.json` | | `200` this API as an OpenAPI 3 document ([`OPENAPI`]; no credential needed) |
//!
//! Every `POST`, `PUT` and `DELETE` is written to the audit log ([`crate::audit`]).
//!
//! `/api/v1/stream` sends server-sent events: `event: matrix` with the matrix as one JSON
//! `data:` line every [`WATCH_INTERVAL`], and a `: heartbeat` comment every
//! [`SSE_HEARTBEAT`] so proxies keep the connection open. `/api/v1/jobs/{id}/load/stream`
//! sends `event: load` with the job's live view every [`LOAD_WATCH_INTERVAL`] and, once the
//! job is done (stopped, or its duration ran out) or gone, a last `event: load`, then
//! `event: end` (`data: {"done":true}`), and ends.
//!
//! Errors are JSON, `{"error": {"code": "invalid_argument", "field": "spec.timeout_ms",
//! "message": "...", "limit": 1000}}` (`limit` only when a size, range or cap was crossed),
//! with `400` (bad input), `401` (credential), `403` (session cookie without its CSRF token), `404`, `405`, `409` (stopped job, credential
//! exists, last credential), `412` (version mismatch), `413` (body over [`MAX_BODY`]), `415` (a sign-in that is not JSON), `429`
//! (`resource_exhausted`: a cap of [`crate::limits`] such as `--max-jobs` is reached, or the rate
//! limit, then with `Retry-After: SECONDS`) or `500`.
//!
//! Served over HTTP/1.1 with the controller's TLS certificate (plain HTTP with `--plaintext`).
//!
//! # Layout
//!
//! [`Rest::router`] is an axum `Router`, one handler per operation. Before it, `gate` answers
//! the document, checks the credential, reads the body and normalizes the path (so
//! `/api/v1/jobs/` and `//api/v1/jobs` are `/api/v1/jobs`), and writes the audit log; before
//! that, the rate limit. [`Rest::serve`] runs the stack as a tower service in our own accept loop
//! (TLS, connection guards, hyper's header timeout), not `axum::serve`, which has no TLS.
//!
//! # Limits
//!
//! Connections are admitted within `--rest-max-conns` and `--rest-max-conns-per-ip` (over-cap
//! ones are closed at accept), must finish TLS within `--handshake-timeout`, send each request
//! head within `--header-timeout` (also the bound on idle keep-alive) and are closed after
//! `--idle-timeout` without traffic ([`meshlat_guard`]). Requests are rate limited per source
//! address and per credential before the credential is checked ([`RestReject`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use http::{HeaderMap, Method, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use meshlat_guard::{
    Guarded, GuardedListener, Limited as RateLimited, PeerAddr, RateLimitLayer, RateLimiter, Reject,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::audit;
use crate::auth::session::{self, Session, Sessions};
use crate::auth::{CredentialError, Credentials, OperatorInfo, bearer};
use crate::json;
use crate::live::WATCH_INTERVAL;
use crate::metrics::AuthFailure;
use crate::registry::{DomainError, RegionFilter, Registry};
use crate::scenarios::{self, LookupError, ScenarioStore};

/// Largest request body.
pub const MAX_BODY: usize = 1024 * 1024;
/// The OpenAPI 3 document of this API, served at `GET /api/v1/openapi.json` without a
/// credential. `controller/tests/openapi.rs` checks it against the routes of [`Rest::router`]
/// (both ways) and a live controller, and `scripts/test_api.sh` runs schemathesis from it.
pub const OPENAPI: &str = include_str!("openapi.json");
/// Where [`OPENAPI`] is served.
const OPENAPI_PATH: &str = "/api/v1/openapi.json";
/// Interval of heartbeat comments on `/api/v1/stream`.
pub const SSE_HEARTBEAT: Duration = Duration::from_secs(15);
/// How often `/api/v1/jobs/{id}/load/stream` sends the job's live view (agents report each
/// second).
pub const LOAD_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Shared state of the REST server.
#[derive(Clone, Debug)]
pub struct Rest {
    registry: Arc<Registry>,
    /// Matrices built in the last [`MATRIX_CACHE_TTL`], shared by every caller and stream.
    matrices: Arc<MatrixCache>,
    creds: Arc<Credentials>,
    /// The dashboard's browser sessions.
    sessions: Arc<Sessions>,
    /// Whether the listener has TLS (session cookies are then `Secure`).
    tls: bool,
    /// The load-job scenarios (`--scenarios`; `None`: none).
    scenarios: Option<Arc<ScenarioStore>>,
}

/// How long a built matrix is reused: every dashboard and stream watching the same view within it
/// shares one build (a 500-agent mesh's region view merges 250,000 pairs).
pub const MATRIX_CACHE_TTL: Duration = Duration::from_secs(1);
/// Most views kept in the matrix cache (expired ones, then the oldest, make room).
const MATRIX_CACHE_VIEWS: usize = 64;

/// A view of the matrix: `by`, protocol, regions.
type MatrixView = (String, String, RegionFilter);

/// Recently built matrices as JSON, by view.
#[derive(Debug, Default)]
struct MatrixCache(
    std::sync::Mutex<std::collections::HashMap<MatrixView, (tokio::time::Instant, Arc<str>)>>,
);

impl MatrixCache {
    /// The view's matrix as JSON: from the cache when built within [`MATRIX_CACHE_TTL`], else
    /// built now, off the runtime's workers, and kept.
    ///
    /// # Errors
    ///
    /// The registry's refusal (a bad `by` or protocol), or `None` if the build task panicked.
    async fn get(
        &self,
        registry: &Arc<Registry>,
        view: MatrixView,
    ) -> Result<Arc<str>, Option<DomainError>> {
        let now = tokio::time::Instant::now();
        if let Some((at, json)) = self.lock().get(&view)
            && now.duration_since(*at) < MATRIX_CACHE_TTL
        {
            return Ok(json.clone());
        }
        let (r, v) = (registry.clone(), view.clone());
        let built = tokio::task::spawn_blocking(move || {
            r.matrix_within(&v.0, &v.1, &v.2)
                .map(|m| Arc::<str>::from(json::matrix_to_value(&m).to_string()))
        })
        .await
        .map_err(|_| None)?
        .map_err(Some)?;
        let mut c = self.lock();
        if c.len() >= MATRIX_CACHE_VIEWS {
            c.retain(|_, (at, _)| now.duration_since(*at) < MATRIX_CACHE_TTL);
            if c.len() >= MATRIX_CACHE_VIEWS
                && let Some(oldest) = c
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone())
            {
                c.remove(&oldest);
            }
        }
        c.insert(view, (now, built.clone()));
        Ok(built)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<MatrixView, (tokio::time::Instant, Arc<str>)>,
    > {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A REST response: a whole JSON body, or a stream of server-sent events.
pub type Resp = Response;

fn reply(status: StatusCode, v: &Value) -> Resp {
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// `405` naming the methods the path has, in `Allow` and in the message.
fn not_allowed(allow: &'static str) -> Resp {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
        &format!("method not allowed here; allowed: {allow}"),
    );
    r.headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    r
}

fn error(status: StatusCode, code: &str, field: Option<&str>, message: &str) -> Resp {
    reply(
        status,
        &json!({"error": {"code": code, "field": field, "message": message}}),
    )
}

fn error_with_limit(status: StatusCode, code: &str, e: &DomainError) -> Resp {
    let mut v = json!({"error": {"code": code, "field": e.field(), "message": e.to_string()}});
    if let Some(limit) = e.limit() {
        v["error"]["limit"] = json!(limit);
    }
    reply(status, &v)
}

fn domain_error(e: &DomainError) -> Resp {
    let msg = e.to_string();
    match e {
        DomainError::Invalid { .. } | DomainError::Spec(_) => {
            error_with_limit(StatusCode::BAD_REQUEST, "invalid_argument", e)
        }
        DomainError::Exhausted { .. } => {
            error_with_limit(StatusCode::TOO_MANY_REQUESTS, "resource_exhausted", e)
        }
        DomainError::NotFound { .. } => error(StatusCode::NOT_FOUND, "not_found", None, &msg),
        DomainError::VersionMismatch { .. } => error(
            StatusCode::PRECONDITION_FAILED,
            "failed_precondition",
            None,
            &msg,
        ),
        DomainError::Stopped { .. } => {
            error(StatusCode::CONFLICT, "failed_precondition", None, &msg)
        }
        DomainError::Store(_) => internal(
            e,
            "internal error: the state store failed; see the controller log",
        ),
    }
}

/// Answers rate-limited requests: `429`, `Retry-After` in whole seconds, and the JSON error
/// shape with code `resource_exhausted`.
#[derive(Clone, Copy, Debug)]
pub struct RestReject;

impl Reject<Body> for RestReject {
    type Body = Body;

    fn pass(&self, response: Resp) -> Resp {
        response
    }

    fn reject(&self, limited: &RateLimited) -> Resp {
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "resource_exhausted",
            None,
            &limited.message(),
        );
        r.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from(limited.retry_after_secs()),
        );
        r
    }
}

/// The start of a path's method router: every method the path does not add with `.on` —
/// `HEAD` included, which axum would otherwise answer from `GET` — gets `405` with `Allow:
/// allow` (RFC 9110).
fn methods(allow: &'static str) -> MethodRouter<Rest> {
    let refuse = move || std::future::ready(not_allowed(allow));
    MethodRouter::new()
        .on(MethodFilter::HEAD, refuse)
        .fallback(refuse)
}

impl Rest {
    /// A REST front end over `registry`.
    pub fn new(registry: Arc<Registry>, creds: Arc<Credentials>) -> Self {
        Rest {
            registry,
            matrices: Arc::new(MatrixCache::default()),
            creds,
            sessions: Arc::new(Sessions::default()),
            tls: false,
            scenarios: None,
        }
    }

    /// Serves the scenarios of `store` at `/api/v1/scenarios` (an empty listing without one).
    #[must_use]
    pub fn with_scenarios(mut self, store: Option<Arc<ScenarioStore>>) -> Self {
        self.scenarios = store;
        self
    }

    /// The API's routes (the table in the module documentation). It expects requests that
    /// passed `gate`: authenticated, body read, path normalized.
    pub fn router(self) -> Router {
        use MethodFilter as M;
        Router::new()
            // `GET` of the document itself is answered by the gate before the credential check;
            // a `GET` that reaches this route spelled the path another way (`.../openapi.json/`).
            .route(OPENAPI_PATH, methods("GET"))
            .route(
                "/api/v1/jobs",
                methods("GET, POST")
                    .on(M::GET, list_jobs)
                    .on(M::POST, start_job),
            )
            .route(
                "/api/v1/jobs/{id}",
                methods("GET, PUT, DELETE")
                    .on(M::GET, get_job)
                    .on(M::PUT, update_job)
                    .on(M::DELETE, stop_job),
            )
            .route(
                "/api/v1/session",
                methods("GET, POST, DELETE")
                    .on(M::GET, get_session)
                    .on(M::POST, sign_in)
                    .on(M::DELETE, sign_out),
            )
            .route("/api/v1/agents", methods("GET").on(M::GET, list_agents))
            .route(
                "/api/v1/scenarios",
                methods("GET").on(M::GET, list_scenarios),
            )
            .route(
                "/api/v1/scenarios/{name}",
                methods("GET").on(M::GET, get_scenario),
            )
            .route("/api/v1/matrix", methods("GET").on(M::GET, matrix))
            .route("/api/v1/stream", methods("GET").on(M::GET, stream))
            .route(
                "/api/v1/jobs/{id}/load",
                methods("GET").on(M::GET, job_load),
            )
            .route(
                "/api/v1/jobs/{id}/load/stream",
                methods("GET").on(M::GET, job_load_stream),
            )
            .route(
                "/api/v1/credentials",
                methods("GET, POST")
                    .on(M::GET, list_credentials)
                    .on(M::POST, add_credential),
            )
            .route(
                "/api/v1/credentials/{name}",
                methods("DELETE").on(M::DELETE, revoke_credential),
            )
            .route(
                "/api/v1/tokens",
                methods("GET, POST")
                    .on(M::GET, list_tokens)
                    .on(M::POST, create_token),
            )
            .route(
                "/api/v1/tokens/{name}",
                methods("DELETE").on(M::DELETE, revoke_token),
            )
            .fallback(|| {
                std::future::ready(error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    None,
                    "no such endpoint",
                ))
            })
            .with_state(self)
    }

    /// Serves `listener` until `shutdown`, with TLS if `tls` is given: connections within the
    /// listener's caps and deadlines ([`meshlat_guard`]), requests within `limiter`'s rates.
    pub async fn serve(
        self,
        listener: GuardedListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        limiter: Arc<RateLimiter>,
        shutdown: CancellationToken,
    ) {
        let mut this = self;
        this.tls = tls.is_some();
        let header_timeout = listener.tracker().limits().header_timeout;
        match tls {
            Some(acc) => {
                let conns = meshlat_guard::incoming(
                    listener,
                    move |s| acc.accept(s),
                    false,
                    shutdown.clone(),
                );
                this.serve_conns(conns, header_timeout, limiter, shutdown)
                    .await;
            }
            None => {
                let conns = meshlat_guard::incoming(
                    listener,
                    |s| std::future::ready(Ok(s)),
                    false,
                    shutdown.clone(),
                );
                this.serve_conns(conns, header_timeout, limiter, shutdown)
                    .await;
            }
        }
    }

    /// Serves HTTP/1.1 on every established connection of `conns`: [`Rest::router`] behind
    /// [`gate`] and the rate limit, as a hyper service.
    async fn serve_conns<IO>(
        self,
        mut conns: impl tokio_stream::Stream<Item = std::io::Result<Guarded<IO>>> + Unpin,
        header_timeout: Duration,
        limiter: Arc<RateLimiter>,
        shutdown: CancellationToken,
    ) where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use tokio_stream::StreamExt;
        // The gate wraps the whole router (not `Router::layer`, which runs after routing): it
        // normalizes the path the router matches.
        let gated = tower::Layer::layer(
            &axum::middleware::from_fn_with_state(self.clone(), gate),
            self.router(),
        );
        let reject = crate::metrics::CountRejected::new(RestReject, "rest");
        let app = tower::Layer::layer(&RateLimitLayer::new(limiter, reject), gated);
        loop {
            let io = tokio::select! {
                () = shutdown.cancelled() => return,
                c = conns.next() => match c {
                    Some(Ok(io)) => io,
                    Some(Err(_)) => continue,
                    None => return,
                },
            };
            let remote = io.peer();
            let app = app.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(PeerAddr(remote));
                    req.extensions_mut().insert(RemoteAddr(remote));
                    tower::ServiceExt::oneshot(app.clone(), req.map(Body::new))
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(TokioIo::new(io), svc);
                let res = tokio::select! { r = conn => r, () = shutdown.cancelled() => Ok(()) };
                if let Err(error) = res {
                    tracing::debug!(message = "REST connection closed with an error.", %remote, %error);
                }
            });
        }
    }
}

/// What a state-changing call acted on, for the audit log: a handler that names a new object
/// (a job id, a credential or token name) puts it in its response's extensions; otherwise the
/// path's fourth segment (or `-`) is logged.
#[derive(Clone, Debug)]
struct AuditObject(String);

/// Every request passes here before routing: `GET` of the OpenAPI document and of the
/// dashboard's files ([`crate::ui`]) is answered at once; any other request needs the operator
/// credential or a dashboard session cookie (`401` otherwise; see [`authenticate`]), has its
/// body read within [`MAX_BODY`] (`413` otherwise) and its path normalized (empty segments and
/// a trailing `/` dropped) for the router. State-changing calls are audited. Every response
/// gets the security headers of [`crate::ui::secure`].
async fn gate(State(rest): State<Rest>, req: Request, next: Next) -> Resp {
    crate::ui::secure(gate_inner(rest, req, next).await)
}

/// The signed-in dashboard session of a request (after [`gate`]): its cookie value and
/// session, for `/api/v1/session`.
#[derive(Clone, Debug)]
struct WebSession {
    id: String,
    session: Session,
}

/// Who made a request: the operator's name and, for a cookie session, the session.
enum Caller {
    /// An operator credential (`Authorization: Bearer`) or a session with a valid CSRF token.
    Operator(String, Option<WebSession>),
    /// No valid credential or session.
    Refused { presented: bool },
    /// A session cookie on a state-changing call without its CSRF token.
    NoCsrf(String),
}

/// The caller of a request: the `Authorization` header if there is one, else the session
/// cookie, which must belong to a live session of an operator that still exists, and on
/// `POST`, `PUT` and `DELETE` come with the session's CSRF token in `X-CSRF-Token`.
fn authenticate(rest: &Rest, parts: &http::request::Parts) -> Caller {
    if let Some(v) = parts.headers.get(http::header::AUTHORIZATION) {
        let presented = v.to_str().ok().and_then(bearer);
        return match presented.and_then(|c| rest.creds.check_operator(c)) {
            Some(name) => Caller::Operator(name, None),
            None => Caller::Refused { presented: true },
        };
    }
    let cookie = parts
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| session::cookie_value(v, session::COOKIE));
    let Some(id) = cookie else {
        return Caller::Refused { presented: false };
    };
    let live = rest.sessions.get(id).filter(|s| {
        rest.creds
            .list_operators()
            .iter()
            .any(|o| o.name == s.operator)
    });
    let Some(s) = live else {
        return Caller::Refused { presented: true };
    };
    let reads = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let token = parts
        .headers
        .get(session::CSRF_HEADER)
        .and_then(|v| v.to_str().ok());
    if !reads && !token.is_some_and(|t| session::token_eq(t, &s.csrf)) {
        return Caller::NoCsrf(s.operator);
    }
    Caller::Operator(
        s.operator.clone(),
        Some(WebSession {
            id: id.to_string(),
            session: s,
        }),
    )
}

async fn gate_inner(rest: Rest, req: Request, next: Next) -> Resp {
    let (mut parts, body) = req.into_parts();
    if parts.method == Method::GET {
        if parts.uri.path() == OPENAPI_PATH {
            return ([(http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response();
        }
        if let Some(a) = crate::ui::asset(parts.uri.path()) {
            return crate::ui::serve(a);
        }
    }
    let remote = parts.extensions.get::<RemoteAddr>().map(|r| r.0);
    let segs: Vec<String> = parts
        .uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let action = audit_action(&parts.method, &segs);
    // Signing in is the one call that needs no credential in a header: it carries one.
    let sign_in = parts.method == Method::POST && segs == ["api", "v1", "session"];
    let caller = match authenticate(&rest, &parts) {
        Caller::Refused { .. } if sign_in => Ok(None),
        Caller::Operator(name, web) => {
            if let Some(web) = web {
                parts.extensions.insert(web);
            }
            Ok(Some(name))
        }
        Caller::Refused { presented } => {
            tracing::warn!(message = "REST call refused: bad credential.", path = %parts.uri.path(), ?remote);
            crate::metrics::auth_failure("rest", AuthFailure::refused(presented));
            Err((None, unauthorized()))
        }
        Caller::NoCsrf(name) => {
            tracing::warn!(message = "REST call refused: dashboard session without its CSRF token.", path = %parts.uri.path(), operator = %name, ?remote);
            crate::metrics::auth_failure("rest", AuthFailure::Csrf);
            Err((
                Some(name),
                error(
                    StatusCode::FORBIDDEN,
                    "permission_denied",
                    Some(session::CSRF_HEADER),
                    "a state-changing call with a session cookie needs the session's CSRF token \
                     in X-CSRF-Token (from POST or GET /api/v1/session)",
                ),
            ))
        }
    };
    let (caller, resp) = match caller {
        Err((caller, resp)) => (caller, resp),
        Ok(caller) => match axum::body::to_bytes(body, MAX_BODY).await {
            Err(_) => (
                caller,
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_argument",
                    None,
                    "request body too large or unreadable",
                ),
            ),
            Ok(body) => {
                let query = parts
                    .uri
                    .query()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default();
                let resp = match format!("/{}{query}", segs.join("/")).parse::<Uri>() {
                    Ok(uri) => {
                        parts.uri = uri;
                        next.run(Request::from_parts(parts, Body::from(body))).await
                    }
                    Err(_) => error(StatusCode::NOT_FOUND, "not_found", None, "no such endpoint"),
                };
                (caller, resp)
            }
        },
    };
    if let Some(action) = action {
        let object = resp
            .extensions()
            .get::<AuditObject>()
            .map_or_else(|| segs.get(3).map_or("-", String::as_str), |o| o.0.as_str());
        audit::record(
            caller.as_deref(),
            remote,
            action,
            object,
            outcome(resp.status()),
        );
    }
    resp
}

/// The last segment of a (normalized) path: the `{id}` or `{name}` of a route, as sent
/// (not percent-decoded).
fn last_segment(uri: &Uri) -> &str {
    uri.path().rsplit('/').next().unwrap_or("")
}

/// `resp` with `object` as its [`AuditObject`].
fn audited(object: &str, mut resp: Resp) -> Resp {
    resp.extensions_mut()
        .insert(AuditObject(object.to_string()));
    resp
}

async fn start_job(State(rest): State<Rest>, body: Bytes) -> Resp {
    match json::parse_spec(&body) {
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            Some(&e.field),
            &e.to_string(),
        ),
        Ok(spec) => match rest.registry.start_job(Some(spec)) {
            Ok(j) => audited(&j.id, reply(StatusCode::CREATED, &json::job_to_value(&j))),
            Err(e) => domain_error(&e),
        },
    }
}

async fn list_jobs(State(rest): State<Rest>, uri: Uri) -> Resp {
    let all = uri
        .query()
        .unwrap_or("")
        .split('&')
        .any(|kv| kv == "include_stopped=true" || kv == "include_stopped=1");
    let jobs: Vec<Value> = rest
        .registry
        .list_jobs(all)
        .iter()
        .map(json::job_to_value)
        .collect();
    reply(StatusCode::OK, &json!({ "jobs": jobs }))
}

async fn get_job(State(rest): State<Rest>, uri: Uri) -> Resp {
    match rest.registry.get_job(last_segment(&uri)) {
        Ok(j) => reply(StatusCode::OK, &json::job_to_value(&j)),
        Err(e) => domain_error(&e),
    }
}

async fn update_job(State(rest): State<Rest>, uri: Uri, headers: HeaderMap, body: Bytes) -> Resp {
    let expected = match headers.get(http::header::IF_MATCH) {
        None => 0,
        Some(v) => match v
            .to_str()
            .ok()
            .map(|s| s.trim().trim_matches('"').parse::<u64>())
        {
            Some(Ok(n)) => n,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_argument",
                    Some("If-Match"),
                    "If-Match: must be the job version (a number)",
                );
            }
        },
    };
    match json::parse_spec(&body) {
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            Some(&e.field),
            &e.to_string(),
        ),
        Ok(spec) => match rest
            .registry
            .update_job(last_segment(&uri), Some(spec), expected)
        {
            Ok(j) => reply(StatusCode::OK, &json::job_to_value(&j)),
            Err(e) => domain_error(&e),
        },
    }
}

async fn stop_job(State(rest): State<Rest>, uri: Uri) -> Resp {
    match rest.registry.stop_job(last_segment(&uri)) {
        Ok(j) => reply(StatusCode::OK, &json::job_to_value(&j)),
        Err(e) => domain_error(&e),
    }
}

async fn list_agents(State(rest): State<Rest>) -> Resp {
    let agents: Vec<Value> = rest
        .registry
        .list_agents()
        .iter()
        .map(json::agent_to_value)
        .collect();
    reply(StatusCode::OK, &json!({ "agents": agents }))
}

async fn list_scenarios(State(rest): State<Rest>) -> Resp {
    let list = rest
        .scenarios
        .as_ref()
        .map(|s| s.list())
        .unwrap_or_default();
    reply(StatusCode::OK, &scenarios::list_to_value(&list))
}

async fn get_scenario(State(rest): State<Rest>, uri: Uri) -> Resp {
    let name = last_segment(&uri);
    let Some(store) = &rest.scenarios else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            None,
            "this controller has no scenarios directory (--scenarios DIR)",
        );
    };
    match store.get(name) {
        Ok(s) => reply(
            StatusCode::OK,
            &scenarios::info_to_value(&scenarios::info(&s), true),
        ),
        Err(e @ LookupError::NotFound { .. }) => {
            error(StatusCode::NOT_FOUND, "not_found", None, &e.to_string())
        }
        Err(e) => error(
            StatusCode::CONFLICT,
            "failed_precondition",
            None,
            &e.to_string(),
        ),
    }
}

/// A matrix view's JSON from the cache, or the error response.
async fn matrix_json(rest: &Rest, view: MatrixView) -> Result<Arc<str>, Resp> {
    rest.matrices
        .get(&rest.registry, view)
        .await
        .map_err(|e| match e {
            Some(e) => domain_error(&e),
            None => internal(
                &"the matrix build task failed",
                "could not build the matrix",
            ),
        })
}

async fn matrix(State(rest): State<Rest>, uri: Uri) -> Resp {
    let (by, protocol, filter) = matrix_query(uri.query().unwrap_or(""));
    match matrix_json(&rest, (by, protocol, filter)).await {
        Ok(json) => (
            StatusCode::OK,
            [(http::header::CONTENT_TYPE, "application/json")],
            json.to_string(),
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn stream(State(rest): State<Rest>, uri: Uri) -> Resp {
    let view = matrix_query(uri.query().unwrap_or(""));
    // Validates the view (and warms the cache for the first event).
    match matrix_json(&rest, view.clone()).await {
        Ok(_) => sse(rest, view),
        Err(r) => r,
    }
}

/// The `{id}` of `/api/v1/jobs/{id}/...` (a normalized path).
fn job_segment(uri: &Uri) -> &str {
    uri.path().split('/').nth(4).unwrap_or("")
}

async fn job_load(State(rest): State<Rest>, uri: Uri) -> Resp {
    match rest.registry.load_view(job_segment(&uri)) {
        Ok(v) => reply(StatusCode::OK, &crate::loadlive::stats_to_value(&v)),
        Err(e) => domain_error(&e),
    }
}

async fn job_load_stream(State(rest): State<Rest>, uri: Uri) -> Resp {
    let id = job_segment(&uri).to_string();
    // Refused before the stream starts: an unknown job, or not a load job.
    if let Err(e) = rest.registry.load_view(&id) {
        return domain_error(&e);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(4);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(LOAD_WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(SSE_HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        if tx
            .send(Event::default().comment("meshlat load stats"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let end = || Event::default().event("end").data(r#"{"done":true}"#);
            let (events, last) = tokio::select! {
                _ = tick.tick() => match rest.registry.load_view(&id) {
                    Ok(v) => {
                        let data = crate::loadlive::stats_to_value(&v).to_string();
                        let load = Event::default().event("load").data(data);
                        if v.done { (vec![load, end()], true) } else { (vec![load], false) }
                    }
                    // Gone (expired after its stop): the stream ends.
                    Err(_) => (vec![end()], true),
                },
                _ = heartbeat.tick() => (vec![Event::default().comment("heartbeat")], false),
            };
            for e in events {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
            if last {
                return;
            }
        }
    });
    let events =
        tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |e| {
            Ok::<_, std::convert::Infallible>(e)
        });
    Sse::new(events).into_response()
}

/// The JSON of a session: the operator, and for a cookie session its CSRF token and end.
fn session_value(operator: &str, web: Option<&Session>) -> Value {
    json!({
        "operator": operator,
        "csrf_token": web.map(|s| s.csrf.as_str()),
        "expires_unix": web.map(|s| s.expires_unix),
    })
}

/// `POST /api/v1/session` with `{"credential": "NAME:SECRET"}`: a dashboard session, as an
/// `HttpOnly; SameSite=Strict` cookie, and its CSRF token in the body. Only JSON bodies (a
/// page of another site cannot send one without the browser asking first), so no site can
/// sign a browser in under another credential.
async fn sign_in(State(rest): State<Rest>, headers: HeaderMap, body: Bytes) -> Resp {
    let json_body = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().starts_with("application/json"));
    if !json_body {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_argument",
            Some("Content-Type"),
            "Content-Type: must be application/json",
        );
    }
    let credential = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
        v.get("credential")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let Some(credential) = credential else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            Some("credential"),
            "credential: send {\"credential\": \"NAME:SECRET\"}",
        );
    };
    let Some(name) = rest.creds.check_operator(&credential) else {
        tracing::warn!(message = "Dashboard sign-in refused: bad credential.");
        crate::metrics::auth_failure("rest", AuthFailure::refused(true));
        return unauthorized();
    };
    let new = rest.sessions.start(&name);
    tracing::info!(message = "Dashboard session started.", operator = %name);
    let mut r = reply(
        StatusCode::CREATED,
        &session_value(&name, Some(&new.session)),
    );
    if let Ok(v) = http::HeaderValue::from_str(&session::set_cookie(&new.id, rest.tls)) {
        r.headers_mut().insert(http::header::SET_COOKIE, v);
    }
    audited(&name, r)
}

/// `GET /api/v1/session`: who is signed in (a reloaded page gets its CSRF token back here).
async fn get_session(
    State(_rest): State<Rest>,
    web: Option<axum::Extension<WebSession>>,
    headers: HeaderMap,
) -> Resp {
    match web {
        Some(axum::Extension(w)) => reply(
            StatusCode::OK,
            &session_value(&w.session.operator, Some(&w.session)),
        ),
        // A credential in the header: the gate let it through, so it names an operator.
        None => {
            let name = headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer)
                .and_then(|c| c.split_once(':').map(|(n, _)| n.to_string()))
                .unwrap_or_default();
            reply(StatusCode::OK, &session_value(&name, None))
        }
    }
}

/// `DELETE /api/v1/session`: signs out (the session ends, the cookie is cleared).
async fn sign_out(State(rest): State<Rest>, web: Option<axum::Extension<WebSession>>) -> Resp {
    let ended = web.is_some_and(|axum::Extension(w)| rest.sessions.end(&w.id));
    let mut r = reply(StatusCode::OK, &json!({ "signed_out": ended }));
    if let Ok(v) = http::HeaderValue::from_str(&session::clear_cookie(rest.tls)) {
        r.headers_mut().insert(http::header::SET_COOKIE, v);
    }
    r
}

async fn list_credentials(State(rest): State<Rest>) -> Resp {
    let list: Vec<Value> = rest.creds.list_operators().iter().map(cred_value).collect();
    reply(StatusCode::OK, &json!({ "credentials": list }))
}

async fn add_credential(State(rest): State<Rest>, body: Bytes) -> Resp {
    let (name, _) = match body_name(&body, "name: send {\"name\": \"NAME\"}") {
        Ok(named) => named,
        Err(resp) => return *resp,
    };
    let made = rest.creds.add_operator(&name).map(|credential| {
        let info = rest
            .creds
            .list_operators()
            .iter()
            .find(|i| i.name == name)
            .map_or_else(|| json!({}), cred_value);
        (info, credential)
    });
    created_with_secret(&name, made, "credential")
}

async fn revoke_credential(State(rest): State<Rest>, uri: Uri) -> Resp {
    match rest.creds.revoke_operator(last_segment(&uri)) {
        Ok(i) => {
            rest.sessions.end_operator(&i.name);
            reply(StatusCode::OK, &cred_value(&i))
        }
        Err(e) => credential_error(&e),
    }
}

async fn list_tokens(State(rest): State<Rest>) -> Resp {
    let list: Vec<Value> = rest.creds.list_tokens().iter().map(token_value).collect();
    reply(StatusCode::OK, &json!({ "tokens": list }))
}

async fn create_token(State(rest): State<Rest>, body: Bytes) -> Resp {
    let (name, v) = match body_name(
        &body,
        "name: send {\"name\": \"NAME\", \"expires_in_s\": SECONDS (optional)}",
    ) {
        Ok(named) => named,
        Err(resp) => return *resp,
    };
    let expires_in = v.as_ref().and_then(|v| v.get("expires_in_s"));
    let expires = match expires_in {
        None | Some(Value::Null) => None,
        Some(e) => match e.as_u64().filter(|s| (1..=MAX_TOKEN_LIFE_S).contains(s)) {
            Some(s) => Some(unix_now().saturating_add(s)),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_argument",
                    Some("expires_in_s"),
                    &format!("expires_in_s: must be 1 to {MAX_TOKEN_LIFE_S} seconds"),
                );
            }
        },
    };
    let made = rest
        .creds
        .create_token(&name, expires)
        .map(|(i, secret)| (token_value(&i), rest.creds.token_string(&secret)));
    created_with_secret(&name, made, "token")
}

async fn revoke_token(State(rest): State<Rest>, uri: Uri) -> Resp {
    match rest.creds.revoke_token(last_segment(&uri)) {
        Ok(i) => reply(StatusCode::OK, &token_value(&i)),
        Err(e) => credential_error(&e),
    }
}

/// The peer address of a REST connection, in each request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct RemoteAddr(pub std::net::SocketAddr);

fn unauthorized() -> Resp {
    error(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        None,
        "missing or invalid operator credential: send Authorization: Bearer NAME:SECRET",
    )
}

/// The audit action of a state-changing request (`None`: a read).
fn audit_action(method: &Method, segs: &[String]) -> Option<&'static str> {
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    Some(match (method, segs.as_slice()) {
        (&Method::GET | &Method::HEAD | &Method::OPTIONS, _) => return None,
        (&Method::POST, ["api", "v1", "jobs"]) => "job.start",
        (&Method::PUT, ["api", "v1", "jobs", _]) => "job.update",
        (&Method::DELETE, ["api", "v1", "jobs", _]) => "job.stop",
        (&Method::POST, ["api", "v1", "session"]) => "session.start",
        (&Method::DELETE, ["api", "v1", "session"]) => "session.end",
        (&Method::POST, ["api", "v1", "credentials"]) => "credential.add",
        (&Method::DELETE, ["api", "v1", "credentials", _]) => "credential.revoke",
        (&Method::POST, ["api", "v1", "tokens"]) => "token.create",
        (&Method::DELETE, ["api", "v1", "tokens", _]) => "token.revoke",
        _ => "other",
    })
}

/// The audit outcome of a response status.
fn outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "ok",
        400 | 413 | 415 => "invalid_argument",
        401 => "unauthenticated",
        403 => "permission_denied",
        404 => "not_found",
        405 => "method_not_allowed",
        409 | 412 => "failed_precondition",
        429 => "resource_exhausted",
        _ => "internal",
    }
}

/// Longest join token life `expires_in_s` takes (ten years).
pub const MAX_TOKEN_LIFE_S: u64 = 10 * 366 * 86_400;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn token_value(i: &crate::auth::TokenInfo) -> Value {
    json!({"name": i.name, "created_unix": i.created_unix, "expires_unix": i.expires_unix,
           "revoked_unix": i.revoked_unix})
}

fn cred_value(i: &OperatorInfo) -> Value {
    json!({"name": i.name, "origin": i.origin.as_str(), "created_unix": i.created_unix})
}

/// The string `name` of a JSON request body, with the body (`None`: not JSON), or a 400 naming
/// the field with `hint` (boxed: a response is large next to a name).
fn body_name(body: &[u8], hint: &str) -> Result<(String, Option<Value>), Box<Resp>> {
    let v = serde_json::from_slice::<Value>(body).ok();
    let name = v
        .as_ref()
        .and_then(|v| v.get("name").and_then(Value::as_str))
        .map(str::to_string)
        .ok_or_else(|| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                Some("name"),
                hint,
            ))
        })?;
    Ok((name, v))
}

/// The answer to creating credential or token `name` (audited under that name): 201 with its
/// `info` and the new secret under `key` (shown this once), or the error.
fn created_with_secret(
    name: &str,
    made: Result<(Value, String), CredentialError>,
    key: &str,
) -> Resp {
    let resp = match made {
        Ok((mut info, secret)) => {
            info[key] = Value::String(secret);
            reply(StatusCode::CREATED, &info)
        }
        Err(e) => credential_error(&e),
    };
    audited(name, resp)
}

/// A 500 saying `what` to the client; the error itself goes to the log only.
fn internal(e: &dyn std::fmt::Display, what: &str) -> Resp {
    tracing::error!(message = "Internal error.", error = %e);
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal", None, what)
}

fn credential_error(e: &CredentialError) -> Resp {
    let msg = e.to_string();
    match e {
        CredentialError::BadName { .. } => error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            Some("name"),
            &msg,
        ),
        CredentialError::Exists { .. } => {
            error(StatusCode::CONFLICT, "already_exists", Some("name"), &msg)
        }
        CredentialError::NotFound { .. } => error(StatusCode::NOT_FOUND, "not_found", None, &msg),
        CredentialError::Last { .. } => {
            error(StatusCode::CONFLICT, "failed_precondition", None, &msg)
        }
        CredentialError::Store(_) => internal(
            e,
            "internal error: the credentials file could not be written; see the controller log",
        ),
    }
}

/// `by` and `protocol` from a query string (unknown keys ignored; no percent-decoding needed
/// for the values allowed).
fn matrix_query(query: &str) -> (String, String, RegionFilter) {
    let (mut by, mut protocol) = (String::new(), String::new());
    let mut filter = RegionFilter::default();
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("by", v)) => by = v.to_string(),
            Some(("protocol", v)) => protocol = v.to_string(),
            Some(("src_region", v)) if !v.is_empty() => filter.src_region = Some(v.to_string()),
            Some(("dst_region", v)) if !v.is_empty() => filter.dst_region = Some(v.to_string()),
            _ => {}
        }
    }
    (by, protocol, filter)
}

/// A `text/event-stream` response: a matrix every [`WATCH_INTERVAL`], heartbeat comments in
/// between. The producing task ends when the client goes away (its body is dropped).
fn sse(rest: Rest, view: MatrixView) -> Resp {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(4);
    tokio::spawn(async move {
        let mut matrix = tokio::time::interval(WATCH_INTERVAL);
        matrix.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(SSE_HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        if tx
            .send(Event::default().comment("meshlat live stats"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let event = tokio::select! {
                _ = matrix.tick() => match matrix_json(&rest, view.clone()).await {
                    Ok(data) => Event::default().event("matrix").data(&*data),
                    Err(_) => break,
                },
                _ = heartbeat.tick() => Event::default().comment("heartbeat"),
            };
            if tx.send(event).await.is_err() {
                break;
            }
        }
    });
    let events =
        tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |e| {
            Ok::<_, std::convert::Infallible>(e)
        });
    Sse::new(events).into_response()
}
