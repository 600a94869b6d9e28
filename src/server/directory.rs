//! The `tvix.castore.v1.DirectoryService` gRPC server over any [`DirectoryService`].

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::blob::request_digest;
use crate::castore::directoryservice::{DirectoryService, GraphBuilder};
use crate::castore::{Directory, Error};
use crate::proto::castore as proto;

/// Serves a [`DirectoryService`] over gRPC.
pub struct DirectoryServer {
    directory: Arc<dyn DirectoryService>,
}

impl DirectoryServer {
    /// Serves `directory`.
    pub fn new(directory: Arc<dyn DirectoryService>) -> Self {
        Self { directory }
    }
}

type DirectoryStream = Pin<Box<dyn Stream<Item = Result<proto::Directory, Status>> + Send>>;

#[tonic::async_trait]
impl proto::directory_service_server::DirectoryService for DirectoryServer {
    type GetStream = DirectoryStream;

    async fn get(&self, request: Request<proto::GetDirectoryRequest>) -> Result<Response<Self::GetStream>, Status> {
        let request = request.into_inner();
        let Some(proto::get_directory_request::ByWhat::Digest(raw)) = request.by_what else {
            return Err(Status::invalid_argument("by_what: no digest given"));
        };
        let digest = request_digest("digest", &raw)?;
        if !request.recursive {
            let directory =
                self.directory.get(&digest).await?.ok_or_else(|| Status::not_found(format!("directory {digest}")))?;
            let stream: DirectoryStream = Box::pin(futures::stream::once(async move { Ok(directory.to_proto()) }));
            return Ok(Response::new(stream));
        }
        let service = self.directory.clone();
        let mut stream: DirectoryStream = Box::pin(async_stream::try_stream! {
            let mut below = service.get_recursive(&digest);
            while let Some(directory) = below.next().await {
                yield directory.map_err(Status::from)?.to_proto();
            }
        });
        // An unknown root is reported as the call's status rather than inside the stream, as
        // for a non-recursive Get.
        let first = stream.next().await;
        if let Some(Err(status)) = first {
            return Err(status);
        }
        let stream: DirectoryStream = Box::pin(futures::stream::iter(first).chain(stream));
        Ok(Response::new(stream))
    }

    async fn put(
        &self,
        request: Request<Streaming<proto::Directory>>,
    ) -> Result<Response<proto::PutDirectoryResponse>, Status> {
        let broken = super::uploads::BodyBroken::of(&request);
        let mut incoming = request.into_inner();
        // The whole graph is collected and checked before anything is handed to the backend, so
        // a rejected (or broken-off) stream leaves nothing behind, whatever the backend.
        let mut graph = GraphBuilder::default();
        let mut index = 0usize;
        while let Some(message) = incoming.next().await {
            let directory = Directory::from_proto(message?)
                .map_err(|e| Status::from(Error::from(e)))
                .map_err(|s| Status::invalid_argument(format!("directory #{index} in the stream: {}", s.message())))?;
            graph.add(directory, self.directory.as_ref()).await.map_err(|e| match e {
                Error::InvalidRequest(m) => Status::invalid_argument(format!("directory #{index} in the stream: {m}")),
                other => other.into(),
            })?;
            index += 1;
        }
        if broken.is_broken() {
            return Err(Status::cancelled("the client broke off the upload; nothing was stored"));
        }
        let (root, directories) = graph.finish()?;
        let mut putter = self.directory.put_multiple_start();
        for (_, directory) in directories {
            putter.put(directory).await?;
        }
        let stored = putter.close().await?;
        if stored != root {
            return Err(Status::internal(format!(
                "backend stored root {stored}, but the last directory sent was {root}"
            )));
        }
        Ok(Response::new(proto::PutDirectoryResponse { root_digest: root.into() }))
    }
}
