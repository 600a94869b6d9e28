//! Chunks and chunk lists as objects in any [`object_store::ObjectStore`]
//! (`objectstore+memory://` today; S3 and other engines plug in the same way).
//!
//! The layout matches [`super::LocalChunkStore`]'s below the prefix: `chunks/<2 hex>/<64 hex>`
//! holds a chunk's bytes, `blobs/<2 hex>/<64 hex>` the chunk list of a multi-chunk blob. A `put`
//! of an object store is atomic and durable when it returns ([`Objects`]), which is all
//! [`ChunkStore`] asks for: `sync` has nothing left to do.

use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::ObjectStore;
use object_store::path::Path;

use super::chunked::{decode_chunk_list, encode_chunk_list, stored_key};
use super::{ChunkMeta, ChunkObject, ChunkSource, ChunkStore};
use crate::castore::inventory::{Leftovers, Removal, Stored, StoredStream};
use crate::castore::objects::Objects;
use crate::castore::{B3Digest, Error};

/// Chunk storage in an [`ObjectStore`], below a key prefix.
pub struct ObjectStoreChunkStore {
    objects: Objects,
}

impl ObjectStoreChunkStore {
    /// Keeps chunks in `store` below `prefix` (may be empty); `location` names the store in
    /// errors (e.g. its URL).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path, location: impl Into<String>) -> Self {
        Self::in_objects(Objects::new(store, prefix, location))
    }

    /// Keeps chunks in `objects`.
    pub fn in_objects(objects: Objects) -> Self {
        Self { objects }
    }

    fn path(&self, kind: &'static str, digest: &B3Digest) -> Path {
        self.objects.key(&stored_key(kind, digest))
    }
}

#[async_trait]
impl ChunkSource for ObjectStoreChunkStore {
    async fn get_chunk(&self, digest: &B3Digest) -> Result<Option<Bytes>, Error> {
        self.objects.get(&self.path("chunks", digest)).await
    }
}

#[async_trait]
impl ChunkStore for ObjectStoreChunkStore {
    async fn chunk_size(&self, digest: &B3Digest) -> Result<Option<u64>, Error> {
        self.objects.size(&self.path("chunks", digest)).await
    }

    async fn put_chunk(&self, digest: &B3Digest, data: Bytes) -> Result<(), Error> {
        // A put replaces an object whole, so a chunk of the wrong length cannot survive one.
        self.objects.put(&self.path("chunks", digest), data).await
    }

    async fn get_chunk_list(&self, blob: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        match self.objects.get(&self.path("blobs", blob)).await? {
            Some(buf) => Ok(Some(decode_chunk_list(blob, &buf)?)),
            None => Ok(None),
        }
    }

    async fn put_chunk_list(&self, blob: &B3Digest, chunks: &[ChunkMeta]) -> Result<(), Error> {
        self.objects.put(&self.path("blobs", blob), Bytes::from(encode_chunk_list(chunks))).await
    }

    async fn sync(&self) -> Result<(), Error> {
        // Every put was durable when it returned (see the module docs).
        Ok(())
    }

    fn list(&self, kind: ChunkObject) -> StoredStream<'_> {
        let below = self.objects.below(kind.dir_name());
        Box::pin(async_stream::try_stream! {
            let mut objects = below.list_meta();
            while let Some(meta) = objects.next().await {
                let meta = meta?;
                // Anything not named by a digest is not ours to judge.
                if let Some(digest) = meta.location.filename().and_then(B3Digest::from_hex) {
                    yield Stored { digest, size: meta.size, written: meta.last_modified.into() };
                }
            }
        })
    }

    async fn remove(&self, kind: ChunkObject, digest: &B3Digest, cutoff: SystemTime) -> Result<Removal, Error> {
        self.objects.remove(&self.path(kind.dir_name(), digest), Some(cutoff)).await
    }

    async fn remove_leftovers(&self, _cutoff: SystemTime) -> Result<Leftovers, Error> {
        // A put appears whole or not at all (see the module docs): nothing is left behind.
        Ok(Leftovers::default())
    }
}
