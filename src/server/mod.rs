//! gRPC servers for our three services (wire-compatible with tvix), our own extensions beside
//! them (`tvix_store.ext.v1`: BlobBatchService, batched blob reads, and PathInfoGraphService, a
//! PathInfo with its directory graph; `tvix_store.admin.v1`),
//! plus `grpc.health.v1` and server reflection (v1 and v1alpha), on a TCP address or a unix
//! socket.

mod admin;
mod blob;
mod blob_batch;
mod directory;
mod listen;
mod metrics;
mod owner;
mod path_info_graph;
mod pathinfo;
pub mod systemd;
mod uploads;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Server;
use tonic::transport::server::{Router, TcpIncoming};
use tower::layer::util::{Identity, Stack};

pub use admin::{Admin, AdminServer};
pub use blob::BlobServer;
pub use blob_batch::{BlobBatchServer, MAX_DIGESTS as MAX_BATCH_DIGESTS};
pub use directory::DirectoryServer;
pub use listen::{ListenAddr, Listener, SocketFile};
pub use owner::{OwnerSocket, serve_owner_socket};
pub use path_info_graph::PathInfoGraphServer;
pub use pathinfo::{NoNarCalculation, PathInfoServer};

use crate::castore::blobservice::BlobService;
use crate::castore::directoryservice::DirectoryService;
use crate::compose::{Maintenance, Services};
use crate::grpc::MAX_MESSAGE_SIZE;
use crate::maintenance::Store;
use crate::pathinfo::{NarCalculationService, PathInfoService};
use crate::proto::admin::store_admin_server::StoreAdminServer;
use crate::proto::castore::blob_service_server::BlobServiceServer;
use crate::proto::castore::directory_service_server::DirectoryServiceServer;
use crate::proto::ext::blob_batch_service_server::BlobBatchServiceServer;
use crate::proto::ext::path_info_graph_service_server::PathInfoGraphServiceServer;
use crate::proto::store::path_info_service_server::PathInfoServiceServer;

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid listen address {0:?}: expected host:port (e.g. 127.0.0.1:8000, [::1]:8000) or a socket path")]
    InvalidAddr(String),
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    #[error("{0} exists and is not a socket; not replacing it")]
    NotSocket(std::path::PathBuf),
    #[error("another server is already listening on {0}")]
    InUse(std::path::PathBuf),
    #[error("gRPC server reflection: {0}")]
    Reflection(String),
    #[error("socket activation: {0}")]
    Activation(String),
    #[error("server task failed: {0}")]
    Task(String),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// What a server serves.
#[derive(Clone)]
pub struct Handlers {
    /// Blobs.
    pub blob: Arc<dyn BlobService>,
    /// Directories.
    pub directory: Arc<dyn DirectoryService>,
    /// PathInfo.
    pub path_info: Arc<dyn PathInfoService>,
    /// Answers CalculateNAR.
    pub nar: Arc<dyn NarCalculationService>,
    /// The admin extension (verify, delete, garbage collection).
    pub admin: Admin,
    /// Whether Delete and CollectGarbage are served on TCP listeners too (they always are on
    /// unix sockets, which the file system's permissions guard).
    pub remote_admin: bool,
}

impl Handlers {
    /// Serves these services, with no backends for the admin extension (its Delete and
    /// CollectGarbage answer FAILED_PRECONDITION; Verify works).
    pub fn new(
        blob: Arc<dyn BlobService>,
        directory: Arc<dyn DirectoryService>,
        path_info: Arc<dyn PathInfoService>,
        nar: Arc<dyn NarCalculationService>,
    ) -> Self {
        let store = Store { blob: blob.clone(), directory: directory.clone(), path_info: path_info.clone() };
        Self { blob, directory, path_info, nar, admin: Admin { store, backends: None }, remote_admin: false }
    }

    /// Serves `services`, with this build's NAR calculation over them, and the admin
    /// extension on their backends where this process holds them.
    pub fn from_services(services: &Services) -> Self {
        let mut handlers = Self::new(
            services.blob.clone(),
            services.directory.clone(),
            services.path_info.clone(),
            nar_calculation(services),
        );
        if let Maintenance::Local(backends) = &services.maintenance {
            handlers.admin.backends = Some(backends.clone());
        }
        handlers
    }
}

/// The NAR calculation a server over `services` offers.
pub fn nar_calculation(services: &Services) -> Arc<dyn NarCalculationService> {
    Arc::new(crate::nar::NarCalculator::new(services.blob.clone(), services.directory.clone()))
}

/// Time connections get to finish their calls after shutdown was asked for; a client keeping a
/// stream open must not keep the daemon (and the store lock) alive indefinitely.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The server pings idle clients too, so connections of vanished clients are closed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Same flow-control windows as our client (see grpc::channel).
const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

async fn router(
    handlers: Handlers,
    over_tcp: bool,
) -> Result<Router<Stack<metrics::RpcMetrics, Stack<uploads::WatchUploads, Identity>>>, ServeError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let path_info_graph = PathInfoGraphServiceServer::new(PathInfoGraphServer::new(
        handlers.path_info.clone(),
        handlers.directory.clone(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_SIZE)
    .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let blob_batch = BlobBatchServiceServer::new(BlobBatchServer::new(handlers.blob.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let blob = BlobServiceServer::new(BlobServer::new(handlers.blob))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let directory = DirectoryServiceServer::new(DirectoryServer::new(handlers.directory))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let path_info = PathInfoServiceServer::new(PathInfoServer::new(handlers.path_info, handlers.nar))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let admin = StoreAdminServer::new(AdminServer::new(handlers.admin, !over_tcp || handlers.remote_admin));
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
    let reflection_v1 = reflection().build_v1().map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| ServeError::Reflection(e.to_string()))?;
    Ok(Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(crate::grpc::channel::MAX_FRAME_SIZE)
        .layer(uploads::WatchUploads)
        .layer(metrics::RpcMetrics)
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

/// Serves `handlers` on `listener` until `shutdown` resolves; then lets calls in progress finish
/// for a few seconds and returns. A unix socket file is removed on return.
pub async fn serve(
    listener: Listener,
    handlers: Handlers,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let router = router(handlers, matches!(listener, Listener::Tcp(_))).await?;
    let stopping = Arc::new(tokio::sync::Notify::new());
    let signal = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.notify_one();
        }
    };
    let grace = async {
        stopping.notified().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        tracing::warn!("calls still running {SHUTDOWN_GRACE:?} after shutdown; closing their connections");
    };
    match listener {
        Listener::Tcp(l) => {
            let incoming = TcpIncoming::from(l).with_nodelay(Some(true));
            tokio::select! {
                result = router.serve_with_incoming_shutdown(incoming, signal) => result?,
                () = grace => {}
            }
        }
        Listener::Unix(l, socket_file) => {
            let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::UnixListenerStream::new(l), |stream| {
                if let Ok(stream) = &stream {
                    crate::grpc::widen_send_buffer(stream);
                }
                stream
            });
            tokio::select! {
                result = router.serve_with_incoming_shutdown(incoming, signal) => result?,
                () = grace => {}
            }
            drop(socket_file);
        }
    }
    Ok(())
}
