//! `tvix-store mount`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use tvix_store::compose::Role;
use tvix_store::fs::fuse::{self, MountOptions};
use tvix_store::host::{HostedStore, Process, mountpoint};

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

/// Arguments of the hidden `unmount-watch` command (started by `mount`, never by hand).
#[derive(clap::Args)]
pub struct WatchArgs {
    /// The mount's device number (`major:minor`), so only that mount is ever unmounted.
    #[arg(long)]
    device: String,
    /// The mount point.
    path: PathBuf,
}

/// Runs the hidden `unmount-watch` command: unmounts the mount when its process died and left
/// it behind.
pub fn watch(args: WatchArgs) -> anyhow::Result<()> {
    Ok(mountpoint::watch(&args.device, &args.path)?)
}

/// Runs the command: serves the mount until SIGINT or SIGTERM, or until it is unmounted.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let process = Process::start("mount", args.metrics.metrics_listen).await?;
    let path = mountpoint::check(&args.path)?;
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
    mountpoint::raise_readahead(&path);
    // Held until this process exits: its closing is what wakes the watcher.
    let _watcher = mountpoint::spawn_unmount_watcher(&path);
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
        if mountpoint::is_mounted(&path).unwrap_or(false) {
            mountpoint::force_unmount(&path);
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
