//! virtiofs: the store served to VMs as a vhost-user-fs device.
//!
//! The FUSE protocol over virtqueues is decoded by `fuse-backend-rs` (the codec virtiofsd's
//! ancestors and nydus use); the vhost-user protocol and vring handling come from
//! `vhost-user-backend`. This module adds the device backend ([`backend`]), the per-queue
//! request loop that never lets a malformed request take the daemon down ([`queue`]), the
//! socket with restricted permissions ([`socket`]), the accept loop that survives guest
//! reboots and disconnects ([`daemon`]), and the adapter from fuse-backend-rs's
//! `FileSystem` trait onto the shared filesystem core ([`adapter`]).

pub mod adapter;
pub mod backend;
pub mod daemon;
pub mod error;
pub mod queue;
pub mod socket;

pub use adapter::VirtioStoreFs;
pub use daemon::{DaemonConfig, serve};
pub use error::VirtiofsError;
pub use socket::{DEFAULT_SOCKET_MODE, SocketListener};
