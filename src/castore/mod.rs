//! The content-addressed store: blobs and directories addressed by BLAKE3, their services, and
//! the caches in front of them (near/far combinators, the local disk cache).

pub mod blobservice;
pub mod cache;
pub mod digest;
pub mod directory;
pub mod directoryservice;
pub mod diskcache;
pub mod error;
pub mod inventory;
pub mod node;
pub mod objects;
pub mod path_component;
pub mod roots;

pub use cache::{Cache, CacheWrites};
pub use digest::B3Digest;
pub use directory::Directory;
pub use error::Error;
pub use node::{Node, SymlinkTarget};
pub use path_component::PathComponent;
pub use roots::{RootNode, RootNodes};
