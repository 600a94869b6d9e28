//! PathInfoService and NarCalculationService over gRPC (`tvix.store.v1.PathInfoService`), and
//! [`PathInfoService::get_with_graph`] over our `tvix_store.ext.v1.PathInfoGraphService`
//! where the server has it (found out on first use, per daemon, as for the batched read).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::channel::{GrpcChannel, MAX_MESSAGE_SIZE};
use super::directory::connected_graph;
use super::support::ExtensionSupport;
use crate::castore::{Error, Node};
use crate::pathinfo::{NarCalculationService, PathInfo, PathInfoService, PathInfoWithGraph};
use crate::proto::ext::{
    self as ext, path_info_graph_response::Item, path_info_graph_service_client::PathInfoGraphServiceClient,
};
use crate::proto::store::{self as proto, path_info_service_client::PathInfoServiceClient};
use crate::storepath::{DIGEST_LEN, nixbase32};

/// A [`PathInfoService`] (and [`NarCalculationService`]) talking to a remote
/// `tvix.store.v1.PathInfoService`. Clones share the channel and what was learnt about the
/// server.
#[derive(Clone)]
pub struct GrpcPathInfoService {
    client: PathInfoServiceClient<GrpcChannel>,
    graph_client: PathInfoGraphServiceClient<GrpcChannel>,
    /// Whether the server has the PathInfo-with-graph call.
    graph: Arc<ExtensionSupport>,
    channel: GrpcChannel,
}

impl GrpcPathInfoService {
    /// A client over `channel`.
    pub fn new(channel: impl Into<GrpcChannel>) -> Self {
        let channel = channel.into();
        Self {
            client: PathInfoServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            graph_client: PathInfoGraphServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            graph: Arc::new(ExtensionSupport::of(&channel)),
            channel,
        }
    }

    /// The same client restricted to the tvix protocol: [`PathInfoService::get_with_graph`]
    /// answers the PathInfo alone, as against a server without our extension.
    pub fn plain_protocol(mut self) -> Self {
        self.graph = Arc::new(ExtensionSupport::absent(&self.channel));
        self
    }

    /// Whether the server was found to serve the PathInfo with its graph: `None` before the
    /// first [`PathInfoService::get_with_graph`] call found out.
    pub fn has_graph_call(&self) -> Option<bool> {
        self.graph.known()
    }

    /// The PathInfo alone, as [`PathInfoService::get_with_graph`] answers without the extension.
    async fn get_alone(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfoWithGraph>, Error> {
        Ok(self.get(digest).await?.map(PathInfoWithGraph::without_graph))
    }
}

fn request(digest: &[u8; DIGEST_LEN]) -> proto::GetPathInfoRequest {
    proto::GetPathInfoRequest {
        by_what: Some(proto::get_path_info_request::ByWhat::ByOutputHash(Bytes::copy_from_slice(digest))),
    }
}

/// A PathInfo the server answered for `digest`, checked to be the one asked for.
fn answered(digest: &[u8; DIGEST_LEN], message: proto::PathInfo) -> Result<PathInfo, Error> {
    let info = received(message)?;
    if info.store_path.digest() != digest {
        return Err(Error::Corrupt(format!(
            "asked for store path digest {}, server sent {}",
            nixbase32::encode(digest),
            info.store_path.to_absolute_path()
        )));
    }
    Ok(info)
}

fn received(message: proto::PathInfo) -> Result<PathInfo, Error> {
    PathInfo::from_proto(message).map_err(|e| Error::Corrupt(format!("server sent an invalid PathInfo: {e}")))
}

#[async_trait]
impl PathInfoService for GrpcPathInfoService {
    async fn get(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfo>, Error> {
        match self.client.clone().get(request(&digest)).await {
            Ok(response) => answered(&digest, response.into_inner()).map(Some),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(super::error(status)),
        }
    }

    async fn get_with_graph(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfoWithGraph>, Error> {
        if self.graph.known() == Some(false) {
            return self.get_alone(digest).await;
        }
        let mut stream = match self.graph_client.clone().get(request(&digest)).await {
            Ok(response) => {
                self.graph.set(true);
                response.into_inner()
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                tracing::debug!("the server sends no PathInfo with its graph; asking for each on its own");
                self.graph.set(false);
                return self.get_alone(digest).await;
            }
            Err(status) if status.code() == tonic::Code::NotFound => return Ok(None),
            Err(status) => return Err(super::error(status)),
        };
        let info = match stream.message().await {
            Ok(Some(ext::PathInfoGraphResponse { item: Some(Item::PathInfo(message)) })) => answered(&digest, message)?,
            Ok(Some(_)) => {
                return Err(Error::Corrupt("the server's first message of a PathInfo graph is no PathInfo".into()));
            }
            Ok(None) => return Err(Error::Corrupt("the server ended a PathInfo graph call without a PathInfo".into())),
            Err(status) if status.code() == tonic::Code::NotFound => return Ok(None),
            Err(status) => return Err(super::error(status)),
        };
        let Node::Directory { digest: root, .. } = info.node else {
            return Ok(Some(PathInfoWithGraph::without_graph(info)));
        };
        let directories = stream.map(|message| match message {
            Ok(ext::PathInfoGraphResponse { item: Some(Item::Directory(directory)) }) => Ok(directory),
            Ok(_) => Err(Error::Corrupt("the server sent a PathInfo graph message without a directory".into())),
            Err(status) => Err(super::error(status)),
        });
        Ok(Some(PathInfoWithGraph { info, graph: Some(connected_graph(root, directories)) }))
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        let message = self.client.clone().put(info.to_proto()).await.map_err(super::error)?.into_inner();
        received(message)
    }

    fn list(&self) -> BoxStream<'_, Result<PathInfo, Error>> {
        Box::pin(async_stream::try_stream! {
            let mut stream = self.client.clone().list(proto::ListPathInfoRequest {}).await.map_err(super::error)?.into_inner();
            while let Some(message) = stream.next().await {
                yield received(message.map_err(super::error)?)?;
            }
        })
    }
}

#[async_trait]
impl NarCalculationService for GrpcPathInfoService {
    async fn calculate_nar(&self, root: &Node) -> Result<(u64, [u8; 32]), Error> {
        // The root's name has no part in its NAR form; tvix sends such anonymous nodes unnamed.
        let response = self
            .client
            .clone()
            .calculate_nar(root.clone().into_proto(Bytes::new()))
            .await
            .map_err(super::error)?
            .into_inner();
        let sha256: [u8; 32] = response.nar_sha256[..].try_into().map_err(|_| {
            Error::Corrupt(format!("server returned a NAR sha256 of {} bytes, expected 32", response.nar_sha256.len()))
        })?;
        Ok((response.nar_size, sha256))
    }
}
