//! `agent run`: responders, the controller session, the scheduler, the load runner and the
//! sinks in one process.
//!
//! [`RunApp::bind`] binds the responders and the stats server, works out the identity
//! (flags, then ECS metadata) and the advertised address; [`RunApp::run`] connects to the
//! controller and measures what it assigns until shutdown.
//!
//! Advertised host: `--advertise`, else the ECS task IP, else the responders' listen address if
//! specific, else the local address the kernel picks to reach the controller;
//! `--advertise-endpoint PROTO=HOST:PORT` replaces it for one protocol ([`super::advertise`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use meshlat_proto::backoff::Retries;
use meshlat_proto::pb;
use meshlat_proto::record::ControlMode;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::advertise::endpoints;
use super::config::RunConfig;
use super::session::{self, ControlConfig, Outputs};
use crate::app::{SHUTDOWN_GRACE, ServeApp, StartError};
use crate::config::{AgentIdentity, ServeConfig};
use crate::live::{SummarySink, SummaryWindow};
use crate::respond::ResponderAddrs;
use crate::scheduler::{JobSet, Scheduler};
use crate::sink::SinkSet;
use crate::sink::file::FileSink;
use crate::sink::firehose::FirehoseSink;
use crate::sink::stdout::StdoutSink;

/// A bound controller-driven agent.
#[derive(Debug)]
pub struct RunApp {
    cfg: RunConfig,
    serve: ServeApp,
    controller_keys: Option<watch::Sender<crate::respond::udp::ControllerKeys>>,
    firehose: Option<FirehoseSink>,
    identity: AgentIdentity,
    control: ControlConfig,
}

async fn detect_local_ip(host: &str, port: u16) -> Option<IpAddr> {
    let target = tokio::net::lookup_host((host, port)).await.ok()?.next()?;
    let bind: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = tokio::net::UdpSocket::bind(bind).await.ok()?;
    s.connect(target).await.ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

impl RunApp {
    /// Binds responders and the stats server and prepares the session.
    ///
    /// # Errors
    ///
    /// [`StartError`] naming what could not start.
    pub async fn bind(cfg: RunConfig) -> Result<Self, StartError> {
        crate::tls::install_crypto_provider();
        let mut identity = cfg.identity.clone();
        let ecs = match &cfg.ecs_metadata_uri {
            Some(uri) => super::ecs::fetch(uri).await,
            None => None,
        };
        if identity.az.is_none() {
            identity.az = ecs.as_ref().and_then(|e| e.az.clone());
        }
        // Without --key, the reflector accepts only the controller's mesh key, not the public
        // default one.
        let mut responders = cfg.responders.clone();
        responders
            .keys
            .retain(|k| *k != crate::probe::Key::default_key());
        // Server records go to this agent's sinks (see `run`), not to sinks of their own.
        let mut serve = ServeApp::bind(&ServeConfig {
            responders,
            identity: identity.clone(),
            file: None,
            firehose: None,
            emf: None,
            common: cfg.common.clone(),
        })
        .await?;
        let controller_keys = serve.accept_controller_keys();
        let advertise = match (&cfg.advertise, ecs.as_ref().and_then(|e| e.ipv4.clone())) {
            (Some(a), _) => a.clone(),
            (None, Some(ip)) => ip,
            (None, None) if !cfg.responders.listen.is_unspecified() => {
                cfg.responders.listen.to_string()
            }
            (None, None) => detect_local_ip(&cfg.controller_host, cfg.controller_port)
                .await
                .map_or_else(|| "127.0.0.1".to_string(), |ip| ip.to_string()),
        };
        let endpoints = endpoints(&serve.addrs(), &advertise, &cfg.advertise_endpoints);
        let advertised: Vec<String> = endpoints
            .iter()
            .filter_map(|e| {
                let p = pb::Protocol::try_from(e.protocol).ok()?;
                Some(format!(
                    "{}={}",
                    super::advertise::protocol_name(p),
                    e.address
                ))
            })
            .collect();
        let mut capabilities: Vec<String> = endpoints
            .iter()
            .filter_map(|e| pb::Protocol::try_from(e.protocol).ok())
            .map(|p| {
                p.as_str_name()
                    .trim_start_matches("PROTOCOL_")
                    .to_ascii_lowercase()
            })
            .collect();
        if cfg.responders.relay && serve.addrs().udp.is_some() {
            capabilities.push(meshlat_proto::grant::RELAY_CAPABILITY.into());
        }
        let hello = pb::Hello {
            agent_id: String::new(),
            region: identity.region.clone(),
            az: identity.az.clone().unwrap_or_default(),
            location: identity.location.clone().unwrap_or_default(),
            endpoints,
            capabilities,
            version: crate::VERSION.into(),
            certificate_request: Vec::new(),
        };
        let tls = if cfg.controller_tls {
            Some(Arc::new(
                super::pin::client_config(cfg.token.ca_sha256).map_err(StartError::ControlTls)?,
            ))
        } else {
            None
        };
        let key = cfg
            .responders
            .keys
            .first()
            .cloned()
            .unwrap_or_else(crate::probe::Key::default_key);
        // Identities are client certificates, so only over TLS.
        let own_identity = if cfg.controller_tls {
            Some(
                super::identity::Identity::load_or_create(cfg.state_dir.as_deref())
                    .map_err(StartError::Identity)?,
            )
        } else {
            None
        };
        let control = ControlConfig {
            host: cfg.controller_host.clone(),
            port: cfg.controller_port,
            tls,
            pin: cfg.token.ca_sha256,
            identity: own_identity,
            token: cfg.token.to_string(),
            hello,
            state_dir: cfg.state_dir.clone(),
            backoff: Retries::new(super::session::RECONNECT),
            key,
            summaries: None,
            load_limits: cfg.load,
            load_secrets: crate::load::secrets::LoadSecrets::new(cfg.load_secrets_endpoint.clone()),
            load: Some(crate::load::LoadReporter::new()),
        };
        let firehose = match &cfg.firehose {
            Some(f) => Some(FirehoseSink::start(f.clone()).await?),
            None => None,
        };
        tracing::info!(
            message = "Agent ready.",
            region = %identity.region,
            az = ?identity.az,
            advertise = %advertise,
            endpoints = %advertised.join(","),
        );
        Ok(RunApp {
            cfg,
            serve,
            controller_keys,
            firehose,
            identity,
            control,
        })
    }

    /// Bound responder addresses.
    pub fn addrs(&self) -> ResponderAddrs {
        self.serve.addrs()
    }

    /// Bound stats address.
    pub fn stats_addr(&self) -> Option<SocketAddr> {
        self.serve.stats_addr()
    }

    /// The queue of load seconds to the controller's live view: a load job's runner calls
    /// [`crate::load::LoadReporter::report`] on (a clone of) it for each second.
    pub fn load_reporter(&self) -> crate::load::LoadReporter {
        self.control.load.clone().unwrap_or_default()
    }

    /// Runs until `shutdown`, then drains the sinks.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut sinks = SinkSet::new();
        if let Some(f) = &self.cfg.file {
            sinks.add(FileSink::new(f.clone(), &self.identity.region));
        }
        if let Some(f) = self.firehose {
            sinks.add(f);
        }
        if let Some(e) = &self.cfg.emf {
            sinks.add(crate::sink::emf::EmfSink::new(
                e.clone(),
                &self.identity.region,
            ));
        }
        if self.cfg.file.is_none() && self.cfg.firehose.is_none() && self.cfg.emf.is_none() {
            sinks.add(StdoutSink::new(crate::cli::Format::Json));
        }
        let summaries = SummaryWindow::shared(crate::live::DEFAULT_WINDOW);
        sinks.add(SummarySink::new(summaries.clone()));
        let mut control = self.control;
        control.summaries = Some(summaries);
        // The load runner feeds the session's queue of seconds for the live view.
        let load_reporter = control.load.clone();
        let (jobs_tx, jobs_rx) = watch::channel(JobSet::default());
        let (loads_tx, loads_rx) = watch::channel(crate::load::job::LoadSet::default());
        let (mode_tx, mode_rx) = watch::channel(ControlMode::Static);
        // meshlat_control_mode follows the session's mode.
        let mut mode_watch = mode_rx.clone();
        crate::metrics::control_mode(*mode_watch.borrow_and_update());
        tokio::spawn(async move {
            while mode_watch.changed().await.is_ok() {
                crate::metrics::control_mode(*mode_watch.borrow_and_update());
            }
        });
        let (id_tx, mut id_rx) = watch::channel(None);
        // Server records (kind=serve / relay_serve) go to the same sinks as probe records; the
        // job set names their sources, and the agent id is filled in once the controller gave it.
        let (records_identity_tx, records_identity) = watch::channel(self.identity.clone());
        let records_cfg = self.serve.records_config();
        self.serve
            .write_records(crate::respond::tally::RecordsOutput {
                cfg: records_cfg,
                sinks: sinks.handle(),
                identity: records_identity,
                mode: mode_rx.clone(),
                jobs: Some(jobs_rx.clone()),
            });
        let serve = tokio::spawn(self.serve.run(shutdown.clone()));
        let control = tokio::spawn(session::run(
            control,
            Outputs {
                jobs: jobs_tx,
                loads: Some(loads_tx),
                mode: mode_tx,
                id: id_tx,
                keys: self.controller_keys,
            },
            shutdown.clone(),
        ));
        // Records carry the agent id, so the scheduler starts once it is known.
        let id = tokio::select! {
            () = shutdown.cancelled() => None,
            r = id_rx.wait_for(Option::is_some) => r.ok().and_then(|v| v.clone()),
        };
        if let Some(id) = id {
            let identity = AgentIdentity {
                agent_id: Some(id),
                ..self.identity
            };
            let _ = records_identity_tx.send(identity.clone());
            let mut load = crate::load::runner::LoadRunner::new(
                identity.clone(),
                sinks.handle(),
                mode_rx.clone(),
            );
            if let Some(reporter) = &load_reporter {
                load = load.with_reporter(reporter.clone());
            }
            tokio::join!(
                Scheduler::new(identity, sinks.handle(), mode_rx).run(jobs_rx, shutdown.clone()),
                load.run(loads_rx, shutdown.clone()),
            );
        }
        shutdown.cancelled().await;
        let _ = control.await;
        let _ = serve.await;
        sinks.close(SHUTDOWN_GRACE).await;
    }
}
