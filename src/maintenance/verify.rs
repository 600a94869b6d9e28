//! `verify`: checks that each PathInfo's tree is complete and intact, reporting every problem
//! with the store path, the digest and what is wrong, and going on to the next.

use std::collections::HashSet;

use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::MaintenanceError;
use super::walk::{FileRef, walk};
use crate::castore::B3Digest;
use crate::pathinfo::PathInfo;
use crate::store::Store;
use crate::storepath::{DIGEST_LEN, StorePath};

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only these paths (all when empty).
    pub paths: Vec<StorePath>,
    /// Re-hash every blob's bytes (each chunk is checked against its digest as it is read, and
    /// the whole against the blob's digest).
    pub contents: bool,
    /// Recompute each path's NAR hash and size and compare them with its PathInfo.
    pub nar: bool,
}

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The store path it was found under (absolute), or empty when it is about the PathInfo
    /// listing itself.
    pub store_path: String,
    /// The digest of the object at fault (`b3:…`, or a store path hash), if there is one.
    pub digest: Option<String>,
    /// What is wrong, in one line.
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.store_path.is_empty() { "(store)" } else { &self.store_path };
        match &self.digest {
            Some(digest) => write!(f, "{path}: {digest}: {}", self.what),
            None => write!(f, "{path}: {}", self.what),
        }
    }
}

/// What `verify` reports as it goes.
#[derive(Debug, Clone)]
pub enum VerifyEvent {
    /// A problem was found.
    Problem(Problem),
    /// A path was checked: `done` of `total` (0 while the total is not known).
    Progress {
        /// Paths checked so far.
        done: u64,
        /// Paths to check, once known.
        total: u64,
    },
}

/// Totals of a finished verification.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifySummary {
    /// Paths checked.
    pub paths: u64,
    /// Distinct directories checked.
    pub directories: u64,
    /// Distinct blobs checked.
    pub blobs: u64,
    /// Bytes re-hashed (with `contents`).
    pub bytes_hashed: u64,
    /// Problems found.
    pub problems: u64,
}

/// Blobs checked at once: a remote store answers each lookup in a round trip, so they overlap.
const BLOBS_IN_FLIGHT: usize = 16;

/// Checks the store (or `options.paths`), calling `report` for each problem and each path
/// done. Fails only when the store cannot be read at all; everything else is a problem.
pub async fn verify(
    store: &Store,
    options: &VerifyOptions,
    report: &(dyn Fn(VerifyEvent) + Send + Sync),
) -> Result<VerifySummary, MaintenanceError> {
    let mut summary = VerifySummary::default();
    let problem = |summary: &mut VerifySummary, store_path: &str, digest: Option<String>, what: String| {
        summary.problems += 1;
        report(VerifyEvent::Problem(Problem { store_path: store_path.to_string(), digest, what }));
    };
    let infos =
        collect_infos(store, options, &mut |store_path, digest, what| problem(&mut summary, store_path, digest, what))
            .await?;
    let total = infos.len() as u64;
    report(VerifyEvent::Progress { done: 0, total });
    let known: HashSet<[u8; DIGEST_LEN]> = infos.iter().map(|info| *info.store_path.digest()).collect();
    let mut seen_directories = HashSet::new();
    // Blobs shared by several files or paths are checked (and reported) once.
    let mut checked_blobs: HashSet<B3Digest> = HashSet::new();
    for info in &infos {
        let path = info.store_path.to_absolute_path();
        let problems_before = summary.problems;
        for reference in &info.references {
            if !known.contains(reference.digest()) && store.path_info.get(*reference.digest()).await?.is_none() {
                let what = format!("refers to {}, which is not in the store", reference.to_absolute_path());
                problem(&mut summary, &path, Some(reference.to_basename()), what);
            }
        }
        let tree = match walk(store.directory.as_ref(), &info.node, &mut seen_directories).await {
            Ok(tree) => tree,
            Err(e) => {
                let root = match &info.node {
                    crate::castore::Node::Directory { digest, .. } => Some(digest.to_string()),
                    _ => None,
                };
                problem(&mut summary, &path, root, format!("directory tree is incomplete or invalid: {e}"));
                summary.paths += 1;
                report(VerifyEvent::Progress { done: summary.paths, total });
                continue;
            }
        };
        summary.directories += tree.directories.len() as u64;
        let unchecked: Vec<FileRef> = tree.files.into_iter().filter(|f| checked_blobs.insert(f.digest)).collect();
        let contents = options.contents;
        let mut checks = futures::stream::iter(unchecked.into_iter().map(|file| async move {
            let result = check_blob(store, &file, contents).await;
            (file, result)
        }))
        .buffer_unordered(BLOBS_IN_FLIGHT);
        while let Some((file, result)) = checks.next().await {
            summary.blobs += 1;
            match result {
                Ok(hashed) => summary.bytes_hashed += hashed,
                Err(what) => {
                    let at = if file.path.is_empty() { path.clone() } else { format!("{path}{}", file.path) };
                    problem(&mut summary, &at, Some(file.digest.to_string()), what);
                }
            }
        }
        // A path whose blobs are already known to be wrong would only fail to render again.
        if options.nar && summary.problems == problems_before {
            match nar_of(store, &info.node).await {
                Ok((size, sha256)) if size == info.nar_size && sha256 == info.nar_sha256 => {}
                Ok((size, sha256)) => {
                    let what = format!(
                        "NAR is {size} bytes with sha256:{}, the PathInfo says {} bytes with sha256:{}",
                        crate::storepath::nixbase32::encode(&sha256),
                        info.nar_size,
                        crate::storepath::nixbase32::encode(&info.nar_sha256),
                    );
                    problem(&mut summary, &path, None, what);
                }
                Err(e) => problem(&mut summary, &path, None, format!("cannot render its NAR: {e}")),
            }
        }
        summary.paths += 1;
        report(VerifyEvent::Progress { done: summary.paths, total });
    }
    Ok(summary)
}

/// The PathInfos to check: the named ones (an unknown one is a problem), or every stored one
/// (a PathInfo that cannot be decoded is a problem).
async fn collect_infos(
    store: &Store,
    options: &VerifyOptions,
    problem: &mut (dyn FnMut(&str, Option<String>, String) + Send),
) -> Result<Vec<PathInfo>, MaintenanceError> {
    let mut infos = Vec::new();
    if options.paths.is_empty() {
        let mut all = store.path_info.list();
        while let Some(info) = all.next().await {
            match info {
                Ok(info) => infos.push(info),
                Err(e @ crate::castore::Error::Corrupt(_)) => problem("", None, format!("unreadable PathInfo: {e}")),
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(infos);
    }
    for path in &options.paths {
        match store.path_info.get(*path.digest()).await {
            Ok(Some(info)) => infos.push(info),
            Ok(None) => problem(&path.to_absolute_path(), None, "not in the store".into()),
            Err(e @ crate::castore::Error::Corrupt(_)) => {
                problem(&path.to_absolute_path(), None, format!("unreadable PathInfo: {e}"))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(infos)
}

/// Checks one file's blob: stored, of the size its entry states, every chunk present; with
/// `contents`, its bytes read back and hashed. `Ok` holds the bytes hashed.
async fn check_blob(store: &Store, file: &FileRef, contents: bool) -> Result<u64, String> {
    let chunks = match store.blob.chunks(&file.digest).await {
        Ok(Some(chunks)) => chunks,
        Ok(None) => return Err(format!("blob is missing ({} bytes)", file.size)),
        Err(e) => return Err(format!("cannot look up the blob: {e}")),
    };
    let stored: u64 = chunks.iter().map(|c| c.size).sum();
    if !chunks.is_empty() && stored != file.size {
        return Err(format!("blob is {stored} bytes, its directory entry says {}", file.size));
    }
    if chunks.len() > 1 {
        for chunk in &chunks {
            match store.blob.has(&chunk.digest).await {
                Ok(true) => {}
                Ok(false) => return Err(format!("chunk {} of the blob is missing", chunk.digest)),
                Err(e) => return Err(format!("cannot look up chunk {}: {e}", chunk.digest)),
            }
        }
    }
    if !contents {
        return Ok(0);
    }
    let mut reader = match store.blob.open_read(&file.digest).await {
        Ok(Some(reader)) => reader,
        Ok(None) => return Err("blob vanished while being checked".into()),
        Err(e) => return Err(format!("cannot read the blob: {e}")),
    };
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).await.map_err(|e| format!("reading the blob failed: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let actual = B3Digest::of_hasher(&hasher);
    if actual != file.digest {
        return Err(format!("blob content hashes to {actual} ({total} bytes)"));
    }
    if total != file.size {
        return Err(format!("blob is {total} bytes, its directory entry says {}", file.size));
    }
    Ok(total)
}

/// NAR size and SHA-256 of `root`, rendered from the store.
async fn nar_of(store: &Store, root: &crate::castore::Node) -> Result<(u64, [u8; 32]), crate::castore::Error> {
    let hasher =
        crate::nar::write_nar(crate::nar::NarHasher::new(), root, store.blob.as_ref(), store.directory.as_ref())
            .await?;
    Ok(hasher.finalize())
}
