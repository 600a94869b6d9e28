//! PathInfoService and NarCalculationService over gRPC (`tvix.store.v1.PathInfoService`).

use super::channel::GrpcChannel;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::channel::MAX_MESSAGE_SIZE;
use crate::castore::{Error, Node};
use crate::pathinfo::{NarCalculationService, PathInfo, PathInfoService};
use crate::proto::store::{self as proto, path_info_service_client::PathInfoServiceClient};
use crate::storepath::{DIGEST_LEN, nixbase32};

/// A [`PathInfoService`] (and [`NarCalculationService`]) talking to a remote
/// `tvix.store.v1.PathInfoService`.
#[derive(Clone)]
pub struct GrpcPathInfoService {
    client: PathInfoServiceClient<GrpcChannel>,
}

impl GrpcPathInfoService {
    /// A client over `channel`.
    pub fn new(channel: impl Into<GrpcChannel>) -> Self {
        Self {
            client: PathInfoServiceClient::new(channel.into())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        }
    }
}

fn received(message: proto::PathInfo) -> Result<PathInfo, Error> {
    PathInfo::from_proto(message).map_err(|e| Error::Corrupt(format!("server sent an invalid PathInfo: {e}")))
}

#[async_trait]
impl PathInfoService for GrpcPathInfoService {
    async fn get(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfo>, Error> {
        let request = proto::GetPathInfoRequest {
            by_what: Some(proto::get_path_info_request::ByWhat::ByOutputHash(Bytes::copy_from_slice(&digest))),
        };
        let message = match self.client.clone().get(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => return Ok(None),
            Err(status) => return Err(super::error(status)),
        };
        let info = received(message)?;
        if *info.store_path.digest() != digest {
            return Err(Error::Corrupt(format!(
                "asked for store path digest {}, server sent {}",
                nixbase32::encode(&digest),
                info.store_path.to_absolute_path()
            )));
        }
        Ok(Some(info))
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
