//! A read-through cache of two PathInfo services: read the near one; on a miss read the far
//! one and store what it answered in the near one before answering.
//!
//! What the far service answers is a [`PathInfo`], so it has passed the same validation as any
//! other (store path, root node, NAR hash, references); the near put is one durable write, so a
//! failing far service leaves nothing behind.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use futures::stream::BoxStream;

use super::{PathInfo, PathInfoService};
use crate::castore::{CacheWrites, Error};
use crate::storepath::DIGEST_LEN;

/// PathInfo from `near`, filled from `far` on a miss; new ones go where [`CacheWrites`] says.
pub struct CachePathInfoService {
    near: Arc<dyn PathInfoService>,
    far: Arc<dyn PathInfoService>,
    writes: CacheWrites,
}

impl CachePathInfoService {
    /// A cache of `far` in `near`.
    pub fn new(near: Arc<dyn PathInfoService>, far: Arc<dyn PathInfoService>, writes: CacheWrites) -> Self {
        Self { near, far, writes }
    }
}

#[async_trait]
impl PathInfoService for CachePathInfoService {
    async fn get(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfo>, Error> {
        if let Some(info) = self.near.get(digest).await? {
            return Ok(Some(info));
        }
        let Some(info) = self.far.get(digest).await? else {
            return Ok(None);
        };
        let stored = self.near.put(info).await?;
        tracing::debug!(path = %stored.store_path, "PathInfo cached from the far store");
        Ok(Some(stored))
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        match self.writes {
            CacheWrites::Far => self.far.put(info).await,
            CacheWrites::Near => self.near.put(info).await,
        }
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
