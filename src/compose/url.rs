//! Store URLs: what each scheme means, for which service.
//!
//! | scheme | blob | directory | path-info |
//! |---|---|---|---|
//! | `memory://` | yes | yes | yes |
//! | `objectstore+file:///dir` | local chunk files | | |
//! | `objectstore+memory://` | object_store in memory | | |
//! | `redb:///file.redb` | | yes | yes |
//! | `grpc+unix:///socket`, `grpc+http://host:port` | yes | yes | yes |

use std::path::PathBuf;

use super::Kind;
use crate::grpc::GrpcTarget;

/// A backend as a store URL names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leaf {
    /// `memory://`: in process memory.
    Memory,
    /// `objectstore+file:///dir`: blobs as chunk files in a local directory.
    LocalFiles(PathBuf),
    /// `objectstore+memory://`: blobs in `object_store`'s in-memory backend, through the
    /// generic object store chunk store.
    ObjectStoreMemory,
    /// `redb:///file.redb`: directories or PathInfo in a redb database.
    Redb(PathBuf),
    /// `grpc+unix://` or `grpc+http://`: our (or tvix's) gRPC service.
    Grpc(GrpcTarget),
}

/// Parses a store URL for a service of `kind`; the error says what is wrong with it.
pub fn parse(kind: Kind, addr: &str) -> Result<Leaf, String> {
    let url = url::Url::parse(addr).map_err(|e| e.to_string())?;
    let leaf = match url.scheme() {
        "memory" => {
            no_path(&url)?;
            Leaf::Memory
        }
        "objectstore+file" if kind == Kind::Blob => Leaf::LocalFiles(local_path(&url)?),
        "objectstore+memory" if kind == Kind::Blob => {
            no_path(&url)?;
            Leaf::ObjectStoreMemory
        }
        "redb" if kind != Kind::Blob => Leaf::Redb(local_path(&url)?),
        "grpc+unix" | "grpc+http" => Leaf::Grpc(grpc_target(&url)?),
        other => {
            return Err(format!(
                "unsupported scheme {other:?} for a {} service (supported: {})",
                kind.noun(),
                supported(kind)
            ));
        }
    };
    Ok(leaf)
}

/// The schemes a service of `kind` accepts, for error messages.
fn supported(kind: Kind) -> &'static str {
    match kind {
        Kind::Blob => "memory, objectstore+file, objectstore+memory, grpc+unix, grpc+http",
        Kind::Directory | Kind::PathInfo => "memory, redb, grpc+unix, grpc+http",
    }
}

/// Where a `grpc+unix://` or `grpc+http://` URL points.
pub fn grpc_target(url: &url::Url) -> Result<GrpcTarget, String> {
    match url.scheme() {
        "grpc+unix" => Ok(GrpcTarget::Unix(local_path(url)?)),
        "grpc+http" => {
            let host = url.host_str().filter(|h| !h.is_empty()).ok_or("no host given")?;
            let port = url.port().ok_or("no port given")?;
            no_path(url)?;
            Ok(GrpcTarget::Tcp { host: host.to_string(), port })
        }
        other => Err(format!("unsupported scheme {other:?} for gRPC (supported: grpc+unix, grpc+http)")),
    }
}

/// A URL that names no location must not carry one: `memory:///x` is a typo, not a setting.
fn no_path(url: &url::Url) -> Result<(), String> {
    if url.path() != "" && url.path() != "/" {
        return Err(format!("{}:// takes no path", url.scheme()));
    }
    Ok(())
}

/// The local file-system path of `scheme:///path` (also accepts `scheme://localhost/path`).
fn local_path(url: &url::Url) -> Result<PathBuf, String> {
    let no_path = || "needs an absolute path (e.g. scheme:///var/lib/x)".to_string();
    if url.host_str().is_some_and(|h| !h.is_empty() && h != "localhost") {
        return Err(no_path());
    }
    let path = url.to_file_path().map_err(|_| no_path())?;
    if path.as_os_str().is_empty() || path == std::path::Path::new("/") {
        return Err(no_path());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_scheme_for_its_services_only() {
        assert_eq!(parse(Kind::Blob, "memory://"), Ok(Leaf::Memory));
        assert_eq!(parse(Kind::Blob, "objectstore+file:///var/x"), Ok(Leaf::LocalFiles("/var/x".into())));
        assert_eq!(parse(Kind::Blob, "objectstore+memory://"), Ok(Leaf::ObjectStoreMemory));
        assert_eq!(parse(Kind::PathInfo, "redb:///a/b.redb"), Ok(Leaf::Redb("/a/b.redb".into())));
        assert!(parse(Kind::Blob, "redb:///a/b.redb").unwrap_err().contains("unsupported scheme \"redb\" for a blob"));
        assert!(parse(Kind::Directory, "objectstore+file:///x").is_err());
        assert!(parse(Kind::Blob, "memory:///oops").is_err());
        assert!(parse(Kind::Blob, "objectstore+file://").is_err());
        assert!(parse(Kind::Blob, "objectstore+file://otherhost/x").is_err());
    }

    #[test]
    fn grpc_targets() {
        let unix = parse(Kind::Blob, "grpc+unix:///run/x.sock").unwrap();
        assert_eq!(unix, Leaf::Grpc(GrpcTarget::Unix("/run/x.sock".into())));
        let tcp = parse(Kind::Directory, "grpc+http://[::1]:8000").unwrap();
        assert_eq!(tcp, Leaf::Grpc(GrpcTarget::Tcp { host: "[::1]".into(), port: 8000 }));
        assert!(parse(Kind::Blob, "grpc+http://localhost").unwrap_err().contains("no port"));
        assert!(parse(Kind::Blob, "grpc+http://localhost:1/path").is_err());
        assert!(parse(Kind::Blob, "grpc+unix://").is_err());
        assert!(parse(Kind::Blob, "http://localhost:1").is_err());
    }
}
