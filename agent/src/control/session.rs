//! The controller session: one task owns the connection, reconnects with a jittered exponential
//! backoff, turns received job sets into the scheduler's and the load runner's `watch` channels
//! and keeps the control mode ([`super::failstatic`]) up to date (STYLE §9, linkerd
//! `tonic-watch`). Load jobs of a job set resumed from `--state-dir` are not started: load runs
//! only while the controller can stop it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meshlat_proto::backoff::{Backoff, Retries};
use meshlat_proto::pb;
use meshlat_proto::pb::agent_message::Msg;
use meshlat_proto::pb::controller_message::Msg as In;
use meshlat_proto::record::ControlMode;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::failstatic::FailStatic;
use crate::probe::Key;
use crate::scheduler::JobSet;

/// Reconnect delays of `agent run`: from 500 ms up to 30 s, jittered.
pub const RECONNECT: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

/// Heartbeat interval.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// File in `--state-dir` holding the agent id.
pub const ID_FILE: &str = "agent-id";

/// Where and how to reach the controller.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Controller host.
    pub host: String,
    /// Controller port.
    pub port: u16,
    /// TLS (pinned); `None` for http:// controllers.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The CA pin of the join token.
    pub pin: [u8; 32],
    /// The agent's key and certificate (`None` for http:// controllers: no identities without
    /// TLS).
    pub identity: Option<super::identity::Identity>,
    /// The join token, sent as `authorization: Bearer <token>`.
    pub token: String,
    /// Hello fields (the id is filled from the state file).
    pub hello: pb::Hello,
    /// The state directory (`None`: `--no-state-dir`; the id, certificate and job set live in
    /// memory only).
    pub state_dir: Option<PathBuf>,
    /// Reconnect delays ([`RECONNECT`] in `agent run`).
    pub backoff: Retries,
    /// Key for UDP probes.
    pub key: Key,
    /// Rolling summaries sent every [`crate::live::SUMMARY_INTERVAL`] (`None`: none sent).
    pub summaries: Option<crate::live::SharedSummaries>,
    /// The agent's caps on load jobs (`--load-max-connections`, `--load-max-rate`).
    pub load_limits: crate::load::job::LoadLimits,
    /// Reads load jobs' credentials from Secrets Manager, and keeps what it read.
    pub load_secrets: crate::load::secrets::LoadSecrets,
    /// Load seconds queued for the controller's live view, sent as soon as they are queued
    /// (`None`: none sent).
    pub load: Option<crate::load::LoadReporter>,
}

/// A session failure (reconnected after a backoff).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Could not connect.
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The controller refused or the stream broke.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The stream closed.
    #[error("the controller closed the session")]
    Closed,
    /// The controller answered with something unexpected.
    #[error("protocol: {0}")]
    Protocol(&'static str),
}

/// Reads the stored agent id.
pub fn load_id(dir: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(dir.join(ID_FILE))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Stores the agent id (mode 0600, replaced atomically and durably).
///
/// # Errors
///
/// The I/O error.
pub fn store_id(dir: &std::path::Path, id: &str) -> std::io::Result<()> {
    super::state::write_private(dir, ID_FILE, format!("{id}\n").as_bytes())
}

/// Channels the session drives.
#[derive(Debug)]
pub struct Outputs {
    /// The scheduler's job set.
    pub jobs: watch::Sender<JobSet>,
    /// The load runner's tasks (load jobs); `None`: load jobs are refused.
    pub loads: Option<watch::Sender<crate::load::job::LoadSet>>,
    /// The control mode records are marked with.
    pub mode: watch::Sender<ControlMode>,
    /// The agent id, once known.
    pub id: watch::Sender<Option<String>>,
    /// Keys the UDP reflector accepts from the controller (None without a UDP reflector).
    pub keys: Option<watch::Sender<crate::respond::udp::ControllerKeys>>,
}

/// The keys a job set tells the reflector to accept: the wire keys, and the grant public keys
/// (malformed ones, not 32 bytes, are skipped: a relay trusts only well-formed keys).
fn controller_keys(set: &pb::JobSet) -> crate::respond::udp::ControllerKeys {
    crate::respond::udp::ControllerKeys {
        wire: set
            .accept_keys
            .iter()
            .filter_map(|k| std::str::from_utf8(k).ok().filter(|k| !k.is_empty()))
            .map(Key::from_secret)
            .collect(),
        grant: set
            .grant_public_keys
            .iter()
            .filter_map(|k| meshlat_proto::grant::GrantPublicKey::from_bytes(k).ok())
            .collect(),
    }
}

/// Runs sessions until `shutdown`.
pub async fn run(mut cfg: ControlConfig, out: Outputs, shutdown: CancellationToken) {
    let mut fs = FailStatic::default();
    if let Some(id) = cfg.state_dir.as_deref().and_then(load_id) {
        cfg.hello.agent_id = id.clone();
        // The last job set (with its keys) runs until the controller sends a new one: a restart
        // while the controller is away keeps measuring, `static` then `degraded`.
        if let Some(set) = cfg
            .state_dir
            .as_deref()
            .and_then(super::state::load_job_set)
        {
            fs.resumed(Duration::from_millis(set.lease_ms), Instant::now());
            apply_job_set(&cfg, &out, &set, Resume::Stored, &Default::default());
            tracing::info!(message = "Resuming the stored job set until the controller answers.", generation = set.generation, mode = ?fs.mode(Instant::now()));
            let _ = out.mode.send(fs.mode(Instant::now()));
        }
        let _ = out.id.send(Some(id));
    }
    super::status::started(cfg.state_dir.as_deref().and_then(load_id));
    loop {
        let res = tokio::select! {
            () = shutdown.cancelled() => return,
            r = session(&mut cfg, &out, &mut fs) => r,
        };
        fs.lost(Instant::now());
        let mode = fs.mode(Instant::now());
        let _ = out.mode.send(mode);
        let delay = cfg.backoff.next_delay(rand::random::<f64>());
        let refusal = match &res {
            Err(SessionError::Status(s)) if super::status::is_refusal(s) => Some(s),
            _ => None,
        };
        super::status::lost(refusal);
        match &res {
            Err(SessionError::Status(s)) if s.code() == tonic::Code::Unauthenticated => {
                tracing::error!(message = "Controller refused the join token or the agent certificate.", status = %s.message(), retry_in = ?delay);
            }
            Err(SessionError::Status(s))
                if matches!(
                    s.code(),
                    tonic::Code::PermissionDenied | tonic::Code::FailedPrecondition
                ) =>
            {
                tracing::error!(message = "Controller refused this agent.", code = ?s.code(), status = %s.message(), retry_in = ?delay);
            }
            Err(SessionError::Status(s)) if refusal.is_some() => {
                tracing::error!(message = "Controller refused this agent.", code = ?s.code(), reason = %s.message(), retry_in = ?delay);
            }
            Err(error) => {
                tracing::warn!(message = "Controller session lost.", %error, ?mode, retry_in = ?delay)
            }
            Ok(()) => {}
        }
        let wake = Instant::now() + delay;
        loop {
            let deadline = fs.deadline().filter(|d| *d > Instant::now());
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(wake) => break,
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let mode = fs.mode(Instant::now());
                    tracing::warn!(message = "Job-set lease expired; measuring on, degraded.", ?mode);
                    let _ = out.mode.send(mode);
                }
            }
        }
    }
}

/// Where a job set comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resume {
    /// The controller, now.
    Controller,
    /// `--state-dir`, at start-up while the controller is away: its load jobs are not
    /// started (load runs only while the controller can stop it).
    Stored,
}

/// Hands a job set to the reflector (its keys), the scheduler (its probe and relay jobs) and
/// the load runner (its load jobs); returns the jobs refused, with the reason.
fn apply_job_set(
    cfg: &ControlConfig,
    out: &Outputs,
    set: &pb::JobSet,
    from: Resume,
    secrets: &crate::load::secrets::ResolvedSecrets,
) -> std::collections::BTreeMap<String, String> {
    if let Some(tx) = &out.keys {
        let keys = controller_keys(set);
        tx.send_if_modified(|k| {
            let changed = *k != keys;
            *k = keys;
            changed
        });
    }
    let (jobs, mut rejected) = super::convert::job_set(set, &cfg.key);
    let (loads, load_rejected) = crate::load::job::load_set(set, &cfg.load_limits, secrets);
    let load_tasks = loads.tasks.len();
    match &out.loads {
        Some(tx) if from == Resume::Controller => {
            rejected.extend(load_rejected);
            let _ = tx.send(loads);
        }
        Some(_) => {}
        None => {
            for id in load_rejected
                .into_keys()
                .chain(loads.tasks.iter().map(|t| t.job_id.clone()))
            {
                rejected.insert(id, "this agent does not run load jobs".into());
            }
        }
    }
    tracing::info!(
        message = "Job set applied.",
        generation = set.generation,
        jobs = jobs.jobs.len(),
        load_tasks,
        rejected = rejected.len()
    );
    let _ = out.jobs.send(jobs);
    rejected
}

fn msg(m: Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(m) }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn session(
    cfg: &mut ControlConfig,
    out: &Outputs,
    fs: &mut FailStatic,
) -> Result<(), SessionError> {
    // With a valid certificate the session presents it (mTLS) instead of the join token, and
    // asks for a new one (same key) once it is due for renewal; without one it asks for one.
    let now = std::time::SystemTime::now();
    let (tls, present, request) = match &cfg.identity {
        Some(identity) => {
            let usable = identity.usable(&cfg.pin, &cfg.hello.agent_id, now);
            let tls = match usable {
                Some(c) => Some(identity.client_config(cfg.pin, c).map_err(|e| {
                    tracing::error!(message = "Cannot use the agent certificate.", error = %e);
                    SessionError::Protocol("the agent certificate is not usable")
                })?),
                None => cfg.tls.clone(),
            };
            let due = usable.is_none_or(|c| unix_ms() / 1000 >= super::identity::renew_at(c));
            let request = if due {
                Some(identity.request().map_err(|e| {
                    tracing::error!(message = "Cannot make a certificate request.", error = %e);
                    SessionError::Protocol("cannot make a certificate request")
                })?)
            } else {
                None
            };
            (tls, usable.is_some(), request)
        }
        None => (cfg.tls.clone(), false, None),
    };
    let channel = super::pin::connect(cfg.host.clone(), cfg.port, tls).await?;
    let auth: Option<tonic::metadata::MetadataValue<_>> = if present {
        None
    } else {
        Some(
            format!("Bearer {}", cfg.token)
                .parse()
                .map_err(|_| SessionError::Protocol("the token is not a valid header value"))?,
        )
    };
    let mut client = pb::agent_service_client::AgentServiceClient::with_interceptor(
        channel,
        move |mut req: tonic::Request<()>| {
            if let Some(a) = &auth {
                req.metadata_mut().insert("authorization", a.clone());
            }
            Ok(req)
        },
    );
    let (tx, rx) = mpsc::channel(16);
    let requested = request.is_some();
    let hello = pb::Hello {
        certificate_request: request.unwrap_or_default(),
        ..cfg.hello.clone()
    };
    let _ = tx.send(msg(Msg::Hello(hello))).await;
    let mut inbound = client
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut summary_tick = tokio::time::interval(crate::live::SUMMARY_INTERVAL);
    summary_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut generation = 0;
    let load = cfg.load.clone();
    // When to reconnect for a new certificate (set once welcomed).
    let mut renew: Option<Instant> = None;
    loop {
        tokio::select! {
            () = async {
                match renew {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                tracing::info!(message = "Agent certificate due for renewal; reconnecting for a new one.");
                return Ok(());
            }
            m = inbound.message() => {
                let Some(m) = m? else { return Err(SessionError::Closed) };
                match m.msg {
                    Some(In::Welcome(w)) => {
                        if !cfg.hello.agent_id.is_empty() && cfg.hello.agent_id != w.agent_id {
                            tracing::error!(message = "Controller assigned a different agent id; keeping ours for records.", ours = %cfg.hello.agent_id, theirs = %w.agent_id);
                        } else if cfg.hello.agent_id.is_empty() {
                            if let Some(Err(error)) = cfg.state_dir.as_deref().map(|d| store_id(d, &w.agent_id)) {
                                tracing::error!(message = "Cannot store the agent id; a restart will register anew.", dir = ?cfg.state_dir, %error);
                            }
                            cfg.hello.agent_id = w.agent_id.clone();
                            let _ = out.id.send(Some(w.agent_id.clone()));
                        }
                        let issued = w.certificate.is_some();
                        if let (Some(c), Some(identity)) = (w.certificate, cfg.identity.as_mut()) {
                            if c.agent_id != cfg.hello.agent_id || c.ca_sha256 != cfg.pin[..] {
                                tracing::error!(message = "The controller issued a certificate for another id or CA; ignored.", cert_agent = %c.agent_id);
                            } else {
                                tracing::info!(message = "Agent certificate received; later sessions present it instead of the join token.", agent = %c.agent_id, not_after_unix = c.not_after_unix);
                                if let Err(error) = identity.store(c) {
                                    tracing::error!(message = "Cannot store the agent certificate; a restart will need the join token.", dir = ?cfg.state_dir, %error);
                                }
                            }
                        }
                        // A controller that ignored the request (older, or --plaintext) is not
                        // asked again in this session.
                        renew = match &cfg.identity {
                            Some(identity) if issued || !requested => identity
                                .usable(&cfg.pin, &cfg.hello.agent_id, std::time::SystemTime::now())
                                .map(|c| {
                                    let wait = super::identity::renew_at(c).saturating_sub(unix_ms() / 1000).max(0);
                                    Instant::now() + Duration::from_secs(u64::try_from(wait).unwrap_or(0))
                                }),
                            _ => None,
                        };
                        tracing::info!(message = "Connected to the controller.", agent = %w.agent_id, controller_region = %w.controller_region, identity = if present { "certificate" } else { "join token" });
                        super::status::connected(&w.agent_id);
                        if !w.relay_refused.is_empty() {
                            tracing::warn!(message = "This agent runs with --relay, but the controller does not use it as a relay; it relays nothing.", reason = %w.relay_refused);
                        }
                        fs.connected();
                        cfg.backoff.reset();
                        let _ = out.mode.send(fs.mode(Instant::now()));
                    }
                    Some(In::JobSet(set)) => {
                        fs.lease(Duration::from_millis(set.lease_ms));
                        // Secrets Manager credentials of new load jobs are read first (up to
                        // FETCH_TIMEOUT each), so a secret that cannot be read refuses its job
                        // in this ack.
                        let secrets = cfg.load_secrets.resolve(&set).await;
                        let rejected = apply_job_set(cfg, out, &set, Resume::Controller, &secrets);
                        generation = set.generation;
                        if let Some(Err(error)) = cfg.state_dir.as_deref().map(|d| super::state::store_job_set(d, &set)) {
                            tracing::warn!(message = "Cannot store the job set; a restart without the controller will measure nothing.", dir = ?cfg.state_dir, %error);
                        }
                        let ack = pb::JobAck { generation, rejected: rejected.into_iter().collect() };
                        if tx.send(msg(Msg::Ack(ack))).await.is_err() {
                            return Err(SessionError::Closed);
                        }
                    }
                    None => return Err(SessionError::Protocol("empty controller message")),
                }
            }
            _ = heartbeat.tick() => {
                let hb = pb::Heartbeat { unix_ms: unix_ms(), generation };
                if tx.send(msg(Msg::Heartbeat(hb))).await.is_err() {
                    return Err(SessionError::Closed);
                }
            }
            () = async {
                match &load {
                    Some(l) => l.ready().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(l) = &load {
                    let batch = l.take_batch();
                    if !batch.reports.is_empty()
                        && let Err(mpsc::error::SendError(m)) = tx.send(msg(Msg::LoadReports(batch))).await
                    {
                        // Kept for the next session (within the queue's bound).
                        if let Some(Msg::LoadReports(b)) = m.msg {
                            l.put_back(b);
                        }
                        return Err(SessionError::Closed);
                    }
                }
            }
            _ = summary_tick.tick(), if cfg.summaries.is_some() => {
                let pairs = cfg.summaries.as_ref().map(|w| {
                    w.lock().unwrap_or_else(|e| e.into_inner()).snapshot(Instant::now())
                }).unwrap_or_default();
                if !pairs.is_empty() && tx.send(msg(Msg::Summaries(pb::Summaries { pairs }))).await.is_err() {
                    return Err(SessionError::Closed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ControlConfig {
        ControlConfig {
            host: "127.0.0.1".into(),
            port: 7400,
            tls: None,
            pin: [0; 32],
            identity: None,
            token: String::new(),
            hello: pb::Hello::default(),
            state_dir: None,
            backoff: Retries::new(RECONNECT),
            key: Key::default_key(),
            summaries: None,
            load_limits: crate::load::job::LoadLimits::default(),
            load_secrets: crate::load::secrets::LoadSecrets::new(None),
            load: None,
        }
    }

    fn load_set_of(generation: u64) -> pb::JobSet {
        let url = "http://127.0.0.1:9/";
        pb::JobSet {
            generation,
            assignments: vec![pb::Assignment {
                job: Some(pb::Job {
                    id: "lj".into(),
                    version: 1,
                    spec: Some(pb::JobSpec {
                        kind: pb::JobKind::Load as i32,
                        protocols: vec![pb::Protocol::Http as i32],
                        sources: vec![pb::Endpoint {
                            endpoint: Some(pb::endpoint::Endpoint::Selector("region=a".into())),
                        }],
                        targets: vec![pb::Endpoint {
                            endpoint: Some(pb::endpoint::Endpoint::Url(url.into())),
                        }],
                        duration_ms: 10_000,
                        timeout_ms: 1_000,
                        load: Some(pb::LoadSpec {
                            model: pb::LoadModel::Closed as i32,
                            start: 1.0,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                targets: vec![pb::AssignedTarget {
                    target: url.into(),
                    ..Default::default()
                }],
                key: Vec::new(),
                load_share_agents: 0,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn load_jobs_go_to_the_runner_but_not_from_the_stored_set() {
        let (jobs, _) = watch::channel(JobSet::default());
        let (loads, loads_rx) = watch::channel(crate::load::job::LoadSet::default());
        let (mode, _) = watch::channel(ControlMode::Static);
        let (id, _) = watch::channel(None);
        let out = Outputs {
            jobs,
            loads: Some(loads),
            mode,
            id,
            keys: None,
        };
        let cfg = config();
        // Resumed from --state-dir without the controller: no load.
        let rejected = apply_job_set(
            &cfg,
            &out,
            &load_set_of(1),
            Resume::Stored,
            &Default::default(),
        );
        assert!(rejected.is_empty(), "{rejected:?}");
        assert!(loads_rx.borrow().tasks.is_empty());
        // From the controller: the runner gets the task.
        let rejected = apply_job_set(
            &cfg,
            &out,
            &load_set_of(2),
            Resume::Controller,
            &Default::default(),
        );
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(loads_rx.borrow().tasks.len(), 1);
        assert_eq!(loads_rx.borrow().generation, 2);
        // Without a runner, load jobs are refused in the ack.
        let out = Outputs { loads: None, ..out };
        let rejected = apply_job_set(
            &cfg,
            &out,
            &load_set_of(3),
            Resume::Controller,
            &Default::default(),
        );
        assert_eq!(rejected["lj"], "this agent does not run load jobs");
    }

    #[test]
    fn id_file_round_trip() {
        let dir = std::env::temp_dir().join(format!("meshlat-id-{}", uuid::Uuid::now_v7()));
        assert_eq!(load_id(&dir), None);
        store_id(&dir, "agent-1").expect("store");
        assert_eq!(load_id(&dir).as_deref(), Some("agent-1"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
