//! The `tvix.castore.v1.BlobService` gRPC server over any [`BlobService`].

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::castore::B3Digest;
use crate::castore::blobservice::{BlobReaderExt, BlobService, WholeBlob};
use crate::proto::castore as proto;

/// Largest message a Read sends: the largest chunk, so a chunk read by its digest travels as
/// one message without being copied into pieces.
const READ_MESSAGE_SIZE: usize = 1024 * 1024;

/// Serves a [`BlobService`] over gRPC.
pub struct BlobServer {
    blob: Arc<dyn BlobService>,
}

impl BlobServer {
    /// Serves `blob`.
    pub fn new(blob: Arc<dyn BlobService>) -> Self {
        Self { blob }
    }
}

/// Parses a digest from a request, naming the field in the error.
pub(super) fn request_digest(field: &str, raw: &[u8]) -> Result<B3Digest, Status> {
    B3Digest::try_from(raw).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

#[tonic::async_trait]
impl proto::blob_service_server::BlobService for BlobServer {
    async fn stat(
        &self,
        request: Request<proto::StatBlobRequest>,
    ) -> Result<Response<proto::StatBlobResponse>, Status> {
        let request = request.into_inner();
        let digest = request_digest("digest", &request.digest)?;
        let not_found = || Status::not_found(format!("blob {digest}"));
        let mut response = proto::StatBlobResponse::default();
        if request.send_chunks {
            let chunks = self.blob.chunks(&digest).await?.ok_or_else(not_found)?;
            response.chunks = chunks
                .into_iter()
                .map(|c| proto::stat_blob_response::ChunkMeta { digest: c.digest.into(), size: c.size })
                .collect();
        } else if !self.blob.has(&digest).await? {
            return Err(not_found());
        }
        // send_bao is not supported: an empty `bao` is what the protocol says to send then.
        Ok(Response::new(response))
    }

    type ReadStream = Pin<Box<dyn Stream<Item = Result<proto::BlobChunk, Status>> + Send>>;

    async fn read(&self, request: Request<proto::ReadBlobRequest>) -> Result<Response<Self::ReadStream>, Status> {
        let digest = request_digest("digest", &request.into_inner().digest)?;
        if let Some(serving) = self.blob.serving() {
            // Small blobs and chunks (what chunk-wise readers ask for) go out as the verified
            // buffer the store hands over, without a reader or a copy.
            match serving.read_whole(&digest, READ_MESSAGE_SIZE as u64).await? {
                WholeBlob::Absent => return Err(Status::not_found(format!("blob {digest}"))),
                WholeBlob::Verified(data) => {
                    let message = Ok(proto::BlobChunk { data });
                    return Ok(Response::new(Box::pin(futures::stream::once(async { message }))));
                }
                WholeBlob::TooLarge => {}
            }
            // A chunked blob goes out one message per chunk, each the verified chunk buffer
            // itself: no copy here, and a client cutting the stream into chunks finds them whole.
            if let Some(mut reader) = serving.open_chunked(&digest).await? {
                let stream = async_stream::try_stream! {
                    while let Some(data) = reader.next_piece().await.map_err(Status::from)? {
                        yield proto::BlobChunk { data };
                    }
                };
                return Ok(Response::new(Box::pin(stream)));
            }
        }
        let mut reader =
            self.blob.open_read(&digest).await?.ok_or_else(|| Status::not_found(format!("blob {digest}")))?;
        // The reader's verified buffers go out as they are (a small blob as one message, a
        // chunk in messages of at most READ_MESSAGE_SIZE), without a copy here.
        let stream = async_stream::try_stream! {
            loop {
                // The reader verifies every chunk (and the blob) before handing out its bytes,
                // so an error here means corruption or a backend failure: end the stream with it.
                let data = reader.piece(READ_MESSAGE_SIZE).await.map_err(|e| read_error(&digest, e))?;
                if data.is_empty() {
                    break;
                }
                yield proto::BlobChunk { data };
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn put(
        &self,
        request: Request<Streaming<proto::BlobChunk>>,
    ) -> Result<Response<proto::PutBlobResponse>, Status> {
        let broken = super::uploads::BodyBroken::of(&request);
        let mut incoming = request.into_inner();
        let mut writer = self.blob.open_write().await;
        while let Some(message) = incoming.next().await {
            // On a broken stream the writer is dropped unclosed: nothing is stored under a digest.
            let message = message?;
            if let Err(e) = writer.write_bytes(message.data).await {
                // A write only fails when the storing task gave up; its error says why.
                return Err(match writer.close().await {
                    Err(cause) => cause.into(),
                    Ok(_) => Status::internal(format!("storing blob: {e}")),
                });
            }
        }
        if broken.is_broken() {
            // Dropping the writer unclosed stores nothing under a digest.
            return Err(Status::cancelled("the client broke off the upload; nothing was stored"));
        }
        let digest = writer.close().await?;
        Ok(Response::new(proto::PutBlobResponse { digest: digest.into() }))
    }
}

fn read_error(digest: &B3Digest, e: std::io::Error) -> Status {
    let message = format!("reading blob {digest}: {e}");
    match e.kind() {
        std::io::ErrorKind::NotFound => Status::not_found(message),
        std::io::ErrorKind::InvalidData => Status::data_loss(message),
        _ => Status::internal(message),
    }
}
