//! Binding and running the agent's commands (STYLE §1: `bind` opens every listener, `run` serves
//! until shutdown). `main.rs` only parses, configures logging and calls into here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshlat_proto::record::{ControlMode, Kind, Protocol};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminServer;
use crate::config::{CommonConfig, ProbeConfig, ServeConfig};
use crate::probe::{ProbeRunner, ProbeSpec};
use crate::respond::{ResponderAddrs, Responders};
use crate::scheduler::{Job, JobSet, JobTarget, PeerInfo, RunSummary, Scheduler};
use crate::sink::SinkSet;
use crate::sink::file::FileSink;
use crate::sink::firehose::{FirehoseSink, FirehoseStartError};
use crate::sink::stdout::StdoutSink;

/// How long sinks get to drain at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Job id of records measured by `agent probe`.
pub const STANDALONE_JOB: &str = "standalone";

/// A startup failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A responder could not bind.
    #[error(transparent)]
    Bind(#[from] crate::respond::BindError),
    /// The stats server could not bind.
    #[error("stats server on {addr}: {source}")]
    Stats {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A probe could not be set up.
    #[error("{target}: {source}")]
    Probe {
        /// First target of the protocol group.
        target: String,
        /// Cause.
        #[source]
        source: crate::probe::ProbeSetupError,
    },
    /// The Firehose sink could not start.
    #[error("firehose sink: {0}")]
    Firehose(#[from] FirehoseStartError),
    /// TLS to the controller could not be set up.
    #[error("controller TLS: {0}")]
    ControlTls(rustls::Error),
    /// The agent's key (`--state-dir`) could not be read or made.
    #[error("agent identity: {0}")]
    Identity(crate::control::identity::IdentityFileError),
}

/// Binds the stats server (if `-s PORT`) on `--stats-listen` (the command's `--listen` where it
/// has one, else 0.0.0.0).
async fn bind_admin(common: &CommonConfig) -> Result<Option<AdminServer>, StartError> {
    crate::metrics::set_max_pairs(common.metrics_max_pairs);
    match common.stats_port {
        Some(p) => {
            let ip = common
                .stats_listen
                .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
            let addr = SocketAddr::new(ip, p);
            let s = AdminServer::bind(addr, common.limits)
                .await
                .map_err(|source| StartError::Stats { addr, source })?;
            tracing::info!(message = "Stats server listening.", addr = %s.local_addr());
            Ok(Some(s))
        }
        None => Ok(None),
    }
}

/// `agent serve`, bound.
#[derive(Debug)]
pub struct ServeApp {
    responders: Responders,
    admin: Option<AdminServer>,
    /// Who this server is, in server records.
    identity: crate::config::AgentIdentity,
    /// File sink of server records.
    file: Option<crate::sink::file::FileSinkConfig>,
    /// Firehose sink of server records (started at bind, so a bad stream fails early).
    firehose: Option<FirehoseSink>,
    /// `--emf`: the heartbeat lines.
    emf: Option<crate::sink::emf::EmfConfig>,
    /// Interval and source bound of server records.
    records: crate::respond::tally::RecordsConfig,
}

impl ServeApp {
    /// Binds every responder and the stats server.
    ///
    /// # Errors
    ///
    /// [`StartError`] naming what could not bind.
    pub async fn bind(cfg: &ServeConfig) -> Result<Self, StartError> {
        crate::tls::install_crypto_provider();
        let responders = Responders::bind(&cfg.responders).await?;
        let admin = bind_admin(&cfg.common).await?;
        let firehose = match &cfg.firehose {
            Some(f) => Some(FirehoseSink::start(f.clone()).await?),
            None => None,
        };
        Ok(ServeApp {
            responders,
            admin,
            identity: cfg.identity.clone(),
            file: cfg.file.clone(),
            firehose,
            emf: cfg.emf.clone(),
            records: cfg.responders.records.clone(),
        })
    }

    /// Writes server records to `out` (`agent run` passes its own sinks; see
    /// [`crate::respond::tally`]).
    pub fn write_records(&mut self, out: crate::respond::tally::RecordsOutput) {
        self.responders.write_records(out);
    }

    /// Interval and source bound of server records (`--serve-interval`,
    /// `--serve-max-sources`).
    pub fn records_config(&self) -> crate::respond::tally::RecordsConfig {
        self.records.clone()
    }

    /// Bound responder addresses.
    pub fn addrs(&self) -> ResponderAddrs {
        self.responders.addrs()
    }

    /// See [`Responders::accept_controller_keys`].
    pub fn accept_controller_keys(
        &mut self,
    ) -> Option<tokio::sync::watch::Sender<crate::respond::udp::ControllerKeys>> {
        self.responders.accept_controller_keys()
    }

    /// Bound stats address.
    pub fn stats_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// Serves until `shutdown` is cancelled. With a file or Firehose sink, writes server
    /// records to it, the last interval's after the responders stopped, then drains the sinks.
    pub async fn run(mut self, shutdown: CancellationToken) {
        if let Some(a) = self.admin {
            tokio::spawn(a.run(shutdown.clone()));
        }
        let mut sinks = None;
        if self.file.is_some() || self.firehose.is_some() || self.emf.is_some() {
            let mut set = SinkSet::new();
            if let Some(e) = self.emf.take() {
                set.add(crate::sink::emf::EmfSink::new(e, &self.identity.region));
            }
            if let Some(f) = &self.file {
                set.add(FileSink::new(f.clone(), &self.identity.region));
            }
            if let Some(f) = self.firehose.take() {
                set.add(f);
            }
            // The receivers keep the last value after their senders are gone.
            let (_, identity) = watch::channel(self.identity.clone());
            let (_, mode) = watch::channel(ControlMode::Standalone);
            self.responders
                .write_records(crate::respond::tally::RecordsOutput {
                    cfg: self.records.clone(),
                    sinks: set.handle(),
                    identity,
                    mode,
                    jobs: None,
                });
            sinks = Some(set);
        }
        self.responders.run(shutdown).await;
        if let Some(set) = sinks {
            set.close(SHUTDOWN_GRACE).await;
        }
    }
}

/// Lines announcing bound addresses (`listening <proto> <addr>`), for people and test harnesses.
pub fn listening_lines(addrs: &ResponderAddrs, stats: Option<SocketAddr>) -> Vec<String> {
    let mut v = Vec::new();
    for (name, a) in [
        ("udp", addrs.udp),
        ("tcp", addrs.tcp),
        ("quic", addrs.quic),
        ("http", addrs.http),
        ("https", addrs.https),
        ("stats", stats),
    ] {
        if let Some(a) = a {
            v.push(format!("listening {name} {a}"));
        }
    }
    v
}

/// `agent probe`, ready to run.
#[derive(Debug)]
pub struct ProbeApp {
    cfg: ProbeConfig,
    jobs: Vec<Arc<Job>>,
    admin: Option<AdminServer>,
    firehose: Option<FirehoseSink>,
}

/// The outcome of `agent probe`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeExit {
    /// Every measurement succeeded.
    AllOk,
    /// Some failed.
    SomeFailed,
}

impl From<ProbeExit> for meshlat_runtime::Exit {
    fn from(e: ProbeExit) -> Self {
        match e {
            ProbeExit::AllOk => meshlat_runtime::Exit::Success,
            ProbeExit::SomeFailed => meshlat_runtime::Exit::Failure,
        }
    }
}

impl ProbeApp {
    /// Checks every target's probe can be set up and binds the stats server.
    ///
    /// # Errors
    ///
    /// [`StartError`] for unusable probe settings or a stats port in use.
    pub async fn bind(cfg: ProbeConfig) -> Result<Self, StartError> {
        for warning in &cfg.deprecations {
            tracing::warn!(message = "Deprecated flag.", %warning);
        }
        crate::tls::install_crypto_provider();
        // One job per protocol: each job's spec carries its protocol.
        // Relay targets (`relay://R/B`) are udp but their own job, so records say kind=relay.
        let mut protocols: Vec<(Protocol, bool)> = cfg
            .targets
            .iter()
            .map(|t| (t.protocol, t.relay.is_some()))
            .collect();
        protocols.sort();
        protocols.dedup();
        let mut jobs = Vec::new();
        for (version, (p, relay)) in protocols.into_iter().enumerate() {
            let targets: Vec<JobTarget> = cfg
                .targets
                .iter()
                .filter(|t| t.protocol == p && t.relay.is_some() == relay)
                .map(|t| JobTarget {
                    target: t.clone(),
                    dst: PeerInfo::default(),
                    relay: PeerInfo::default(),
                })
                .collect();
            let spec = ProbeSpec {
                protocol: p,
                ..cfg.spec.clone()
            };
            if let Err(source) = ProbeRunner::new(&spec) {
                return Err(StartError::Probe {
                    target: targets[0].target.raw.clone(),
                    source,
                });
            }
            jobs.push(Arc::new(Job {
                id: STANDALONE_JOB.into(),
                version: version as u64,
                kind: if relay { Kind::Relay } else { Kind::Probe },
                spec,
                targets,
                interval: cfg.interval,
                count: cfg.count,
                spread_start: false,
            }));
        }
        let admin = bind_admin(&cfg.common).await?;
        // Started here so a bad region or spool directory fails before measuring; replay of
        // spooled batches begins at once.
        let firehose = match &cfg.firehose {
            Some(f) => Some(FirehoseSink::start(f.clone()).await?),
            None => None,
        };
        Ok(ProbeApp {
            cfg,
            jobs,
            admin,
            firehose,
        })
    }

    /// Bound stats address.
    pub fn stats_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// Measures until the count is reached or `shutdown` fires; then drains the sinks.
    pub async fn run(self, shutdown: CancellationToken) -> (ProbeExit, RunSummary) {
        if let Some(a) = self.admin {
            tokio::spawn(a.run(shutdown.clone()));
        }
        let mut sinks = SinkSet::new();
        let mut targets: Vec<&str> = self.cfg.targets.iter().map(|t| t.raw.as_str()).collect();
        targets.sort_unstable();
        targets.dedup();
        // One block per target when blocks end (-n N); with -n 0 lines print as they come.
        sinks.add(match self.cfg.count {
            Some(_) => StdoutSink::for_targets(self.cfg.format, targets.len()),
            None => StdoutSink::new(self.cfg.format),
        });
        if let Some(f) = &self.cfg.file {
            sinks.add(FileSink::new(f.clone(), &self.cfg.identity.region));
        }
        if let Some(f) = self.firehose {
            sinks.add(f);
        }
        if let Some(e) = &self.cfg.emf {
            sinks.add(crate::sink::emf::EmfSink::new(
                e.clone(),
                &self.cfg.identity.region,
            ));
        }
        let (_mode_tx, mode_rx) = watch::channel(ControlMode::Standalone);
        crate::metrics::control_mode(ControlMode::Standalone);
        let (jobs_tx, jobs_rx) = watch::channel(JobSet {
            generation: 0,
            jobs: self.jobs,
        });
        // A fixed job set: dropping the sender lets the scheduler return when every pair is done.
        drop(jobs_tx);
        // Without --location / REP_LOCATION, src_location is the local address (perftest).
        let summary = Scheduler::new(self.cfg.identity.clone(), sinks.handle(), mode_rx)
            .with_local_addr_location()
            .run(jobs_rx, shutdown)
            .await;
        sinks.close(SHUTDOWN_GRACE).await;
        let exit = if summary.failed == 0 && summary.setup_errors == 0 {
            ProbeExit::AllOk
        } else {
            ProbeExit::SomeFailed
        };
        (exit, summary)
    }
}
