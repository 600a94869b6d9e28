//! Chunks and chunk lists as objects in any [`object_store::ObjectStore`]
//! (`objectstore+memory://` today; S3 and other engines plug in the same way).
//!
//! Only plain `put`, `head` and `get` are used, nothing that needs a local file system. The
//! layout matches [`super::LocalChunkStore`]'s below the prefix: `chunks/<2 hex>/<64 hex>` holds
//! a chunk's bytes, `blobs/<2 hex>/<64 hex>` the chunk list of a multi-chunk blob. A `put` of
//! an object store is atomic (an object appears whole or not at all) and durable when it
//! returns, which is all [`ChunkStore`] asks for: `sync` has nothing left to do.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::chunked::{decode_chunk_list, encode_chunk_list, stored_key};
use super::{ChunkMeta, ChunkSource, ChunkStore};
use crate::castore::{B3Digest, Error};

/// Chunk storage in an [`ObjectStore`], below a key prefix.
pub struct ObjectStoreChunkStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// Shown in errors, so a failure names the store it happened in.
    location: String,
}

impl ObjectStoreChunkStore {
    /// Keeps chunks in `store` below `prefix` (may be empty); `location` names the store in
    /// errors (e.g. its URL).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path, location: impl Into<String>) -> Self {
        Self { store, prefix, location: location.into() }
    }

    fn path(&self, kind: &'static str, digest: &B3Digest) -> Path {
        stored_key(kind, digest).iter().fold(self.prefix.clone(), |path, part| path.join(part.as_str()))
    }

    fn error(&self, path: &Path, e: object_store::Error) -> Error {
        Error::storage(format!("blob store {}: {path}", self.location), e)
    }

    async fn get(&self, path: &Path) -> Result<Option<Bytes>, Error> {
        match self.store.get(path).await {
            Ok(result) => Ok(Some(result.bytes().await.map_err(|e| self.error(path, e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(path, e)),
        }
    }

    async fn put(&self, path: &Path, data: Bytes) -> Result<(), Error> {
        self.store.put(path, PutPayload::from_bytes(data)).await.map(|_| ()).map_err(|e| self.error(path, e))
    }
}

#[async_trait]
impl ChunkSource for ObjectStoreChunkStore {
    async fn get_chunk(&self, digest: &B3Digest) -> Result<Option<Bytes>, Error> {
        self.get(&self.path("chunks", digest)).await
    }
}

#[async_trait]
impl ChunkStore for ObjectStoreChunkStore {
    async fn chunk_size(&self, digest: &B3Digest) -> Result<Option<u64>, Error> {
        let path = self.path("chunks", digest);
        match self.store.head(&path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(&path, e)),
        }
    }

    async fn put_chunk(&self, digest: &B3Digest, data: Bytes) -> Result<(), Error> {
        // A put replaces an object whole, so a chunk of the wrong length cannot survive one.
        self.put(&self.path("chunks", digest), data).await
    }

    async fn get_chunk_list(&self, blob: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        match self.get(&self.path("blobs", blob)).await? {
            Some(buf) => Ok(Some(decode_chunk_list(blob, &buf)?)),
            None => Ok(None),
        }
    }

    async fn put_chunk_list(&self, blob: &B3Digest, chunks: &[ChunkMeta]) -> Result<(), Error> {
        self.put(&self.path("blobs", blob), Bytes::from(encode_chunk_list(chunks))).await
    }

    async fn sync(&self) -> Result<(), Error> {
        // Every put was durable when it returned (see the module docs).
        Ok(())
    }
}
