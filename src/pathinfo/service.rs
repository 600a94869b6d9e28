//! The PathInfoService trait and its construction from a URL.

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use super::{MemoryPathInfoService, PathInfo};
use crate::castore::{Error, Node};
use crate::storepath::DIGEST_LEN;

/// Stores and serves PathInfo by store path digest.
#[async_trait]
pub trait PathInfoService: Send + Sync {
    /// The PathInfo of the store path with this digest; `None` when unknown.
    async fn get(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfo>, Error>;

    /// Stores a PathInfo durably and returns what was stored (a service may add signatures).
    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error>;

    /// Every stored PathInfo.
    fn list(&self) -> BoxStream<'_, Result<PathInfo, Error>>;
}

/// Computes the NAR size and SHA-256 of a node's NAR serialisation.
#[async_trait]
pub trait NarCalculationService: Send + Sync {
    /// NAR size and SHA-256 of `root` (all it refers to must be stored).
    async fn calculate_nar(&self, root: &Node) -> Result<(u64, [u8; 32]), Error>;
}

/// Builds a PathInfoService from its URL: `memory://`, `redb:///path/to/file.redb`,
/// `grpc+unix:///path/to/socket`, `grpc+http://host:port`.
pub async fn from_addr(addr: &str) -> Result<Arc<dyn PathInfoService>, crate::url::AddrError> {
    let url = crate::url::parse(addr)?;
    match url.scheme() {
        "memory" => Ok(Arc::new(MemoryPathInfoService::default())),
        "grpc+unix" | "grpc+http" => Ok(Arc::new(crate::grpc::GrpcPathInfoService::new(crate::grpc::channel(addr)?))),
        "redb" => {
            let service = crate::redb::RedbPathInfoService::open(&crate::url::local_path(&url)?)
                .map_err(|e| crate::url::AddrError::Open(addr.to_string(), e.to_string()))?;
            Ok(Arc::new(service))
        }
        other => Err(crate::url::AddrError::UnsupportedScheme(other.to_string(), "path-info")),
    }
}
