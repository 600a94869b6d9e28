//! The `tvix.store.v1.PathInfoService` gRPC server over any [`PathInfoService`].

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::access::Right;
use crate::castore::{Error, Node};
use crate::import::{Admission, AdmitError, admit};
use crate::pathinfo::{NarCalculationService, PathInfo};
use crate::proto::castore as castore_proto;
use crate::proto::store as proto;
use crate::store::Store;
use crate::storepath::{DIGEST_LEN, nixbase32};

/// Serves a store's [`PathInfoService`] over gRPC, answering CalculateNAR with a
/// [`NarCalculationService`]. A Put is stored only when it is what it claims
/// ([`crate::import::admit`]).
pub struct PathInfoServer {
    store: Store,
    nar: Arc<dyn NarCalculationService>,
}

impl PathInfoServer {
    /// Serves `store`'s PathInfo, computing NAR hashes with `nar`.
    pub fn new(store: Store, nar: Arc<dyn NarCalculationService>) -> Self {
        Self { store, nar }
    }
}

/// The store path digest a Get asks for.
pub(super) fn output_hash(request: proto::GetPathInfoRequest) -> Result<[u8; DIGEST_LEN], Status> {
    let Some(proto::get_path_info_request::ByWhat::ByOutputHash(raw)) = request.by_what else {
        return Err(Status::invalid_argument("by_what: no by_output_hash given"));
    };
    raw[..].try_into().map_err(|_| {
        Status::invalid_argument(format!("by_output_hash is {} bytes long, expected {DIGEST_LEN}", raw.len()))
    })
}

/// NOT_FOUND for a store path digest without a PathInfo.
pub(super) fn unknown(digest: &[u8; DIGEST_LEN]) -> Status {
    Status::not_found(format!("no PathInfo for store path digest {}", nixbase32::encode(digest)))
}

#[tonic::async_trait]
impl proto::path_info_service_server::PathInfoService for PathInfoServer {
    async fn get(&self, request: Request<proto::GetPathInfoRequest>) -> Result<Response<proto::PathInfo>, Status> {
        let digest = output_hash(request.into_inner())?;
        let info = self.store.path_info.get(digest).await?.ok_or_else(|| unknown(&digest))?;
        Ok(Response::new(info.to_proto()))
    }

    async fn put(&self, request: Request<proto::PathInfo>) -> Result<Response<proto::PathInfo>, Status> {
        let caller = super::access::caller_of(&request);
        let info = PathInfo::from_proto(request.into_inner())
            .map_err(|e| Status::invalid_argument(format!("invalid PathInfo: {e}")))?;
        let path = info.store_path.clone();
        let admission = Admission {
            may_replace: caller.rights.has(Right::Admin),
            check_with: (!caller.rights.has(Right::Trusted)).then_some(self.nar.as_ref()),
        };
        match admit(&self.store, info, admission).await {
            Ok(stored) => Ok(Response::new(stored.to_proto())),
            Err(e) => {
                tracing::warn!(caller = %caller.identity, %path, "PathInfo refused: {e}");
                Err(match e {
                    AdmitError::Exists { .. } => Status::permission_denied(e.to_string()),
                    AdmitError::MissingReference { .. } | AdmitError::Incomplete { .. } => {
                        Status::failed_precondition(e.to_string())
                    }
                    AdmitError::Mismatch { .. } | AdmitError::ContentAddress { .. } => {
                        Status::invalid_argument(e.to_string())
                    }
                    AdmitError::Store(e) => e.into(),
                })
            }
        }
    }

    async fn calculate_nar(
        &self,
        request: Request<castore_proto::Node>,
    ) -> Result<Response<proto::CalculateNarResponse>, Status> {
        let (_name, node) = Node::from_proto(request.into_inner())
            .map_err(|e| Status::invalid_argument(format!("invalid node: {e}")))?;
        let (nar_size, sha256) = self.nar.calculate_nar(&node).await?;
        Ok(Response::new(proto::CalculateNarResponse { nar_size, nar_sha256: Bytes::copy_from_slice(&sha256) }))
    }

    type ListStream = Pin<Box<dyn Stream<Item = Result<proto::PathInfo, Status>> + Send>>;

    async fn list(&self, _request: Request<proto::ListPathInfoRequest>) -> Result<Response<Self::ListStream>, Status> {
        let service = self.store.path_info.clone();
        let stream = async_stream::try_stream! {
            let mut all = service.list();
            while let Some(info) = all.next().await {
                yield info.map_err(Status::from)?.to_proto();
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A [`NarCalculationService`] for servers without one: CalculateNAR answers UNAVAILABLE.
pub struct NoNarCalculation;

#[tonic::async_trait]
impl NarCalculationService for NoNarCalculation {
    async fn calculate_nar(&self, _root: &Node) -> Result<(u64, [u8; 32]), Error> {
        Err(Error::Unavailable("NAR calculation is not built into this server yet".into()))
    }
}
