//! A small file read through the mount's core, the disk cache and the gRPC client from an
//! in-process daemon: every byte is hashed once on the client side (the gRPC client checks the
//! blob; the disk cache takes it as verified), and a warm read comes from the cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use crate::castore::blobservice::{
    BlobReader, BlobService, BlobWriter, ChunkMeta, ChunkedBlobService, MemoryChunkStore, WholeReader,
};
use crate::castore::digest::hash_count;
use crate::castore::diskcache::{DiskCache, DiskCacheBlobService};
use crate::castore::{B3Digest, Error, Node};
use crate::fs::{Options, ROOT_INO, StoreFs};
use crate::host::{ListenAddr, Listener};
use crate::pathinfo::{PathInfo, PathInfoRootNodes, PathInfoService};
use crate::server::Handlers;
use crate::store::Store;
use crate::storepath::StorePath;

/// The daemon's blobs: served from memory as they are, without hashing (so every hash counted
/// in the test is the client's), counting reads.
struct Served {
    blobs: HashMap<B3Digest, Bytes>,
    reads: AtomicUsize,
    writes: ChunkedBlobService<MemoryChunkStore>,
}

#[async_trait]
impl BlobService for Served {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        Ok(self.blobs.contains_key(digest))
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(self.blobs.get(digest).map(|data| Box::new(WholeReader::new(data.clone())) as Box<dyn BlobReader>))
    }

    async fn open_write(&self) -> Box<dyn BlobWriter> {
        self.writes.open_write().await
    }

    async fn open_write_deferred(&self) -> Box<dyn BlobWriter> {
        self.writes.open_write_deferred().await
    }

    async fn sync(&self) -> Result<(), Error> {
        self.writes.sync().await
    }

    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        Ok(self.blobs.get(digest).map(|data| vec![ChunkMeta { digest: *digest, size: data.len() as u64 }]))
    }
}

#[test]
fn a_cold_small_file_read_through_the_disk_cache_over_grpc_hashes_each_byte_once() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // Contents no other test hashes: the count is per digest.
    let data: Bytes = (0..200_000u32).flat_map(|i| (i ^ 0x5eed_0001).to_le_bytes()).collect::<Vec<u8>>().into();
    let digest = B3Digest::from(blake3::hash(&data));
    let served = Arc::new(Served {
        blobs: HashMap::from([(digest, data.clone())]),
        reads: AtomicUsize::new(0),
        writes: ChunkedBlobService::new(MemoryChunkStore::default()),
    });
    let socket = tmp.path().join("daemon.sock");
    let store_path = StorePath::from_parts([9; 20], "read-path-file").unwrap();
    let (blob, roots) = runtime.block_on(async {
        let listener = Listener::bind(&ListenAddr::Unix(socket.clone())).await.unwrap();
        let daemon = Store { blob: served.clone(), ..Store::in_memory() };
        tokio::spawn(crate::host::serve_grpc(
            listener,
            Handlers::new(daemon),
            crate::host::shutdown_on(std::future::pending()),
        ));
        let channel = crate::compose::channel(&format!("grpc+unix://{}", socket.display())).unwrap();
        let cache = Arc::new(DiskCache::open(&tmp.path().join("cache"), 1 << 30).unwrap());
        let blob: Arc<dyn BlobService> =
            Arc::new(DiskCacheBlobService::new(cache, Arc::new(crate::grpc::GrpcBlobService::new(channel))));
        let path_info: Arc<dyn PathInfoService> = Arc::new(crate::pathinfo::MemoryPathInfoService::default());
        path_info
            .put(PathInfo {
                store_path: store_path.clone(),
                node: Node::File { digest, size: data.len() as u64, executable: false },
                references: vec![],
                nar_size: 0,
                nar_sha256: [0; 32],
                signatures: vec![],
                deriver: None,
                ca: None,
            })
            .await
            .unwrap();
        (blob, Arc::new(PathInfoRootNodes::new(path_info)))
    });
    let read_all = || {
        let fs = StoreFs::new(
            blob.clone(),
            Store::in_memory().directory,
            roots.clone(),
            runtime.handle().clone(),
            Options::default(),
        );
        let entry = fs.lookup(ROOT_INO, store_path.to_basename().as_bytes()).unwrap();
        let opened = fs.open(entry.ino, libc::O_RDONLY).unwrap();
        let got = fs.read(entry.ino, opened.fh, 0, 1 << 20).unwrap();
        fs.release(opened.fh);
        got
    };

    assert_eq!(hash_count::of(&digest), 0);
    assert!(read_all() == data, "the cold read returned other bytes");
    assert_eq!(hash_count::of(&digest), 1, "a cold read hashes the bytes once (the gRPC client's check)");
    assert_eq!(served.reads.load(Ordering::SeqCst), 1);

    // Warm: from the disk cache, checked against its digest as it is read from disk.
    assert!(read_all() == data, "the warm read returned other bytes");
    assert_eq!(hash_count::of(&digest), 2, "a warm read hashes the cached file once");
    assert_eq!(served.reads.load(Ordering::SeqCst), 1, "the warm read asked the daemon");
}
