//! `memory://`: PathInfo in process memory.

use std::collections::BTreeMap;

use async_trait::async_trait;
use futures::stream::BoxStream;
use parking_lot::RwLock;

use super::{PathInfo, PathInfoRemoval, PathInfoService};
use crate::castore::Error;
use crate::storepath::DIGEST_LEN;

/// PathInfo storage in memory; gone when the process exits.
#[derive(Default)]
pub struct MemoryPathInfoService {
    infos: RwLock<BTreeMap<[u8; DIGEST_LEN], PathInfo>>,
}

#[async_trait]
impl PathInfoService for MemoryPathInfoService {
    async fn get(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfo>, Error> {
        Ok(self.infos.read().get(&digest).cloned())
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        self.infos.write().insert(*info.store_path.digest(), info.clone());
        Ok(info)
    }

    fn list(&self) -> BoxStream<'_, Result<PathInfo, Error>> {
        let all: Vec<_> = self.infos.read().values().cloned().map(Ok).collect();
        Box::pin(futures::stream::iter(all))
    }
}

#[async_trait]
impl PathInfoRemoval for MemoryPathInfoService {
    async fn remove(&self, digest: [u8; DIGEST_LEN]) -> Result<bool, Error> {
        Ok(self.infos.write().remove(&digest).is_some())
    }
}
