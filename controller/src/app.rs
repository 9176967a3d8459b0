//! Binding and running the controller (STYLE §1): [`Controller::bind`] opens every listener and
//! loads state; [`Controller::run`] serves until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshlat_guard::stats::StatsServer;
use meshlat_guard::{GrpcReject, GuardedListener, RateLimitLayer, RateLimiter, Tracker};
use meshlat_proto::pb::federation_service_server::FederationServiceServer;
use meshlat_proto::pb::operator_service_server::OperatorServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, Credentials, NewSecrets, TlsMaterial};
use crate::config::ServeConfig;
use crate::grpc;
use crate::keys::MeshKeys;
use crate::registry::{Registry, RegistryConfig};
use crate::rest::Rest;
use crate::store::mirror::{Mirror, MirroredStore};
use crate::store::s3::S3Objects;
use crate::store::{FileStore, StateStore, StoreError};

/// How often agent liveness is re-evaluated.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How long connections get to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Relay grants are valid one to two of these (and never less than the lease).
pub const GRANT_EPOCH: Duration = Duration::from_secs(3600);

/// A start-up failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The data directory is unusable.
    #[error("--data-dir {path}: {source}")]
    DataDir {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Credentials or certificates.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// The state store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not bind.
    #[error("{flag} {addr}: {source}")]
    Bind {
        /// Flag.
        flag: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// TLS configuration.
    #[error("TLS: {0}")]
    Tls(String),
    /// The join token or CA certificate could not be published (`--*-secret-arn`).
    #[error(transparent)]
    Publish(#[from] crate::publish::PublishError),
    /// A `--peer-ca` file is unreadable.
    #[error("--peer-ca {path}: {source}")]
    PeerCa {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A serving failure.
#[derive(Debug, thiserror::Error)]
#[error("gRPC server: {0}")]
pub struct RunError(#[from] tonic::transport::Error);

/// A bound controller.
#[derive(Debug)]
pub struct Controller {
    cfg: ServeConfig,
    grpc: TcpListener,
    rest: Option<TcpListener>,
    /// The stats server (`--stats-port`).
    stats: Option<StatsServer>,
    registry: Arc<Registry>,
    creds: Arc<Credentials>,
    tls: TlsMaterial,
    /// Server TLS for gRPC (ALPN h2) and REST (ALPN http/1.1); `None` with `--plaintext`.
    server_tls: Option<(Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>)>,
    /// Issues and checks agent certificates (`None` with `--plaintext`).
    agent_ca: Option<Arc<crate::identity::AgentCa>>,
    new_secrets: Option<NewSecrets>,
    /// `first-start-secrets`, when this start generated secrets.
    secrets_file: Option<std::path::PathBuf>,
    peer_ca_pem: Vec<u8>,
    /// The S3 mirror of the data directory, whose uploader [`Controller::run`] drives.
    mirror: Option<Arc<Mirror<S3Objects>>>,
}

impl Controller {
    /// Loads (or creates) the CA, credentials and state, and binds the listeners.
    ///
    /// # Errors
    ///
    /// [`StartError`] naming the flag or file at fault.
    pub async fn bind(cfg: ServeConfig) -> Result<Self, StartError> {
        // The metrics' clock starts now (peers never exchanged with count from here).
        let _ = crate::metrics::get();
        // One rustls provider for the process (ring), before any TLS use.
        let _ = rustls::crypto::ring::default_provider().install_default();
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| StartError::DataDir {
            path: cfg.data_dir.display().to_string(),
            source,
        })?;
        // With a state bucket, the bucket's copy of the data directory wins (a replaced task
        // starts empty), before anything below reads it.
        let mirror = match &cfg.state {
            Some(s) => {
                let api = S3Objects::new(s).await.map_err(StoreError::from)?;
                let m = Mirror::new(api, &cfg.data_dir);
                m.restore().await?;
                Some(Arc::new(m))
            }
            None => None,
        };
        let tls = auth::load_or_create_tls(&cfg.data_dir, &cfg.sans)?;
        let (creds, new_secrets) = Credentials::load_or_create(&cfg.data_dir, &cfg.seeds)?;
        let creds = Arc::new(creds);
        creds.set_token_pin(tls.ca_sha256);
        if let Some(m) = &mirror {
            // Credentials added, revoked or rotated by a seed reach the bucket too.
            let m = m.clone();
            creds.set_save_hook(Arc::new(move |bytes| {
                m.enqueue(auth::CREDENTIALS_FILE, bytes)
            }));
        }
        // Made before the bucket is filled, so it is mirrored with the CA.
        let grant_signer = crate::keys::load_or_create_grant_signer(&cfg.data_dir)?;
        let file = FileStore::open(&cfg.data_dir)?;
        let store: Arc<dyn StateStore> = match &mirror {
            Some(m) => {
                // A CA made now must be in the bucket before its join token is written out.
                m.publish_missing().await?;
                // A seed applied now (rotation) replaces the bucket's copy.
                m.enqueue(auth::CREDENTIALS_FILE, creds.file_bytes());
                Arc::new(MirroredStore::new(file, m.clone()))
            }
            None => Arc::new(file),
        };
        // Written once the CA is in the bucket (with one): the token in it pins that CA.
        let secrets_file = match &new_secrets {
            Some(s) => Some(s.write(&cfg.data_dir, tls.ca_sha256)?),
            None => None,
        };
        // After the CA is in the bucket (with one): the token pins it.
        if let Some(p) = &cfg.publish {
            let ca_pem =
                std::fs::read_to_string(&tls.ca_path).map_err(|source| StartError::DataDir {
                    path: tls.ca_path.display().to_string(),
                    source,
                })?;
            let ca_sha256 = tls.ca_sha256;
            crate::publish::publish(
                p,
                |secret| auth::join_token(ca_sha256, secret).to_string(),
                &ca_pem,
            )
            .await?;
        }
        let registry = Arc::new(Registry::load(
            RegistryConfig {
                region: cfg.region.clone(),
                max_full_mesh: cfg.max_full_mesh,
                lease: cfg.lease,
                agent_ttl: cfg.agent_ttl,
                keys: match &cfg.federation {
                    Some(f) => MeshKeys::new(f.secret.trim().as_bytes(), grant_signer)
                        .also_accepting(f.accepted.iter().map(|s| s.trim().as_bytes())),
                    None => MeshKeys::new(&tls.mesh_root, grant_signer),
                },
                relay_policy: cfg.relay_policy.clone(),
                load_allow: cfg.load_allow.clone(),
                address_policy: cfg.address_policy.clone(),
                grant_epoch: GRANT_EPOCH,
                limits: cfg.limits.clone(),
            },
            store,
        )?);
        // The deployment's default jobs: found by name, so a restart never duplicates them.
        for spec in &cfg.default_jobs {
            let name = spec.name.clone();
            match registry.ensure_job(spec.clone()) {
                Ok((job, outcome)) => {
                    tracing::info!(message = "Default job ensured.", job_name = %name, job = %job.id, version = job.version, ?outcome);
                }
                Err(error) => {
                    tracing::error!(message = "Default job refused; the controller serves without it.", job_name = %name, %error);
                }
            }
        }
        let grpc = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| StartError::Bind {
                flag: "--listen",
                addr: cfg.listen,
                source,
            })?;
        let rest = match cfg.rest_listen {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::Bind {
                            flag: "--rest-listen",
                            addr,
                            source,
                        })?,
                )
            }
            None => None,
        };
        let stats = match cfg.stats_listen {
            Some(addr) => Some(
                StatsServer::bind(addr, Tracker::new("stats", cfg.stats_limits))
                    .await
                    .map_err(|source| StartError::Bind {
                        flag: "--stats-port",
                        addr,
                        source,
                    })?,
            ),
            None => None,
        };
        let mut peer_ca_pem = Vec::new();
        for f in cfg.federation.iter().flat_map(|f| f.peer_ca.iter()) {
            let pem = std::fs::read(f).map_err(|source| StartError::PeerCa {
                path: f.display().to_string(),
                source,
            })?;
            peer_ca_pem.extend_from_slice(&pem);
            peer_ca_pem.push(b'\n');
        }
        if let Some(pem) = cfg.federation.as_ref().and_then(|f| f.peer_ca_pem.as_ref()) {
            peer_ca_pem.extend_from_slice(pem.as_bytes());
            peer_ca_pem.push(b'\n');
        }
        let (server_tls, agent_ca) = if cfg.plaintext {
            tracing::warn!(
                message = "--plaintext: no TLS, so no per-agent identities; the join token alone admits agents (local experiments only)."
            );
            (None, None)
        } else {
            let ca = crate::identity::AgentCa::load(&cfg.data_dir, cfg.agent_cert_validity)?;
            (
                Some((
                    server_tls(&tls, b"h2", true)?,
                    server_tls(&tls, b"http/1.1", false)?,
                )),
                Some(Arc::new(ca)),
            )
        };
        Ok(Controller {
            agent_ca,
            server_tls,
            peer_ca_pem,
            cfg,
            grpc,
            rest,
            stats,
            registry,
            creds,
            tls,
            new_secrets,
            secrets_file,
            mirror,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.local_addr().ok()
    }

    /// The bound REST address.
    pub fn rest_addr(&self) -> Option<SocketAddr> {
        self.rest.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound stats server address (`--stats-port`).
    pub fn stats_addr(&self) -> Option<SocketAddr> {
        self.stats.as_ref().map(StatsServer::local_addr)
    }

    /// The shared registry (tests).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Lines for stdout: bound addresses, the CA, and — on the start that generated secrets —
    /// `secrets-file PATH` (mode 0600), followed by the secrets themselves only with
    /// `--print-secrets`. Seeded secrets never appear.
    pub fn announcements(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(a) = self.grpc_addr() {
            v.push(format!("listening grpc {a}"));
        }
        if let Some(a) = self.rest_addr() {
            v.push(format!("listening rest {a}"));
        }
        if let Some(a) = self.stats_addr() {
            v.push(format!("listening stats {a}"));
        }
        v.push(format!("ca-file {}", self.tls.ca_path.display()));
        v.push(format!("ca-sha256 {}", hex::encode(self.tls.ca_sha256)));
        if let Some(p) = &self.secrets_file {
            v.push(format!("secrets-file {}", p.display()));
        }
        if self.cfg.print_secrets
            && let Some(s) = &self.new_secrets
        {
            v.extend(s.lines(self.tls.ca_sha256));
        }
        v
    }

    /// Serves gRPC (agents, operators, health, reflection) and REST until `shutdown`.
    ///
    /// # Errors
    ///
    /// [`RunError`] if the gRPC server fails.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RunError> {
        let tasks = tokio_util::task::TaskTracker::new();
        let registry = self.registry.clone();
        tasks.spawn(registry.clone().run_rounds(shutdown.clone()));
        let sweep_stop = shutdown.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tokio::select! {
                    () = sweep_stop.cancelled() => return,
                    _ = tick.tick() => registry.sweep(),
                }
            }
        });
        // One set of buckets for the operator API, whether called over REST or gRPC.
        let limiter = RateLimiter::new(self.cfg.rate_per_ip, self.cfg.rate_per_credential);
        if let Some(l) = self.rest {
            let acceptor = self
                .server_tls
                .as_ref()
                .map(|(_, rest)| tokio_rustls::TlsAcceptor::from(rest.clone()));
            let rest = Rest::new(self.registry.clone(), self.creds.clone());
            let listener = GuardedListener::new(l, "rest", self.cfg.rest_limits);
            tasks.spawn(rest.serve(listener, acceptor, limiter.clone(), shutdown.clone()));
        }
        let own_url = format!(
            "{}://{}",
            if self.cfg.plaintext { "http" } else { "https" },
            self.grpc
                .local_addr()
                .map_or_else(|_| self.cfg.listen.to_string(), |a| a.to_string())
        );
        if let Some(s) = self.stats {
            let registry = self.registry.clone();
            let metrics = axum::routing::get(move || {
                let body = crate::metrics::get().encode(Some(&registry));
                async move {
                    meshlat_guard::stats::reply(
                        http::StatusCode::OK,
                        meshlat_guard::stats::PROMETHEUS_TEXT,
                        body,
                    )
                }
            });
            tasks.spawn(s.run(
                vec![("/metrics", metrics)],
                crate::metrics::VERSION,
                shutdown.clone(),
            ));
        }
        let federation = self.cfg.federation.clone().map(|f| {
            crate::metrics::peers_configured(f.peers.iter().map(String::as_str));
            for url in &f.peers {
                let peer = crate::federation::Peer {
                    url: url.clone(),
                    secret: f.secret.clone(),
                    ca_pem: self.peer_ca_pem.clone(),
                    own_url: own_url.clone(),
                    ttl: f.ttl,
                };
                tasks.spawn(peer.run(self.registry.clone(), shutdown.clone()));
            }
            tonic::service::interceptor::InterceptedService::new(
                FederationServiceServer::new(grpc::federation::FederationSvc::new(
                    self.registry.clone(),
                    own_url.clone(),
                    f.ttl,
                ))
                .max_decoding_message_size(crate::limits::FEDERATION_MESSAGE_BYTES),
                grpc::auth::federation(crate::auth::FederationSecret::new(
                    std::iter::once(f.secret.as_str()).chain(f.accepted.iter().map(String::as_str)),
                )),
            )
        });
        let mirror_stop = CancellationToken::new();
        if let Some(m) = self.mirror.clone() {
            let stop = mirror_stop.clone();
            tasks.spawn(async move { m.run(stop, SHUTDOWN_GRACE).await });
        }
        tasks.close();

        let (health, health_svc) = tonic_health::server::health_reporter();
        for name in [
            "meshlat.v1.AgentService",
            "meshlat.v1.OperatorService",
            "meshlat.v1.FederationService",
        ] {
            health
                .set_service_status(name, tonic_health::ServingStatus::Serving)
                .await;
        }
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(meshlat_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1();
        let mut agent_svc = grpc::agent::AgentSvc::new(self.registry.clone(), shutdown.clone());
        if let Some(ca) = &self.agent_ca {
            agent_svc = agent_svc.with_identity(ca.clone(), self.cfg.require_agent_identity);
        }
        let agent = tonic::codegen::InterceptedService::new(
            grpc::agent::AgentServer::new(agent_svc),
            grpc::auth::agent(self.creds.clone(), self.agent_ca.clone()),
        );
        // Rate limits run before the credential check, so a flood of bad credentials costs
        // no hashing.
        let operator = tower::Layer::layer(
            &RateLimitLayer::new(
                limiter,
                crate::metrics::CountRejected::new(GrpcReject, "grpc"),
            ),
            OperatorServiceServer::with_interceptor(
                grpc::operator::OperatorSvc::new(self.registry.clone(), self.creds.clone()),
                grpc::auth::operator(self.creds.clone()),
            ),
        );
        let mut builder = tonic::transport::Server::builder()
            // Agents that vanished are found by their TTL; pings only close dead connections,
            // and a busy agent host answering late is not one (gRPC's default timeout).
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)));
        let mut router = builder
            .add_service(health_svc)
            .add_service(agent)
            .add_service(operator)
            .add_optional_service(federation);
        match reflection {
            Ok(r) => router = router.add_service(r),
            Err(error) => tracing::warn!(message = "gRPC reflection unavailable.", %error),
        }
        // TLS is done here, not by tonic: the accept loop caps connections and bounds each
        // handshake (meshlat_guard), and the streams keep tonic's connection info.
        let grpc = GuardedListener::new(self.grpc, "grpc", self.cfg.grpc_limits);
        let stop = shutdown.clone().cancelled_owned();
        let serve = async {
            match &self.server_tls {
                Some((h2, _)) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(h2.clone());
                    let incoming = meshlat_guard::incoming(
                        grpc,
                        move |s| acceptor.accept(s),
                        true,
                        shutdown.clone(),
                    );
                    router.serve_with_incoming_shutdown(incoming, stop).await
                }
                None => {
                    let incoming = meshlat_guard::incoming(
                        grpc,
                        |s| std::future::ready(Ok(s)),
                        true,
                        shutdown.clone(),
                    );
                    router.serve_with_incoming_shutdown(incoming, stop).await
                }
            }
        };
        // Graceful shutdown waits for open calls to end; a stream that does not (an operator's
        // `matrix --watch`, a stuck client) must not hold the process past the grace: after
        // SIGTERM on ECS the task would otherwise run until SIGKILL.
        let grace = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let served = tokio::select! {
            r = serve => r,
            () = grace => {
                tracing::warn!(
                    message = "Calls still open after the shutdown grace; closing them.",
                    grace_s = SHUTDOWN_GRACE.as_secs()
                );
                Ok(())
            }
        };
        // Sessions have ended (their last saves are queued): drain the state uploads.
        mirror_stop.cancel();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), tasks.wait()).await;
        served.map_err(RunError)
    }
}

/// The server's rustls config offering `alpn`; with `client_certs`, clients may present a
/// certificate (agents' identities, [`crate::identity::OfferClientAuth`]).
fn server_tls(
    tls: &TlsMaterial,
    alpn: &[u8],
    client_certs: bool,
) -> Result<Arc<rustls::ServerConfig>, StartError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let e = |m: String| StartError::Tls(m);
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(tls.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|x| e(x.to_string()))?;
    let key =
        PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|x| e(x.to_string()))?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|x| e(x.to_string()))?;
    let cfg = if client_certs {
        cfg.with_client_cert_verifier(Arc::new(crate::identity::OfferClientAuth::default()))
    } else {
        cfg.with_no_client_auth()
    };
    let mut cfg = cfg
        .with_single_cert(chain, key)
        .map_err(|x| e(x.to_string()))?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(cfg))
}
