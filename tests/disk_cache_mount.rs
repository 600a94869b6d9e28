//! `--cache-dir` with real processes: a remount reads everything from the warm disk cache with no
//! blob request reaching the daemon (counted on its `--metrics-listen` endpoint), also through a
//! composition file's `type = "disk-cache"`; two mounts share one small cache directory at once;
//! unusable cache directories stop a command at start with one line.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::cache_common::MountProcess;
use crate::mount_common;
use crate::nar_common::{MEMORY_SERVICES, free_port, sample, scrape, tvix_store, wait_for_path};

/// A `tvix-store daemon` on memory services, serving on a unix socket with metrics; killed on
/// drop.
struct CountingDaemon {
    child: Child,
    addr: String,
    metrics: u16,
}

impl CountingDaemon {
    fn start(dir: &Path) -> Self {
        let socket = dir.join("daemon.sock");
        let metrics = free_port();
        let child = tvix_store()
            .args(["daemon", "--metrics-listen", &format!("127.0.0.1:{metrics}"), "-l"])
            .arg(&socket)
            .args(MEMORY_SERVICES)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_path(&socket, std::time::Duration::from_secs(20));
        CountingDaemon { child, addr: format!("grpc+unix://{}", socket.display()), metrics }
    }

    /// The three service flags pointing at this daemon.
    fn flags(&self) -> Vec<String> {
        ["--blob-service-addr", "--directory-service-addr", "--path-info-service-addr"]
            .iter()
            .flat_map(|flag| [flag.to_string(), self.addr.clone()])
            .collect()
    }

    /// How many calls of `method` (e.g. `castore.v1.BlobService/Read`) the daemon answered so far.
    fn calls(&self, method: &str) -> f64 {
        let text = scrape(self.metrics);
        sample(&text, "tvix_grpc_requests_total", &[&format!("method=\"/tvix.{method}\"")]).unwrap_or(0.0)
    }

    /// Imports `src` into the daemon; its store path.
    fn import(&self, src: &Path) -> String {
        let out = tvix_store().arg("import").args(self.flags()).arg(src).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

impl Drop for CountingDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads every file and symlink below `src` through the same path in `mounted`, checking that
/// each matches; the number of files read.
fn read_and_compare(src: &Path, mounted: &Path) -> usize {
    let mut files = 0;
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let there = mounted.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            assert_eq!(std::fs::read_link(entry.path()).unwrap(), std::fs::read_link(&there).unwrap());
        } else if kind.is_dir() {
            files += read_and_compare(&entry.path(), &there);
        } else {
            let want = std::fs::read(entry.path()).unwrap();
            let got = std::fs::read(&there).unwrap_or_else(|e| panic!("{}: {e}", there.display()));
            assert!(got == want, "{} differs in the mount", there.display());
            files += 1;
        }
    }
    files
}

fn mount(daemon: &CountingDaemon, cache: &Path, size: &str, mnt: &Path) -> MountProcess {
    std::fs::create_dir_all(mnt).unwrap();
    let mut command = tvix_store();
    command.arg("mount").args(daemon.flags()).arg("--cache-dir").arg(cache).args(["--cache-size", size]).arg(mnt);
    MountProcess::start(command, mnt)
}

/// Bytes the cache's object files take on disk.
fn cache_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for kind in ["chunks", "lists", "dirs"] {
        let Ok(fan_outs) = std::fs::read_dir(dir.join(kind)) else { continue };
        for fan_out in fan_outs {
            for file in std::fs::read_dir(fan_out.unwrap().path()).unwrap() {
                total += file.unwrap().metadata().map(|m| m.blocks() * 512).unwrap_or(0);
            }
        }
    }
    total
}

#[test]
fn a_remount_reads_a_warm_cache_without_blob_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = CountingDaemon::start(tmp.path());
    let src = tmp.path().join("tree");
    mount_common::make_tree(&src, 11);
    let store_path = daemon.import(&src);
    let basename = store_path.trim_start_matches("/nix/store/").to_string();
    let cache = tmp.path().join("cache");
    let mnt = tmp.path().join("mnt");

    let cold = mount(&daemon, &cache, "1G", &mnt);
    let files = read_and_compare(&src, &mnt.join(&basename));
    assert!(files > 200, "only {files} files read");
    drop(cold);
    let reads = daemon.calls("castore.v1.BlobService/Read");
    let stats = daemon.calls("castore.v1.BlobService/Stat");
    let gets = daemon.calls("castore.v1.DirectoryService/Get");
    let path_infos = daemon.calls("store.v1.PathInfoService/Get");
    assert!(reads > 0.0, "the cold mount read no blob from the daemon");
    assert!(path_infos > 0.0, "the cold mount looked up no PathInfo at the daemon");

    // A new process on the warm cache.
    let warm = mount(&daemon, &cache, "1G", &mnt);
    assert_eq!(read_and_compare(&src, &mnt.join(&basename)), files);
    drop(warm);
    assert_eq!(daemon.calls("castore.v1.BlobService/Read"), reads, "the remount read blobs from the daemon");
    assert_eq!(daemon.calls("castore.v1.BlobService/Stat"), stats, "the remount asked the daemon for chunk lists");
    assert_eq!(daemon.calls("castore.v1.DirectoryService/Get"), gets, "the remount read directories from the daemon");
    assert_eq!(
        daemon.calls("store.v1.PathInfoService/Get"),
        path_infos,
        "the remount looked up PathInfo at the daemon"
    );

    // The same cache as a composition file's disk-cache entry, read by another command.
    let config = tmp.path().join("store.toml");
    let (dir, addr) = (cache.display(), &daemon.addr);
    std::fs::write(
        &config,
        format!(
            "[blobservices.root]\ntype = \"disk-cache\"\ndir = \"{dir}\"\nsize = \"1G\"\nfar = \"central\"\n\
             [blobservices.central]\nurl = \"{addr}\"\n\
             [directoryservices.root]\ntype = \"disk-cache\"\ndir = \"{dir}\"\nfar = \"central\"\n\
             [directoryservices.central]\nurl = \"{addr}\"\n\
             [pathinfoservices.root]\ntype = \"disk-cache\"\ndir = \"{dir}\"\nfar = \"central\"\n\
             [pathinfoservices.central]\nurl = \"{addr}\"\n"
        ),
    )
    .unwrap();
    let out = tvix_store().args(["dump", "--store-config"]).arg(&config).arg(&store_path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(daemon.calls("castore.v1.BlobService/Read"), reads, "the dump through the disk-cache entry read blobs");
    assert_eq!(
        daemon.calls("store.v1.PathInfoService/Get"),
        path_infos,
        "the dump through the disk-cache entry asked for PathInfo"
    );
    let direct = tvix_store().arg("dump").args(daemon.flags()).arg(&store_path).output().unwrap();
    assert!(direct.status.success() && out.stdout == direct.stdout, "the NAR through the cache differs");
    let reads_direct = daemon.calls("castore.v1.BlobService/Read");
    assert!(reads_direct > reads, "the direct dump did not count");
}

#[test]
fn two_mounts_share_one_small_cache_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = CountingDaemon::start(tmp.path());
    let src = tmp.path().join("tree");
    // About 5.4 MB of files: more than twice the bound, so both mounts evict as they read.
    mount_common::make_tree(&src, 12);
    let store_path = daemon.import(&src);
    let basename = store_path.trim_start_matches("/nix/store/").to_string();
    let cache = tmp.path().join("cache");
    const BOUND: u64 = 2 << 20;
    let mounts: Vec<(PathBuf, MountProcess)> = (0..2)
        .map(|i| {
            let mnt = tmp.path().join(format!("mnt{i}"));
            let process = mount(&daemon, &cache, "2M", &mnt);
            (mnt, process)
        })
        .collect();
    std::thread::scope(|scope| {
        for (mnt, _) in &mounts {
            let (src, at) = (&src, mnt.join(&basename));
            scope.spawn(move || {
                for _ in 0..3 {
                    read_and_compare(src, &at);
                }
            });
        }
    });
    drop(mounts);
    // Each process sees the other's files at its next scan, due after an eighth of the bound.
    let used = cache_bytes(&cache);
    assert!(used <= BOUND + BOUND / 2, "{used} bytes cached, bound {BOUND}");
    assert!(used > 0);
}

/// `tvix-store path-info` with `--cache-dir DIR` and memory services: its stderr when it fails.
fn refused(dir: &Path, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tvix-store"))
        .arg("path-info")
        .args(MEMORY_SERVICES)
        .arg("--cache-dir")
        .arg(dir)
        .args(extra)
        .arg("/nix/store/00000000000000000000000000000000-x")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{} was accepted as a cache directory", dir.display());
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    // Our own errors are one line; clap's (a malformed flag value) add a hint below.
    assert!(!extra.is_empty() || stderr.lines().count() == 1, "{stderr}");
    stderr
}

#[test]
fn unusable_cache_directories_stop_a_command_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(refused(&file, &[]).contains("not a directory"));
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("data"), b"someone's").unwrap();
    assert!(refused(&foreign, &[]).contains("not a disk cache"));
    assert!(refused(&tmp.path().join("new"), &["--cache-size", "0"]).contains("must be more than zero"));

    // Unwritable: a read-only file system as root (permissions do not stop root), a
    // directory without write permission otherwise.
    let read_only = tmp.path().join("ro");
    std::fs::create_dir(&read_only).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "ro", "tmpfs"]).arg(&read_only).status().unwrap();
        assert!(ok.success(), "cannot mount a read-only tmpfs");
    } else {
        std::fs::set_permissions(&read_only, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    }
    let message = refused(&read_only, &[]);
    if root {
        let _ = Command::new("umount").arg(&read_only).status();
    }
    assert!(message.contains("cannot write there"), "{message}");

    let out = tvix_store()
        .arg("path-info")
        .args(MEMORY_SERVICES)
        .args(["--cache-size", "1G", "/nix/store/00000000000000000000000000000000-x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cache-size: bounds the disk cache of --cache-dir"));
}
