//! Proves the vm-tests harness itself: a guest that fails is reported as failing, and (against
//! the reference virtiofsd from Debian's QEMU) a guest sees a shared directory exactly as the
//! host does, across a reboot.

use super::guest::{Guest, Virtiofsd, host_manifest, make_sample_tree};

#[test]
fn failing_guest_script_fails_the_run() {
    let r = Guest::without_device().try_run("echo before-failure; exit 3");
    assert_eq!(r.status, 3, "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "before-failure\n");
}

/// Against the reference virtiofsd (Debian's qemu-system-common ships one; VIRTIOFSD picks
/// another).
#[test]
fn guest_sees_reference_virtiofsd_share_as_host_does_across_reboot() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = tmp.path().join("tree");
    make_sample_tree(&tree);
    let expected = host_manifest(&tree);
    assert!(expected.lines().count() > 40, "sample tree too small:\n{expected}");

    let daemon = Virtiofsd::start(&tree, &tmp.path().join("vfs.sock"));
    let out = Guest::with_socket(&daemon.socket).boots(2).run("manifest /nix/store");

    let expected_both = format!("@@boot 1@@\n{expected}@@boot 2@@\n{expected}");
    assert_eq!(out, expected_both);
}
