//! A read-through cache of two PathInfo services: read the near one; on a miss read the far
//! one and store what it answered in the near one before answering.
//!
//! What the far service answers is a [`PathInfo`], so it has passed the same validation as any
//! other (store path, root node, NAR hash, references); the near put is one durable write, so a
//! failing far service leaves nothing behind.

use std::collections::HashSet;

use async_trait::async_trait;
use futures::TryStreamExt;
use futures::stream::BoxStream;

use super::{PathInfo, PathInfoService, PathInfoWithGraph};
use crate::castore::{Cache, Error};
use crate::storepath::DIGEST_LEN;

/// PathInfo from `near`, filled from `far` on a miss; new ones go where [`CacheWrites`](crate::castore::CacheWrites) says.
pub type CachePathInfoService = Cache<dyn PathInfoService>;

impl Cache<dyn PathInfoService> {
    /// The near service's PathInfo, or the far one's (with the graph it sent along, if asked
    /// for) stored in the near one.
    async fn lookup(&self, digest: [u8; DIGEST_LEN], with_graph: bool) -> Result<Option<PathInfoWithGraph>, Error> {
        if let Some(info) = self.near.get(digest).await? {
            crate::castore::cache::count("pathinfo", true);
            return Ok(Some(PathInfoWithGraph::without_graph(info)));
        }
        crate::castore::cache::count("pathinfo", false);
        let far = if with_graph {
            self.far.get_with_graph(digest).await?
        } else {
            self.far.get(digest).await?.map(PathInfoWithGraph::without_graph)
        };
        let Some(far) = far else {
            return Ok(None);
        };
        let stored = self.near.put(far.info).await?;
        tracing::debug!(path = %stored.store_path, "PathInfo cached from the far store");
        Ok(Some(PathInfoWithGraph { info: stored, graph: far.graph }))
    }
}

#[async_trait]
impl PathInfoService for Cache<dyn PathInfoService> {
    async fn get(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfo>, Error> {
        Ok(self.lookup(digest, false).await?.map(|found| found.info))
    }

    /// On a miss, the graph the far service sent along is passed on (only the PathInfo is kept).
    async fn get_with_graph(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfoWithGraph>, Error> {
        self.lookup(digest, true).await
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        self.target().put(info).await
    }

    /// The near service's entries, then the far one's not listed already.
    fn list(&self) -> BoxStream<'_, Result<PathInfo, Error>> {
        Box::pin(async_stream::try_stream! {
            let mut seen = HashSet::new();
            let mut near = self.near.list();
            while let Some(info) = near.try_next().await? {
                seen.insert(*info.store_path.digest());
                yield info;
            }
            let mut far = self.far.list();
            while let Some(info) = far.try_next().await? {
                if !seen.contains(info.store_path.digest()) {
                    yield info;
                }
            }
        })
    }
}
