//! The core's eviction: lookup counting, forgets, handles pinning inodes, the listing cap.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::{FileKind, FsError, Ino, NO_HANDLE, Options, ROOT_INO, StoreFs};
use crate::castore::blobservice::{BlobService, ChunkedBlobService, MemoryChunkStore};
use crate::castore::directoryservice::{DirectoryService, MemoryDirectoryStore, StoredDirectoryService};
use crate::castore::{Directory, Error, Node, PathComponent, RootNode, RootNodes};

const DIRS: usize = 12;
const FILES: usize = 10;

/// A root with one entry.
struct OneRoot {
    name: Bytes,
    node: Node,
}

#[async_trait::async_trait]
impl RootNodes for OneRoot {
    async fn get(&self, name: &[u8]) -> Result<Option<RootNode>, Error> {
        Ok((name == self.name).then(|| RootNode { node: self.node.clone(), graph: None }))
    }

    fn list(&self) -> futures::stream::BoxStream<'_, Result<(Bytes, Node), Error>> {
        Box::pin(futures::stream::iter([Ok((self.name.clone(), self.node.clone()))]))
    }
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    fs: StoreFs,
    basename: String,
}

/// One root entry: `d00`..`d11`, each with files `f0`..`f9` whose contents name them.
fn fixture(options: Options) -> Fixture {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (blob, directory, root) = runtime.block_on(async {
        let blob: Arc<dyn BlobService> = Arc::new(ChunkedBlobService::new(MemoryChunkStore::default()));
        let directory: Arc<dyn DirectoryService> =
            Arc::new(StoredDirectoryService::new(MemoryDirectoryStore::default()));
        let mut top = Directory::new();
        for d in 0..DIRS {
            let mut dir = Directory::new();
            for f in 0..FILES {
                let content = format!("d{d:02}/f{f}\n");
                let mut w = blob.open_write().await;
                w.write_all(content.as_bytes()).await.unwrap();
                let digest = w.close().await.unwrap();
                let node = Node::File { digest, size: content.len() as u64, executable: false };
                dir.add(PathComponent::try_from(Bytes::from(format!("f{f}"))).unwrap(), node).unwrap();
            }
            let size = dir.size();
            let digest = directory.put(dir).await.unwrap();
            let name = PathComponent::try_from(Bytes::from(format!("d{d:02}"))).unwrap();
            top.add(name, Node::Directory { digest, size }).unwrap();
        }
        let size = top.size();
        let digest = directory.put(top).await.unwrap();
        let root = OneRoot {
            name: Bytes::from_static(b"77777777777777777777777777777777-evict"),
            node: Node::Directory { digest, size },
        };
        (blob, directory, root)
    });
    let basename = String::from_utf8_lossy(&root.name).into_owned();
    let fs = StoreFs::new(blob, directory, Arc::new(root), runtime.handle().clone(), options);
    Fixture { runtime, fs, basename }
}

impl Fixture {
    fn top(&self) -> Ino {
        self.fs.lookup(ROOT_INO, self.basename.as_bytes()).unwrap().ino
    }

    fn read_all(&self, ino: Ino, fh: u64) -> String {
        String::from_utf8(self.fs.read(ino, fh, 0, 4096).unwrap().to_vec()).unwrap()
    }
}

fn errno<T: std::fmt::Debug>(r: Result<T, FsError>) -> i32 {
    r.expect_err("expected an error").errno()
}

#[test]
fn forgotten_inodes_are_freed_and_come_back_on_lookup() {
    let f = fixture(Options::default());
    let _keep = &f.runtime;
    let top = f.top();
    let d3 = f.fs.lookup(top, b"d03").unwrap();
    let file = f.fs.lookup(d3.ino, b"f4").unwrap();
    assert_eq!(f.fs.inode_count(), 4, "root, store path, d03, f4");
    assert_eq!(f.read_all(file.ino, NO_HANDLE), "d03/f4\n");
    // A second lookup is a second reference: one forget is not enough.
    f.fs.lookup(d3.ino, b"f4").unwrap();
    f.fs.forget(file.ino, 1);
    assert!(f.fs.getattr(file.ino).is_ok());
    f.fs.forget(file.ino, 1);
    assert_eq!(errno(f.fs.getattr(file.ino)), libc::ENOENT, "freed after its last forget");
    // The directory's listing stays while d03 is live, goes with it.
    let listings = f.fs.cached_listings();
    f.fs.batch_forget(&[(d3.ino, 1), (top, 1)]);
    assert_eq!(f.fs.inode_count(), 1, "only the root left");
    assert!(f.fs.cached_listings() < listings, "listings of freed directories dropped");
    assert_eq!(errno(f.fs.lookup(d3.ino, b"f4")), libc::ENOENT);
    // Forgets of unknown (or already freed) inodes and of the root change nothing.
    f.fs.forget(d3.ino, 5);
    f.fs.forget(ROOT_INO, 5);
    f.fs.forget(u64::MAX, 1);
    assert!(f.fs.getattr(ROOT_INO).is_ok());

    // Looked up again: new numbers, same attributes and contents.
    let top2 = f.top();
    let d3b = f.fs.lookup(top2, b"d03").unwrap();
    let file2 = f.fs.lookup(d3b.ino, b"f4").unwrap();
    assert!(![top, d3.ino, file.ino].contains(&file2.ino) && d3b.ino != d3.ino);
    assert_eq!(file2.attr, super::Attr { ino: file2.ino, ..file.attr });
    assert_eq!(d3b.attr, super::Attr { ino: d3b.ino, ..d3.attr });
    assert_eq!(d3b.attr.nlink, 2);
    assert_eq!(f.read_all(file2.ino, NO_HANDLE), "d03/f4\n");
    let mut parent = None;
    f.fs.readdir(d3b.ino, 0, 1, &mut |e| {
        parent = Some(e.entry.ino);
        false
    })
    .unwrap();
    assert_eq!(parent, Some(top2), "`..` of the new d03");
}

#[test]
fn open_handles_keep_inodes() {
    let f = fixture(Options::default());
    let top = f.top();
    let d = f.fs.lookup(top, b"d00").unwrap().ino;
    let file = f.fs.lookup(d, b"f1").unwrap().ino;
    let opened = f.fs.open(file, libc::O_RDONLY).unwrap();
    let dh = f.fs.opendir(d).unwrap().fh;
    f.fs.batch_forget(&[(file, 1), (d, 1), (top, 1)]);
    assert_eq!(f.fs.inode_count(), 4, "open file and directory keep themselves and their parents");
    assert_eq!(f.read_all(file, opened.fh), "d00/f1\n");
    assert_eq!(f.fs.getattr(file).unwrap().kind, FileKind::RegularFile);
    let mut names = Vec::new();
    f.fs.readdir(d, dh, 0, &mut |e| {
        names.push(e.name);
        true
    })
    .unwrap();
    assert_eq!(names.len(), 2 + FILES);
    f.fs.release(opened.fh);
    assert_eq!(errno(f.fs.getattr(file)), libc::ENOENT);
    assert!(f.fs.getattr(d).is_ok(), "the directory is still open");
    f.fs.releasedir(dh);
    // Left: root, store path, d00 and the other nine files' numbers plain readdir handed out
    // (unreferenced, freed after IDLE_SLOTS more; they keep the parents they name).
    assert_eq!(f.fs.inode_count(), 3 + FILES - 1);
}

#[test]
fn readdirplus_entries_are_lookups_readdir_entries_are_not() {
    let f = fixture(Options::default());
    let top = f.top();
    let mut taken = Vec::new();
    // Take only 5 entries (`.`, `..`, d00..d02): the refused fourth child holds no reference.
    f.fs.readdirplus(top, 0, 0, &mut |e| {
        if taken.len() == 5 {
            return false;
        }
        taken.push(e.entry.ino);
        true
    })
    .unwrap();
    assert_eq!(f.fs.inode_count(), 2 + 3);
    let children = &taken[2..];
    // Same numbers as lookups give while live.
    assert_eq!(f.fs.lookup(top, b"d01").unwrap().ino, children[1]);
    f.fs.forget(children[1], 1);
    let forgets: Vec<(Ino, u64)> = children.iter().map(|&i| (i, 1)).collect();
    f.fs.batch_forget(&forgets);
    assert_eq!(f.fs.inode_count(), 2, "every readdirplus entry was one reference");

    // Plain readdir hands out numbers without references: bounded, not freed by forgets.
    let mut plain = Vec::new();
    f.fs.readdir(top, 0, 2, &mut |e| {
        plain.push(e.entry.ino);
        true
    })
    .unwrap();
    assert_eq!(plain.len(), DIRS);
    assert_eq!(f.fs.lookup(top, b"d05").unwrap().ino, plain[5], "d_ino matches a lookup right after");
}

#[test]
fn listing_cap_holds_without_forgets() {
    // Room for two listings of this tree at a time; nothing is ever forgotten.
    let cap = 2 * (FILES + 1);
    let f = fixture(Options { listing_cache_entries: cap, ..Options::default() });
    let top = f.top();
    let mut files = Vec::new();
    for d in 0..DIRS {
        let dir = f.fs.lookup(top, format!("d{d:02}").as_bytes()).unwrap().ino;
        files.push((d, f.fs.lookup(dir, b"f9").unwrap().ino));
        assert!(f.fs.cached_entries() <= cap, "{} entries cached", f.fs.cached_entries());
    }
    assert_eq!(f.fs.inode_count(), 2 + 2 * DIRS, "referenced inodes all stay");
    // Listings evicted while their inodes are live are fetched again.
    for &(d, first) in &files {
        let dir = f.fs.lookup(top, format!("d{d:02}").as_bytes()).unwrap().ino;
        let again = f.fs.lookup(dir, b"f9").unwrap().ino;
        assert_eq!(again, first, "same number while live");
        assert_eq!(f.fs.getattr(dir).unwrap().nlink, 2);
        assert_eq!(f.read_all(again, NO_HANDLE), format!("d{d:02}/f9\n"));
        assert!(f.fs.cached_entries() <= cap);
    }
}

#[test]
fn without_eviction_nothing_is_freed() {
    let f = fixture(Options { evict: false, listing_cache_entries: 1, ..Options::default() });
    let top = f.top();
    let d = f.fs.lookup(top, b"d00").unwrap().ino;
    f.fs.batch_forget(&[(d, 1), (top, 1)]);
    assert_eq!(f.fs.inode_count(), 3);
    // The whole graph arrived with the first fetch and stays, cap or not.
    assert_eq!(f.fs.cached_listings(), 1 + DIRS);
}

#[test]
fn concurrent_lookups_and_forgets_balance() {
    let f = Arc::new(fixture(Options { listing_cache_entries: 3 * (FILES + 1), ..Options::default() }));
    let top = f.top();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || {
                for round in 0..50 {
                    let d = format!("d{:02}", (t + round) % DIRS);
                    let dir = f.fs.lookup(top, d.as_bytes()).unwrap();
                    let file = f.fs.lookup(dir.ino, b"f3").unwrap();
                    assert_eq!(f.read_all(file.ino, NO_HANDLE), format!("{d}/f3\n"));
                    f.fs.batch_forget(&[(file.ino, 1), (dir.ino, 1)]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(f.fs.inode_count(), 2, "root and the store path");
}
