//! `tvix-store nar-bridge`: the store served as a Nix binary cache over HTTP.

use std::path::PathBuf;

use anyhow::Context;
use tvix_store::narbridge::{NarBridge, Options, UploadOptions};
use tvix_store::narinfo::SigningKey;
use tvix_store::server::{ListenAddr, Listener, systemd};

use super::ServiceArgs;

/// Where nar-bridge listens without `-l` and without sockets from systemd.
const DEFAULT_LISTEN: &str = "[::]:9000";

/// Arguments of `tvix-store nar-bridge`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    services: ServiceArgs,
    #[command(flatten)]
    metrics: super::metrics::MetricsArgs,
    /// Where to listen: host:port ([::]:9000, 127.0.0.1:9000), a unix socket path, or sd-listen
    /// (the sockets systemd passed). Default: the sockets systemd passed, if any, else [::]:9000.
    #[arg(short = 'l', long)]
    listen_address: Option<String>,
    /// `Priority:` announced in nix-cache-info (Nix prefers lower; cache.nixos.org has 40).
    #[arg(long, default_value_t = 40)]
    priority: u32,
    /// A Nix secret key file (`nix-store --generate-binary-cache-key`): every narinfo served is
    /// signed with it, beside the signatures the path has.
    #[arg(long, value_name = "FILE")]
    signing_key_file: Option<PathBuf>,
    /// Accept uploads (`nix copy --to http://…`).
    #[arg(long)]
    allow_uploads: bool,
    /// A file holding the token uploads must carry (`Authorization: Bearer <token>`, or as the
    /// password of HTTP basic auth, which Nix sends from a netrc file).
    #[arg(long, value_name = "FILE", requires = "allow_uploads")]
    upload_token_file: Option<PathBuf>,
    /// Largest upload accepted, in bytes (a compressed NAR as sent).
    #[arg(long, default_value_t = 64 << 30, requires = "allow_uploads")]
    max_upload_size: u64,
}

/// Runs the command: serves until SIGINT or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = super::shutdown_signal()?;
    let listen: ListenAddr = match &args.listen_address {
        Some(addr) => addr.parse()?,
        None if systemd::has_activated_sockets() => ListenAddr::Systemd,
        None => DEFAULT_LISTEN.parse()?,
    };
    let signing_key = args
        .signing_key_file
        .as_deref()
        .map(|file| SigningKey::from_file(file).with_context(|| format!("signing key {}", file.display())))
        .transpose()?;
    let uploads = if args.allow_uploads {
        let token = match &args.upload_token_file {
            None => None,
            Some(file) => {
                let token = std::fs::read_to_string(file)
                    .with_context(|| format!("reading the upload token {}", file.display()))?;
                let token = token.trim().to_string();
                anyhow::ensure!(!token.is_empty(), "the upload token file {} is empty", file.display());
                Some(token)
            }
        };
        Some(UploadOptions { token, max_body: args.max_upload_size })
    } else {
        None
    };
    args.metrics.start().await?;
    let store = args.services.open_serving().await?;
    let options = Options { priority: args.priority, signing_key, uploads, ..Options::default() };
    let bridge = NarBridge::new(
        store.services.blob.clone(),
        store.services.directory.clone(),
        store.services.path_info.clone(),
        options,
    );
    let router = bridge.router();
    let listeners = Listener::bind_all(&listen).await?;
    let addresses: Vec<String> = listeners.iter().map(Listener::describe).collect();
    eprintln!("tvix-store nar-bridge listening on {}", addresses.join(", "));
    systemd::ready(&format!("serving on {}", addresses.join(", ")));
    let shutdown = super::announced(shutdown);
    futures::future::try_join_all(listeners.into_iter().map(|listener| {
        let (router, shutdown) = (router.clone(), shutdown.clone());
        async move {
            match listener {
                Listener::Tcp(l) => {
                    // A response goes out in several writes (headers, then NAR pieces); with
                    // Nagle's algorithm the last small one waits for the client's delayed ACK.
                    // That held 16 clients of small NARs to 820 requests/s at half a CPU.
                    let l = axum::serve::ListenerExt::tap_io(l, |stream: &mut tokio::net::TcpStream| {
                        if let Err(e) = stream.set_nodelay(true) {
                            tracing::debug!("cannot set TCP_NODELAY on a connection: {e}");
                        }
                    });
                    axum::serve(l, router).with_graceful_shutdown(shutdown).await
                }
                // The socket file (if ours) lives until serving ends.
                Listener::Unix(l, _socket_file) => axum::serve(l, router).with_graceful_shutdown(shutdown).await,
            }
        }
    }))
    .await
    .context("serving HTTP")?;
    store.close().await;
    eprintln!("tvix-store nar-bridge stopped");
    Ok(())
}
