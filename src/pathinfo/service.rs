//! The PathInfoService trait, and the NAR calculation a server offers beside it.

use async_trait::async_trait;
use futures::stream::BoxStream;

use super::PathInfo;
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

/// Removal of PathInfos, offered by the backends that store them (not by wrappers, remote
/// services or binary caches): what `tvix-store delete` and garbage collection work on.
#[async_trait]
pub trait PathInfoRemoval: Send + Sync {
    /// Removes the PathInfo of the store path with this digest durably; `false` when there was
    /// none.
    async fn remove(&self, digest: [u8; DIGEST_LEN]) -> Result<bool, Error>;
}

/// Computes the NAR size and SHA-256 of a node's NAR serialisation.
#[async_trait]
pub trait NarCalculationService: Send + Sync {
    /// NAR size and SHA-256 of `root` (all it refers to must be stored).
    async fn calculate_nar(&self, root: &Node) -> Result<(u64, [u8; 32]), Error>;
}
