//! [`Store`]: the handle every consumer of a store takes: its blob, directory and path-info
//! services, whatever backends stand behind them.
//!
//! It sits in the core beside the service traits, so that the filesystem, the servers, nar-bridge,
//! import and maintenance depend on the store and never on how it was built: only `compose`
//! turns store URLs into one, together with what the process holds besides (the default store's
//! lock, the backends for maintenance, statistics).

use std::sync::Arc;

use crate::castore::RootNodes;
use crate::castore::blobservice::{BlobService, ChunkedBlobService, MemoryChunkStore};
use crate::castore::directoryservice::{DirectoryService, MemoryDirectoryStore, StoredDirectoryService};
use crate::pathinfo::{MemoryPathInfoService, PathInfoRootNodes, PathInfoService};

/// A store's three services. Cheap to clone: each is shared.
#[derive(Clone)]
pub struct Store {
    /// File contents by BLAKE3 digest.
    pub blob: Arc<dyn BlobService>,
    /// Directories by BLAKE3 digest.
    pub directory: Arc<dyn DirectoryService>,
    /// PathInfo by store path digest.
    pub path_info: Arc<dyn PathInfoService>,
}

impl Store {
    /// A store of these services.
    pub fn new(
        blob: Arc<dyn BlobService>,
        directory: Arc<dyn DirectoryService>,
        path_info: Arc<dyn PathInfoService>,
    ) -> Self {
        Self { blob, directory, path_info }
    }

    /// A new, empty store in this process's memory, gone when the last clone is dropped (for
    /// tests and tools).
    pub fn in_memory() -> Self {
        Self::new(
            Arc::new(ChunkedBlobService::new(MemoryChunkStore::default())),
            Arc::new(StoredDirectoryService::new(MemoryDirectoryStore::default())),
            Arc::new(MemoryPathInfoService::default()),
        )
    }

    /// The store's paths as the entries of a filesystem root (a mount of `/nix/store`), each
    /// by its basename.
    pub fn root_nodes(&self) -> Arc<dyn RootNodes> {
        Arc::new(PathInfoRootNodes::new(self.path_info.clone()))
    }
}
