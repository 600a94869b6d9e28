//! gRPC clients of our three services, usable wherever a service trait object is expected, and
//! of our own extensions beside them (the batched blob read, admin).

pub(crate) mod admin;
mod blob;
mod blob_batch;
pub mod channel;
mod directory;
mod pathinfo;
mod status;
mod support;

pub use admin::GrpcAdmin;
pub use blob::GrpcBlobService;
pub use channel::{GrpcChannel, GrpcTarget, MAX_MESSAGE_SIZE, channel, single_channel};
pub use directory::GrpcDirectoryService;
pub use pathinfo::GrpcPathInfoService;

/// Converts a status a call ended with into our error. A status made on our side from a broken
/// connection (it carries the transport error as its source; statuses sent by a server never
/// do) means the server went away mid-call: UNAVAILABLE, like a failed connect, whatever code
/// tonic gave it (often UNKNOWN).
pub(crate) fn error(status: tonic::Status) -> crate::castore::Error {
    let mut source = std::error::Error::source(&status);
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            return crate::castore::Error::Unavailable(format!("connection lost: {}: {e}", status.message()));
        }
        source = e.source();
    }
    status.into()
}
