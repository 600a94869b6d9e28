//! Directories in redb, keyed by their BLAKE3 digest, stored as their canonical encoding.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{OpenRedbError, blocking, entries_after, open_database, paged, storage_err};
use crate::castore::directoryservice::DirectoryStore;
use crate::castore::inventory::{Removal, Stored, StoredStream};
use crate::castore::{B3Digest, Directory, Error};

const DIRECTORIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("directories");
/// When each directory was last inserted (nanoseconds since the Unix epoch), for garbage
/// collection's grace period. Written in the same transaction as the directory; a directory
/// without an entry (stored before this table existed) counts as written at the epoch.
const WRITTEN: TableDefinition<&[u8], u64> = TableDefinition::new("directories_written");

/// Directories read in one transaction by a recursive get.
const DIRECTORIES_PER_READ: usize = 256;

/// Directory storage in a redb file.
pub struct RedbDirectoryStore {
    db: Arc<redb::Database>,
    name: Arc<str>,
}

impl RedbDirectoryStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, OpenRedbError> {
        let db = open_database(path, |txn| {
            txn.open_table(DIRECTORIES)?;
            txn.open_table(WRITTEN).map(drop)
        })?;
        Ok(Self { db, name: path.display().to_string().into() })
    }
}

#[async_trait]
impl DirectoryStore for RedbDirectoryStore {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        self.get_many(std::slice::from_ref(digest)).await.pop().unwrap_or(Ok(None))
    }

    async fn get_many(&self, digests: &[B3Digest]) -> Vec<Result<Option<Directory>, Error>> {
        let (db, name, digests) = (self.db.clone(), self.name.clone(), digests.to_vec());
        let count = digests.len();
        let read = blocking(move || {
            let err = storage_err(&name);
            let txn = db.begin_read().map_err(|e| err(e.into()))?;
            let table = txn.open_table(DIRECTORIES).map_err(|e| err(e.into()))?;
            Ok(digests
                .iter()
                .map(|digest| {
                    let Some(bytes) = table.get(digest.as_bytes().as_slice()).map_err(|e| err(e.into()))? else {
                        return Ok(None);
                    };
                    let directory = Directory::decode(bytes.value())?;
                    // A flipped bit on disk must not be served as if it were the requested directory.
                    if directory.digest() != *digest {
                        return Err(Error::Corrupt(format!(
                            "directory {digest} in {name} has digest {}",
                            directory.digest()
                        )));
                    }
                    Ok(Some(directory))
                })
                .collect())
        })
        .await;
        read.unwrap_or_else(|e| vec![Err(e); count])
    }

    fn gets_per_call(&self) -> usize {
        // One read transaction and one trip to the blocking pool for a whole level of a tree:
        // those trips, one per directory, were a sixth of a small NAR's CPU time in nar-bridge.
        DIRECTORIES_PER_READ
    }

    async fn insert_batch(&self, directories: Vec<(B3Digest, Directory)>) -> Result<(), Error> {
        let (db, name) = (self.db.clone(), self.name.clone());
        blocking(move || {
            let err = storage_err(&name);
            let txn = db.begin_write().map_err(|e| err(e.into()))?;
            {
                let mut table = txn.open_table(DIRECTORIES).map_err(|e| err(e.into()))?;
                let mut written = txn.open_table(WRITTEN).map_err(|e| err(e.into()))?;
                let now = to_nanos(SystemTime::now());
                for (digest, directory) in &directories {
                    table
                        .insert(digest.as_bytes().as_slice(), directory.encode().as_slice())
                        .map_err(|e| err(e.into()))?;
                    written.insert(digest.as_bytes().as_slice(), now).map_err(|e| err(e.into()))?;
                }
            }
            txn.commit().map_err(|e| err(e.into()))
        })
        .await
    }

    fn list(&self) -> StoredStream<'_> {
        let name = self.name.clone();
        // Paged, so a store of millions of directories is listed in bounded memory.
        paged(self.db.clone(), self.name.clone(), 1024, move |txn, start, page| {
            let err = storage_err(&name);
            let table = txn.open_table(DIRECTORIES).map_err(|e| err(e.into()))?;
            let written = txn.open_table(WRITTEN).map_err(|e| err(e.into()))?;
            let mut entries = Vec::with_capacity(page);
            for entry in entries_after(&table, start).map_err(|e| err(e.into()))?.take(page) {
                let (key, value) = entry.map_err(|e| err(e.into()))?;
                let digest = B3Digest::try_from(key.value()).map_err(|e| {
                    Error::Corrupt(format!(
                        "directory key {} in {name}: {e}",
                        data_encoding::HEXLOWER.encode(key.value())
                    ))
                })?;
                let at = written.get(key.value()).map_err(|e| err(e.into()))?.map_or(0, |t| t.value());
                let stored = Stored { digest, size: value.value().len() as u64, written: from_nanos(at) };
                entries.push((key.value().to_vec(), stored));
            }
            Ok(entries)
        })
    }

    async fn remove(&self, digest: &B3Digest, cutoff: SystemTime) -> Result<Removal, Error> {
        let (db, name, digest) = (self.db.clone(), self.name.clone(), *digest);
        blocking(move || {
            let err = storage_err(&name);
            // One write transaction: inserts are serialised with it, so the write time checked
            // here is the one the removal acts on.
            let txn = db.begin_write().map_err(|e| err(e.into()))?;
            let removal = {
                let mut table = txn.open_table(DIRECTORIES).map_err(|e| err(e.into()))?;
                let mut written = txn.open_table(WRITTEN).map_err(|e| err(e.into()))?;
                let key = digest.as_bytes().as_slice();
                let at = written.get(key).map_err(|e| err(e.into()))?.map_or(0, |t| t.value());
                if from_nanos(at) >= cutoff {
                    Removal::Recent
                } else {
                    written.remove(key).map_err(|e| err(e.into()))?;
                    match table.remove(key).map_err(|e| err(e.into()))? {
                        Some(value) => Removal::Removed(value.value().len() as u64),
                        None => Removal::Absent,
                    }
                }
            };
            txn.commit().map_err(|e| err(e.into()))?;
            Ok(removal)
        })
        .await
    }
}

/// A time as stored in [`WRITTEN`].
fn to_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A time stored in [`WRITTEN`].
fn from_nanos(nanos: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(nanos)
}
