//! Our `tvix_store.ext.v1.BlobBatchService` server over any [`BlobService`]: many blobs in one
//! call, streamed back in the order asked, each part tagged with its blob's digest.
//!
//! Read-ahead is bounded twice: at most [`GROUPS_AHEAD`] groups of [`GROUP`] blobs are being
//! fetched ahead of the one being sent, each at most one message's worth ([`PART_SIZE`]) when
//! fetched whole; and tonic pulls the response stream only as HTTP/2 flow control lets it send, so a client
//! that stops reading stops the fetching after that.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::blob::request_digest;
use crate::castore::blobservice::{BlobReader, BlobReaderExt, BlobService, WholeBlob};
use crate::castore::{B3Digest, Error};
use crate::proto::ext as proto;

/// Most digests one request may ask for: 128 KiB of request, and far more small files than a
/// client batches at once (the NAR renderer asks for at most 256).
pub const MAX_DIGESTS: usize = 4096;
/// Blobs fetched together ([`ServingReads::read_whole_many`](crate::castore::blobservice::ServingReads::read_whole_many)): a local store reads them in one
/// trip to the blocking pool instead of one trip each.
const GROUP: usize = 16;
/// Groups under way at once: the next is fetched while one is sent. So at most 32 blobs, each
/// fetched whole only up to [`PART_SIZE`], are read ahead of what was sent (32 MiB at worst,
/// a few hundred KiB for small files); a larger blob is read chunk by chunk as it is sent.
const GROUPS_AHEAD: usize = 2;
/// Largest piece of a blob in one part, and the blobs fetched whole: our largest chunk, so a
/// chunk goes out as the verified buffer the store handed over.
const PART_SIZE: usize = 1024 * 1024;
/// A response message packs ready parts until it carries this many bytes of data; fewer
/// messages for tiny blobs, and a message never much larger than one chunk.
const MESSAGE_BYTES: usize = 1024 * 1024;
/// Most parts packed into one message.
const MESSAGE_PARTS: usize = 256;

/// Serves batched blob reads of a [`BlobService`].
pub struct BlobBatchServer {
    blob: Arc<dyn BlobService>,
}

impl BlobBatchServer {
    /// Serves `blob`.
    pub fn new(blob: Arc<dyn BlobService>) -> Self {
        Self { blob }
    }
}

/// A blob ready to be sent.
enum Entry {
    /// All of it, verified (at most [`PART_SIZE`] bytes).
    Whole(Bytes),
    /// A larger blob, whose reader hands out verified buffers (a backend's chunks where it
    /// serves them, [`crate::castore::blobservice::ServingReads::open_chunked`]).
    Reader(Box<dyn BlobReader>),
    NotFound,
    Failed(Error),
}

/// Opens one group of the blobs asked for: the whole ones read with one
/// [`ServingReads::read_whole_many`](crate::castore::blobservice::ServingReads::read_whole_many) where the backend has it (a local store: one trip to the
/// blocking pool for the group), larger ones as chunked readers.
async fn open_group(blob: &dyn BlobService, group: Vec<B3Digest>) -> Vec<(B3Digest, Entry)> {
    let Some(serving) = blob.serving() else {
        let mut entries = Vec::with_capacity(group.len());
        for digest in group {
            let entry = match blob.open_read(&digest).await {
                Ok(Some(reader)) => Entry::Reader(reader),
                Ok(None) => Entry::NotFound,
                Err(e) => Entry::Failed(e),
            };
            entries.push((digest, entry));
        }
        return entries;
    };
    let wholes = serving.read_whole_many(&group, PART_SIZE as u64).await;
    let mut entries = Vec::with_capacity(group.len());
    for (digest, whole) in group.into_iter().zip(wholes) {
        let entry = match whole {
            Ok(WholeBlob::Absent) => Entry::NotFound,
            Ok(WholeBlob::Verified(data)) => Entry::Whole(data),
            Ok(WholeBlob::TooLarge) => match serving.open_chunked(&digest).await {
                Ok(Some(reader)) => Entry::Reader(Box::new(reader)),
                Ok(None) => Entry::NotFound,
                Err(e) => Entry::Failed(e),
            },
            Err(e) => Entry::Failed(e),
        };
        entries.push((digest, entry));
    }
    entries
}

fn part(digest: &B3Digest, offset: u64, data: Bytes, last: bool) -> proto::BlobPart {
    proto::BlobPart { digest: (*digest).into(), offset, data, last, ..Default::default() }
}

fn failed(digest: &B3Digest, e: Error) -> proto::BlobPart {
    let status = Status::from(e);
    proto::BlobPart {
        digest: (*digest).into(),
        error_code: status.code() as u32,
        error_message: status.message().to_string(),
        ..Default::default()
    }
}

/// The parts of every blob asked for, in order; a blob that fails gets an error part and the
/// stream goes on.
fn parts(blob: Arc<dyn BlobService>, digests: Vec<B3Digest>) -> impl Stream<Item = proto::BlobPart> + Send {
    async_stream::stream! {
        let groups: Vec<Vec<B3Digest>> = digests.chunks(GROUP).map(<[B3Digest]>::to_vec).collect();
        let mut entries = futures::stream::iter(groups)
            .map(|group| {
                let blob = blob.clone();
                async move { open_group(blob.as_ref(), group).await }
            })
            .buffered(GROUPS_AHEAD)
            .flat_map(futures::stream::iter);
        while let Some((digest, entry)) = entries.next().await {
            match entry {
                Entry::Whole(data) => yield part(&digest, 0, data, true),
                Entry::NotFound => yield proto::BlobPart { digest: digest.into(), not_found: true, ..Default::default() },
                Entry::Failed(e) => yield failed(&digest, e),
                Entry::Reader(mut reader) => {
                    let mut offset = 0u64;
                    loop {
                        // The reader's verified buffers go out as they are.
                        match reader.piece(PART_SIZE).await {
                            Ok(data) if data.is_empty() => {
                                yield part(&digest, offset, Bytes::new(), true);
                                break;
                            }
                            Ok(data) => {
                                let len = data.len() as u64;
                                yield part(&digest, offset, data, false);
                                offset += len;
                            }
                            Err(e) => {
                                yield failed(&digest, Error::from_io(&digest, e));
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Packs the parts that are ready at once into messages of at most [`MESSAGE_BYTES`] of data
/// (a single larger part goes alone).
fn pack(ready: Vec<proto::BlobPart>) -> Vec<proto::ReadManyResponse> {
    let mut messages = Vec::new();
    let mut current = proto::ReadManyResponse::default();
    let mut bytes = 0;
    for part in ready {
        if !current.parts.is_empty() && bytes + part.data.len() > MESSAGE_BYTES {
            messages.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += part.data.len();
        current.parts.push(part);
    }
    if !current.parts.is_empty() {
        messages.push(current);
    }
    messages
}

#[tonic::async_trait]
impl proto::blob_batch_service_server::BlobBatchService for BlobBatchServer {
    type ReadManyStream = Pin<Box<dyn Stream<Item = Result<proto::ReadManyResponse, Status>> + Send>>;

    async fn read_many(
        &self,
        request: Request<proto::ReadManyRequest>,
    ) -> Result<Response<Self::ReadManyStream>, Status> {
        let request = request.into_inner();
        if request.digests.len() > MAX_DIGESTS {
            return Err(Status::invalid_argument(format!(
                "{} digests asked for in one call, at most {MAX_DIGESTS} allowed",
                request.digests.len()
            )));
        }
        let digests = request
            .digests
            .iter()
            .enumerate()
            .map(|(i, raw)| request_digest(&format!("digests[{i}]"), raw))
            .collect::<Result<Vec<_>, Status>>()?;
        let messages = parts(self.blob.clone(), digests)
            .ready_chunks(MESSAGE_PARTS)
            .flat_map(|ready| futures::stream::iter(pack(ready)))
            .map(Ok);
        Ok(Response::new(Box::pin(messages)))
    }
}
