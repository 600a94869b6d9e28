//! What substitution did, for a summary (`tvix-store substitute`): bytes fetched from binary
//! caches, and file bytes that were new to the blob service.
//!
//! "New" is found out per blob as it is written: the wrapper hashes what ingestion writes and
//! asks the blob service whether it has that digest before closing the writer (a deferred
//! write is not visible before then). That costs a BLAKE3 pass and one `has` per blob on top
//! of ingestion, which already does both once; small blobs are written by the uploader's
//! concurrent tasks, so over gRPC the extra round trips overlap.

use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use tokio::io::AsyncWrite;

use crate::castore::blobservice::{BlobReader, BlobService, BlobWriter, ChunkMeta, ManyBlobs, ServingReads};
use crate::castore::{B3Digest, Error};

/// Counters shared by every binary cache of one set of services. All figures count from
/// when the services were opened.
#[derive(Debug, Default)]
pub struct SubstituteStats {
    downloaded: AtomicU64,
    stored: AtomicU64,
    /// Blobs already counted as stored: two files with the same contents, in one path or in
    /// two, are stored once.
    counted: parking_lot::Mutex<HashSet<B3Digest>>,
}

impl SubstituteStats {
    /// Bytes fetched from binary caches: narinfos and NAR files as they came over the wire
    /// (compressed), including those of lookups that then failed. Paths already in the store
    /// fetch nothing.
    pub fn downloaded(&self) -> u64 {
        self.downloaded.load(Ordering::Relaxed)
    }

    /// File content bytes of substituted paths that the blob service did not have before: each
    /// new blob counted once, at its full size (chunk-level deduplication inside the blob
    /// service is not seen here).
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    pub(crate) fn add_downloaded(&self, n: usize) {
        self.downloaded.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn add_stored(&self, digest: B3Digest, size: u64) {
        if self.counted.lock().insert(digest) {
            self.stored.fetch_add(size, Ordering::Relaxed);
        }
    }
}

/// A blob service that counts, in [`SubstituteStats::stored`], the blobs written through it
/// that it did not already have. Every call is forwarded as it is.
pub(crate) struct CountingBlobs {
    inner: Arc<dyn BlobService>,
    stats: Arc<SubstituteStats>,
}

impl CountingBlobs {
    pub(crate) fn new(inner: Arc<dyn BlobService>, stats: Arc<SubstituteStats>) -> Self {
        Self { inner, stats }
    }

    fn wrap(&self, inner: Box<dyn BlobWriter>) -> Box<dyn BlobWriter> {
        Box::new(CountingWriter {
            inner,
            blob: self.inner.clone(),
            stats: self.stats.clone(),
            hasher: blake3::Hasher::new(),
            size: 0,
            counted: false,
        })
    }
}

#[async_trait]
impl BlobService for CountingBlobs {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        self.inner.has(digest).await
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        self.inner.open_read(digest).await
    }

    async fn open_write(&self) -> Box<dyn BlobWriter> {
        self.wrap(self.inner.open_write().await)
    }

    async fn open_write_deferred(&self) -> Box<dyn BlobWriter> {
        self.wrap(self.inner.open_write_deferred().await)
    }

    async fn sync(&self) -> Result<(), Error> {
        self.inner.sync().await
    }

    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        self.inner.chunks(digest).await
    }

    fn serving(&self) -> Option<&dyn ServingReads> {
        self.inner.serving()
    }

    fn read_many(&self, digests: Vec<B3Digest>) -> ManyBlobs<'_> {
        self.inner.read_many(digests)
    }
}

struct CountingWriter {
    inner: Box<dyn BlobWriter>,
    blob: Arc<dyn BlobService>,
    stats: Arc<SubstituteStats>,
    hasher: blake3::Hasher,
    size: u64,
    /// Set once close has counted the blob, so a second close does not ask again.
    counted: bool,
}

impl AsyncWrite for CountingWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        // Only what the inner writer took is part of the blob.
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl BlobWriter for CountingWriter {
    async fn write_bytes(&mut self, data: bytes::Bytes) -> io::Result<()> {
        self.hasher.update(&data);
        self.size += data.len() as u64;
        // Forwarded whole, so the inner writer can keep the buffer without a copy.
        self.inner.write_bytes(data).await
    }

    async fn close(&mut self) -> Result<B3Digest, Error> {
        if self.counted {
            return self.inner.close().await;
        }
        let digest = B3Digest::from(self.hasher.finalize());
        // Asked before the inner close: until then this write itself is not visible. A failing
        // `has` only leaves the blob uncounted: a summary figure must not fail an ingestion
        // (the close right after reports a broken store anyway).
        let had = self.blob.has(&digest).await.unwrap_or(true);
        let closed = self.inner.close().await?;
        self.counted = true;
        if !had && closed == digest {
            self.stats.add_stored(digest, self.size);
        }
        Ok(closed)
    }
}
