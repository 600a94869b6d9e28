//! Command-line interface: one module per subcommand.

mod copy;
mod daemon;
mod dump;
mod import;
mod mount;
mod path_info;
mod virtiofs;

use clap::{Parser, Subcommand};
use tvix_store::services::{self, Role, ServiceAddrs, Services};

/// A content-addressed Nix store that presents /nix/store lazily.
#[derive(Parser)]
#[command(name = "tvix-store", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Mount the store with FUSE.
    Mount(mount::Args),
    /// Serve the store to virtual machines as a vhost-user-fs device.
    Virtiofs(virtiofs::Args),
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
            Command::Mount(args) => mount::run(args).await,
            Command::Virtiofs(args) => virtiofs::run(args).await,
        }
    }
}

/// Where the store's services are, for every subcommand. Without an address, the embedded
/// default store is used (see README: "The default store").
#[derive(clap::Args, Debug, Clone)]
pub struct ServiceArgs {
    /// BlobService address (memory://, objectstore+file:///path, grpc+unix:///path, grpc+http://host:port).
    #[arg(long, env = "BLOB_SERVICE_ADDR")]
    pub blob_service_addr: Option<String>,
    /// DirectoryService address (memory://, redb:///path, grpc+unix:///path, grpc+http://host:port).
    #[arg(long, env = "DIRECTORY_SERVICE_ADDR")]
    pub directory_service_addr: Option<String>,
    /// PathInfoService address (memory://, redb:///path, grpc+unix:///path, grpc+http://host:port).
    #[arg(long, env = "PATH_INFO_SERVICE_ADDR")]
    pub path_info_service_addr: Option<String>,
}

impl ServiceArgs {
    /// Opens the services these arguments name.
    pub async fn open(&self, role: Role) -> anyhow::Result<Services> {
        let addrs = ServiceAddrs {
            blob: self.blob_service_addr.clone(),
            directory: self.directory_service_addr.clone(),
            path_info: self.path_info_service_addr.clone(),
        };
        Ok(services::open(&addrs, role).await?)
    }
}

/// Logs to stderr; `RUST_LOG` picks the level (default: warnings and errors).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
