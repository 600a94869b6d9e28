//! Opening the three services a command works with, from addresses or the embedded default.

use std::sync::Arc;

use crate::castore::blobservice::{self, BlobService};
use crate::castore::directoryservice::{self, DirectoryService};
use crate::defaultstore::{self, DefaultStoreError, StoreLock};
use crate::pathinfo::{self, PathInfoService};
use crate::url::AddrError;

/// Service addresses as given on the command line; `None` means "the embedded default store".
#[derive(Debug, Clone, Default)]
pub struct ServiceAddrs {
    /// BlobService address.
    pub blob: Option<String>,
    /// DirectoryService address.
    pub directory: Option<String>,
    /// PathInfoService address.
    pub path_info: Option<String>,
}

/// How a command uses the default store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A long-running command: owns the store's files for its lifetime and serves them to others
    /// on the store's socket.
    Owner,
    /// A short command: talks to the owner if one runs, else opens the files itself.
    Client,
}

/// The services a command works with.
pub struct Services {
    /// Blobs.
    pub blob: Arc<dyn BlobService>,
    /// Directories.
    pub directory: Arc<dyn DirectoryService>,
    /// PathInfo.
    pub path_info: Arc<dyn PathInfoService>,
    /// Held while this process has the default store's files open.
    pub store_lock: Option<StoreLock>,
}

/// Why the services could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Addr(#[from] AddrError),
    #[error(transparent)]
    DefaultStore(#[from] DefaultStoreError),
}

/// Opens the services: each from its address, or from the embedded default store.
pub async fn open(addrs: &ServiceAddrs, role: Role) -> Result<Services, OpenError> {
    let mut store_lock = None;
    let mut defaults = None;
    if addrs.blob.is_none() || addrs.directory.is_none() || addrs.path_info.is_none() {
        let dir = defaultstore::store_dir()?;
        let socket = dir.join(defaultstore::SOCKET_NAME);
        // A socket file alone may be left over from a crashed owner; only a live one counts.
        let owner_alive = role == Role::Client && std::os::unix::net::UnixStream::connect(&socket).is_ok();
        if owner_alive {
            let addr = defaultstore::socket_addr(&dir);
            defaults = Some((addr.clone(), addr.clone(), addr));
        } else {
            let lock = StoreLock::acquire(&dir)?;
            let local = defaultstore::local_addrs(lock.dir());
            defaults = Some((local.blob, local.directory, local.path_info));
            store_lock = Some(lock);
        }
    }
    let pick = |given: &Option<String>, default: fn(&(String, String, String)) -> &String| -> String {
        given
            .clone()
            .unwrap_or_else(|| defaults.as_ref().map(default).cloned().unwrap_or_default())
    };
    let blob = blobservice::from_addr(&pick(&addrs.blob, |d| &d.0)).await?;
    let directory = directoryservice::from_addr(&pick(&addrs.directory, |d| &d.1)).await?;
    let path_info = pathinfo::from_addr(&pick(&addrs.path_info, |d| &d.2)).await?;
    Ok(Services { blob, directory, path_info, store_lock })
}
