//! tvix-store: a content-addressed Nix store that presents /nix/store lazily.
//!
//! - [`castore`]: blobs and directories addressed by BLAKE3, and the services storing them;
//! - [`storepath`]: Nix store paths and nixbase32;
//! - [`pathinfo`]: a store path's root node and narinfo, and the services storing them;
//! - [`proto`]: the wire protocol (`tvix.castore.v1`, `tvix.store.v1`).

pub mod castore;
pub mod pathinfo;
pub mod proto;
pub mod storepath;
pub mod url;
pub mod defaultstore;
pub mod services;
pub mod nar;
pub mod fs;
pub mod virtiofs;
pub mod grpc;
pub mod server;
pub mod redb;
pub mod import;
