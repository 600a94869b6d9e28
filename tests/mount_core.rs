//! The filesystem core's API directly (what both the FUSE and the virtiofs frontends rely on):
//! readdir offsets, xattr size protocol, errno mapping, reads at odd offsets and handles.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tvix_store::castore::B3Digest;
use tvix_store::castore::blobservice::{BlobService, ManyBlobs};
use tvix_store::fs::{FileKind, FsError, NO_HANDLE, Options, ROOT_INO, StoreFs, XattrReply};
use tvix_store::pathinfo::PathInfoRootNodes;

use crate::blob_common::{BlobHooks, Wrapped};
use crate::mount_common::*;

fn core(store: &Store, options: Options) -> StoreFs {
    StoreFs::new(
        store.blob.clone(),
        store.directory.clone(),
        Arc::new(PathInfoRootNodes::new(store.path_info.clone())),
        store.runtime.handle().clone(),
        options,
    )
}

fn errno<T: std::fmt::Debug>(r: Result<T, FsError>) -> i32 {
    r.expect_err("expected an error").errno()
}

#[test]
fn core_api_semantics() {
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    make_tree(&tree, 21);
    let store = Store::memory();
    let sp = store.ingest(&tree, "core");
    let fs = Arc::new(core(&store, Options { show_xattr: true, ..Options::default() }));

    // Root: attributes, lookups that miss, not listable without list_root.
    let root = fs.getattr(ROOT_INO).unwrap();
    assert_eq!((root.kind, root.perm, root.mtime_secs), (FileKind::Directory, 0o555, 1));
    assert_eq!(errno(fs.lookup(ROOT_INO, b"not-a-store-path")), libc::ENOENT);
    assert_eq!(errno(fs.lookup(ROOT_INO, b"00000000000000000000000000000000-core")), libc::ENOENT);
    let fh = fs.opendir(ROOT_INO).unwrap().fh;
    assert_eq!(errno(fs.readdir(ROOT_INO, fh, 0, &mut |_| true)), libc::EPERM);
    assert!(fs.negative_ttl(ROOT_INO) < fs.negative_ttl(2));

    let top = fs.lookup(ROOT_INO, sp.to_basename().as_bytes()).unwrap();
    assert_eq!(top.attr.kind, FileKind::Directory);
    assert_eq!(fs.lookup(ROOT_INO, sp.to_basename().as_bytes()).unwrap().ino, top.ino, "stable inode");
    let doc = fs.lookup(fs.lookup(top.ino, b"share").unwrap().ino, b"doc").unwrap();

    // readdir: ".", "..", then names in order; resuming from any next_offset continues exactly.
    let mut all = Vec::new();
    fs.readdir(doc.ino, 0, 0, &mut |e| {
        all.push(e);
        true
    })
    .unwrap();
    let names: Vec<String> = all.iter().map(|e| String::from_utf8_lossy(&e.name).into_owned()).collect();
    assert_eq!(&names[..2], &[".", ".."]);
    let mut expected: Vec<String> = std::fs::read_dir(tree.join("share/doc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    expected.sort();
    assert_eq!(&names[2..], &expected[..]);
    for (i, e) in all.iter().enumerate() {
        let mut rest = Vec::new();
        fs.readdir(doc.ino, 0, e.next_offset, &mut |e| {
            rest.push(e.name.clone());
            rest.len() < 3
        })
        .unwrap();
        let want: Vec<_> = all[i + 1..].iter().take(3).map(|e| e.name.clone()).collect();
        assert_eq!(rest, want, "resuming after entry {i}");
    }
    // Entries carry the same inodes and attributes lookups give.
    let readme = all.iter().find(|e| &e.name[..] == b"README").unwrap();
    assert_eq!(fs.lookup(doc.ino, b"README").unwrap(), readme.entry);

    // Wrong kinds.
    assert_eq!(errno(fs.lookup(readme.entry.ino, b"x")), libc::ENOTDIR);
    assert_eq!(errno(fs.opendir(readme.entry.ino)), libc::ENOTDIR);
    assert_eq!(errno(fs.readlink(readme.entry.ino)), libc::EINVAL);
    assert_eq!(errno(fs.open(doc.ino, libc::O_RDONLY)), libc::EISDIR);
    assert_eq!(errno(fs.getattr(999_999)), libc::ENOENT);
    assert_eq!(errno(fs.read(readme.entry.ino, 424_242, 0, 10)), libc::EBADF);
    let link = fs.lookup(fs.lookup(top.ino, b"bin").unwrap().ino, b"doc-dir-link").unwrap();
    assert_eq!(&fs.readlink(link.ino).unwrap()[..], b"../share/doc");

    // Read-only.
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        assert_eq!(errno(fs.open(readme.entry.ino, flags)), libc::EROFS);
    }

    // Reads through a handle and without one, at odd offsets, past the end.
    let big = fs.lookup(fs.lookup(top.ino, b"share").unwrap().ino, b"big.bin").unwrap();
    let content = std::fs::read(tree.join("share/big.bin")).unwrap();
    let opened = fs.open(big.ino, libc::O_RDONLY).unwrap();
    assert!(opened.keep_cache);
    assert_ne!(opened.fh, NO_HANDLE);
    for (fh, offsets) in [(opened.fh, [3_000_001u64, 17, 4_999_999, 0]), (NO_HANDLE, [1_048_575, 0, 5_000_000, 2])] {
        for off in offsets {
            let got = fs.read(big.ino, fh, off, 100_000).unwrap();
            let end = (off as usize + 100_000).min(content.len());
            assert!(got[..] == content[off as usize..end], "fh {fh} offset {off}");
        }
        let tail = fs.read(big.ino, fh, content.len() as u64 - 5, 100).unwrap();
        assert_eq!(&tail[..], &content[content.len() - 5..]);
        assert!(fs.read(big.ino, fh, content.len() as u64 + 10, 100).unwrap().is_empty());
    }
    fs.release(opened.fh);
    assert_eq!(errno(fs.read(big.ino, opened.fh, 0, 10)), libc::EBADF);

    // xattrs: size 0 asks for the length, a short buffer gets ERANGE, unknown names ENODATA.
    let name = b"user.tvix.castore.blob.digest";
    let XattrReply::Size(len) = fs.getxattr(readme.entry.ino, name, 0).unwrap() else { panic!("size") };
    assert_eq!(len, 3 + 44);
    let XattrReply::Data(value) = fs.getxattr(readme.entry.ino, name, len).unwrap() else { panic!("data") };
    let digest = tvix_store::castore::B3Digest::of(&std::fs::read(tree.join("share/doc/README")).unwrap());
    assert_eq!(String::from_utf8(value).unwrap(), digest.to_string());
    assert_eq!(errno(fs.getxattr(readme.entry.ino, name, len - 1)), libc::ERANGE);
    assert_eq!(errno(fs.getxattr(readme.entry.ino, b"user.other", 100)), libc::ENODATA);
    let XattrReply::Data(names) = fs.listxattr(doc.ino, 1000).unwrap() else { panic!("data") };
    assert_eq!(names, b"user.tvix.castore.directory.digest\0");
    assert_eq!(fs.listxattr(link.ino, 0).unwrap(), XattrReply::Size(0));

    assert!(fs.statfs().files > 10);
}

#[test]
fn list_root_snapshots_per_handle() {
    let src = tempfile::tempdir().unwrap();
    for name in ["one", "two"] {
        std::fs::create_dir(src.path().join(name)).unwrap();
    }
    let store = Store::memory();
    let one = store.ingest(&src.path().join("one"), "one");
    let fs = core(&store, Options { list_root: true, ..Options::default() });
    let list = |fh| {
        let mut v = Vec::new();
        fs.readdir(ROOT_INO, fh, 0, &mut |e| {
            v.push(String::from_utf8_lossy(&e.name).into_owned());
            true
        })
        .unwrap();
        v
    };
    let first = fs.opendir(ROOT_INO).unwrap().fh;
    assert_eq!(list(first), vec![".".to_string(), "..".to_string(), one.to_basename()]);
    let two = store.ingest(&src.path().join("two"), "two");
    // The open handle keeps its snapshot (offsets stay valid); a new one sees the new path.
    assert_eq!(list(first).len(), 3);
    let second = fs.opendir(ROOT_INO).unwrap().fh;
    let mut want = [one.to_basename(), two.to_basename()];
    want.sort();
    assert_eq!(list(second)[2..], want[..]);
    fs.releasedir(first);
    assert_eq!(errno(fs.readdir(ROOT_INO, first, 0, &mut |_| true)), libc::EBADF);
}

/// Batched reads that never answer: what a prefetch meets when its batch is stuck behind a
/// loaded or failing backend. Single reads work.
struct StuckBatches(Arc<dyn BlobService>);

impl BlobHooks for StuckBatches {
    fn inner(&self) -> &dyn BlobService {
        &*self.0
    }
    fn read_many(&self, _: Vec<B3Digest>) -> Result<ManyBlobs<'_>, Vec<B3Digest>> {
        Ok(futures::stream::pending().boxed())
    }
}

/// Files whose prefetch never lands are still read, each on its own once its prefetch is late,
/// within the call timeout: a stuck batch must not turn into EIO for the reader.
#[test]
fn files_whose_prefetch_is_stuck_are_read_alone() {
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    make_tree(&tree, 31);
    let store = Store::memory();
    let sp = store.ingest(&tree, "stuck");
    let blob: Arc<dyn BlobService> = Arc::new(Wrapped(StuckBatches(store.blob.clone())));
    let options = Options { call_timeout: Duration::from_secs(1), ..Options::default() };
    let fs = StoreFs::new(
        blob,
        store.directory.clone(),
        Arc::new(PathInfoRootNodes::new(store.path_info.clone())),
        store.runtime.handle().clone(),
        options,
    );
    let top = fs.lookup(ROOT_INO, sp.to_basename().as_bytes()).unwrap();
    let doc = fs.lookup(fs.lookup(top.ino, b"share").unwrap().ino, b"doc").unwrap();
    // The first read misses and plans the next files of the walk: f001.. are then held.
    for name in ["f000", "f001", "f002", "f003"] {
        let file = fs.lookup(doc.ino, name.as_bytes()).unwrap();
        let fh = fs.open(file.ino, libc::O_RDONLY).unwrap().fh;
        let got = fs.read(file.ino, fh, 0, 64 * 1024).unwrap_or_else(|e| panic!("reading {name}: {e}"));
        assert_eq!(got, std::fs::read(tree.join("share/doc").join(name)).unwrap(), "{name}");
        fs.release(fh);
    }
}
