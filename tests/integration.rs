//! The integration tests, as one test binary (in the style of ripgrep's): every test file in
//! this directory is a module of it, and the helpers they share are compiled once. Plain
//! `cargo test` runs the fast tier; `--features slow-tests` adds the slow tier (`slow/`).
//! docs/testing.md says what each module covers and how to run parts.
//!
//! The tests share one process: none may change process-wide state (environment variables, the
//! current directory, a global metrics recorder or tracing subscriber). A test that must gets a
//! test target of its own in Cargo.toml, as `grpc_owner_socket` does.

// Helpers shared by the test modules.
mod blob_common;
mod cache_common;
mod grpc_common;
mod mount_common;
mod nar_common;
mod nix_referee;
mod vm_common;

// The fast tier.
mod access;
mod cache_layers;
mod cli_shell;
// Its backend macros are used by the slow tier's S3 entries too.
#[macro_use]
mod conformance;
mod deep_nesting;
mod disk_cache;
mod disk_cache_mount;
mod grpc_blob;
mod grpc_blob_batch;
mod grpc_daemon;
mod grpc_directory;
mod grpc_pathinfo;
mod grpc_pathinfo_graph;
mod import_cli;
mod import_path;
mod layering;
mod maintenance;
mod metrics;
mod mount_cli;
mod mount_core;
mod mount_fuse;
mod mount_import;
mod nar_bridge;
mod nar_codec;
mod nar_ingest;
mod narinfo_nix;
mod substitute;
mod systemd;
mod vm_virtiofs_queue;
mod vm_virtiofs_socket;

// The slow tier: QEMU guests, the Garage cluster, the soak and the crash test.
#[cfg(feature = "slow-tests")]
mod slow;
