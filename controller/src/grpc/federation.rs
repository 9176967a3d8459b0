//! `FederationService.Exchange`: a peer controller sends its directory and gets ours back.
//!
//! Peers authenticate with the shared federation secret (`authorization: Bearer <secret>`,
//! checked hashed and in constant time by [`super::auth::federation`]).

use std::sync::Arc;
use std::time::Duration;

use meshlat_proto::pb;
use meshlat_proto::pb::federation_service_server::FederationService;
use tonic::{Request, Response, Status};

use super::status::from_domain;
use crate::registry::Registry;

/// The federation service.
#[derive(Clone, Debug)]
pub struct FederationSvc {
    registry: Arc<Registry>,
    url: String,
    ttl: Duration,
}

impl FederationSvc {
    /// A service over `registry`, announcing `url`, keeping peer entries for `ttl`.
    pub fn new(registry: Arc<Registry>, url: String, ttl: Duration) -> Self {
        FederationSvc { registry, url, ttl }
    }
}

#[tonic::async_trait]
impl FederationService for FederationSvc {
    async fn exchange(
        &self,
        req: Request<pb::Directory>,
    ) -> Result<Response<pb::Directory>, Status> {
        self.registry
            .merge_peer(req.into_inner(), self.ttl)
            .map_err(from_domain)?;
        Ok(Response::new(self.registry.directory(&self.url, self.ttl)))
    }
}
