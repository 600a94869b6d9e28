//! `tvix-store verify`, `tvix-store delete` and `tvix-store gc`: run in this process when it
//! holds the store's backends, else by the daemon (or default-store owner) serving the store.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tvix_store::compose::{Maintenance, Role};
use tvix_store::grpc::GrpcAdmin;
use tvix_store::maintenance::{self, DeleteOptions, GcOptions, GcReport, Swept, VerifyEvent, VerifyOptions};
use tvix_store::storepath::StorePath;

use super::ServiceArgs;

/// Arguments of `tvix-store verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Store paths to check (`/nix/store/<hash>-<name>` or basenames); all when none are given.
    store_paths: Vec<String>,
    /// Re-hash every blob and chunk.
    #[arg(long)]
    contents: bool,
    /// Recompute each path's NAR hash and size and compare them with its PathInfo.
    #[arg(long)]
    nar: bool,
    #[command(flatten)]
    services: ServiceArgs,
}

/// Arguments of `tvix-store delete`.
#[derive(clap::Args)]
pub struct DeleteArgs {
    /// Store paths whose PathInfos to remove (their data goes with the next `gc`).
    #[arg(required = true)]
    store_paths: Vec<String>,
    /// Delete even paths that other paths in the store refer to.
    #[arg(long)]
    ignore_liveness: bool,
    #[command(flatten)]
    services: ServiceArgs,
}

/// Arguments of `tvix-store gc`.
#[derive(clap::Args)]
pub struct GcArgs {
    /// Only print what would be removed.
    #[arg(long)]
    dry_run: bool,
    /// Unreferenced data written this recently is kept: it may belong to an import still
    /// running (e.g. `30m`, `2h`, `0s`).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    grace: Duration,
    #[command(flatten)]
    services: ServiceArgs,
}

fn parse_paths(paths: &[String]) -> anyhow::Result<Vec<StorePath>> {
    paths.iter().map(|p| StorePath::parse(p).with_context(|| format!("{p:?} is not a store path"))).collect()
}

/// The admin service of the daemon at `target`.
fn remote(target: &tvix_store::grpc::GrpcTarget) -> anyhow::Result<GrpcAdmin> {
    let channel = tvix_store::grpc::channel(target).map_err(anyhow::Error::msg)?;
    Ok(GrpcAdmin::new(channel, target.to_string()))
}

/// Runs `verify`: prints each problem on stdout, a summary on stderr; fails if any was found.
pub async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let options = VerifyOptions { paths: parse_paths(&args.store_paths)?, contents: args.contents, nar: args.nar };
    if args.services.cache_dir.is_some() {
        // Through a cache, verify would check the cached copies and call a store clean that
        // has lost data.
        bail!("verify checks the store itself: run it without --cache-dir");
    }
    let opened = args.services.open(Role::Client).await?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        let style = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} paths, {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar
    });
    let printed = Arc::new(parking_lot::Mutex::new(std::io::stdout()));
    let report = {
        let bar = bar.clone();
        move |event: VerifyEvent| match event {
            VerifyEvent::Problem(problem) => {
                let line = problem.to_string();
                match &bar {
                    Some(bar) => bar.suspend(|| writeln!(printed.lock(), "{line}")),
                    None => writeln!(printed.lock(), "{line}"),
                }
                .ok();
            }
            VerifyEvent::Progress { done, total } => {
                if let Some(bar) = &bar {
                    bar.set_length(total);
                    bar.set_position(done);
                }
            }
        }
    };
    let summary = match &opened.maintenance {
        Maintenance::Remote(target) => remote(target)?.verify(&options, &report).await?,
        _ => maintenance::verify(&opened.store, &options, &report).await?,
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let hashed = if options.contents {
        format!(", {} re-hashed", indicatif::HumanBytes(summary.bytes_hashed))
    } else {
        String::new()
    };
    eprintln!(
        "checked {} paths, {} directories, {} blobs{hashed}: {} problems",
        summary.paths, summary.directories, summary.blobs, summary.problems
    );
    if summary.problems > 0 {
        bail!("the store has {} problems", summary.problems);
    }
    Ok(())
}

/// Runs `delete`: prints each path removed.
pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let paths = parse_paths(&args.store_paths)?;
    let opened = args.services.open(Role::Client).await?;
    let deleted: Vec<String> = match &opened.maintenance {
        Maintenance::Local(backends) => {
            let options = DeleteOptions { ignore_liveness: args.ignore_liveness };
            maintenance::delete(&opened.store, backends, &paths, options)
                .await?
                .iter()
                .map(StorePath::to_absolute_path)
                .collect()
        }
        Maintenance::Remote(target) => remote(target)?.delete(&paths, args.ignore_liveness).await?,
        Maintenance::Unsupported(why) => bail!("cannot delete from this store: {why}"),
    };
    let mut stdout = std::io::stdout().lock();
    for path in deleted {
        writeln!(stdout, "{path}")?;
    }
    Ok(())
}

/// Runs `gc`: prints what was removed (or would be, with `--dry-run`).
pub async fn gc(args: GcArgs) -> anyhow::Result<()> {
    let opened = args.services.open(Role::Client).await?;
    let options = GcOptions { dry_run: args.dry_run, grace: args.grace };
    let report = match &opened.maintenance {
        Maintenance::Local(backends) => maintenance::collect_garbage(&opened.store, backends, options).await?,
        Maintenance::Remote(target) => remote(target)?.collect_garbage(options).await?,
        Maintenance::Unsupported(why) => bail!("cannot collect garbage in this store: {why}"),
    };
    print_report(&report, args.dry_run);
    Ok(())
}

fn print_report(report: &GcReport, dry_run: bool) {
    let verb = if dry_run { "would remove" } else { "removed" };
    let line = |noun: &str, swept: &Swept| {
        println!(
            "{noun}: {} live, {verb} {} ({}), {} unreferenced kept (written within the grace period)",
            swept.live,
            swept.removed,
            indicatif::HumanBytes(swept.removed_bytes),
            swept.recent
        );
    };
    line("directories", &report.directories);
    line("chunk lists", &report.chunk_lists);
    line("chunks", &report.chunks);
    if !dry_run {
        println!("temporary files: removed {} ({})", report.leftovers, indicatif::HumanBytes(report.leftover_bytes));
    }
    println!(
        "{} paths kept everything live; {verb} {} objects, {} in all",
        report.paths,
        report.removed(),
        indicatif::HumanBytes(report.removed_bytes())
    );
}
