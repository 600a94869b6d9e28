//! A read-through cache of two blob services: read the near one, on a miss copy the blob from
//! the far one into the near one, verified, and read it there.
//!
//! A fill goes through an ordinary near writer, whose `close()` returns the digest of the bytes
//! it stored; the fill counts only if that digest is the one asked for. A far store that fails
//! midway leaves an unclosed writer behind, which stores nothing a reader could see: the near
//! store never holds a partial blob under the digest asked for.

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::{BlobReader, BlobService, BlobWriter, ChunkMeta, ManyBlobs, WholeReader};
use crate::castore::{B3Digest, Cache, Error};

/// Blobs from `near`, filled from `far` on a miss; new blobs go where [`CacheWrites`](crate::castore::CacheWrites) says.
pub type CacheBlobService = Cache<dyn BlobService>;

impl Cache<dyn BlobService> {
    /// Copies the blob from far (`reader`) to near.
    async fn fill(&self, digest: &B3Digest, mut reader: Box<dyn BlobReader>) -> Result<(), Error> {
        let mut writer = self.near.open_write().await;
        // The far reader verifies chunk by chunk; the near writer's digest checks the whole.
        tokio::io::copy(&mut reader, &mut writer).await.map_err(|e| Error::from_io(digest, e))?;
        let stored = writer.close().await?;
        if stored != *digest {
            return Err(Error::Corrupt(format!(
                "far store served blob {digest} with bytes whose digest is {stored}; not cached"
            )));
        }
        tracing::debug!(%digest, "blob cached from the far store");
        Ok(())
    }

    /// Stores `data`, which far verified as blob `digest`, in near. A failure only costs the
    /// next read another trip to far, so it is logged, not returned: the bytes are good.
    async fn fill_with(&self, digest: &B3Digest, data: Bytes) {
        let mut writer = self.near.open_write().await;
        let stored = match writer.write_bytes(data).await {
            Ok(()) => writer.close().await,
            Err(e) => Err(Error::from_io(digest, e)),
        };
        match stored {
            Ok(stored) if stored == *digest => tracing::debug!(%digest, "blob cached from the far store"),
            Ok(stored) => tracing::warn!(%digest, %stored, "near store stored a far blob under another digest"),
            Err(e) => tracing::warn!(%digest, "caching a blob from the far store: {e}"),
        }
    }
}

#[async_trait]
impl BlobService for Cache<dyn BlobService> {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        Ok(self.near.has(digest).await? || self.far.has(digest).await?)
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        if let Some(reader) = self.near.open_read(digest).await? {
            crate::castore::cache::count("blob", true);
            return Ok(Some(reader));
        }
        crate::castore::cache::count("blob", false);
        let Some(reader) = self.far.open_read(digest).await? else {
            return Ok(None);
        };
        if let Some(data) = reader.whole() {
            // Verified by the far reader, which holds it whole: stored in near and served from
            // memory, not read back from near.
            self.fill_with(digest, data.clone()).await;
            return Ok(Some(Box::new(WholeReader::new(data))));
        }
        self.fill(digest, reader).await?;
        match self.near.open_read(digest).await? {
            Some(reader) => Ok(Some(reader)),
            None => Err(Error::Storage(format!("blob {digest} was cached in the near store but cannot be read there"))),
        }
    }

    async fn open_write(&self) -> Box<dyn BlobWriter> {
        self.target().open_write().await
    }

    async fn open_write_deferred(&self) -> Box<dyn BlobWriter> {
        self.target().open_write_deferred().await
    }

    async fn sync(&self) -> Result<(), Error> {
        // Fills are written durably; only deferred writes, all in the target, need a sync.
        self.target().sync().await
    }

    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        match self.near.chunks(digest).await? {
            Some(chunks) => Ok(Some(chunks)),
            None => self.far.chunks(digest).await,
        }
    }

    /// The batch from near; what near lacks from far in one batch of its own (a remote far
    /// store then costs one batched call instead of a call per missing blob), stored in near.
    /// The whole batch is gathered before the first result: callers bound its bytes.
    fn read_many(&self, digests: Vec<B3Digest>) -> ManyBlobs<'_> {
        async_stream::stream! {
            let mut results: Vec<_> = self.near.read_many(digests).collect().await;
            let missing: Vec<B3Digest> =
                results.iter().filter(|(_, r)| matches!(r, Ok(None))).map(|(d, _)| *d).collect();
            for (_, result) in &results {
                if let Ok(Some(_)) = result {
                    crate::castore::cache::count("blob", true);
                }
            }
            if !missing.is_empty() {
                let mut filled = std::collections::HashMap::new();
                let mut far = self.far.read_many(missing);
                while let Some((digest, result)) = far.next().await {
                    crate::castore::cache::count("blob", false);
                    if let Ok(Some(data)) = &result
                        && !filled.contains_key(&digest)
                    {
                        self.fill_with(&digest, data.clone()).await;
                    }
                    filled.insert(digest, result);
                }
                for (digest, result) in &mut results {
                    if matches!(result, Ok(None))
                        && let Some(far) = filled.get(digest)
                    {
                        *result = far.clone();
                    }
                }
            }
            for result in results {
                yield result;
            }
        }
        .boxed()
    }
}
