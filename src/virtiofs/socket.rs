//! The listening vhost-user socket: created with a chosen mode, never briefly wider.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::error::VirtiofsError;

/// Mode of the socket unless told otherwise: only the owner (the VMM normally runs as the same
/// user) may connect, since whoever connects reads the whole store.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// A bound, listening unix socket at a path; the path is removed on drop.
pub struct SocketListener {
    listener: Option<UnixListener>,
    path: PathBuf,
}

impl SocketListener {
    /// Binds `path` with permission bits `mode`.
    ///
    /// The socket is bound inside a fresh private directory next to `path`, chmod-ed there and
    /// then renamed into place, so that at no moment does a socket with the umask's (wider)
    /// mode exist at `path`. A stale socket left at `path` by a dead daemon is replaced; a
    /// live one is an error.
    pub fn bind(path: &Path, mode: u32) -> Result<Self, VirtiofsError> {
        let bad = |reason| VirtiofsError::BadSocketPath { path: path.to_owned(), reason };
        let io_err = |source| VirtiofsError::Socket { path: path.to_owned(), source };
        let file_name = path.file_name().ok_or_else(|| bad("it has no file name"))?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        if UnixStream::connect(path).is_ok() {
            return Err(VirtiofsError::SocketInUse { path: path.to_owned() });
        }
        if let Ok(meta) = fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(bad("a non-socket file exists there"));
            }
        }
        let staging = StagingDir::create(&parent).map_err(io_err)?;
        let staged = staging.0.join(file_name);
        let listener = UnixListener::bind(&staged).map_err(io_err)?;
        fs::set_permissions(&staged, fs::Permissions::from_mode(mode & 0o777)).map_err(io_err)?;
        fs::rename(&staged, path).map_err(io_err)?;
        Ok(SocketListener { listener: Some(listener), path: path.to_owned() })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands the listening socket over (to the vhost-user machinery); the path is still
    /// removed when `self` drops.
    pub(crate) fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }
}

/// A private (0700) directory next to the socket path, removed on drop.
struct StagingDir(PathBuf);

impl StagingDir {
    fn create(parent: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let mut attempt = 0u32;
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let dir = parent.join(format!(".tvix-virtiofs-{}-{nanos:x}-{attempt}", std::process::id()));
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(StagingDir(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl Drop for SocketListener {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
