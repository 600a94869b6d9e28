//! `tvix-store mount`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use tvix_store::fs::StoreFs;
use tvix_store::fs::fuse::{self, MountOptions};

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
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(info.lines().any(|line| {
        line.split(' ').nth(4).map(unescape_mountinfo).as_deref() == Some(path.as_os_str().as_encoded_bytes())
    }))
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

/// Raises the kernel's read-ahead window for the new mount (it defaults to 128 KiB for FUSE),
/// so sequential reads arrive in large requests. Best effort: needs root and sysfs. The device
/// number comes from mountinfo, not stat: the mount must not be touched before it is served.
fn raise_readahead(path: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let dev = info.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        let dev = fields.nth(2)?;
        let mountpoint = fields.nth(1)?;
        (unescape_mountinfo(mountpoint) == path.as_os_str().as_encoded_bytes()).then_some(dev)
    });
    let Some(dev) = dev else { return };
    let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, "1024") {
        tracing::debug!("cannot raise read-ahead through {knob}: {e}");
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
    let shutdown = super::shutdown_signal()?;
    let path = check_mountpoint(&args.path)?;
    let gauges = args.metrics.start().await?;
    let store = args.services.open_serving().await?;
    let fs = Arc::new(StoreFs::over(&store.services, args.fs.options()));
    *gauges.lock() = Some(Box::new({
        let fs = fs.clone();
        move || fs.publish_gauges()
    }));
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
    eprintln!("mounted the store on {}", path.display());

    let signalled = tokio::select! {
        _ = shutdown => true,
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
