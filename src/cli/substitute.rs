//! `tvix-store substitute`: fetch store paths and their closures from binary caches ahead of
//! time, so that a mount or a VM later finds them local.

use std::io::{IsTerminal, Write};

use anyhow::{Context, bail};
use tvix_store::compose::Role;
use tvix_store::storepath::StorePath;

use super::ServiceArgs;

/// Arguments of `tvix-store substitute`.
#[derive(clap::Args)]
pub struct Args {
    /// Store paths (`/nix/store/<hash>-<name>` or basenames); their whole closures are fetched.
    #[arg(required = true)]
    store_paths: Vec<String>,
    /// Paths looked up (and downloaded) at a time.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: u16,
    #[command(flatten)]
    services: ServiceArgs,
}

/// Runs the command: prints each path of the closures as it is in the store, then a summary
/// on stderr.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.services.substituters.is_empty() {
        bail!("give at least one --substituter URL (a Nix binary cache) to substitute from");
    }
    let roots = args
        .store_paths
        .iter()
        .map(|p| StorePath::parse(p).with_context(|| format!("{p:?} is not a store path")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let opened = args.services.open(Role::Client).await?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        let style = indicatif::ProgressStyle::with_template("{spinner} {pos} paths, {msg}, {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        bar
    });
    let stats = opened.substitute_stats.clone();
    let figures = |nar_bytes: u64| {
        format!(
            "{} of NAR, {} downloaded, {} new in the blob store",
            indicatif::HumanBytes(nar_bytes),
            indicatif::HumanBytes(stats.downloaded()),
            indicatif::HumanBytes(stats.stored())
        )
    };
    let mut stdout = std::io::stdout();
    let mut nar_bytes = 0u64;
    let mut written = Ok(());
    let closure =
        tvix_store::substitute::closure(opened.store.path_info.as_ref(), &roots, usize::from(args.jobs), &mut |info| {
            nar_bytes += info.nar_size;
            if written.is_ok() {
                written = writeln!(stdout, "{}", info.store_path);
            }
            if let Some(bar) = &bar {
                bar.inc(1);
                bar.set_message(figures(nar_bytes));
            }
        })
        .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let closure = closure?;
    written?;
    stdout.flush()?;
    eprintln!("{} paths in the store: {}", closure.len(), figures(nar_bytes));
    Ok(())
}
