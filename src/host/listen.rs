//! Where a server listens: a TCP address or a unix socket path, and the socket file's lifetime.

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::HostError;

/// A listen address as given to `tvix-store daemon -l`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `127.0.0.1:8000`, `[::1]:8000`.
    Tcp(SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
    /// `sd-listen`: the sockets systemd passed (socket activation).
    Systemd,
}

impl std::str::FromStr for ListenAddr {
    type Err = HostError;

    /// `host:port` with a literal IP address, a path (anything containing a `/`), or
    /// `sd-listen`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "sd-listen" {
            return Ok(ListenAddr::Systemd);
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(ListenAddr::Tcp(addr));
        }
        if let Some(path) = s.strip_prefix("unix://").or_else(|| s.contains('/').then_some(s)) {
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        Err(HostError::InvalidAddr(s.to_string()))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "{}", path.display()),
            ListenAddr::Systemd => f.write_str("sd-listen"),
        }
    }
}

/// A bound listener.
pub enum Listener {
    /// A TCP listener.
    Tcp(tokio::net::TcpListener),
    /// A unix socket listener and its socket file, removed when dropped (none for a socket
    /// systemd passed: its file is systemd's).
    Unix(tokio::net::UnixListener, Option<SocketFile>),
}

impl Listener {
    /// Binds `addr`. A unix socket file left behind by a dead server is replaced; one a live
    /// server listens on is an error, as is any other kind of file at that path.
    pub async fn bind(addr: &ListenAddr) -> Result<Self, HostError> {
        match addr {
            ListenAddr::Tcp(a) => {
                let listener =
                    tokio::net::TcpListener::bind(a).await.map_err(|e| HostError::Bind(addr.to_string(), e))?;
                Ok(Listener::Tcp(listener))
            }
            ListenAddr::Unix(path) => {
                remove_stale_socket(path)?;
                let listener =
                    tokio::net::UnixListener::bind(path).map_err(|e| HostError::Bind(addr.to_string(), e))?;
                let file = SocketFile::new(path).map_err(|e| HostError::Bind(addr.to_string(), e))?;
                Ok(Listener::Unix(listener, Some(file)))
            }
            ListenAddr::Systemd => Err(HostError::Activation("sd-listen is several sockets: use bind_all".into())),
        }
    }

    /// The listeners of `addr`: one, or every socket systemd passed for `sd-listen` (at least
    /// one, else an error).
    pub async fn bind_all(addr: &ListenAddr) -> Result<Vec<Self>, HostError> {
        if *addr != ListenAddr::Systemd {
            return Ok(vec![Self::bind(addr).await?]);
        }
        let passed = super::systemd::activated()?;
        if passed.is_empty() {
            return Err(HostError::Activation(
                "-l sd-listen, but systemd passed no sockets (LISTEN_FDS/LISTEN_PID not set for this process)".into(),
            ));
        }
        Ok(passed)
    }

    /// What is listened on, for messages.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| "tcp".into()),
            Listener::Unix(l, file) => match file {
                Some(file) => file.path.display().to_string(),
                None => l
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                    .unwrap_or_else(|| "a unix socket from systemd".into()),
            },
        }
    }
}

fn remove_stale_socket(path: &Path) -> Result<(), HostError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(HostError::NotSocket(path.to_path_buf()));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(HostError::InUse(path.to_path_buf()));
    }
    std::fs::remove_file(path).map_err(|e| HostError::Bind(path.display().to_string(), e))
}

/// The socket file a server created. Removed on drop, but only if it is still the file this
/// server bound: a later server may already have replaced it.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    identity: (u64, u64),
}

impl SocketFile {
    fn new(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(Self { path: path.to_path_buf(), identity: (meta.dev(), meta.ino()) })
    }

    /// Another handle on the same socket file; whichever is dropped first removes it.
    pub(super) fn twin(&self) -> Self {
        Self { path: self.path.clone(), identity: self.identity }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if it is still ours.
    pub fn remove(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.identity
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix_addresses() {
        assert_eq!("127.0.0.1:8000".parse::<ListenAddr>().unwrap(), ListenAddr::Tcp("127.0.0.1:8000".parse().unwrap()));
        assert_eq!("[::1]:8000".parse::<ListenAddr>().unwrap(), ListenAddr::Tcp("[::1]:8000".parse().unwrap()));
        assert_eq!("/run/x.sock".parse::<ListenAddr>().unwrap(), ListenAddr::Unix("/run/x.sock".into()));
        assert_eq!("./x.sock".parse::<ListenAddr>().unwrap(), ListenAddr::Unix("./x.sock".into()));
        assert!("localhost".parse::<ListenAddr>().is_err());
    }
}
