//! PathInfo: a store path's root node plus the Nix metadata (narinfo) kept with it, and the
//! services storing them.

mod memory;
mod service;
mod types;

pub use memory::MemoryPathInfoService;
pub use service::{NarCalculationService, PathInfoService, from_addr};
pub use types::{CaKind, ContentAddress, InvalidPathInfo, PathInfo, Signature};
