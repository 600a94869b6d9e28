//! Errors of the virtiofs frontend.

use std::io;
use std::path::PathBuf;

/// Why the vhost-user-fs daemon could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum VirtiofsError {
    /// The socket path has no usable parent directory or file name.
    #[error("bad socket path {path}: {reason}")]
    BadSocketPath {
        /// The socket path given.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Another process is already listening on the socket path.
    #[error("socket {path} is in use by a running process")]
    SocketInUse {
        /// The socket path given.
        path: PathBuf,
    },
    /// Creating, binding, chmod-ing or moving the socket into place failed.
    #[error("cannot create the vhost-user socket {path}: {source}")]
    Socket {
        /// The socket path given.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The vhost-user machinery failed to set up a connection's handler.
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    /// An eventfd or thread could not be created.
    #[error("virtiofs backend setup: {0}")]
    Setup(#[source] io::Error),
}
