//! Reading a blob through its chunk list: only the chunks covering the bytes asked for are
//! fetched, the next ones are fetched ahead while reading sequentially, and every chunk is
//! verified against its digest before any of its bytes are handed out.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};
use tokio::task::JoinHandle;

use super::{BlobReader, ChunkMeta};
use crate::castore::{B3Digest, Error};

/// Where a [`ChunkedReader`] gets chunk bytes from. Returned bytes are unverified.
#[async_trait]
pub trait ChunkSource: Send + Sync + 'static {
    /// The bytes of the chunk with this digest; `None` when absent.
    async fn get_chunk(&self, digest: &B3Digest) -> Result<Option<Bytes>, Error>;

    /// Starts sending all chunks of `blob` in order, each verified against its entry in
    /// `chunks`, for a reader that starts at the beginning; `None` (the default) when the source
    /// can only fetch chunk by chunk. Over gRPC this is one call for the whole blob instead of a
    /// call per chunk, whose fixed cost dominated reading a large blob.
    fn stream_chunks(&self, blob: &B3Digest, chunks: &Arc<[ChunkMeta]>) -> Option<ChunkStream> {
        let _ = (blob, chunks);
        None
    }
}

/// Verified chunks of one blob in order, as [`ChunkSource::stream_chunks`] sends them; bounded to
/// [`READ_AHEAD`] chunks ahead of the reader. Dropping it stops the sender.
pub type ChunkStream = tokio::sync::mpsc::Receiver<Result<Bytes, Error>>;

/// Starts a [`ChunkStream`] from something already under way (e.g. a call the opener made),
/// given the blob and its chunks; see [`ChunkedReader::with_parked_stream`].
pub type ParkedStream = Box<dyn FnOnce(&B3Digest, &Arc<[ChunkMeta]>) -> ChunkStream + Send>;

/// How many chunks past the one being read are fetched ahead while reading sequentially. With 3,
/// a cold `tvix-store dump` of a 300 MB path took 0.7-1.05 s; deeper read-ahead hides more of
/// the per-chunk fetch and verify latency (16: 0.45-0.67 s). 8 keeps most of that gain while a
/// sequential reader holds ~2 MiB (at most 8 MiB) of fetched chunks.
pub const READ_AHEAD: usize = 8;

/// Checks fetched chunk bytes against the chunk's length and digest; `blob` names the blob the
/// chunk belongs to in the error (for a blob of one chunk, the chunk itself).
pub(crate) fn verify_chunk(blob: &B3Digest, chunk: &ChunkMeta, data: &[u8]) -> Result<(), Error> {
    if data.len() as u64 != chunk.size || B3Digest::of(data) != chunk.digest {
        return Err(Error::Corrupt(format!(
            "chunk {} of blob {blob}: stored bytes ({} bytes) do not match the chunk digest",
            chunk.digest,
            data.len()
        )));
    }
    Ok(())
}

/// Reads one blob through its chunk list.
pub struct ChunkedReader {
    source: Arc<dyn ChunkSource>,
    blob: B3Digest,
    chunks: Arc<[ChunkMeta]>,
    /// Offset in the blob where each chunk starts.
    starts: Arc<[u64]>,
    size: u64,
    pos: u64,
    current: Option<(usize, Bytes)>,
    /// Fetches under way, for consecutive chunk indices starting at the front's.
    inflight: VecDeque<(usize, JoinHandle<Result<Bytes, Error>>)>,
    /// While the blob is read in order from its start, the whole blob is hashed as well and its
    /// last chunk only handed out once the blob's own digest matched.
    whole: Option<(blake3::Hasher, usize)>,
    /// The source's stream of chunks and the index of the next chunk it sends, while the blob is
    /// read in order from its start; a read anywhere else drops it (cancelling it).
    stream: Option<(usize, ChunkStream)>,
    /// Started instead of [`ChunkSource::stream_chunks`] if the first read is at the start;
    /// dropped by any other first read.
    parked: Option<ParkedStream>,
}

impl ChunkedReader {
    /// A reader of blob `blob`, made of `chunks` in order, fetched from `source`.
    pub fn new(source: Arc<dyn ChunkSource>, blob: B3Digest, chunks: Vec<ChunkMeta>) -> Self {
        let mut starts = Vec::with_capacity(chunks.len());
        let mut size = 0u64;
        for c in &chunks {
            starts.push(size);
            size = size.saturating_add(c.size);
        }
        // A single chunk carrying the blob's own digest is verified as the blob; anything else
        // (several chunks, or a list naming a chunk under another digest) is hashed whole too.
        let single = chunks.len() == 1 && chunks[0].digest == blob;
        let whole = (!single).then(|| (blake3::Hasher::new(), 0));
        Self {
            source,
            blob,
            chunks: chunks.into(),
            starts: starts.into(),
            size,
            pos: 0,
            current: None,
            inflight: VecDeque::new(),
            whole,
            stream: None,
            parked: None,
        }
    }

    /// Makes `parked` the stream a read from the start uses, instead of asking the source.
    pub fn with_parked_stream(mut self, parked: ParkedStream) -> Self {
        self.parked = Some(parked);
        self
    }

    /// Total length of the blob.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn chunk_index(&self, pos: u64) -> usize {
        self.starts.partition_point(|&start| start <= pos).saturating_sub(1)
    }

    fn spawn_fetch(&self, index: usize) -> JoinHandle<Result<Bytes, Error>> {
        let source = self.source.clone();
        let meta = self.chunks[index];
        let blob = self.blob;
        tokio::spawn(async move {
            let data = source
                .get_chunk(&meta.digest)
                .await?
                .ok_or_else(|| Error::NotFound(format!("chunk {} of blob {blob} is missing", meta.digest)))?;
            verify_chunk(&blob, &meta, &data)?;
            Ok(data)
        })
    }

    /// Makes sure the fetch of `index` is at the front of the queue, with read-ahead behind it
    /// when the reader moves forward chunk by chunk.
    fn schedule(&mut self, index: usize) {
        let sequential = match self.current {
            Some((cur, _)) => index == cur + 1,
            None => index == 0,
        };
        while let Some((front, _)) = self.inflight.front() {
            if *front == index {
                break;
            }
            if let Some((_, task)) = self.inflight.pop_front() {
                task.abort();
            }
        }
        if self.inflight.is_empty() {
            self.inflight.push_back((index, self.spawn_fetch(index)));
        }
        if sequential {
            let mut next = self.inflight.back().map(|(i, _)| i + 1).unwrap_or(index + 1);
            while self.inflight.len() <= READ_AHEAD && next < self.chunks.len() {
                self.inflight.push_back((next, self.spawn_fetch(next)));
                next += 1;
            }
        }
    }

    /// The next chunk from the source's stream if the stream is at `index`: starts it when the
    /// reader begins at the start of the blob, drops it when the reader went elsewhere.
    fn poll_streamed(&mut self, cx: &mut Context<'_>, index: usize) -> Poll<Option<Result<Bytes, Error>>> {
        // Reading (again) from the start, not continuing within the first chunk.
        let at_start = index == 0 && !matches!(self.current, Some((0, _)));
        if at_start && !matches!(self.stream, Some((0, _))) {
            let started = match self.parked.take() {
                Some(start) => Some(start(&self.blob, &self.chunks)),
                None => self.source.stream_chunks(&self.blob, &self.chunks),
            };
            if let Some(stream) = started {
                self.stream = Some((0, stream));
                // Fetches for other positions are not needed any more.
                for (_, task) in self.inflight.drain(..) {
                    task.abort();
                }
            }
        }
        self.parked = None;
        let Some((next, stream)) = &mut self.stream else {
            return Poll::Ready(None);
        };
        if *next != index {
            self.stream = None;
            return Poll::Ready(None);
        }
        let received = ready!(stream.poll_recv(cx));
        *next += 1;
        let result = received.unwrap_or_else(|| {
            Err(Error::Storage(format!("the stream of blob {} ended before chunk {index}", self.blob)))
        });
        if result.is_err() {
            self.stream = None;
        }
        Poll::Ready(Some(result))
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>, index: usize) -> Poll<Result<Bytes, Error>> {
        let data = match ready!(self.poll_streamed(cx, index)) {
            Some(streamed) => streamed?,
            None => {
                self.schedule(index);
                let (_, task) = self.inflight.front_mut().expect("schedule queued the chunk");
                let joined = ready!(Pin::new(task).poll(cx));
                self.inflight.pop_front();
                joined.unwrap_or_else(|e| Err(Error::Storage(format!("chunk fetch task failed: {e}"))))?
            }
        };
        if let Some((hasher, next)) = &mut self.whole {
            if *next == index {
                hasher.update(&data);
                *next += 1;
                if *next == self.chunks.len() && B3Digest::of_hasher(hasher) != self.blob {
                    return Poll::Ready(Err(Error::Corrupt(format!(
                        "blob {}: its chunks do not add up to the blob's digest",
                        self.blob
                    ))));
                }
            } else {
                self.whole = None;
            }
        }
        Poll::Ready(Ok(data))
    }

    /// Up to `max` bytes from the current position, within one chunk, as a slice of the
    /// verified chunk (no copy); `None` at the end of the blob.
    fn poll_verified_piece(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<Result<Option<Bytes>, Error>> {
        if self.pos >= self.size {
            return Poll::Ready(Ok(None));
        }
        let index = self.chunk_index(self.pos);
        let data = match &self.current {
            Some((i, data)) if *i == index => data.clone(),
            _ => {
                let data = ready!(self.poll_chunk(cx, index))?;
                self.current = Some((index, data.clone()));
                data
            }
        };
        let offset = (self.pos - self.starts[index]) as usize;
        let n = max.min(data.len() - offset);
        self.pos += n as u64;
        Poll::Ready(Ok(Some(data.slice(offset..offset + n))))
    }

    /// The rest of the current chunk (the whole chunk when reading from a chunk boundary), then
    /// the next: a blob's bytes as the verified chunk buffers themselves, for a sender that
    /// passes them on without copying. `None` at the end of the blob.
    pub async fn next_piece(&mut self) -> Result<Option<Bytes>, Error> {
        std::future::poll_fn(|cx| self.poll_verified_piece(cx, usize::MAX)).await
    }
}

impl AsyncRead for ChunkedReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Some(piece) = ready!(self.poll_verified_piece(cx, buf.remaining())).map_err(io::Error::from)? {
            buf.put_slice(&piece);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for ChunkedReader {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let target = match position {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek to a negative or overflowing position"))?;
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

impl BlobReader for ChunkedReader {
    fn poll_piece(mut self: Pin<&mut Self>, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Bytes>> {
        let piece = ready!(self.poll_verified_piece(cx, max)).map_err(io::Error::from)?;
        Poll::Ready(Ok(piece.unwrap_or_default()))
    }
}

impl Drop for ChunkedReader {
    fn drop(&mut self) {
        for (_, task) in self.inflight.drain(..) {
            task.abort();
        }
    }
}
