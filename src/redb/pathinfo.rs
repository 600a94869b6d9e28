//! PathInfo in redb, keyed by the store path's 20-byte digest, stored as the wire message.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use redb::{ReadableDatabase, TableDefinition};

use super::{OpenRedbError, blocking, entries_after, open_database, paged, storage_err};
use crate::castore::Error;
use crate::pathinfo::{PathInfo, PathInfoRemoval, PathInfoService};
use crate::storepath::DIGEST_LEN;

const PATH_INFOS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pathinfos");

/// PathInfo storage in a redb file.
pub struct RedbPathInfoService {
    db: Arc<redb::Database>,
    name: Arc<str>,
}

impl RedbPathInfoService {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, OpenRedbError> {
        let db = open_database(path, |txn| txn.open_table(PATH_INFOS).map(drop))?;
        Ok(Self { db, name: path.display().to_string().into() })
    }
}

fn decode(name: &str, key: &[u8], bytes: &[u8]) -> Result<PathInfo, Error> {
    let corrupt = |why: String| {
        Error::Corrupt(format!("PathInfo under key {} in {name}: {why}", data_encoding::HEXLOWER.encode(key)))
    };
    let digest: &[u8; DIGEST_LEN] =
        key.try_into().map_err(|_| corrupt(format!("the key is not {DIGEST_LEN} bytes")))?;
    PathInfo::decode_stored(bytes, digest).map_err(corrupt)
}

#[async_trait]
impl PathInfoService for RedbPathInfoService {
    async fn get(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfo>, Error> {
        let (db, name) = (self.db.clone(), self.name.clone());
        blocking(move || {
            let err = storage_err(&name);
            let txn = db.begin_read().map_err(|e| err(e.into()))?;
            let table = txn.open_table(PATH_INFOS).map_err(|e| err(e.into()))?;
            match table.get(digest.as_slice()).map_err(|e| err(e.into()))? {
                None => Ok(None),
                Some(bytes) => decode(&name, &digest, bytes.value()).map(Some),
            }
        })
        .await
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        let (db, name) = (self.db.clone(), self.name.clone());
        let bytes = info.encode();
        let key = *info.store_path.digest();
        blocking(move || {
            let err = storage_err(&name);
            let txn = db.begin_write().map_err(|e| err(e.into()))?;
            {
                let mut table = txn.open_table(PATH_INFOS).map_err(|e| err(e.into()))?;
                table.insert(key.as_slice(), bytes.as_slice()).map_err(|e| err(e.into()))?;
            }
            txn.commit().map_err(|e| err(e.into()))
        })
        .await?;
        Ok(info)
    }

    fn list(&self) -> BoxStream<'_, Result<PathInfo, Error>> {
        let name = self.name.clone();
        // A page bounds memory for stores with many paths.
        paged(self.db.clone(), self.name.clone(), 256, move |txn, start, page| {
            let err = storage_err(&name);
            let table = txn.open_table(PATH_INFOS).map_err(|e| err(e.into()))?;
            let mut entries = Vec::with_capacity(page);
            for entry in entries_after(&table, start).map_err(|e| err(e.into()))?.take(page) {
                let (key, value) = entry.map_err(|e| err(e.into()))?;
                entries.push((key.value().to_vec(), decode(&name, key.value(), value.value())?));
            }
            Ok(entries)
        })
    }
}

#[async_trait]
impl PathInfoRemoval for RedbPathInfoService {
    async fn remove(&self, digest: [u8; DIGEST_LEN]) -> Result<bool, Error> {
        let (db, name) = (self.db.clone(), self.name.clone());
        blocking(move || {
            let err = storage_err(&name);
            let txn = db.begin_write().map_err(|e| err(e.into()))?;
            let removed = {
                let mut table = txn.open_table(PATH_INFOS).map_err(|e| err(e.into()))?;
                table.remove(digest.as_slice()).map_err(|e| err(e.into()))?.is_some()
            };
            txn.commit().map_err(|e| err(e.into()))?;
            Ok(removed)
        })
        .await
    }
}
