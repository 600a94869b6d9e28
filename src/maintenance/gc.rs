//! Garbage collection: everything reachable from a PathInfo (its root node's directories,
//! blobs, chunk lists and chunks) is live; every other object last written before the grace
//! period began is removed.
//!
//! Safe beside imports into the same store: an import writes (or touches) everything it uses
//! before its PathInfo, and removal spares what was written within the grace period (see
//! [`crate::castore::inventory`]), so only an import running longer than the grace period can
//! lose objects to a collection. Crash-safe: removal goes top-down (directories, then chunk
//! lists, then chunks), and nothing live is ever removed, so a collection stopped at any point
//! leaves a store that `verify` accepts.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use futures::StreamExt;

use super::walk::walk;
use super::{Backends, MaintenanceError};
use crate::castore::blobservice::ChunkObject;
use crate::castore::inventory::Removal;
use crate::castore::{B3Digest, Node};
use crate::store::Store;

/// How to collect.
#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    /// Only count what would be removed.
    pub dry_run: bool,
    /// Objects written this recently before the collection started are kept even when nothing
    /// refers to them: they may belong to an import whose PathInfo is not written yet.
    pub grace: Duration,
}

/// One kind of object, after a collection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Objects found live.
    pub live: u64,
    /// Objects removed (or, on a dry run, that would be).
    pub removed: u64,
    /// Their bytes.
    pub removed_bytes: u64,
    /// Unreferenced objects kept because they were written within the grace period.
    pub recent: u64,
}

/// What a collection did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// PathInfos that kept things alive.
    pub paths: u64,
    /// Directories.
    pub directories: Swept,
    /// Chunk lists of multi-chunk blobs.
    pub chunk_lists: Swept,
    /// Chunks.
    pub chunks: Swept,
    /// Leftovers of interrupted writes (temporary files) removed.
    pub leftovers: u64,
    /// Their bytes.
    pub leftover_bytes: u64,
}

impl GcReport {
    /// Objects removed, of every kind.
    pub fn removed(&self) -> u64 {
        self.directories.removed + self.chunk_lists.removed + self.chunks.removed + self.leftovers
    }

    /// Bytes removed, of every kind.
    pub fn removed_bytes(&self) -> u64 {
        self.directories.removed_bytes
            + self.chunk_lists.removed_bytes
            + self.chunks.removed_bytes
            + self.leftover_bytes
    }
}

/// Everything the PathInfos keep alive.
#[derive(Default)]
struct LiveSet {
    paths: u64,
    directories: HashSet<B3Digest>,
    chunk_lists: HashSet<B3Digest>,
    chunks: HashSet<B3Digest>,
}

/// Blobs whose chunks are looked up at once while marking.
const LOOKUPS_IN_FLIGHT: usize = 16;

/// Collects garbage in `backends`, the backends beneath `store`'s services.
pub async fn collect_garbage(
    store: &Store,
    backends: &Backends,
    options: GcOptions,
) -> Result<GcReport, MaintenanceError> {
    let started = SystemTime::now();
    let cutoff = started.checked_sub(options.grace).unwrap_or(SystemTime::UNIX_EPOCH);
    let live = mark(store).await?;
    let mut report = GcReport { paths: live.paths, ..GcReport::default() };
    let sweep = |kind, live| sweep(backends, kind, live, options.dry_run, cutoff);
    // Top-down, so what a stopped collection leaves never has a directory without its blobs.
    report.directories = sweep(SweepKind::Directory, &live.directories).await?;
    report.chunk_lists = sweep(SweepKind::Chunks(ChunkObject::ChunkList), &live.chunk_lists).await?;
    report.chunks = sweep(SweepKind::Chunks(ChunkObject::Chunk), &live.chunks).await?;
    if !options.dry_run {
        let leftovers = backends.chunks.remove_leftovers(cutoff).await?;
        report.leftovers = leftovers.count;
        report.leftover_bytes = leftovers.bytes;
    }
    Ok(report)
}

/// The live set: every PathInfo's closure. A PathInfo whose closure cannot be read stops the
/// collection (what is below a missing directory cannot be known, so nothing may be removed).
async fn mark(store: &Store) -> Result<LiveSet, MaintenanceError> {
    let mut live = LiveSet::default();
    let mut blobs: Vec<(String, B3Digest)> = Vec::new();
    let mut seen_blobs = HashSet::new();
    let mut infos = store.path_info.list();
    while let Some(info) = infos.next().await {
        let info = info?;
        live.paths += 1;
        let path = info.store_path.to_absolute_path();
        let tree = walk(store.directory.as_ref(), &info.node, &mut live.directories).await.map_err(|e| {
            let digest = match &info.node {
                Node::Directory { digest, .. } => *digest,
                _ => B3Digest::of(b""),
            };
            MaintenanceError::Broken { path: path.clone(), digest, reason: e.to_string() }
        })?;
        for file in tree.files {
            if seen_blobs.insert(file.digest) {
                blobs.push((path.clone(), file.digest));
            }
        }
    }
    let mut lookups = futures::stream::iter(
        blobs.into_iter().map(|(path, digest)| async move { (path, digest, store.blob.chunks(&digest).await) }),
    )
    .buffer_unordered(LOOKUPS_IN_FLIGHT);
    while let Some((path, digest, chunks)) = lookups.next().await {
        let broken = |reason: String| MaintenanceError::Broken { path: path.clone(), digest, reason };
        match chunks {
            Ok(Some(chunks)) if chunks.len() == 1 && chunks[0].digest == digest => {
                live.chunks.insert(digest);
            }
            Ok(Some(chunks)) if !chunks.is_empty() => {
                live.chunk_lists.insert(digest);
                live.chunks.extend(chunks.iter().map(|c| c.digest));
            }
            Ok(Some(_)) => return Err(broken("the blob service does not list its chunks".into())),
            Ok(None) => return Err(broken("the blob is missing".into())),
            Err(e) => return Err(broken(e.to_string())),
        }
    }
    Ok(live)
}

/// Which objects a sweep goes through.
#[derive(Clone, Copy)]
enum SweepKind {
    /// Directories.
    Directory,
    /// Chunks or chunk lists.
    Chunks(ChunkObject),
}

/// Removes the objects of `kind` that are not `live` and were not written at or after `cutoff`.
async fn sweep(
    backends: &Backends,
    kind: SweepKind,
    live: &HashSet<B3Digest>,
    dry_run: bool,
    cutoff: SystemTime,
) -> Result<Swept, MaintenanceError> {
    let mut listed = match kind {
        SweepKind::Directory => backends.directories.list(),
        SweepKind::Chunks(object) => backends.chunks.list(object),
    };
    let mut swept = Swept::default();
    while let Some(stored) = listed.next().await {
        let stored = stored?;
        if live.contains(&stored.digest) {
            swept.live += 1;
            continue;
        }
        if stored.written >= cutoff {
            swept.recent += 1;
            continue;
        }
        if dry_run {
            swept.removed += 1;
            swept.removed_bytes += stored.size;
            continue;
        }
        let removal = match kind {
            SweepKind::Directory => backends.directories.remove(&stored.digest, cutoff).await?,
            SweepKind::Chunks(object) => backends.chunks.remove(object, &stored.digest, cutoff).await?,
        };
        match removal {
            Removal::Removed(size) => {
                swept.removed += 1;
                swept.removed_bytes += size;
            }
            Removal::Recent => swept.recent += 1,
            Removal::Absent => {}
        }
    }
    Ok(swept)
}
