//! Shared helpers for the vm-tests: booting a QEMU guest through `vm-tests/run`, running the
//! reference `virtiofsd`, and describing a directory tree the same way on host and guest.
//!
//! Missing tools (qemu, virtiofsd, apt packages) make the tests panic: they never skip.
#![allow(dead_code)] // each test binary uses a different subset

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The machine has few cores; guests in one test binary boot one after another so that TCG
/// guests do not starve each other into timeouts.
static GUEST_LOCK: Mutex<()> = Mutex::new(());

/// Path of a file in the repository.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Lists a tree as one line per entry: kind, path, and for files the size, whether any
/// execute bit is set, and the SHA-256. Runs under busybox in the guest and under
/// bash/coreutils on the host, producing identical text for identical trees.
pub const MANIFEST_SCRIPT: &str = r#"
manifest() {
    ( cd "$1" && find . | LC_ALL=C sort | while IFS= read -r p; do
        if [ -L "$p" ]; then echo "l $p -> $(readlink "$p")"
        elif [ -d "$p" ]; then echo "d $p"
        else
            if [ -x "$p" ]; then x=x; else x=-; fi
            echo "f $p $(stat -c %s "$p") $x $(sha256sum < "$p" | cut -d' ' -f1)"
        fi
    done )
}
"#;

/// The manifest of a host directory (see [`MANIFEST_SCRIPT`]).
pub fn host_manifest(dir: &Path) -> String {
    let script = format!("{MANIFEST_SCRIPT}\nmanifest \"$1\"\n");
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .arg("sh")
        .arg(dir)
        .env("LC_ALL", "C")
        .output()
        .expect("run sh for the host manifest");
    assert!(out.status.success(), "host manifest failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("manifest is UTF-8")
}

/// A guest boot through `vm-tests/run`.
pub struct Guest {
    socket: Option<PathBuf>,
    tag: String,
    boots: u32,
    timeout_secs: u32,
    mem_mb: u32,
    files: Vec<(PathBuf, String)>,
}

/// What a guest run produced.
pub struct GuestResult {
    /// Exit status of `vm-tests/run` (the guest script's status, or 1 for harness failures).
    pub status: i32,
    /// The guest script's output (for several boots, blocks headed by `@@boot N@@`).
    pub stdout: String,
    /// Harness diagnostics, including the serial log when the guest gave no result.
    pub stderr: String,
}

impl Guest {
    /// A guest that mounts the vhost-user-fs device behind `socket` on /nix/store.
    pub fn with_socket(socket: &Path) -> Self {
        Guest { socket: Some(socket.to_owned()), ..Guest::without_device() }
    }

    /// A guest with no virtiofs device.
    pub fn without_device() -> Self {
        Guest { socket: None, tag: "store".into(), boots: 1, timeout_secs: 300, mem_mb: 512, files: vec![] }
    }

    /// Number of boots in one QEMU process (the guest reboots in between).
    pub fn boots(mut self, n: u32) -> Self {
        self.boots = n;
        self
    }

    /// Hard limit for the whole QEMU run.
    pub fn timeout_secs(mut self, secs: u32) -> Self {
        self.timeout_secs = secs;
        self
    }

    /// Guest memory in MiB.
    pub fn mem_mb(mut self, mb: u32) -> Self {
        self.mem_mb = mb;
        self
    }

    /// Copies host file `src` into the guest initramfs at `dest`.
    pub fn file(mut self, src: &Path, dest: &str) -> Self {
        self.files.push((src.to_owned(), dest.to_owned()));
        self
    }

    /// Boots the guest, runs `script` (busybox sh, with [`MANIFEST_SCRIPT`] defined) and
    /// returns what happened, without judging it.
    pub fn try_run(&self, script: &str) -> GuestResult {
        let _serial = GUEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut cmd = Command::new(repo_path("vm-tests/run"));
        if let Some(s) = &self.socket {
            cmd.arg("--socket").arg(s);
        }
        cmd.args(["--tag", &self.tag])
            .args(["--boots", &self.boots.to_string()])
            .args(["--timeout", &self.timeout_secs.to_string()])
            .args(["--mem", &self.mem_mb.to_string()]);
        for (src, dest) in &self.files {
            let mut spec = src.clone().into_os_string();
            spec.push(":");
            spec.push(dest);
            cmd.arg("--file").arg(spec);
        }
        cmd.arg("-").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn vm-tests/run");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin is piped");
            let full = format!("{MANIFEST_SCRIPT}\n{script}\n");
            stdin.write_all(full.as_bytes()).expect("write guest script");
        }
        let out: Output = child.wait_with_output().expect("wait for vm-tests/run");
        GuestResult {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Like [`Guest::try_run`], but panics (showing the guest's output and serial log)
    /// unless the script exited 0. Returns the script's output.
    pub fn run(&self, script: &str) -> String {
        let r = self.try_run(script);
        assert!(
            r.status == 0,
            "guest run failed with status {}\n--- guest output ---\n{}\n--- harness stderr ---\n{}",
            r.status,
            r.stdout,
            r.stderr
        );
        r.stdout
    }
}

/// Finds the reference `virtiofsd` ($VIRTIOFSD, PATH, ~/.cargo/bin, /usr/libexec), or panics.
pub fn virtiofsd_path() -> PathBuf {
    if let Some(p) = std::env::var_os("VIRTIOFSD") {
        return PathBuf::from(p);
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("virtiofsd")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/virtiofsd"));
    }
    candidates.push("/usr/libexec/virtiofsd".into());
    candidates.push("/usr/lib/qemu/virtiofsd".into());
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "reference virtiofsd not found (set VIRTIOFSD, or: apt-get install libcap-ng-dev \
             libseccomp-dev && cargo install virtiofsd)"
        )
    })
}

/// A running reference `virtiofsd` sharing a host directory; killed on drop.
pub struct Virtiofsd {
    child: Child,
    /// The vhost-user socket it listens on.
    pub socket: PathBuf,
}

impl Virtiofsd {
    /// Starts virtiofsd on `socket` sharing `dir` read-only, and waits for the socket.
    /// It serves one guest connection and then exits, so start one per boot.
    pub fn start(dir: &Path, socket: &Path) -> Self {
        let _ = fs::remove_file(socket);
        let child = Command::new(virtiofsd_path())
            .arg("--shared-dir")
            .arg(dir)
            .arg("--socket-path")
            .arg(socket)
            .args(["--sandbox", "none", "--seccomp", "none", "--readonly", "--cache", "auto"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn virtiofsd");
        wait_for_socket(socket, Duration::from_secs(10));
        Virtiofsd { child, socket: socket.to_owned() }
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until a unix socket exists at `path`, or panics.
pub fn wait_for_socket(path: &Path, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < limit, "no socket at {} after {limit:?}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deterministic pseudo-random bytes (xorshift), so trees are reproducible without a RNG crate.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a small tree exercising the interesting cases: nested and empty directories, empty,
/// small and multi-MiB files (larger than one FUSE read), an executable, relative and
/// dangling symlinks, a name with a space.
pub fn make_sample_tree(root: &Path) {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("has parent")).expect("mkdir");
        fs::write(&p, data).expect("write file");
    };
    w("README", b"hello from the host\n");
    w("empty", b"");
    w("lib/libbig.so", &pseudo_random_bytes(1, 3 * 1024 * 1024 + 17));
    w("share/doc/with space.txt", b"spaces are fine\n");
    for i in 0..40 {
        w(&format!("share/many/file-{i:03}"), &pseudo_random_bytes(100 + i, (i as usize) * 997));
    }
    w("bin/hello", b"#!/bin/sh\necho hello from the store\n");
    fs::set_permissions(root.join("bin/hello"), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::create_dir_all(root.join("empty-dir")).expect("mkdir");
    symlink("../README", root.join("bin/readme-link")).expect("symlink");
    symlink("does/not/exist", root.join("dangling")).expect("symlink");
}
