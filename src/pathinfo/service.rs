//! The PathInfoService trait, and the NAR calculation a server offers beside it.

use async_trait::async_trait;
use futures::stream::BoxStream;

use super::PathInfo;
use crate::castore::{Directory, Error, Node};
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

    /// [`Self::get`] together with the directory graph below the PathInfo's root node, for a
    /// caller about to walk the store path (the mount's first lookup of it): one round trip
    /// instead of two where the backend can send both (our gRPC client, against a daemon with
    /// the `tvix_store.ext.v1.PathInfoGraphService` extension).
    ///
    /// A read-speed hook, so it has a default: the PathInfo alone. A wrapper that does not
    /// forward it loses speed, never a guarantee.
    async fn get_with_graph(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfoWithGraph>, Error> {
        Ok(self.get(digest).await?.map(PathInfoWithGraph::without_graph))
    }
}

/// What [`PathInfoService::get_with_graph`] answers.
pub struct PathInfoWithGraph {
    /// The PathInfo.
    pub info: PathInfo,
    /// The root directory and every directory below it, the root first and each after one
    /// that refers to it (checked as they arrive), where the service sent them along; `None`
    /// when it did not, and the caller fetches them from its DirectoryService. A stream that
    /// fails part-way has still delivered only checked directories.
    pub graph: Option<BoxStream<'static, Result<Directory, Error>>>,
}

impl PathInfoWithGraph {
    /// A PathInfo sent without its graph.
    pub fn without_graph(info: PathInfo) -> Self {
        Self { info, graph: None }
    }
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
