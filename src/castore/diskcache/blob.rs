//! Blobs through the disk cache: chunks and chunk lists are read from the cache's files,
//! verified, and on a miss fetched from the far service, verified, and stored.
//!
//! The cache works at chunk granularity, so a reader of a large blob's middle fetches (and
//! caches) only the chunks it reads, and blobs sharing chunks share their files. New blobs go to
//! the far service; the cache only keeps what was read.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::{DiskCache, Object};
use crate::castore::blobservice::{
    BlobReader, BlobService, BlobWriter, CHUNK_MAX, ChunkMeta, ChunkSource, ChunkStream, ChunkedReader, ManyBlobs,
    ParkedStream, READ_AHEAD, WholeReader, read_whole_blob, verify_chunk,
};
use crate::castore::{B3Digest, Error};

/// Most bytes a far service may send for one chunk: ours are at most [`CHUNK_MAX`], and a far
/// store sending far more is broken and must not make us buffer without bound.
const CHUNK_FETCH_LIMIT: u64 = 16 * CHUNK_MAX as u64;

/// A blob service reading through a [`DiskCache`] in front of `far`.
pub struct DiskCacheBlobService {
    cache: Arc<DiskCache>,
    far: Arc<dyn BlobService>,
}

impl DiskCacheBlobService {
    /// `far`'s blobs, cached in `cache`.
    pub fn new(cache: Arc<DiskCache>, far: Arc<dyn BlobService>) -> Self {
        Self { cache, far }
    }

    /// The chunk list of `blob` from the cache, verified; a torn or corrupt one is dropped.
    async fn cached_list(&self, blob: &B3Digest) -> Option<Vec<ChunkMeta>> {
        let data = self.cache.read(Object::ChunkList, blob).await?;
        match decode_list(blob, &data) {
            Ok(list) => Some(list),
            Err(why) => {
                self.cache.discard(Object::ChunkList, blob, &why).await;
                None
            }
        }
    }

    /// The chunk list of `blob` from the far service, checked and cached if it has several
    /// chunks; `None` when far does not have the blob.
    async fn far_list(&self, blob: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        let Some(list) = self.far.chunks(blob).await? else {
            return Ok(None);
        };
        if let [only] = list.as_slice()
            && only.digest != *blob
        {
            return Err(Error::Corrupt(format!(
                "far store lists blob {blob} as the single chunk {}, which has another digest",
                only.digest
            )));
        }
        if list.len() > 1 {
            self.cache.store(Object::ChunkList, blob, encode_list(&list)).await;
        }
        Ok(Some(list))
    }

    fn source(&self) -> Arc<dyn ChunkSource> {
        Arc::new(CachingSource { cache: self.cache.clone(), far: self.far.clone() })
    }
}

/// Reads up to `limit + 1` bytes from `reader`: the whole of it when it has at most `limit`.
async fn read_prefix(reader: &mut (dyn BlobReader + '_), limit: u64) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    reader.take(limit + 1).read_to_end(&mut data).await?;
    Ok(data)
}

#[async_trait]
impl BlobService for DiskCacheBlobService {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        if self.cache.contains(Object::Chunk, digest).await || self.cache.contains(Object::ChunkList, digest).await {
            return Ok(true);
        }
        self.far.has(digest).await
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        // Most blobs are one chunk, stored under the blob's own digest.
        if let Some(data) = read_chunk(&self.cache, digest).await {
            return Ok(Some(Box::new(WholeReader::new(data))));
        }
        if let Some(list) = self.cached_list(digest).await {
            return Ok(Some(Box::new(ChunkedReader::new(self.source(), *digest, list))));
        }
        // A miss. One far read answers a small blob (over gRPC: one call, where the chunk list
        // first would take two); a larger one is noticed after one chunk's worth of bytes.
        let Some(mut reader) = self.far.open_read(digest).await? else {
            return Ok(None);
        };
        if let Some(data) = reader.whole().filter(|data| data.len() <= CHUNK_MAX) {
            // Verified by the far reader, which holds it whole: cached and served as it is,
            // without hashing or copying it again.
            self.cache.store(Object::Chunk, digest, data.clone()).await;
            return Ok(Some(Box::new(WholeReader::new(data))));
        }
        let prefix = read_prefix(reader.as_mut(), CHUNK_MAX as u64).await.map_err(|e| Error::from_io(digest, e))?;
        if prefix.len() <= CHUNK_MAX {
            let data = Bytes::from(prefix);
            if B3Digest::of(&data) != *digest {
                return Err(Error::Corrupt(format!(
                    "far store sent {} bytes for blob {digest} that do not match its digest; not cached",
                    data.len()
                )));
            }
            self.cache.store(Object::Chunk, digest, data.clone()).await;
            return Ok(Some(Box::new(WholeReader::new(data))));
        }
        let Some(list) = self.far_list(digest).await? else {
            return Ok(None);
        };
        if list.is_empty() {
            // A far store that does not expose chunks: nothing to cache piecewise, so the blob
            // is read from it directly.
            drop(reader);
            return self.far.open_read(digest).await;
        }
        // A reader from the start (most are) continues the far read already under way, cutting
        // it into chunks that are verified and stored as they pass; one elsewhere drops it and
        // fetches the chunks it needs one by one.
        let (cache, far) = (self.cache.clone(), self.far.clone());
        let parked: ParkedStream = Box::new(move |blob, chunks| {
            tee(cache, far, *blob, chunks.clone(), BytesMut::from(&prefix[..]), Some(reader))
        });
        Ok(Some(Box::new(ChunkedReader::new(self.source(), *digest, list).with_parked_stream(parked))))
    }

    async fn open_write(&self) -> Box<dyn BlobWriter> {
        self.far.open_write().await
    }

    async fn open_write_deferred(&self) -> Box<dyn BlobWriter> {
        self.far.open_write_deferred().await
    }

    async fn sync(&self) -> Result<(), Error> {
        // Only the far service has deferred writes; the cache's files need no durability.
        self.far.sync().await
    }

    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        if let Some(list) = self.cached_list(digest).await {
            return Ok(Some(list));
        }
        if let Some(data) = read_chunk(&self.cache, digest).await {
            return Ok(Some(vec![ChunkMeta { digest: *digest, size: data.len() as u64 }]));
        }
        self.far_list(digest).await
    }

    /// The cached blobs read many files per trip to the blocking pool, the rest from the far
    /// service in one batch of its own (against a daemon one batched call, where reading them
    /// one by one cost a call each), cached as they arrive. Without this, a warm remount's
    /// full read took 1.1-1.45x the local store's time, and a cold one asked the daemon blob by
    /// blob. The whole batch is gathered before the first result: callers bound its bytes.
    fn read_many(&self, digests: Vec<B3Digest>) -> ManyBlobs<'_> {
        async_stream::stream! {
            let cached = self.cache.read_many(Object::Chunk, &digests).await;
            let mut results: Vec<Option<Result<Option<Bytes>, Error>>> = Vec::with_capacity(digests.len());
            let mut from_far = Vec::new();
            for (digest, data) in digests.iter().zip(cached) {
                if let Some(data) = data {
                    if B3Digest::of(&data) == *digest {
                        results.push(Some(Ok(Some(data))));
                        continue;
                    }
                    let why = format!("{} bytes that do not match the digest", data.len());
                    self.cache.discard(Object::Chunk, digest, &why).await;
                }
                if self.cache.contains_now(Object::ChunkList, digest) {
                    // A blob of several chunks, cached chunk by chunk.
                    results.push(Some(read_whole_blob(self, digest).await));
                } else {
                    results.push(None);
                    from_far.push(*digest);
                }
            }
            let mut filled = HashMap::new();
            if !from_far.is_empty() {
                let mut far = self.far.read_many(from_far);
                while let Some((digest, result)) = far.next().await {
                    // Verified by the far service (read_many's contract). Cached whole as a
                    // chunk under the blob's digest, as open_read does for a small blob.
                    if let Ok(Some(data)) = &result
                        && data.len() <= CHUNK_MAX
                        && !filled.contains_key(&digest)
                    {
                        self.cache.store(Object::Chunk, &digest, data.clone()).await;
                    }
                    filled.insert(digest, result);
                }
            }
            for (digest, result) in digests.into_iter().zip(results) {
                let result = result.or_else(|| filled.get(&digest).cloned()).unwrap_or_else(|| {
                    Err(Error::Storage(format!("the far store answered nothing for blob {digest} of a batch")))
                });
                yield (digest, result);
            }
        }
        .boxed()
    }
}

/// A chunk's bytes from the cache, verified against its digest; a torn or corrupt file is
/// dropped (and `None` returned, a miss).
async fn read_chunk(cache: &DiskCache, digest: &B3Digest) -> Option<Bytes> {
    let data = cache.read(Object::Chunk, digest).await?;
    if B3Digest::of(&data) == *digest {
        return Some(data);
    }
    cache.discard(Object::Chunk, digest, &format!("{} bytes that do not match the digest", data.len())).await;
    None
}

/// Chunks for a [`ChunkedReader`]: from the cache, else from the far service, verified, then
/// cached.
struct CachingSource {
    cache: Arc<DiskCache>,
    far: Arc<dyn BlobService>,
}

#[async_trait]
impl ChunkSource for CachingSource {
    fn stream_chunks(&self, blob: &B3Digest, chunks: &Arc<[ChunkMeta]>) -> Option<ChunkStream> {
        // A blob whose first chunk is cached is most likely cached whole: read chunk by chunk
        // from the cache. Otherwise one far read of the whole blob, instead of one per chunk
        // (over gRPC, a call per chunk made a cold fill of large files 2.5x slower).
        let first = chunks.first()?;
        if self.cache.contains_now(Object::Chunk, &first.digest) {
            return None;
        }
        Some(tee(self.cache.clone(), self.far.clone(), *blob, chunks.clone(), BytesMut::new(), None))
    }

    async fn get_chunk(&self, digest: &B3Digest) -> Result<Option<Bytes>, Error> {
        if let Some(data) = read_chunk(&self.cache, digest).await {
            return Ok(Some(data));
        }
        // A chunk is a blob of its own to the far service (as tvix's BlobService has it).
        let Some(mut reader) = self.far.open_read(digest).await? else {
            return Ok(None);
        };
        if let Some(data) = reader.whole().filter(|data| data.len() as u64 <= CHUNK_FETCH_LIMIT) {
            // Verified by the far reader, which holds it whole.
            self.cache.store(Object::Chunk, digest, data.clone()).await;
            return Ok(Some(data));
        }
        let data = read_prefix(reader.as_mut(), CHUNK_FETCH_LIMIT).await.map_err(|e| Error::from_io(digest, e))?;
        if data.len() as u64 > CHUNK_FETCH_LIMIT {
            return Err(Error::Corrupt(format!(
                "far store sent more than {CHUNK_FETCH_LIMIT} bytes for chunk {digest}"
            )));
        }
        let data = Bytes::from(data);
        if B3Digest::of(&data) != *digest {
            return Err(Error::Corrupt(format!(
                "far store sent {} bytes for chunk {digest} that do not match its digest; not cached",
                data.len()
            )));
        }
        self.cache.store(Object::Chunk, digest, data.clone()).await;
        Ok(Some(data))
    }
}

/// The chunks of `blob` in order, cut from one far read of the whole blob (`reader`, already
/// past `buffered`, or a new one), each verified and stored as it passes.
fn tee(
    cache: Arc<DiskCache>,
    far: Arc<dyn BlobService>,
    blob: B3Digest,
    chunks: Arc<[ChunkMeta]>,
    buffered: BytesMut,
    reader: Option<Box<dyn BlobReader>>,
) -> ChunkStream {
    let (to, stream) = tokio::sync::mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        if let Err(e) = tee_chunks(&cache, &far, &blob, &chunks, buffered, reader, &to).await {
            let _ = to.send(Err(e)).await;
        }
    });
    stream
}

async fn tee_chunks(
    cache: &Arc<DiskCache>,
    far: &Arc<dyn BlobService>,
    blob: &B3Digest,
    chunks: &[ChunkMeta],
    mut buf: BytesMut,
    reader: Option<Box<dyn BlobReader>>,
    to: &tokio::sync::mpsc::Sender<Result<Bytes, Error>>,
) -> Result<(), Error> {
    let mut reader = match reader {
        Some(reader) => reader,
        None => far.open_read(blob).await?.ok_or_else(|| Error::NotFound(format!("blob {blob}")))?,
    };
    for meta in chunks {
        if meta.size > CHUNK_FETCH_LIMIT {
            return Err(Error::Corrupt(format!(
                "far store lists chunk {} of blob {blob} with {} bytes, more than {CHUNK_FETCH_LIMIT}",
                meta.digest, meta.size
            )));
        }
        let size = meta.size as usize;
        while buf.len() < size {
            buf.reserve(size - buf.len());
            if reader.read_buf(&mut buf).await.map_err(|e| Error::from_io(blob, e))? == 0 {
                return Err(Error::Corrupt(format!("far store's blob {blob} ended before its chunk {}", meta.digest)));
            }
        }
        let chunk = buf.split_to(size).freeze();
        verify_chunk(blob, meta, &chunk)?;
        cache.store(Object::Chunk, &meta.digest, chunk.clone()).await;
        if to.send(Ok(chunk)).await.is_err() {
            // The reader went elsewhere or is gone: dropping the far reader cancels its read.
            return Ok(());
        }
    }
    Ok(())
}

/// A stored chunk list: BLAKE3 of the encoded list, then the list (the StatBlobResponse
/// encoding the local stores use). Unlike a chunk, a list cannot be checked against its name
/// without reading the whole blob, so it carries its own checksum against torn writes.
fn encode_list(list: &[ChunkMeta]) -> Bytes {
    let body = crate::castore::blobservice::encode_chunk_list(list);
    let mut data = Vec::with_capacity(32 + body.len());
    data.extend_from_slice(B3Digest::of(&body).as_bytes());
    data.extend_from_slice(&body);
    data.into()
}

/// Checks and decodes a stored chunk list; the error says what is wrong.
fn decode_list(blob: &B3Digest, data: &[u8]) -> Result<Vec<ChunkMeta>, String> {
    let (sum, body) = data.split_at_checked(32).ok_or("shorter than its checksum")?;
    if B3Digest::of(body).as_bytes()[..] != *sum {
        return Err("checksum mismatch".into());
    }
    let list = crate::castore::blobservice::decode_chunk_list(blob, body).map_err(|e| e.to_string())?;
    if list.len() < 2 {
        return Err(format!("a list of {} chunks", list.len()));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_survives_only_intact() {
        let blob = B3Digest::of(b"blob");
        let list =
            vec![ChunkMeta { digest: B3Digest::of(b"a"), size: 1 }, ChunkMeta { digest: B3Digest::of(b"b"), size: 1 }];
        let data = encode_list(&list);
        assert_eq!(decode_list(&blob, &data).unwrap(), list);
        for cut in [0, 10, 32, data.len() - 1] {
            assert!(decode_list(&blob, &data[..cut]).is_err(), "torn at {cut} accepted");
        }
        let mut flipped = data.to_vec();
        flipped[40] ^= 1;
        assert!(decode_list(&blob, &flipped).is_err());
    }
}
