//! `tvix-store path-info`.

use super::ServiceArgs;

/// Arguments of `tvix-store path-info`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    services: ServiceArgs,
}

/// Runs the command.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let _ = args.services;
    anyhow::bail!("`tvix-store path-info` is not built yet")
}
