//! Test wrappers around a blob service: a wrapper implements [`BlobHooks`] with only the
//! calls it changes (the rest pass through to [`BlobHooks::inner`]), and [`Wrapped`] makes it
//! a [`BlobService`].

use async_trait::async_trait;
use tvix_store::castore::blobservice::{BlobReader, BlobService, BlobWriter, ChunkMeta, ManyBlobs, read_each};
use tvix_store::castore::{B3Digest, Error};

/// What a test wrapper changes about the blob service it wraps; every call it does not
/// override goes to [`BlobHooks::inner`] unchanged.
#[async_trait]
pub trait BlobHooks: Send + Sync + 'static {
    /// The wrapped service.
    fn inner(&self) -> &dyn BlobService;

    /// [`BlobService::open_read`].
    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        self.inner().open_read(digest).await
    }

    /// [`BlobService::open_write`].
    async fn open_write(&self) -> Box<dyn BlobWriter> {
        self.inner().open_write().await
    }

    /// [`BlobService::chunks`].
    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        self.inner().chunks(digest).await
    }

    /// [`BlobService::read_many`], or the digests given back for the default: single reads
    /// through these hooks.
    fn read_many(&self, digests: Vec<B3Digest>) -> Result<ManyBlobs<'_>, Vec<B3Digest>> {
        Err(digests)
    }
}

/// A [`BlobHooks`] as a [`BlobService`]; derefs to the hooks, so a test reads their fields
/// through it.
pub struct Wrapped<H>(pub H);

impl<H> std::ops::Deref for Wrapped<H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.0
    }
}

#[async_trait]
impl<H: BlobHooks> BlobService for Wrapped<H> {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        self.0.inner().has(digest).await
    }
    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        self.0.open_read(digest).await
    }
    async fn open_write(&self) -> Box<dyn BlobWriter> {
        self.0.open_write().await
    }
    async fn open_write_deferred(&self) -> Box<dyn BlobWriter> {
        self.0.inner().open_write_deferred().await
    }
    async fn sync(&self) -> Result<(), Error> {
        self.0.inner().sync().await
    }
    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        self.0.chunks(digest).await
    }
    fn read_many(&self, digests: Vec<B3Digest>) -> ManyBlobs<'_> {
        self.0.read_many(digests).unwrap_or_else(|digests| read_each(self, digests))
    }
}

/// A reader of bytes held in memory that claims nothing about them ([`BlobReader::whole`] is
/// `None`): what a backend handing out bytes of unknown origin looks like to its consumers.
pub struct PlainReader(pub std::io::Cursor<Vec<u8>>);

impl tokio::io::AsyncRead for PlainReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncSeek for PlainReader {
    fn start_seek(mut self: std::pin::Pin<&mut Self>, position: std::io::SeekFrom) -> std::io::Result<()> {
        std::pin::Pin::new(&mut self.0).start_seek(position)
    }

    fn poll_complete(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<u64>> {
        std::pin::Pin::new(&mut self.0).poll_complete(cx)
    }
}

impl BlobReader for PlainReader {}
