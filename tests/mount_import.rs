//! `tvix-store import` + `tvix-store mount` on the default store, and through a daemon: the
//! mount equals the imported trees, paths imported while mounted appear, and a daemon killed
//! under a mount gives EIO within seconds and works again after a restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::mount_common::*;

fn import(store_dir: &Path, path: &Path) -> String {
    let out = tvix_store_in(store_dir).arg("import").arg(path).output().unwrap();
    assert!(out.status.success(), "import {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let base = line.strip_prefix("/nix/store/").unwrap_or_else(|| panic!("import printed {line:?}"));
    base.to_string()
}

/// A child process killed on drop; for a mount, also unmounted.
struct Proc {
    child: Child,
    mountpoint: Option<PathBuf>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(m) = &self.mountpoint
            && is_mounted(m)
        {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(m).stderr(Stdio::null()).status();
        }
    }
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mount(store_dir: &Path, mnt: &Path, args: &[&str]) -> Proc {
    let child = tvix_store_in(store_dir).arg("mount").arg(mnt).args(args).stderr(Stdio::null()).spawn().unwrap();
    let p = Proc { child, mountpoint: Some(mnt.to_path_buf()) };
    wait_for("mount", Duration::from_secs(20), || is_mounted(mnt));
    p
}

#[test]
fn imported_trees_mount_equal_and_late_imports_appear() {
    require_tools(&["diff", "find", "fusermount3", "getfattr"]);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let tree = dir.path().join("hello-2.12");
    make_tree(&tree, 11);
    let sp = import(&store, &tree);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _m = mount(&store, &mnt, &["--list-root", "--show-xattr"]);

    let m = mnt.join(&sp);
    sh(&format!("diff -r --no-dereference {} {}", q(&tree), q(&m)));
    assert_eq!(listing(&tree), listing(&m));
    assert_eq!(sh(&q(&m.join("bin/hello"))), "hello from the store 11\n");
    assert!(
        sh(&format!("getfattr -d -m - {}", q(&m.join("bin/hello")))).contains("user.tvix.castore.blob.digest=\"b3:")
    );
    assert_eq!(sh(&format!("ls {}", q(&mnt))).trim(), sp);

    // The mount owns the default store and serves it on its socket: import works meanwhile.
    let late = dir.path().join("late-1");
    make_tree(&late, 12);
    let late_sp = import(&store, &late);
    wait_for("late path", Duration::from_secs(5), || mnt.join(&late_sp).join("bin/hello").exists());
    sh(&format!("diff -r --no-dereference {} {}", q(&late), q(&mnt.join(&late_sp))));
}

#[test]
fn daemon_killed_under_the_mount_gives_eio_and_recovers() {
    require_tools(&["fusermount3"]);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let tree = dir.path().join("pkg");
    make_tree(&tree, 13);
    let sp = import(&store, &tree);
    let sock = dir.path().join("d.sock");
    let start_daemon = || {
        let child = tvix_store_in(&store).arg("daemon").arg("-l").arg(&sock).stderr(Stdio::null()).spawn().unwrap();
        let p = Proc { child, mountpoint: None };
        wait_for("daemon socket", Duration::from_secs(20), || std::os::unix::net::UnixStream::connect(&sock).is_ok());
        p
    };
    let mut daemon = start_daemon();
    let addr = format!("grpc+unix://{}", sock.display());
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _m = mount(
        dir.path(),
        &mnt,
        &[
            "--blob-service-addr",
            &addr,
            "--directory-service-addr",
            &addr,
            "--path-info-service-addr",
            &addr,
            "--timeout",
            "3",
        ],
    );
    let m = mnt.join(&sp);
    assert_eq!(
        std::fs::read(m.join("share/doc/README")).unwrap(),
        std::fs::read(tree.join("share/doc/README")).unwrap()
    );

    // Kill the daemon: reads of content not yet cached fail with EIO, quickly.
    let _ = daemon.child.kill();
    let _ = daemon.child.wait();
    let started = Instant::now();
    let e = std::fs::read(m.join("share/big.bin")).expect_err("read succeeded with the daemon dead");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(started.elapsed() < Duration::from_secs(8), "EIO took {:?}", started.elapsed());

    // Restart it: the same reads work again.
    daemon = start_daemon();
    wait_for("reads after daemon restart", Duration::from_secs(10), || std::fs::read(m.join("share/big.bin")).is_ok());
    assert_eq!(std::fs::read(m.join("share/big.bin")).unwrap(), std::fs::read(tree.join("share/big.bin")).unwrap());

    // A daemon that hangs (stopped, its socket still accepting) gives EIO after the timeout.
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(daemon.child.id() as i32, libc::SIGSTOP) }, 0);
    // The signal is delivered asynchronously: a read before the daemon has stopped may still be
    // answered.
    let pid = daemon.child.id();
    wait_for("the daemon to stop", Duration::from_secs(10), || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()) == Some('T')
    });
    let started = Instant::now();
    let e = std::fs::read(m.join("bin/data-exe")).expect_err("read succeeded with the daemon stopped");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(started.elapsed() < Duration::from_secs(8), "EIO took {:?}", started.elapsed());
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(daemon.child.id() as i32, libc::SIGCONT) }, 0);
    wait_for("reads after SIGCONT", Duration::from_secs(10), || std::fs::read(m.join("bin/data-exe")).is_ok());
    assert_eq!(std::fs::read(m.join("bin/data-exe")).unwrap(), std::fs::read(tree.join("bin/data-exe")).unwrap());
    drop(daemon);
}

/// The usual setup: a daemon owns the default store (as under systemd), and a mount started
/// beside it uses the daemon's socket at once instead of waiting for the store lock. Imports
/// through either show up in the mount.
#[test]
fn mount_beside_a_daemon_on_the_default_store_uses_its_socket() {
    require_tools(&["diff", "fusermount3"]);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let first = dir.path().join("first-1");
    make_tree(&first, 21);
    let first_sp = import(&store, &first);

    let daemon_child = tvix_store_in(&store).arg("daemon").stderr(Stdio::null()).spawn().unwrap();
    let _daemon = Proc { child: daemon_child, mountpoint: None };
    let socket = store.join("daemon.sock");
    wait_for("daemon socket", Duration::from_secs(20), || std::os::unix::net::UnixStream::connect(&socket).is_ok());

    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let started = Instant::now();
    let mut m = mount(&store, &mnt, &["--list-root"]);
    // Waiting for the lock would never end while the daemon runs; "at once" leaves room for a
    // loaded machine, not for a wait.
    assert!(started.elapsed() < Duration::from_secs(15), "mount took {:?}", started.elapsed());
    assert!(m.child.try_wait().unwrap().is_none(), "the mount exited");
    sh(&format!("diff -r --no-dereference {} {}", q(&first), q(&mnt.join(&first_sp))));

    // An import (it talks to the daemon, the store's owner) shows up in the mount.
    let late = dir.path().join("late-2");
    make_tree(&late, 22);
    let late_sp = import(&store, &late);
    wait_for("late path", Duration::from_secs(5), || mnt.join(&late_sp).join("bin/hello").exists());
    sh(&format!("diff -r --no-dereference {} {}", q(&late), q(&mnt.join(&late_sp))));
    // The daemon still serves the store: the mount attached to it and took nothing over.
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok(), "the daemon's socket is gone");
    let _ = m.child.kill();
    let _ = m.child.wait();
}

/// A mount whose services come from a composition file: blobs and directories through a local
/// cache in front of a daemon, PathInfo from the daemon.
#[test]
fn mount_through_a_composition_file_reads_through_its_cache() {
    require_tools(&["diff", "fusermount3"]);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let tree = dir.path().join("cached-1");
    make_tree(&tree, 31);
    let sp = import(&store, &tree);
    let sock = dir.path().join("d.sock");
    let daemon_child = tvix_store_in(&store).arg("daemon").arg("-l").arg(&sock).stderr(Stdio::null()).spawn().unwrap();
    let _daemon = Proc { child: daemon_child, mountpoint: None };
    wait_for("daemon socket", Duration::from_secs(20), || std::os::unix::net::UnixStream::connect(&sock).is_ok());

    let cache = dir.path().join("cache");
    let config = dir.path().join("store.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[blobservices.root]
type = "cache"
near = "local"
far = "central"
[blobservices.local]
url = "objectstore+file://{cache}/blobs"
[blobservices.central]
url = "grpc+unix://{sock}"

[directoryservices.root]
type = "cache"
near = "local"
far = "central"
[directoryservices.local]
url = "redb://{cache}/directories.redb"
[directoryservices.central]
url = "grpc+unix://{sock}"

[pathinfoservices.root]
url = "grpc+unix://{sock}"
"#,
            cache = cache.display(),
            sock = sock.display()
        ),
    )
    .unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let config_arg = config.display().to_string();
    let _m = mount(dir.path(), &mnt, &["--store-config", &config_arg]);
    sh(&format!("diff -r --no-dereference {} {}", q(&tree), q(&mnt.join(&sp))));
    let cached = std::fs::read_dir(cache.join("blobs/chunks"))
        .unwrap()
        .flatten()
        .any(|fan_out| std::fs::read_dir(fan_out.path()).map(|mut files| files.next().is_some()).unwrap_or(false));
    assert!(cached, "reading through the mount left no chunk in the local cache");
}
