//! Serving the embedded default store on its socket while a long-running command owns it, so
//! other commands on the same store talk to this process instead of waiting for the store lock.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{AccessPolicy, HostError, ListenAddr, Listener, SocketFile, serve_grpc, shutdown_on};
use crate::compose::Opened;
use crate::compose::defaultstore::SOCKET_NAME;
use crate::server::Handlers;

/// The default store being served on `<store dir>/daemon.sock`. Dropping it stops serving and
/// removes the socket file; [`OwnerSocket::shutdown`] does the same and waits for the server.
pub struct OwnerSocket {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), HostError>>>,
    socket: SocketFile,
}

/// When `opened` is the embedded default store opened as owner (`store_lock` is set), starts
/// serving it on the store's socket in a background task and returns its guard; otherwise
/// (services given by address) returns `None`. Must be called within a Tokio runtime.
pub async fn serve_owner_socket(opened: &Opened) -> Result<Option<OwnerSocket>, HostError> {
    let Some(lock) = &opened.store_lock else {
        return Ok(None);
    };
    let addr = ListenAddr::Unix(lock.dir().join(SOCKET_NAME));
    let listener = Listener::bind(&addr).await?;
    let Listener::Unix(_, Some(socket_file)) = &listener else {
        return Err(HostError::InvalidAddr(addr.to_string()));
    };
    let socket = socket_file.twin();
    // The store's own socket: its owner (this process's uid) and root may do everything, other
    // users who can reach the socket may read.
    let handlers = Handlers {
        backends: opened.maintenance.local_backends(),
        gate: std::sync::Arc::new(AccessPolicy::defaults()),
        ..Handlers::new(opened.store.clone())
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_grpc(
        listener,
        handlers,
        shutdown_on(async move {
            let _ = stopped.await;
        }),
    ));
    tracing::info!("serving the store on {}", socket.path().display());
    Ok(Some(OwnerSocket { stop: Some(stop), task: Some(task), socket }))
}

impl OwnerSocket {
    /// The socket path.
    pub fn path(&self) -> &std::path::Path {
        self.socket.path()
    }

    /// Stops serving, waits for calls in progress (a few seconds at most), removes the socket.
    pub async fn shutdown(mut self) -> Result<(), HostError> {
        self.socket.remove();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => match tokio::time::timeout(Duration::from_secs(10), task).await {
                Ok(Ok(result)) => result,
                Ok(Err(e)) => Err(HostError::Task(e.to_string())),
                Err(_) => Ok(()),
            },
            None => Ok(()),
        }
    }
}

impl Drop for OwnerSocket {
    fn drop(&mut self) {
        // New clients must not find a socket for a store that is about to be released.
        self.socket.remove();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
