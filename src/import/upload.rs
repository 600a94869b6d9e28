//! Concurrent upload of small blobs, bounded by count and by bytes in flight.
//!
//! Over gRPC every blob Put is a round trip; uploading small files one after the other would
//! make ingestion latency-bound. The caller computes the digest itself (so it can build
//! directories right away) and hands the bytes over; the uploader checks the service agrees.
//!
//! Blobs are written with deferred durability ([`BlobService::open_write_deferred`]): a local
//! store then does not wait for the disk once per file. The caller must call
//! [`BlobService::sync`] after [`Uploader::finish`] and before storing anything that refers to
//! the blobs.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::ImportError;
use crate::castore::B3Digest;
use crate::castore::blobservice::{BlobService, BlobWriter};

/// Blobs up to this size are read whole and uploaded in the background; larger ones stream.
/// A streamed blob holds up the walk until its store confirms it (over gRPC: a round trip and
/// the server's sync), so files of a few MB, common in store paths, go in the background too;
/// their memory is bounded by [`MAX_BYTES_IN_FLIGHT`].
pub const SMALL_BLOB: u64 = 8 * 1024 * 1024;
/// Most uploads in flight at once.
pub const MAX_UPLOADS: usize = 64;
/// Most bytes held by uploads in flight at once.
pub const MAX_BYTES_IN_FLIGHT: usize = 32 * 1024 * 1024;

/// See the module docs.
pub struct Uploader {
    blob: Arc<dyn BlobService>,
    count: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    tasks: JoinSet<Result<(), ImportError>>,
}

impl Uploader {
    /// An uploader storing into `blob`.
    pub fn new(blob: Arc<dyn BlobService>) -> Self {
        Self {
            blob,
            count: Arc::new(Semaphore::new(MAX_UPLOADS)),
            bytes: Arc::new(Semaphore::new(MAX_BYTES_IN_FLIGHT)),
            tasks: JoinSet::new(),
        }
    }

    /// Queues `data` (whose BLAKE3 is `digest`) for upload, waiting while the limits are
    /// reached. Fails early with the error of an upload that already failed.
    pub async fn submit(&mut self, digest: B3Digest, data: Bytes) -> Result<(), ImportError> {
        while let Some(done) = self.tasks.try_join_next() {
            flatten(done)?;
        }
        let count = self.count.clone().acquire_owned().await.map_err(closed)?;
        let weight = data.len().clamp(1, MAX_BYTES_IN_FLIGHT) as u32;
        let bytes = self.bytes.clone().acquire_many_owned(weight).await.map_err(closed)?;
        let blob = self.blob.clone();
        self.tasks.spawn(async move {
            let _permits = (count, bytes);
            let mut w = blob.open_write_deferred().await;
            w.write_bytes(data).await.map_err(|e| {
                ImportError::Store(crate::castore::Error::Storage(format!("uploading blob {digest}: {e}")))
            })?;
            let got = w.close().await?;
            if got != digest {
                return Err(ImportError::DigestMismatch { expected: digest, got });
            }
            Ok(())
        });
        Ok(())
    }

    /// Hands over a streamed blob whose bytes are all written (`digest` computed by the caller
    /// from them): it is closed in the background, so the caller can go on while the store
    /// finishes it (over gRPC, while the server makes it durable).
    pub async fn submit_writer(
        &mut self,
        digest: B3Digest,
        mut writer: Box<dyn BlobWriter>,
    ) -> Result<(), ImportError> {
        while let Some(done) = self.tasks.try_join_next() {
            flatten(done)?;
        }
        let count = self.count.clone().acquire_owned().await.map_err(closed)?;
        self.tasks.spawn(async move {
            let _permit = count;
            let got = writer.close().await?;
            if got != digest {
                return Err(ImportError::DigestMismatch { expected: digest, got });
            }
            Ok(())
        });
        Ok(())
    }

    /// Waits for every queued upload; the first failure wins and the rest are cancelled. The
    /// blobs are not necessarily durable yet (see the module docs).
    pub async fn finish(mut self) -> Result<(), ImportError> {
        while let Some(done) = self.tasks.join_next().await {
            if let Err(e) = flatten(done) {
                self.tasks.abort_all();
                return Err(e);
            }
        }
        Ok(())
    }
}

fn flatten(r: Result<Result<(), ImportError>, tokio::task::JoinError>) -> Result<(), ImportError> {
    r.map_err(|e| ImportError::Task(e.to_string()))?
}

fn closed(e: tokio::sync::AcquireError) -> ImportError {
    ImportError::Task(e.to_string())
}
