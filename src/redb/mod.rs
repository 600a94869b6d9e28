//! `redb:///path/to/file.redb`: directories and PathInfo in an embedded redb database.
//!
//! redb is synchronous, so every call runs on the blocking thread pool; each write is one
//! transaction committed with redb's default (immediate, fsynced) durability, which is what
//! makes "nothing of a rejected or interrupted put becomes visible" hold across crashes.

mod directory;
mod pathinfo;

use std::path::Path;
use std::sync::Arc;

pub use directory::RedbDirectoryStore;
pub use pathinfo::RedbPathInfoService;

use crate::castore::Error;

/// Why a redb file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenRedbError {
    #[error("redb database {0} is in use by another process (is a tvix-store daemon or mount running on it?)")]
    Locked(String),
    #[error("redb database {0} is corrupt or not a redb file: {1}")]
    Corrupt(String, String),
    #[error("cannot open redb database {0}: {1}")]
    Io(String, String),
}

/// Opens (creating if needed) the database at `path`, with its tables created.
pub(crate) fn open_database(
    path: &Path,
    create_tables: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::TableError>,
) -> Result<Arc<redb::Database>, OpenRedbError> {
    let name = path.display().to_string();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| OpenRedbError::Io(name.clone(), e.to_string()))?;
    }
    // redb answers some kinds of damage (flipped bytes in its tree pages) with a panic instead
    // of an error; a corrupt file must get a clear message, not take the process down.
    let created = std::panic::catch_unwind(|| redb::Database::create(path)).map_err(|panic| {
        OpenRedbError::Corrupt(name.clone(), format!("redb failed reading it: {}", panic_message(&panic)))
    })?;
    let db = created.map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            OpenRedbError::Locked(name.clone())
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => OpenRedbError::Io(name.clone(), io.to_string()),
        other => OpenRedbError::Corrupt(name.clone(), other.to_string()),
    })?;
    let txn = db.begin_write().map_err(|e| OpenRedbError::Io(name.clone(), e.to_string()))?;
    create_tables(&txn).map_err(|e| OpenRedbError::Corrupt(name.clone(), e.to_string()))?;
    txn.commit().map_err(|e| OpenRedbError::Io(name.clone(), e.to_string()))?;
    Ok(Arc::new(db))
}

/// The message of a caught panic.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Runs a synchronous redb operation on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work).await.map_err(|e| Error::Storage(format!("redb task failed: {e}")))?
}

/// Every entry of a table, read in pages of `page` entries on the blocking pool (redb's
/// iterators borrow their transaction, so they cannot be held across awaits), so a table of
/// millions of entries streams in bounded memory. `read` gets a read transaction and the key
/// to continue after, and returns the next entries with their keys.
pub(crate) fn paged<T: Send + 'static>(
    db: Arc<redb::Database>,
    name: Arc<str>,
    page: usize,
    read: impl Fn(&redb::ReadTransaction, Option<&[u8]>, usize) -> Result<Vec<(Vec<u8>, T)>, Error> + Send + Sync + 'static,
) -> futures::stream::BoxStream<'static, Result<T, Error>> {
    let read = Arc::new(read);
    Box::pin(async_stream::try_stream! {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (db, name, start, read) = (db.clone(), name.clone(), after.clone(), read.clone());
            let entries = blocking(move || {
                let txn = redb::ReadableDatabase::begin_read(&*db).map_err(|e| storage_err(&name)(e.into()))?;
                read(&txn, start.as_deref(), page)
            })
            .await?;
            let done = entries.len() < page;
            after = entries.last().map(|(key, _)| key.clone());
            for (_, entry) in entries {
                yield entry;
            }
            if done {
                break;
            }
        }
    })
}

/// The entries of `table` after `start` (all from the first without one).
pub(crate) fn entries_after<'t>(
    table: &'t redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    start: Option<&[u8]>,
) -> Result<redb::Range<'t, &'static [u8], &'static [u8]>, redb::StorageError> {
    use redb::ReadableTable;
    match start {
        None => table.iter(),
        Some(key) => table.range::<&[u8]>((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded)),
    }
}

/// Wraps any redb failure as a storage error naming the database.
pub(crate) fn storage_err(db: &str) -> impl Fn(redb::Error) -> Error + '_ {
    move |e| Error::Storage(format!("redb database {db}: {e}"))
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::{RedbDirectoryStore, RedbPathInfoService};
    use crate::castore::directoryservice::{DirectoryService, StoredDirectoryService};
    use crate::castore::{B3Digest, Directory, Error, Node, PathComponent};
    use crate::pathinfo::{PathInfo, PathInfoService};
    use crate::storepath::StorePath;

    fn info(i: u32) -> PathInfo {
        let mut digest = [0u8; 20];
        digest[..4].copy_from_slice(&i.to_be_bytes());
        PathInfo {
            store_path: StorePath::from_parts(digest, &format!("path-{i}")).unwrap(),
            node: Node::file(B3Digest::of(&i.to_be_bytes()), 4, false),
            references: vec![],
            nar_size: 100 + i as u64,
            nar_sha256: [7; 32],
            signatures: vec![],
            deriver: None,
            ca: None,
        }
    }

    #[tokio::test]
    async fn pathinfo_persists_lists_in_pages_and_reports_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.redb");
        {
            let service = RedbPathInfoService::open(&path).unwrap();
            for i in 0..600 {
                service.put(info(i)).await.unwrap();
            }
            // A second opener while the first holds the file gets a clear "in use" error.
            let err = RedbPathInfoService::open(&path).err().expect("second open must fail");
            assert!(err.to_string().contains("in use"), "{err}");
        }
        let service = RedbPathInfoService::open(&path).unwrap();
        assert_eq!(service.get(*info(42).store_path.digest()).await.unwrap(), Some(info(42)));
        assert_eq!(service.get([9; 20]).await.unwrap(), None);
        let all: Vec<PathInfo> = service.list().try_collect().await.unwrap();
        assert_eq!(all.len(), 600);
        assert_eq!(all, (0..600).map(info).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn corrupt_file_gives_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.redb");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = RedbDirectoryStore::open(&path).err().expect("garbage must not open");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    }

    #[tokio::test]
    async fn directories_persist_and_rejected_graphs_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.redb");
        let open = || StoredDirectoryService::new(RedbDirectoryStore::open(&path).unwrap());
        let mut leaf = Directory::new();
        leaf.add(PathComponent::try_from("f").unwrap(), Node::file(B3Digest::of(b"x"), 1, false)).unwrap();
        let mut root = Directory::new();
        root.add(PathComponent::try_from("sub").unwrap(), Node::directory(leaf.digest(), leaf.size())).unwrap();
        let root_digest = {
            let service = open();
            let mut putter = service.put_multiple_start();
            putter.put(leaf.clone()).await.unwrap();
            putter.put(root.clone()).await.unwrap();
            putter.close().await.unwrap()
        };
        let service = open();
        let got: Vec<Directory> = service.get_recursive(&root_digest).try_collect().await.unwrap();
        assert_eq!(got, vec![root.clone(), leaf.clone()]);

        // A root referring to a directory nobody sent is refused, and not stored.
        let mut orphan_parent = Directory::new();
        orphan_parent
            .add(PathComponent::try_from("gone").unwrap(), Node::directory(B3Digest::of(b"nothing"), 0))
            .unwrap();
        let mut putter = service.put_multiple_start();
        let refused = match putter.put(orphan_parent.clone()).await {
            Err(e) => e,
            Ok(()) => putter.close().await.expect_err("unknown child must be refused"),
        };
        drop(putter);
        assert!(matches!(refused, Error::InvalidRequest(_) | Error::NotFound(_)), "{refused}");
        assert_eq!(service.get(&orphan_parent.digest()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_damaged_file_is_an_error_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("directories.redb");
        {
            let service = StoredDirectoryService::new(RedbDirectoryStore::open(&path).unwrap());
            for i in 0..200u32 {
                let mut d = Directory::new();
                let name = PathComponent::try_from(format!("f{i}").as_str()).unwrap();
                d.add(name, Node::file(B3Digest::of(&i.to_be_bytes()), 4, false)).unwrap();
                service.put(d).await.unwrap();
            }
        }
        // Flipped bytes all over the tree pages (past the header), which redb answers with a
        // panic of its own.
        let mut bytes = std::fs::read(&path).unwrap();
        for i in (4096..bytes.len()).step_by(997) {
            bytes[i] ^= 0xff;
        }
        std::fs::write(&path, bytes).unwrap();
        match RedbDirectoryStore::open(&path) {
            Err(super::OpenRedbError::Corrupt(name, _)) => assert!(name.contains("directories.redb")),
            Err(other) => panic!("expected a corrupt-file error, got {other}"),
            Ok(store) => {
                // Damage redb does not notice at open must still not be served as a directory.
                let service = StoredDirectoryService::new(store);
                for i in 0..200u32 {
                    let mut d = Directory::new();
                    let name = PathComponent::try_from(format!("f{i}").as_str()).unwrap();
                    d.add(name, Node::file(B3Digest::of(&i.to_be_bytes()), 4, false)).unwrap();
                    if let Ok(Some(read)) = service.get(&d.digest()).await {
                        assert_eq!(read, d);
                    }
                }
            }
        }
    }
}
