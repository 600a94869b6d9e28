//! Ingestion: local paths and NAR streams become castore nodes plus the NAR hash and size,
//! and content-addressed store paths registered in the PathInfoService.

mod admit;
mod closure;
mod entry;
mod error;
mod nar;
mod path;
mod upload;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use admit::{Admission, AdmitError, admit};
pub use closure::{ClosureEntry, ClosureError, copy_closure, parse_closure};
pub use error::ImportError;
pub use nar::ingest_nar;
pub use path::ingest_path;
// Kept here too: callers of ingestion name the path they register with it.
pub use crate::storepath::{compress_hash, source_store_path};
pub use upload::{MAX_BYTES_IN_FLIGHT, MAX_UPLOADS, SMALL_BLOB, Uploader};

use crate::castore::Node;
use crate::pathinfo::{CaKind, ContentAddress, PathInfo};
use crate::store::Store;

/// What ingesting a tree produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// The root node (stored, with everything below it).
    pub node: Node,
    /// Size of the tree's NAR serialisation.
    pub nar_size: u64,
    /// SHA-256 of the tree's NAR serialisation.
    pub nar_sha256: [u8; 32],
}

/// Counters an ingestion bumps as it goes, for a progress display polling them.
#[derive(Debug, Default)]
pub struct Progress {
    bytes: AtomicU64,
    entries: AtomicU64,
}

impl Progress {
    /// File content bytes ingested so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Entries (files, directories, symlinks) ingested so far.
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    pub(crate) fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_entry(&self) {
        self.entries.fetch_add(1, Ordering::Relaxed);
    }
}

/// The store path name `nix-store --add PATH` uses: the last component of PATH as given
/// (one trailing `/` ignored, like Nix's `baseNameOf`).
pub fn name_of(path: &Path) -> Result<String, ImportError> {
    let s = path.as_os_str().as_encoded_bytes();
    let s = s.strip_suffix(b"/").filter(|s| !s.is_empty()).unwrap_or(s);
    let base = s.rsplit(|b| *b == b'/').next().unwrap_or(s);
    let name = String::from_utf8_lossy(base).into_owned();
    crate::storepath::validate_name(&name).map_err(|source| ImportError::Name { path: path.to_path_buf(), source })?;
    Ok(name)
}

/// The PathInfo `nix-store --add` would register for an ingested tree called `name`.
pub fn content_addressed_path_info(
    name: &str,
    ingested: Ingested,
) -> Result<PathInfo, crate::storepath::InvalidStorePath> {
    let store_path = source_store_path(name, &ingested.nar_sha256, &[])?;
    Ok(PathInfo {
        store_path,
        node: ingested.node,
        references: Vec::new(),
        nar_size: ingested.nar_size,
        nar_sha256: ingested.nar_sha256,
        signatures: Vec::new(),
        deriver: None,
        ca: Some(ContentAddress {
            kind: CaKind::NarSha256,
            digest: bytes::Bytes::copy_from_slice(&ingested.nar_sha256),
        }),
    })
}

/// `nix-store --add PATH`: ingests the tree at `path` and registers it under the store path
/// Nix would give it. Nothing is registered if any part fails.
pub async fn import_path(store: &Store, path: &Path, progress: Option<Arc<Progress>>) -> Result<PathInfo, ImportError> {
    // Checked first so a bad name fails before any work is done.
    let name = name_of(path)?;
    let ingested = ingest_path(store.blob.clone(), store.directory.clone(), path, progress).await?;
    let info = content_addressed_path_info(&name, ingested)
        .map_err(|source| ImportError::Name { path: path.to_path_buf(), source })?;
    Ok(store.path_info.put(info).await?)
}
