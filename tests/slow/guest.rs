//! The QEMU guest harness of the slow tier: booting a guest through `vm-tests/run`, running the
//! reference `virtiofsd`, and describing a directory tree the same way on host and guest.
//!
//! Missing tools (qemu, virtiofsd, apt packages) make the tests panic: they never skip.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::vm_common::{tvix_store_bin, wait_for_socket};

/// The machine has few cores; guests in this test process boot one after another so that TCG
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
    smp: u32,
    serial_log: Option<PathBuf>,
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
        Guest { socket: None, tag: "store".into(), boots: 1, timeout_secs: 300, mem_mb: 512, smp: 2, serial_log: None }
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

    /// Keeps the serial console log at `path`, written while the guest runs (a guest script
    /// can signal the host by writing to /dev/ttyS0).
    pub fn serial_log(mut self, path: &Path) -> Self {
        self.serial_log = Some(path.to_owned());
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
            .args(["--mem", &self.mem_mb.to_string()])
            .args(["--smp", &self.smp.to_string()]);
        if let Some(log) = &self.serial_log {
            cmd.arg("--serial-log").arg(log);
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

/// Finds the reference `virtiofsd` ($VIRTIOFSD, PATH, then the C one Debian's qemu-system-common
/// ships in /usr/lib/qemu), or panics.
pub fn virtiofsd_path() -> PathBuf {
    if let Some(p) = std::env::var_os("VIRTIOFSD") {
        return PathBuf::from(p);
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("virtiofsd")).collect())
        .unwrap_or_default();
    candidates.push("/usr/libexec/virtiofsd".into());
    candidates.push("/usr/lib/qemu/virtiofsd".into());
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("reference virtiofsd not found (set VIRTIOFSD, or apt-get install qemu-system-x86, which ships /usr/lib/qemu/virtiofsd)")
    })
}

/// The command line that makes `virtiofsd` share `dir` read-only on `socket`. The C virtiofsd
/// (QEMU <= 7.2, Debian 12) and the Rust one (`cargo install virtiofsd`) spell it differently.
fn virtiofsd_args(program: &Path, dir: &Path, socket: &Path) -> Vec<std::ffi::OsString> {
    let help = Command::new(program).arg("--help").output().expect("running virtiofsd --help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned() + &String::from_utf8_lossy(&help.stderr);
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if help.contains("-o source=") {
        // The C virtiofsd has no read-only switch; the tests never write through it.
        let mut source = std::ffi::OsString::from("source=");
        source.push(dir);
        let mut socket_arg = std::ffi::OsString::from("--socket-path=");
        socket_arg.push(socket);
        args.push(socket_arg);
        for opt in [source, "cache=auto".into(), "sandbox=chroot".into()] {
            args.push("-o".into());
            args.push(opt);
        }
    } else {
        args.extend([
            "--shared-dir".into(),
            dir.as_os_str().to_owned(),
            "--socket-path".into(),
            socket.as_os_str().to_owned(),
        ]);
        args.extend(["--sandbox", "none", "--seccomp", "none", "--readonly", "--cache", "auto"].map(Into::into));
    }
    args
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
        let program = virtiofsd_path();
        let child = Command::new(&program)
            .args(virtiofsd_args(&program, dir, socket))
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

/// What `vm-tests/prepare` made (it fails loudly if the kernel or busybox cannot be fetched).
pub struct Prepared {
    /// The static busybox from Debian's busybox-static.
    pub busybox: PathBuf,
}

/// Runs `vm-tests/prepare` (cached after the first run), or panics with its diagnostics.
pub fn prepare() -> Prepared {
    let out = Command::new(repo_path("vm-tests/prepare")).output().expect("run vm-tests/prepare");
    assert!(
        out.status.success(),
        "vm-tests/prepare failed (needs apt package lists, qemu-system-x86, cpio):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let var = |name: &str| -> PathBuf {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("vm-tests/prepare did not print {name}:\n{text}"))
    };
    Prepared { busybox: var("VM_BUSYBOX") }
}

/// Runs `tvix-store` with the default store in `store_dir`, returning its stdout; panics
/// (with stderr) when it fails.
pub fn tvix_store(store_dir: &Path, args: &[&std::ffi::OsStr]) -> String {
    let out =
        Command::new(tvix_store_bin()).args(args).env("TVIX_STORE_DIR", store_dir).output().expect("run tvix-store");
    assert!(out.status.success(), "tvix-store {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("tvix-store prints UTF-8")
}

/// Imports `path` into the store at `store_dir`; returns the store path's basename.
pub fn import(store_dir: &Path, path: &Path) -> String {
    let out = tvix_store(store_dir, &["import".as_ref(), path.as_os_str()]);
    let line = out.trim();
    line.strip_prefix("/nix/store/")
        .unwrap_or_else(|| panic!("tvix-store import printed {line:?}, not a store path"))
        .to_owned()
}

/// The basename `path` will get when imported, computed in a throwaway in-memory store.
pub fn store_basename_of(path: &Path) -> String {
    let out = Command::new(tvix_store_bin())
        .arg("import")
        .args(["--blob-service-addr", "memory://"])
        .args(["--directory-service-addr", "memory://"])
        .args(["--path-info-service-addr", "memory://"])
        .arg(path)
        .output()
        .expect("run tvix-store import");
    assert!(out.status.success(), "import into memory failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    text.trim().strip_prefix("/nix/store/").expect("a store path").to_owned()
}

/// Waits until `needle` shows up in the file at `path` (a serial log), or panics.
pub fn wait_for_text(path: &Path, needle: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        if fs::read(path).map(|b| String::from_utf8_lossy(&b).contains(needle)).unwrap_or(false) {
            return;
        }
        assert!(start.elapsed() < limit, "{needle:?} did not appear in {} within {limit:?}", path.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}
