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

    /// The closure of `root` from its closure record (one file), validated; a record that
    /// fails is dropped.
    async fn closure_record(&self, root: &B3Digest) -> Option<Vec<Directory>> {
        let key = closure_key(root);
        let data = self.cache.read_record(&key).await?;
        match decode_closure(root, &data) {
            Ok(closure) => Some(closure),
            Err(why) => {
                self.cache.discard_record(&key, &format!("closure record of directory {root}: {why}")).await;
                None
            }
        }
    }

    async fn store_closure(&self, root: &B3Digest, record: ClosureRecord) {
        if let Some(data) = record.finish() {
            self.cache.store_record(&closure_key(root), &data).await;
        }
    }

    /// Stores a directory's encoding, which the caller computed (a recursive get also puts it
    /// in the closure record).
    async fn store(&self, digest: &B3Digest, encoded: Bytes) {
        self.cache.store(Object::Directory, digest, encoded).await;
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
        self.store(digest, Bytes::from(directory.encode())).await;
        Ok(Some(directory))
    }

    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'_, Result<Directory, Error>> {
        let root = *root;
        Box::pin(async_stream::try_stream! {
            if let Some(closure) = self.closure_record(&root).await {
                for directory in closure {
                    yield directory;
                }
                return;
            }
            if let Some(closure) = self.cached_closure(&root).await {
                let mut record = ClosureRecord::default();
                closure.iter().for_each(|directory| record.add(&directory.encode()));
                self.store_closure(&root, record).await;
                for directory in closure {
                    yield directory;
                }
                return;
            }
            // Each directory the far store sends must be the root or one referred to by a
            // directory it sent before: anything else is not part of this closure.
            let mut expected = HashSet::from([root]);
            let mut record = ClosureRecord::default();
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
                let encoded = Bytes::from(directory.encode());
                record.add(&encoded);
                self.store(&digest, encoded).await;
                yield directory;
            }
            self.store_closure(&root, record).await;
        })
    }

    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        self.far.put_multiple_start()
    }
}

/// Largest closure kept as a record of its own; a larger one is read file by file.
const CLOSURE_RECORD_MAX: usize = 16 << 20;

/// The cache key of `root`'s closure record: a digest of it, in a name space of its own.
fn closure_key(root: &B3Digest) -> B3Digest {
    DiskCache::record_key("tvix-store directory closure", root.as_bytes())
}

/// A whole closure as one record, so a warm remount's first lookup of a store path reads one
/// file instead of one per directory: with a file per directory and the page cache dropped,
/// a warm `find` over 3 store paths took 0.19-0.40 s against 0.06 s on the local store.
/// Directories as sent (root first), each a 4-byte little-endian length and its encoding.
#[derive(Default)]
struct ClosureRecord {
    data: Vec<u8>,
    too_large: bool,
}

impl ClosureRecord {
    /// Appends a directory's encoding.
    fn add(&mut self, encoded: &[u8]) {
        if self.too_large || self.data.len() + 4 + encoded.len() > CLOSURE_RECORD_MAX {
            self.too_large = true;
            self.data = Vec::new();
            return;
        }
        self.data.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        self.data.extend_from_slice(encoded);
    }

    fn finish(self) -> Option<Vec<u8>> {
        (!self.too_large && !self.data.is_empty()).then_some(self.data)
    }
}

/// The directories of a closure record, checked: the first is `root`, each later one is
/// referred to by one before it, and every directory referred to is there.
fn decode_closure(root: &B3Digest, mut data: &[u8]) -> Result<Vec<Directory>, String> {
    let mut expected = HashSet::from([*root]);
    let mut seen = HashSet::new();
    let mut closure = Vec::new();
    while !data.is_empty() {
        let (len, rest) = data.split_first_chunk::<4>().ok_or("a truncated length")?;
        let len = u32::from_le_bytes(*len) as usize;
        let encoded = rest.get(..len).ok_or("a truncated directory")?;
        let directory = Directory::decode(encoded).map_err(|e| e.to_string())?;
        let digest = directory.digest();
        if !expected.remove(&digest) {
            return Err(format!("it holds directory {digest}, which nothing before it refers to"));
        }
        seen.insert(digest);
        for (_, child, _) in directory.child_directories() {
            if !seen.contains(child) {
                expected.insert(*child);
            }
        }
        closure.push(directory);
        data = &rest[len..];
    }
    match expected.iter().next() {
        Some(missing) => Err(format!("directory {missing} is missing")),
        None => Ok(closure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::castore::{Node, PathComponent};

    fn name(s: &str) -> PathComponent {
        PathComponent::try_from(s).unwrap()
    }

    fn record(directories: &[&Directory]) -> Vec<u8> {
        let mut record = ClosureRecord::default();
        directories.iter().for_each(|d| record.add(&d.encode()));
        record.finish().unwrap()
    }

    #[test]
    fn a_closure_record_holds_exactly_a_closure() {
        let mut leaf = Directory::new();
        leaf.add(name("f"), Node::file(B3Digest::of(b"f"), 1, false)).unwrap();
        let mut mid = Directory::new();
        mid.add(name("leaf"), Node::directory(leaf.digest(), leaf.size())).unwrap();
        let mut root = Directory::new();
        root.add(name("a"), Node::directory(leaf.digest(), leaf.size())).unwrap();
        root.add(name("b"), Node::directory(mid.digest(), mid.size())).unwrap();
        let whole = record(&[&root, &leaf, &mid]);
        assert_eq!(decode_closure(&root.digest(), &whole).unwrap(), vec![root.clone(), leaf.clone(), mid.clone()]);

        let missing = decode_closure(&root.digest(), &record(&[&root, &leaf])).unwrap_err();
        assert!(missing.contains(&mid.digest().to_string()), "{missing}");
        let stranger = decode_closure(&mid.digest(), &record(&[&mid, &leaf, &root])).unwrap_err();
        assert!(stranger.contains("nothing before it refers to"), "{stranger}");
        let torn = decode_closure(&root.digest(), &whole[..whole.len() - 3]).unwrap_err();
        assert!(torn.contains("truncated"), "{torn}");
    }
}
