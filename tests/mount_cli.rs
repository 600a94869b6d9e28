//! `tvix-store mount` as a command: clear errors for bad mount points, clean unmount on
//! SIGINT/SIGTERM and when the process dies. Needs root (or fusermount3) and /dev/fuse.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::mount_common::*;

/// A running `tvix-store mount`; killed and unmounted on drop.
struct MountProcess {
    child: Child,
    path: std::path::PathBuf,
}

impl MountProcess {
    fn start(store_dir: &Path, path: &Path, extra: &[&str]) -> Self {
        let child = tvix_store_in(store_dir)
            .arg("mount")
            .arg(path)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut p = MountProcess { child, path: path.to_path_buf() };
        // Ready is what the mount says once it serves (after its unmount watcher started):
        // listed in mountinfo comes earlier, before fusermount has handed the session over.
        // A thread keeps draining stderr so the mount never blocks on a full pipe.
        let stderr = p.child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with("mounted the store on") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            let status = p.child.try_wait().unwrap();
            panic!("{} not served after 20 s (mount process: {status:?})", path.display());
        }
        assert!(is_mounted(path), "{} served but not in mountinfo", path.display());
        p
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "tvix-store mount did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for MountProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if is_mounted(&self.path) {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.path).stderr(Stdio::null()).status();
        }
    }
}

fn wait_unmounted(path: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while is_mounted(path) {
        assert!(Instant::now() < deadline, "{} still mounted after {within:?}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_mount_points_get_clear_errors() {
    require_tools(&["fusermount3"]);
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");

    let out = tvix_store_in(&store_dir).arg("mount").arg(dir.path().join("missing")).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mount point") && err.contains("missing") && err.contains("No such file"), "{err}");

    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let out = tvix_store_in(&store_dir).arg("mount").arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a directory"), "{err}");

    // Busy: something (our own first mount) is already mounted there.
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _first = MountProcess::start(&dir.path().join("store1"), &mnt, &[]);
    let out = tvix_store_in(&dir.path().join("store2")).arg("mount").arg(&mnt).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("busy"), "{err}");
}

#[test]
fn signals_unmount_cleanly() {
    require_tools(&["fusermount3"]);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut p = MountProcess::start(&dir.path().join("store"), &mnt, &["--list-root", "--threads", "3"]);
        assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0, "empty store lists nothing");
        p.signal(sig);
        let status = p.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "exit status after signal {sig}: {status}");
        wait_unmounted(&mnt, Duration::from_secs(1));
    }
}

#[test]
fn signal_to_the_whole_process_group_still_unmounts() {
    // Service managers signal every process of a unit: the fusermount3 helper dies with us.
    require_tools(&["fusermount3", "setsid"]);
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let child = Command::new("setsid")
        .arg(env!("CARGO_BIN_EXE_tvix-store"))
        .arg("mount")
        .arg(&mnt)
        .env("TVIX_STORE_DIR", dir.path().join("store"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut p = MountProcess { child, path: mnt.clone() };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_mounted(&mnt) {
        assert!(Instant::now() < deadline, "not mounted after 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    // setsid made the child a process group leader: signal the group.
    // SAFETY: kill(2) on the group we created.
    assert_eq!(unsafe { libc::kill(-(p.child.id() as i32), libc::SIGTERM) }, 0);
    p.wait_exit(Duration::from_secs(10));
    wait_unmounted(&mnt, Duration::from_secs(2));
}

/// The processes `pid` started that run `name`.
fn children_named(pid: u32, name: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
            if std::fs::read_to_string(format!("/proc/{child}/comm")).is_ok_and(|c| c.trim() == name) {
                found.push(child);
            }
        }
    }
    found
}

/// Kills a running mount with SIGKILL (its fusermount3 helper first, with `helper_too`) and
/// expects the mount point to be unmounted without anyone's help.
fn killed_mount_goes_away(helper_too: bool) {
    require_tools(&["fusermount3"]);
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut p = MountProcess::start(&dir.path().join("store"), &mnt, &[]);
    if helper_too {
        let helpers = children_named(p.child.id(), "fusermount3");
        assert_eq!(helpers.len(), 1, "one fusermount3 helper expected: {helpers:?}");
        // SAFETY: kill(2) of the helper our mount started.
        unsafe { libc::kill(helpers[0], libc::SIGKILL) };
    }
    p.signal(libc::SIGKILL);
    p.wait_exit(Duration::from_secs(5));
    wait_unmounted(&mnt, Duration::from_secs(10));
}

/// The auto_unmount helper, or else the mount's watcher, notices the dead session and
/// unmounts.
#[test]
fn killed_process_leaves_no_mount_behind() {
    killed_mount_goes_away(false);
}

/// fusermount's own auto-unmount gives up when it looks while the dying process still holds
/// the session (it wants ENOTCONN); the mount's watcher then unmounts. Here fusermount is
/// killed first, so only the watcher can.
#[test]
fn a_killed_mount_is_unmounted_by_its_watcher_when_fusermount_cannot() {
    killed_mount_goes_away(true);
}

#[test]
fn missing_fuse_device_gets_a_clear_error() {
    // A private mount namespace whose /dev lacks /dev/fuse.
    require_tools(&["unshare"]);
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs none /dev && exec \"$0\" mount \"$1\"",
        ])
        .arg(env!("CARGO_BIN_EXE_tvix-store"))
        .arg(&mnt)
        .env("TVIX_STORE_DIR", dir.path().join("store"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FUSE is unavailable") && err.contains("/dev/fuse"), "{err}");
    assert!(!is_mounted(&mnt));
}

/// A bad composition file stops the command before anything is opened or mounted, with one
/// line naming the entry at fault.
#[test]
fn a_bad_composition_file_is_one_line_naming_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let cases = [
        (
            "[blobservices.root]\ntype = \"cache\"\nnear = \"a\"\nfar = \"root\"\n[blobservices.a]\ntype = \"cache\"\nnear = \"root\"\nfar = \"root\"\n",
            "cycle: ",
        ),
        (
            "[pathinfoservices.root]\ntype = \"cache\"\nnear = \"local\"\nfar = \"remote\"\n[pathinfoservices.local]\nurl = \"memory://\"\n",
            "pathinfoservices.root: far = \"remote\" names no entry",
        ),
        ("[directoryservices.root]\nurl = \"ftp://x\"\n", "directoryservices.root: invalid store URL \"ftp://x\""),
        ("[blobservices.root]\ntype = \"tiered\"\n", "blobservices.root: unknown type \"tiered\""),
    ];
    for (text, want) in cases {
        let config = dir.path().join("store.toml");
        std::fs::write(&config, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tvix-store"))
            .env("TVIX_STORE_DIR", dir.path().join("store"))
            .args(["mount", "--store-config"])
            .arg(&config)
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{text:?}: {err}");
        assert!(lines[0].contains(want) && lines[0].contains("store.toml"), "{text:?}: {err}");
        assert!(!dir.path().join("store").exists(), "{text:?}: the default store was opened");
    }
}
