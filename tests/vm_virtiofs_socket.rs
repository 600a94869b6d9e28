//! The daemon's socket, without a VM: created 0600 unless `--socket-mode` widens it, a live
//! daemon's socket is not stolen, a stale one is replaced, and SIGINT/SIGTERM end the daemon
//! cleanly, removing the socket.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::process::Command;

use crate::vm_common::{self, TvixVirtiofs, tvix_store_bin};

fn mode_of(path: &std::path::Path) -> u32 {
    let meta = fs::symlink_metadata(path).expect("socket exists");
    assert!(meta.file_type().is_socket(), "{} is not a socket", path.display());
    meta.permissions().mode() & 0o777
}

#[test]
fn socket_is_owner_only_by_default_and_removed_on_sigterm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let socket = tmp.path().join("vfs.sock");
    let mut daemon = TvixVirtiofs::start(&tmp.path().join("store"), &socket, &[]);
    assert_eq!(mode_of(&socket), 0o600);
    daemon.assert_running("after start");
    let status = daemon.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(!socket.exists(), "socket left behind");
    // Nothing else (staging directories) left next to it.
    let left: Vec<_> = fs::read_dir(tmp.path()).expect("readdir").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("store")]);
}

#[test]
fn socket_mode_option_widens_the_socket() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let daemon =
        TvixVirtiofs::start(&tmp.path().join("store"), &tmp.path().join("vfs.sock"), &["--socket-mode", "0660"]);
    assert_eq!(mode_of(&daemon.socket), 0o660);
    drop(daemon);
}

#[test]
fn bad_socket_mode_is_rejected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(tvix_store_bin())
        .arg("virtiofs")
        .arg(tmp.path().join("vfs.sock"))
        .args(["--socket-mode", "999"])
        .env("TVIX_STORE_DIR", tmp.path().join("store"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("octal"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!tmp.path().join("vfs.sock").exists());
}

#[test]
fn live_socket_is_not_stolen_but_a_stale_one_is_replaced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let socket = tmp.path().join("vfs.sock");
    let live = UnixListener::bind(&socket).expect("bind");
    let out = Command::new(tvix_store_bin())
        .arg("virtiofs")
        .arg(&socket)
        .env("TVIX_STORE_DIR", tmp.path().join("store"))
        .output()
        .expect("run");
    assert!(!out.status.success(), "a second daemon must not take over a live socket");
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(socket.exists(), "the live socket must stay");

    // Closing the listener leaves a stale socket file behind.
    drop(live);
    let mut daemon = TvixVirtiofs::start(&tmp.path().join("store"), &socket, &[]);
    assert_eq!(mode_of(&socket), 0o600);
    daemon.assert_running("after replacing a stale socket");
}

#[test]
fn sigint_ends_the_daemon_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let socket = tmp.path().join("vfs.sock");
    let mut child = Command::new(tvix_store_bin())
        .arg("virtiofs")
        .arg(&socket)
        .env("TVIX_STORE_DIR", tmp.path().join("store"))
        .spawn()
        .expect("spawn");
    vm_common::wait_for_socket(&socket, std::time::Duration::from_secs(30));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit status after SIGINT: {status}");
    assert!(!socket.exists());
}
