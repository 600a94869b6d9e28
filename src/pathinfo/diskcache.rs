//! PathInfo through the disk cache (`--cache-dir`), so a remount or a reboot finds its store
//! paths without asking the remote: with blobs and directories cached but PathInfo not, a warm
//! remount's `find` still waited one round trip per store path (2.3x the local store at 10 and
//! 50 ms).
//!
//! A cached PathInfo is a record of the [`DiskCache`] (checksummed there, so a torn file is
//! never read) holding the time it was fetched and the PathInfo's encoding, validated on every
//! read against the store path asked for. Like Nix's narinfo cache
//! (`narinfo-cache-positive-ttl`, 30 days by default), an entry is trusted for [`FRESH_FOR`]
//! and then asked for again; a store path the far side does not know is never cached.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::stream::BoxStream;

use super::{PathInfo, PathInfoService};
use crate::castore::diskcache::DiskCache;
use crate::castore::{B3Digest, Error};
use crate::storepath::{DIGEST_LEN, nixbase32};

/// How long a cached PathInfo is served without asking the far side: Nix's default for
/// positive narinfo lookups. Store paths are immutable; the bound only matters for a path
/// deleted from the remote store.
pub const FRESH_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// Bytes in front of the encoded PathInfo: the time it was fetched, seconds since the epoch.
const STAMP: usize = 8;

/// PathInfo of `far`, cached in a [`DiskCache`].
pub struct DiskCachePathInfoService {
    cache: Arc<DiskCache>,
    far: Arc<dyn PathInfoService>,
}

impl DiskCachePathInfoService {
    /// `far`'s PathInfo, cached in `cache`.
    pub fn new(cache: Arc<DiskCache>, far: Arc<dyn PathInfoService>) -> Self {
        Self { cache, far }
    }

    /// The cache key of a store path: a digest of its hash, in a name space of its own.
    fn key(digest: &[u8; DIGEST_LEN]) -> B3Digest {
        DiskCache::record_key("tvix-store pathinfo", digest)
    }

    /// The cached PathInfo and whether it is still fresh; a record that does not hold a valid
    /// PathInfo of this store path is dropped.
    async fn cached(&self, digest: &[u8; DIGEST_LEN]) -> Option<(PathInfo, bool)> {
        let key = Self::key(digest);
        let record = self.cache.read_record(&key).await?;
        let decoded = record
            .split_first_chunk::<STAMP>()
            .ok_or_else(|| "too short".to_string())
            .and_then(|(stamp, encoded)| Ok((u64::from_le_bytes(*stamp), PathInfo::decode_stored(encoded, digest)?)));
        match decoded {
            Ok((fetched, info)) => {
                let age = now_secs().saturating_sub(fetched);
                Some((info, age < FRESH_FOR.as_secs()))
            }
            Err(why) => {
                let why = format!("not a PathInfo of {}: {why}", nixbase32::encode(digest));
                self.cache.discard_record(&key, &why).await;
                None
            }
        }
    }

    async fn store(&self, info: &PathInfo) {
        let mut record = now_secs().to_le_bytes().to_vec();
        record.extend_from_slice(&info.encode());
        self.cache.store_record(&Self::key(info.store_path.digest()), &record).await;
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[async_trait]
impl PathInfoService for DiskCachePathInfoService {
    async fn get(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfo>, Error> {
        let stale = match self.cached(&digest).await {
            Some((info, true)) => return Ok(Some(info)),
            Some((info, false)) => Some(info),
            None => None,
        };
        match self.far.get(digest).await {
            Ok(Some(info)) => {
                self.store(&info).await;
                Ok(Some(info))
            }
            Ok(None) => {
                if stale.is_some() {
                    self.cache.discard_record(&Self::key(&digest), "the far store no longer has it").await;
                }
                Ok(None)
            }
            // An outdated entry beats none while the far side cannot answer.
            Err(e) => match stale {
                Some(info) => {
                    tracing::warn!(path = %info.store_path, error = %e,
                        "disk cache: serving an outdated PathInfo, the far store cannot be asked");
                    Ok(Some(info))
                }
                None => Err(e),
            },
        }
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        let stored = self.far.put(info).await?;
        self.store(&stored).await;
        Ok(stored)
    }

    /// The far side's listing: the cache holds only what was looked up.
    fn list(&self) -> BoxStream<'_, Result<PathInfo, Error>> {
        self.far.list()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::castore::Node;
    use crate::pathinfo::MemoryPathInfoService;
    use crate::storepath::StorePath;

    fn info(name: &str) -> PathInfo {
        let store_path = StorePath::from_basename(&format!("00000000000000000000000000000000-{name}")).unwrap();
        PathInfo {
            store_path,
            node: Node::file(B3Digest::of(name.as_bytes()), 3, false),
            references: Vec::new(),
            nar_size: 120,
            nar_sha256: [7; 32],
            signatures: Vec::new(),
            deriver: None,
            ca: None,
        }
    }

    #[tokio::test]
    async fn a_remount_finds_its_paths_in_the_cache_and_a_corrupt_record_is_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let far: Arc<dyn PathInfoService> = Arc::new(MemoryPathInfoService::default());
        let hello = far.put(info("hello")).await.unwrap();
        let digest = *hello.store_path.digest();
        let open = || Arc::new(DiskCache::open(dir.path(), 1 << 20).unwrap());
        let cached = DiskCachePathInfoService::new(open(), far.clone());
        assert_eq!(cached.get(digest).await.unwrap(), Some(hello.clone()));

        // A remount whose far side knows nothing any more: answered from the cache.
        let empty: Arc<dyn PathInfoService> = Arc::new(MemoryPathInfoService::default());
        let remounted = DiskCachePathInfoService::new(open(), empty.clone());
        assert_eq!(remounted.get(digest).await.unwrap(), Some(hello.clone()));

        // A flipped byte in the record: dropped, and the far side asked (which has nothing).
        let records: Vec<_> = walk(&dir.path().join("records"));
        assert_eq!(records.len(), 1, "one record: {records:?}");
        let mut bytes = std::fs::read(&records[0]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&records[0], bytes).unwrap();
        assert_eq!(remounted.get(digest).await.unwrap(), None);
        assert!(walk(&dir.path().join("records")).is_empty(), "the corrupt record is gone");
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                files.extend(walk(&entry.path()));
            } else {
                files.push(entry.path());
            }
        }
        files
    }
}
