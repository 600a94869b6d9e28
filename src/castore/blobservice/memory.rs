//! `memory://`: chunks and chunk lists in process memory.

use std::collections::HashMap;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;

use super::{ChunkMeta, ChunkObject, ChunkSource, ChunkStore};
use crate::castore::inventory::{Leftovers, Removal, Stored, StoredStream};
use crate::castore::{B3Digest, Error};

/// Chunk storage in memory; gone when the process exits.
#[derive(Default)]
pub struct MemoryChunkStore {
    chunks: RwLock<HashMap<B3Digest, (Bytes, SystemTime)>>,
    lists: RwLock<HashMap<B3Digest, (Vec<ChunkMeta>, SystemTime)>>,
}

#[async_trait]
impl ChunkSource for MemoryChunkStore {
    async fn get_chunk(&self, digest: &B3Digest) -> Result<Option<Bytes>, Error> {
        Ok(self.chunks.read().get(digest).map(|(data, _)| data.clone()))
    }
}

#[async_trait]
impl ChunkStore for MemoryChunkStore {
    async fn chunk_size(&self, digest: &B3Digest) -> Result<Option<u64>, Error> {
        Ok(self.chunks.read().get(digest).map(|(c, _)| c.len() as u64))
    }

    async fn put_chunk(&self, digest: &B3Digest, data: Bytes) -> Result<(), Error> {
        self.chunks.write().insert(*digest, (data, SystemTime::now()));
        Ok(())
    }

    async fn get_chunk_list(&self, blob: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        Ok(self.lists.read().get(blob).map(|(list, _)| list.clone()))
    }

    async fn put_chunk_list(&self, blob: &B3Digest, chunks: &[ChunkMeta]) -> Result<(), Error> {
        self.lists.write().insert(*blob, (chunks.to_vec(), SystemTime::now()));
        Ok(())
    }

    async fn sync(&self) -> Result<(), Error> {
        // Nothing outlives the process, so there is nothing to make durable.
        Ok(())
    }

    fn list(&self, kind: ChunkObject) -> StoredStream<'_> {
        let all: Vec<_> = match kind {
            ChunkObject::Chunk => self
                .chunks
                .read()
                .iter()
                .map(|(digest, (data, written))| {
                    Ok(Stored { digest: *digest, size: data.len() as u64, written: *written })
                })
                .collect(),
            ChunkObject::ChunkList => self
                .lists
                .read()
                .iter()
                .map(|(digest, (list, written))| {
                    // The size the list would take encoded, as the persistent stores report.
                    let size = super::chunked::encode_chunk_list(list).len() as u64;
                    Ok(Stored { digest: *digest, size, written: *written })
                })
                .collect(),
        };
        Box::pin(futures::stream::iter(all))
    }

    async fn remove(&self, kind: ChunkObject, digest: &B3Digest, cutoff: SystemTime) -> Result<Removal, Error> {
        fn take<T>(map: &mut HashMap<B3Digest, (T, SystemTime)>, digest: &B3Digest, cutoff: SystemTime) -> Option<T> {
            match map.get(digest) {
                Some((_, written)) if *written >= cutoff => None,
                _ => map.remove(digest).map(|(value, _)| value),
            }
        }
        let removal = match kind {
            ChunkObject::Chunk => {
                let mut chunks = self.chunks.write();
                let present = chunks.contains_key(digest);
                (present, take(&mut chunks, digest, cutoff).map(|data| data.len() as u64))
            }
            ChunkObject::ChunkList => {
                let mut lists = self.lists.write();
                let present = lists.contains_key(digest);
                let size =
                    take(&mut lists, digest, cutoff).map(|list| super::chunked::encode_chunk_list(&list).len() as u64);
                (present, size)
            }
        };
        Ok(match removal {
            (false, _) => Removal::Absent,
            (true, None) => Removal::Recent,
            (true, Some(size)) => Removal::Removed(size),
        })
    }

    async fn remove_leftovers(&self, _cutoff: SystemTime) -> Result<Leftovers, Error> {
        // A write either inserts whole or not at all: nothing is ever left behind.
        Ok(Leftovers::default())
    }
}
