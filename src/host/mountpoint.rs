//! The mount point of a FUSE mount: checked before mounting, its read-ahead raised, and watched
//! so that a mount whose process died is not left behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a mount point cannot be used or watched.
#[derive(Debug, thiserror::Error)]
pub enum MountpointError {
    /// The mount point cannot be looked at.
    #[error("mount point {}: {source}", path.display())]
    Inspect {
        /// The mount point.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The mount point is no directory.
    #[error("mount point {} is not a directory", .0.display())]
    NotDirectory(PathBuf),
    /// Something is mounted there already.
    #[error("mount point {} is busy: something is already mounted there", .0.display())]
    Busy(PathBuf),
    /// `/dev/fuse` cannot be opened.
    #[error("FUSE is unavailable: cannot open /dev/fuse: {0} (is the fuse module loaded?)")]
    Fuse(std::io::Error),
    /// The kernel's table of mounts cannot be read.
    #[error("reading /proc/self/mountinfo: {0}")]
    MountInfo(std::io::Error),
}

/// Refuses, with a clear message, the cases where mounting would fail with an obscure one;
/// returns the mount point made canonical.
pub fn check(path: &Path) -> Result<PathBuf, MountpointError> {
    let inspect = |source| MountpointError::Inspect { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(inspect)?;
    if !meta.is_dir() {
        return Err(MountpointError::NotDirectory(path.to_path_buf()));
    }
    let path = path.canonicalize().map_err(inspect)?;
    if is_mounted(&path)? {
        return Err(MountpointError::Busy(path));
    }
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").map_err(MountpointError::Fuse)?;
    Ok(path)
}

/// Whether `path` (canonical) is a mount point, from /proc/self/mountinfo.
pub fn is_mounted(path: &Path) -> Result<bool, MountpointError> {
    Ok(mounted_device(path)?.is_some())
}

/// Undoes the octal escapes (`\040` for space...) mountinfo uses in paths.
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The device number (`major:minor`) of the newest mount on `path` (canonical), from
/// /proc/self/mountinfo (not stat: the mount must not be touched before it is served); `None`
/// when nothing is mounted there.
fn mounted_device(path: &Path) -> Result<Option<String>, MountpointError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(MountpointError::MountInfo)?;
    Ok(info.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        let dev = fields.nth(2)?;
        let mountpoint = fields.nth(1)?;
        (unescape_mountinfo(mountpoint) == path.as_os_str().as_encoded_bytes()).then(|| dev.to_string())
    }))
}

/// Raises the kernel's read-ahead window for the new mount (it defaults to 128 KiB for FUSE),
/// so sequential reads arrive in large requests. Best effort: needs root and sysfs.
pub fn raise_readahead(path: &Path) {
    let Ok(Some(dev)) = mounted_device(path) else { return };
    let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, "1024") {
        tracing::debug!("cannot raise read-ahead through {knob}: {e}");
    }
}

/// How long the unmount watcher leaves fusermount's own auto-unmount to act after the mount
/// process died, before it unmounts itself.
const WATCH_GRACE: Duration = Duration::from_secs(1);

/// Starts the unmount watcher (`tvix-store unmount-watch`, in its own process group so signals
/// to ours do not reach it): it unmounts `path` if this process dies and leaves the mount
/// behind. fusermount's auto-unmount does that only if opening the mount point fails with
/// ENOTCONN, but a dying process's descriptors are released after it is gone, in no order we
/// control: when the socket that wakes fusermount goes before /dev/fuse, fusermount looks while
/// the session still lives, gets ECONNABORTED and gives up (3 to 7 of 40 mounts killed with
/// SIGKILL under load were left behind, none with the watcher). Returns the pipe whose closing
/// (at our exit, however it comes) wakes the watcher.
pub fn spawn_unmount_watcher(path: &Path) -> Option<std::process::ChildStdin> {
    use std::os::unix::process::CommandExt;
    let dev = mounted_device(path).ok()??;
    let exe = std::env::current_exe().ok()?;
    let child = std::process::Command::new(exe)
        .arg("unmount-watch")
        .arg("--device")
        .arg(&dev)
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .spawn();
    match child {
        Ok(mut child) => child.stdin.take(),
        Err(e) => {
            tracing::warn!("cannot start the unmount watcher for {}: {e}", path.display());
            None
        }
    }
}

/// Waits for standard input to close (the mount process exited), then unmounts `path` if the
/// mount with `device` is still there after [`WATCH_GRACE`]: the body of the hidden
/// `unmount-watch` command that [`spawn_unmount_watcher`] starts.
pub fn watch(device: &str, path: &Path) -> Result<(), MountpointError> {
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    let deadline = std::time::Instant::now() + WATCH_GRACE;
    loop {
        if mounted_device(path)?.as_deref() != Some(device) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            tracing::warn!("the mount process died and left {} mounted; unmounting it", path.display());
            force_unmount(path);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Unmounts `path` directly (we may be root), else through `fusermount3 -u -z`.
pub fn force_unmount(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return };
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } == 0 {
        return;
    }
    let status = std::process::Command::new("fusermount3").arg("-u").arg("-z").arg(path).status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("error: could not unmount {} (try `fusermount3 -u {}`)", path.display(), path.display());
    }
}
