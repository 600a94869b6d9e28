//! `tvix-store import`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tvix_store::compose::Role;
use tvix_store::import::{Progress, import_path};

use super::ServiceArgs;

/// Arguments of `tvix-store import`.
#[derive(clap::Args)]
pub struct Args {
    /// Local paths (files, directories, symlinks) to import.
    #[arg(required = true)]
    paths: Vec<PathBuf>,

    #[command(flatten)]
    services: ServiceArgs,
}

/// Runs the command: prints one store path per line, as `nix-store --add` does.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let opened = args.services.open(Role::Client).await?;
    let mut stdout = std::io::stdout().lock();
    for path in &args.paths {
        let progress = Arc::new(Progress::default());
        let bar = ProgressDisplay::start(format!("importing {}", path.display()), progress.clone());
        let res = import_path(&opened.store, path, Some(progress)).await;
        bar.finish();
        let info = res.with_context(|| format!("importing {}", path.display()))?;
        writeln!(stdout, "{}", info.store_path)?;
    }
    stdout.flush()?;
    Ok(())
}

/// A spinner with bytes, entries and rate on stderr, shown only when stderr is a terminal.
pub(super) struct ProgressDisplay {
    bar: Option<indicatif::ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl ProgressDisplay {
    /// Starts displaying `progress` under `message`.
    pub(super) fn start(message: String, progress: Arc<Progress>) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self { bar: None, ticker: None };
        }
        let bar = indicatif::ProgressBar::new_spinner();
        let style = indicatif::ProgressStyle::with_template(
            "{spinner} {msg}: {bytes} ({bytes_per_sec}), {prefix} entries, {elapsed}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_message(message);
        let ticking = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                ticking.set_position(progress.bytes());
                ticking.set_prefix(progress.entries().to_string());
                ticking.tick();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { bar: Some(bar), ticker: Some(ticker) }
    }

    /// Removes the display.
    pub(super) fn finish(self) {
        if let Some(t) = self.ticker {
            t.abort();
        }
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}
