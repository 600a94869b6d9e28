//! PathInfo: a store path's root node plus the Nix metadata (narinfo) kept with it, and the
//! services storing them.

mod cache;
mod diskcache;
mod memory;
mod objectstore;
mod roots;
mod service;
mod types;

pub use cache::CachePathInfoService;
pub use diskcache::DiskCachePathInfoService;
pub use memory::MemoryPathInfoService;
pub use objectstore::ObjectStorePathInfoService;
pub use roots::PathInfoRootNodes;
pub use service::{NarCalculationService, PathInfoRemoval, PathInfoService, PathInfoWithGraph};
pub use types::{CaKind, ContentAddress, InvalidPathInfo, PathInfo, Signature};
