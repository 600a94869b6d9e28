//! The host layer: what makes a long-running command a process that serves. Listeners (TCP, unix
//! sockets, sockets systemd passed) and the one accept loop behind them, systemd readiness and
//! the watchdog, signals, the metrics endpoint, the default store's owner socket, the mount
//! point's supervision, and the lifecycle the daemon, nar-bridge, mount and virtiofs share
//! ([`Process`]).
//!
//! Whatever applies to every network face (transport security, who the peer is, connection
//! limits and timeouts) belongs here, set once for all listeners: every connection of every server
//! comes through one accept loop, which tells each request its [`Peer`].

mod access;
mod conn;
mod grpc;
mod http;
mod listen;
mod metrics;
pub mod mountpoint;
mod owner;
mod process;
pub mod systemd;

use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

pub use access::{AccessPolicy, Tokens, TokensError};
pub use conn::{Credentials, Peer};
pub use grpc::serve_grpc;
pub use http::serve_http;
pub use listen::{ListenAddr, Listener, SocketFile};
pub use metrics::Gauges;
pub use owner::{OwnerSocket, serve_owner_socket};
pub use process::{Face, HostedStore, Process};

/// Resolves when a server is to stop; cheap to clone, one for each listener.
pub type Shutdown = Shared<BoxFuture<'static, ()>>;

/// A [`Shutdown`] that resolves when `signal` does.
pub fn shutdown_on(signal: impl Future<Output = ()> + Send + 'static) -> Shutdown {
    signal.boxed().shared()
}

/// Time connections get to finish their calls after shutdown was asked for; a client keeping a
/// stream open must not keep the process (and the store lock) alive indefinitely.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Resolves [`SHUTDOWN_GRACE`] after `shutdown`, saying that calls are being cut off.
async fn after_grace(shutdown: Shutdown) {
    shutdown.await;
    tokio::time::sleep(SHUTDOWN_GRACE).await;
    tracing::warn!("calls still running {SHUTDOWN_GRACE:?} after shutdown; closing their connections");
}

/// Why a process could not serve. Every message names the address or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A listen address that is neither `host:port`, a socket path nor `sd-listen`.
    #[error("invalid listen address {0:?}: expected host:port (e.g. 127.0.0.1:8000, [::1]:8000) or a socket path")]
    InvalidAddr(String),
    /// Binding a listener failed.
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    /// A listen path that holds something other than a socket.
    #[error("{0} exists and is not a socket; not replacing it")]
    NotSocket(std::path::PathBuf),
    /// A listen path a live server listens on.
    #[error("another server is already listening on {0}")]
    InUse(std::path::PathBuf),
    /// Sockets passed by systemd that cannot be used.
    #[error("socket activation: {0}")]
    Activation(String),
    /// Signal handlers could not be installed.
    #[error("installing the {0} handler: {1}")]
    Signal(&'static str, std::io::Error),
    /// The metrics endpoint could not be started.
    #[error("{0}")]
    Metrics(String),
    /// The tokens file cannot be used.
    #[error(transparent)]
    Tokens(#[from] TokensError),
    /// The store could not be opened.
    #[error(transparent)]
    Compose(#[from] crate::compose::ComposeError),
    /// The gRPC services could not be set up.
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    /// A server task ended abnormally.
    #[error("server task failed: {0}")]
    Task(String),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}
