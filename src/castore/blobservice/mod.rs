//! BlobService: stores and serves file contents, addressed by their BLAKE3 digest.
//!
//! Blobs are kept as content-defined chunks; a reader of a byte range fetches only the chunks
//! that cover it, and every chunk is checked against its digest before its bytes are handed out.

mod cache;
mod chunked;
mod chunker;
mod local;
mod memory;
mod objectstore;
mod reader;
mod whole;
mod writer;

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeek, AsyncWrite};

pub use cache::CacheBlobService;
pub use chunked::{ChunkObject, ChunkStore, ChunkedBlobService};
pub(crate) use chunked::{decode_chunk_list, encode_chunk_list};
pub use chunker::{CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};
pub use local::LocalChunkStore;
pub use memory::MemoryChunkStore;
pub use objectstore::ObjectStoreChunkStore;
pub(crate) use reader::verify_chunk;
pub use reader::{ChunkSource, ChunkStream, ChunkedReader, ParkedStream, READ_AHEAD};
pub use whole::WholeReader;
pub use writer::{ChannelBlobWriter, IncomingBlob};

use super::{B3Digest, Error};

/// One chunk of a blob: its digest and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkMeta {
    /// BLAKE3 of the chunk's bytes.
    pub digest: B3Digest,
    /// Length of the chunk in bytes.
    pub size: u64,
}

/// A readable, seekable view of one blob. Every byte it hands out was verified first, against
/// the blob's digest or its chunk's.
///
/// Readers hold verified bytes as buffers (a whole small blob, a chunk): [`Self::poll_piece`]
/// hands them on as they are, so a byte is hashed once and copied at most once on its way from
/// the store to whoever consumes it (the kernel, a socket). `AsyncRead` is the adapter for
/// callers that want their own buffer filled.
pub trait BlobReader: AsyncRead + AsyncSeek + Send + Unpin {
    /// Up to `max` bytes (`max` > 0) from the current position, moving past them; empty at the
    /// end of the blob. A reader holding the bytes as a verified buffer hands out a slice of it;
    /// the default reads them into a new buffer.
    fn poll_piece(self: Pin<&mut Self>, cx: &mut Context<'_>, max: usize) -> Poll<std::io::Result<Bytes>> {
        let mut buf = BytesMut::with_capacity(max.min(PIECE_BUF));
        let limit = buf.capacity().min(max);
        ready!(tokio_util::io::poll_read_buf(self, cx, &mut (&mut buf).limit(limit)))?;
        Poll::Ready(Ok(buf.freeze()))
    }

    /// The whole blob as one verified buffer, where the reader holds it so (a small blob read
    /// with one call): a consumer keeping the blob (a cache) takes it without reading or
    /// hashing it again. Independent of the position.
    fn whole(&self) -> Option<Bytes> {
        None
    }
}

/// Largest buffer the default [`BlobReader::poll_piece`] reads into at once.
const PIECE_BUF: usize = 256 * 1024;

/// A boxed reader reads as the reader in the box, pieces included.
impl<T: BlobReader + ?Sized> BlobReader for Box<T> {
    fn poll_piece(mut self: Pin<&mut Self>, cx: &mut Context<'_>, max: usize) -> Poll<std::io::Result<Bytes>> {
        Pin::new(&mut **self).poll_piece(cx, max)
    }

    fn whole(&self) -> Option<Bytes> {
        (**self).whole()
    }
}

/// [`BlobReader::poll_piece`] as a future.
pub trait BlobReaderExt: BlobReader {
    /// Up to `max` bytes (`max` > 0) from the current position; empty at the end of the blob.
    fn piece(&mut self, max: usize) -> impl std::future::Future<Output = std::io::Result<Bytes>> + Send
    where
        Self: Sized,
    {
        std::future::poll_fn(move |cx| Pin::new(&mut *self).poll_piece(cx, max))
    }
}

impl<T: BlobReader + ?Sized> BlobReaderExt for T {}

/// Receives the bytes of a new blob.
#[async_trait]
pub trait BlobWriter: AsyncWrite + Send + Unpin {
    /// Writes `data` (like `write_all`), without copying it where the writer can hand the
    /// buffer on as it is: for callers that already hold the bytes in a [`Bytes`].
    async fn write_bytes(&mut self, data: bytes::Bytes) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.write_all(&data).await
    }

    /// Finishes the blob and returns its digest once it is durably stored. Calling it again
    /// returns the same digest.
    async fn close(&mut self) -> Result<B3Digest, Error>;
}

/// One result of [`BlobService::read_many`]: a digest asked for, and the blob's whole bytes,
/// verified against it (`None` when the blob is absent).
pub type ManyBlob = (B3Digest, Result<Option<Bytes>, Error>);

/// The results of [`BlobService::read_many`], one per digest asked for, in the order asked.
pub type ManyBlobs<'a> = BoxStream<'a, ManyBlob>;

/// Blobs the default [`BlobService::read_many`] reads at once: what the NAR renderer kept in
/// flight before batching (16 kept a daemon-backed render at the speed of a local one, issue 2).
pub const READ_MANY_CONCURRENCY: usize = 16;

/// Stores and serves blobs.
#[async_trait]
pub trait BlobService: Send + Sync {
    /// Whether the blob (or a chunk by that digest) is stored.
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error>;

    /// Opens a blob for reading; `None` when absent.
    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error>;

    /// Starts writing a new blob. Its writer's `close()` returns the digest only once the blob
    /// is durably stored.
    async fn open_write(&self) -> Box<dyn BlobWriter>;

    /// Starts writing a new blob whose durability is deferred to the next [`BlobService::sync`]:
    /// the writer's `close()` may return the digest before the blob is durable, and the blob may
    /// not be visible (`has`, `open_read`, `chunks`) before that sync returns.
    ///
    /// For bulk ingestion, which would otherwise wait for the disk once per blob: write all
    /// blobs this way, then call `sync()` once, and only then store anything that refers to
    /// them (a Directory, a PathInfo). Backends that cannot defer return a normal writer.
    ///
    /// The caller hashes the bytes itself and must check the digest `close()` returns against
    /// its own: a backend may leave that check to the caller instead of hashing again (the gRPC
    /// client does, saving a BLAKE3 pass per blob on the importing side).
    ///
    /// Required, like [`BlobService::sync`]: a wrapper that fell back to a default here would
    /// silently drop the inner service's durability contract.
    async fn open_write_deferred(&self) -> Box<dyn BlobWriter>;

    /// Makes every blob whose deferred writer was closed before this call durable and visible.
    /// Backends whose writers are always durable on close (e.g. the gRPC client: the server's
    /// Put returns only once the blob is durable) return at once, and say so where they do.
    async fn sync(&self) -> Result<(), Error>;

    /// The chunks of a blob in order; `None` when absent. A blob stored as a single chunk lists
    /// itself; an empty list means the backend does not expose chunks for it.
    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error>;

    /// The zero-copy reads a gRPC server uses to send this backend's blobs, where the backend
    /// has them. Only the server asks; a wrapper that does not forward this loses speed, never
    /// a guarantee.
    fn serving(&self) -> Option<&dyn ServingReads> {
        None
    }

    /// The whole bytes of many blobs, each verified against its digest, for a caller that
    /// knows what it needs next (NAR rendering, the mount's prefetch): one result per digest
    /// asked for (a digest asked twice gets two), in the order asked. The stream reads ahead
    /// of the caller by a bounded amount only. Meant for small blobs: each result holds a
    /// whole blob in memory, so a caller bounds the bytes of what it asks for at once.
    ///
    /// A read-speed hook, so unlike the durability hooks it has a default: one read per blob,
    /// [`READ_MANY_CONCURRENCY`] at a time ([`read_each`]). The gRPC client overrides it with
    /// batched calls; a wrapper that does not forward it loses speed, never a guarantee.
    fn read_many(&self, digests: Vec<B3Digest>) -> ManyBlobs<'_> {
        read_each(self, digests)
    }
}

/// [`BlobService::read_many`] as single reads of `blob`, [`READ_MANY_CONCURRENCY`] at a time,
/// results in the order asked: the default, also for wrappers that add to it.
pub fn read_each<'a, S: BlobService + ?Sized>(blob: &'a S, digests: Vec<B3Digest>) -> ManyBlobs<'a> {
    futures::stream::iter(digests)
        .map(move |digest| async move { (digest, read_whole_blob(blob, &digest).await) })
        .buffered(READ_MANY_CONCURRENCY)
        .boxed()
}

/// All of one blob's bytes, verified; `None` when absent. A backend with [`ServingReads`]
/// hands over its own buffer (one lookup, no reader); otherwise the blob is read through its
/// reader, which verifies every chunk.
pub async fn read_whole_blob<S: BlobService + ?Sized>(blob: &S, digest: &B3Digest) -> Result<Option<Bytes>, Error> {
    if let Some(serving) = blob.serving() {
        return match serving.read_whole(digest, u64::MAX).await? {
            WholeBlob::Absent => Ok(None),
            WholeBlob::Verified(data) => Ok(Some(data)),
            WholeBlob::TooLarge => Err(Error::Storage(format!("blob {digest} is too large to be read whole"))),
        };
    }
    let Some(mut reader) = blob.open_read(digest).await? else {
        return Ok(None);
    };
    let mut data = Vec::new();
    reader.read_to_end(&mut data).await.map_err(|e| Error::from_io(digest, e))?;
    Ok(Some(data.into()))
}

/// Reads that hand out a backend's own verified buffers, for a sender that passes them on
/// without copying (the gRPC server's Read).
#[async_trait]
pub trait ServingReads: Send + Sync {
    /// The whole blob as one verified buffer, if it is at most `limit` bytes long. Most blobs of
    /// a store (and every chunk) are small: for them this is one lookup and one buffer, where
    /// a reader costs a chunk-list lookup, a fetch task and a copy per read.
    async fn read_whole(&self, digest: &B3Digest, limit: u64) -> Result<WholeBlob, Error>;

    /// A reader handing out the blob's verified chunk buffers themselves
    /// ([`ChunkedReader::next_piece`]); `None` when the blob is absent.
    async fn open_chunked(&self, digest: &B3Digest) -> Result<Option<ChunkedReader>, Error>;

    /// Several blobs at once, each answered as [`ServingReads::read_whole`] would, in the
    /// order asked: for the batched read's server. A read-speed hook, so it has a default (one
    /// `read_whole` each, [`READ_MANY_CONCURRENCY`] at a time); a local chunk store reads
    /// them with one trip to the blocking pool.
    async fn read_whole_many(&self, digests: &[B3Digest], limit: u64) -> Vec<Result<WholeBlob, Error>> {
        futures::stream::iter(digests.iter().copied())
            .map(|digest| async move { self.read_whole(&digest, limit).await })
            .buffered(READ_MANY_CONCURRENCY)
            .collect()
            .await
    }
}

/// Outcome of [`ServingReads::read_whole`].
#[derive(Debug)]
pub enum WholeBlob {
    /// No blob by that digest.
    Absent,
    /// All of the blob's bytes, verified against its digest.
    Verified(Bytes),
    /// The blob is longer than the limit asked for.
    TooLarge,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    fn data(len: usize) -> Vec<u8> {
        (0..len as u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect()
    }

    async fn roundtrip(service: &dyn BlobService, len: usize) {
        let content = data(len);
        let mut w = service.open_write().await;
        for piece in content.chunks(10_000) {
            w.write_all(piece).await.unwrap();
        }
        let digest = w.close().await.unwrap();
        assert_eq!(digest, B3Digest::of(&content));
        assert!(service.has(&digest).await.unwrap());
        let chunks = service.chunks(&digest).await.unwrap().unwrap();
        assert_eq!(chunks.iter().map(|c| c.size).sum::<u64>(), len as u64);
        let mut r = service.open_read(&digest).await.unwrap().unwrap();
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        assert!(back == content, "content differs for len {len}");
        if len > 100 {
            let mut r = service.open_read(&digest).await.unwrap().unwrap();
            let at = len as u64 * 3 / 4;
            r.seek(std::io::SeekFrom::Start(at)).await.unwrap();
            let mut tail = Vec::new();
            r.read_to_end(&mut tail).await.unwrap();
            assert!(tail == content[at as usize..]);
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn dropped_writer_stores_nothing() {
        let service = ChunkedBlobService::new(MemoryChunkStore::default());
        for i in 0..50u32 {
            let content = data(300_000 + i as usize);
            let mut w = service.open_write().await;
            w.write_all(&content).await.unwrap();
            w.flush().await.unwrap();
            if i % 2 == 0 {
                tokio::task::yield_now().await;
            }
            drop(w);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            assert!(!service.has(&B3Digest::of(&content)).await.unwrap(), "abandoned blob {i} is visible");
        }
    }

    /// A memory and an objectstore+file service (the latter in `dir`).
    async fn local_services(dir: &std::path::Path) -> Vec<Arc<dyn BlobService>> {
        vec![
            Arc::new(ChunkedBlobService::new(MemoryChunkStore::default())),
            Arc::new(ChunkedBlobService::new(LocalChunkStore::open(dir).unwrap())),
        ]
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn deferred_blobs_become_visible_with_sync() {
        let dir = tempfile::tempdir().unwrap();
        for service in local_services(dir.path()).await {
            let small = data(1000);
            let large = data(5_000_000);
            let mut digests = Vec::new();
            for content in [&small, &large] {
                let mut w = service.open_write_deferred().await;
                w.write_all(content).await.unwrap();
                let digest = w.close().await.unwrap();
                assert_eq!(digest, B3Digest::of(content));
                digests.push(digest);
            }
            // A multi-chunk blob's list only appears once its chunks are durable.
            assert!(!service.has(&digests[1]).await.unwrap(), "deferred multi-chunk blob visible before sync");
            service.sync().await.unwrap();
            for (digest, content) in digests.iter().zip([&small, &large]) {
                assert!(service.has(digest).await.unwrap());
                let mut back = Vec::new();
                service.open_read(digest).await.unwrap().unwrap().read_to_end(&mut back).await.unwrap();
                assert!(&back == content, "content of {digest} differs after sync");
            }
            // A second sync has nothing left to do and still succeeds.
            service.sync().await.unwrap();
        }
    }

    #[tokio::test]
    async fn local_store_replaces_a_chunk_of_the_wrong_length() {
        let dir = tempfile::tempdir().unwrap();
        let service = ChunkedBlobService::new(LocalChunkStore::open(dir.path()).unwrap());
        let content = data(10_000);
        let digest = B3Digest::of(&content);
        let hex = digest.to_hex();
        // What a crash between writing a chunk and syncing it can leave behind.
        let path = dir.path().join("chunks").join(&hex[..2]).join(&hex);
        std::fs::write(&path, &content[..100]).unwrap();
        let mut w = service.open_write().await;
        w.write_all(&content).await.unwrap();
        assert_eq!(w.close().await.unwrap(), digest);
        assert_eq!(std::fs::read(&path).unwrap(), content);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn read_many_equals_single_reads_and_fails_only_a_corrupt_entry() {
        let dir = tempfile::tempdir().unwrap();
        for service in local_services(dir.path()).await {
            let mut digests = Vec::new();
            // More than one get_chunks group, with empty, tiny, multi-chunk and large blobs.
            for (i, len) in [0, 1, 700_000, 5_000_000].into_iter().chain((0..40).map(|i| 100 + i * 50)).enumerate() {
                let mut content = data(len);
                content.extend_from_slice(&(i as u32).to_le_bytes()[..len.min(4)]);
                let mut w = service.open_write().await;
                w.write_all(&content).await.unwrap();
                digests.push(w.close().await.unwrap());
            }
            let absent = B3Digest::of(b"absent");
            let asked = [&digests[..2], &[absent], &digests[2..], &[digests[5]]].concat();
            let results: Vec<ManyBlob> = service.read_many(asked.clone()).collect().await;
            assert_eq!(results.len(), asked.len());
            for ((digest, result), want) in results.iter().zip(&asked) {
                assert_eq!(digest, want, "in the order asked");
                let got = result.as_ref().unwrap();
                let single = match service.open_read(digest).await.unwrap() {
                    Some(mut r) => {
                        let mut back = Vec::new();
                        r.read_to_end(&mut back).await.unwrap();
                        Some(back)
                    }
                    None => None,
                };
                assert_eq!(got.as_ref().map(|b| b.to_vec()), single, "blob {digest}");
            }
        }
        // A chunk file corrupted on disk fails its own entry only.
        let service = ChunkedBlobService::new(LocalChunkStore::open(dir.path()).unwrap());
        let (good, bad) = (data(3000), data(4000));
        let mut pair = Vec::new();
        for content in [&good, &bad] {
            let mut w = service.open_write().await;
            w.write_all(content).await.unwrap();
            pair.push(w.close().await.unwrap());
        }
        let hex = pair[1].to_hex();
        let path = dir.path().join("chunks").join(&hex[..2]).join(&hex);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[7] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let results: Vec<ManyBlob> = service.read_many(vec![pair[1], pair[0]]).collect().await;
        assert!(
            matches!(&results[0].1, Err(Error::Corrupt(m)) if m.contains(&pair[1].to_string())),
            "{:?}",
            results[0].1
        );
        assert_eq!(results[1].1.as_ref().unwrap().as_deref(), Some(&good[..]));
    }

    #[tokio::test]
    async fn memory_and_local_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        for service in local_services(dir.path()).await {
            for len in [0, 1, 65_536, 5_000_000] {
                roundtrip(service.as_ref(), len).await;
            }
        }
    }
}
