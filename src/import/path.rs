//! Local path ingestion: walk a file tree once, in NAR order, uploading its blobs and
//! directories and computing the NAR hash and size on the way, without writing a NAR.
//!
//! The walk runs on a blocking thread (plain `std::fs` I/O, SHA-256 of the NAR stream) while
//! the blob service chunks, BLAKE3-hashes and stores on the runtime: two cores busy for one
//! large file, many uploads in flight for many small ones.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::runtime::Handle;

use super::upload::{SMALL_BLOB, Uploader};
use super::{ImportError, Ingested, Progress};
use crate::castore::blobservice::BlobService;
use crate::castore::directoryservice::{DirectoryPutter, DirectoryService};
use crate::castore::{B3Digest, Directory, Node, PathComponent, SymlinkTarget};
use crate::nar::{NarHasher, NarWriter};

/// Size of the pieces a large file is read and uploaded in.
const READ_BUF: usize = 256 * 1024;

/// Ingests the tree at `path` (not following a symlink at `path` itself, as Nix does):
/// blobs into `blob`, directories into `directory` (one leaves-first upload, made visible only
/// when everything else succeeded). Returns the root node and the NAR size and SHA-256.
pub async fn ingest_path(
    blob: Arc<dyn BlobService>,
    directory: Arc<dyn DirectoryService>,
    path: &Path,
    progress: Option<Arc<Progress>>,
) -> Result<Ingested, ImportError> {
    let path = path.to_path_buf();
    let handle = Handle::current();
    tokio::task::spawn_blocking(move || {
        let nar = futures::executor::block_on(NarWriter::new(NarHasher::new()))?;
        let mut putter = directory.put_multiple_start();
        let mut walker = Walker {
            rt: handle.clone(),
            blob: blob.clone(),
            putter: &mut *putter,
            nar,
            uploads: Uploader::new(blob.clone()),
            buf: vec![0; READ_BUF],
            progress,
            any_directory: false,
        };
        let node = walker.walk(&path)?;
        let Walker { nar, uploads, any_directory, .. } = walker;
        let hasher = futures::executor::block_on(nar.finish())?;
        let (nar_size, nar_sha256) = hasher.finalize();
        // Directories (and the PathInfo our caller registers) may only become visible once
        // every blob below them is durable; the blobs were written deferred, so sync once here.
        handle.block_on(uploads.finish())?;
        handle.block_on(blob.sync())?;
        if any_directory {
            handle.block_on(putter.close())?;
        }
        Ok(Ingested { node, nar_size, nar_sha256 })
    })
    .await
    .map_err(|e| ImportError::Task(e.to_string()))?
}

struct Walker<'a> {
    rt: Handle,
    blob: Arc<dyn BlobService>,
    putter: &'a mut (dyn DirectoryPutter + 'a),
    nar: NarWriter<NarHasher>,
    uploads: Uploader,
    buf: Vec<u8>,
    progress: Option<Arc<Progress>>,
    any_directory: bool,
}

/// The NAR writer's sink never blocks, so its futures complete on the first poll.
fn now<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

/// A directory being walked: where it is, its name in its parent, the entries still to visit
/// (last first, so `pop` gives them in name order) and the listing built so far.
struct Frame {
    path: PathBuf,
    name: Option<PathComponent>,
    pending: Vec<(Vec<u8>, PathBuf)>,
    dir: Directory,
}

impl Walker<'_> {
    /// Walks the tree at `root` depth-first in NAR order, with an explicit stack rather than a
    /// call per level: a local tree can be as deep as PATH_MAX allows (about 2,000 levels),
    /// and recursing overflowed the 2 MiB stack of the blocking thread at 1,990 levels in a
    /// debug build (tests/deep_nesting.rs).
    fn walk(&mut self, root: &Path) -> Result<Node, ImportError> {
        let mut stack: Vec<Frame> = Vec::new();
        let mut next: Option<(PathBuf, Option<PathComponent>)> = Some((root.to_path_buf(), None));
        loop {
            let (path, name, node) = match next.take() {
                Some((path, name)) => match self.leaf(&path, name.as_ref())? {
                    Some(node) => (path, name, node),
                    None => {
                        let pending = list(&path)?;
                        now(self.nar.directory_start(name.as_ref().map(PathComponent::as_bytes)))?;
                        stack.push(Frame { path, name, pending, dir: Directory::new() });
                        continue;
                    }
                },
                None => {
                    let Some(top) = stack.last_mut() else {
                        unreachable!("an entry is only taken from an open directory");
                    };
                    if let Some((child_name, child_path)) = top.pending.pop() {
                        let component =
                            PathComponent::try_from(&child_name[..]).map_err(|e| invalid(&child_path, e))?;
                        next = Some((child_path, Some(component)));
                        continue;
                    }
                    let Some(Frame { path, name, dir, .. }) = stack.pop() else {
                        unreachable!("the top frame was just looked at");
                    };
                    now(self.nar.directory_end())?;
                    let node = Node::directory(dir.digest(), dir.size());
                    self.rt.block_on(self.putter.put(dir))?;
                    self.any_directory = true;
                    self.count();
                    (path, name, node)
                }
            };
            match (stack.last_mut(), name) {
                (Some(parent), Some(name)) => parent.dir.add(name, node).map_err(|e| invalid(&path, e))?,
                _ => return Ok(node),
            }
        }
    }

    /// Writes and returns a symlink or file node; `None` for a directory, which the caller
    /// opens.
    fn leaf(&mut self, path: &Path, name: Option<&PathComponent>) -> Result<Option<Node>, ImportError> {
        let name = name.map(PathComponent::as_bytes);
        let meta = std::fs::symlink_metadata(path).map_err(ImportError::io(path))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(ImportError::io(path))?;
            let target = target.as_os_str().as_bytes();
            let target = SymlinkTarget::try_from(target).map_err(|e| invalid(path, e))?;
            now(self.nar.symlink(name, target.as_bytes()))?;
            self.count();
            Ok(Some(Node::Symlink { target }))
        } else if ft.is_file() {
            let executable = meta.permissions().mode() & 0o100 != 0;
            self.file(path, name, executable, meta.len()).map(Some)
        } else if ft.is_dir() {
            Ok(None)
        } else {
            let kind = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "FIFO"
            } else if ft.is_block_device() {
                "block device"
            } else if ft.is_char_device() {
                "character device"
            } else {
                "file of unknown type"
            };
            Err(ImportError::UnsupportedType { path: path.to_path_buf(), kind })
        }
    }

    fn file(&mut self, path: &Path, name: Option<&[u8]>, executable: bool, size: u64) -> Result<Node, ImportError> {
        let mut file = std::fs::File::open(path).map_err(ImportError::io(path))?;
        now(self.nar.file_start(name, executable, size))?;
        let changed = |read| ImportError::Changed { path: path.to_path_buf(), expected: size, read };
        let digest = if size <= SMALL_BLOB {
            let mut data = Vec::with_capacity(size as usize);
            (&mut file).take(size + 1).read_to_end(&mut data).map_err(ImportError::io(path))?;
            if data.len() as u64 != size {
                return Err(changed(data.len() as u64));
            }
            now(self.nar.file_write(&data))?;
            let digest = B3Digest::of(&data);
            self.rt.block_on(self.uploads.submit(digest, Bytes::from(data)))?;
            digest
        } else {
            let mut writer = self.rt.block_on(self.blob.open_write_deferred());
            // Hashed here too, so the walk need not wait for the store to close the blob.
            let mut hasher = blake3::Hasher::new();
            let mut read = 0u64;
            loop {
                let n = file.read(&mut self.buf).map_err(ImportError::io(path))?;
                if n == 0 {
                    break;
                }
                read += n as u64;
                if read > size {
                    return Err(changed(read));
                }
                now(self.nar.file_write(&self.buf[..n]))?;
                hasher.update(&self.buf[..n]);
                self.rt
                    .block_on(writer.write_all(&self.buf[..n]))
                    .map_err(|e| crate::castore::Error::Storage(format!("uploading {}: {e}", path.display())))?;
                if let Some(p) = &self.progress {
                    p.add_bytes(n as u64);
                }
            }
            if read != size {
                return Err(changed(read));
            }
            let digest = B3Digest::of_hasher(&hasher);
            self.rt.block_on(self.uploads.submit_writer(digest, writer))?;
            digest
        };
        now(self.nar.file_end())?;
        if size <= SMALL_BLOB
            && let Some(p) = &self.progress
        {
            p.add_bytes(size);
        }
        self.count();
        Ok(Node::file(digest, size, executable))
    }

    fn count(&self) {
        if let Some(p) = &self.progress {
            p.add_entry();
        }
    }
}

/// The entries of the directory at `path`, last in NAR order first.
fn list(path: &Path) -> Result<Vec<(Vec<u8>, PathBuf)>, ImportError> {
    let mut entries: Vec<(Vec<u8>, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(path).map_err(ImportError::io(path))? {
        let entry = entry.map_err(ImportError::io(path))?;
        entries.push((entry.file_name().as_bytes().to_vec(), entry.path()));
    }
    // NAR order is by name bytes, which is also castore's order.
    entries.sort_unstable_by(|a, b| b.0.cmp(&a.0));
    Ok(entries)
}

fn invalid(path: &Path, e: impl std::fmt::Display) -> ImportError {
    ImportError::Invalid { path: path.to_path_buf(), reason: e.to_string() }
}
