//! Eviction: a scan of every object file's size and mtime, then removal of the least recently
//! used until the cache is at 90% of its bound.
//!
//! The order is an LRU approximation by mtime (a hit refreshes it, at most once per
//! [`super::TOUCH_AFTER`]), chosen over an index of use times because the cache is shared by
//! processes that keep no common state but the files: the file system's own metadata is the
//! only record every process sees, survives crashes and needs no lock while reading. Scans are
//! serialised across processes by an advisory `flock` on `evict.lock`, held for one scan only;
//! removing a file another process is reading is safe (its open descriptor keeps the data;
//! a later open gets ENOENT, a miss).

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::Object;

/// Eviction stops at this share of the bound, so the next one is due only after a tenth of the
/// cache has been filled again, not at every store.
const LOW_WATER_PERCENT: u64 = 90;

/// Temporary files older than this are leftovers of a crashed writer (a live one renames its
/// file within milliseconds) and are removed by the scan.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// What one eviction found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Eviction {
    /// Bytes (allocated on disk) the cache's files took when scanned.
    pub scanned: u64,
    /// Files removed.
    pub removed_files: u64,
    /// Bytes those took.
    pub removed_bytes: u64,
    /// Bytes left.
    pub remaining: u64,
}

/// Scans the cache in `root` and evicts down to [`LOW_WATER_PERCENT`] of `bound` if it is over
/// `bound`.
pub(super) fn run(root: &Path, bound: u64) -> std::io::Result<Eviction> {
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(root.join("evict.lock"))?;
    // SAFETY: the descriptor is valid while `lock` lives; flock only takes an advisory lock,
    // released when `lock` is closed at the end of this function.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut files = scan(root)?;
    let scanned: u64 = files.iter().map(|f| f.size).sum();
    let mut report = Eviction { scanned, remaining: scanned, ..Eviction::default() };
    if scanned <= bound {
        return Ok(report);
    }
    let target = bound / 100 * LOW_WATER_PERCENT;
    files.sort_unstable_by_key(|f| f.used);
    for file in files {
        if report.remaining <= target {
            break;
        }
        match std::fs::remove_file(&file.path) {
            Ok(()) => {}
            // Removed meanwhile by a process not evicting (a corrupt file dropped).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        report.removed_files += 1;
        report.removed_bytes += file.size;
        report.remaining -= file.size;
    }
    Ok(report)
}

/// One object file.
struct Found {
    path: PathBuf,
    size: u64,
    used: SystemTime,
}

/// Every object file below `root` (and stale temporary files removed on the way).
fn scan(root: &Path) -> std::io::Result<Vec<Found>> {
    let mut files = Vec::new();
    for object in Object::ALL {
        let top = root.join(object.dir());
        for fan_out in read_dir_or_empty(&top)? {
            let fan_out = fan_out?;
            if !fan_out.file_type()?.is_dir() {
                continue;
            }
            for entry in read_dir_or_empty(&fan_out.path())? {
                let entry = entry?;
                // Only names we write (64 hex digits) are ever removed.
                let name = entry.file_name();
                let ours = name.len() == 64 && name.to_string_lossy().bytes().all(|b| b.is_ascii_hexdigit());
                let Ok(meta) = entry.metadata() else { continue };
                if !ours || !meta.is_file() {
                    continue;
                }
                files.push(Found {
                    path: entry.path(),
                    size: meta.blocks() * 512,
                    used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
    }
    let now = SystemTime::now();
    for entry in read_dir_or_empty(&root.join("tmp"))? {
        let entry = entry?;
        let Ok(meta) = entry.metadata() else { continue };
        let old = meta.modified().map(|m| now.duration_since(m).unwrap_or_default() > STALE_TEMP).unwrap_or(false);
        if old && entry.file_name().to_string_lossy().ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(files)
}

/// The entries of `dir`; none when it does not exist (yet, or removed by hand).
fn read_dir_or_empty(dir: &Path) -> std::io::Result<Box<dyn Iterator<Item = std::io::Result<std::fs::DirEntry>>>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(Box::new(entries)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Box::new(std::iter::empty())),
        Err(e) => Err(e),
    }
}
