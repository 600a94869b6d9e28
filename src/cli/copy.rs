//! `tvix-store copy`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tvix_store::compose::Role;
use tvix_store::import::{Progress, copy_closure, parse_closure};
use tvix_store::storepath::STORE_DIR;

use super::ServiceArgs;
use super::import::ProgressDisplay;

/// Arguments of `tvix-store copy`.
#[derive(clap::Args)]
pub struct Args {
    /// A Nix `__structuredAttrs` JSON file (e.g. `$NIX_ATTRS_JSON_FILE`) whose `closure` key
    /// lists the paths, as `exportReferencesGraph.closure` produces it.
    attrs_json: PathBuf,

    #[command(flatten)]
    services: ServiceArgs,
}

/// Runs the command: copies every listed path from /nix/store, keeping references, and
/// prints the store paths copied.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let json = std::fs::read(&args.attrs_json).with_context(|| format!("reading {}", args.attrs_json.display()))?;
    let closure = parse_closure(&json).with_context(|| format!("in {}", args.attrs_json.display()))?;
    let opened = args.services.open(Role::Client).await?;
    let progress = Arc::new(Progress::default());
    let bar = ProgressDisplay::start(format!("copying {} paths", closure.len()), progress.clone());
    let res = copy_closure(&opened.store, &closure, Path::new(STORE_DIR), Some(progress)).await;
    bar.finish();
    let infos = res?;
    let mut stdout = std::io::stdout().lock();
    for info in infos {
        writeln!(stdout, "{}", info.store_path)?;
    }
    Ok(())
}
