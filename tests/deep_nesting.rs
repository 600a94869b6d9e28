//! Deep nesting must not overflow the stack anywhere outside data can make deep: a NAR of
//! 100,000 nested directories goes through the reader, the transcoder, NAR ingestion into
//! castore (with its graph validation) and back out through the NAR layout and renderer
//! (with and without the `.ls` listing), all on threads with the default 2 MiB stack; a
//! protobuf Directory made of 100,000 nested unknown groups is refused, not recursed into
//! without bound; and a local tree as deep as PATH_MAX allows is imported. The fuzz targets
//! cannot reach such depths (their inputs stay at 4 KiB), so these are the check for stack use.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tvix_store::castore::Directory;
use tvix_store::castore::blobservice::BlobService;
use tvix_store::castore::directoryservice::DirectoryService;
use tvix_store::import::{ingest_nar, ingest_path};
use tvix_store::nar::{NarLayout, NarWriter, transcode, write_nar};

/// Levels of the deep NAR: far past any real tree, and deep enough that one stack frame per
/// level (≥ 100 bytes in any build) would overflow 2 MiB.
const DEPTH: usize = 100_000;
/// The stack of a Rust thread (and of tokio's workers and blocking threads) by default.
const STACK: usize = 2 << 20;

/// A NAR of `depth` directories named `d`, one inside the other, with a file at the bottom.
async fn deep_nar(depth: usize) -> Vec<u8> {
    let mut w = NarWriter::new(Vec::new()).await.unwrap();
    w.directory_start(None).await.unwrap();
    for _ in 1..depth {
        w.directory_start(Some(b"d")).await.unwrap();
    }
    w.file(Some(b"f"), false, 6, &mut &b"bottom"[..]).await.unwrap();
    for _ in 0..depth {
        w.directory_end().await.unwrap();
    }
    w.finish().await.unwrap()
}

/// Runs `f` on a current-thread runtime on a fresh thread with the default stack size, so a
/// test thread's own stack size (RUST_MIN_STACK) cannot hide an overflow.
fn on_default_stack<F: Future<Output = ()> + Send + 'static>(f: impl FnOnce() -> F + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(f());
        })
        .unwrap()
        .join()
        .expect("the deep-nesting check panicked (or overflowed its stack)");
}

fn memory_services() -> (Arc<dyn BlobService>, Arc<dyn DirectoryService>) {
    (
        tvix_store::compose::blob_service("memory://").unwrap(),
        tvix_store::compose::directory_service("memory://").unwrap(),
    )
}

#[test]
fn nar_of_100k_nested_directories_round_trips_through_castore() {
    on_default_stack(|| async {
        let nar = deep_nar(DEPTH).await;
        assert_eq!(transcode(&nar[..], Vec::new()).await.unwrap(), nar, "transcoding changed the NAR");

        let (blob, directory) = memory_services();
        let ingested = ingest_nar(blob.clone(), directory.clone(), &nar[..], None).await.unwrap();
        assert_eq!(ingested.nar_size, nar.len() as u64);
        assert_eq!(ingested.nar_sha256, <[u8; 32]>::from(Sha256::digest(&nar)));

        let rendered = write_nar(Vec::new(), &ingested.node, blob.as_ref(), directory.as_ref()).await.unwrap();
        assert!(rendered == nar, "the NAR rendered from castore differs from the one ingested");
        let layout = NarLayout::with_listing(&ingested.node, directory.as_ref()).await.unwrap();
        assert_eq!(layout.size(), nar.len() as u64);
        let listing = layout.listing_json().expect("asked for a listing");
        assert_eq!(listing.matches(r#""type":"directory""#).count(), DEPTH);
    });
}

#[test]
fn directory_of_100k_nested_groups_is_refused() {
    // Field 9, wire type 3 (start group), 100,000 times: a decoder recursing once per group
    // without a limit would overflow; prost stops at its recursion limit with an error.
    let data = vec![(9 << 3) | 3; DEPTH];
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || assert!(Directory::decode(&data).is_err(), "100,000 nested groups were accepted"))
        .unwrap()
        .join()
        .expect("decoding nested groups panicked (or overflowed its stack)");
}

#[test]
fn local_tree_as_deep_as_path_max_imports() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    // As deep as a path below PATH_MAX (4096) allows: the walker opens entries by full path.
    let depth = (4000 - root.as_os_str().len()) / 2;
    let mut leaf = root.clone();
    for _ in 0..depth {
        leaf.push("d");
    }
    std::fs::create_dir_all(&leaf).unwrap();
    std::fs::write(leaf.join("f"), b"bottom").unwrap();
    on_default_stack(move || async move {
        let (blob, directory) = memory_services();
        let ingested = ingest_path(blob.clone(), directory.clone(), &root, None).await.unwrap();
        let nar = write_nar(Vec::new(), &ingested.node, blob.as_ref(), directory.as_ref()).await.unwrap();
        assert_eq!(nar, deep_nar(depth + 1).await, "the imported tree's NAR is not the deep NAR");
        drop(dir);
    });
}
