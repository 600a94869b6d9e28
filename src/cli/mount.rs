//! `tvix-store mount`.

use super::ServiceArgs;

/// Arguments of `tvix-store mount`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    services: ServiceArgs,
}

/// Runs the command.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let _ = args.services;
    anyhow::bail!("`tvix-store mount` is not built yet")
}
