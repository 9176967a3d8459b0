//! The load engine's runtime glue: the run task, its workers and the per-second reports.
//!
//! # Tasks
//!
//! - The **run task** ([`LoadEngine::start`]) owns the [`Schedule`] (and, in the open model,
//!   the [`Pacer`]). It wakes at each second boundary to report, at each step change and on
//!   each update, and — open model — at each intended send time, to queue it.
//! - **Workers**, one per connection. Closed model: worker `i` loops request → response →
//!   think time on its own connection, with credential `i` (round-robin); the run task adds and
//!   cancels workers to follow the level. Open model: connection workers take intended send
//!   times from one queue (the oldest first), send at once (late if they were busy) and measure
//!   from the intended time; the run task opens another connection when a request is due and no
//!   connection is idle, up to the cap.
//! - Samples go into one [`Recorder`] behind a mutex (a few hundred nanoseconds per request).
//!
//! Every task has an owner: workers live in the run task's `JoinSet`, each with a child of the
//! run's `CancellationToken`; dropping a worker's future drops its connection, which the worker
//! drives itself ([`Conn`]). So [`LoadHandle::stop`] ends every request at once (no request is sent after
//! it returns), and an update that lowers the workers cancels the surplus at once.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::client::{Conn, Endpoint, EndpointError};
use super::credentials::Credentials;
use super::mix::{RequestMix, classify};
use super::plan::{Model, Pacer, Schedule};
use super::stats::{ErrorClass, Recorder, RequestResult, Sample, SecondReport, Tally};
use crate::target::Target;
use crate::tls::TlsClientOptions;

/// First pause of a closed-model worker after a failed connect; doubles up to
/// [`CONNECT_BACKOFF_MAX`], so a refusing target is not spun on.
pub const CONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest pause after failed connects.
pub const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Everything a run needs (built by [`crate::load::config::LoadConfig`], or by a job later).
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// `http://` or `https://` URL.
    pub target: Target,
    /// Model, steps and caps.
    pub schedule: Schedule,
    /// How long the run lasts.
    pub duration: Duration,
    /// Closed model: pause between a response and the worker's next request.
    pub think_time: Duration,
    /// Bound on one request (connecting included).
    pub timeout: Duration,
    /// Extra request headers.
    pub headers: http::HeaderMap,
    /// The requests sent, by weight ([`RequestMix::target_get`]: a `GET` of the target URL).
    pub mix: RequestMix,
    /// Credentials spread over workers (may be empty).
    pub credentials: Credentials,
    /// Send each credential's secret in this header instead of `Authorization: Basic`
    /// (`LoadCredentials.header` of a job).
    pub credentials_header: Option<HeaderName>,
    /// Certificate checks for https.
    pub tls: TlsClientOptions,
}

/// A run ready to start.
#[derive(Debug)]
pub struct LoadEngine {
    spec: LoadSpec,
    endpoint: Arc<Endpoint>,
}

/// A running engine: update it, stop it, read its reports, await its summary. Dropping the
/// handle stops the run (as [`LoadHandle::stop`]).
#[derive(Debug)]
pub struct LoadHandle {
    level: watch::Sender<Option<Update>>,
    /// Wall-clock time of the run's start: second `n` of the reports begins `n` s after it.
    started: SystemTime,
    cancel: CancellationToken,
    /// Cancels the run when the handle is dropped.
    guard: DropGuard,
    reports: mpsc::UnboundedReceiver<SecondReport>,
    task: tokio::task::JoinHandle<LoadSummary>,
}

/// A change to a running engine's schedule.
#[derive(Clone, Debug)]
enum Update {
    /// [`LoadHandle::set_level`].
    Level(f64),
    /// [`LoadHandle::reschedule`].
    Schedule(Schedule),
}

/// One step of a finished run.
#[derive(Clone, Debug, PartialEq)]
pub struct StepSummary {
    /// Step index.
    pub step: u32,
    /// Its level (workers, or req/s) at its end.
    pub level: f64,
    /// Most workers (connections) seen during the step.
    pub workers: u32,
    /// Time spent in it (reported seconds).
    pub length: Duration,
    /// Its counts and latencies.
    pub tally: Tally,
}

/// What a run did.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadSummary {
    /// The model.
    pub model: Model,
    /// From start to the last report.
    pub elapsed: Duration,
    /// Whether it was stopped before its duration.
    pub stopped: bool,
    /// The whole run.
    pub total: Tally,
    /// Per step, in order.
    pub steps: Vec<StepSummary>,
}

/// What workers share.
struct Shared {
    endpoint: Arc<Endpoint>,
    recorder: Mutex<Recorder>,
    /// Credential headers (`Authorization`, or the job's named header), one per credential.
    auth: Vec<(HeaderName, HeaderValue)>,
    think_time: Duration,
    timeout: Duration,
    /// Open model: intended send times waiting for a connection.
    queue: Mutex<VecDeque<Instant>>,
    /// Signals `queue` has items.
    queued: Notify,
    /// Open model: connections waiting for the queue.
    idle: AtomicUsize,
    /// First failure of each kind is logged at warn, the rest at debug.
    logged: Mutex<[bool; 4]>,
}

// === impl LoadEngine ===

impl LoadEngine {
    /// Prepares a run of `spec`.
    ///
    /// # Errors
    ///
    /// [`EndpointError`] when the target or TLS options are unusable.
    pub fn new(spec: LoadSpec) -> Result<Self, EndpointError> {
        let endpoint = Arc::new(Endpoint::new(
            &spec.target,
            &spec.tls,
            &spec.headers,
            spec.mix.clone(),
        )?);
        Ok(LoadEngine { spec, endpoint })
    }

    /// Starts the run now, on the current runtime.
    pub fn start(self) -> LoadHandle {
        let (level, level_rx) = watch::channel(None);
        let cancel = CancellationToken::new();
        let (tx, reports) = mpsc::unbounded_channel();
        let (origin, started) = (Instant::now(), SystemTime::now());
        let task = tokio::spawn(run(self, origin, level_rx, cancel.clone(), tx));
        LoadHandle {
            level,
            started,
            guard: cancel.clone().drop_guard(),
            cancel,
            reports,
            task,
        }
    }
}

// === impl LoadHandle ===

impl LoadHandle {
    /// Sets the level for the rest of the run — workers (closed model) or req/s (open model),
    /// capped — ending the staircase. Takes effect at once: workers are added or cancelled, the
    /// pacer's next interval uses the new rate.
    pub fn set_level(&self, level: f64) {
        self.level.send_replace(Some(Update::Level(level)));
    }

    /// Replaces the run's schedule — steps and caps — keeping its start: the step and level
    /// the new schedule gives for the time elapsed take effect at once, and the staircase goes
    /// on from there (a job updated while it runs). A schedule of another model is ignored
    /// (logged): that is a different run.
    pub fn reschedule(&self, schedule: Schedule) {
        self.level.send_replace(Some(Update::Schedule(schedule)));
    }

    /// Wall-clock time of the run's start: report `n` covers the second from `n` s after it.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// Stops the run: every worker is cancelled at once, its request dropped with its
    /// connection. The summary then comes from [`LoadHandle::join`].
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// The next per-second report; `None` once the run is over and all were read.
    pub async fn next_report(&mut self) -> Option<SecondReport> {
        self.reports.recv().await
    }

    /// Waits for the run to end; its summary. Reports not yet read are dropped.
    ///
    /// # Errors
    ///
    /// The run task's `JoinError` if it panicked (a bug).
    pub async fn join(self) -> Result<LoadSummary, tokio::task::JoinError> {
        let LoadHandle { task, guard, .. } = self;
        let summary = task.await;
        // Over by now; the guard only had to outlive the wait.
        drop(guard);
        summary
    }
}

// === the run task ===

/// Workers (closed model) with their cancellation tokens, in index order.
struct Workers {
    set: JoinSet<()>,
    tokens: Vec<CancellationToken>,
}

async fn run(
    engine: LoadEngine,
    origin: Instant,
    mut level_rx: watch::Receiver<Option<Update>>,
    cancel: CancellationToken,
    reports: mpsc::UnboundedSender<SecondReport>,
) -> LoadSummary {
    let LoadEngine { spec, endpoint } = engine;
    let end = origin + spec.duration;
    let mut schedule = spec.schedule.clone();
    let model = schedule.model();
    let shared = Arc::new(Shared {
        endpoint,
        recorder: Mutex::new(Recorder::new(origin)),
        auth: (0..spec.credentials.len())
            .filter_map(|i| spec.credentials.for_worker(i))
            .map(|c| match &spec.credentials_header {
                Some(name) => (name.clone(), c.secret_value()),
                None => (http::header::AUTHORIZATION, c.basic_auth()),
            })
            .collect(),
        think_time: spec.think_time,
        timeout: spec.timeout,
        queue: Mutex::new(VecDeque::new()),
        queued: Notify::new(),
        idle: AtomicUsize::new(0),
        logged: Mutex::new([false; 4]),
    });
    let mut workers = Workers {
        set: JoinSet::new(),
        tokens: Vec::new(),
    };
    let point = schedule.at(Duration::ZERO);
    let mut pacer = Pacer::new(
        origin,
        if model == Model::Open {
            point.level
        } else {
            0.0
        },
    );
    let mut steps: BTreeMap<u32, StepSummary> = BTreeMap::new();
    let mut total = Tally::default();
    let mut reported = 0u64;
    tracing::info!(
        message = "Load run started.",
        model = ?model,
        level = point.level,
        duration_s = spec.duration.as_secs_f64(),
    );
    // Puts the schedule's level at `now` into effect: workers added or cancelled, or the
    // pacer's rate changed.
    let apply = |schedule: &Schedule, workers: &mut Workers, pacer: &mut Pacer, now: Instant| {
        let p = schedule.at(now.saturating_duration_since(origin));
        match model {
            Model::Closed => resize(workers, p.level as usize, &shared, &cancel),
            Model::Open => {
                if (pacer.rate() - p.level).abs() > f64::EPSILON {
                    pacer.set_rate(p.level);
                }
            }
        }
        p
    };
    apply(&schedule, &mut workers, &mut pacer, origin);
    let mut stopped = false;
    // Until the handle is dropped (then the run is cancelled too).
    let mut updates_open = true;
    loop {
        let now = Instant::now();
        let next_second = origin + Duration::from_secs(reported + 1);
        let next_step = schedule
            .next_change(now.saturating_duration_since(origin))
            .map(|d| origin + d);
        let pace = pacer.next_due().filter(|_| model == Model::Open);
        let wake = [Some(next_second), next_step, pace, Some(end)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(end);
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                stopped = true;
                break;
            }
            changed = level_rx.changed(), if updates_open => {
                updates_open = changed.is_ok();
                let update = level_rx.borrow_and_update().clone();
                match update.filter(|_| updates_open) {
                    Some(Update::Level(l)) => {
                        let capped = schedule.set_level(l);
                        if capped < l {
                            tracing::warn!(message = "Load update capped.", asked = l, level = capped);
                        }
                        tracing::info!(message = "Load level updated.", level = capped);
                        apply(&schedule, &mut workers, &mut pacer, Instant::now());
                    }
                    Some(Update::Schedule(s)) if s.model() == model => {
                        schedule = s;
                        let p = apply(&schedule, &mut workers, &mut pacer, Instant::now());
                        tracing::info!(message = "Load schedule updated.", step = p.step, level = p.level);
                    }
                    Some(Update::Schedule(s)) => {
                        tracing::warn!(message = "Load schedule of another model ignored.", model = ?model, asked = ?s.model());
                    }
                    None => {}
                }
            }
            () = sleep_until(wake) => {
                let now = Instant::now();
                if model == Model::Open {
                    // Requests intended from the end on are not the run's.
                    let until = now.min(end - Duration::from_nanos(1));
                    dispatch(&mut pacer, until, &shared, &mut workers, &cancel, &schedule);
                }
                // The last second is reported after the workers stop (below), with what
                // finished while they were being cancelled.
                if now >= next_second && next_second < end {
                    // The second that ended, as it was: its step, before a step change at its
                    // end is applied (below).
                    let p = schedule.at(
                        next_second.duration_since(origin) - Duration::from_nanos(1),
                    );
                    let tally = lock(&shared.recorder).take_until(reported + 1);
                    let report = SecondReport {
                        second: reported,
                        length: Duration::from_secs(1),
                        step: p.step,
                        workers: workers.tokens.len() as u32,
                        level: p.level,
                        tally,
                    };
                    reported += 1;
                    account(&mut total, &mut steps, &report);
                    let _ = reports.send(report);
                }
                if now >= end {
                    break;
                }
                if next_step.is_some_and(|t| now >= t) {
                    let p = apply(&schedule, &mut workers, &mut pacer, now);
                    tracing::info!(message = "Load step.", step = p.step, level = p.level);
                }
            }
        }
    }
    // Stop every worker; their in-flight requests are dropped with their connections.
    cancel.cancel();
    let connections = workers.tokens.len() as u32;
    while workers.set.join_next().await.is_some() {}
    let stop_at = Instant::now().min(end);
    let elapsed = stop_at.saturating_duration_since(origin);
    let rest = lock(&shared.recorder).take_all();
    let partial = elapsed.saturating_sub(Duration::from_secs(reported));
    if !partial.is_zero() || rest != Tally::default() {
        let p = schedule.at(elapsed.saturating_sub(Duration::from_nanos(1)));
        let report = SecondReport {
            second: reported,
            length: partial,
            step: p.step,
            workers: connections,
            level: p.level,
            tally: rest,
        };
        account(&mut total, &mut steps, &report);
        let _ = reports.send(report);
    }
    tracing::info!(
        message = "Load run ended.",
        stopped,
        requests = total.sent,
        responses = total.responses(),
        errors = total.errors.total(),
    );
    LoadSummary {
        model,
        elapsed,
        stopped,
        total,
        steps: steps.into_values().collect(),
    }
}

/// Adds a report to the run's and its step's totals.
fn account(total: &mut Tally, steps: &mut BTreeMap<u32, StepSummary>, r: &SecondReport) {
    total.merge(&r.tally);
    let s = steps.entry(r.step).or_insert_with(|| StepSummary {
        step: r.step,
        level: r.level,
        workers: 0,
        length: Duration::ZERO,
        tally: Tally::default(),
    });
    s.level = r.level;
    s.workers = s.workers.max(r.workers);
    s.length += r.length;
    s.tally.merge(&r.tally);
}

/// Closed model: `n` workers, adding from the end or cancelling the last ones.
fn resize(workers: &mut Workers, n: usize, shared: &Arc<Shared>, cancel: &CancellationToken) {
    while workers.tokens.len() > n {
        if let Some(t) = workers.tokens.pop() {
            t.cancel();
        }
    }
    while workers.tokens.len() < n {
        let index = workers.tokens.len();
        let token = cancel.child_token();
        workers.tokens.push(token.clone());
        workers
            .set
            .spawn(closed_worker(index, Arc::clone(shared), token));
    }
}

/// Open model: queue every due intended time; open a connection if none is idle.
fn dispatch(
    pacer: &mut Pacer,
    now: Instant,
    shared: &Arc<Shared>,
    workers: &mut Workers,
    cancel: &CancellationToken,
    schedule: &Schedule,
) {
    let mut due = 0usize;
    {
        let mut q = lock(&shared.queue);
        while let Some(t) = pacer.poll(now) {
            lock(&shared.recorder).intended(t);
            q.push_back(t);
            due += 1;
        }
    }
    if due == 0 {
        return;
    }
    let cap = schedule.caps().max_connections as usize;
    let waiting = lock(&shared.queue).len();
    let idle = shared.idle.load(Ordering::Acquire);
    if waiting > idle && workers.tokens.len() < cap {
        let index = workers.tokens.len();
        let token = cancel.child_token();
        workers.tokens.push(token.clone());
        workers
            .set
            .spawn(open_worker(index, Arc::clone(shared), token));
    }
    for _ in 0..due {
        shared.queued.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A worker that panicked mid-update leaves counts that are still counts.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// === workers ===

/// One request on `conn` (connecting first if needed), bounded by the timeout; its result.
/// `conn` is cleared when it can no longer be used.
async fn request(
    shared: &Shared,
    conn: &mut Option<Conn>,
    auth: Option<&(HeaderName, HeaderValue)>,
) -> RequestResult {
    let attempt = async {
        // A connection the server closed after its last response is replaced, not counted as
        // a failure.
        if let Some(c) = conn.as_mut()
            && (c.is_closed() || !c.ready().await)
        {
            *conn = None;
        }
        if conn.is_none() {
            // Boxed: the connect future (resolve, TCP, TLS) is large and rarely needed; inline it
            // would be moved with this future on every request.
            let mut c = Box::pin(shared.endpoint.connect()).await?;
            if !c.ready().await {
                return Err((
                    ErrorClass::Io,
                    "connection closed before the request".into(),
                ));
            }
            *conn = Some(c);
        }
        let Some(c) = conn.as_mut() else {
            // Set just above.
            return Err((ErrorClass::Connect, "no connection".to_string()));
        };
        let (req, expect) = shared.endpoint.request(auth);
        c.send(req).await.map(|status| classify(expect, status))
    };
    let result = match tokio::time::timeout(shared.timeout, attempt).await {
        Ok(Ok(result)) => return result,
        Ok(Err(e)) => e,
        Err(_) => (
            ErrorClass::Timeout,
            format!("no response within {:?}", shared.timeout),
        ),
    };
    *conn = None;
    shared.log_failure(result.0, &result.1);
    RequestResult::Error(result.0)
}

impl Shared {
    fn log_failure(&self, kind: ErrorClass, detail: &str) {
        let i = kind as usize;
        let first = !std::mem::replace(&mut lock(&self.logged)[i], true);
        if first {
            tracing::warn!(message = "Load request failed (first of its kind; later ones are counted, logged at debug).", kind = ?kind, %detail);
        } else {
            tracing::debug!(message = "Load request failed.", kind = ?kind, %detail);
        }
    }
}

/// Closed model: request → response → think time, until cancelled (the loop's future, with its
/// connection, is dropped then: one cancellation wait per worker, not per request).
async fn closed_worker(index: usize, shared: Arc<Shared>, cancel: CancellationToken) {
    tokio::select! {
        () = cancel.cancelled() => {}
        () = closed_loop(index, &shared) => {}
    }
}

async fn closed_loop(index: usize, shared: &Shared) {
    let auth = match shared.auth.len() {
        0 => None,
        n => shared.auth.get(index % n).cloned(),
    };
    let mut conn = None;
    let mut backoff = CONNECT_BACKOFF_MIN;
    loop {
        let sent = Instant::now();
        let result = request(shared, &mut conn, auth.as_ref()).await;
        let done = Instant::now();
        lock(&shared.recorder).record_closed(&Sample {
            intended: sent,
            sent,
            done,
            result,
        });
        let pause = match result {
            RequestResult::Error(ErrorClass::Connect | ErrorClass::Tls) => {
                let b = backoff;
                backoff = (backoff * 2).min(CONNECT_BACKOFF_MAX);
                b
            }
            _ => {
                backoff = CONNECT_BACKOFF_MIN;
                shared.think_time
            }
        };
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// Open model: take the oldest intended send time, send, measure from it; until cancelled.
async fn open_worker(index: usize, shared: Arc<Shared>, cancel: CancellationToken) {
    let auth = match shared.auth.len() {
        0 => None,
        n => shared.auth.get(index % n).cloned(),
    };
    let mut conn = None;
    loop {
        let intended = loop {
            if let Some(t) = lock(&shared.queue).pop_front() {
                break t;
            }
            shared.idle.fetch_add(1, Ordering::AcqRel);
            let woken = tokio::select! {
                () = cancel.cancelled() => false,
                () = shared.queued.notified() => true,
            };
            shared.idle.fetch_sub(1, Ordering::AcqRel);
            if !woken {
                return;
            }
        };
        let sent = Instant::now();
        let result = tokio::select! {
            () = cancel.cancelled() => return,
            r = request(&shared, &mut conn, auth.as_ref()) => r,
        };
        let done = Instant::now();
        lock(&shared.recorder).record(&Sample {
            intended,
            sent,
            done,
            result,
        });
    }
}
