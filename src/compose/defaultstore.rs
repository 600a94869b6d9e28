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

use super::{Kind, Leaf};
use crate::grpc::GrpcTarget;

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
    /// Another process owns them and serves them on this socket.
    Client(PathBuf),
}

impl Attached {
    /// The backend of service `kind`: a file or directory in the store, or the owner's socket;
    /// with the store URL that names it in messages. Built as paths, not parsed from URLs: a
    /// store directory whose name has a `#` or `?` must not turn into a URL fragment or query.
    pub fn backend(&self, kind: Kind) -> (String, Leaf) {
        match self {
            Attached::Owner(lock) => {
                let dir = lock.dir();
                let (scheme, path) = match kind {
                    Kind::Blob => ("objectstore+file", dir.join("blobs")),
                    Kind::Directory => ("redb", dir.join("directories.redb")),
                    Kind::PathInfo => ("redb", dir.join("pathinfo.redb")),
                };
                let url = format!("{scheme}://{}", path.display());
                let leaf = if kind == Kind::Blob { Leaf::LocalFiles(path) } else { Leaf::Redb(path) };
                (url, leaf)
            }
            Attached::Client(socket) => {
                (format!("grpc+unix://{}", socket.display()), Leaf::Grpc(GrpcTarget::Unix(socket.clone())))
            }
        }
    }

    /// The store lock, if this process holds the files.
    pub fn into_lock(self) -> Option<StoreLock> {
        match self {
            Attached::Owner(lock) => Some(lock),
            Attached::Client(_) => None,
        }
    }
}

/// Writes this process's id into the lock file it now holds, so a command waiting for the lock
/// can say who holds it. Best effort: the lock is what counts.
fn note_holder(mut file: &File) {
    use std::io::{Seek, Write};
    let _ = file.set_len(0).and_then(|()| file.rewind()).and_then(|_| write!(file, "{}", std::process::id()));
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
            return Ok(Attached::Client(socket));
        }
        match file.try_lock() {
            Ok(()) => {
                note_holder(&file);
                return Ok(Attached::Owner(StoreLock { _file: file, dir: dir.to_path_buf() }));
            }
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(DefaultStoreError::Lock(path, e)),
        }
        if !waiting_said {
            let holder = std::fs::read_to_string(&path)
                .ok()
                .and_then(|pid| pid.trim().parse::<u32>().ok())
                .map(|pid| format!(" (pid {pid})"))
                .unwrap_or_default();
            eprintln!("waiting for another tvix-store process{holder} to release {}", path.display());
            waiting_said = true;
        }
        tokio::time::sleep(RETRY_INTERVAL).await;
    }
}
