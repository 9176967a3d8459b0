//! Binding and running the controller (STYLE §1): [`Controller::bind`] opens every listener and
//! loads state; [`Controller::run`] serves until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshlat_proto::pb::federation_service_server::FederationServiceServer;
use meshlat_proto::pb::operator_service_server::OperatorServiceServer;
use meshlat_proto::token::hex_encode;
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
    registry: Arc<Registry>,
    creds: Arc<Credentials>,
    tls: TlsMaterial,
    new_secrets: Option<NewSecrets>,
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
        // Made before the bucket is filled, so it is mirrored with the CA.
        let grant_signer = crate::keys::load_or_create_grant_signer(&cfg.data_dir)?;
        let file = FileStore::open(&cfg.data_dir)?;
        let store: Arc<dyn StateStore> = match &mirror {
            Some(m) => {
                // A CA made now must be in the bucket before its join token is printed.
                m.publish_missing().await?;
                Arc::new(MirroredStore::new(file, m.clone()))
            }
            None => Arc::new(file),
        };
        let registry = Arc::new(Registry::load(
            RegistryConfig {
                region: cfg.region.clone(),
                max_full_mesh: cfg.max_full_mesh,
                lease: cfg.lease,
                agent_ttl: cfg.agent_ttl,
                keys: match &cfg.federation {
                    Some(f) => MeshKeys::new(f.secret.trim().as_bytes(), grant_signer),
                    None => MeshKeys::new(&tls.mesh_root, grant_signer),
                },
                relay_policy: cfg.relay_policy.clone(),
                grant_epoch: GRANT_EPOCH,
            },
            store,
        )?);
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
        let mut peer_ca_pem = Vec::new();
        for f in cfg.federation.iter().flat_map(|f| f.peer_ca.iter()) {
            let pem = std::fs::read(f).map_err(|source| StartError::PeerCa {
                path: f.display().to_string(),
                source,
            })?;
            peer_ca_pem.extend_from_slice(&pem);
            peer_ca_pem.push(b'\n');
        }
        Ok(Controller {
            peer_ca_pem,
            cfg,
            grpc,
            rest,
            registry,
            creds: Arc::new(creds),
            tls,
            new_secrets,
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

    /// The shared registry (tests).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Lines for stdout: bound addresses, the CA, and — on the start that created them — the
    /// join token and operator credential (shown once; stored only hashed).
    pub fn announcements(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(a) = self.grpc_addr() {
            v.push(format!("listening grpc {a}"));
        }
        if let Some(a) = self.rest_addr() {
            v.push(format!("listening rest {a}"));
        }
        v.push(format!("ca-file {}", self.tls.ca_path.display()));
        v.push(format!("ca-sha256 {}", hex_encode(&self.tls.ca_sha256)));
        if let Some(s) = &self.new_secrets {
            v.push(format!(
                "join-token {}",
                auth::join_token(self.tls.ca_sha256, &s.join_secret)
            ));
            v.push(format!("operator-credential {}", s.operator_credential));
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
        tasks.spawn(registry.clone().run(shutdown.clone()));
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
        if let Some(l) = self.rest {
            let acceptor = if self.cfg.plaintext {
                None
            } else {
                match rest_tls(&self.tls) {
                    Ok(a) => Some(a),
                    Err(error) => {
                        tracing::error!(message = "REST TLS setup failed; REST is off.", %error);
                        None
                    }
                }
            };
            if acceptor.is_some() || self.cfg.plaintext {
                let rest = Rest::new(self.registry.clone(), self.creds.clone());
                tasks.spawn(rest.serve(l, acceptor, shutdown.clone()));
            }
        }
        let own_url = format!(
            "{}://{}",
            if self.cfg.plaintext { "http" } else { "https" },
            self.grpc
                .local_addr()
                .map_or_else(|_| self.cfg.listen.to_string(), |a| a.to_string())
        );
        let federation = self.cfg.federation.clone().map(|f| {
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
            FederationServiceServer::with_interceptor(
                grpc::federation::FederationSvc::new(self.registry.clone(), own_url.clone(), f.ttl),
                grpc::auth::federation(crate::auth::FederationSecret::new(&f.secret)),
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
        let agent = tonic::codegen::InterceptedService::new(
            grpc::agent::AgentServer::new(grpc::agent::AgentSvc::new(
                self.registry.clone(),
                shutdown.clone(),
            )),
            grpc::auth::agent(self.creds.clone()),
        );
        let operator = OperatorServiceServer::with_interceptor(
            grpc::operator::OperatorSvc::new(self.registry.clone()),
            grpc::auth::operator(self.creds.clone()),
        );
        let mut builder = tonic::transport::Server::builder()
            // Agents that vanished are found by their TTL; pings only close dead connections,
            // and a busy agent host answering late is not one (gRPC's default timeout).
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)));
        if !self.cfg.plaintext {
            let id = tonic::transport::Identity::from_pem(&self.tls.chain_pem, &self.tls.key_pem);
            builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(id))?;
        }
        let mut router = builder
            .add_service(health_svc)
            .add_service(agent)
            .add_service(operator)
            .add_optional_service(federation);
        match reflection {
            Ok(r) => router = router.add_service(r),
            Err(error) => tracing::warn!(message = "gRPC reflection unavailable.", %error),
        }
        let incoming =
            tonic::transport::server::TcpIncoming::from(self.grpc).with_nodelay(Some(true));
        let stop = shutdown.clone();
        let served = router
            .serve_with_incoming_shutdown(incoming, async move {
                stop.cancelled().await;
            })
            .await;
        // Sessions have ended (their last saves are queued): drain the state uploads.
        mirror_stop.cancel();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), tasks.wait()).await;
        served.map_err(RunError)
    }
}

fn rest_tls(tls: &TlsMaterial) -> Result<tokio_rustls::TlsAcceptor, StartError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let e = |m: String| StartError::Tls(m);
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(tls.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|x| e(x.to_string()))?;
    let key =
        PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|x| e(x.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|x| e(x.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|x| e(x.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// A token cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!(message = "Shutting down.");
        t.cancel();
    });
    token
}

/// Logging on stderr: text or JSON; level from `-v` unless `RUST_LOG` is set.
pub fn init_logging(verbose: u8, json: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}
