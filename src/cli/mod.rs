//! Command-line interface: one module per subcommand.

mod copy;
mod daemon;
mod dump;
mod import;
mod maintenance;
mod metrics;
mod mount;
mod nar_bridge;
mod path_info;
mod shell;
mod substitute;
mod virtiofs;

use clap::{Parser, Subcommand};
use std::time::Duration;

use tvix_store::compose::{self, Opened, Role, StoreArgs};

/// A content-addressed Nix store that presents /nix/store lazily.
#[derive(Parser)]
#[command(name = "tvix-store", version)]
pub struct Cli {
    /// How log lines on stderr look: `human`, or `json` (one object per line, with the store
    /// path or digest a line is about as a field).
    #[arg(long, global = true, value_enum, default_value = "human", env = "TVIX_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The format of log lines.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the BlobService, DirectoryService and PathInfoService over gRPC.
    Daemon(daemon::Args),
    /// Import local paths into the store; prints one store path per line.
    Import(import::Args),
    /// Copy a closure described by a Nix __structuredAttrs JSON file from /nix/store.
    Copy(copy::Args),
    /// Write a store path's NAR to stdout.
    Dump(dump::Args),
    /// Print store paths' metadata as JSON, like `nix path-info --json`.
    PathInfo(path_info::Args),
    /// Fetch store paths and their closures from Nix binary caches (--substituter) into the store.
    Substitute(substitute::Args),
    /// Mount the store with FUSE.
    Mount(mount::Args),
    /// Unmount a mount whose process died (started by `mount`).
    #[command(hide = true)]
    UnmountWatch(mount::WatchArgs),
    /// Serve the store to virtual machines as a vhost-user-fs device.
    Virtiofs(virtiofs::Args),
    /// Serve the store as a Nix binary cache over HTTP (nix copy --from, substituters, uploads).
    NarBridge(nar_bridge::Args),
    /// Check that every store path's data is present and intact; exit status 0 only when clean.
    Verify(maintenance::VerifyArgs),
    /// Remove store paths (their PathInfos); their data goes with the next gc.
    Delete(maintenance::DeleteArgs),
    /// Remove everything no store path keeps alive (blobs, chunks, directories).
    Gc(maintenance::GcArgs),
    /// Print a shell completion script (bash, zsh, fish) to stdout.
    Completions(shell::CompletionsArgs),
    /// Write man pages for every command into a directory.
    Man(shell::ManArgs),
}

impl Cli {
    /// Runs the chosen subcommand.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Daemon(args) => daemon::run(args).await,
            Command::Import(args) => import::run(args).await,
            Command::Copy(args) => copy::run(args).await,
            Command::Dump(args) => dump::run(args).await,
            Command::PathInfo(args) => path_info::run(args).await,
            Command::Substitute(args) => substitute::run(args).await,
            Command::Mount(args) => mount::run(args).await,
            Command::UnmountWatch(args) => mount::watch(args),
            Command::Virtiofs(args) => virtiofs::run(args).await,
            Command::NarBridge(args) => nar_bridge::run(args).await,
            Command::Verify(args) => maintenance::verify(args).await,
            Command::Delete(args) => maintenance::delete(args).await,
            Command::Gc(args) => maintenance::gc(args).await,
            Command::Completions(args) => shell::completions(args),
            Command::Man(args) => shell::man(args),
        }
    }
}

/// Where the store's services are, for every subcommand. Without an address or composition
/// file, the embedded default store is used (see docs/default-store.md).
#[derive(clap::Args, Debug, Clone)]
pub struct ServiceArgs {
    /// BlobService address (memory://, objectstore+file:///path, objectstore+memory://,
    /// grpc+unix:///path, grpc+http://host:port).
    #[arg(long, env = "BLOB_SERVICE_ADDR")]
    pub blob_service_addr: Option<String>,
    /// DirectoryService address (memory://, redb:///path, grpc+unix:///path, grpc+http://host:port).
    #[arg(long, env = "DIRECTORY_SERVICE_ADDR")]
    pub directory_service_addr: Option<String>,
    /// PathInfoService address (memory://, redb:///path, grpc+unix:///path, grpc+http://host:port).
    #[arg(long, env = "PATH_INFO_SERVICE_ADDR")]
    pub path_info_service_addr: Option<String>,
    /// A composition file (TOML) wiring layered services, e.g. a local cache in front of a
    /// remote store (see docs/composition.md). Services it does not set come from the flags
    /// above or the default store.
    #[arg(long, env = "TVIX_STORE_CONFIG")]
    pub store_config: Option<std::path::PathBuf>,
    /// A Nix binary cache to fetch paths from when the store does not have them, as Nix names
    /// it (https://cache.example.org, http://host:port/prefix, file:///dir); repeatable, tried
    /// in order of their `?priority=` (then as given). What it sends is kept in the store.
    #[arg(long = "substituter", value_name = "URL")]
    pub substituters: Vec<String>,
    /// A public key (`name:base64`, as in Nix's trusted-public-keys) of which one must have
    /// signed what a substituter sends; repeatable. Without any, signatures are not checked.
    #[arg(long = "trusted-public-key", value_name = "KEY")]
    pub trusted_public_keys: Vec<String>,
    /// A local disk cache in front of the blob and directory services: what is read once is
    /// kept there (verified when stored and when read) and read from there afterwards, also by
    /// later processes; several processes may share one directory (see docs/disk-cache.md).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<std::path::PathBuf>,
    /// The most the --cache-dir files may take on disk, in bytes or with a binary unit (K, M,
    /// G, T), e.g. 10G; least recently used files are evicted beyond it. Default 10G.
    #[arg(long, value_name = "SIZE", value_parser = parse_cache_size)]
    pub cache_size: Option<u64>,
}

fn parse_cache_size(given: &str) -> Result<u64, String> {
    tvix_store::castore::diskcache::parse_size(given).map_err(|e| e.to_string())
}

impl ServiceArgs {
    /// The store these arguments name, as the composition layer takes it.
    pub fn store_args(&self) -> StoreArgs {
        StoreArgs {
            blob: self.blob_service_addr.clone(),
            directory: self.directory_service_addr.clone(),
            path_info: self.path_info_service_addr.clone(),
            config: self.store_config.clone(),
            substituters: self.substituters.clone(),
            trusted_public_keys: self.trusted_public_keys.clone(),
            cache_dir: self.cache_dir.clone(),
            cache_size: self.cache_size,
        }
    }

    /// Opens the store these arguments name.
    pub async fn open(&self, role: Role) -> anyhow::Result<Opened> {
        Ok(compose::open(&self.store_args(), role).await?)
    }
}

/// Who may do what on a server's listeners (docs/access.md). The store's owner (the uid the
/// process runs as) and root may do everything on unix sockets.
#[derive(clap::Args, Debug, Clone)]
pub struct AccessArgs {
    /// Rights of TCP clients that present no token: a comma-separated list of read, write,
    /// sign, admin; or all, none.
    #[arg(long, value_name = "RIGHTS", default_value = "read")]
    pub tcp_rights: tvix_store::access::Rights,
    /// Rights of other users connecting to a unix socket (its file mode decides who can).
    #[arg(long, value_name = "RIGHTS", default_value = "read")]
    pub unix_rights: tvix_store::access::Rights,
    /// A file of tokens, one a line: NAME RIGHTS SHA256-OF-TOKEN [EXPIRES]; a client presents
    /// one as `Authorization: Bearer TOKEN` (gRPC metadata, HTTP) or as the password of HTTP
    /// basic auth (Nix's netrc-file).
    #[arg(long, value_name = "FILE")]
    pub tokens_file: Option<std::path::PathBuf>,
    /// Deprecated: adds `admin` to --tcp-rights (delete, gc and verify for every TCP client).
    #[arg(long, hide = true)]
    pub allow_remote_admin: bool,
}

impl AccessArgs {
    /// The policy these arguments describe.
    pub fn policy(&self) -> anyhow::Result<tvix_store::host::AccessPolicy> {
        Ok(self.policy_with(self.tokens()?))
    }

    /// The tokens of `--tokens-file`.
    pub fn tokens(&self) -> anyhow::Result<tvix_store::host::Tokens> {
        Ok(match &self.tokens_file {
            Some(file) => tvix_store::host::Tokens::load(file)?,
            None => tvix_store::host::Tokens::default(),
        })
    }

    /// The policy these arguments describe, with `tokens`.
    pub fn policy_with(&self, tokens: tvix_store::host::Tokens) -> tvix_store::host::AccessPolicy {
        let mut tcp = self.tcp_rights;
        if self.allow_remote_admin {
            tracing::warn!(
                "--allow-remote-admin is deprecated: give a token the admin right, or --tcp-rights read,admin"
            );
            tcp = tcp.with(tvix_store::access::Right::Admin);
        }
        tvix_store::host::AccessPolicy::new(self.unix_rights, tcp, tokens)
    }
}

/// What the filesystem frontends (mount, virtiofs) show, and how long they wait for the store.
#[derive(clap::Args, Debug, Clone)]
pub struct FsArgs {
    /// List all store paths in the root directory (otherwise the root is not listable, but
    /// lookups of `<hash>-<name>` work).
    #[arg(short = 'l', long)]
    pub list_root: bool,
    /// Show blob and directory digests as extended attributes
    /// (user.tvix.castore.blob.digest, user.tvix.castore.directory.digest).
    #[arg(long)]
    pub show_xattr: bool,
    /// Seconds after which a store call that got no answer fails with EIO.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// Most directory entries kept in cached listings (80 bytes each plus the name); inodes the
    /// kernel has forgotten are freed. 0 disables eviction: everything ever walked stays in
    /// memory (for measuring; see docs/mount-memory.md).
    #[arg(long, default_value_t = tvix_store::fs::LISTING_CACHE_ENTRIES)]
    pub cache_entries: usize,
}

impl FsArgs {
    /// The filesystem core's options for these flags.
    pub fn options(&self) -> tvix_store::fs::Options {
        tvix_store::fs::Options {
            list_root: self.list_root,
            show_xattr: self.show_xattr,
            call_timeout: Duration::from_secs(self.timeout),
            listing_cache_entries: self.cache_entries,
            evict: self.cache_entries != 0,
            ..tvix_store::fs::Options::default()
        }
    }
}

/// Logs to stderr; `RUST_LOG` picks the level (default: warnings and errors).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// The filesystem core over `store`, run on the current tokio runtime (for mount and virtiofs).
pub fn store_fs(store: &tvix_store::store::Store, options: tvix_store::fs::Options) -> tvix_store::fs::StoreFs {
    tvix_store::fs::StoreFs::new(
        store.blob.clone(),
        store.directory.clone(),
        store.root_nodes(),
        tokio::runtime::Handle::current(),
        options,
    )
}
