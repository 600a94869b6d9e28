//! `memory://`: directories in process memory.

use std::collections::HashMap;
use std::time::SystemTime;

use async_trait::async_trait;
use parking_lot::RwLock;

use super::DirectoryStore;
use crate::castore::inventory::{Removal, Stored, StoredStream};
use crate::castore::{B3Digest, Directory, Error};

/// Directory storage in memory; gone when the process exits.
#[derive(Default)]
pub struct MemoryDirectoryStore {
    directories: RwLock<HashMap<B3Digest, (Directory, SystemTime)>>,
}

#[async_trait]
impl DirectoryStore for MemoryDirectoryStore {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        Ok(self.directories.read().get(digest).map(|(directory, _)| directory.clone()))
    }

    async fn insert_batch(&self, directories: Vec<(B3Digest, Directory)>) -> Result<(), Error> {
        let now = SystemTime::now();
        self.directories.write().extend(directories.into_iter().map(|(digest, directory)| (digest, (directory, now))));
        Ok(())
    }

    fn list(&self) -> StoredStream<'_> {
        let all: Vec<_> = self
            .directories
            .read()
            .iter()
            .map(|(digest, (directory, written))| {
                Ok(Stored { digest: *digest, size: directory.encode().len() as u64, written: *written })
            })
            .collect();
        Box::pin(futures::stream::iter(all))
    }

    async fn remove(&self, digest: &B3Digest, cutoff: SystemTime) -> Result<Removal, Error> {
        let mut directories = self.directories.write();
        Ok(match directories.get(digest) {
            None => Removal::Absent,
            Some((_, written)) if *written >= cutoff => Removal::Recent,
            Some(_) => match directories.remove(digest) {
                Some((directory, _)) => Removal::Removed(directory.encode().len() as u64),
                None => Removal::Absent,
            },
        })
    }
}
