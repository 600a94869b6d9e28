//! The content-addressed store: blobs and directories addressed by BLAKE3.

pub mod blobservice;
pub mod digest;
pub mod directory;
pub mod directoryservice;
pub mod error;
pub mod node;
pub mod path_component;

pub use digest::B3Digest;
pub use directory::Directory;
pub use error::Error;
pub use node::{Node, SymlinkTarget};
pub use path_component::PathComponent;

/// Where a cache combinator's new data goes (`CacheBlobService`, `CacheDirectoryService`,
/// `CachePathInfoService`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheWrites {
    /// To the far store, the source of truth; the near one only keeps what was read.
    #[default]
    Far,
    /// To the near store, for far stores that are read-only (a binary cache).
    Near,
}
