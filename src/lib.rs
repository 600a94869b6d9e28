//! tvix-store: a content-addressed Nix store that presents /nix/store lazily.
//!
//! - [`castore`]: blobs and directories addressed by BLAKE3, the services storing them, and the
//!   caches in front of them (near/far combinators, the bounded local disk cache);
//! - [`storepath`]: Nix store paths and nixbase32;
//! - [`pathinfo`]: a store path's root node and narinfo, and the services storing them;
//! - [`narinfo`]: Nix binary-cache narinfo files (parse, render, fingerprint, ed25519 keys and
//!   signatures) and their conversions from and to PathInfo;
//! - [`redb`]: the redb backends for directories and PathInfo;
//! - [`compose`]: building the services from store URLs, a composition file or the embedded
//!   default store; the only module that knows URL schemes;
//! - [`proto`]: the wire protocol (`tvix.castore.v1`, `tvix.store.v1`) and our extension
//!   (`tvix_store.ext.v1`, the batched blob read);
//! - [`grpc`], [`server`]: gRPC clients and servers for the three services;
//! - [`nar`], [`import`]: the NAR codec, and ingestion of NARs and local paths;
//! - [`lru`]: a map bounded by the weight of its values (listing and layout caches);
//! - [`maintenance`]: verify, delete and garbage collection;
//! - [`substitute`]: Nix binary caches as a PathInfo source;
//! - [`narbridge`]: the store served as a Nix binary cache over HTTP (reads and uploads);
//! - [`fs`]: the filesystem core shared by the FUSE mount and the virtiofs frontend;
//! - [`virtiofs`]: the vhost-user-fs frontend;
//! - [`tuning`]: process-wide settings our programs apply at start.

pub mod access;
pub mod castore;
pub mod compose;
pub mod fs;
pub mod grpc;
pub mod host;
pub mod import;
pub mod lru;
pub mod maintenance;
pub mod nar;
pub mod narbridge;
pub mod narinfo;
pub mod pathinfo;
pub mod proto;
pub mod redb;
pub mod server;
pub mod store;
pub mod storepath;
pub mod substitute;
pub mod tuning;
pub mod virtiofs;

#[cfg(test)]
mod tests;
