//! Shared helpers for the FUSE mount tests: generated source trees, in-process ingestion into
//! castore services, and mounts that are always unmounted on teardown.
//!
//! Missing tools make the tests panic: they never skip.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tvix_store::castore::blobservice::BlobService;
use tvix_store::castore::directoryservice::DirectoryService;
use tvix_store::castore::{B3Digest, Directory, Node, PathComponent, SymlinkTarget};
use tvix_store::fs::fuse::{self, MountOptions};
use tvix_store::fs::{Options, StoreFs};
use tvix_store::pathinfo::{PathInfo, PathInfoRootNodes, PathInfoService};
use tvix_store::storepath::StorePath;

/// Deterministic pseudo-random bytes (no compressible runs, so chunking sees real content).
pub fn data(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 3) as u8
        })
        .collect()
}

/// A `tvix-store` command on the embedded default store in `store_dir`, with the service
/// address variables of the caller's environment removed.
pub fn tvix_store_in(store_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tvix-store"));
    cmd.env("TVIX_STORE_DIR", store_dir);
    for var in ["BLOB_SERVICE_ADDR", "DIRECTORY_SERVICE_ADDR", "PATH_INFO_SERVICE_ADDR"] {
        cmd.env_remove(var);
    }
    cmd
}

/// Writes a tree with the shapes a store path has: nested directories, an empty file and an
/// empty directory, executables (one a runnable script), symlinks (relative, absolute,
/// dangling, to a directory), odd names, and a file spanning many chunks.
pub fn make_tree(root: &Path, seed: u32) {
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("share/doc/deep/deeper")).unwrap();
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    let script = root.join("bin/hello");
    fs::write(&script, format!("#!/bin/sh\necho hello from the store {seed}\n")).unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let exe_data = root.join("bin/data-exe");
    fs::write(&exe_data, data(10_000, seed + 1)).unwrap();
    fs::set_permissions(&exe_data, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("share/doc/README"), format!("readme {seed}\n")).unwrap();
    fs::write(root.join("share/doc/deep/deeper/leaf"), data(1, seed + 2)).unwrap();
    fs::write(root.join("share/name with spaces & ünïcode"), b"odd name\n").unwrap();
    // Several chunks (CHUNK_MAX is 1 MiB), not a multiple of any power of two.
    fs::write(root.join("share/big.bin"), data(5 * 1024 * 1024 + 12_345, seed + 3)).unwrap();
    for i in 0..200 {
        fs::write(root.join(format!("share/doc/f{i:03}")), data(i * 37, seed + 100 + i as u32)).unwrap();
    }
    symlink("hello", root.join("bin/hello-link")).unwrap();
    symlink("../share/doc", root.join("bin/doc-dir-link")).unwrap();
    symlink("/etc/hostname", root.join("absolute-link")).unwrap();
    symlink("does/not/exist", root.join("dangling-link")).unwrap();
}

/// In-memory services plus the runtime that drives them.
pub struct Store {
    pub runtime: tokio::runtime::Runtime,
    pub blob: Arc<dyn BlobService>,
    pub directory: Arc<dyn DirectoryService>,
    pub path_info: Arc<dyn PathInfoService>,
}

impl Store {
    pub fn memory() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (blob, directory, path_info) = runtime.block_on(async {
            (
                tvix_store::compose::blob_service("memory://").unwrap(),
                tvix_store::compose::directory_service("memory://").unwrap(),
                tvix_store::compose::path_info_service("memory://").unwrap(),
            )
        });
        Self { runtime, blob, directory, path_info }
    }

    /// Stores the tree at `src` under a store path named `<hash>-<name>` (the hash derived
    /// from the content) and returns that store path.
    pub fn ingest(&self, src: &Path, name: &str) -> StorePath {
        self.runtime.block_on(async {
            let node = ingest_node(self.blob.as_ref(), self.directory.as_ref(), src).await;
            let mut hash_input = name.as_bytes().to_vec();
            hash_input.extend_from_slice(format!("{node:?}").as_bytes());
            let digest: [u8; 20] = B3Digest::of(&hash_input).as_bytes()[..20].try_into().unwrap();
            let store_path = StorePath::from_parts(digest, name).unwrap();
            self.path_info
                .put(PathInfo {
                    store_path: store_path.clone(),
                    node,
                    references: vec![],
                    nar_size: 0,
                    nar_sha256: [0; 32],
                    signatures: vec![],
                    deriver: None,
                    ca: None,
                })
                .await
                .unwrap();
            store_path
        })
    }
}

async fn ingest_node(blob: &dyn BlobService, dirs: &dyn DirectoryService, path: &Path) -> Node {
    let meta = fs::symlink_metadata(path).unwrap();
    if meta.file_type().is_symlink() {
        let target = fs::read_link(path).unwrap();
        Node::Symlink { target: SymlinkTarget::try_from(target.as_os_str().as_bytes()).unwrap() }
    } else if meta.is_file() {
        let content = fs::read(path).unwrap();
        let mut w = blob.open_write().await;
        w.write_all(&content).await.unwrap();
        let digest = w.close().await.unwrap();
        Node::File { digest, size: content.len() as u64, executable: meta.permissions().mode() & 0o100 != 0 }
    } else {
        let mut dir = Directory::new();
        for entry in fs::read_dir(path).unwrap() {
            let entry = entry.unwrap();
            let child = Box::pin(ingest_node(blob, dirs, &entry.path())).await;
            let name = PathComponent::try_from(Bytes::copy_from_slice(entry.file_name().as_bytes())).unwrap();
            dir.add(name, child).unwrap();
        }
        let size = dir.size();
        let digest = dirs.put(dir).await.unwrap();
        Node::Directory { digest, size }
    }
}

/// A mounted StoreFs; unmounted (and its session joined) when dropped, even on test failure.
pub struct Mount {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    unmounter: fuser::SessionUnmounter,
    worker: Option<JoinHandle<std::io::Result<()>>>,
    pub fs: Arc<StoreFs>,
}

impl Mount {
    pub fn new(store: &Store, options: Options, threads: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        fs::create_dir(&path).unwrap();
        let fs = Arc::new(StoreFs::new(
            store.blob.clone(),
            store.directory.clone(),
            Arc::new(PathInfoRootNodes::new(store.path_info.clone())),
            store.runtime.handle().clone(),
            options,
        ));
        let mut session = fuse::session(fs.clone(), &path, &MountOptions { threads, allow_other: false })
            .expect("mounting with FUSE (needs /dev/fuse and fusermount3)");
        let unmounter = session.unmount_callable();
        let worker = std::thread::spawn(move || session.run());
        let mount = Mount { path, _dir: dir, unmounter, worker: Some(worker), fs };
        mount.wait_mounted();
        mount
    }

    fn wait_mounted(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if is_mounted(&self.path) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not appear in /proc/self/mountinfo", self.path.display());
    }

    /// Path of a store path (or anything below) in the mount.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = self.unmounter.unmount();
        if is_mounted(&self.path) {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.path).stderr(Stdio::null()).status();
        }
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Whether `path` is a mount point.
pub fn is_mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = path.to_str().unwrap().replace(' ', "\\040");
    info.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Runs a shell command line; panics with its output if it fails.
pub fn sh(cmd: &str) -> String {
    let out = sh_output(cmd);
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a shell command line and returns its output, whatever its status.
pub fn sh_output(cmd: &str) -> Output {
    Command::new("bash").arg("-c").arg(cmd).output().expect("running bash")
}

/// Panics unless every tool is on PATH.
pub fn require_tools(tools: &[&str]) {
    for tool in tools {
        let found = sh_output(&format!("command -v {tool}")).status.success();
        assert!(found, "required tool `{tool}` is not installed (see the test's apt packages)");
    }
}

/// Shell-quotes a path.
pub fn q(p: &Path) -> String {
    format!("'{}'", p.to_str().unwrap().replace('\'', "'\\''"))
}

/// One line per entry below `root`: relative path, type, size (files), link target. Modes
/// are left out: the mount normalises them.
pub fn listing(root: &Path) -> String {
    sh(&format!("cd {} && find . -printf '%p %y %s %l\\n' | LC_ALL=C sort", q(root)))
        .lines()
        .map(|l| {
            // Directory sizes differ between filesystems: drop them.
            let mut parts: Vec<&str> = l.split(' ').collect();
            if parts.len() >= 3 && parts[parts.len() - 3] == "d" {
                let n = parts.len();
                parts[n - 2] = "-";
            }
            parts.join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
