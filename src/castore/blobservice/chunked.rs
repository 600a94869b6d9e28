//! The BlobService logic shared by every local backend: content-defined chunking on write,
//! chunk-wise verified reads. A backend only has to store chunks and chunk lists.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use super::chunker::{CHUNK_MAX, final_chunk_lengths};
use super::reader::verify_chunk;
use super::{
    BlobReader, BlobService, BlobWriter, ChannelBlobWriter, ChunkMeta, ChunkSource, ChunkedReader, IncomingBlob,
    ManyBlob, ManyBlobs, READ_MANY_CONCURRENCY, ServingReads, WholeBlob, WholeReader,
};
use crate::castore::inventory::{Leftovers, Removal, StoredStream};
use crate::castore::{B3Digest, Error};

/// Storage of chunks (by their digest) and of the chunk lists of multi-chunk blobs (by the
/// blob's digest). A blob of one chunk has no list: the chunk's digest is the blob's.
#[async_trait]
pub trait ChunkStore: ChunkSource {
    /// Length of a stored chunk; `None` when absent.
    async fn chunk_size(&self, digest: &B3Digest) -> Result<Option<u64>, Error>;
    /// Stores a chunk; durable once [`ChunkStore::sync`] returns. The digest has been computed
    /// by the caller from `data`. A chunk of the wrong length (left behind by a crash before its
    /// sync) must be replaced; one of the right length may be kept as it is.
    async fn put_chunk(&self, digest: &B3Digest, data: Bytes) -> Result<(), Error>;
    /// The chunk list of a multi-chunk blob; `None` when there is none.
    async fn get_chunk_list(&self, blob: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error>;
    /// Stores the chunk list of a blob, after all its chunks are durable; durable once
    /// [`ChunkStore::sync`] returns.
    async fn put_chunk_list(&self, blob: &B3Digest, chunks: &[ChunkMeta]) -> Result<(), Error>;
    /// Makes everything stored before this call durable. Required: a backend whose puts are
    /// durable by themselves says so in its own (empty) implementation.
    async fn sync(&self) -> Result<(), Error>;

    /// Several chunks at once, one result per digest in the order asked (`None` for an absent
    /// one), unverified like [`ChunkSource::get_chunk`]; for [`BlobService::read_many`]. A
    /// read-speed hook, so it has a default (one `get_chunk` each, a few at a time); a backend
    /// that fetches several with one call (one trip to the blocking pool) overrides it.
    async fn get_chunks(&self, digests: &[B3Digest]) -> Vec<Result<Option<Bytes>, Error>> {
        futures::stream::iter(digests.iter().copied())
            .map(|digest| async move { self.get_chunk(&digest).await })
            .buffered(READ_MANY_CONCURRENCY)
            .collect()
            .await
    }

    /// Every stored object of `kind`, for garbage collection and integrity checks. A write that
    /// finds its object already present must still count as a write (a backend refreshes the
    /// object's write time): see [`crate::castore::inventory`].
    fn list(&self, kind: ChunkObject) -> StoredStream<'_>;
    /// Removes the object of `kind` stored under `digest`, unless it was written at or after
    /// `cutoff` (checked as it is removed, so a write racing the removal keeps it).
    async fn remove(&self, kind: ChunkObject, digest: &B3Digest, cutoff: SystemTime) -> Result<Removal, Error>;
    /// Removes what interrupted writes left behind (temporary files) that is older than
    /// `cutoff`. Backends whose writes leave nothing behind return nothing.
    async fn remove_leftovers(&self, cutoff: SystemTime) -> Result<Leftovers, Error>;
}

/// The two kinds of objects a [`ChunkStore`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkObject {
    /// A chunk's bytes, by the chunk's digest.
    Chunk,
    /// The chunk list of a multi-chunk blob, by the blob's digest.
    ChunkList,
}

impl ChunkObject {
    /// Both kinds.
    pub const ALL: [ChunkObject; 2] = [ChunkObject::Chunk, ChunkObject::ChunkList];

    /// The top-level name of this kind in the persistent layouts (see [`stored_key`]).
    pub fn dir_name(self) -> &'static str {
        match self {
            ChunkObject::Chunk => "chunks",
            ChunkObject::ChunkList => "blobs",
        }
    }
}

/// Blobs of a [`BlobService::read_many`] fetched with one [`ChunkStore::get_chunks`] call. A
/// local store reads them in one trip to the blocking pool instead of one trip each: those
/// hand-offs were a third of a small NAR's CPU time in nar-bridge (docs/benchmarks.md).
const CHUNKS_PER_GET: usize = 32;
/// [`ChunkStore::get_chunks`] calls under way at once: on the 2-core machine two already keep
/// both cores busy, four leave room for a backend that waits on I/O.
const GETS_AHEAD: usize = 4;

/// Chunks stored concurrently per blob being written: enough to overlap hashing and storage I/O
/// on a few cores, bounded so a writer holds at most this many chunks (≤ 1 MiB each) in memory.
const STORES_IN_FLIGHT: usize = 4;

/// A [`BlobService`] over a [`ChunkStore`].
pub struct ChunkedBlobService<S> {
    store: Arc<S>,
    /// Chunk lists of deferred multi-chunk blobs, stored by the next sync once their chunks are
    /// durable: a stored list must never refer to a chunk that a crash could still lose.
    pending: PendingLists,
    /// Held for a whole sync, so a sync returns only after the lists an earlier, concurrent
    /// sync took over are stored too.
    syncing: tokio::sync::Mutex<()>,
}

impl<S: ChunkStore> ChunkedBlobService<S> {
    /// Serves blobs out of `store`.
    pub fn new(store: S) -> Self {
        Self { store: Arc::new(store), pending: Arc::default(), syncing: tokio::sync::Mutex::new(()) }
    }
}

impl<S: ChunkStore + 'static> ChunkedBlobService<S> {
    /// The chunk store underneath, for garbage collection.
    pub fn chunk_store(&self) -> Arc<dyn ChunkStore> {
        self.store.clone()
    }
}

/// Chunk lists waiting for the next sync, by blob digest.
type PendingLists = Arc<parking_lot::Mutex<Vec<(B3Digest, Vec<ChunkMeta>)>>>;

/// When a blob writer's close() may return.
enum Durability {
    /// Once the blob is durable and visible.
    Now,
    /// Once its chunks are written; its chunk list (if any) goes here for the next sync.
    Deferred(PendingLists),
}

#[async_trait]
impl<S: ChunkStore> BlobService for ChunkedBlobService<S> {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        Ok(self.chunks(digest).await?.is_some())
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        // A blob of one chunk (most files of a store) is that chunk: fetched and verified at
        // once, with one lookup instead of a size lookup followed by a fetch.
        if let Some(data) = self.single_chunk(digest).await? {
            return Ok(Some(Box::new(WholeReader::new(data))));
        }
        let Some(chunks) = self.store.get_chunk_list(digest).await? else {
            return Ok(None);
        };
        let source: Arc<dyn ChunkSource> = self.store.clone();
        Ok(Some(Box::new(ChunkedReader::new(source, *digest, chunks))))
    }

    async fn open_write(&self) -> Box<dyn BlobWriter> {
        let store = self.store.clone();
        Box::new(ChannelBlobWriter::spawn(move |incoming| store_blob(store, incoming, Durability::Now)))
    }

    async fn open_write_deferred(&self) -> Box<dyn BlobWriter> {
        let store = self.store.clone();
        let durability = Durability::Deferred(self.pending.clone());
        Box::new(ChannelBlobWriter::spawn(move |incoming| store_blob(store, incoming, durability)))
    }

    async fn sync(&self) -> Result<(), Error> {
        let _syncing = self.syncing.lock().await;
        let mut lists = std::mem::take(&mut *self.pending.lock());
        let any_list = !lists.is_empty();
        // The chunks of every deferred blob closed so far, then the lists referring to them.
        let mut result = self.store.sync().await;
        while result.is_ok()
            && let Some((blob, chunks)) = lists.last()
        {
            result = self.store.put_chunk_list(blob, chunks).await;
            if result.is_ok() {
                lists.pop();
            }
        }
        if result.is_ok() {
            return if any_list { self.store.sync().await } else { Ok(()) };
        }
        // What was not stored is retried by the next sync.
        self.pending.lock().extend(lists);
        result
    }

    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        // Most blobs (the many small files of a store) are one chunk, so that is looked up
        // first. A chunk stored under the blob's digest holds exactly the blob's bytes, so it
        // answers correctly even for a blob that also has a chunk list.
        if let Some(size) = self.store.chunk_size(digest).await? {
            return Ok(Some(vec![ChunkMeta { digest: *digest, size }]));
        }
        self.store.get_chunk_list(digest).await
    }

    fn serving(&self) -> Option<&dyn ServingReads> {
        Some(self)
    }

    fn read_many(&self, digests: Vec<B3Digest>) -> ManyBlobs<'_> {
        let groups: Vec<Vec<B3Digest>> = digests.chunks(CHUNKS_PER_GET).map(<[B3Digest]>::to_vec).collect();
        futures::stream::iter(groups)
            .map(move |group| self.read_group(group))
            .buffered(GETS_AHEAD)
            .flat_map(futures::stream::iter)
            .boxed()
    }
}

#[async_trait]
impl<S: ChunkStore> ServingReads for ChunkedBlobService<S> {
    async fn open_chunked(&self, digest: &B3Digest) -> Result<Option<ChunkedReader>, Error> {
        let Some(chunks) = self.chunks(digest).await? else {
            return Ok(None);
        };
        let source: Arc<dyn ChunkSource> = self.store.clone();
        Ok(Some(ChunkedReader::new(source, *digest, chunks)))
    }

    async fn read_whole(&self, digest: &B3Digest, limit: u64) -> Result<WholeBlob, Error> {
        if let Some(data) = self.single_chunk(digest).await? {
            return Ok(if data.len() as u64 > limit { WholeBlob::TooLarge } else { WholeBlob::Verified(data) });
        }
        self.read_listed(digest, limit).await
    }

    async fn read_whole_many(&self, digests: &[B3Digest], limit: u64) -> Vec<Result<WholeBlob, Error>> {
        let mut fetched = self.store.get_chunks(digests).await.into_iter();
        let mut results = Vec::with_capacity(digests.len());
        for digest in digests {
            results.push(match fetched.next() {
                Some(Ok(Some(data))) => {
                    verify_chunk(digest, &ChunkMeta { digest: *digest, size: data.len() as u64 }, &data).map(|()| {
                        if data.len() as u64 > limit { WholeBlob::TooLarge } else { WholeBlob::Verified(data) }
                    })
                }
                // Not a single chunk: a blob with a chunk list, or absent.
                Some(Ok(None)) => self.read_listed(digest, limit).await,
                Some(Err(e)) => Err(e),
                None => Err(Error::Storage(format!("chunk store gave no answer for chunk {digest}"))),
            });
        }
        results
    }
}

impl<S: ChunkStore> ChunkedBlobService<S> {
    /// A blob with a chunk list (not a single chunk) read whole, if at most `limit` bytes.
    async fn read_listed(&self, digest: &B3Digest, limit: u64) -> Result<WholeBlob, Error> {
        let Some(chunks) = self.store.get_chunk_list(digest).await? else {
            return Ok(WholeBlob::Absent);
        };
        let size: u64 = chunks.iter().map(|c| c.size).sum();
        if size > limit {
            return Ok(WholeBlob::TooLarge);
        }
        let source: Arc<dyn ChunkSource> = self.store.clone();
        let mut data = Vec::with_capacity(size as usize);
        ChunkedReader::new(source, *digest, chunks)
            .read_to_end(&mut data)
            .await
            .map_err(|e| Error::from_io(digest, e))?;
        Ok(WholeBlob::Verified(data.into()))
    }

    /// One group of a [`BlobService::read_many`]: the single-chunk blobs with one
    /// [`ChunkStore::get_chunks`], the others through their chunk lists.
    async fn read_group(&self, group: Vec<B3Digest>) -> Vec<ManyBlob> {
        let results = self.read_whole_many(&group, u64::MAX).await;
        group
            .into_iter()
            .zip(results)
            .map(|(digest, result)| {
                let result = result.and_then(|whole| match whole {
                    WholeBlob::Verified(data) => Ok(Some(data)),
                    WholeBlob::Absent => Ok(None),
                    WholeBlob::TooLarge => Err(Error::Storage(format!("blob {digest} is too large to be read whole"))),
                });
                (digest, result)
            })
            .collect()
    }

    /// The verified bytes of the blob if it is stored as a single chunk (under its own digest).
    async fn single_chunk(&self, digest: &B3Digest) -> Result<Option<Bytes>, Error> {
        let Some(data) = self.store.get_chunk(digest).await? else {
            return Ok(None);
        };
        verify_chunk(digest, &ChunkMeta { digest: *digest, size: data.len() as u64 }, &data)?;
        Ok(Some(data))
    }
}

/// Cuts the incoming bytes into chunks, stores them (a few at a time), and stores the chunk
/// list last, so a blob's digest is only visible once everything it needs is durable (with
/// [`Durability::Deferred`], once the next sync made it so).
async fn store_blob<S: ChunkStore>(
    store: Arc<S>,
    mut incoming: IncomingBlob,
    durability: Durability,
) -> Result<B3Digest, Error> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = BytesMut::new();
    // A piece received while nothing else is buffered is kept as it is, so a blob arriving in
    // one piece (most small files; a whole file handed over with `write_bytes`) is cut into
    // chunks without being copied.
    let mut first: Option<Bytes> = None;
    let mut in_flight: VecDeque<JoinHandle<Result<ChunkMeta, Error>>> = VecDeque::new();
    let mut chunks = Vec::new();
    let mut total = 0u64;
    let mut eof = false;
    let mut whole: Option<B3Digest> = None;
    while !eof {
        match incoming.next().await? {
            Some(data) => {
                hasher.update(&data);
                total += data.len() as u64;
                if buf.is_empty() && first.is_none() {
                    first = Some(data);
                } else {
                    if let Some(previous) = first.take() {
                        buf.extend_from_slice(&previous);
                    }
                    buf.extend_from_slice(&data);
                }
                let buffered = buf.len() + first.as_ref().map_or(0, Bytes::len);
                if buffered < 2 * CHUNK_MAX {
                    continue;
                }
            }
            None => eof = true,
        }
        let mut pieces = Vec::new();
        if let Some(data) = first.take() {
            let mut offset = 0;
            for len in final_chunk_lengths(&data, eof) {
                pieces.push(data.slice(offset..offset + len));
                offset += len;
            }
            // The held-back end waits for more bytes; `buf` is empty while `first` is held.
            buf.extend_from_slice(&data[offset..]);
        } else {
            for len in final_chunk_lengths(&buf, eof) {
                pieces.push(buf.split_to(len).freeze());
            }
        }
        for chunk in pieces {
            let len = chunk.len();
            // A blob of one chunk (most files) is hashed once: the chunk's digest is the blob's.
            let known = if eof && len as u64 == total {
                let digest = B3Digest::of_hasher(&hasher);
                whole = Some(digest);
                Some(digest)
            } else {
                None
            };
            if in_flight.len() >= STORES_IN_FLIGHT
                && let Some(task) = in_flight.pop_front()
            {
                chunks.push(join(task).await?);
            }
            in_flight.push_back(tokio::spawn(store_chunk(store.clone(), chunk, known)));
        }
    }
    for task in in_flight {
        chunks.push(join(task).await?);
    }
    let digest = whole.unwrap_or_else(|| B3Digest::of_hasher(&hasher));
    if chunks.is_empty() {
        // The empty blob is stored as one empty chunk, so that it, too, is `has`-able.
        store_chunk(store.clone(), Bytes::new(), Some(digest)).await?;
    }
    match durability {
        Durability::Now => {
            // The chunks must be durable before the list that makes the blob visible refers to them.
            store.sync().await?;
            if chunks.len() > 1 {
                store.put_chunk_list(&digest, &chunks).await?;
                store.sync().await?;
            }
        }
        Durability::Deferred(pending) => {
            if chunks.len() > 1 {
                pending.lock().push((digest, chunks));
            }
        }
    }
    Ok(digest)
}

/// Stores one chunk; `known` is its digest when the caller already computed it.
async fn store_chunk<S: ChunkStore>(store: Arc<S>, data: Bytes, known: Option<B3Digest>) -> Result<ChunkMeta, Error> {
    let size = data.len() as u64;
    let digest = match known {
        Some(digest) => digest,
        None => {
            let data = data.clone();
            tokio::task::spawn_blocking(move || B3Digest::of(&data))
                .await
                .map_err(|e| Error::Storage(format!("hashing task failed: {e}")))?
        }
    };
    store.put_chunk(&digest, data).await?;
    Ok(ChunkMeta { digest, size })
}

async fn join<T>(task: JoinHandle<Result<T, Error>>) -> Result<T, Error> {
    task.await.unwrap_or_else(|e| Err(Error::Storage(format!("chunk store task failed: {e}"))))
}

/// Where a chunk (`kind` = `chunks`) or the chunk list of a blob (`blobs`) is kept below a chunk
/// store's root, as path components `[kind, <2 hex>, <64 hex>]`: fanned out by the digest's
/// first byte. Both persistent chunk stores (local files, object stores) use this one layout.
pub(crate) fn stored_key(kind: &'static str, digest: &B3Digest) -> [String; 3] {
    let hex = digest.to_hex();
    [kind.to_string(), hex[..2].to_string(), hex]
}

/// Encodes a chunk list for storage (the StatBlobResponse message, so it is self-describing).
pub(crate) fn encode_chunk_list(chunks: &[ChunkMeta]) -> Vec<u8> {
    use prost::Message;
    crate::proto::castore::StatBlobResponse {
        chunks: chunks
            .iter()
            .map(|c| crate::proto::castore::stat_blob_response::ChunkMeta { digest: c.digest.into(), size: c.size })
            .collect(),
        bao: Bytes::new(),
    }
    .encode_to_vec()
}

/// Decodes a stored chunk list; `blob` names it in errors.
pub(crate) fn decode_chunk_list(blob: &B3Digest, buf: &[u8]) -> Result<Vec<ChunkMeta>, Error> {
    use prost::Message;
    let corrupt = |what: String| Error::Corrupt(format!("chunk list of blob {blob}: {what}"));
    let msg = crate::proto::castore::StatBlobResponse::decode(buf).map_err(|e| corrupt(e.to_string()))?;
    msg.chunks
        .into_iter()
        .map(|c| {
            Ok(ChunkMeta { digest: B3Digest::try_from(&c.digest).map_err(|e| corrupt(e.to_string()))?, size: c.size })
        })
        .collect()
}
