//! Rendering a castore tree as a NAR stream, and the NAR size/hash service built on it.
//!
//! Directories are fetched up front in one recursive request (one round trip over gRPC);
//! blobs are fetched in NAR order with a bounded read-ahead, so the next files are already
//! on their way while the current one is written out.

use std::collections::HashMap;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::{NarWriteError, NarWriter};
use crate::castore::blobservice::{BlobReader, BlobService};
use crate::castore::directoryservice::DirectoryService;
use crate::castore::{B3Digest, Directory, Error as StoreError, Node};

/// Blobs up to this size are read ahead whole; larger ones are opened ahead and streamed.
const READ_AHEAD_WHOLE: u64 = 1024 * 1024;
/// Files fetched ahead of the one being written.
const READ_AHEAD: usize = 16;

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

enum Op {
    DirStart(Option<Bytes>),
    DirEnd,
    File { name: Option<Bytes>, executable: bool, size: u64, digest: B3Digest },
    Symlink { name: Option<Bytes>, target: Bytes },
}

enum Fetched {
    Whole(Bytes),
    Stream(Box<dyn BlobReader>),
}

/// Writes the NAR of `root` to `w` and returns `w` (flushed). Everything `root` refers to
/// must be stored.
pub async fn write_nar<W: AsyncWrite + Unpin>(
    w: W,
    root: &Node,
    blob: &dyn BlobService,
    directory: &dyn DirectoryService,
) -> Result<W, RenderError> {
    let mut directories = HashMap::new();
    if let Node::Directory { digest, .. } = root {
        let mut stream = directory.get_recursive(digest);
        while let Some(d) = stream.try_next().await? {
            directories.insert(d.digest(), d);
        }
    }
    let mut ops = Vec::new();
    flatten(None, root, &directories, &mut ops)?;

    let files: Vec<(B3Digest, u64)> = ops
        .iter()
        .filter_map(|op| match op {
            Op::File { digest, size, .. } if *size > 0 => Some((*digest, *size)),
            _ => None,
        })
        .collect();
    let mut fetched = futures::stream::iter(files).map(|(digest, size)| fetch(blob, digest, size)).buffered(READ_AHEAD);

    let mut nar = NarWriter::new(w).await?;
    for op in ops {
        match op {
            Op::DirStart(name) => nar.directory_start(name.as_deref()).await?,
            Op::DirEnd => nar.directory_end().await?,
            Op::Symlink { name, target } => nar.symlink(name.as_deref(), &target).await?,
            Op::File { name, executable, size: 0, .. } => {
                nar.file_start(name.as_deref(), executable, 0).await?;
                nar.file_end().await?;
            }
            Op::File { name, executable, size, digest } => {
                let Some(contents) = fetched.next().await else {
                    unreachable!("one fetch per non-empty file");
                };
                match contents? {
                    Fetched::Whole(data) => {
                        nar.file_start(name.as_deref(), executable, size).await?;
                        nar.file_write(&data).await?;
                        nar.file_end().await?;
                    }
                    Fetched::Stream(mut reader) => {
                        let res = nar.file(name.as_deref(), executable, size, &mut reader).await;
                        match res {
                            Err(NarWriteError::ShortContents { .. }) => {
                                return Err(RenderError::SizeMismatch { digest, size });
                            }
                            Err(NarWriteError::ContentsRead { source, .. }) => {
                                return Err(RenderError::BlobRead { digest, source });
                            }
                            other => other?,
                        }
                        let mut extra = [0u8; 1];
                        let n =
                            reader.read(&mut extra).await.map_err(|source| RenderError::BlobRead { digest, source })?;
                        if n != 0 {
                            return Err(RenderError::SizeMismatch { digest, size });
                        }
                    }
                }
            }
        }
    }
    Ok(nar.finish().await?)
}

async fn fetch(blob: &dyn BlobService, digest: B3Digest, size: u64) -> Result<Fetched, RenderError> {
    let mut reader = blob.open_read(&digest).await?.ok_or(RenderError::Missing { what: "blob", digest })?;
    if size > READ_AHEAD_WHOLE {
        return Ok(Fetched::Stream(reader));
    }
    let mut data = Vec::with_capacity(size as usize);
    (&mut reader as &mut (dyn AsyncRead + Unpin + Send))
        .take(size + 1)
        .read_to_end(&mut data)
        .await
        .map_err(|source| RenderError::BlobRead { digest, source })?;
    if data.len() as u64 != size {
        return Err(RenderError::SizeMismatch { digest, size });
    }
    Ok(Fetched::Whole(Bytes::from(data)))
}

fn flatten(
    name: Option<Bytes>,
    node: &Node,
    directories: &HashMap<B3Digest, Directory>,
    ops: &mut Vec<Op>,
) -> Result<(), RenderError> {
    match node {
        Node::File { digest, size, executable } => {
            ops.push(Op::File { name, executable: *executable, size: *size, digest: *digest })
        }
        Node::Symlink { target } => ops.push(Op::Symlink { name, target: target.to_bytes() }),
        Node::Directory { digest, .. } => {
            let dir = directories.get(digest).ok_or(RenderError::Missing { what: "directory", digest: *digest })?;
            ops.push(Op::DirStart(name));
            for (child_name, child) in dir.entries() {
                flatten(Some(child_name.to_bytes()), child, directories, ops)?;
            }
            ops.push(Op::DirEnd);
        }
    }
    Ok(())
}
