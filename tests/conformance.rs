//! One conformance suite for every backend and wrapper of the three services: each check in
//! `blob`, `directory` and `path_info` runs against every entry of the backend lists at the
//! bottom. A new backend gets the whole suite by adding one line there.
//!
//! Backends are built the way commands build them, through `tvix_store::compose` (store URLs
//! and composition entries), so the suite also covers the composition layer's wiring. The gRPC
//! entries talk to our own server, in process on a unix socket. The S3 entries, on a real
//! Garage cluster on the loopback (`scripts/garage-test-cluster`), are in the slow tier
//! (`slow/s3_garage.rs`), which runs this suite through the same macros.

use std::collections::HashSet;
use std::io::SeekFrom;
use std::sync::Arc;

use futures::TryStreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tvix_store::castore::blobservice::{BlobService, CHUNK_MAX};
use tvix_store::castore::directoryservice::DirectoryService;
use tvix_store::castore::{B3Digest, Directory, Error, Node, PathComponent};
use tvix_store::compose::{self, Entry, Graph, Kind};
use tvix_store::pathinfo::{PathInfo, PathInfoService};
use tvix_store::store::Store;
use tvix_store::storepath::StorePath;

use crate::grpc_common::{alive_tasks, data, serve_in_process, tasks_end_at_most};

/// A service under test, with whatever must live as long as it (temporary directories, servers).
pub(crate) struct Under<T: ?Sized> {
    pub(crate) service: Arc<T>,
    pub(crate) _keep: Vec<Box<dyn std::any::Any + Send>>,
}

// ---------------------------------------------------------------------------------------------
// How each backend is set up.

/// Our gRPC server over fresh memory services, in process on a unix socket in `dir`.
async fn grpc_server(dir: &std::path::Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    let store = Store::new(
        compose::blob_service("memory://").unwrap(),
        compose::directory_service("memory://").unwrap(),
        compose::path_info_service("memory://").unwrap(),
    );
    serve_in_process(store, dir).await
}

/// A store URL of one of the three kinds, with `{dir}` replaced by a fresh temporary directory
/// and `grpc` standing for our in-process server.
async fn url_in_tempdir(template: &str) -> (String, Vec<Box<dyn std::any::Any + Send>>) {
    let dir = tempfile::tempdir().unwrap();
    let mut keep: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    let url = if template == "grpc" {
        let (addr, stop) = grpc_server(dir.path()).await;
        keep.push(Box::new(stop));
        addr
    } else {
        template.replace("{dir}", &dir.path().display().to_string())
    };
    keep.push(Box::new(dir));
    (url, keep)
}

/// A composition of `near` over `far` (each a template as in [`url_in_tempdir`]), as a
/// composition file wires it.
async fn cache_graph(kind: Kind, near: &str, far: &str) -> (Graph, Vec<Box<dyn std::any::Any + Send>>) {
    let (near_url, mut keep) = url_in_tempdir(near).await;
    let (far_url, more) = url_in_tempdir(far).await;
    keep.extend(more);
    let leaf = |url: &str| Entry::Leaf { url: url.to_string(), leaf: compose::url::parse(kind, url).unwrap() };
    let entries = [
        ("root".to_string(), Entry::Cache { near: "near".into(), far: "far".into(), writes: Default::default() }),
        ("near".to_string(), leaf(&near_url)),
        ("far".to_string(), leaf(&far_url)),
    ];
    let graph = Graph::new(kind, "conformance".into(), entries.into_iter().collect());
    graph.check().unwrap();
    (graph, keep)
}

/// A disk cache in a fresh directory in front of `far` (a template as in [`url_in_tempdir`]), as
/// a composition file's `type = "disk-cache"` wires it.
async fn disk_cache_graph(kind: Kind, far: &str) -> (Graph, Vec<Box<dyn std::any::Any + Send>>) {
    let (far_url, mut keep) = url_in_tempdir(far).await;
    let dir = tempfile::tempdir().unwrap();
    let entries = [
        ("root".to_string(), Entry::DiskCache { dir: dir.path().join("cache"), size: 1 << 30, far: "far".into() }),
        ("far".to_string(), Entry::Leaf { url: far_url.clone(), leaf: compose::url::parse(kind, &far_url).unwrap() }),
    ];
    keep.push(Box::new(dir));
    let graph = Graph::new(kind, "conformance".into(), entries.into_iter().collect());
    graph.check().unwrap();
    (graph, keep)
}

async fn blob_disk_cache(far: &str) -> Under<dyn BlobService> {
    let (graph, keep) = disk_cache_graph(Kind::Blob, far).await;
    Under { service: compose::build_blob(&graph).unwrap(), _keep: keep }
}

async fn directory_disk_cache(far: &str) -> Under<dyn DirectoryService> {
    let (graph, keep) = disk_cache_graph(Kind::Directory, far).await;
    Under { service: compose::build_directory(&graph).unwrap(), _keep: keep }
}

async fn blob_backend(template: &str) -> Under<dyn BlobService> {
    let (url, keep) = url_in_tempdir(template).await;
    Under { service: compose::blob_service(&url).unwrap(), _keep: keep }
}

async fn blob_cache(near: &str, far: &str) -> Under<dyn BlobService> {
    let (graph, keep) = cache_graph(Kind::Blob, near, far).await;
    Under { service: compose::build_blob(&graph).unwrap(), _keep: keep }
}

async fn directory_backend(template: &str) -> Under<dyn DirectoryService> {
    let (url, keep) = url_in_tempdir(template).await;
    Under { service: compose::directory_service(&url).unwrap(), _keep: keep }
}

async fn directory_cache(near: &str, far: &str) -> Under<dyn DirectoryService> {
    let (graph, keep) = cache_graph(Kind::Directory, near, far).await;
    Under { service: compose::build_directory(&graph).unwrap(), _keep: keep }
}

async fn path_info_backend(template: &str) -> Under<dyn PathInfoService> {
    let (url, keep) = url_in_tempdir(template).await;
    Under { service: compose::path_info_service(&url).unwrap(), _keep: keep }
}

async fn path_info_cache(near: &str, far: &str) -> Under<dyn PathInfoService> {
    let (graph, keep) = cache_graph(Kind::PathInfo, near, far).await;
    let blobs = compose::blob_service("memory://").unwrap();
    let directories = compose::directory_service("memory://").unwrap();
    Under { service: compose::build_path_info(&graph, &blobs, &directories).unwrap(), _keep: keep }
}

// ---------------------------------------------------------------------------------------------
// The checks.

pub(crate) mod blob {
    use super::*;

    async fn put(service: &dyn BlobService, content: &[u8]) -> B3Digest {
        let mut w = service.open_write().await;
        // Odd piece sizes, so writes never line up with chunk or message boundaries.
        for piece in content.chunks(77_777) {
            w.write_all(piece).await.unwrap();
        }
        w.close().await.unwrap()
    }

    async fn read(service: &dyn BlobService, digest: &B3Digest) -> Vec<u8> {
        let mut r = service.open_read(digest).await.unwrap().unwrap_or_else(|| panic!("blob {digest} must exist"));
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        back
    }

    pub async fn put_get_has(service: &dyn BlobService) {
        for (seed, len) in [0, 1, 1000, CHUNK_MAX + 1, 3_000_000].into_iter().enumerate() {
            let content = data(len, seed as u32);
            let digest = put(service, &content).await;
            assert_eq!(digest, B3Digest::of(&content), "digest of a {len}-byte blob");
            assert!(service.has(&digest).await.unwrap(), "has() after a put of {len} bytes");
            let chunks = service.chunks(&digest).await.unwrap().expect("chunks of a stored blob");
            if !chunks.is_empty() {
                assert_eq!(chunks.iter().map(|c| c.size).sum::<u64>(), len as u64, "chunk sizes of {len} bytes");
            }
            assert!(read(service, &digest).await == content, "content of the {len}-byte blob differs");
            // The same bytes again: the same digest, still readable.
            assert_eq!(put(service, &content).await, digest);
        }
    }

    pub async fn not_found(service: &dyn BlobService) {
        let absent = B3Digest::of(b"never stored anywhere");
        assert!(!service.has(&absent).await.unwrap());
        assert!(service.open_read(&absent).await.unwrap().is_none());
        assert!(service.chunks(&absent).await.unwrap().is_none());
    }

    pub async fn seeks_and_ranges(service: &dyn BlobService) {
        let content = data(3_000_000, 99);
        let digest = put(service, &content).await;
        let mut r = service.open_read(&digest).await.unwrap().unwrap();
        for at in [2_999_999u64, 0, 1_500_000, CHUNK_MAX as u64, 17] {
            assert_eq!(r.seek(SeekFrom::Start(at)).await.unwrap(), at);
            let mut buf = vec![0u8; 100_000];
            let want = &content[at as usize..(at as usize + buf.len()).min(content.len())];
            r.read_exact(&mut buf[..want.len()]).await.unwrap();
            assert!(&buf[..want.len()] == want, "bytes at {at} differ");
        }
        assert_eq!(r.seek(SeekFrom::End(-10)).await.unwrap(), 2_999_990);
        let mut tail = Vec::new();
        r.read_to_end(&mut tail).await.unwrap();
        assert!(tail == content[2_999_990..]);
        assert_eq!(r.seek(SeekFrom::End(0)).await.unwrap(), 3_000_000);
        assert_eq!(r.read(&mut [0u8; 10]).await.unwrap(), 0, "reading at the end gives nothing");
    }

    /// Deferred writes are durable and visible once `sync` returns: the order ingestion relies
    /// on before it stores a Directory that refers to them.
    pub async fn deferred_writes_then_sync(service: &dyn BlobService) {
        let contents = [data(10, 1), data(5_000_000, 2), data(200_000, 3)];
        let mut digests = Vec::new();
        for content in &contents {
            let mut w = service.open_write_deferred().await;
            w.write_all(content).await.unwrap();
            let digest = w.close().await.unwrap();
            assert_eq!(digest, B3Digest::of(content));
            digests.push(digest);
        }
        service.sync().await.unwrap();
        for (digest, content) in digests.iter().zip(&contents) {
            assert!(service.has(digest).await.unwrap(), "deferred blob {digest} not visible after sync");
            assert!(read(service, digest).await == *content);
        }
        service.sync().await.unwrap();
    }

    /// Many blobs at once: one verified result per digest asked for (a repeat gets its own),
    /// in the order asked, absent ones `None`; the same bytes as single reads.
    pub async fn read_many(service: &dyn BlobService) {
        let mut asked = Vec::new();
        let mut want = Vec::new();
        for (seed, len) in [0, 1, 1000, 700_000, CHUNK_MAX + 1, 3_000_000].into_iter().enumerate() {
            let content = data(len, 50 + seed as u32);
            asked.push(put(service, &content).await);
            want.push(Some(content));
        }
        let absent = B3Digest::of(b"never stored anywhere");
        asked.insert(2, absent);
        want.insert(2, None);
        asked.push(asked[3]);
        want.push(want[3].clone());
        let results: Vec<_> = futures::StreamExt::collect::<Vec<_>>(service.read_many(asked.clone())).await;
        assert_eq!(results.len(), asked.len(), "one result per digest asked for");
        for (((digest, result), asked), want) in results.iter().zip(&asked).zip(&want) {
            assert_eq!(digest, asked, "results in the order asked");
            let got = result.as_ref().unwrap_or_else(|e| panic!("blob {digest}: {e}"));
            assert!(got.as_deref() == want.as_deref(), "read_many of {digest} differs");
        }
        let none: Vec<_> = futures::StreamExt::collect::<Vec<_>>(service.read_many(Vec::new())).await;
        assert!(none.is_empty());
    }

    /// A writer dropped unclosed stores nothing, also once everything it set going has ended:
    /// its storing task and, for a remote store, the server's handling of the cancelled call
    /// (our in-process server runs in the test's runtime too).
    pub async fn dropped_writer_stores_nothing(service: &dyn BlobService) {
        // A finished write first: what any write sets going for good (a connection, a pool) then
        // already runs when the tasks are counted.
        put(service, &data(1000, 8)).await;
        let tasks = alive_tasks();
        let content = data(600_000, 7);
        let mut w = service.open_write().await;
        w.write_all(&content).await.unwrap();
        w.flush().await.unwrap();
        drop(w);
        tasks_end_at_most(tasks).await;
        assert!(!service.has(&B3Digest::of(&content)).await.unwrap(), "an abandoned blob is visible");
    }
}

pub(crate) mod directory {
    use super::*;

    fn name(s: &str) -> PathComponent {
        PathComponent::try_from(s).unwrap()
    }

    /// leaf <- mid <- root, and root also refers to leaf directly (a diamond).
    fn graph() -> (Directory, Directory, Directory) {
        let mut leaf = Directory::new();
        leaf.add(name("file"), Node::file(B3Digest::of(b"x"), 1, false)).unwrap();
        let mut mid = Directory::new();
        mid.add(name("leaf"), Node::directory(leaf.digest(), leaf.size())).unwrap();
        let mut root = Directory::new();
        root.add(name("a-leaf"), Node::directory(leaf.digest(), leaf.size())).unwrap();
        root.add(name("b-mid"), Node::directory(mid.digest(), mid.size())).unwrap();
        (leaf, mid, root)
    }

    pub async fn put_get_recursive(service: &dyn DirectoryService) {
        let (leaf, mid, root) = graph();
        let mut putter = service.put_multiple_start();
        for d in [&leaf, &mid, &root] {
            putter.put(d.clone()).await.unwrap();
        }
        assert_eq!(putter.close().await.unwrap(), root.digest());
        drop(putter);
        for d in [&leaf, &mid, &root] {
            assert_eq!(service.get(&d.digest()).await.unwrap().as_ref(), Some(d));
        }
        let all: Vec<Directory> = service.get_recursive(&root.digest()).try_collect().await.unwrap();
        assert_eq!(all.first(), Some(&root), "root first");
        assert_eq!(all.len(), 3, "each directory once");
        let mut seen = HashSet::new();
        for d in &all {
            seen.insert(d.digest());
            for (_, child, _) in d.child_directories() {
                assert!(all.iter().any(|x| x.digest() == *child), "child {child} not sent");
            }
        }
        assert_eq!(seen.len(), 3);
        // A single put of a directory whose children are stored.
        let mut top = Directory::new();
        top.add(name("root"), Node::directory(root.digest(), root.size())).unwrap();
        assert_eq!(service.put(top.clone()).await.unwrap(), top.digest());
        assert_eq!(service.get(&top.digest()).await.unwrap(), Some(top));
    }

    pub async fn not_found(service: &dyn DirectoryService) {
        let absent = B3Digest::of(b"no such directory");
        assert_eq!(service.get(&absent).await.unwrap(), None);
        let got: Result<Vec<Directory>, Error> = service.get_recursive(&absent).try_collect().await;
        assert!(matches!(got, Err(Error::NotFound(_))), "{got:?}");
    }

    /// A graph referring to a directory that is neither sent nor stored is refused whole.
    pub async fn rejects_a_dangling_graph(service: &dyn DirectoryService) {
        let mut missing = Directory::new();
        missing.add(name("f"), Node::file(B3Digest::of(b"dangling"), 8, false)).unwrap();
        let mut sibling = Directory::new();
        sibling.add(name("g"), Node::file(B3Digest::of(b"sibling"), 7, true)).unwrap();
        let mut root = Directory::new();
        root.add(name("gone"), Node::directory(missing.digest(), missing.size())).unwrap();
        root.add(name("here"), Node::directory(sibling.digest(), sibling.size())).unwrap();
        let mut putter = service.put_multiple_start();
        let outcome = async {
            putter.put(sibling.clone()).await?;
            putter.put(root.clone()).await?;
            putter.close().await
        }
        .await;
        assert!(outcome.is_err(), "a graph with a missing child was accepted");
        drop(putter);
        assert_eq!(service.get(&root.digest()).await.unwrap(), None, "a rejected root is visible");
        assert_eq!(service.get(&sibling.digest()).await.unwrap(), None, "part of a rejected graph is visible");
    }
}

pub(crate) mod path_info {
    use super::*;

    pub fn info(i: u32) -> PathInfo {
        let mut digest = [0u8; 20];
        digest[..4].copy_from_slice(&i.to_be_bytes());
        digest[19] = 0x5a;
        PathInfo {
            store_path: StorePath::from_parts(digest, &format!("conformance-{i}")).unwrap(),
            node: Node::file(B3Digest::of(&i.to_be_bytes()), 4, false),
            references: vec![],
            nar_size: 100 + i as u64,
            nar_sha256: [7; 32],
            signatures: vec![],
            deriver: None,
            ca: None,
        }
    }

    pub async fn put_get_list(service: &dyn PathInfoService) {
        for i in 0..20 {
            let stored = service.put(info(i)).await.unwrap();
            assert_eq!(stored.store_path, info(i).store_path);
        }
        assert_eq!(service.get(*info(7).store_path.digest()).await.unwrap(), Some(info(7)));
        let listed: Vec<PathInfo> = service.list().try_collect().await.unwrap();
        let names: HashSet<String> = listed.iter().map(|i| i.store_path.to_string()).collect();
        assert_eq!(names.len(), 20, "each path listed once: {names:?}");
        for i in 0..20 {
            assert!(names.contains(&info(i).store_path.to_string()));
        }
        // Putting the same path again is fine and keeps one entry.
        service.put(info(3)).await.unwrap();
        let listed: Vec<PathInfo> = service.list().try_collect().await.unwrap();
        assert_eq!(listed.len(), 20);
    }

    pub async fn not_found(service: &dyn PathInfoService) {
        assert_eq!(service.get([0xee; 20]).await.unwrap(), None);
    }
}

/// The seams beneath the services that `delete` and garbage collection use.
pub(crate) mod seams {
    use super::*;
    use std::time::{Duration, SystemTime};
    use tvix_store::castore::blobservice::ChunkObject;
    use tvix_store::castore::inventory::Removal;
    use tvix_store::compose::{Maintenance, Opened};

    pub async fn list_and_remove(opened: &Opened) {
        let Maintenance::Local(backends) = &opened.maintenance else {
            panic!("three single backends must offer their seams");
        };
        let past = SystemTime::now() - Duration::from_secs(3600);
        // Beyond any clock skew between us and a remote store's timestamps.
        let future = || SystemTime::now() + Duration::from_secs(5);
        let small = data(1000, 41);
        let large = data(3 * CHUNK_MAX, 42);
        let mut digests = Vec::new();
        for content in [&small, &large] {
            let mut w = opened.store.blob.open_write().await;
            w.write_all(content).await.unwrap();
            digests.push(w.close().await.unwrap());
        }
        let chunks: HashSet<B3Digest> =
            backends.chunks.list(ChunkObject::Chunk).map_ok(|s| s.digest).try_collect().await.unwrap();
        let listed: Vec<_> = backends.chunks.list(ChunkObject::Chunk).try_collect().await.unwrap();
        let small_entry = listed.iter().find(|s| s.digest == digests[0]).expect("the small blob is a listed chunk");
        assert_eq!(small_entry.size, 1000);
        let large_chunks = opened.store.blob.chunks(&digests[1]).await.unwrap().unwrap();
        assert!(large_chunks.len() > 1);
        assert!(large_chunks.iter().all(|c| chunks.contains(&c.digest)), "chunks of the large blob not listed");
        let lists: HashSet<B3Digest> =
            backends.chunks.list(ChunkObject::ChunkList).map_ok(|s| s.digest).try_collect().await.unwrap();
        assert_eq!(lists, HashSet::from([digests[1]]));

        assert_eq!(backends.chunks.remove(ChunkObject::Chunk, &digests[0], past).await.unwrap(), Removal::Recent);
        assert!(opened.store.blob.has(&digests[0]).await.unwrap(), "a recent chunk was removed");
        assert_eq!(
            backends.chunks.remove(ChunkObject::Chunk, &digests[0], future()).await.unwrap(),
            Removal::Removed(1000)
        );
        assert_eq!(backends.chunks.remove(ChunkObject::Chunk, &digests[0], future()).await.unwrap(), Removal::Absent);
        assert!(!opened.store.blob.has(&digests[0]).await.unwrap());
        assert!(matches!(
            backends.chunks.remove(ChunkObject::ChunkList, &digests[1], future()).await.unwrap(),
            Removal::Removed(_)
        ));
        assert!(!opened.store.blob.has(&digests[1]).await.unwrap(), "a blob without its chunk list is still there");

        let mut dir = Directory::new();
        dir.add(PathComponent::try_from("file").unwrap(), Node::file(digests[1], large.len() as u64, false)).unwrap();
        let dir_digest = opened.store.directory.put(dir).await.unwrap();
        let stored: Vec<_> = backends.directories.list().try_collect().await.unwrap();
        assert!(stored.iter().any(|s| s.digest == dir_digest), "the directory is not listed");
        assert_eq!(backends.directories.remove(&dir_digest, past).await.unwrap(), Removal::Recent);
        assert!(matches!(backends.directories.remove(&dir_digest, future()).await.unwrap(), Removal::Removed(_)));
        assert_eq!(opened.store.directory.get(&dir_digest).await.unwrap(), None);
        assert_eq!(backends.directories.remove(&dir_digest, future()).await.unwrap(), Removal::Absent);

        let info = path_info::info(77);
        opened.store.path_info.put(info.clone()).await.unwrap();
        assert!(backends.path_infos.remove(*info.store_path.digest()).await.unwrap());
        assert_eq!(opened.store.path_info.get(*info.store_path.digest()).await.unwrap(), None);
        assert!(!backends.path_infos.remove(*info.store_path.digest()).await.unwrap());
    }
}

/// A store of three single backends, each a template as in [`url_in_tempdir`] (one temporary
/// directory for all three).
async fn store(blob: &str, directory: &str, path_info: &str) -> (compose::Opened, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = |template: &str| template.replace("{dir}", &dir.path().display().to_string());
    let graph = |kind, template: &str| Graph::single(kind, "conformance", &url(template)).unwrap();
    let services = compose::open_graphs(
        graph(Kind::Blob, blob),
        graph(Kind::Directory, directory),
        graph(Kind::PathInfo, path_info),
    )
    .await
    .unwrap();
    (services, dir)
}

mod store_seams {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn memory() {
        let (services, _dir) = store("memory://", "memory://", "memory://").await;
        seams::list_and_remove(&services).await
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn local_files_and_redb() {
        let (services, _dir) =
            store("objectstore+file://{dir}/blobs", "redb://{dir}/directories.redb", "redb://{dir}/pathinfo.redb")
                .await;
        seams::list_and_remove(&services).await
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn object_store_memory() {
        let (services, _dir) = store("objectstore+memory://", "objectstore+memory://", "objectstore+memory://").await;
        seams::list_and_remove(&services).await
    }
}

// ---------------------------------------------------------------------------------------------
// The backends. One line each; every check above runs against every line.

// The slow tier runs these for its S3 entries (`slow/s3_garage.rs`; `#[macro_use]` on this
// module in integration.rs brings them into scope there).
macro_rules! blob_backends {
    ($($name:ident => $setup:expr;)*) => {
        mod blob_backends { use super::*; $(
            mod $name {
                use super::*;
                #[tokio::test(flavor = "multi_thread")] async fn put_get_has() { blob::put_get_has(&*$setup.await.service).await }
                #[tokio::test(flavor = "multi_thread")] async fn not_found() { blob::not_found(&*$setup.await.service).await }
                #[tokio::test(flavor = "multi_thread")] async fn seeks_and_ranges() { blob::seeks_and_ranges(&*$setup.await.service).await }
                #[tokio::test(flavor = "multi_thread")] async fn deferred_writes_then_sync() { blob::deferred_writes_then_sync(&*$setup.await.service).await }
                #[tokio::test(flavor = "multi_thread")] async fn dropped_writer_stores_nothing() { blob::dropped_writer_stores_nothing(&*$setup.await.service).await }
                #[tokio::test(flavor = "multi_thread")] async fn read_many() { blob::read_many(&*$setup.await.service).await }
            }
        )* }
    };
}

macro_rules! directory_backends {
    ($($name:ident => $setup:expr;)*) => {
        mod directory_backends { use super::*; $(
            mod $name {
                use super::*;
                #[tokio::test(flavor = "multi_thread")] async fn put_get_recursive() { directory::put_get_recursive(&*$setup.await.service).await }
                #[tokio::test(flavor = "multi_thread")] async fn not_found() { directory::not_found(&*$setup.await.service).await }
                #[tokio::test(flavor = "multi_thread")] async fn rejects_a_dangling_graph() { directory::rejects_a_dangling_graph(&*$setup.await.service).await }
            }
        )* }
    };
}

macro_rules! path_info_backends {
    ($($name:ident => $setup:expr;)*) => {
        mod path_info_backends { use super::*; $(
            mod $name {
                use super::*;
                #[tokio::test(flavor = "multi_thread")] async fn put_get_list() { path_info::put_get_list(&*$setup.await.service).await }
                #[tokio::test(flavor = "multi_thread")] async fn not_found() { path_info::not_found(&*$setup.await.service).await }
            }
        )* }
    };
}

blob_backends! {
    memory => blob_backend("memory://");
    local_files => blob_backend("objectstore+file://{dir}/blobs");
    object_store_memory => blob_backend("objectstore+memory://");
    grpc => blob_backend("grpc");
    cache_memory_over_memory => blob_cache("memory://", "memory://");
    cache_memory_over_grpc => blob_cache("memory://", "grpc");
    cache_local_files_over_object_store => blob_cache("objectstore+file://{dir}/blobs", "objectstore+memory://");
    disk_cache_over_grpc => blob_disk_cache("grpc");
    disk_cache_over_memory => blob_disk_cache("memory://");
}

directory_backends! {
    memory => directory_backend("memory://");
    redb => directory_backend("redb://{dir}/directories.redb");
    grpc => directory_backend("grpc");
    cache_memory_over_memory => directory_cache("memory://", "memory://");
    cache_redb_over_grpc => directory_cache("redb://{dir}/directories.redb", "grpc");
    disk_cache_over_grpc => directory_disk_cache("grpc");
    object_store_memory => directory_backend("objectstore+memory://");
}

path_info_backends! {
    memory => path_info_backend("memory://");
    redb => path_info_backend("redb://{dir}/pathinfo.redb");
    grpc => path_info_backend("grpc");
    cache_memory_over_memory => path_info_cache("memory://", "memory://");
    cache_redb_over_grpc => path_info_cache("redb://{dir}/pathinfo.redb", "grpc");
    object_store_memory => path_info_backend("objectstore+memory://");
}
