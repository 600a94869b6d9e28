//! DirectoryService: stores and serves Directory messages addressed by their BLAKE3 digest.

mod cache;
mod graph;
mod memory;
mod objectstore;
mod stored;

use async_trait::async_trait;
use futures::stream::BoxStream;

pub use cache::CacheDirectoryService;
pub use graph::GraphBuilder;
pub use memory::MemoryDirectoryStore;
pub use objectstore::ObjectStoreDirectoryStore;
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
