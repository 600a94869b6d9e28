//! `tvix-store completions SHELL` and `tvix-store man DIR`: shell completions and man pages,
//! both generated from the clap definitions, so they never drift from the real options.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::CommandFactory;

use super::Cli;

/// Arguments of `tvix-store completions`.
#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    shell: Shell,
}

/// The shells completions are made for.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Arguments of `tvix-store man`.
#[derive(clap::Args)]
pub struct ManArgs {
    /// Where to write the pages (tvix-store.1, tvix-store-mount.1, …), e.g.
    /// /usr/local/share/man/man1.
    dir: PathBuf,
}

/// Writes the completion script to stdout.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tvix-store", &mut script);
    // Written as one piece so a closed stdout is an error, not a panic inside the generator.
    std::io::Write::write_all(&mut std::io::stdout(), &script).context("writing the completion script")
}

/// Writes one man page per command into the directory.
pub fn man(args: ManArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let command = Cli::command();
    let mut pages = vec![(String::from("tvix-store"), command.clone())];
    // Hidden commands (the mount's unmount watcher) are internal: no page.
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        pages.push((
            format!("tvix-store-{}", sub.get_name()),
            sub.clone().name(format!("tvix-store-{}", sub.get_name())),
        ));
    }
    for (name, page) in pages {
        let path = args.dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(page).render(&mut out).with_context(|| format!("rendering {name}"))?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        writeln!(std::io::stdout(), "{}", path.display()).context("writing to stdout")?;
    }
    Ok(())
}
