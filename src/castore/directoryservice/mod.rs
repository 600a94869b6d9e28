//! DirectoryService: stores and serves Directory messages addressed by their BLAKE3 digest.

mod graph;
mod memory;
mod stored;

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

pub use graph::GraphBuilder;
pub use memory::MemoryDirectoryStore;
pub use stored::{DirectoryStore, StoredDirectoryService};

use super::{B3Digest, Directory, Error};

/// Stores and serves directories.
#[async_trait]
pub trait DirectoryService: Send + Sync {
    /// The directory with this digest; `None` when absent.
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error>;

    /// The directory and everything below it: root first, and each directory only after one
    /// already yielded referred to it; each digest once. Fails with NotFound if the root or any
    /// directory below it is missing.
    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'_, Result<Directory, Error>>;

    /// Starts a leaves-first upload of a directory graph. Nothing becomes visible until
    /// [`DirectoryPutter::close`] has validated the whole graph.
    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_>;

    /// Stores one directory whose children are already stored.
    async fn put(&self, directory: Directory) -> Result<B3Digest, Error> {
        let mut putter = self.put_multiple_start();
        putter.put(directory).await?;
        putter.close().await
    }
}

/// Receives a directory graph, leaves first and root last.
#[async_trait]
pub trait DirectoryPutter: Send {
    /// Adds the next directory; it may only refer to directories added before it (or already
    /// stored).
    async fn put(&mut self, directory: Directory) -> Result<(), Error>;

    /// Validates and stores the graph; returns the root's digest (the last directory added).
    async fn close(&mut self) -> Result<B3Digest, Error>;
}

/// Builds a DirectoryService from its URL: `memory://`, `redb:///path/to/file.redb`,
/// `grpc+unix:///path/to/socket`, `grpc+http://host:port`.
pub async fn from_addr(addr: &str) -> Result<Arc<dyn DirectoryService>, crate::url::AddrError> {
    let url = crate::url::parse(addr)?;
    match url.scheme() {
        "memory" => Ok(Arc::new(StoredDirectoryService::new(MemoryDirectoryStore::default()))),
        "grpc+unix" | "grpc+http" => Ok(Arc::new(crate::grpc::GrpcDirectoryService::new(crate::grpc::channel(addr)?))),
        "redb" => {
            let store = crate::redb::RedbDirectoryStore::open(&crate::url::local_path(&url)?)
                .map_err(|e| crate::url::AddrError::Open(addr.to_string(), e.to_string()))?;
            Ok(Arc::new(StoredDirectoryService::new(store)))
        }
        other => Err(crate::url::AddrError::UnsupportedScheme(other.to_string(), "directory")),
    }
}
