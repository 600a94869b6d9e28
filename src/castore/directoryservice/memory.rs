//! `memory://`: directories in process memory.

use std::collections::HashMap;

use async_trait::async_trait;
use parking_lot::RwLock;

use super::DirectoryStore;
use crate::castore::{B3Digest, Directory, Error};

/// Directory storage in memory; gone when the process exits.
#[derive(Default)]
pub struct MemoryDirectoryStore {
    directories: RwLock<HashMap<B3Digest, Directory>>,
}

#[async_trait]
impl DirectoryStore for MemoryDirectoryStore {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        Ok(self.directories.read().get(digest).cloned())
    }

    async fn insert_batch(&self, directories: Vec<(B3Digest, Directory)>) -> Result<(), Error> {
        self.directories.write().extend(directories);
        Ok(())
    }
}
