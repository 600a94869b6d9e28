//! `tvix-store nar-bridge`: the store served as a Nix binary cache over HTTP.

use std::path::PathBuf;

use anyhow::Context;
use std::sync::Arc;

use tvix_store::access::Right;
use tvix_store::compose::Role;
use tvix_store::host::{Face, HostedStore, ListenAddr, Process, systemd};
use tvix_store::narbridge::{NarBridge, Options, UploadOptions};
use tvix_store::narinfo::SigningKey;

use super::ServiceArgs;

/// Where nar-bridge listens without `-l` and without sockets from systemd: the loopback only,
/// until the operator says otherwise.
const DEFAULT_LISTEN: &str = "127.0.0.1:9000";

/// Arguments of `tvix-store nar-bridge`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    services: ServiceArgs,
    #[command(flatten)]
    metrics: super::metrics::MetricsArgs,
    #[command(flatten)]
    access: super::AccessArgs,
    /// Where to listen: host:port ([::]:9000, 127.0.0.1:9000), a unix socket path, or sd-listen
    /// (the sockets systemd passed). Default: the sockets systemd passed, if any, else
    /// 127.0.0.1:9000.
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
    /// A file holding a token that may upload (`Authorization: Bearer <token>`, or as the
    /// password of HTTP basic auth, which Nix sends from a netrc file): a shorthand for a
    /// --tokens-file line with the rights read,write.
    #[arg(long, value_name = "FILE", requires = "allow_uploads")]
    upload_token_file: Option<PathBuf>,
    /// Largest upload accepted, in bytes (a compressed NAR as sent).
    #[arg(long, default_value_t = 64 << 30, requires = "allow_uploads")]
    max_upload_size: u64,
}

/// Runs the command: serves until SIGINT or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let process = Process::start("nar-bridge", args.metrics.metrics_listen).await?;
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
    let mut tokens = args.access.tokens()?;
    if let Some(file) = &args.upload_token_file {
        let token =
            std::fs::read_to_string(file).with_context(|| format!("reading the upload token {}", file.display()))?;
        let token = token.trim();
        anyhow::ensure!(!token.is_empty(), "the upload token file {} is empty", file.display());
        tokens.add_secret("upload", "read,write".parse()?, token);
    }
    let uploads = if args.allow_uploads {
        if args.access.tcp_rights.has(Right::Write) {
            tracing::warn!(
                "--tcp-rights gives every client the write right: anybody who reaches this cache may upload"
            );
        } else if !tokens.any_has(Right::Write) {
            anyhow::bail!(
                "--allow-uploads, but no client may upload: give --tokens-file with a token that has the write right, --upload-token-file, or --tcp-rights read,write to let anybody upload"
            );
        }
        Some(UploadOptions { max_body: args.max_upload_size })
    } else {
        None
    };
    let gate = Arc::new(args.access.policy_with(tokens));
    let Some(opened) = process.open(&args.services.store_args(), Role::Client).await? else {
        process.stopped();
        return Ok(());
    };
    let store = HostedStore::serving(opened).await?;
    let options = Options { priority: args.priority, signing_key, uploads, gate, ..Options::default() };
    let bridge = NarBridge::new(store.opened.store.clone(), options);
    process.serve(&listen, Face::Http(bridge.router())).await?;
    store.close().await;
    process.stopped();
    Ok(())
}
