//! `tvix-store dump`.

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tvix_store::compose::Role;
use tvix_store::nar::write_nar;
use tvix_store::storepath::StorePath;

use super::ServiceArgs;

/// Arguments of `tvix-store dump`.
#[derive(clap::Args)]
pub struct Args {
    /// The store path (`/nix/store/<hash>-<name>` or its basename).
    store_path: String,

    #[command(flatten)]
    services: ServiceArgs,
}

/// Runs the command: writes the path's NAR to stdout, as `nix-store --dump` does.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let path = StorePath::parse(&args.store_path)?;
    let opened = args.services.open(Role::Client).await?;
    let info = opened
        .store
        .path_info
        .get(*path.digest())
        .await?
        .with_context(|| format!("path '{path}' is not in the store"))?;
    let stdout = tokio::io::BufWriter::with_capacity(256 * 1024, tokio::io::stdout());
    let mut stdout = write_nar(stdout, &info.node, opened.store.blob.as_ref(), opened.store.directory.as_ref())
        .await
        .with_context(|| format!("dumping {path}"))?;
    stdout.flush().await?;
    Ok(())
}
