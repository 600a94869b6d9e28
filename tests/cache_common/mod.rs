//! What the binary-cache tests share: a small closure built by Nix, Nix-made signing keys,
//! caches written by `nix copy`, and mount processes that clean up after themselves.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::nar_common::{nix, nix_add, write_file};

/// Two store paths made by Nix: `top` (built, input-addressed) refers to `dep` (added,
/// content-addressed). Made once per test process.
pub struct Closure {
    pub dep: String,
    pub top: String,
}

pub fn closure() -> &'static Closure {
    static BUILT: std::sync::OnceLock<Closure> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("substitute-dep-src");
        std::fs::create_dir_all(src.join("lib")).unwrap();
        write_file(&src.join("lib/data.bin"), 3_000_000, false);
        write_file(&src.join("run"), 100, true);
        std::os::unix::fs::symlink("lib/data.bin", src.join("link")).unwrap();
        let dep = nix_add(&src);
        let expr = dir.path().join("top.nix");
        std::fs::write(
            &expr,
            format!(
                r#"let dep = builtins.storePath "{dep}"; in derivation {{
  name = "substitute-top"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "/bin/mkdir $out; echo ${{dep}} > $out/dep; /bin/ln -s ${{dep}}/run $out/run" ];
}}"#
            ),
        )
        .unwrap();
        let top = String::from_utf8(nix("nix-build", &["--no-out-link".as_ref(), expr.as_os_str()])).unwrap();
        Closure { dep, top: top.trim().to_string() }
    })
}

/// A signing key pair made by Nix: (secret key file, public key).
pub fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let secret = dir.join(format!("{name}.sec"));
    let public = dir.join(format!("{name}.pub"));
    nix("nix-store", &["--generate-binary-cache-key".as_ref(), name.as_ref(), secret.as_os_str(), public.as_os_str()]);
    (secret, std::fs::read_to_string(&public).unwrap().trim().to_string())
}

/// A binary cache in `dir` holding the closure of `path`, written by `nix copy`.
pub fn nix_copy_to_cache(dir: &Path, path: &str, compression: &str, secret: &Path) {
    let to = format!("file://{}?compression={compression}&secret-key={}", dir.display(), secret.display());
    nix("nix", &["copy".as_ref(), "--to".as_ref(), to.as_ref(), path.as_ref()]);
}

/// The narinfo file of `path` in a cache directory.
pub fn narinfo_file(cache: &Path, path: &str) -> PathBuf {
    let basename = path.trim_start_matches("/nix/store/");
    cache.join(format!("{}.narinfo", &basename[..32]))
}

/// The 32-character hash part of a store path.
pub fn hash_of(path: &str) -> &str {
    &path.trim_start_matches("/nix/store/")[..32]
}

/// A `tvix-store mount` child, killed and unmounted on drop (also when a check failed).
pub struct MountProcess {
    pub child: Child,
    pub path: PathBuf,
}

impl MountProcess {
    /// Starts `command` (a `tvix-store mount … PATH`) and waits until `path` is mounted.
    pub fn start(mut command: Command, path: &Path) -> Self {
        command.stderr(Stdio::null());
        Self::start_as(command, path)
    }

    /// [`MountProcess::start`] with the mount's stderr in the file `log`.
    #[cfg(feature = "slow-tests")] // Only the S3 tests of the slow tier read a mount's log.
    pub fn start_logged(mut command: Command, path: &Path, log: &Path) -> Self {
        command.stderr(std::fs::File::create(log).unwrap());
        Self::start_as(command, path)
    }

    fn start_as(mut command: Command, path: &Path) -> Self {
        let child = command.spawn().unwrap();
        let mount = MountProcess { child, path: path.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(20);
        let shown = path.display().to_string();
        while !std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&shown) {
            assert!(Instant::now() < deadline, "mount at {shown} did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        mount
    }
}

impl Drop for MountProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.path).stderr(Stdio::null()).status();
    }
}

/// `diff -r` of a Nix store path and the same path in a mount: equal trees.
pub fn assert_same_tree(path: &str, mount: &Path) {
    let basename = path.trim_start_matches("/nix/store/");
    let status =
        Command::new("diff").args(["-r", "--no-dereference"]).arg(path).arg(mount.join(basename)).status().unwrap();
    assert!(status.success(), "{path} differs in the mount");
}
