//! A bounded, persistent read-through cache on the local disk, in front of any (remote) blob and
//! directory service ([`DiskCacheBlobService`], [`DiskCacheDirectoryService`]), shared by every
//! process on the host that names the same directory. See docs/disk-cache.md.
//!
//! Layout below the cache directory (one file per object, named by its digest):
//! `chunks/<2 hex>/<64 hex>` a chunk's bytes (a blob of one chunk is that chunk),
//! `lists/<2 hex>/<64 hex>` the chunk list of a multi-chunk blob, `dirs/<2 hex>/<64 hex>` an
//! encoded Directory, `records/<2 hex>/<64 hex>` a record behind its BLAKE3 checksum (a
//! directory closure, or a higher layer's PathInfo) under a key its writer derives; `tmp/`
//! files being written; `tvix-disk-cache` marks the directory as ours.
//!
//! Invariants, which hold across crashes and concurrent processes without any lock held for a
//! process's lifetime:
//! - an object's file appears under its name only complete (written in `tmp/`, then renamed);
//!   none is ever fsynced, so after a power loss a file may be torn: every read checks the bytes
//!   against their name (chunks by BLAKE3, directories by decoding and hashing, chunk lists by
//!   the checksum they carry) and drops a file that fails, so a torn file is never served;
//! - a file's mtime is its last use, refreshed on a hit at most once per [`TOUCH_AFTER`]; eviction
//!   removes the least recently used files first (see `evict.rs`);
//! - any process may remove any object file at any time (eviction): a reader that finds it gone
//!   treats that as a miss and fetches it from the far side again.

mod blob;
mod directory;
mod evict;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;

pub use blob::DiskCacheBlobService;
pub use directory::DiskCacheDirectoryService;
pub use evict::Eviction;

use super::B3Digest;

/// The size a cache is bounded to when none is given: 10 GiB.
pub const DEFAULT_SIZE: u64 = 10 << 30;

/// A hit refreshes its file's mtime (its place in the eviction order) only when the mtime is
/// older than this: one `futimens` per file and minute at most, instead of one per read. A
/// minute is far finer than the time between evictions of a cache of any useful size (the
/// cache turns over 10% of its size between two), so the order is LRU to within a minute.
pub const TOUCH_AFTER: Duration = Duration::from_secs(60);

/// Length of the checksum in front of a record's bytes.
const RECORD_SUM: usize = blake3::OUT_LEN;

/// Name of the file that marks a directory as a disk cache. A non-empty directory without it
/// is refused: eviction deletes files, and must never be pointed at someone else's.
const MARKER: &str = "tvix-disk-cache";
/// Files [`DiskCache::read_many`] reads per trip to the blocking pool, as the local chunk store
/// does (`CHUNKS_PER_GET` there).
const READS_PER_TRIP: usize = 32;

/// What a cache file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Object {
    /// A chunk's bytes (a single-chunk blob's too).
    Chunk,
    /// The chunk list of a multi-chunk blob, with a checksum.
    ChunkList,
    /// An encoded Directory.
    Directory,
    /// An opaque record (a directory closure, a higher layer's PathInfo) under a key its
    /// writer derives, with a checksum the cache adds and checks ([`DiskCache::store_record`]).
    Record,
}

impl Object {
    /// Every kind, in the order eviction scans them.
    const ALL: [Object; 4] = [Object::Chunk, Object::ChunkList, Object::Directory, Object::Record];

    fn dir(self) -> &'static str {
        match self {
            Object::Chunk => "chunks",
            Object::ChunkList => "lists",
            Object::Directory => "dirs",
            Object::Record => "records",
        }
    }

    /// Its label in metrics.
    fn label(self) -> &'static str {
        match self {
            Object::Chunk => "chunk",
            Object::ChunkList => "chunk_list",
            Object::Directory => "directory",
            Object::Record => "record",
        }
    }
}

/// Why a disk cache could not be opened. Each names the directory and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum DiskCacheError {
    /// The directory cannot be created or inspected.
    #[error("disk cache {}: cannot create or open it: {source}", dir.display())]
    Open { dir: PathBuf, source: std::io::Error },
    /// The path exists but is not a directory.
    #[error("disk cache {}: not a directory", dir.display())]
    NotADirectory { dir: PathBuf },
    /// Owned by another user: its files could be replaced behind our back, or we could not
    /// evict them.
    #[error("disk cache {}: owned by uid {owner}, but this process runs as uid {us}; give a directory of its own", dir.display())]
    WrongOwner { dir: PathBuf, owner: u32, us: u32 },
    /// A non-empty directory that is not a disk cache.
    #[error("disk cache {}: not empty and not a disk cache (no {MARKER} file); give an empty or new directory", dir.display())]
    Foreign { dir: PathBuf },
    /// Files cannot be written there (read-only file system, permissions, full disk).
    #[error("disk cache {}: cannot write there: {source}", dir.display())]
    Unwritable { dir: PathBuf, source: std::io::Error },
    /// A size bound that is zero or malformed.
    #[error("disk cache size {given:?}: {reason}")]
    Size { given: String, reason: String },
}

/// The files of a disk cache, bounded in total size. Cheap to share (`Arc`); several instances,
/// in this process or others, may use one directory at once.
pub struct DiskCache {
    root: PathBuf,
    /// The most bytes (allocated on disk) the cache's files may take.
    bound: u64,
    touch_after: Duration,
    /// Bytes this process believes the cache holds: the last scan's total plus what this
    /// process stored since. Other processes' writes are seen at the next scan.
    estimate: AtomicU64,
    /// Bytes this process stored since its last scan; a scan is also due after `bound / 8` of
    /// them, so the writes of other processes sharing the directory are noticed.
    since_scan: AtomicU64,
    /// Held by the one task of this process that evicts (other processes: the lock file).
    evicting: parking_lot::Mutex<()>,
    /// Set while a background eviction is queued or running, so stores start at most one.
    eviction_queued: AtomicBool,
    /// Set after a write failed (full disk, read-only remount...): hits are still served, but
    /// nothing more is stored; warned about once.
    writes_off: AtomicBool,
    /// Whether a read error other than "not found" was warned about already.
    read_warned: AtomicBool,
}

impl DiskCache {
    /// Opens (creating if needed) the cache in `dir`, bounded to `bound` bytes. Fails with a
    /// clear error when the directory cannot be used: not a directory, owned by someone else,
    /// not empty but not a cache, or not writable.
    pub fn open(dir: &Path, bound: u64) -> Result<Self, DiskCacheError> {
        Self::open_with(dir, bound, TOUCH_AFTER)
    }

    /// [`DiskCache::open`] with a chosen hit refresh interval (tests of the eviction order use
    /// zero).
    pub fn open_with(dir: &Path, bound: u64, touch_after: Duration) -> Result<Self, DiskCacheError> {
        if bound == 0 {
            return Err(DiskCacheError::Size { given: "0".into(), reason: "must be more than zero".into() });
        }
        let open_err = |source| DiskCacheError::Open { dir: dir.to_path_buf(), source };
        if std::fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
            return Err(DiskCacheError::NotADirectory { dir: dir.to_path_buf() });
        }
        std::fs::create_dir_all(dir).map_err(open_err)?;
        let meta = std::fs::metadata(dir).map_err(open_err)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let us = unsafe { libc::geteuid() };
        if meta.uid() != us {
            return Err(DiskCacheError::WrongOwner { dir: dir.to_path_buf(), owner: meta.uid(), us });
        }
        let marker = dir.join(MARKER);
        if !marker.exists() && std::fs::read_dir(dir).map_err(open_err)?.next().is_some() {
            return Err(DiskCacheError::Foreign { dir: dir.to_path_buf() });
        }
        let unwritable = |source| DiskCacheError::Unwritable { dir: dir.to_path_buf(), source };
        for sub in ["tmp", "chunks", "lists", "dirs", "records"] {
            match std::fs::create_dir(dir.join(sub)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(unwritable(e)),
            }
        }
        // A write of a real file through the same path a fill takes: a read-only file system
        // or a directory we may not write to fails here, at start, not on the first read.
        let probe = dir.join("tmp").join(format!("probe.{}.tmp", std::process::id()));
        std::fs::write(&probe, b"probe").map_err(unwritable)?;
        std::fs::rename(&probe, &marker).map_err(unwritable)?;
        Ok(Self {
            root: dir.to_path_buf(),
            bound,
            touch_after,
            estimate: AtomicU64::new(0),
            // The first store scans: what earlier processes left is counted before we add to it.
            since_scan: AtomicU64::new(u64::MAX / 2),
            evicting: parking_lot::Mutex::new(()),
            eviction_queued: AtomicBool::new(false),
            writes_off: AtomicBool::new(false),
            read_warned: AtomicBool::new(false),
        })
    }

    /// The cache's directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The size bound in bytes.
    pub fn bound(&self) -> u64 {
        self.bound
    }

    fn path(&self, object: Object, digest: &B3Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join(object.dir()).join(&hex[..2]).join(hex)
    }

    /// Whether a file for the object exists (unverified: for `has`).
    pub(crate) async fn contains(&self, object: Object, digest: &B3Digest) -> bool {
        let path = self.path(object, digest);
        tokio::task::spawn_blocking(move || path.is_file()).await.unwrap_or(false)
    }

    /// Whether a file for the object exists, checked on the calling thread (one `stat`, for
    /// callers that cannot wait).
    pub(crate) fn contains_now(&self, object: Object, digest: &B3Digest) -> bool {
        self.path(object, digest).is_file()
    }

    /// The bytes of an object's file, unverified (the caller checks them and calls
    /// [`DiskCache::discard`] if they are wrong); `None` when absent or unreadable. A hit's
    /// mtime is refreshed.
    pub(crate) async fn read(&self, object: Object, digest: &B3Digest) -> Option<Bytes> {
        let path = self.path(object, digest);
        let touch_after = self.touch_after;
        let read = tokio::task::spawn_blocking(move || read_touching(&path, touch_after)).await;
        match read {
            Ok(read) => self.outcome(object, digest, read),
            Err(_) => None,
        }
    }

    /// [`DiskCache::read`] of many objects, [`READS_PER_TRIP`] files per trip to the blocking
    /// pool (a trip per small file cost as much as reading it), results in the order asked.
    pub(crate) async fn read_many(&self, object: Object, digests: &[B3Digest]) -> Vec<Option<Bytes>> {
        let touch_after = self.touch_after;
        let trips: Vec<Vec<PathBuf>> =
            digests.chunks(READS_PER_TRIP).map(|group| group.iter().map(|d| self.path(object, d)).collect()).collect();
        let mut reads = futures::stream::iter(trips)
            .map(|paths| async move {
                let count = paths.len();
                let read = tokio::task::spawn_blocking(move || {
                    paths.iter().map(|path| read_touching(path, touch_after)).collect::<Vec<_>>()
                })
                .await;
                read.unwrap_or_else(|_| (0..count).map(|_| Err(std::io::Error::other("read task failed"))).collect())
            })
            .buffered(2);
        let mut out = Vec::with_capacity(digests.len());
        let mut asked = digests.iter();
        while let Some(group) = reads.next().await {
            // The group first: zip pulls its left side first, and must not take a digest of
            // the next group when this one is done.
            for (read, digest) in group.into_iter().zip(asked.by_ref()) {
                out.push(self.outcome(object, digest, read));
            }
        }
        out
    }

    /// What a read of an object's file found: its bytes, or a miss (absent, or unreadable,
    /// which is warned of once).
    fn outcome(&self, object: Object, digest: &B3Digest, read: std::io::Result<Vec<u8>>) -> Option<Bytes> {
        let outcome = match read {
            Ok(data) => Some(Bytes::from(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                // Unreadable is a miss: the far side can still answer.
                if !self.read_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(dir = %self.root.display(), %digest, error = %e,
                        "disk cache: cannot read a cache file; reading from the far store instead (warned once)");
                }
                None
            }
        };
        count(object, if outcome.is_some() { "hit" } else { "miss" });
        outcome
    }

    /// Removes an object's file that failed verification (torn by a crash, or corrupted), so
    /// the next fill replaces it. A file already gone is fine.
    pub(crate) async fn discard(&self, object: Object, digest: &B3Digest, why: &str) {
        tracing::warn!(dir = %self.root.display(), %digest, kind = object.label(), why,
            "disk cache: dropping a corrupt cache file; fetching it from the far store again");
        count(object, "corrupt");
        let path = self.path(object, digest);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
    }

    /// The key of the record of `kind` (a name space of its writer's) for `id`: a digest of both,
    /// so records of different kinds never share a file.
    pub fn record_key(kind: &str, id: &[u8]) -> B3Digest {
        let mut hasher = blake3::Hasher::new();
        hasher.update(kind.as_bytes());
        hasher.update(b"\0");
        hasher.update(id);
        B3Digest::from(*hasher.finalize().as_bytes())
    }

    /// A record stored with [`DiskCache::store_record`] under `key`, its checksum checked (a
    /// torn or corrupt file is dropped and reads as absent). Records are for layers above the
    /// castore whose contents the cache cannot check by their name: the caller still validates
    /// what it reads against what it asked for.
    pub async fn read_record(&self, key: &B3Digest) -> Option<Bytes> {
        let data = self.read(Object::Record, key).await?;
        if data.len() >= RECORD_SUM && blake3::hash(&data[RECORD_SUM..]).as_bytes()[..] == data[..RECORD_SUM] {
            return Some(data.slice(RECORD_SUM..));
        }
        self.discard(Object::Record, key, "its checksum does not match").await;
        None
    }

    /// Stores a record under `key` (see [`DiskCache::read_record`]), prefixed with its
    /// BLAKE3 checksum. Never fails, like every store into the cache.
    pub async fn store_record(self: &std::sync::Arc<Self>, key: &B3Digest, record: &[u8]) {
        let mut data = Vec::with_capacity(RECORD_SUM + record.len());
        data.extend_from_slice(blake3::hash(record).as_bytes());
        data.extend_from_slice(record);
        self.store(Object::Record, key, Bytes::from(data)).await;
    }

    /// Drops the record under `key` (the caller found it invalid or outdated).
    pub async fn discard_record(&self, key: &B3Digest, why: &str) {
        self.discard(Object::Record, key, why).await;
    }

    /// Stores an object's (verified) bytes, starting an eviction when that takes the cache
    /// over its bound. Never fails: a cache that cannot store is bypassed (warned once), since
    /// the caller already has the bytes from the far side.
    pub(crate) async fn store(self: &std::sync::Arc<Self>, object: Object, digest: &B3Digest, data: Bytes) {
        if self.writes_off.load(Ordering::Relaxed) {
            return;
        }
        let size = allocated(data.len() as u64);
        let since = self.since_scan.fetch_add(size, Ordering::Relaxed) + size;
        let estimate = self.estimate.fetch_add(size, Ordering::Relaxed) + size;
        // Evictions run beside the reads: a scan of a large cache takes seconds (about 0.1 s
        // per 10,000 files, more with a cold dentry cache), which must not stall the read that
        // happened to cross the bound. Only a cache an eighth over its bound, where eviction
        // fell behind, makes its writers wait for one.
        let wait = estimate > self.bound + self.bound / 8;
        if !wait && (estimate > self.bound || since > self.bound / 8) {
            self.evict_in_background();
        }
        let this = self.clone();
        let digest = *digest;
        let result = tokio::task::spawn_blocking(move || {
            if wait {
                this.evict_blocking()?;
                // The scan ran before this file is written: it is counted again.
                this.estimate.fetch_add(size, Ordering::Relaxed);
                this.since_scan.fetch_add(size, Ordering::Relaxed);
            }
            write_renamed(&this.root, &this.path(object, &digest), &data)
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.stop_writes(&e),
            Err(e) => self.stop_writes(&std::io::Error::other(e.to_string())),
        }
    }

    /// Stops storing after a failure: hits are still served, misses go to the far side.
    fn stop_writes(&self, error: &std::io::Error) {
        if !self.writes_off.swap(true, Ordering::Relaxed) {
            tracing::warn!(dir = %self.root.display(), error = %error,
                "disk cache: cannot store into the cache; reading from the far store without caching from now on");
        }
    }

    /// Starts an eviction on the blocking pool unless one of ours is queued or running.
    fn evict_in_background(self: &std::sync::Arc<Self>) {
        if self.eviction_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let result = this.evict_blocking();
            this.eviction_queued.store(false, Ordering::Release);
            // A cache that cannot be evicted cannot be kept to its bound: stop filling it.
            if let Err(e) = result {
                this.stop_writes(&e);
            }
        });
    }

    /// Scans the cache and, when it is over its bound, removes the least recently used files
    /// until it is at 90% of it. Waits for an eviction this or another process runs.
    pub fn evict_now(&self) -> std::io::Result<Eviction> {
        self.evict_blocking()
    }

    fn evict_blocking(&self) -> std::io::Result<Eviction> {
        let _evicting = self.evicting.lock();
        let stored_before = self.since_scan.load(Ordering::Relaxed);
        let report = evict::run(&self.root, self.bound)?;
        // What was stored during the scan may or may not have been seen by it: counted, so the
        // estimate errs towards the next scan coming early.
        let stored_during = self.since_scan.load(Ordering::Relaxed).saturating_sub(stored_before);
        self.estimate.store(report.remaining + stored_during, Ordering::Relaxed);
        self.since_scan.store(stored_during, Ordering::Relaxed);
        if report.removed_files > 0 {
            metrics::counter!("tvix_disk_cache_evicted_bytes_total").increment(report.removed_bytes);
            tracing::debug!(dir = %self.root.display(), ?report, "disk cache: evicted");
        }
        Ok(report)
    }
}

/// Counts a cache file read by kind and outcome (`hit`, `miss`, `corrupt`), for `--metrics-listen`.
fn count(object: Object, outcome: &'static str) {
    metrics::counter!("tvix_disk_cache_reads_total", "kind" => object.label(), "outcome" => outcome).increment(1);
}

/// What a file of `len` bytes takes on disk: whole 4 KiB blocks. Counting bytes alone would let
/// a cache of small files (most of a store's) take several times its bound.
fn allocated(len: u64) -> u64 {
    len.div_ceil(4096).max(1) * 4096
}

/// Reads a file, refreshing its mtime if it is older than `touch_after`.
fn read_touching(path: &Path, touch_after: Duration) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut data)?;
    let now = SystemTime::now();
    let stale = meta.modified().map(|m| now.duration_since(m).unwrap_or_default() >= touch_after).unwrap_or(true);
    if stale {
        // Losing a refresh only moves the file earlier in the eviction order.
        let _ = file.set_modified(now);
    }
    Ok(data)
}

/// Distinguishes this process's temporary files from each other.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `data` to a temporary file in `root/tmp` and renames it to `target`, creating the
/// fan-out directory on first use. Nothing is fsynced: a file torn by a power loss is caught by
/// the verification on read.
fn write_renamed(root: &Path, target: &Path, data: &[u8]) -> std::io::Result<()> {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = root.join("tmp").join(format!("{name}.{}.{n}.tmp", std::process::id()));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(mut file) => {
                use std::io::Write;
                if let Err(e) = file.write_all(data) {
                    let _ = std::fs::remove_file(&temp);
                    return Err(e);
                }
                break temp;
            }
            // A leftover of a crashed process that had our pid.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    };
    let renamed = match std::fs::rename(&temp, target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(&temp, target)
        }
        other => other,
    };
    if renamed.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    renamed
}

/// Parses a size bound: bytes, or a number with a binary unit `K`, `M`, `G`, `T` (optionally
/// followed by `iB` or `B`): `10G`, `512MiB`, `1048576`.
pub fn parse_size(given: &str) -> Result<u64, DiskCacheError> {
    let bad = |reason: &str| DiskCacheError::Size { given: given.to_string(), reason: reason.to_string() };
    let text = given.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad("expected a number of bytes, e.g. 10G or 536870912"))?;
    let shift = match unit.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad("unknown unit (use K, M, G or T)")),
    };
    let size = number.checked_mul(1 << shift).ok_or_else(|| bad("too large"))?;
    if size == 0 {
        return Err(bad("must be more than zero"));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        for bad in ["", "G", "10X", "0", "-1", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }
}
