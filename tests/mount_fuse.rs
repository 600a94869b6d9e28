//! The FUSE mount, in-process over in-memory services: the mounted store path must equal its
//! source tree to ordinary tools, attributes follow Nix conventions, and the mount is
//! read-only. Needs root (or fusermount3), /dev/fuse, coreutils, diffutils, findutils, attr.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use tvix_store::fs::Options;

use crate::mount_common::*;

const TOOLS: &[&str] = &["diff", "find", "stat", "readlink", "cat", "sha256sum", "getfattr", "fusermount3"];

#[test]
fn mounted_tree_equals_source() {
    require_tools(TOOLS);
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    make_tree(&tree, 1);
    // A real ELF executable: the loader maps it, so its pages are read through page faults.
    fs::copy("/usr/bin/sort", tree.join("bin/sort")).expect("copying /usr/bin/sort (coreutils)");
    let store = Store::memory();
    let sp = store.ingest(&tree, "hello-1.0");
    let mount = Mount::new(&store, Options::default(), 4);
    let m = mount.join(sp.to_basename());

    // Contents, file types and symlink targets, the way people check a copy.
    sh(&format!("diff -r --no-dereference {} {}", q(&tree), q(&m)));
    assert_eq!(listing(&tree), listing(&m));
    assert_eq!(
        sh(&format!("sha256sum < {}", q(&tree.join("share/big.bin")))),
        sh(&format!("cat {} | sha256sum", q(&m.join("share/big.bin"))))
    );
    assert_eq!(sh(&format!("readlink {}", q(&m.join("bin/doc-dir-link")))), "../share/doc\n");
    assert_eq!(sh(&format!("readlink {}", q(&m.join("dangling-link")))), "does/not/exist\n");
    assert_eq!(sh(&format!("ls {}", q(&m.join("bin/doc-dir-link/deep")))), "deeper\n");

    // Executables run straight out of the store.
    assert_eq!(sh(&q(&m.join("bin/hello"))), "hello from the store 1\n");
    assert_eq!(sh(&q(&m.join("bin/hello-link"))), "hello from the store 1\n");
    assert_eq!(sh(&format!("printf 'b\\na\\n' | {}", q(&m.join("bin/sort")))), "a\nb\n");
}

#[test]
fn attributes_follow_nix_conventions() {
    require_tools(TOOLS);
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    make_tree(&tree, 2);
    let store = Store::memory();
    let sp = store.ingest(&tree, "attrs");
    let mount = Mount::new(&store, Options::default(), 2);
    let m = mount.join(sp.to_basename());

    let mode = |rel: &str| fs::symlink_metadata(m.join(rel)).unwrap().permissions().mode();
    assert_eq!(mode(""), 0o40555, "store path root directory");
    assert_eq!(mode("share/doc"), 0o40555);
    assert_eq!(mode("bin/hello"), 0o100555, "executable");
    assert_eq!(mode("share/doc/README"), 0o100444, "plain file");
    assert_eq!(mode("empty"), 0o100444);
    assert_eq!(mode("bin/hello-link") & 0o170000, 0o120000, "symlink");

    // stat(1) as users see it: sizes exact, mtime 1, link counts.
    let stat = |rel: &str| sh(&format!("stat -c '%s %Y %h %F' {}", q(&m.join(rel)))).trim().to_string();
    assert_eq!(stat("share/big.bin"), format!("{} 1 1 regular file", 5 * 1024 * 1024 + 12_345));
    assert_eq!(stat("empty"), "0 1 1 regular empty file");
    assert_eq!(stat("bin/hello-link"), "5 1 1 symbolic link");
    // share has doc: 2 + 1 subdirectory.
    assert_eq!(stat("share"), "0 1 3 directory");
    assert_eq!(stat("empty-dir"), "0 1 2 directory");
    let root = fs::metadata(&mount.path).unwrap();
    assert_eq!(root.mode(), 0o40555);
    assert_eq!(root.mtime(), 1);

    // Inode numbers are stable and distinct.
    let ino = |rel: &str| fs::symlink_metadata(m.join(rel)).unwrap().ino();
    let first: Vec<u64> =
        ["", "bin", "bin/hello", "share/doc/README", "share/doc/f007"].iter().map(|r| ino(r)).collect();
    sh(&format!("find {} -ls > /dev/null", q(&m)));
    let again: Vec<u64> =
        ["", "bin", "bin/hello", "share/doc/README", "share/doc/f007"].iter().map(|r| ino(r)).collect();
    assert_eq!(first, again);
    let mut dedup = first.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), first.len(), "inodes {first:?} are not distinct");
}

#[test]
fn writes_fail_with_erofs() {
    require_tools(TOOLS);
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    make_tree(&tree, 3);
    let store = Store::memory();
    let sp = store.ingest(&tree, "ro");
    let mount = Mount::new(&store, Options::default(), 2);
    let m = mount.join(sp.to_basename());

    let erofs = |what: &str, r: std::io::Result<()>| {
        let e = r.expect_err(&format!("{what} succeeded on a read-only mount"));
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs("create", fs::File::create(m.join("new")).map(drop));
    erofs("create in root", fs::File::create(mount.join("new")).map(drop));
    erofs("open for writing", fs::OpenOptions::new().write(true).open(m.join("share/doc/README")).map(drop));
    erofs("append", fs::OpenOptions::new().append(true).open(m.join("empty")).map(drop));
    erofs("truncate", fs::OpenOptions::new().write(true).truncate(true).open(m.join("empty")).map(drop));
    erofs("mkdir", fs::create_dir(m.join("d")));
    erofs("mkdir in root", fs::create_dir(mount.join("d")));
    erofs("unlink", fs::remove_file(m.join("empty")));
    erofs("rmdir", fs::remove_dir(m.join("empty-dir")));
    erofs("rename", fs::rename(m.join("empty"), m.join("empty2")));
    erofs("symlink", std::os::unix::fs::symlink("x", m.join("l")));
    erofs("hard link", fs::hard_link(m.join("empty"), m.join("h")));
    erofs("chmod", fs::set_permissions(m.join("empty"), fs::Permissions::from_mode(0o777)));
    // And through ordinary tools.
    let out = sh_output(&format!("touch {}", q(&m.join("empty"))));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only file system"));
    let out = sh_output(&format!("setfattr -n user.x -v 1 {}", q(&m.join("empty"))));
    assert!(!out.status.success());
    // Nothing changed.
    sh(&format!("diff -r --no-dereference {} {}", q(&tree), q(&m)));
}

#[test]
fn root_lookup_listing_and_late_paths() {
    require_tools(TOOLS);
    let src = tempfile::tempdir().unwrap();
    for (i, name) in ["a", "b", "late"].iter().enumerate() {
        fs::create_dir(src.path().join(name)).unwrap();
        fs::write(src.path().join(name).join("file"), format!("{name} {i}\n")).unwrap();
    }
    let store = Store::memory();
    let a = store.ingest(&src.path().join("a"), "a");
    let b = store.ingest(&src.path().join("b"), "b");

    // Without --list-root: the root cannot be listed, but lookups work.
    {
        let mount = Mount::new(&store, Options::default(), 2);
        // Opening the root works (tar -C, openat), listing it does not.
        let mut dir = fs::read_dir(&mount.path).expect("opening the root");
        let e = dir.next().expect("an error entry").map(drop).expect_err("root listed without list_root");
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        let out = sh_output(&format!("ls {}", q(&mount.path)));
        assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"), "{out:?}");
        sh(&format!("tar -cf /dev/null -C {} {}", q(&mount.path), a.to_basename()));
        assert_eq!(sh(&format!("cat {}", q(&mount.join(a.to_basename()).join("file")))), "a 0\n");
        // Unknown hash, right hash with the wrong name, not a store path name at all.
        let wrong_name = format!("{}-notb", &b.to_basename()[..32]);
        for name in ["00000000000000000000000000000000-a", wrong_name.as_str(), "plainname", ".."] {
            let r = fs::symlink_metadata(mount.join(name));
            if name == ".." {
                continue;
            }
            assert_eq!(r.map(drop).unwrap_err().raw_os_error(), Some(libc::ENOENT), "{name}");
        }
    }

    // With --list-root: the root lists every store path; one added after the mount (and
    // looked up, negatively cached, before) appears without a remount.
    let mount = Mount::new(&store, Options { list_root: true, ..Options::default() }, 2);
    let names = |m: &Mount| {
        let mut v: Vec<String> =
            fs::read_dir(&m.path).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    };
    let mut expected = vec![a.to_basename(), b.to_basename()];
    expected.sort();
    assert_eq!(names(&mount), expected);

    let late_dir = src.path().join("late");
    // The late path's name is only known once ingested; probe the same name first by
    // ingesting into a second store that the mount does not see.
    let probe = Store::memory().ingest(&late_dir, "late");
    assert!(fs::symlink_metadata(mount.join(probe.to_basename())).is_err());
    let late = store.ingest(&late_dir, "late");
    assert_eq!(late, probe);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(content) = fs::read_to_string(mount.join(late.to_basename()).join("file")) {
            assert_eq!(content, "late 2\n");
            break;
        }
        assert!(Instant::now() < deadline, "late path did not appear within 5 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    expected.push(late.to_basename());
    expected.sort();
    assert_eq!(names(&mount), expected);
}

#[test]
fn xattrs_show_digests() {
    require_tools(TOOLS);
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    make_tree(&tree, 4);
    let store = Store::memory();
    let sp = store.ingest(&tree, "xattr");
    let digest_of_readme =
        tvix_store::castore::B3Digest::of(&fs::read(tree.join("share/doc/README")).unwrap()).to_string();

    {
        let mount = Mount::new(&store, Options { show_xattr: true, ..Options::default() }, 2);
        let m = mount.join(sp.to_basename());
        let out = sh(&format!("getfattr -d -m - {}", q(&m.join("share/doc/README"))));
        assert!(
            out.contains(&format!("user.tvix.castore.blob.digest=\"{digest_of_readme}\"")),
            "getfattr output: {out}"
        );
        let out = sh(&format!("getfattr -d -m - {}", q(&m.join("share/doc"))));
        assert!(out.contains("user.tvix.castore.directory.digest=\"b3:"), "getfattr output: {out}");
        let out = sh(&format!("getfattr --only-values -n user.tvix.castore.directory.digest {}", q(&m)));
        assert!(out.starts_with("b3:") && out.len() == 3 + 44, "directory digest value {out:?}");
        let out = sh_output(&format!("getfattr -n user.nope {}", q(&m.join("empty"))));
        assert!(String::from_utf8_lossy(&out.stderr).contains("No such attribute"), "{out:?}");
    }
    let mount = Mount::new(&store, Options::default(), 2);
    let m = mount.join(sp.to_basename());
    let out = sh(&format!("getfattr -d -m - {}", q(&m.join("share/doc/README"))));
    assert_eq!(out.trim(), "", "xattrs shown without show_xattr");
}

#[test]
fn parallel_readers_get_the_right_bytes() {
    require_tools(TOOLS);
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    make_tree(&tree, 5);
    let store = Store::memory();
    let sp = store.ingest(&tree, "parallel");
    let mount = Mount::new(&store, Options::default(), 4);
    let m = mount.join(sp.to_basename());
    let expected = sh(&format!("cd {} && find . -type f | LC_ALL=C sort | xargs -d '\\n' sha256sum", q(&tree)));
    // Eight concurrent full reads, plus reads of the big file at odd offsets.
    let cmd = format!(
        "cd {} && for i in 1 2 3 4 5 6 7 8; do (find . -type f | LC_ALL=C sort | xargs -d '\\n' sha256sum > /tmp/par.$$.$i) & done; wait; cat /tmp/par.$$.*| sort | uniq -c | awk '{{print $1}}' | sort -u; rm -f /tmp/par.$$.*",
        q(&m)
    );
    assert_eq!(sh(&cmd).trim(), "8", "every reader saw the same checksums");
    let got = sh(&format!("cd {} && find . -type f | LC_ALL=C sort | xargs -d '\\n' sha256sum", q(&m)));
    assert_eq!(got, expected);
    let a =
        sh(&format!("dd if={} bs=1 skip=1234567 count=70000 status=none | sha256sum", q(&tree.join("share/big.bin"))));
    let b = sh(&format!("dd if={} bs=1 skip=1234567 count=70000 status=none | sha256sum", q(&m.join("share/big.bin"))));
    assert_eq!(a, b);
    let a = sh(&format!("tail -c 777 {} | sha256sum", q(&tree.join("share/big.bin"))));
    let b = sh(&format!("tail -c 777 {} | sha256sum", q(&m.join("share/big.bin"))));
    assert_eq!(a, b);
}

/// A BlobService and PathInfoService whose calls hang while `down` is set, as calls to a
/// daemon that stopped answering do.
struct Flaky<T: ?Sized> {
    inner: std::sync::Arc<T>,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl<T: ?Sized> Flaky<T> {
    async fn gate(&self) {
        while self.down.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[async_trait::async_trait]
impl tvix_store::castore::blobservice::BlobService for Flaky<dyn tvix_store::castore::blobservice::BlobService> {
    async fn has(&self, d: &tvix_store::castore::B3Digest) -> Result<bool, tvix_store::castore::Error> {
        self.gate().await;
        self.inner.has(d).await
    }
    async fn open_read(
        &self,
        d: &tvix_store::castore::B3Digest,
    ) -> Result<Option<Box<dyn tvix_store::castore::blobservice::BlobReader>>, tvix_store::castore::Error> {
        self.gate().await;
        self.inner.open_read(d).await
    }
    async fn open_write(&self) -> Box<dyn tvix_store::castore::blobservice::BlobWriter> {
        self.inner.open_write().await
    }
    async fn open_write_deferred(&self) -> Box<dyn tvix_store::castore::blobservice::BlobWriter> {
        self.inner.open_write_deferred().await
    }
    async fn sync(&self) -> Result<(), tvix_store::castore::Error> {
        self.inner.sync().await
    }
    async fn chunks(
        &self,
        d: &tvix_store::castore::B3Digest,
    ) -> Result<Option<Vec<tvix_store::castore::blobservice::ChunkMeta>>, tvix_store::castore::Error> {
        self.gate().await;
        self.inner.chunks(d).await
    }
}

#[async_trait::async_trait]
impl tvix_store::pathinfo::PathInfoService for Flaky<dyn tvix_store::pathinfo::PathInfoService> {
    async fn get(&self, d: [u8; 20]) -> Result<Option<tvix_store::pathinfo::PathInfo>, tvix_store::castore::Error> {
        self.gate().await;
        self.inner.get(d).await
    }
    async fn put(
        &self,
        info: tvix_store::pathinfo::PathInfo,
    ) -> Result<tvix_store::pathinfo::PathInfo, tvix_store::castore::Error> {
        self.inner.put(info).await
    }
    fn list(
        &self,
    ) -> futures::stream::BoxStream<'_, Result<tvix_store::pathinfo::PathInfo, tvix_store::castore::Error>> {
        self.inner.list()
    }
}

#[test]
fn hanging_store_gives_eio_within_the_timeout_and_recovers() {
    use std::io::Read;
    require_tools(TOOLS);
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    make_tree(&tree, 6);
    let mut store = Store::memory();
    let sp = store.ingest(&tree, "flaky");
    let other = store.ingest(&tree.join("share"), "other");
    let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    store.blob = std::sync::Arc::new(Flaky { inner: store.blob.clone(), down: down.clone() });
    store.path_info = std::sync::Arc::new(Flaky { inner: store.path_info.clone(), down: down.clone() });
    let timeout = Duration::from_secs(2);
    let mount = Mount::new(&store, Options { call_timeout: timeout, ..Options::default() }, 2);
    let m = mount.join(sp.to_basename());
    let expected = fs::read(tree.join("share/doc/README")).unwrap();

    let mut file = fs::File::open(m.join("share/doc/README")).unwrap();
    down.store(true, std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    let mut buf = Vec::new();
    let e = file.read_to_end(&mut buf).expect_err("read succeeded while the store hangs");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(started.elapsed() < timeout + Duration::from_secs(3), "EIO took {:?}", started.elapsed());
    let started = Instant::now();
    let e = fs::symlink_metadata(mount.join(other.to_basename())).expect_err("lookup succeeded while down");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(started.elapsed() < timeout + Duration::from_secs(3), "EIO took {:?}", started.elapsed());

    down.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut file = fs::File::open(m.join("share/doc/README")).unwrap();
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).unwrap();
    assert_eq!(buf, expected);
    assert!(fs::symlink_metadata(mount.join(other.to_basename())).unwrap().is_dir());
}

/// The kernel's FORGETs reach the core: after a walk, dropping the kernel's dentry and inode
/// caches (which makes it forget everything it can) shrinks the inode table to almost nothing,
/// the listing cache stays within its cap all along, and the tree reads the same afterwards.
#[test]
fn forgotten_inodes_are_freed_and_the_tree_still_reads() {
    require_tools(TOOLS);
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    make_tree(&tree, 9);
    for d in 0..20 {
        let dir = tree.join(format!("many/d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            fs::write(dir.join(format!("f{f:03}")), format!("{d}/{f}\n")).unwrap();
        }
    }
    let store = Store::memory();
    let sp = store.ingest(&tree, "forget");
    // Room for a few of the 100-entry listings only.
    let cap = 500;
    let mount = Mount::new(&store, Options { listing_cache_entries: cap, ..Options::default() }, 2);
    let m = mount.join(sp.to_basename());
    let entries: usize = sh(&format!("find {} | wc -l", q(&tree))).trim().parse().unwrap();

    assert_eq!(listing(&tree), listing(&m));
    let walked = mount.fs.inode_count();
    assert!(walked >= entries, "{walked} live inodes after walking {entries} entries");
    assert!(mount.fs.cached_entries() <= cap, "{} cached entries", mount.fs.cached_entries());

    fs::write("/proc/sys/vm/drop_caches", "2").expect("writing /proc/sys/vm/drop_caches (needs root)");
    // FORGETs are queued by the kernel and served by the workers: give them a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while mount.fs.inode_count() > 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = mount.fs.inode_count();
    assert!(left <= 10, "{left} of {walked} inodes still live after drop_caches");
    assert!(mount.fs.cached_listings() <= 2, "{} listings cached", mount.fs.cached_listings());

    // Everything is found again, under new numbers, with the same contents and attributes.
    sh(&format!("diff -r --no-dereference {} {}", q(&tree), q(&m)));
    assert_eq!(listing(&tree), listing(&m));
    assert_eq!(fs::read_to_string(m.join("many/d07/f042")).unwrap(), "7/42\n");
    assert_eq!(sh(&format!("stat -c '%s %h %F' {}", q(&m.join("share")))).trim(), "0 3 directory");
    assert!(mount.fs.cached_entries() <= cap);
}
