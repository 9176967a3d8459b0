//! Federation: each controller periodically (every [`EXCHANGE_INTERVAL`]) and whenever its
//! jobs or agents change calls `FederationService.Exchange` on each `--peer` with its
//! [`pb::Directory`] (region, live agents with endpoints, its jobs, how its agents
//! acknowledged the peers' jobs, and its own agents' latest live summaries, bounded by
//! `--max-peer-summary-pairs`), and merges the peer's answer. The exchange is symmetric: the called peer merges ours too, so one `--peer` flag
//! links two controllers.
//!
//! Peer entries age out `--peer-ttl` after the last exchange, so a controller that goes down
//! leaves its agents targeted (and its jobs scheduled here) until then; the others keep
//! serving their own agents throughout. A job started on any controller may name agents of
//! any region: every controller schedules its own agents as sources and resolves targets
//! against the merged directory.

use std::sync::Arc;
use std::time::Duration;

use meshlat_proto::pb;
use meshlat_proto::pb::federation_service_client::FederationServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::registry::Registry;

/// How often directories are exchanged without changes.
pub const EXCHANGE_INTERVAL: Duration = Duration::from_secs(2);
/// Time limit of one exchange.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// A peer that cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The URL is not usable.
    #[error("--peer {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

/// One peer link.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Peer gRPC URL.
    pub url: String,
    /// Shared secret sent as `authorization: Bearer <secret>`.
    pub secret: String,
    /// PEM of the CAs trusted for an https:// peer.
    pub ca_pem: Vec<u8>,
    /// Our gRPC URL, announced in the directory.
    pub own_url: String,
    /// How long the peer should keep our entries.
    pub ttl: Duration,
}

impl Peer {
    fn endpoint(&self) -> Result<Endpoint, PeerError> {
        let bad = |reason: String| PeerError::Url {
            url: self.url.clone(),
            reason,
        };
        let mut ep = Endpoint::from_shared(self.url.clone())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(EXCHANGE_TIMEOUT)
            .timeout(EXCHANGE_TIMEOUT);
        if self.url.starts_with("https://") {
            ep = ep
                .tls_config(
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem)),
                )
                .map_err(|e| bad(e.to_string()))?;
        }
        Ok(ep)
    }

    /// Exchanges directories with the peer until `shutdown`: every [`EXCHANGE_INTERVAL`] and
    /// on every change of `registry`. Failures are logged (once per outage) and retried.
    pub async fn run(self, registry: Arc<Registry>, shutdown: CancellationToken) {
        let ep = match self.endpoint() {
            Ok(ep) => ep,
            Err(error) => {
                tracing::error!(message = "Peer disabled.", %error);
                return;
            }
        };
        let auth: tonic::metadata::MetadataValue<_> = match format!("Bearer {}", self.secret)
            .parse()
        {
            Ok(v) => v,
            Err(_) => {
                tracing::error!(message = "Peer disabled: the federation secret is not a valid header value.", peer = %self.url);
                return;
            }
        };
        let mut client = FederationServiceClient::with_interceptor(
            ep.connect_lazy(),
            move |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("authorization", auth.clone());
                Ok(req)
            },
        )
        .max_decoding_message_size(crate::limits::FEDERATION_MESSAGE_BYTES);
        let mut changes = registry.changes();
        let mut tick = tokio::time::interval(EXCHANGE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut up: Option<bool> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                r = changes.changed() => if r.is_err() { return },
            }
            let dir = registry.directory(&self.own_url, self.ttl);
            let res = tokio::time::timeout(EXCHANGE_TIMEOUT, client.exchange(dir)).await;
            let res: Result<pb::Directory, String> = match res {
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
                Err(_) => Err("timed out".into()),
            };
            match res {
                Ok(d) => {
                    let region = d.region.clone();
                    match registry.merge_peer(d, self.ttl) {
                        Ok(()) => {
                            crate::metrics::peer_exchange(&self.url, true);
                            if up != Some(true) {
                                tracing::info!(message = "Peer exchange up.", peer = %self.url, peer_region = %region);
                            }
                            up = Some(true);
                        }
                        Err(error) => {
                            crate::metrics::peer_exchange(&self.url, false);
                            tracing::warn!(message = "Peer directory refused.", peer = %self.url, %error);
                            up = Some(false);
                        }
                    }
                }
                Err(error) => {
                    crate::metrics::peer_exchange(&self.url, false);
                    if up != Some(false) {
                        tracing::warn!(message = "Peer exchange failed; its entries persist until their TTL.", peer = %self.url, %error);
                    }
                    up = Some(false);
                }
            }
        }
    }
}
