//! Typed errors of ingestion and rendering.

use std::path::PathBuf;

use crate::castore::Error as StoreError;
use crate::nar::{NarReadError, NarWriteError};
use crate::storepath::InvalidStorePath;

/// Why a local path or a NAR stream could not be ingested.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Reading the local file system failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path that could not be read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file type that neither NAR nor castore can represent.
    #[error("{}: cannot import a {kind}: only regular files, directories and symlinks are supported", path.display())]
    UnsupportedType {
        /// The offending path.
        path: PathBuf,
        /// `socket`, `FIFO`, `block device` or `character device`.
        kind: &'static str,
    },
    /// An entry was swapped between being looked at and being opened (for a symlink, a FIFO,
    /// another file): refused, nothing of it read.
    #[error("{}: changed while importing: it was {was} when looked at, but {now} when opened; not read", path.display())]
    Replaced {
        /// The entry.
        path: PathBuf,
        /// What `lstat` said it was (`a regular file`, `a directory`, `a symlink`).
        was: &'static str,
        /// What it was on opening (`a symlink`, `a FIFO`, `another file`, …).
        now: &'static str,
    },
    /// A file changed size while it was being read.
    #[error("{}: file changed while importing (expected {expected} bytes, read {read})", path.display())]
    Changed {
        /// The file.
        path: PathBuf,
        /// Its size when the walk saw it.
        expected: u64,
        /// What could actually be read.
        read: u64,
    },
    /// An entry name or symlink target that castore cannot hold.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The offending path.
        path: PathBuf,
        /// Which rule it breaks.
        reason: String,
    },
    /// The path's base name is not a valid store path name.
    #[error("{}: cannot be a store path name: {source}", path.display())]
    Name {
        /// The path given.
        path: PathBuf,
        /// Why its name is not valid.
        #[source]
        source: InvalidStorePath,
    },
    /// The NAR stream is invalid (the error names the byte offset).
    #[error(transparent)]
    Nar(#[from] NarReadError),
    /// Computing the NAR serialisation failed.
    #[error("computing the NAR hash: {0}")]
    NarWrite(#[from] NarWriteError),
    /// A store service failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The uploaded blob came back with another digest than its contents have.
    #[error("blob service returned digest {got} for contents with digest {expected}")]
    DigestMismatch {
        /// What we computed.
        expected: crate::castore::B3Digest,
        /// What the service returned.
        got: crate::castore::B3Digest,
    },
    /// A background task died (a bug, or the runtime is shutting down).
    #[error("ingestion task failed: {0}")]
    Task(String),
}

impl ImportError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| ImportError::Io { path: path.to_path_buf(), source }
    }
}
