//! Directories through the disk cache: each directory is one file, decoded, validated and
//! hashed on every read (a torn or corrupt file is dropped); on a miss it comes from the far
//! service, checked against the digest asked for, and is stored.
//!
//! Unlike a directory store, the cache may hold a directory without its children (eviction
//! removes files one by one), so a recursive get is answered from the cache only when the whole
//! closure is there, and otherwise from the far service, caching what it sends.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use futures::stream::BoxStream;

use super::{DiskCache, Object};
use crate::castore::directoryservice::{DirectoryPutter, DirectoryService};
use crate::castore::{B3Digest, Directory, Error};

/// Directory files read at once during a recursive get from the cache. One at a time, a warm
/// remount's first walk of a 3,000-file tree (about 370 directories) took 0.63 s against 0.09 s
/// on the local store with the page cache dropped: each file was a separate wait for the disk.
const READS_IN_FLIGHT: usize = 16;

/// A directory service reading through a [`DiskCache`] in front of `far`.
pub struct DiskCacheDirectoryService {
    cache: Arc<DiskCache>,
    far: Arc<dyn DirectoryService>,
}

impl DiskCacheDirectoryService {
    /// `far`'s directories, cached in `cache`.
    pub fn new(cache: Arc<DiskCache>, far: Arc<dyn DirectoryService>) -> Self {
        Self { cache, far }
    }

    /// The directory from the cache, validated; a torn or corrupt file is dropped.
    async fn cached(&self, digest: &B3Digest) -> Option<Directory> {
        let data = self.cache.read(Object::Directory, digest).await?;
        match Directory::decode(&data) {
            Ok(directory) if directory.digest() == *digest => Some(directory),
            Ok(directory) => {
                let why = format!("decodes to directory {}", directory.digest());
                self.cache.discard(Object::Directory, digest, &why).await;
                None
            }
            Err(e) => {
                self.cache.discard(Object::Directory, digest, &e.to_string()).await;
                None
            }
        }
    }

    /// The whole closure of `root` from the cache, root first and each directory after one that
    /// refers to it; `None` unless every directory of it is cached and valid. Breadth first,
    /// [`READS_IN_FLIGHT`] files at a time.
    async fn cached_closure(&self, root: &B3Digest) -> Option<Vec<Directory>> {
        let mut order = Vec::new();
        let mut pending = VecDeque::from([*root]);
        let mut seen = HashSet::from([*root]);
        let mut in_flight = futures::stream::FuturesOrdered::new();
        loop {
            while in_flight.len() < READS_IN_FLIGHT
                && let Some(digest) = pending.pop_front()
            {
                in_flight.push_back(async move { self.cached(&digest).await });
            }
            let Some(directory) = futures::StreamExt::next(&mut in_flight).await else {
                return Some(order);
            };
            let directory = directory?;
            for (_, child, _) in directory.child_directories() {
                if seen.insert(*child) {
                    pending.push_back(*child);
                }
            }
            order.push(directory);
        }
    }

    async fn store(&self, digest: &B3Digest, directory: &Directory) {
        self.cache.store(Object::Directory, digest, Bytes::from(directory.encode())).await;
    }
}

#[async_trait]
impl DirectoryService for DiskCacheDirectoryService {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        if let Some(directory) = self.cached(digest).await {
            return Ok(Some(directory));
        }
        let Some(directory) = self.far.get(digest).await? else {
            return Ok(None);
        };
        if directory.digest() != *digest {
            return Err(Error::Corrupt(format!(
                "far store answered directory {digest} with directory {}; not cached",
                directory.digest()
            )));
        }
        self.store(digest, &directory).await;
        Ok(Some(directory))
    }

    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'_, Result<Directory, Error>> {
        let root = *root;
        Box::pin(async_stream::try_stream! {
            if let Some(closure) = self.cached_closure(&root).await {
                for directory in closure {
                    yield directory;
                }
                return;
            }
            // Each directory the far store sends must be the root or one referred to by a
            // directory it sent before: anything else is not part of this closure.
            let mut expected = HashSet::from([root]);
            let mut far = self.far.get_recursive(&root);
            while let Some(directory) = far.try_next().await? {
                let digest = directory.digest();
                if !expected.remove(&digest) {
                    Err(Error::Corrupt(format!(
                        "far store sent directory {digest} below {root}, which nothing sent before refers to"
                    )))?;
                }
                for (_, child, _) in directory.child_directories() {
                    expected.insert(*child);
                }
                self.store(&digest, &directory).await;
                yield directory;
            }
        })
    }

    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        self.far.put_multiple_start()
    }
}
