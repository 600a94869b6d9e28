//! The slow tier, compiled and run only with `--features slow-tests`: each of these takes half
//! a minute or more on a 2-core machine (QEMU guests under TCG, the crash rounds), needs a
//! Garage cluster built first (about 25 minutes, once per machine), or keeps both cores busy
//! for its whole run (the soak). `cargo test --features slow-tests --test integration -- slow::`
//! runs them alone.

mod crash;
mod garage;
mod guest;
mod s3_garage;
mod soak;
mod vm_harness;
mod vm_virtiofs;
