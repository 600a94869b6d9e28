//! BlobService over gRPC (`tvix.castore.v1.BlobService`).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tonic::transport::Channel;

use super::channel::MAX_MESSAGE_SIZE;
use crate::castore::blobservice::{CHUNK_MAX, BlobReader, BlobService, BlobWriter, ChannelBlobWriter, ChunkMeta, ChunkSource, ChunkedReader};
use crate::castore::{B3Digest, Error};
use crate::proto::castore::{self as proto, blob_service_client::BlobServiceClient};

/// A [`BlobService`] talking to a remote `tvix.castore.v1.BlobService`.
#[derive(Clone)]
pub struct GrpcBlobService {
    client: BlobServiceClient<Channel>,
}

impl GrpcBlobService {
    /// A client over `channel`.
    pub fn new(channel: Channel) -> Self {
        Self {
            client: BlobServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        }
    }

    async fn stat(&self, digest: &B3Digest, send_chunks: bool) -> Result<Option<proto::StatBlobResponse>, Error> {
        let request = proto::StatBlobRequest {
            digest: (*digest).into(),
            send_chunks,
            send_bao: false,
        };
        match self.client.clone().stat(request).await {
            Ok(response) => Ok(Some(response.into_inner())),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(super::error(status)),
        }
    }

    /// Reads a whole blob (or chunk) with one Read call; gives up (cancelling the call) once
    /// more than `limit` bytes arrived. Bytes are unverified.
    async fn read_up_to(&self, digest: &B3Digest, limit: Option<usize>) -> Result<WholeRead, Error> {
        let request = proto::ReadBlobRequest { digest: (*digest).into() };
        let mut stream = match self.client.clone().read(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => return Ok(WholeRead::Absent),
            Err(status) => return Err(super::error(status)),
        };
        let mut first: Option<Bytes> = None;
        let mut buf = BytesMut::new();
        let mut total = 0usize;
        while let Some(message) = stream.next().await {
            let data = message.map_err(super::error)?.data;
            total += data.len();
            if limit.is_some_and(|limit| total > limit) {
                return Ok(WholeRead::TooLarge);
            }
            // The common case of a chunk arriving in one message needs no copy.
            match first.take() {
                None if buf.is_empty() => first = Some(data),
                Some(previous) => {
                    buf.reserve(previous.len() + data.len());
                    buf.extend_from_slice(&previous);
                    buf.extend_from_slice(&data);
                }
                None => buf.extend_from_slice(&data),
            }
        }
        Ok(WholeRead::Complete(first.unwrap_or_else(|| buf.freeze())))
    }

    /// Reads and verifies a whole blob of at most `limit` bytes.
    async fn read_verified(&self, digest: &B3Digest, limit: Option<usize>) -> Result<WholeRead, Error> {
        let read = self.read_up_to(digest, limit).await?;
        if let WholeRead::Complete(data) = &read
            && B3Digest::of(data) != *digest
        {
            return Err(Error::Corrupt(format!(
                "server sent {} bytes for blob {digest} that do not match its digest",
                data.len()
            )));
        }
        Ok(read)
    }
}

/// Outcome of reading a whole blob with one call.
enum WholeRead {
    Absent,
    Complete(Bytes),
    TooLarge,
}

/// Blobs up to this size are read with a single Read call and verified as a whole, instead of
/// Stat followed by chunk reads: one round trip instead of two for the many small files of a
/// store. A larger blob is noticed after at most this many bytes (plus one message) and read
/// chunk-wise instead. Equal to the largest chunk, so a small blob is one message from us.
const WHOLE_READ_LIMIT: usize = CHUNK_MAX;

/// Fetches chunks by digest with the Read RPC, for a [`ChunkedReader`].
struct GrpcChunkSource(GrpcBlobService);

#[async_trait]
impl ChunkSource for GrpcChunkSource {
    async fn get_chunk(&self, digest: &B3Digest) -> Result<Option<Bytes>, Error> {
        // A chunk is small (ours at most 1 MiB); a server streaming far more for one is broken,
        // and must not make us buffer without bound.
        match self.0.read_up_to(digest, Some(MAX_MESSAGE_SIZE)).await? {
            WholeRead::Complete(data) => Ok(Some(data)),
            WholeRead::Absent => Ok(None),
            WholeRead::TooLarge => Err(Error::Corrupt(format!(
                "server sent more than {MAX_MESSAGE_SIZE} bytes for chunk {digest}"
            ))),
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
        match self.read_verified(digest, Some(WHOLE_READ_LIMIT)).await? {
            WholeRead::Absent => return Ok(None),
            WholeRead::Complete(data) => return Ok(Some(Box::new(std::io::Cursor::new(data)))),
            WholeRead::TooLarge => {}
        }
        let Some(chunks) = self.chunks(digest).await? else {
            return Ok(None);
        };
        if chunks.is_empty() {
            // A server that does not chunk gives us no way to verify part of the blob before all
            // of it arrived, so the whole blob is fetched and checked before any byte is handed out.
            return match self.read_verified(digest, None).await? {
                WholeRead::Complete(data) => Ok(Some(Box::new(std::io::Cursor::new(data)))),
                WholeRead::Absent | WholeRead::TooLarge => Ok(None),
            };
        }
        let source: Arc<dyn ChunkSource> = Arc::new(GrpcChunkSource(self.clone()));
        Ok(Some(Box::new(ChunkedReader::new(source, *digest, chunks))))
    }

    async fn open_write(&self) -> Box<dyn BlobWriter> {
        self.put(true)
    }

    async fn open_write_deferred(&self) -> Box<dyn BlobWriter> {
        // The server's Put is durable by itself, so only the hashing can be left out: the
        // caller checks the returned digest (see the trait).
        self.put(false)
    }

    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        match self.stat(digest, true).await? {
            Some(response) => Ok(Some(parse_chunks(digest, response.chunks)?)),
            None => Ok(None),
        }
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
                            Ok(Some(data)) => {
                                if verify {
                                    hasher.lock().update(&data);
                                }
                                yield proto::BlobChunk { data };
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
