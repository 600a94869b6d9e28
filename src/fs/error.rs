//! Errors of the filesystem core, each mapping to one errno.

use std::time::Duration;

use super::Ino;
use crate::castore::{self, B3Digest};

/// What a store failure was about, carried as a field of its log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A blob or directory.
    Digest(B3Digest),
    /// A store path (its basename).
    StorePath(String),
    /// Nothing in particular (listing all paths, an inode's prefetched bytes).
    None,
}

/// Why a filesystem operation failed. [`FsError::errno`] gives the value to reply with.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// No such entry (ENOENT).
    #[error("no such entry")]
    NotFound,
    /// The inode number was never handed out (ENOENT).
    #[error("unknown inode {0}")]
    UnknownInode(Ino),
    /// A directory operation on something else (ENOTDIR).
    #[error("inode {0} is not a directory")]
    NotDirectory(Ino),
    /// A file operation on a directory (EISDIR).
    #[error("inode {0} is a directory")]
    IsDirectory(Ino),
    /// readlink on something else (EINVAL).
    #[error("inode {0} is not a symlink")]
    NotSymlink(Ino),
    /// The file handle is not open (EBADF).
    #[error("file handle {0} is not open")]
    BadHandle(u64),
    /// Any write, create, or metadata change (EROFS).
    #[error("the store is mounted read-only")]
    ReadOnly,
    /// The mount root was opened for listing without `--list-root` (EPERM).
    #[error("the mount root is not listable (mount with --list-root)")]
    RootNotListable,
    /// No such extended attribute (ENODATA).
    #[error("no such extended attribute")]
    NoXattr,
    /// The extended attribute value does not fit the caller's buffer (ERANGE).
    #[error("extended attribute value is {len} bytes, the buffer {size}")]
    XattrRange {
        /// Value length.
        len: usize,
        /// Caller's buffer size.
        size: u32,
    },
    /// A service call took longer than the configured timeout (EIO).
    #[error("{what}: no answer from the store within {after:?}")]
    Timeout {
        /// What was being done.
        what: String,
        /// What it was about.
        subject: Subject,
        /// The timeout.
        after: Duration,
    },
    /// A service call failed (EIO).
    #[error("{what}: {source}")]
    Store {
        /// What was being done.
        what: String,
        /// What it was about.
        subject: Subject,
        /// The service's error.
        source: castore::Error,
    },
    /// Reading blob bytes failed (EIO).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// What it was about.
        subject: Subject,
        /// The reader's error.
        source: std::io::Error,
    },
}

impl FsError {
    /// The errno to reply with.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound | FsError::UnknownInode(_) => libc::ENOENT,
            FsError::NotDirectory(_) => libc::ENOTDIR,
            FsError::IsDirectory(_) => libc::EISDIR,
            FsError::NotSymlink(_) => libc::EINVAL,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::ReadOnly => libc::EROFS,
            FsError::RootNotListable => libc::EPERM,
            FsError::NoXattr => libc::ENODATA,
            FsError::XattrRange { .. } => libc::ERANGE,
            FsError::Timeout { .. } | FsError::Store { .. } | FsError::Io { .. } => libc::EIO,
        }
    }

    /// The kind of error, as a metrics label: `not_found` and the like for answers about the
    /// request, `timeout`, `store` and `io` for failures of the store.
    pub fn kind_label(&self) -> &'static str {
        match self {
            FsError::NotFound | FsError::UnknownInode(_) => "not_found",
            FsError::NotDirectory(_) | FsError::IsDirectory(_) | FsError::NotSymlink(_) => "wrong_type",
            FsError::BadHandle(_) => "bad_handle",
            FsError::ReadOnly | FsError::RootNotListable => "refused",
            FsError::NoXattr | FsError::XattrRange { .. } => "xattr",
            FsError::Timeout { .. } => "timeout",
            FsError::Store { .. } => "store",
            FsError::Io { .. } => "io",
        }
    }
}

impl FsError {
    /// Logs the error for a frontend: a failure of the store as a warning with the digest or
    /// store path it was about as a field, anything else (the request's own mistake) at debug.
    pub fn log(&self) {
        let subject = match self {
            FsError::Timeout { subject, .. } | FsError::Store { subject, .. } | FsError::Io { subject, .. } => subject,
            _ => {
                tracing::debug!(error = %self, "request refused");
                return;
            }
        };
        match subject {
            Subject::Digest(digest) => tracing::warn!(%digest, error = %self, "store failure"),
            Subject::StorePath(store_path) => tracing::warn!(%store_path, error = %self, "store failure"),
            Subject::None => tracing::warn!(error = %self, "store failure"),
        }
    }
}

impl From<FsError> for std::io::Error {
    fn from(e: FsError) -> Self {
        std::io::Error::from_raw_os_error(e.errno())
    }
}
