//! [`NarCalculator`]: NAR size and SHA-256 of stored trees, cached per root node.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{NarHasher, write_nar};
use crate::castore::blobservice::BlobService;
use crate::castore::directoryservice::DirectoryService;
use crate::castore::{Error, Node};
use crate::pathinfo::NarCalculationService;

/// Roots whose result is remembered; the cache is emptied when full (results are cheap to keep
/// but the set of roots asked about is unbounded).
const CACHE_ENTRIES: usize = 100_000;

/// Computes NAR size and SHA-256 by rendering the NAR into a hashing sink; remembers results
/// per root node (a node names its content by digest, so a result never goes stale).
pub struct NarCalculator {
    blob: Arc<dyn BlobService>,
    directory: Arc<dyn DirectoryService>,
    cache: Mutex<HashMap<Node, (u64, [u8; 32])>>,
}

impl NarCalculator {
    /// A calculator reading from these services.
    pub fn new(blob: Arc<dyn BlobService>, directory: Arc<dyn DirectoryService>) -> Self {
        Self { blob, directory, cache: Mutex::new(HashMap::new()) }
    }
}

#[async_trait]
impl NarCalculationService for NarCalculator {
    async fn calculate_nar(&self, root: &Node) -> Result<(u64, [u8; 32]), Error> {
        if let Some(hit) = self.cache.lock().get(root) {
            return Ok(*hit);
        }
        let hasher = write_nar(NarHasher::new(), root, self.blob.as_ref(), self.directory.as_ref()).await?;
        let result = hasher.finalize();
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(root.clone(), result);
        Ok(result)
    }
}
