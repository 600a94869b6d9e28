//! Integrity and lifecycle of a store: `verify` (is everything a PathInfo needs there and
//! intact), `delete` (remove PathInfos no other path refers to) and garbage collection (remove
//! what no PathInfo keeps alive). See docs/gc.md.
//!
//! `verify` needs only the three services; `delete` and garbage collection also need the
//! backends underneath ([`Backends`]), which only a store's owner has: through a daemon they run
//! on the daemon's side (the `tvix_store.admin.v1` extension service).

mod delete;
mod gc;
mod verify;
mod walk;
pub mod wire;

use std::sync::Arc;

pub use delete::{DeleteOptions, delete};
pub use gc::{GcOptions, GcReport, Swept, collect_garbage};
pub use verify::{Problem, VerifyEvent, VerifyOptions, VerifySummary, verify};

use crate::castore::blobservice::ChunkStore;
use crate::castore::directoryservice::DirectoryStore;
use crate::castore::{B3Digest, Error};
use crate::pathinfo::PathInfoRemoval;
use crate::storepath::StorePath;

/// The backends that hold a store's data, beneath its services: what `delete` and garbage
/// collection remove from. Only the composition layer builds them, and only for a store whose
/// three services are each one backend of their own (no cache or remote in between).
#[derive(Clone)]
pub struct Backends {
    /// Chunks and chunk lists, beneath the blob service.
    pub chunks: Arc<dyn ChunkStore>,
    /// Directories, beneath the directory service.
    pub directories: Arc<dyn DirectoryStore>,
    /// PathInfos, the same backend as the path-info service.
    pub path_infos: Arc<dyn PathInfoRemoval>,
}

/// Why a maintenance operation failed as a whole (problems `verify` finds are not errors: it
/// reports them and goes on).
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
    /// A store path that the store does not have.
    #[error("{0} is not in the store")]
    Unknown(StorePath),
    /// A delete that would leave other paths referring to a removed one.
    #[error("cannot delete {path}: still referenced by {} (--ignore-liveness deletes it anyway)", by.join(", "))]
    Referenced {
        /// The path asked to delete.
        path: String,
        /// The paths referring to it.
        by: Vec<String>,
    },
    /// The daemon running the operation refused or failed it; its message.
    #[error("{0}")]
    Remote(String),
    /// Garbage collection found a PathInfo that refers to something missing or corrupt, so it
    /// cannot tell what is live below it; it removes nothing.
    #[error(
        "garbage collection refused: {path} refers to {digest}, which cannot be read ({reason}); nothing was removed (run `tvix-store verify`)"
    )]
    Broken {
        /// The store path.
        path: String,
        /// The missing or unreadable object.
        digest: B3Digest,
        /// What reading it said.
        reason: String,
    },
}
