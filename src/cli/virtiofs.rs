//! `tvix-store virtiofs`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tvix_store::compose::Role;
use tvix_store::host::{HostedStore, Process};
use tvix_store::virtiofs::{self, DaemonConfig, SocketListener, VirtioStoreFs};

use super::{FsArgs, ServiceArgs};

/// Arguments of `tvix-store virtiofs`.
#[derive(clap::Args)]
pub struct Args {
    /// Path of the vhost-user socket to create; point the VMM's vhost-user-fs device at it.
    socket: PathBuf,
    #[command(flatten)]
    fs: FsArgs,
    #[command(flatten)]
    metrics: super::metrics::MetricsArgs,
    /// Permission bits of the socket, in octal. Whoever can connect reads the whole store.
    #[arg(long, value_parser = parse_mode, default_value = "0600")]
    socket_mode: u32,
    /// Request queues offered to the guest (plus the high-priority queue); one thread each.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    request_queues: u16,
    /// Threads handling requests concurrently (0: each queue's thread handles its requests
    /// in order, as virtiofsd does by default).
    #[arg(long, default_value_t = 4)]
    threads: usize,
    #[command(flatten)]
    services: ServiceArgs,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("'{s}' is not an octal permission mode like 0600 or 0660")),
    }
}

/// Runs the command: serves VMM connections until SIGINT or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    // Handlers first: once the socket exists, SIGINT/SIGTERM must end us cleanly.
    let process = Process::start("virtiofs", args.metrics.metrics_listen).await?;
    let Some(opened) = process.open(&args.services.store_args(), Role::Client).await? else {
        return Ok(());
    };
    let store = HostedStore::serving(opened).await?;
    let fs = Arc::new(super::store_fs(&store.opened.store, args.fs.options()));
    process.publish_gauges({
        let fs = fs.clone();
        move || fs.publish_gauges()
    });
    let mut socket = SocketListener::bind(&args.socket, args.socket_mode)
        .with_context(|| format!("cannot listen on {}", args.socket.display()))?;
    let socket_path = socket.path().to_owned();

    let config = DaemonConfig {
        request_queues: usize::from(args.request_queues),
        runtime: Some(tokio::runtime::Handle::current()),
        threads: args.threads,
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    // The vhost-user machinery blocks (accept, epoll); it gets its own threads, and the
    // filesystem core calls back into this runtime from them.
    std::thread::Builder::new()
        .name("virtiofs-accept".into())
        .spawn(move || {
            let result = virtiofs::serve(&mut socket, &config, || VirtioStoreFs::new(fs.clone()));
            let _ = done_tx.send(result);
        })
        .context("cannot start the virtiofs thread")?;
    process.ready(
        &format!("tvix-store virtiofs listening on {}", socket_path.display()),
        &format!("serving on {}", socket_path.display()),
    );

    let result = tokio::select! {
        () = process.shutdown() => Ok(()),
        r = done_rx => match r {
            Ok(Err(e)) => Err(anyhow::Error::new(e)),
            _ => Err(anyhow::anyhow!("the virtiofs daemon stopped")),
        },
    };
    // The accept thread owns the listener and never returns; remove the socket ourselves so
    // no VMM connects to a daemon that is going away.
    let _ = std::fs::remove_file(&socket_path);
    store.close().await;
    result
}
