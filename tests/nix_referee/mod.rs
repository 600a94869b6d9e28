//! The real Nix as referee, always under a configuration these tests write themselves.
//!
//! Debian's Nix 2.8 has `build-users-group = nixbld` compiled in, but nothing creates that
//! group on a machine where nobody set up a Nix daemon, so `nix-build` failed on a fresh
//! machine and passed on one changed by hand. The machine's `/etc/nix/nix.conf`, the user's
//! `~/.config/nix/nix.conf` and `NIX_CONFIG` are therefore never read: every referee call gets
//! the same settings on every machine, as root or as a user with a Nix daemon.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// What the referee runs with. `build-users-group` empty: build as the calling user (no
/// `nixbld` group needed). No substituters: never reach for the network, never fill or read a
/// narinfo disk cache. No sandbox: the test derivations use the host's /bin/sh.
pub const NIX_CONF: &str = "\
build-users-group =
substituters =
sandbox = false
experimental-features = nix-command
";

/// The directory holding our `nix.conf` (also Nix's cache home), written once per test process.
fn conf_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nix-referee");
        std::fs::create_dir_all(dir.join("cache")).expect("creating the referee's config dir");
        // Test processes of one checkout may run at once (two `cargo test` runs side by side):
        // write aside, then rename into place.
        let tmp = dir.join(format!("nix.conf.{}", std::process::id()));
        std::fs::write(&tmp, NIX_CONF).expect("writing the referee's nix.conf");
        std::fs::rename(&tmp, dir.join("nix.conf")).expect("installing the referee's nix.conf");
        dir
    })
}

/// A Nix command (`nix-store`, `nix-build`, `nix`, ...) under the tests' configuration.
pub fn nix_command(program: &str) -> Command {
    let dir = conf_dir();
    let mut cmd = Command::new(program);
    cmd.env("NIX_CONF_DIR", dir)
        .env("NIX_USER_CONF_FILES", dir.join("nix.conf"))
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env_remove("NIX_CONFIG");
    cmd
}

/// Runs a Nix command and returns its stdout; a missing Nix or a failing call is a test
/// failure, never a skip.
pub fn nix(program: &str, args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let out = nix_command(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed (Debian package nix-bin): {e}"));
    assert!(out.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}
