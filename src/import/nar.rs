//! NAR ingestion: a NAR stream becomes castore nodes plus its NAR SHA-256 and size, in one
//! pass. Small files are buffered and uploaded concurrently (see [`super::Uploader`]), large
//! ones stream straight into the blob service; directories go up leaves-first in one Put
//! stream that is only closed once the whole NAR has been accepted.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::upload::{SMALL_BLOB, Uploader};
use super::{ImportError, Ingested, Progress};
use crate::castore::blobservice::BlobService;
use crate::castore::directoryservice::DirectoryService;
use crate::castore::{B3Digest, Directory, Node, PathComponent, SymlinkTarget};
use crate::nar::{HashingReader, NarEvent, NarReadError, NarReader};

/// Ingests the NAR read from `nar`. On any error (invalid NAR, store failure) no directory
/// becomes visible; blobs already uploaded stay as unreferenced garbage.
pub async fn ingest_nar<R: AsyncRead + Unpin + Send>(
    blob: Arc<dyn BlobService>,
    directory: Arc<dyn DirectoryService>,
    nar: R,
    progress: Option<Arc<Progress>>,
) -> Result<Ingested, ImportError> {
    // The reader only accepts the canonical encoding and rejects trailing bytes, so the bytes
    // it consumes are exactly the NAR whose hash Nix would compute.
    let mut reader = NarReader::new(HashingReader::new(nar));
    let mut putter = directory.put_multiple_start();
    let mut uploads = Uploader::new(blob.clone());
    // One frame per open directory: its name in the parent and the entries so far.
    let mut stack: Vec<(Option<Vec<u8>>, Directory)> = Vec::new();
    let mut root = None;
    let mut any_directory = false;

    while let Some(event) = reader.next().await? {
        let offset = reader.position();
        let (name, node) = match event {
            NarEvent::DirectoryStart { name } => {
                stack.push((name, Directory::new()));
                continue;
            }
            NarEvent::DirectoryEnd => {
                let Some((name, dir)) = stack.pop() else {
                    unreachable!("the reader balances directories");
                };
                let node = Node::directory(dir.digest(), dir.size());
                putter.put(dir).await?;
                any_directory = true;
                (name, node)
            }
            NarEvent::Symlink { name, target } => {
                let target = SymlinkTarget::try_from(Bytes::from(target)).map_err(|_| {
                    ImportError::Nar(NarReadError::InvalidSymlinkTarget { offset, reason: CASTORE_RULE })
                })?;
                (name, Node::Symlink { target })
            }
            NarEvent::File { name, executable, size } => {
                let digest = if size <= SMALL_BLOB {
                    let mut data = Vec::with_capacity(size as usize);
                    reader.contents().read_to_end(&mut data).await.map_err(|e| NarReadError::from_io(e, offset))?;
                    let digest = B3Digest::of(&data);
                    uploads.submit(digest, Bytes::from(data)).await?;
                    digest
                } else {
                    let mut writer = blob.open_write_deferred().await;
                    let mut contents = reader.contents();
                    let digest = copy_contents(&mut contents, &mut writer, offset).await?;
                    let got = writer.close().await?;
                    if got != digest {
                        return Err(ImportError::DigestMismatch { expected: digest, got });
                    }
                    digest
                };
                if let Some(p) = &progress {
                    p.add_bytes(size);
                }
                (name, Node::file(digest, size, executable))
            }
        };
        if let Some(p) = &progress {
            p.add_entry();
        }
        match (stack.last_mut(), name) {
            (Some((_, parent)), Some(name)) => {
                // The reader already enforced the castore name rules and uniqueness.
                let component = PathComponent::try_from(Bytes::from(name)).map_err(|_| {
                    ImportError::Nar(NarReadError::InvalidName { offset, name: String::new(), reason: CASTORE_RULE })
                })?;
                parent
                    .add(component, node)
                    .map_err(|e| ImportError::Nar(NarReadError::DuplicateEntry { offset, name: e.to_string() }))?;
            }
            _ => root = Some(node),
        }
    }
    let Some(node) = root else {
        unreachable!("the reader only ends after a complete root node");
    };
    let hashing = reader.into_inner();
    let nar_sha256 = hashing.sha256();
    uploads.finish().await?;
    // Blobs were written deferred: durable before any directory (or the caller's PathInfo)
    // refers to them.
    blob.sync().await?;
    if any_directory {
        putter.close().await?;
    }
    Ok(Ingested { node, nar_size: hashing.size(), nar_sha256 })
}

/// Streams one file's contents into a blob writer, keeping NAR errors typed. Returns the
/// contents' BLAKE3, for checking the digest the (deferred) writer returns.
async fn copy_contents<R: AsyncRead + Unpin>(
    contents: &mut R,
    writer: &mut Box<dyn crate::castore::blobservice::BlobWriter>,
    offset: u64,
) -> Result<B3Digest, ImportError> {
    use tokio::io::AsyncWriteExt;
    let mut buf = vec![0u8; 256 * 1024];
    let mut hasher = blake3::Hasher::new();
    loop {
        let n = contents.read(&mut buf).await.map_err(|e| NarReadError::from_io(e, offset))?;
        if n == 0 {
            return Ok(B3Digest::of_hasher(&hasher));
        }
        hasher.update(&buf[..n]);
        writer
            .write_all(&buf[..n])
            .await
            .map_err(|e| crate::castore::Error::Storage(format!("uploading blob: {e}")))?;
    }
}

/// The NAR reader and castore enforce the same name and target rules, so castore rejecting
/// what the reader accepted would be a bug; it is still reported as bad input, not a panic.
const CASTORE_RULE: &str = "rejected by castore validation";
