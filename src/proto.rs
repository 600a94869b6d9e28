//! Generated protobuf and gRPC code for the wire protocol. The module nesting mirrors the
//! proto package names because generated code refers across packages by relative path.
//! `tvix.*` is the tvix wire protocol; `tvix_store.*` holds our own extensions.

/// Largest gRPC message we send or accept, client and server. Blob messages are at most 1 MiB
/// of data, but a Directory or a chunk list of a large blob may be bigger; 64 MiB leaves ample
/// room while still bounding what a broken peer can make us buffer.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Largest HTTP/2 frame we let a peer send us, client and server. The default (16 KiB) cuts a
/// 1 MiB chunk into 64 frames, each with its own bookkeeping on both sides; 1 MiB frames carry
/// a chunk whole.
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;

#[allow(missing_docs, clippy::all)]
pub mod tvix {
    /// `tvix.castore.*`
    pub mod castore {
        /// `tvix.castore.v1`: blobs and directories.
        pub mod v1 {
            tonic::include_proto!("tvix.castore.v1");
        }
    }
    /// `tvix.store.*`
    pub mod store {
        /// `tvix.store.v1`: PathInfo.
        pub mod v1 {
            tonic::include_proto!("tvix.store.v1");
        }
    }
}

/// `tvix_store.*`: our own extensions, beside the tvix packages (never inside them).
#[allow(missing_docs, clippy::all)]
pub mod tvix_store {
    /// `tvix_store.admin.*`
    pub mod admin {
        /// `tvix_store.admin.v1`: verify, delete, garbage collection.
        pub mod v1 {
            tonic::include_proto!("tvix_store.admin.v1");
        }
    }
    /// `tvix_store.ext.*`
    pub mod ext {
        /// `tvix_store.ext.v1`: the batched blob read, a PathInfo with its directory graph.
        pub mod v1 {
            tonic::include_proto!("tvix_store.ext.v1");
        }
    }
}

pub use tvix::castore::v1 as castore;
pub use tvix::store::v1 as store;
pub use tvix_store::admin::v1 as admin;
pub use tvix_store::ext::v1 as ext;

/// Encoded FileDescriptorSet of all our protos, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tvix_descriptor.bin"));
