//! The accept loop: one VMM connection at a time, each with fresh queues and a fresh
//! filesystem session; when a guest goes away the next connection is accepted.

use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::backend::FsBackend;
use super::error::VirtiofsError;
use super::socket::SocketListener;

/// How the daemon serves its connections.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Number of request queues offered (besides the high-priority queue). Guests may use
    /// fewer; Linux before 6.11 uses one.
    pub request_queues: usize,
    /// A tokio runtime the queue threads enter while handling requests, for filesystems whose
    /// futures need a runtime context (timers) even when driven with `Handle::block_on`.
    pub runtime: Option<tokio::runtime::Handle>,
    /// Threads handling requests, shared by all queues; 0 handles each request on its
    /// queue's thread (in order).
    pub threads: usize,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig { request_queues: 4, runtime: None, threads: 4 }
    }
}

/// Serves VMM connections on `socket` forever, one after another. `make_fs` builds the
/// filesystem for each connection, so that a new guest never sees the previous guest's inode
/// numbers or open handles. Only setup failures return.
pub fn serve<F, M>(socket: &mut SocketListener, config: &DaemonConfig, make_fs: M) -> Result<(), VirtiofsError>
where
    F: FileSystem + Send + Sync + 'static,
    M: Fn() -> F,
{
    let unix = socket.take_listener().ok_or_else(|| VirtiofsError::Daemon("socket listener already in use".into()))?;
    let mut listener = Listener::from(unix);
    let mut connection = 0u64;
    loop {
        connection += 1;
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::new());
        let server = Arc::new(Server::new(make_fs()));
        let backend =
            FsBackend::new(server, mem.clone(), config.request_queues, config.runtime.clone(), config.threads)
                .map_err(VirtiofsError::Setup)?;
        let backend = Arc::new(backend);
        let mut daemon = VhostUserDaemon::new("tvix-store-virtiofs".into(), backend, mem)
            .map_err(|e| VirtiofsError::Daemon(e.to_string()))?;
        if let Err(e) = daemon.start(&mut listener) {
            // accept() failures (EMFILE, a peer gone before accept) are transient.
            tracing::warn!(error = %e, "virtiofs: accepting a VMM connection failed");
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        tracing::info!(connection, "virtiofs: VMM connected");
        match daemon.wait() {
            Ok(()) => tracing::info!(connection, "virtiofs: VMM disconnected"),
            Err(e) => tracing::info!(connection, error = %e, "virtiofs: VMM connection ended"),
        }
        // Dropping the daemon stops and joins this connection's queue threads.
        drop(daemon);
    }
}
