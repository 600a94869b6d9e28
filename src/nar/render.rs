//! Rendering a castore tree as a NAR stream, and the errors of doing so.
//!
//! Directories are fetched up front in one recursive request (one round trip over gRPC) and
//! laid out ([`NarLayout`]); blobs are fetched in NAR order with a bounded read-ahead, so the
//! next files are already on their way while the current one is written out.

use tokio::io::AsyncWrite;

use super::{NarLayout, NarWriteError};
use crate::castore::blobservice::BlobService;
use crate::castore::directoryservice::DirectoryService;
use crate::castore::{Error as StoreError, Node};

/// Why a NAR could not be rendered from castore nodes.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A directory or blob the tree refers to is missing.
    #[error("{what} {digest} is not in the store")]
    Missing {
        /// `directory` or `blob`.
        what: &'static str,
        /// Its digest.
        digest: crate::castore::B3Digest,
    },
    /// A blob's length differs from the size its file node announces.
    #[error("blob {digest} has a different length than the {size} bytes its file node says")]
    SizeMismatch {
        /// The blob.
        digest: crate::castore::B3Digest,
        /// The size in the node.
        size: u64,
    },
    /// Reading a blob failed.
    #[error("reading blob {digest}: {source}")]
    BlobRead {
        /// The blob.
        digest: crate::castore::B3Digest,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A store service failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Writing the NAR failed (including the sink going away).
    #[error(transparent)]
    Write(#[from] NarWriteError),
}

impl From<RenderError> for StoreError {
    fn from(e: RenderError) -> Self {
        match e {
            RenderError::Missing { .. } => StoreError::NotFound(e.to_string()),
            RenderError::SizeMismatch { .. } => StoreError::Corrupt(e.to_string()),
            RenderError::Store(inner) => inner,
            other => StoreError::Storage(other.to_string()),
        }
    }
}

/// Writes the NAR of `root` to `w` and returns `w` (flushed). Everything `root` refers to
/// must be stored.
pub async fn write_nar<W: AsyncWrite + Unpin>(
    w: W,
    root: &Node,
    blob: &dyn BlobService,
    directory: &dyn DirectoryService,
) -> Result<W, RenderError> {
    NarLayout::of(root, directory).await?.write(w, blob).await
}
