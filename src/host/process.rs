//! [`Process`]: the lifecycle every long-running command shares. Signal handlers before
//! anything is served, the metrics endpoint, opening the store (which a signal may cut short),
//! telling the world and systemd when it serves, and a clean close.

use std::net::SocketAddr;
use std::path::Path;

use tokio::signal::unix::{SignalKind, signal};

use super::{Gauges, HostError, ListenAddr, Listener, OwnerSocket, Shutdown, shutdown_on, systemd};
use crate::compose::{self, Opened, Role, StoreArgs};
use crate::server::Handlers;

/// A long-running command (daemon, nar-bridge, mount, virtiofs) as a process.
pub struct Process {
    /// The command's name, for messages: `tvix-store <command> listening on …`.
    command: &'static str,
    shutdown: Shutdown,
    gauges: Gauges,
}

impl Process {
    /// Starts the process: installs the SIGINT and SIGTERM handlers first, so that a signal
    /// arriving as soon as a socket or mount exists already means "shut down cleanly", raises the
    /// open-files limit to its hard limit, then starts the metrics endpoint where `metrics` gives
    /// its address.
    pub async fn start(command: &'static str, metrics: Option<SocketAddr>) -> Result<Self, HostError> {
        let mut int = signal(SignalKind::interrupt()).map_err(|e| HostError::Signal("SIGINT", e))?;
        let mut term = signal(SignalKind::terminate()).map_err(|e| HostError::Signal("SIGTERM", e))?;
        let shutdown = shutdown_on(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            systemd::stopping();
        });
        raise_open_files_limit();
        let gauges = Gauges::default();
        if let Some(addr) = metrics {
            super::metrics::serve_metrics(addr, gauges.clone(), shutdown.clone()).await?;
        }
        Ok(Self { command, shutdown, gauges })
    }

    /// Resolves on SIGINT or SIGTERM (systemd has been told we are stopping by then).
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Opens the store `args` name; `None` when a signal came first (a command waiting for
    /// another process to release the default store ends on SIGTERM).
    pub async fn open(&self, args: &StoreArgs, role: Role) -> Result<Option<Opened>, HostError> {
        tokio::select! {
            opened = compose::open(args, role) => Ok(Some(opened?)),
            () = self.shutdown() => Ok(None),
        }
    }

    /// Has `publish` called before each metrics scrape, to set the gauges of what it reads.
    pub fn publish_gauges(&self, publish: impl Fn() + Send + 'static) {
        *self.gauges.lock() = Some(Box::new(publish));
    }

    /// Says that the process serves: `line` on stderr, and `READY=1` with `status` to systemd,
    /// whose watchdog it then feeds.
    pub fn ready(&self, line: &str, status: &str) {
        eprintln!("{line}");
        systemd::ready(status);
    }

    /// Serves gRPC (`handlers`) or HTTP (`app`) on every listener of `addr` until shutdown:
    /// binds them, says where it listens, and returns once every listener has stopped.
    pub async fn serve(&self, addr: &ListenAddr, face: Face) -> Result<(), HostError> {
        let listeners = Listener::bind_all(addr).await?;
        let addresses: Vec<String> = listeners.iter().map(Listener::describe).collect();
        let addresses = addresses.join(", ");
        self.ready(
            &format!("tvix-store {} listening on {addresses}", self.command),
            &format!("serving on {addresses}"),
        );
        let shutdown = self.shutdown();
        futures::future::try_join_all(listeners.into_iter().map(|listener| {
            let shutdown = shutdown.clone();
            let face = face.clone();
            async move {
                match face {
                    Face::Grpc(handlers) => super::serve_grpc(listener, handlers, shutdown).await,
                    Face::Http(app) => super::serve_http(listener, app, shutdown).await,
                }
            }
        }))
        .await?;
        Ok(())
    }

    /// Says that the process stopped.
    pub fn stopped(self) {
        eprintln!("tvix-store {} stopped", self.command);
    }
}

/// Raises this process's soft limit of open files to its hard limit: a server holds a
/// descriptor per connection, and the usual soft limit of 1,024 let a few hundred idle
/// connections make nar-bridge unreachable. Best effort: the limit stays where it was if the
/// kernel refuses.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the struct given, which lives on our stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::debug!("cannot raise the open-files limit: {}", std::io::Error::last_os_error());
            }
        }
    }
}

/// What a network server offers on its listeners.
#[derive(Clone)]
pub enum Face {
    /// Our gRPC services.
    Grpc(Handlers),
    /// An HTTP application (nar-bridge).
    Http(axum::Router),
}

/// A long-running command's store, and the default store's socket while it owns the store.
pub struct HostedStore {
    /// The opened store.
    pub opened: Opened,
    owner: Option<OwnerSocket>,
}

impl HostedStore {
    /// `opened`, served on the default store's socket if it is the default store's own files
    /// (this process holds its lock): owning the default store means serving it to other
    /// commands (import...) meanwhile.
    pub async fn serving(opened: Opened) -> Result<Self, HostError> {
        let owner = super::serve_owner_socket(&opened).await?;
        Ok(Self { opened, owner })
    }

    /// `opened`, not served to others.
    pub fn unserved(opened: Opened) -> Self {
        Self { opened, owner: None }
    }

    /// Where the default store is served, if this process owns it.
    pub fn owner_socket(&self) -> Option<&Path> {
        self.owner.as_ref().map(OwnerSocket::path)
    }

    /// Stops serving the store's socket (waiting for calls in progress), then closes the stores
    /// and releases the store lock.
    pub async fn close(self) {
        if let Some(owner) = self.owner
            && let Err(e) = owner.shutdown().await
        {
            tracing::warn!(error = %e, "stopping the default store's socket");
        }
        drop(self.opened);
    }
}
