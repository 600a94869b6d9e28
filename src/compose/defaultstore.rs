//! The embedded default store: one local directory that every command uses when no service
//! address is given.
//!
//! Only one process opens the store's files at a time (an exclusive lock on `<dir>/lock`). A
//! long-running command (daemon, mount, virtiofs) that holds the lock serves the store on
//! `<dir>/daemon.sock`; every other command, mount and virtiofs included, first tries that
//! socket and talks to the owner over gRPC, and only opens the files itself when no owner runs.
//! Only the daemon insists on owning the files (it waits for the lock).

use std::fs::File;
use std::path::{Path, PathBuf};

/// Name of the unix socket an owning process serves the store on.
pub const SOCKET_NAME: &str = "daemon.sock";

/// Why the default store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DefaultStoreError {
    #[error("no store directory: set TVIX_STORE_DIR (neither it nor XDG_DATA_HOME nor HOME is set)")]
    NoDirectory,
    #[error("cannot create store directory {0}: {1}")]
    Create(PathBuf, std::io::Error),
    #[error("cannot lock store directory {0}: {1}")]
    Lock(PathBuf, std::io::Error),
}

/// The default store directory: `$TVIX_STORE_DIR`; else `/var/lib/tvix-store` for root,
/// `$XDG_DATA_HOME/tvix-store` (or `~/.local/share/tvix-store`) otherwise.
pub fn store_dir() -> Result<PathBuf, DefaultStoreError> {
    if let Some(dir) = std::env::var_os("TVIX_STORE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/var/lib/tvix-store"));
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(data).join("tvix-store"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|home| PathBuf::from(home).join(".local/share/tvix-store"))
        .ok_or(DefaultStoreError::NoDirectory)
}

/// Addresses of the local backends inside a store directory.
pub struct LocalAddrs {
    /// BlobService address.
    pub blob: String,
    /// DirectoryService address.
    pub directory: String,
    /// PathInfoService address.
    pub path_info: String,
}

/// The local backend addresses for store directory `dir`.
pub fn local_addrs(dir: &Path) -> LocalAddrs {
    let d = dir.display();
    LocalAddrs {
        blob: format!("objectstore+file://{d}/blobs"),
        directory: format!("redb://{d}/directories.redb"),
        path_info: format!("redb://{d}/pathinfo.redb"),
    }
}

impl LocalAddrs {
    /// All three services at one address (the owner's socket).
    pub fn all(addr: String) -> Self {
        Self { blob: addr.clone(), directory: addr.clone(), path_info: addr }
    }
}

/// The address of the owner's socket in `dir`.
pub fn socket_addr(dir: &Path) -> String {
    format!("grpc+unix://{}", dir.join(SOCKET_NAME).display())
}

/// Exclusive ownership of a store directory's files, held until dropped.
pub struct StoreLock {
    _file: File,
    dir: PathBuf,
}

impl StoreLock {
    /// The locked store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// How a command came to use the default store.
pub enum Attached {
    /// It holds the store's files.
    Owner(StoreLock),
    /// Another process owns them and serves them at this address.
    Client(String),
}

/// How often a command waiting for the store checks again whether its owner serves it or its
/// lock is free: a mount started beside a daemon that is still starting comes up within this.
const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Attaches to the store in `dir`: as a client of the owner serving it on its socket (unless
/// `must_own`), else as owner of its files. While another process holds the lock without
/// serving the socket (an owner still starting, or a short command), waits, checking again
/// every [`RETRY_INTERVAL`], and says so on stderr once.
pub async fn attach(dir: &Path, must_own: bool) -> Result<Attached, DefaultStoreError> {
    std::fs::create_dir_all(dir).map_err(|e| DefaultStoreError::Create(dir.to_path_buf(), e))?;
    let path = dir.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| DefaultStoreError::Lock(path.clone(), e))?;
    let socket = dir.join(SOCKET_NAME);
    let mut waiting_said = false;
    loop {
        // A socket file alone may be left over from a crashed owner; only a live one counts.
        if !must_own && tokio::net::UnixStream::connect(&socket).await.is_ok() {
            return Ok(Attached::Client(socket_addr(dir)));
        }
        match file.try_lock() {
            Ok(()) => return Ok(Attached::Owner(StoreLock { _file: file, dir: dir.to_path_buf() })),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(DefaultStoreError::Lock(path, e)),
        }
        if !waiting_said {
            eprintln!("waiting for another tvix-store process to release {}", path.display());
            waiting_said = true;
        }
        tokio::time::sleep(RETRY_INTERVAL).await;
    }
}
