//! `tvix-store virtiofs` serving real QEMU guests (Debian kernel, busybox initramfs, TCG unless
//! VM_TESTS_ACCEL=kvm): what the guest sees equals what was imported, store executables run,
//! paths imported while the guest runs appear, parallel readers agree, and the daemon outlives
//! guest reboots and reconnects.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::time::Duration;

use super::guest::{
    Guest, host_manifest, import, make_sample_tree, prepare, pseudo_random_bytes, store_basename_of, wait_for_text,
};
use crate::vm_common::TvixVirtiofs;

/// A tree of many small files in nested directories, as a package's `share/` looks.
fn make_wide_tree(root: &Path, files: usize) {
    for i in 0..files {
        let p = root.join(format!("d{:02}/sub{}/f{i:04}.txt", i % 17, i % 3));
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, pseudo_random_bytes(i as u64 + 7, 100 + (i * 37) % 5000)).expect("write");
    }
}

/// The guest's manifests of several store paths, one block per path, in the same format as
/// [`host_manifest`] (see guest::MANIFEST_SCRIPT).
fn manifests_script(basenames: &[&str]) -> String {
    basenames.iter().map(|b| format!("echo '## {b}'; manifest /nix/store/{b}\n")).collect()
}

fn expected_manifests(items: &[(&str, &Path)]) -> String {
    items.iter().map(|(b, dir)| format!("## {b}\n{}", host_manifest(dir))).collect()
}

#[test]
fn guest_sees_imported_store_paths_exactly_as_the_host() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let sample = tmp.path().join("sample");
    let wide = tmp.path().join("wide");
    make_sample_tree(&sample);
    make_wide_tree(&wide, 300);
    let a = import(&store, &sample);
    let b = import(&store, &wide);

    let daemon = TvixVirtiofs::start(&store, &tmp.path().join("vfs.sock"), &["--list-root"]);
    let script = format!("ls /nix/store\n{}", manifests_script(&[&a, &b]));
    let out = Guest::with_socket(&daemon.socket).run(&script);

    let mut listing = [a.clone(), b.clone()];
    listing.sort();
    let expected = format!("{}\n{}", listing.join("\n"), expected_manifests(&[(&a, &sample), (&b, &wide)]));
    assert_eq!(out, expected);
}

#[test]
fn guest_runs_a_static_busybox_out_of_the_store() {
    let prepared = prepare();
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let pkg = tmp.path().join("busybox");
    fs::create_dir_all(pkg.join("bin")).expect("mkdir");
    fs::copy(&prepared.busybox, pkg.join("bin/busybox")).expect("copy busybox");
    fs::set_permissions(pkg.join("bin/busybox"), fs::Permissions::from_mode(0o755)).expect("chmod");
    symlink("busybox", pkg.join("bin/sh")).expect("symlink");
    let bb = import(&store, &pkg);

    let daemon = TvixVirtiofs::start(&store, &tmp.path().join("vfs.sock"), &[]);
    // The guest's own busybox lives at /bin/busybox; /proc/self/exe proves which one ran.
    let script = format!(
        "/nix/store/{bb}/bin/busybox sh -c 'echo running $(readlink /proc/$$/exe)'\n\
         /nix/store/{bb}/bin/sh -c 'echo via symlink; readlink /proc/$$/exe'\n\
         /nix/store/{bb}/bin/busybox sha256sum /nix/store/{bb}/bin/busybox | cut -d' ' -f1\n"
    );
    let out = Guest::with_socket(&daemon.socket).run(&script);

    let sha = host_manifest(&pkg)
        .lines()
        .find(|l| l.starts_with("f ./bin/busybox "))
        .and_then(|l| l.split(' ').nth(4))
        .expect("host manifest has the busybox line")
        .to_owned();
    let exe = format!("/nix/store/{bb}/bin/busybox");
    assert_eq!(out, format!("running {exe}\nvia symlink\n{exe}\n{sha}\n"));
}

#[test]
fn path_imported_while_the_guest_runs_appears_without_remount() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let early = tmp.path().join("early");
    make_sample_tree(&early);
    let early_b = import(&store, &early);
    let late = tmp.path().join("late");
    fs::create_dir_all(late.join("etc")).expect("mkdir");
    fs::write(late.join("etc/greeting"), "imported while the guest was up\n").expect("write");
    let late_b = store_basename_of(&late);

    // Without --list-root: the new path is found by lookup, after the root's short negative
    // entry for it has expired.
    let daemon = TvixVirtiofs::start(&store, &tmp.path().join("vfs.sock"), &[]);
    let serial = tmp.path().join("serial.log");
    let script = format!(
        "ls /nix/store/{early_b}/README >/dev/null || exit 10\n\
         test -e /nix/store/{late_b} && {{ echo 'late path visible too early'; exit 11; }}\n\
         echo VMTEST-GUEST-READY > /dev/ttyS0\n\
         i=0\n\
         while ! cat /nix/store/{late_b}/etc/greeting 2>/dev/null; do\n\
           i=$((i+1)); [ $i -gt 600 ] && {{ echo 'late path never appeared'; exit 12; }}\n\
           sleep 0.2\n\
         done\n"
    );
    let importer = {
        let (serial, store, late) = (serial.clone(), store.clone(), late.clone());
        std::thread::spawn(move || {
            wait_for_text(&serial, "VMTEST-GUEST-READY", Duration::from_secs(240));
            import(&store, &late)
        })
    };
    let out = Guest::with_socket(&daemon.socket).serial_log(&serial).run(&script);
    let imported = importer.join().expect("importer thread");
    assert_eq!(imported, late_b);
    assert_eq!(out, "imported while the guest was up\n");
}

#[test]
fn many_parallel_readers_in_the_guest_agree_with_the_host() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let tree = tmp.path().join("tree");
    make_sample_tree(&tree);
    make_wide_tree(&tree.join("wide"), 200);
    fs::write(tree.join("big.bin"), pseudo_random_bytes(99, 8 * 1024 * 1024 + 5)).expect("write");
    let b = import(&store, &tree);

    let daemon = TvixVirtiofs::start(&store, &tmp.path().join("vfs.sock"), &[]);
    // 12 readers walk and checksum the whole path at once; each writes its own manifest.
    let script = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do manifest /nix/store/{b} > /tmp/m.$i & done\n\
         wait\n\
         cat /tmp/m.1\n\
         for i in 2 3 4 5 6 7 8 9 10 11 12; do cmp /tmp/m.1 /tmp/m.$i || echo \"reader $i differs\"; done\n"
    );
    let out = Guest::with_socket(&daemon.socket).mem_mb(768).run(&script);
    assert_eq!(out, host_manifest(&tree));
}

#[test]
fn daemon_serves_guest_reboots_and_reconnects_then_exits_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let tree = tmp.path().join("tree");
    make_sample_tree(&tree);
    let b = import(&store, &tree);
    let expected = host_manifest(&tree);

    let mut daemon = TvixVirtiofs::start(&store, &tmp.path().join("vfs.sock"), &[]);
    let script = manifests_script(&[&b]);
    let block = format!("## {b}\n{expected}");

    // Two boots in one QEMU process: the guest reboots and mounts again on the same connection.
    let out = Guest::with_socket(&daemon.socket).boots(2).run(&script);
    assert_eq!(out, format!("@@boot 1@@\n{block}@@boot 2@@\n{block}"));
    daemon.assert_running("after a guest reboot");

    // A new QEMU process: the old connection is gone, the daemon accepts the next one.
    let out = Guest::with_socket(&daemon.socket).run(&script);
    assert_eq!(out, block);
    daemon.assert_running("after a VMM reconnect");

    let socket = daemon.socket.clone();
    let status = daemon.terminate();
    assert!(status.success(), "SIGTERM must end the daemon cleanly, got {status}");
    assert!(!socket.exists(), "the socket must be removed on exit");
}

#[test]
fn daemon_survives_a_guest_that_dies_in_the_middle_of_reads() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let tree = tmp.path().join("tree");
    make_sample_tree(&tree);
    let b = import(&store, &tree);
    let mut daemon = TvixVirtiofs::start(&store, &tmp.path().join("vfs.sock"), &[]);

    // Readers loop over the largest file while the guest powers off without unmounting, so
    // the VMM goes away with requests in flight.
    let script = format!(
        "for i in 1 2 3 4; do (while :; do cat /nix/store/{b}/lib/libbig.so > /dev/null; done) & done\n\
         sleep 3\n\
         echo o > /proc/sysrq-trigger\n\
         sleep 30\n"
    );
    let r = Guest::with_socket(&daemon.socket).timeout_secs(240).try_run(&script);
    assert!(
        r.status != 0 && r.stderr.contains("results"),
        "the guest was meant to die without a result; status {}, stderr:\n{}",
        r.status,
        r.stderr
    );
    daemon.assert_running("after its guest died mid-read");

    let out = Guest::with_socket(&daemon.socket).run(&manifests_script(&[&b]));
    assert_eq!(out, format!("## {b}\n{}", host_manifest(&tree)));
    daemon.assert_running("after serving the next guest");
}
