//! Directories as objects in an object store (S3 and the like): each directory an object
//! `directories/<2 hex>/<64 hex>` holding its protobuf encoding, readable by any digest.
//!
//! An object store has no transactions, so a batch is written in an order that keeps every
//! directory readable: a directory's object is written only after the objects of every
//! directory it refers to. A crash midway leaves directories nothing refers to yet (for gc),
//! never one whose children are missing.

use std::collections::HashMap;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::DirectoryStore;
use crate::castore::inventory::{Removal, Stored, StoredStream};
use crate::castore::objects::Objects;
use crate::castore::{B3Digest, Directory, Error};

/// Objects written at a time within one level of a batch.
const PUT_PARALLEL: usize = 16;

/// Directory storage in an object store, below a key prefix.
pub struct ObjectStoreDirectoryStore {
    objects: Objects,
}

impl ObjectStoreDirectoryStore {
    /// Keeps directories in `objects`, below `directories/`.
    pub fn new(objects: &Objects) -> Self {
        Self { objects: objects.below("directories") }
    }

    fn key(&self, digest: &B3Digest) -> object_store::path::Path {
        let hex = digest.to_hex();
        self.objects.key(&[&hex[..2], &hex])
    }
}

#[async_trait]
impl DirectoryStore for ObjectStoreDirectoryStore {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        let key = self.key(digest);
        let Some(bytes) = self.objects.get(&key).await? else {
            return Ok(None);
        };
        let corrupt =
            |why: String| Error::Corrupt(format!("directory {digest} in {}: {key}: {why}", self.objects.location()));
        let directory = Directory::decode(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if directory.digest() != *digest {
            return Err(corrupt(format!("the object holds directory {}", directory.digest())));
        }
        Ok(Some(directory))
    }

    async fn insert_batch(&self, directories: Vec<(B3Digest, Directory)>) -> Result<(), Error> {
        // The batch comes leaves first: a directory's height (0 for one without subdirectories
        // in the batch) is known when it is reached. Each height is written whole before the
        // next begins.
        let mut height: HashMap<B3Digest, usize> = HashMap::new();
        let mut levels: Vec<Vec<(B3Digest, Bytes)>> = Vec::new();
        for (digest, directory) in directories {
            let level = directory
                .child_directories()
                .filter_map(|(_, child, _)| height.get(child).map(|h| h + 1))
                .max()
                .unwrap_or(0);
            height.insert(digest, level);
            if levels.len() <= level {
                levels.resize_with(level + 1, Vec::new);
            }
            levels[level].push((digest, Bytes::from(directory.encode())));
        }
        // Every directory is put, present or not: the put renews its write time, which keeps it
        // from garbage collection until the PathInfo that needs it is written.
        for level in levels {
            futures::stream::iter(level)
                .map(|(digest, bytes)| async move { self.objects.put(&self.key(&digest), bytes).await })
                .buffer_unordered(PUT_PARALLEL)
                .try_collect::<()>()
                .await?;
        }
        Ok(())
    }

    fn list(&self) -> StoredStream<'_> {
        Box::pin(async_stream::try_stream! {
            let mut objects = self.objects.list_meta();
            while let Some(meta) = objects.next().await {
                let meta = meta?;
                if let Some(digest) = meta.location.filename().and_then(B3Digest::from_hex) {
                    yield Stored { digest, size: meta.size, written: meta.last_modified.into() };
                }
            }
        })
    }

    async fn remove(&self, digest: &B3Digest, cutoff: SystemTime) -> Result<Removal, Error> {
        self.objects.remove(&self.key(digest), Some(cutoff)).await
    }
}
