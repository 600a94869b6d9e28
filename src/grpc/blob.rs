//! BlobService over gRPC (`tvix.castore.v1.BlobService`, and our batched read beside it: see
//! [`super::blob_batch`]).

use std::sync::Arc;

use super::channel::GrpcChannel;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::channel::MAX_MESSAGE_SIZE;
use super::support::ExtensionSupport;
use crate::castore::blobservice::{
    BlobReader, BlobService, BlobWriter, CHUNK_MAX, ChannelBlobWriter, ChunkMeta, ChunkSource, ChunkStream,
    ChunkedReader, ManyBlobs, ParkedStream, READ_AHEAD, WholeReader, verify_chunk,
};
use crate::castore::{B3Digest, Error};
use crate::proto::castore::{self as proto, blob_service_client::BlobServiceClient};
use crate::proto::ext::blob_batch_service_client::BlobBatchServiceClient;

/// A [`BlobService`] talking to a remote `tvix.castore.v1.BlobService`; many blobs at once
/// ([`BlobService::read_many`]) go through our `tvix_store.ext.v1.BlobBatchService` where the
/// server has it. Clones share the channel and what was learnt about the server.
#[derive(Clone)]
pub struct GrpcBlobService {
    pub(super) client: BlobServiceClient<GrpcChannel>,
    pub(super) batch_client: BlobBatchServiceClient<GrpcChannel>,
    /// Whether the server has the batched read, found out on first use, for this channel.
    pub(super) batch: Arc<ExtensionSupport>,
    channel: GrpcChannel,
}

impl GrpcBlobService {
    /// A client over `channel`.
    pub fn new(channel: impl Into<GrpcChannel>) -> Self {
        let channel = channel.into();
        Self {
            client: BlobServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            batch_client: BlobBatchServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            batch: Arc::new(ExtensionSupport::of(&channel)),
            channel,
        }
    }

    /// The same client restricted to the tvix protocol: [`BlobService::read_many`] makes one
    /// Read per blob (pipelined), as against a server without our extension. For benchmarks
    /// and tests, the baseline a tvix client sees.
    pub fn plain_protocol(mut self) -> Self {
        self.batch = Arc::new(ExtensionSupport::absent(&self.channel));
        self
    }

    /// Whether the server was found to serve the batched read: `None` before the first
    /// [`BlobService::read_many`] call found out.
    pub fn has_batch_read(&self) -> Option<bool> {
        self.batch.known()
    }

    async fn stat(&self, digest: &B3Digest, send_chunks: bool) -> Result<Option<proto::StatBlobResponse>, Error> {
        let request = proto::StatBlobRequest { digest: (*digest).into(), send_chunks, send_bao: false };
        match self.client.clone().stat(request).await {
            Ok(response) => Ok(Some(response.into_inner())),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(super::error(status)),
        }
    }

    /// Reads a whole blob (or chunk) with one Read call; stops once more than `limit` bytes
    /// arrived, handing back the call (still open) with what arrived. Bytes are unverified.
    async fn read_up_to(&self, digest: &B3Digest, limit: Option<usize>) -> Result<WholeRead, Error> {
        let request = proto::ReadBlobRequest { digest: (*digest).into() };
        let stream = match self.client.clone().read(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => return Ok(WholeRead::Absent),
            Err(status) => return Err(super::error(status)),
        };
        let mut probe = Probe { received: Vec::new(), stream };
        let mut total = 0usize;
        while let Some(message) = probe.stream.next().await {
            let data = message.map_err(super::error)?.data;
            total += data.len();
            probe.received.push(data);
            if limit.is_some_and(|limit| total > limit) {
                return Ok(WholeRead::TooLarge(Box::new(probe)));
            }
        }
        Ok(WholeRead::Complete(concat(probe.received)))
    }

    /// Reads and verifies a whole blob of at most `limit` bytes.
    pub(super) async fn read_verified(&self, digest: &B3Digest, limit: Option<usize>) -> Result<WholeRead, Error> {
        let read = self.read_up_to(digest, limit).await?;
        if let WholeRead::Complete(data) = &read {
            verify_whole(digest, data)?;
        }
        Ok(read)
    }
}

/// Checks bytes the server sent as all of blob `digest`.
pub(super) fn verify_whole(digest: &B3Digest, data: &[u8]) -> Result<(), Error> {
    if B3Digest::of(data) != *digest {
        return Err(Error::Corrupt(format!(
            "server sent {} bytes for blob {digest} that do not match its digest",
            data.len()
        )));
    }
    Ok(())
}

/// Outcome of reading a whole blob with one call.
pub(super) enum WholeRead {
    Absent,
    Complete(Bytes),
    /// Boxed: a call in progress is large, and most reads complete.
    TooLarge(Box<Probe>),
}

/// A Read call of a whole blob stopped after its first messages, still open: a reader that
/// then reads the blob from its start continues it instead of making a new call.
pub(super) struct Probe {
    received: Vec<Bytes>,
    stream: tonic::Streaming<proto::BlobChunk>,
}

impl Probe {
    /// Receives the rest of the blob.
    async fn finish(mut self) -> Result<Bytes, Error> {
        while let Some(message) = self.stream.next().await {
            self.received.push(message.map_err(super::error)?.data);
        }
        Ok(concat(self.received))
    }
}

/// The messages of a blob as one buffer; the common case of a single message needs no copy.
pub(super) fn concat(mut parts: Vec<Bytes>) -> Bytes {
    if parts.len() == 1 {
        return parts.pop().unwrap_or_default();
    }
    let mut buf = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
    for part in parts {
        buf.extend_from_slice(&part);
    }
    buf.freeze()
}

/// Largest message of a Put: what the server receives in one piece (our largest chunk).
const PUT_MESSAGE_SIZE: usize = CHUNK_MAX;

/// Blobs up to this size are read with a single Read call and verified as a whole, instead of
/// Stat followed by chunk reads: one round trip instead of two for the many small files of a
/// store. A larger blob is noticed after at most this many bytes (plus one message) and read
/// chunk-wise instead. Equal to the largest chunk, so a small blob is one message from us.
const WHOLE_READ_LIMIT: usize = CHUNK_MAX;

/// Fetches chunks by digest with the Read RPC, for a [`ChunkedReader`]; a reader starting at
/// the beginning gets the whole blob from one Read call instead, cut into its chunks here.
struct GrpcChunkSource(GrpcBlobService);

impl GrpcChunkSource {
    /// Reads the whole blob with one call and sends it on as verified chunks, cut where `chunks`
    /// says. A chunk that lies within one message is sent without a copy.
    async fn feed(
        &self,
        blob: &B3Digest,
        chunks: &[ChunkMeta],
        probe: Option<Probe>,
        to: &mpsc::Sender<Result<Bytes, Error>>,
    ) -> Result<(), Error> {
        let Probe { received, mut stream } = match probe {
            Some(probe) => probe,
            None => {
                let request = proto::ReadBlobRequest { digest: (*blob).into() };
                let stream = self.0.client.clone().read(request).await.map_err(super::error)?.into_inner();
                Probe { received: Vec::new(), stream }
            }
        };
        let mut received = received.into_iter();
        let mut index = 0;
        // Bytes of a chunk that spans messages, gathered until it is complete.
        let mut partial = BytesMut::new();
        loop {
            // Empty chunks need no bytes: sent as soon as they are next.
            while let Some(meta) = chunks.get(index).filter(|m| m.size == 0 && partial.is_empty()) {
                verify_chunk(blob, meta, &[])?;
                if to.send(Ok(Bytes::new())).await.is_err() {
                    return Ok(());
                }
                index += 1;
            }
            let mut data = match received.next() {
                Some(data) => data,
                None => match stream.next().await {
                    Some(message) => message.map_err(super::error)?.data,
                    None => break,
                },
            };
            while !data.is_empty() {
                let meta = chunks.get(index).ok_or_else(|| {
                    Error::Corrupt(format!("server sent more bytes for blob {blob} than its chunk list adds up to"))
                })?;
                // A chunk is gathered in memory: as with chunk reads, a listed size beyond what
                // one message may carry is refused rather than buffered.
                if meta.size > MAX_MESSAGE_SIZE as u64 {
                    return Err(Error::Corrupt(format!(
                        "server lists chunk {} of blob {blob} with {} bytes, more than {MAX_MESSAGE_SIZE}",
                        meta.digest, meta.size
                    )));
                }
                let missing = meta.size as usize - partial.len();
                let chunk = if partial.is_empty() && data.len() >= missing {
                    data.split_to(missing)
                } else {
                    partial.extend_from_slice(&data.split_to(missing.min(data.len())));
                    if partial.len() < meta.size as usize {
                        continue;
                    }
                    partial.split().freeze()
                };
                verify_chunk(blob, meta, &chunk)?;
                if to.send(Ok(chunk)).await.is_err() {
                    // The reader is gone (or went elsewhere): dropping the stream cancels the call.
                    return Ok(());
                }
                index += 1;
            }
        }
        if index < chunks.len() {
            return Err(Error::Corrupt(format!(
                "server's stream of blob {blob} ended after {index} of its {} chunks",
                chunks.len()
            )));
        }
        Ok(())
    }

    /// Starts [`GrpcChunkSource::feed`] in a task; its chunks arrive on the returned stream.
    fn spawn_feed(&self, blob: &B3Digest, chunks: &Arc<[ChunkMeta]>, probe: Option<Probe>) -> ChunkStream {
        let (to, stream) = mpsc::channel(READ_AHEAD);
        let source = GrpcChunkSource(self.0.clone());
        let (blob, chunks) = (*blob, chunks.clone());
        tokio::spawn(async move {
            if let Err(e) = source.feed(&blob, &chunks, probe, &to).await {
                let _ = to.send(Err(e)).await;
            }
        });
        stream
    }
}

#[async_trait]
impl ChunkSource for GrpcChunkSource {
    fn stream_chunks(&self, blob: &B3Digest, chunks: &Arc<[ChunkMeta]>) -> Option<ChunkStream> {
        Some(self.spawn_feed(blob, chunks, None))
    }

    async fn get_chunk(&self, digest: &B3Digest) -> Result<Option<Bytes>, Error> {
        // A chunk is small (ours at most 1 MiB); a server streaming far more for one is broken,
        // and must not make us buffer without bound.
        match self.0.read_up_to(digest, Some(MAX_MESSAGE_SIZE)).await? {
            WholeRead::Complete(data) => Ok(Some(data)),
            WholeRead::Absent => Ok(None),
            WholeRead::TooLarge(_) => {
                Err(Error::Corrupt(format!("server sent more than {MAX_MESSAGE_SIZE} bytes for chunk {digest}")))
            }
        }
    }
}

/// Checks a chunk list sent by the server: digests of the right length, and a blob of one chunk
/// must be that chunk (otherwise verifying the chunk would not verify the blob).
fn parse_chunks(blob: &B3Digest, chunks: Vec<proto::stat_blob_response::ChunkMeta>) -> Result<Vec<ChunkMeta>, Error> {
    let list = chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let digest = B3Digest::try_from(&c.digest).map_err(|e| {
                Error::Corrupt(format!("server sent chunk {i} of blob {blob} with an invalid digest: {e}"))
            })?;
            Ok(ChunkMeta { digest, size: c.size })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    if let [only] = list.as_slice()
        && only.digest != *blob
    {
        return Err(Error::Corrupt(format!(
            "server lists blob {blob} as the single chunk {}, which has a different digest",
            only.digest
        )));
    }
    Ok(list)
}

#[async_trait]
impl BlobService for GrpcBlobService {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        Ok(self.stat(digest, false).await?.is_some())
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        let probe = match self.read_verified(digest, Some(WHOLE_READ_LIMIT)).await? {
            WholeRead::Absent => return Ok(None),
            WholeRead::Complete(data) => return Ok(Some(Box::new(WholeReader::new(data)))),
            WholeRead::TooLarge(probe) => *probe,
        };
        let Some(chunks) = self.chunks(digest).await? else {
            return Ok(None);
        };
        if chunks.is_empty() {
            // A server that does not chunk gives us no way to verify part of the blob before all
            // of it arrived, so the whole blob is fetched and checked before any byte is handed out.
            let data = probe.finish().await?;
            verify_whole(digest, &data)?;
            return Ok(Some(Box::new(WholeReader::new(data))));
        }
        let source = Arc::new(GrpcChunkSource(self.clone()));
        // The probe's call goes on feeding the reader if it reads from the start; a reader going
        // elsewhere first drops (cancels) it and fetches the chunks it needs.
        let parked: ParkedStream = {
            let source = source.clone();
            Box::new(move |blob, chunks| source.spawn_feed(blob, chunks, Some(probe)))
        };
        Ok(Some(Box::new(ChunkedReader::new(source, *digest, chunks).with_parked_stream(parked))))
    }

    async fn open_write(&self) -> Box<dyn BlobWriter> {
        self.put(true)
    }

    async fn open_write_deferred(&self) -> Box<dyn BlobWriter> {
        // The server's Put is durable by itself, so only the hashing can be left out: the
        // caller checks the returned digest (see the trait).
        self.put(false)
    }

    async fn sync(&self) -> Result<(), Error> {
        // Every Put returned only once the server had stored the blob durably.
        Ok(())
    }

    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        match self.stat(digest, true).await? {
            Some(response) => Ok(Some(parse_chunks(digest, response.chunks)?)),
            None => Ok(None),
        }
    }

    fn read_many(&self, digests: Vec<B3Digest>) -> ManyBlobs<'_> {
        self.read_batched(digests)
    }
}

impl GrpcBlobService {
    /// A writer uploading with one Put call; with `verify`, it hashes what it sends and fails
    /// when the server stored something else.
    fn put(&self, verify: bool) -> Box<dyn BlobWriter> {
        let mut client = self.client.clone();
        Box::new(ChannelBlobWriter::spawn(move |mut incoming| async move {
            // Hashed here as well, so a server storing something else than what we sent is caught.
            let hasher = Arc::new(parking_lot::Mutex::new(blake3::Hasher::new()));
            let outgoing = {
                let hasher = hasher.clone();
                async_stream::stream! {
                    loop {
                        match incoming.next().await {
                            Ok(Some(mut data)) => {
                                if verify {
                                    hasher.lock().update(&data);
                                }
                                // A writer may hand over a large buffer whole (write_bytes):
                                // it goes out in messages of at most 1 MiB, without copying.
                                while !data.is_empty() {
                                    let piece = data.split_to(data.len().min(PUT_MESSAGE_SIZE));
                                    yield proto::BlobChunk { data: piece };
                                }
                            }
                            Ok(None) => break,
                            // Abandoned: never end the request stream cleanly (the server would
                            // store the prefix); the call is cancelled when this task is dropped.
                            Err(_) => std::future::pending::<()>().await,
                        }
                    }
                }
            };
            let response = client.put(outgoing).await.map_err(super::error)?.into_inner();
            let returned = B3Digest::try_from(&response.digest)
                .map_err(|e| Error::Corrupt(format!("server returned an invalid blob digest: {e}")))?;
            let ours = B3Digest::from(hasher.lock().finalize());
            if verify && returned != ours {
                return Err(Error::Corrupt(format!(
                    "server stored the blob as {returned}, but the bytes sent have digest {ours}"
                )));
            }
            Ok(returned)
        }))
    }
}
