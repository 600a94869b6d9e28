//! Local path ingestion: walk a file tree once, in NAR order, uploading its blobs and
//! directories and computing the NAR hash and size on the way, without writing a NAR.
//!
//! Every entry is opened relative to its parent directory's descriptor, without following a
//! symlink, and checked to be what its `lstat` said (`super::entry`): a tree someone else can
//! write cannot swap a file for a symlink or a FIFO between the look and the open.
//!
//! The walk runs on a blocking thread (plain `std::fs` I/O, SHA-256 of the NAR stream) while
//! the blob service chunks, BLAKE3-hashes and stores on the runtime: two cores busy for one
//! large file, many uploads in flight for many small ones.

use std::ffi::{CStr, CString, OsStr};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::runtime::Handle;

use super::entry::{self, At, Kind, Seen};
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

/// A directory being walked: where it is, its name in its parent, its open descriptor (every
/// entry in it is opened relative to that, never by path), the entries still to visit (last
/// first, so `pop` gives them in name order) and the listing built so far.
struct Frame {
    path: PathBuf,
    name: Option<PathComponent>,
    /// `None` while closed to keep the walk's descriptors bounded ([`MAX_OPEN_DIRS`]); opened
    /// again through a subdirectory's `..` when the walk comes back to it.
    fd: Option<OwnedFd>,
    seen: Seen,
    pending: Vec<Vec<u8>>,
    dir: Directory,
}

/// Directories the walk keeps open at once, the innermost ones: a tree may be about 2,000
/// levels deep (PATH_MAX), more than a process's default 1,024 descriptors. An outer one is
/// closed when a deeper one opens, and opened again (and checked to be the same directory)
/// when the walk returns to it.
const MAX_OPEN_DIRS: usize = 64;

/// What [`Walker::leaf`] found.
enum Entry {
    /// A file or symlink, written.
    Node(Node),
    /// A directory, open, for the caller to walk.
    Directory(OwnedFd, Seen),
}

impl Walker<'_> {
    /// Walks the tree at `root` depth-first in NAR order, with an explicit stack rather than a
    /// call per level: a local tree can be as deep as PATH_MAX allows (about 2,000 levels),
    /// and recursing overflowed the 2 MiB stack of the blocking thread at 1,990 levels in a
    /// debug build (tests/deep_nesting.rs).
    fn walk(&mut self, root: &Path) -> Result<Node, ImportError> {
        let mut stack: Vec<Frame> = Vec::new();
        // Frames below this index have their descriptor closed.
        let mut open_from = 0;
        let root_name = entry::c_name(root, root.as_os_str().as_bytes())?;
        let mut next: Option<(PathBuf, CString, Option<PathComponent>)> = Some((root.to_path_buf(), root_name, None));
        loop {
            let (path, name, node) = match next.take() {
                Some((path, c_name, name)) => {
                    let at = match stack.last() {
                        None => At::Cwd,
                        Some(Frame { fd: Some(fd), .. }) => At::Dir(fd.as_fd()),
                        Some(_) => unreachable!("the innermost directory is always open"),
                    };
                    match self.leaf(at, &c_name, &path, name.as_ref())? {
                        Entry::Node(node) => (path, name, node),
                        Entry::Directory(fd, seen) => {
                            let mut pending = entry::read_names(fd.as_fd()).map_err(ImportError::io(&path))?;
                            // NAR order is by name bytes, which is also castore's order.
                            pending.sort_unstable_by(|a, b| b.cmp(a));
                            now(self.nar.directory_start(name.as_ref().map(PathComponent::as_bytes)))?;
                            stack.push(Frame { path, name, fd: Some(fd), seen, pending, dir: Directory::new() });
                            if stack.len() - open_from > MAX_OPEN_DIRS {
                                stack[open_from].fd = None;
                                open_from += 1;
                            }
                            continue;
                        }
                    }
                }
                None => {
                    let Some(top) = stack.last_mut() else {
                        unreachable!("an entry is only taken from an open directory");
                    };
                    if let Some(child_name) = top.pending.pop() {
                        let child_path = top.path.join(OsStr::from_bytes(&child_name));
                        let component =
                            PathComponent::try_from(&child_name[..]).map_err(|e| invalid(&child_path, e))?;
                        let c_name = entry::c_name(&child_path, &child_name)?;
                        next = Some((child_path, c_name, Some(component)));
                        continue;
                    }
                    let Some(Frame { path, name, dir, fd, .. }) = stack.pop() else {
                        unreachable!("the top frame was just looked at");
                    };
                    if open_from == stack.len()
                        && let (Some(parent), Some(fd)) = (stack.last_mut(), &fd)
                    {
                        parent.fd = Some(entry::reopen_parent(fd.as_fd(), &parent.seen, &parent.path)?);
                        open_from -= 1;
                    }
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

    /// Writes and returns a symlink or file node; a directory comes back open, for the caller
    /// to walk. `name` is looked up in `at` without following a symlink, and what is opened is
    /// checked to be what the lookup saw (see [`entry`]).
    fn leaf(
        &mut self,
        at: At<'_>,
        c_name: &CStr,
        path: &Path,
        name: Option<&PathComponent>,
    ) -> Result<Entry, ImportError> {
        let name = name.map(PathComponent::as_bytes);
        let seen = entry::lstat(at, c_name).map_err(ImportError::io(path))?;
        match seen.kind {
            Kind::Symlink => {
                let target = entry::read_link(at, c_name, &seen, path)?;
                let target = SymlinkTarget::try_from(&target[..]).map_err(|e| invalid(path, e))?;
                now(self.nar.symlink(name, target.as_bytes()))?;
                self.count();
                Ok(Entry::Node(Node::Symlink { target }))
            }
            Kind::File => {
                // Size and mode are the opened file's (the same inode the lookup saw).
                let opened = entry::open_file(at, c_name, &seen, path)?;
                self.file(opened.file, path, name, opened.executable, opened.size).map(Entry::Node)
            }
            Kind::Directory => Ok(Entry::Directory(entry::open_dir(at, c_name, &seen, path)?, seen)),
            other => Err(ImportError::UnsupportedType { path: path.to_path_buf(), kind: other.name() }),
        }
    }

    fn file(
        &mut self,
        mut file: std::fs::File,
        path: &Path,
        name: Option<&[u8]>,
        executable: bool,
        size: u64,
    ) -> Result<Node, ImportError> {
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

fn invalid(path: &Path, e: impl std::fmt::Display) -> ImportError {
    ImportError::Invalid { path: path.to_path_buf(), reason: e.to_string() }
}
