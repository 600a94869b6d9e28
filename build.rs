//! Compiles our .proto files with the pure-Rust `protox` compiler, so that building needs no
//! system `protoc`, and keeps the encoded descriptor set for gRPC server reflection.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "protos/tvix/castore/v1/castore.proto",
    "protos/tvix/castore/v1/rpc_blobstore.proto",
    "protos/tvix/castore/v1/rpc_directory.proto",
    "protos/tvix/store/v1/pathinfo.proto",
    "protos/tvix/store/v1/rpc_pathinfo.proto",
    "protos/tvix_store/admin/v1/admin.proto",
    "protos/tvix_store/ext/v1/blob_batch.proto",
    "protos/tvix_store/ext/v1/path_info_graph.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["protos"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("tvix_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().bytes(".").compile_fds(descriptors)?;
    Ok(())
}
