//! `tvix-store copy`.

use super::ServiceArgs;

/// Arguments of `tvix-store copy`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    services: ServiceArgs,
}

/// Runs the command.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let _ = args.services;
    anyhow::bail!("`tvix-store copy` is not built yet")
}
