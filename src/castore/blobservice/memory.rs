//! `memory://`: chunks and chunk lists in process memory.

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;

use super::{ChunkMeta, ChunkSource, ChunkStore};
use crate::castore::{B3Digest, Error};

/// Chunk storage in memory; gone when the process exits.
#[derive(Default)]
pub struct MemoryChunkStore {
    chunks: RwLock<HashMap<B3Digest, Bytes>>,
    lists: RwLock<HashMap<B3Digest, Vec<ChunkMeta>>>,
}

#[async_trait]
impl ChunkSource for MemoryChunkStore {
    async fn get_chunk(&self, digest: &B3Digest) -> Result<Option<Bytes>, Error> {
        Ok(self.chunks.read().get(digest).cloned())
    }
}

#[async_trait]
impl ChunkStore for MemoryChunkStore {
    async fn chunk_size(&self, digest: &B3Digest) -> Result<Option<u64>, Error> {
        Ok(self.chunks.read().get(digest).map(|c| c.len() as u64))
    }

    async fn put_chunk(&self, digest: &B3Digest, data: Bytes) -> Result<(), Error> {
        self.chunks.write().insert(*digest, data);
        Ok(())
    }

    async fn get_chunk_list(&self, blob: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        Ok(self.lists.read().get(blob).cloned())
    }

    async fn put_chunk_list(&self, blob: &B3Digest, chunks: &[ChunkMeta]) -> Result<(), Error> {
        self.lists.write().insert(*blob, chunks.to_vec());
        Ok(())
    }

    async fn sync(&self) -> Result<(), Error> {
        // Nothing outlives the process, so there is nothing to make durable.
        Ok(())
    }
}
