//! `tvix-store mount`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tvix_store::compose::Role;
use tvix_store::fs::fuse::{self, MountOptions};
use tvix_store::host::{HostedStore, Process};

use super::{FsArgs, ServiceArgs};

/// Arguments of `tvix-store mount`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    services: ServiceArgs,
    /// Where to mount the store (an existing, empty directory, e.g. /nix/store).
    path: PathBuf,
    #[command(flatten)]
    fs: FsArgs,
    #[command(flatten)]
    metrics: super::metrics::MetricsArgs,
    /// Number of threads handling FUSE requests.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
    /// Let all users access the mount (FUSE `allow_other`); otherwise the mounting user and root.
    #[arg(long)]
    allow_other: bool,
}

/// Refuses, with a clear message, the cases where mounting would fail with an obscure one.
fn check_mountpoint(path: &Path) -> anyhow::Result<PathBuf> {
    let meta = std::fs::metadata(path).with_context(|| format!("mount point {}", path.display()))?;
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", path.display());
    }
    let path = path.canonicalize().with_context(|| format!("mount point {}", path.display()))?;
    if is_mounted(&path)? {
        bail!("mount point {} is busy: something is already mounted there", path.display());
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| anyhow::anyhow!("FUSE is unavailable: cannot open /dev/fuse: {e} (is the fuse module loaded?)"))?;
    Ok(path)
}

/// Whether `path` (canonical) is a mount point, from /proc/self/mountinfo.
fn is_mounted(path: &Path) -> anyhow::Result<bool> {
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
fn mounted_device(path: &Path) -> anyhow::Result<Option<String>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(info.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        let dev = fields.nth(2)?;
        let mountpoint = fields.nth(1)?;
        (unescape_mountinfo(mountpoint) == path.as_os_str().as_encoded_bytes()).then(|| dev.to_string())
    }))
}

/// Raises the kernel's read-ahead window for the new mount (it defaults to 128 KiB for FUSE),
/// so sequential reads arrive in large requests. Best effort: needs root and sysfs.
fn raise_readahead(path: &Path) {
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
fn spawn_unmount_watcher(path: &Path) -> Option<std::process::ChildStdin> {
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

/// Arguments of the hidden `unmount-watch` command (started by `mount`, never by hand).
#[derive(clap::Args)]
pub struct WatchArgs {
    /// The mount's device number (`major:minor`), so only that mount is ever unmounted.
    #[arg(long)]
    device: String,
    /// The mount point.
    path: PathBuf,
}

/// Waits for standard input to close (the mount process exited), then unmounts `path` if the
/// mount with `device` is still there after [`WATCH_GRACE`].
pub fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    let deadline = std::time::Instant::now() + WATCH_GRACE;
    loop {
        if mounted_device(&args.path)?.as_deref() != Some(args.device.as_str()) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            tracing::warn!("the mount process died and left {} mounted; unmounting it", args.path.display());
            force_unmount(&args.path);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Unmounts `path` directly (we may be root), else through `fusermount3 -u -z`.
fn force_unmount(path: &Path) {
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

/// Runs the command: serves the mount until SIGINT or SIGTERM, or until it is unmounted.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let process = Process::start("mount", args.metrics.metrics_listen).await?;
    let path = check_mountpoint(&args.path)?;
    let Some(opened) = process.open(&args.services.store_args(), Role::Client).await? else {
        return Ok(());
    };
    let store = HostedStore::serving(opened).await?;
    let fs = Arc::new(super::store_fs(&store.opened.store, args.fs.options()));
    process.publish_gauges({
        let fs = fs.clone();
        move || fs.publish_gauges()
    });
    let mount_options = MountOptions { threads: usize::from(args.threads), allow_other: args.allow_other };
    let mut session = {
        let target = path.clone();
        tokio::task::spawn_blocking(move || fuse::session(fs, &target, &mount_options))
            .await?
            .with_context(|| format!("mounting on {}", path.display()))?
    };
    let mut unmounter = session.unmount_callable();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let worker = std::thread::Builder::new().name("fuse-session".into()).spawn(move || {
        let result = session.run();
        let _ = done_tx.send(());
        result
    })?;
    raise_readahead(&path);
    // Held until this process exits: its closing is what wakes the watcher.
    let _watcher = spawn_unmount_watcher(&path);
    process.ready(&format!("mounted the store on {}", path.display()), &format!("serving on {}", path.display()));

    let signalled = tokio::select! {
        () = process.shutdown() => true,
        _ = done_rx => false,
    };
    if signalled {
        tracing::info!("unmounting {}", path.display());
        if let Err(e) = unmounter.unmount() {
            tracing::warn!("unmounting {}: {e}", path.display());
        }
        // fuser leaves unmounting to the fusermount helper watching us (auto_unmount); a
        // signal sent to our whole process group (service managers, `timeout`) kills that
        // helper too, so make sure ourselves.
        if is_mounted(&path).unwrap_or(false) {
            force_unmount(&path);
        }
    }
    let result = tokio::task::spawn_blocking(move || worker.join()).await?;
    store.close().await;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).with_context(|| format!("serving the mount on {}", path.display())),
        Err(_) => bail!("the FUSE session thread panicked"),
    }
}
