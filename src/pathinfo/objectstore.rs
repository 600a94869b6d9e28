//! PathInfo as objects in an object store (S3 and the like): one object per store path,
//! `pathinfo/<nixbase32 hash>`, holding the PathInfo's protobuf encoding. `list` lists the
//! prefix.
//!
//! Two hosts putting the same path at once both write a valid PathInfo; the object store keeps
//! the last put whole. Content addressing makes the two agree on everything but signatures: the
//! signatures of the last put win (a signature added by one host can be lost to the other's
//! put; re-putting with both is the repair).

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use super::{PathInfo, PathInfoRemoval, PathInfoService};
use crate::castore::Error;
use crate::castore::objects::Objects;
use crate::storepath::{DIGEST_LEN, nixbase32};

/// PathInfos fetched at a time while listing.
const LIST_PARALLEL: usize = 16;

/// PathInfo storage in an object store, below a key prefix.
pub struct ObjectStorePathInfoService {
    objects: Objects,
}

impl ObjectStorePathInfoService {
    /// Keeps PathInfo in `objects`, below `pathinfo/`.
    pub fn new(objects: &Objects) -> Self {
        Self { objects: objects.below("pathinfo") }
    }

    async fn read(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfo>, Error> {
        let hash = nixbase32::encode(&digest);
        let key = self.objects.key(&[&hash]);
        let Some(bytes) = self.objects.get(&key).await? else {
            return Ok(None);
        };
        PathInfo::decode_stored(&bytes, &digest)
            .map(Some)
            .map_err(|why| Error::Corrupt(format!("PathInfo of {hash} in {}: {key}: {why}", self.objects.location())))
    }
}

#[async_trait]
impl PathInfoService for ObjectStorePathInfoService {
    async fn get(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfo>, Error> {
        self.read(digest).await
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        let key = self.objects.key(&[nixbase32::encode(info.store_path.digest())]);
        self.objects.put(&key, Bytes::from(info.encode())).await?;
        Ok(info)
    }

    fn list(&self) -> BoxStream<'_, Result<PathInfo, Error>> {
        self.objects
            .list()
            .map(move |key| async move {
                let key = key?;
                let name = key.filename().unwrap_or_default().to_string();
                let digest: [u8; DIGEST_LEN] = nixbase32::decode(name.as_bytes(), DIGEST_LEN)
                    .ok()
                    .and_then(|d| d.try_into().ok())
                    .ok_or_else(|| {
                        Error::Corrupt(format!("{}: {key} is not named by a store path hash", self.objects.location()))
                    })?;
                // Deleted between the listing and the get: not an error, just gone.
                self.read(digest).await
            })
            .buffered(LIST_PARALLEL)
            .try_filter_map(|info| async move { Ok(info) })
            .boxed()
    }
}

#[async_trait]
impl PathInfoRemoval for ObjectStorePathInfoService {
    async fn remove(&self, digest: [u8; DIGEST_LEN]) -> Result<bool, Error> {
        let key = self.objects.key(&[nixbase32::encode(&digest)]);
        // Whatever its age: unlike unreferenced data, a PathInfo is removed because it was named.
        let removal = self.objects.remove(&key, None).await?;
        Ok(matches!(removal, crate::castore::inventory::Removal::Removed(_)))
    }
}
