//! `objectstore+file:///path`: chunks and chunk lists as files in a local directory, the
//! embedded default store's blob backend.
//!
//! Layout (the same as [`super::ObjectStoreChunkStore`] uses, so a store directory can also be
//! served by `object_store`'s local backend): `chunks/<2 hex>/<64 hex>` holds a chunk's bytes,
//! `blobs/<2 hex>/<64 hex>` the chunk list of a multi-chunk blob. Files are written to a
//! temporary name and renamed, so a digest is never visible with partial content while the
//! system runs.
//!
//! Durability is a group commit: instead of an fsync per chunk file (thousands for a tree of
//! small files, which made imports 2.7x slower than Nix), writers call [`ChunkStore::sync`], and
//! one `syncfs` of the store's file system serves every writer that was waiting when it started.
//!
//! This store uses the file system directly, not `object_store`: its local put cannot start a
//! file's writeback early, looks up the file's metadata after each put, and tries to open in a
//! fan-out directory that may not exist yet before creating it; its reads take two hops through
//! the blocking pool where one does. Here the fan-out directories are created when the store is
//! opened, and each file's writeback is started as soon as it is written (`sync_file_range`), so
//! the disk works while the importer hashes and reads further, and the group sync finds less
//! left to write.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::chunked::{decode_chunk_list, encode_chunk_list, stored_key};
use super::{ChunkMeta, ChunkObject, ChunkSource, ChunkStore};
use crate::castore::inventory::{Leftovers, Removal, Stored, StoredStream};
use crate::castore::{B3Digest, Error};

/// Chunk storage in a local directory.
pub struct LocalChunkStore {
    /// The store's directory.
    root: Arc<std::path::PathBuf>,
    /// Shown in errors, so a failure names the store it happened in.
    location: String,
    sync: GroupSync,
    /// Held shared by every write and exclusively by every removal, so a removal that checked
    /// an object's write time cannot delete it while a write in this process renews it.
    removal: Arc<std::sync::RwLock<()>>,
}

/// Batches the durability requests of concurrent writers into shared `syncfs` calls.
struct GroupSync {
    dir: Arc<std::fs::File>,
    /// Number of syncs started so far; a writer needs one that starts after its writes.
    started: AtomicU64,
    /// Number of the last sync that completed; held while a sync runs.
    completed: tokio::sync::Mutex<u64>,
}

impl GroupSync {
    fn open(dir: &std::path::Path) -> std::io::Result<Self> {
        Ok(Self {
            dir: Arc::new(std::fs::File::open(dir)?),
            started: AtomicU64::new(0),
            completed: tokio::sync::Mutex::new(0),
        })
    }

    async fn sync(&self) -> std::io::Result<()> {
        // Any sync numbered `needed` or later starts after this point, i.e. after our writes.
        let needed = self.started.load(Ordering::SeqCst) + 1;
        let mut completed = self.completed.lock().await;
        if *completed >= needed {
            return Ok(());
        }
        let number = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            // SAFETY: the descriptor is valid for the lifetime of `dir`, which the closure owns.
            if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
        })
        .await
        .map_err(std::io::Error::other)??;
        *completed = number;
        Ok(())
    }
}

impl LocalChunkStore {
    /// Opens (creating if needed) a store in the local directory `dir`.
    pub fn open(dir: &std::path::Path) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::storage(format!("cannot create blob directory {}", dir.display()), e))?;
        let sync = GroupSync::open(dir)
            .map_err(|e| Error::storage(format!("cannot open blob directory {}", dir.display()), e))?;
        create_fan_out(dir)?;
        Ok(Self {
            root: Arc::new(dir.to_path_buf()),
            location: dir.display().to_string(),
            sync,
            removal: Arc::default(),
        })
    }

    /// Writes `data` as the file of `digest` under `kind` unless a file of that length is
    /// already there (a chunk of the wrong length can be left behind by a crash before its
    /// sync: it is replaced). The file appears under its name only complete (written to a
    /// temporary name, then renamed), with its writeback started.
    async fn write_file(
        &self,
        kind: &'static str,
        digest: &B3Digest,
        data: Bytes,
        skip_if_present: bool,
    ) -> Result<(), Error> {
        let root = self.root.clone();
        let digest = *digest;
        let path = Self::path(kind, &digest);
        let removal = self.removal.clone();
        tokio::task::spawn_blocking(move || {
            let _writing = removal.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            write_file_blocking(&root, kind, &digest, &data, skip_if_present)
        })
        .await
        .map_err(|e| Error::Storage(format!("blob store write task failed: {e}")))?
        .map_err(|e| Error::storage(format!("blob store {}: {path}", self.location), e))
    }

    fn path(kind: &'static str, digest: &B3Digest) -> String {
        stored_key(kind, digest).join("/")
    }

    /// Runs a file-system call on the blocking pool, with `path` in its error.
    async fn blocking<T: Send + 'static>(
        &self,
        path: String,
        work: impl FnOnce(std::path::PathBuf) -> std::io::Result<T> + Send + 'static,
    ) -> Result<Option<T>, Error> {
        let full = self.root.join(&path);
        match tokio::task::spawn_blocking(move || work(full))
            .await
            .map_err(|e| Error::Storage(format!("blob store task failed: {e}")))?
        {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::storage(format!("blob store {}: {path}", self.location), e)),
        }
    }

    async fn get(&self, path: String) -> Result<Option<Bytes>, Error> {
        Ok(self.blocking(path, std::fs::read).await?.map(Bytes::from))
    }
}

#[async_trait]
impl ChunkSource for LocalChunkStore {
    async fn get_chunk(&self, digest: &B3Digest) -> Result<Option<Bytes>, Error> {
        self.get(Self::path("chunks", digest)).await
    }
}

#[async_trait]
impl ChunkStore for LocalChunkStore {
    async fn chunk_size(&self, digest: &B3Digest) -> Result<Option<u64>, Error> {
        self.blocking(Self::path("chunks", digest), |p| std::fs::metadata(p).map(|m| m.len())).await
    }

    async fn put_chunk(&self, digest: &B3Digest, data: Bytes) -> Result<(), Error> {
        self.write_file("chunks", digest, data, true).await
    }

    async fn get_chunks(&self, digests: &[B3Digest]) -> Vec<Result<Option<Bytes>, Error>> {
        let root = self.root.clone();
        let location = self.location.clone();
        let digests = digests.to_vec();
        let count = digests.len();
        // All in one trip to the blocking pool; see CHUNKS_PER_GET in chunked.rs.
        let read = tokio::task::spawn_blocking(move || {
            digests
                .iter()
                .map(|digest| {
                    let path = Self::path("chunks", digest);
                    match std::fs::read(root.join(&path)) {
                        Ok(data) => Ok(Some(Bytes::from(data))),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                        Err(e) => Err(Error::storage(format!("blob store {location}: {path}"), e)),
                    }
                })
                .collect()
        })
        .await;
        read.unwrap_or_else(|e| vec![Err(Error::Storage(format!("blob store task failed: {e}"))); count])
    }

    async fn get_chunk_list(&self, blob: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        match self.get(Self::path("blobs", blob)).await? {
            Some(buf) => Ok(Some(decode_chunk_list(blob, &buf)?)),
            None => Ok(None),
        }
    }

    async fn put_chunk_list(&self, blob: &B3Digest, chunks: &[ChunkMeta]) -> Result<(), Error> {
        self.write_file("blobs", blob, Bytes::from(encode_chunk_list(chunks)), false).await
    }

    async fn sync(&self) -> Result<(), Error> {
        self.sync.sync().await.map_err(|e| Error::storage(format!("cannot sync blob store {}", self.location), e))
    }

    fn list(&self, kind: ChunkObject) -> StoredStream<'_> {
        Box::pin(async_stream::try_stream! {
            for byte in 0..=255u8 {
                let fan_out = format!("{}/{byte:02x}", kind.dir_name());
                // One fan-out directory at a time: a store of millions of chunks is listed
                // in bounded memory.
                let found = self.blocking(fan_out, list_fan_out).await?.unwrap_or_default();
                for stored in found {
                    yield stored;
                }
            }
        })
    }

    async fn remove(&self, kind: ChunkObject, digest: &B3Digest, cutoff: SystemTime) -> Result<Removal, Error> {
        let removal = self.removal.clone();
        let removed = self
            .blocking(Self::path(kind.dir_name(), digest), move |path| {
                let _removing = removal.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                let meta = std::fs::metadata(&path)?;
                if meta.modified()? >= cutoff {
                    return Ok(Removal::Recent);
                }
                std::fs::remove_file(&path)?;
                Ok(Removal::Removed(meta.len()))
            })
            .await?;
        Ok(removed.unwrap_or(Removal::Absent))
    }

    async fn remove_leftovers(&self, cutoff: SystemTime) -> Result<Leftovers, Error> {
        let mut total = Leftovers::default();
        for kind in ChunkObject::ALL {
            for byte in 0..=255u8 {
                let removal = self.removal.clone();
                let fan_out = format!("{}/{byte:02x}", kind.dir_name());
                let found = self
                    .blocking(fan_out, move |dir| {
                        // No write of this process is between creating and renaming a
                        // temporary file while this is held; older ones are a dead writer's.
                        let _removing = removal.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                        remove_temporaries(&dir, cutoff)
                    })
                    .await?
                    .unwrap_or_default();
                total.count += found.count;
                total.bytes += found.bytes;
            }
        }
        Ok(total)
    }
}

/// The chunk files (or chunk lists) of one fan-out directory; temporary files are skipped.
fn list_fan_out(dir: std::path::PathBuf) -> std::io::Result<Vec<Stored>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let Some(digest) = entry.file_name().to_str().and_then(B3Digest::from_hex) else {
            continue;
        };
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            // Removed since the directory was read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        found.push(Stored { digest, size: meta.len(), written: meta.modified()? });
    }
    Ok(found)
}

/// Removes the temporary files in `dir` last written before `cutoff`.
fn remove_temporaries(dir: &std::path::Path, cutoff: SystemTime) -> std::io::Result<Leftovers> {
    let mut removed = Leftovers::default();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().ends_with(".tmp") {
            continue;
        }
        let meta = entry.metadata()?;
        if meta.modified()? < cutoff {
            std::fs::remove_file(entry.path())?;
            removed.count += 1;
            removed.bytes += meta.len();
        }
    }
    Ok(removed)
}

/// The two kinds of files, each fanned out over 256 directories by the first byte of the digest.
const KINDS: [&str; 2] = ["chunks", "blobs"];

/// Creates every fan-out directory up front, so no write has to find out a directory is missing.
fn create_fan_out(dir: &std::path::Path) -> Result<(), Error> {
    for kind in KINDS {
        let last = dir.join(kind).join("ff");
        if last.is_dir() {
            // Created in order, so the last one existing means all do.
            continue;
        }
        let top = dir.join(kind);
        std::fs::create_dir_all(&top)
            .map_err(|e| Error::storage(format!("cannot create blob directory {}", top.display()), e))?;
        spread_subdirectories(&top);
        for byte in 0..=255u8 {
            let sub = dir.join(kind).join(format!("{byte:02x}"));
            std::fs::create_dir_all(&sub)
                .map_err(|e| Error::storage(format!("cannot create blob directory {}", sub.display()), e))?;
        }
    }
    Ok(())
}

/// Marks `dir` as the top of a directory hierarchy (ext4's `FS_TOPDIR_FL`, `chattr +T`), so the
/// file system spreads its subdirectories, our fan-out directories, over its block groups
/// instead of packing them into the group of their parent. ext4 places a new file's inode in
/// its directory's group, and without a journal it skips every inode of that group deleted in
/// the last minute, one by one, on each allocation: with all fan-out directories in one group,
/// creating a store's files right after another store was deleted cost seconds of system time
/// (measured: an import of 2,000 files took 2.0-2.5 s instead of 1.1-1.4 s). Other file
/// systems ignore or refuse the flag; either way only placement changes.
fn spread_subdirectories(dir: &std::path::Path) {
    const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;
    let Ok(file) = std::fs::File::open(dir) else {
        return;
    };
    let mut flags: libc::c_int = 0;
    // SAFETY: the descriptor is valid while `file` lives; both ioctls read or write one int
    // through a pointer to a live local.
    unsafe {
        if libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) == 0 {
            flags |= FS_TOPDIR_FL;
            libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags);
        }
    }
}

/// Distinguishes the temporary files of concurrent writes of the same digest in this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn write_file_blocking(
    root: &std::path::Path,
    kind: &'static str,
    digest: &B3Digest,
    data: &[u8],
    skip_if_present: bool,
) -> std::io::Result<()> {
    use std::io::Write;
    let [kind, fan_out, hex] = stored_key(kind, digest);
    let fan_out = root.join(kind).join(fan_out);
    let target = fan_out.join(&hex);
    if skip_if_present
        && let Ok(meta) = std::fs::metadata(&target)
        && meta.len() == data.len() as u64
    {
        // Found present, it still counts as written now: garbage collection spares recent
        // writes, and the import relying on this chunk has not written its PathInfo yet.
        return std::fs::File::options().write(true).open(&target)?.set_modified(std::time::SystemTime::now());
    }
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let pid = *PID.get_or_init(std::process::id);
    let (temp, mut file) = loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        // A leftover of a crashed process with our pid may hold the name: take the next one.
        let temp = fan_out.join(format!("{hex}.{pid}.{n}.tmp"));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(file) => break (temp, file),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    };
    let written = file.write_all(data).and_then(|()| {
        start_writeback(&file);
        std::fs::rename(&temp, &target)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// Asks the kernel to start writing the file's dirty pages now, without waiting for them: the
/// group sync that makes them durable later then has little left to wait for.
fn start_writeback(file: &std::fs::File) {
    // SAFETY: the descriptor is valid while `file` is borrowed. The call only starts
    // writeback; its failure (e.g. on a file system without support) changes nothing but speed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}
