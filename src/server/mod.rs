//! gRPC servers for our three services (wire-compatible with tvix), our own extensions beside
//! them (`tvix_store.ext.v1`: BlobBatchService, batched blob reads, and PathInfoGraphService, a
//! PathInfo with its directory graph; `tvix_store.admin.v1`),
//! plus `grpc.health.v1` and server reflection (v1 and v1alpha), as one router over a [`Store`];
//! the host layer (`crate::host`) serves it on its listeners.

mod access;
mod admin;
mod blob;
mod blob_batch;
mod directory;
mod metrics;
mod path_info_graph;
mod pathinfo;
mod uploads;

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Server;
use tonic::transport::server::Router;
use tower::layer::util::{Identity, Stack};

pub use access::required_right;
pub use admin::{Admin, AdminServer};
pub use blob::BlobServer;
pub use blob_batch::{BlobBatchServer, MAX_DIGESTS as MAX_BATCH_DIGESTS};
pub use directory::DirectoryServer;
pub use path_info_graph::PathInfoGraphServer;
pub use pathinfo::{NoNarCalculation, PathInfoServer};

use crate::access::{Gate, Open};
use crate::maintenance::Backends;
use crate::pathinfo::NarCalculationService;
use crate::proto::admin::store_admin_server::StoreAdminServer;
use crate::proto::castore::blob_service_server::BlobServiceServer;
use crate::proto::castore::directory_service_server::DirectoryServiceServer;
use crate::proto::ext::blob_batch_service_server::BlobBatchServiceServer;
use crate::proto::ext::path_info_graph_service_server::PathInfoGraphServiceServer;
use crate::proto::store::path_info_service_server::PathInfoServiceServer;
use crate::proto::{MAX_FRAME_SIZE, MAX_MESSAGE_SIZE};
use crate::store::Store;

/// Why the gRPC services could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The reflection service could not be built from our descriptors.
    #[error("gRPC server reflection: {0}")]
    Reflection(String),
}

/// What a server serves.
#[derive(Clone)]
pub struct Handlers {
    /// The store.
    pub store: Store,
    /// Answers CalculateNAR.
    pub nar: Arc<dyn NarCalculationService>,
    /// The store's backends, where this process holds them: the admin extension's Delete and
    /// CollectGarbage need them (without, they answer FAILED_PRECONDITION; Verify works).
    pub backends: Option<Backends>,
    /// Who each call comes from and what it may do ([`required_right`] says what each method
    /// needs).
    pub gate: Arc<dyn Gate>,
}

impl Handlers {
    /// Serves `store`, with this build's NAR calculation over it, no backends for the admin
    /// extension, and every call allowed everything ([`Open`]: for a server embedded in a
    /// program; the host layer sets its own gate).
    pub fn new(store: Store) -> Self {
        let nar = Arc::new(crate::nar::NarCalculator::new(store.blob.clone(), store.directory.clone()));
        Self { store, nar, backends: None, gate: Arc::new(Open) }
    }
}

/// The server pings idle clients too, so connections of vanished clients are closed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The router [`router`] builds: our services behind the upload watch and the per-RPC metrics.
pub(crate) type GrpcRouter =
    Router<Stack<access::Guard, Stack<metrics::RpcMetrics, Stack<uploads::WatchUploads, Identity>>>>;

/// Same flow-control windows as our client (see grpc::channel).
const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// The gRPC router serving `handlers`: our services with health and reflection, behind the
/// gate.
pub(crate) async fn router(handlers: Handlers) -> Result<GrpcRouter, ServerError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let store = handlers.store;
    let path_info_graph =
        PathInfoGraphServiceServer::new(PathInfoGraphServer::new(store.path_info.clone(), store.directory.clone()))
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let blob_batch = BlobBatchServiceServer::new(BlobBatchServer::new(store.blob.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let blob = BlobServiceServer::new(BlobServer::new(store.blob.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let directory = DirectoryServiceServer::new(DirectoryServer::new(store.directory.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let path_info = PathInfoServiceServer::new(PathInfoServer::new(store.clone(), handlers.nar))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let admin = Admin { store, backends: handlers.backends };
    let admin = StoreAdminServer::new(AdminServer::new(admin));
    health_reporter.set_serving::<BlobServiceServer<BlobServer>>().await;
    health_reporter.set_serving::<DirectoryServiceServer<DirectoryServer>>().await;
    health_reporter.set_serving::<PathInfoServiceServer<PathInfoServer>>().await;
    health_reporter.set_serving::<BlobBatchServiceServer<BlobBatchServer>>().await;
    health_reporter.set_serving::<PathInfoGraphServiceServer<PathInfoGraphServer>>().await;
    health_reporter.set_serving::<StoreAdminServer<AdminServer>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // The metrics' route table is read from these descriptor sets too: a service added here
    // needs its set in `metrics::SERVED_DESCRIPTOR_SETS` (its unit test lists the services).
    let reflection_v1 = reflection().build_v1().map_err(|e| ServerError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| ServerError::Reflection(e.to_string()))?;
    Ok(Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .layer(uploads::WatchUploads)
        .layer(metrics::RpcMetrics)
        .layer(access::Guard::new(handlers.gate))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(blob)
        .add_service(directory)
        .add_service(path_info)
        .add_service(blob_batch)
        .add_service(path_info_graph)
        .add_service(admin))
}
