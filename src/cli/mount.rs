//! `tvix-store mount`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tvix_store::fs::fuse::{self, MountOptions};
use tvix_store::fs::{Options, StoreFs};
use tvix_store::services::Role;

use super::ServiceArgs;

/// Arguments of `tvix-store mount`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    services: ServiceArgs,
    /// Where to mount the store (an existing, empty directory, e.g. /nix/store).
    path: PathBuf,
    /// List all store paths in the mount root (otherwise the root is not listable, but
    /// lookups of `<hash>-<name>` work).
    #[arg(short = 'l', long)]
    list_root: bool,
    /// Number of threads handling FUSE requests.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
    /// Let all users access the mount (FUSE `allow_other`); otherwise the mounting user and root.
    #[arg(long)]
    allow_other: bool,
    /// Show blob and directory digests as extended attributes
    /// (user.tvix.castore.blob.digest, user.tvix.castore.directory.digest).
    #[arg(long)]
    show_xattr: bool,
    /// Seconds after which a store call that got no answer fails with EIO.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    /// Most directory entries kept in cached listings (80 bytes each plus the name); inodes the
    /// kernel has forgotten are freed. 0 disables eviction: everything ever walked stays in
    /// memory (for measuring; see docs/mount-memory.md).
    #[arg(long, default_value_t = tvix_store::fs::LISTING_CACHE_ENTRIES)]
    cache_entries: usize,
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
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").map_err(|e| {
        anyhow::anyhow!("FUSE is unavailable: cannot open /dev/fuse: {e} (is the fuse module loaded?)")
    })?;
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

/// Runs the command.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let path = check_mountpoint(&args.path)?;
    let services = args.services.open(Role::Owner).await?;
    // Owning the default store means serving it to other commands (import...) meanwhile.
    let owner_socket = tvix_store::server::serve_owner_socket(&services).await?;
    let options = Options {
        list_root: args.list_root,
        show_xattr: args.show_xattr,
        call_timeout: Duration::from_secs(args.timeout),
        listing_cache_entries: args.cache_entries,
        evict: args.cache_entries != 0,
        ..Options::default()
    };
    let fs = Arc::new(StoreFs::over(&services, options));
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

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let signalled = tokio::select! {
        _ = sigterm.recv() => true,
        _ = sigint.recv() => true,
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
    if let Some(owner) = owner_socket {
        if let Err(e) = owner.shutdown().await {
            tracing::warn!("stopping the store socket: {e}");
        }
    }
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).with_context(|| format!("serving the mount on {}", path.display())),
        Err(_) => bail!("the FUSE session thread panicked"),
    }
}
