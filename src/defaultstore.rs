//! The embedded default store: one local directory that every command uses when no service
//! address is given.
//!
//! Only one process opens the store's files at a time (an exclusive lock on `<dir>/lock`). A
//! long-running command (daemon, mount, virtiofs) takes the lock for its lifetime and serves the
//! store on `<dir>/daemon.sock`; every other command first tries that socket and talks to the
//! owner over gRPC, and only opens the files itself (waiting for the lock) when no owner runs.

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
    /// Takes the lock, waiting for another holder to let go (saying so on stderr once).
    pub fn acquire(dir: &Path) -> Result<Self, DefaultStoreError> {
        std::fs::create_dir_all(dir).map_err(|e| DefaultStoreError::Create(dir.to_path_buf(), e))?;
        let path = dir.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| DefaultStoreError::Lock(path.clone(), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                eprintln!("waiting for another tvix-store process to release {}", path.display());
                file.lock().map_err(|e| DefaultStoreError::Lock(path.clone(), e))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(DefaultStoreError::Lock(path, e)),
        }
        Ok(Self { _file: file, dir: dir.to_path_buf() })
    }

    /// The locked store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
