//! [`PathInfoRootNodes`]: a store's PathInfos as the root entries of a filesystem (the mount's
//! `/nix/store`): each store path's basename names its root node.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::PathInfoService;
use crate::castore::{Error, Node, RootNode, RootNodes};
use crate::storepath::StorePath;

/// The store paths of a PathInfoService, by basename (`<hash>-<name>`).
pub struct PathInfoRootNodes {
    path_info: Arc<dyn PathInfoService>,
}

impl PathInfoRootNodes {
    /// The root entries of `path_info`.
    pub fn new(path_info: Arc<dyn PathInfoService>) -> Self {
        Self { path_info }
    }
}

#[async_trait]
impl RootNodes for PathInfoRootNodes {
    async fn get(&self, name: &[u8]) -> Result<Option<RootNode>, Error> {
        let Ok(path) = StorePath::from_basename_bytes(name) else {
            return Ok(None);
        };
        // The graph comes along where the service can send it in the same round trip (a daemon
        // with our extension): at 50 ms, two round trips per store path were 0.30 s of a 0.53 s
        // walk of three store paths.
        let Some(found) = self.path_info.get_with_graph(*path.digest()).await? else {
            return Ok(None);
        };
        // The digest is the key; a PathInfo under it with another name is not this entry.
        if found.info.store_path.name() != path.name() {
            return Ok(None);
        }
        Ok(Some(RootNode { node: found.info.node, graph: found.graph }))
    }

    fn list(&self) -> BoxStream<'_, Result<(Bytes, Node), Error>> {
        self.path_info
            .list()
            .map(|info| info.map(|info| (Bytes::from(info.store_path.to_basename()), info.node)))
            .boxed()
    }
}
