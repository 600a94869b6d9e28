//! DirectoryService over gRPC (`tvix.castore.v1.DirectoryService`).

use std::collections::HashSet;

use super::channel::GrpcChannel;
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::channel::MAX_MESSAGE_SIZE;
use crate::castore::directoryservice::{DirectoryPutter, DirectoryService};
use crate::castore::{B3Digest, Directory, Error};
use crate::proto::castore::{self as proto, directory_service_client::DirectoryServiceClient};

/// The directories of a recursive get from a server, checked: each message must be a valid
/// directory that one received before it refers to (the root first), so what comes out is the
/// connected graph below `root`; repeats are dropped. A directory referred to but never sent
/// ends the stream with NOT_FOUND.
pub(super) fn connected_graph<'a>(
    root: B3Digest,
    messages: impl Stream<Item = Result<proto::Directory, Error>> + Send + 'a,
) -> BoxStream<'a, Result<Directory, Error>> {
    Box::pin(async_stream::try_stream! {
        let mut messages = std::pin::pin!(messages);
        // Directories referred to by one already received and not received themselves yet.
        let mut expected = HashSet::from([root]);
        let mut seen = HashSet::new();
        while let Some(message) = messages.next().await {
            let directory = received(message?, || format!("below {root}"))?;
            let digest = directory.digest();
            if seen.contains(&digest) {
                continue;
            }
            if !expected.remove(&digest) {
                Err(Error::Corrupt(format!(
                    "server sent directory {digest} below {root}, which no directory sent before it refers to"
                )))?;
            }
            seen.insert(digest);
            for (_, child, _) in directory.child_directories() {
                if !seen.contains(child) {
                    expected.insert(*child);
                }
            }
            yield directory;
        }
        if let Some(missing) = expected.iter().next() {
            Err(if *missing == root {
                Error::NotFound(format!("directory {root}"))
            } else {
                Error::NotFound(format!("directory {missing} below {root}: the server did not send it"))
            })?;
        }
    })
}

/// A [`DirectoryService`] talking to a remote `tvix.castore.v1.DirectoryService`.
#[derive(Clone)]
pub struct GrpcDirectoryService {
    client: DirectoryServiceClient<GrpcChannel>,
}

impl GrpcDirectoryService {
    /// A client over `channel`.
    pub fn new(channel: impl Into<GrpcChannel>) -> Self {
        Self {
            client: DirectoryServiceClient::new(channel.into())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        }
    }

    async fn get_stream(
        &self,
        digest: &B3Digest,
        recursive: bool,
    ) -> Result<Option<tonic::Streaming<proto::Directory>>, Error> {
        let request = proto::GetDirectoryRequest {
            by_what: Some(proto::get_directory_request::ByWhat::Digest((*digest).into())),
            recursive,
        };
        match self.client.clone().get(request).await {
            Ok(response) => Ok(Some(response.into_inner())),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(super::error(status)),
        }
    }
}

/// Validates a Directory received from the server.
fn received(message: proto::Directory, context: impl FnOnce() -> String) -> Result<Directory, Error> {
    Directory::from_proto(message)
        .map_err(|e| Error::Corrupt(format!("server sent an invalid directory ({}): {e}", context())))
}

#[async_trait]
impl DirectoryService for GrpcDirectoryService {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        let Some(mut stream) = self.get_stream(digest, false).await? else {
            return Ok(None);
        };
        let message = match stream.next().await {
            Some(Ok(message)) => message,
            Some(Err(status)) if status.code() == tonic::Code::NotFound => return Ok(None),
            Some(Err(status)) => return Err(super::error(status)),
            None => return Ok(None),
        };
        let directory = received(message, || format!("asked for {digest}"))?;
        if directory.digest() != *digest {
            return Err(Error::Corrupt(format!(
                "asked for directory {digest}, server sent directory {}",
                directory.digest()
            )));
        }
        Ok(Some(directory))
    }

    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'_, Result<Directory, Error>> {
        let root = *root;
        Box::pin(async_stream::try_stream! {
            let stream = self
                .get_stream(&root, true)
                .await?
                .ok_or_else(|| Error::NotFound(format!("directory {root}")))?;
            let mut graph = connected_graph(root, stream.map(|message| message.map_err(super::error)));
            while let Some(directory) = graph.next().await {
                yield directory?;
            }
        })
    }

    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        let (tx, mut rx) = mpsc::channel::<Option<proto::Directory>>(64);
        let mut client = self.client.clone();
        let task = tokio::spawn(async move {
            // The request stream ends only on the explicit end marker sent by close(). A putter
            // dropped half-way closes the channel without it; the stream then never ends and the
            // aborted task cancels the call, so the server cannot mistake a truncated graph
            // (itself a valid graph) for the whole one.
            let outgoing = async_stream::stream! {
                loop {
                    match rx.recv().await {
                        Some(Some(directory)) => yield directory,
                        Some(None) => break,
                        None => futures::future::pending::<()>().await,
                    }
                }
            };
            let response = client.put(outgoing).await.map_err(super::error)?.into_inner();
            B3Digest::try_from(&response.root_digest)
                .map_err(|e| Error::Corrupt(format!("server returned an invalid root digest: {e}")))
        });
        Box::new(GrpcPutter { sender: Some(tx), task: Some(task), last: None, result: None })
    }
}

/// Streams a directory graph to the server as one Put call. Dropping it before `close` cancels
/// the call, and the server then stores nothing of it.
struct GrpcPutter {
    sender: Option<mpsc::Sender<Option<proto::Directory>>>,
    task: Option<JoinHandle<Result<B3Digest, Error>>>,
    last: Option<B3Digest>,
    result: Option<Result<B3Digest, Error>>,
}

impl GrpcPutter {
    async fn finish(&mut self) -> Result<B3Digest, Error> {
        if let Some(sender) = self.sender.take() {
            // A failed send means the call already ended; the task's result says why.
            let _ = sender.send(None).await;
        }
        match self.task.take() {
            Some(task) => {
                task.await.unwrap_or_else(|e| Err(Error::Storage(format!("directory upload task failed: {e}"))))
            }
            None => Err(Error::Storage("directory putter already finished".into())),
        }
    }
}

#[async_trait]
impl DirectoryPutter for GrpcPutter {
    async fn put(&mut self, directory: Directory) -> Result<(), Error> {
        if let Some(result) = &self.result {
            return Err(result
                .clone()
                .err()
                .unwrap_or_else(|| Error::InvalidRequest("directory putter already closed".into())));
        }
        self.last = Some(directory.digest());
        let sent = match &self.sender {
            Some(sender) => sender.send(Some(directory.to_proto())).await.is_ok(),
            None => false,
        };
        if !sent {
            // The call ended early, which only happens when the server rejected the stream.
            self.sender = None;
            let result = self.finish().await;
            self.result = Some(result.clone());
            return Err(result.err().unwrap_or_else(|| {
                Error::Storage("server accepted the directory graph before it was complete".into())
            }));
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<B3Digest, Error> {
        if let Some(result) = &self.result {
            return result.clone();
        }
        let result = self.finish().await.and_then(|root| match self.last {
            Some(last) if last != root => {
                Err(Error::Corrupt(format!("server returned root {root}, but the last directory sent was {last}")))
            }
            _ => Ok(root),
        });
        self.result = Some(result.clone());
        result
    }
}

impl Drop for GrpcPutter {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
