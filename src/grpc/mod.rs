//! gRPC clients of our three services, usable wherever a service trait object is expected
//! (`grpc+unix:///path/to/socket`, `grpc+http://host:port`).

mod blob;
pub mod channel;
mod directory;
mod pathinfo;

pub use blob::GrpcBlobService;
pub use channel::{MAX_MESSAGE_SIZE, channel};
pub use directory::GrpcDirectoryService;
pub use pathinfo::GrpcPathInfoService;
