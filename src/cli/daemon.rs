//! `tvix-store daemon`.

use std::sync::Arc;

use tvix_store::compose::Role;
use tvix_store::compose::defaultstore::SOCKET_NAME;
use tvix_store::host::{Face, HostedStore, ListenAddr, Process, systemd};
use tvix_store::server::Handlers;

use super::ServiceArgs;

/// Where the daemon listens when no address is given and the services are not the default store
/// (tvix-store's default).
const DEFAULT_LISTEN: &str = "[::1]:8000";

/// Arguments of `tvix-store daemon`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    services: ServiceArgs,
    #[command(flatten)]
    metrics: super::metrics::MetricsArgs,
    /// Where to listen: host:port (127.0.0.1:8000, [::1]:8000), a unix socket path, or sd-listen
    /// (the sockets systemd passed). Default: the sockets systemd passed, if any; else the default
    /// store's socket (<store dir>/daemon.sock) when serving the default store, else [::1]:8000.
    #[arg(short = 'l', long)]
    listen_address: Option<String>,
    #[command(flatten)]
    access: super::AccessArgs,
}

/// Runs the command: serves until SIGINT or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let process = Process::start("daemon", args.metrics.metrics_listen).await?;
    // Checked before the store is opened: a bad tokens file is a one-line error at start.
    let policy = args.access.policy()?;
    let Some(opened) = process.open(&args.services.store_args(), Role::Owner).await? else {
        process.stopped();
        return Ok(());
    };
    let owned_dir = opened.store_lock.as_ref().map(|lock| lock.dir().to_path_buf());
    let listen: ListenAddr = match (&args.listen_address, &owned_dir) {
        (Some(addr), _) => addr.parse()?,
        (None, _) if systemd::has_activated_sockets() => ListenAddr::Systemd,
        (None, Some(dir)) => ListenAddr::Unix(dir.join(SOCKET_NAME)),
        (None, None) => DEFAULT_LISTEN.parse()?,
    };
    // Owning the default store means serving it on its socket too, so that other commands on
    // the store can use it while we hold the lock; unless that is where we listen anyway.
    let store = match &owned_dir {
        Some(dir) if listen != ListenAddr::Unix(dir.join(SOCKET_NAME)) => HostedStore::serving(opened).await?,
        _ => HostedStore::unserved(opened),
    };
    if let Some(socket) = store.owner_socket() {
        eprintln!("serving the default store on {}", socket.display());
    }
    let handlers = Handlers {
        backends: store.opened.maintenance.local_backends(),
        gate: Arc::new(policy),
        ..Handlers::new(store.opened.store.clone())
    };
    process.serve(&listen, Face::Grpc(handlers)).await?;
    store.close().await;
    process.stopped();
    Ok(())
}
