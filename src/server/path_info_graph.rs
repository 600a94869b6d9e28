//! Our `tvix_store.ext.v1.PathInfoGraphService`: a store path's PathInfo and the directory
//! graph below its root in one call (see the proto for the contract).

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::pathinfo::{output_hash, unknown};
use crate::castore::Node;
use crate::castore::directoryservice::DirectoryService;
use crate::pathinfo::PathInfoService;
use crate::proto::ext::{self as proto, path_info_graph_response::Item};
use crate::proto::store as store_proto;

/// Serves a PathInfo with its directory graph from `path_info` and `directory`.
pub struct PathInfoGraphServer {
    path_info: Arc<dyn PathInfoService>,
    directory: Arc<dyn DirectoryService>,
}

impl PathInfoGraphServer {
    /// Answers from `path_info`, with the directories from `directory`.
    pub fn new(path_info: Arc<dyn PathInfoService>, directory: Arc<dyn DirectoryService>) -> Self {
        Self { path_info, directory }
    }
}

type GraphStream = Pin<Box<dyn Stream<Item = Result<proto::PathInfoGraphResponse, Status>> + Send>>;

#[tonic::async_trait]
impl proto::path_info_graph_service_server::PathInfoGraphService for PathInfoGraphServer {
    type GetStream = GraphStream;

    async fn get(&self, request: Request<store_proto::GetPathInfoRequest>) -> Result<Response<GraphStream>, Status> {
        let digest = output_hash(request.into_inner())?;
        let info = self.path_info.get(digest).await?.ok_or_else(|| unknown(&digest))?;
        let root = match &info.node {
            Node::Directory { digest, .. } => Some(*digest),
            Node::File { .. } | Node::Symlink { .. } => None,
        };
        let directory = self.directory.clone();
        let stream = async_stream::try_stream! {
            yield proto::PathInfoGraphResponse { item: Some(Item::PathInfo(info.to_proto())) };
            if let Some(root) = root {
                let mut graph = directory.get_recursive(&root);
                while let Some(found) = graph.next().await {
                    yield proto::PathInfoGraphResponse { item: Some(Item::Directory(found.map_err(Status::from)?.to_proto())) };
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}
