//! Directories in redb, keyed by their BLAKE3 digest, stored as their canonical encoding.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{ReadableDatabase, TableDefinition};

use super::{OpenRedbError, blocking, open_database, storage_err};
use crate::castore::directoryservice::DirectoryStore;
use crate::castore::{B3Digest, Directory, Error};

const DIRECTORIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("directories");

/// Directory storage in a redb file.
pub struct RedbDirectoryStore {
    db: Arc<redb::Database>,
    name: Arc<str>,
}

impl RedbDirectoryStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, OpenRedbError> {
        let db = open_database(path, |txn| txn.open_table(DIRECTORIES).map(drop))?;
        Ok(Self { db, name: path.display().to_string().into() })
    }
}

#[async_trait]
impl DirectoryStore for RedbDirectoryStore {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        let (db, name, digest) = (self.db.clone(), self.name.clone(), *digest);
        blocking(move || {
            let err = storage_err(&name);
            let txn = db.begin_read().map_err(|e| err(e.into()))?;
            let table = txn.open_table(DIRECTORIES).map_err(|e| err(e.into()))?;
            let Some(bytes) = table.get(digest.as_bytes().as_slice()).map_err(|e| err(e.into()))? else {
                return Ok(None);
            };
            let directory = Directory::decode(bytes.value())?;
            // A flipped bit on disk must not be served as if it were the requested directory.
            if directory.digest() != digest {
                return Err(Error::Corrupt(format!("directory {digest} in {name} has digest {}", directory.digest())));
            }
            Ok(Some(directory))
        })
        .await
    }

    async fn insert_batch(&self, directories: Vec<(B3Digest, Directory)>) -> Result<(), Error> {
        let (db, name) = (self.db.clone(), self.name.clone());
        blocking(move || {
            let err = storage_err(&name);
            let txn = db.begin_write().map_err(|e| err(e.into()))?;
            {
                let mut table = txn.open_table(DIRECTORIES).map_err(|e| err(e.into()))?;
                for (digest, directory) in &directories {
                    table
                        .insert(digest.as_bytes().as_slice(), directory.encode().as_slice())
                        .map_err(|e| err(e.into()))?;
                }
            }
            txn.commit().map_err(|e| err(e.into()))
        })
        .await
    }
}
