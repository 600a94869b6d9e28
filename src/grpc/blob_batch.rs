//! [`BlobService::read_many`](crate::castore::blobservice::BlobService::read_many) over gRPC:
//! our batched read (`tvix_store.ext.v1.BlobBatchService.ReadMany`) where the server has it,
//! one tvix `Read` per blob (pipelined) where it does not.
//!
//! The extension is found out on first use: a server without it answers UNIMPLEMENTED, which
//! is remembered for that daemon (every later call to it goes straight to the fallback; with
//! several daemon addresses, each is found out on its own).
//!
//! The server is not trusted. Each blob's parts must arrive in order and without gaps, and the
//! assembled bytes must match the digest; a part for a blob not asked for, or for one already
//! complete, is dropped. A blob whose parts break these rules, that the server failed to send
//! or that the call never delivered (the stream ended or broke before it) is read once more
//! with a plain `Read`, whose own verification then decides; the other blobs of the call are
//! not affected. Only verified bytes are ever handed out.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::blob::{GrpcBlobService, WholeRead, concat, verify_whole};
use super::channel::MAX_MESSAGE_SIZE;
use crate::castore::blobservice::{ManyBlob, ManyBlobs, READ_MANY_CONCURRENCY};
use crate::castore::{B3Digest, Error};
use crate::proto::ext as proto;

/// Digests asked for per call. A batch larger than this (the NAR renderer asks for at most 256)
/// is read with several calls one after the other; the server accepts up to 4096.
const DIGESTS_PER_CALL: usize = 1024;
/// Most bytes gathered for one blob of a batch: a server sending more for one digest is broken,
/// and must not make us buffer without bound. The blob is then read with a plain Read.
const BLOB_LIMIT: u64 = MAX_MESSAGE_SIZE as u64;

/// Where a blob of a batched call stands.
enum Slot {
    /// Parts received so far (`len` bytes in all).
    Receiving { parts: Vec<Bytes>, len: u64 },
    /// Broken in the batch (why): to be read with a plain Read.
    Retry(String),
    /// The result handed out.
    Done(Result<Option<Bytes>, Error>),
}

impl GrpcBlobService {
    /// See the module docs.
    pub(super) fn read_batched(&self, digests: Vec<B3Digest>) -> ManyBlobs<'static> {
        if self.batch.known() == Some(false) {
            return self.read_plain(digests);
        }
        let this = self.clone();
        async_stream::stream! {
            let mut rest = digests;
            while !rest.is_empty() {
                let tail = rest.split_off(rest.len().min(DIGESTS_PER_CALL));
                let piece = std::mem::replace(&mut rest, tail);
                let mut results = if this.batch.known() == Some(false) {
                    this.read_plain(piece)
                } else {
                    Box::pin(this.call(piece))
                };
                while let Some(result) = results.next().await {
                    yield result;
                }
            }
        }
        .boxed()
    }

    /// One plain Read per blob, [`READ_MANY_CONCURRENCY`] at a time, results in order.
    fn read_plain(&self, digests: Vec<B3Digest>) -> ManyBlobs<'static> {
        let this = self.clone();
        futures::stream::iter(digests)
            .map(move |digest| {
                let this = this.clone();
                async move { (digest, this.read_one(&digest).await) }
            })
            .buffered(READ_MANY_CONCURRENCY)
            .boxed()
    }

    /// A whole blob with one plain Read, verified.
    async fn read_one(&self, digest: &B3Digest) -> Result<Option<Bytes>, Error> {
        match self.read_verified(digest, None).await {
            Ok(WholeRead::Complete(data)) => Ok(Some(data)),
            Ok(WholeRead::Absent) => Ok(None),
            Ok(WholeRead::TooLarge(_)) => Err(Error::Storage(format!("blob {digest}: read stopped without a limit"))),
            Err(e) => Err(naming(digest, e)),
        }
    }

    /// One ReadMany call for `order` (at most [`DIGESTS_PER_CALL`] digests, repeats allowed),
    /// its results in the order asked.
    fn call(&self, order: Vec<B3Digest>) -> impl Stream<Item = ManyBlob> + Send + 'static {
        let this = self.clone();
        async_stream::stream! {
            let mut uses: HashMap<B3Digest, usize> = HashMap::new();
            for digest in &order {
                *uses.entry(*digest).or_default() += 1;
            }
            let mut seen = HashSet::new();
            let unique: Vec<B3Digest> = order.iter().copied().filter(|d| seen.insert(*d)).collect();
            let mut slots: HashMap<B3Digest, Slot> =
                unique.iter().map(|d| (*d, Slot::Receiving { parts: Vec::new(), len: 0 })).collect();
            let request = proto::ReadManyRequest { digests: unique.iter().map(|d| (*d).into()).collect() };
            let mut incoming = match this.batch_client.clone().read_many(request).await {
                Ok(response) => {
                    this.batch.set(true);
                    Some(response.into_inner())
                }
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    tracing::debug!("the server has no batched read; reading blobs with one Read each");
                    this.batch.set(false);
                    None
                }
                Err(status) => {
                    tracing::warn!("batched read of {} blobs failed ({status}); reading them one by one", unique.len());
                    None
                }
            };
            let mut received_any = false;
            let mut refetch: Option<ManyBlobs<'static>> = None;
            let mut next = 0;
            while next < order.len() {
                let digest = order[next];
                match slots.get(&digest) {
                    Some(Slot::Done(_)) => {
                        let left = uses.entry(digest).or_default();
                        *left = left.saturating_sub(1);
                        let result = if *left == 0 {
                            match slots.remove(&digest) {
                                Some(Slot::Done(result)) => result,
                                _ => unreachable!("the slot was just seen done"),
                            }
                        } else {
                            match slots.get(&digest) {
                                Some(Slot::Done(result)) => result.clone(),
                                _ => unreachable!("the slot was just seen done"),
                            }
                        };
                        next += 1;
                        yield (digest, result);
                    }
                    Some(Slot::Retry(reason)) => {
                        tracing::warn!(%digest, "blob of a batched read refused ({reason}); reading it with Read");
                        let result = this.read_one(&digest).await;
                        slots.insert(digest, Slot::Done(result));
                    }
                    Some(Slot::Receiving { .. }) | None => {
                        if let Some(stream) = &mut incoming {
                            match stream.next().await {
                                Some(Ok(message)) => {
                                    received_any = true;
                                    for part in message.parts {
                                        apply(&mut slots, part);
                                    }
                                }
                                Some(Err(status)) => {
                                    if !received_any && status.code() == tonic::Code::Unimplemented {
                                        this.batch.set(false);
                                    } else {
                                        tracing::warn!("batched read broke off ({status}); reading the rest one by one");
                                    }
                                    incoming = None;
                                }
                                None => incoming = None,
                            }
                            continue;
                        }
                        // The call is over: what it did not deliver is read with plain Reads,
                        // pipelined, in the order still needed.
                        let refetch = refetch.get_or_insert_with(|| {
                            let mut seen = HashSet::new();
                            let pending: Vec<B3Digest> = order[next..]
                                .iter()
                                .copied()
                                .filter(|d| matches!(slots.get(d), Some(Slot::Receiving { .. })) && seen.insert(*d))
                                .collect();
                            if !pending.is_empty() {
                                tracing::warn!("batched read left {} blobs out; reading them with Read", pending.len());
                            }
                            this.read_plain(pending)
                        });
                        let (got, result) = match refetch.next().await {
                            Some(item) => item,
                            None => (digest, Err(Error::Storage(format!("blob {digest}: lost by the batched read")))),
                        };
                        slots.insert(got, Slot::Done(result));
                    }
                }
            }
        }
    }
}

/// Takes one part of a batched response into its blob's slot; see the module docs.
fn apply(slots: &mut HashMap<B3Digest, Slot>, part: proto::BlobPart) {
    let Ok(digest) = B3Digest::try_from(&part.digest) else {
        tracing::debug!("dropping a batched part with an invalid digest");
        return;
    };
    let Some(slot) = slots.get_mut(&digest) else {
        tracing::debug!(%digest, "dropping a batched part of a blob not asked for");
        return;
    };
    let Slot::Receiving { parts, len } = slot else {
        tracing::debug!(%digest, "dropping a further batched part of a blob already received");
        return;
    };
    let problem = if part.error_code != 0 {
        Some(format!(
            "the server could not send it: {} ({:?})",
            part.error_message,
            tonic::Code::from(part.error_code as i32)
        ))
    } else if part.not_found {
        if *len == 0 {
            *slot = Slot::Done(Ok(None));
            return;
        }
        Some(format!("marked not found after {len} of its bytes"))
    } else if part.offset != *len {
        Some(format!("a part at offset {} where {len} bytes had arrived", part.offset))
    } else if *len + part.data.len() as u64 > BLOB_LIMIT {
        Some(format!("more than {BLOB_LIMIT} bytes"))
    } else {
        None
    };
    if let Some(problem) = problem {
        *slot = Slot::Retry(problem);
        return;
    }
    *len += part.data.len() as u64;
    if !part.data.is_empty() {
        parts.push(part.data);
    }
    if part.last {
        let data = concat(std::mem::take(parts));
        *slot = match verify_whole(&digest, &data) {
            Ok(()) => Slot::Done(Ok(Some(data))),
            Err(e) => Slot::Retry(e.to_string()),
        };
    }
}

/// `e` with the blob's digest in its message, where the server's message lacked it (e.g. a
/// broken connection).
fn naming(digest: &B3Digest, e: Error) -> Error {
    let name = digest.to_string();
    let add = |m: String| if m.contains(&name) { m } else { format!("reading blob {name}: {m}") };
    match e {
        Error::InvalidRequest(m) => Error::InvalidRequest(add(m)),
        Error::NotFound(m) => Error::NotFound(add(m)),
        Error::Corrupt(m) => Error::Corrupt(add(m)),
        Error::Unavailable(m) => Error::Unavailable(add(m)),
        Error::Storage(m) => Error::Storage(add(m)),
    }
}
