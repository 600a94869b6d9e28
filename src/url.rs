//! Parsing of service addresses (`memory://`, `redb:///path`, `grpc+unix:///path`, ...).

use std::path::PathBuf;

/// Why a service address could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    #[error("invalid service address {0:?}: {1}")]
    Parse(String, String),
    #[error("unsupported scheme {0:?} for a {1} service")]
    UnsupportedScheme(String, &'static str),
    #[error("service address {0:?} needs an absolute path (e.g. scheme:///var/lib/x)")]
    NoPath(String),
    #[error("cannot open {0}: {1}")]
    Open(String, String),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
}

/// Parses an address as a URL.
pub fn parse(addr: &str) -> Result<url::Url, AddrError> {
    url::Url::parse(addr).map_err(|e| AddrError::Parse(addr.to_string(), e.to_string()))
}

/// The local file-system path of `scheme:///path` (also accepts `scheme://localhost/path`).
pub fn local_path(url: &url::Url) -> Result<PathBuf, AddrError> {
    let no_path = || AddrError::NoPath(url.to_string());
    if url.host_str().is_some_and(|h| !h.is_empty() && h != "localhost") {
        return Err(no_path());
    }
    let path = url.to_file_path().map_err(|_| no_path())?;
    if path.as_os_str().is_empty() || path == std::path::Path::new("/") {
        return Err(no_path());
    }
    Ok(path)
}
