//! The disk cache (`castore::diskcache`) in front of a real chunked blob service and directory
//! service, whose calls are counted: a warm cache (also a new instance, as after a remount)
//! answers without the far side; torn and corrupt cache files are never served and are
//! replaced; eviction keeps the cache at its bound in LRU order; a cache that cannot store is
//! bypassed; unusable directories are refused at open.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::TryStreamExt;
use futures::stream::BoxStream;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use tvix_store::castore::blobservice::{
    BlobReader, BlobService, ChunkMeta, ChunkedBlobService, ManyBlobs, MemoryChunkStore,
};
use tvix_store::castore::directoryservice::{
    DirectoryPutter, DirectoryService, MemoryDirectoryStore, StoredDirectoryService,
};
use tvix_store::castore::diskcache::{DiskCache, DiskCacheBlobService, DiskCacheDirectoryService, DiskCacheError};
use tvix_store::castore::{B3Digest, Directory, Error, Node, PathComponent};

use crate::blob_common::{BlobHooks, PlainReader, Wrapped};
use crate::mount_common::data;

/// A blob service passing every call to `inner`, counting the reads (open_read, chunks) that
/// reach it and the batched reads (read_many): the "remote" whose requests a warm cache must
/// not make.
struct CountingBlobs {
    inner: Arc<dyn BlobService>,
    reads: AtomicUsize,
    batches: AtomicUsize,
}

#[async_trait]
impl BlobHooks for CountingBlobs {
    fn inner(&self) -> &dyn BlobService {
        self.inner.as_ref()
    }
    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.open_read(digest).await
    }
    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.chunks(digest).await
    }
    fn read_many(&self, digests: Vec<B3Digest>) -> Result<ManyBlobs<'_>, Vec<B3Digest>> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        Ok(self.inner.read_many(digests))
    }
}

/// The same for directories (get, get_recursive).
struct CountingDirectories {
    inner: Arc<dyn DirectoryService>,
    reads: AtomicUsize,
}

#[async_trait]
impl DirectoryService for CountingDirectories {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get(digest).await
    }
    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'_, Result<Directory, Error>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get_recursive(root)
    }
    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        self.inner.put_multiple_start()
    }
}

/// The far side: blobs and directories in memory, with counted reads.
struct Far {
    blobs: Arc<Wrapped<CountingBlobs>>,
    directories: Arc<CountingDirectories>,
}

impl Far {
    fn new() -> Self {
        Far {
            blobs: Arc::new(Wrapped(CountingBlobs {
                inner: Arc::new(ChunkedBlobService::new(MemoryChunkStore::default())),
                reads: AtomicUsize::new(0),
                batches: AtomicUsize::new(0),
            })),
            directories: Arc::new(CountingDirectories {
                inner: Arc::new(StoredDirectoryService::new(MemoryDirectoryStore::default())),
                reads: AtomicUsize::new(0),
            }),
        }
    }

    fn reads(&self) -> usize {
        self.blobs.reads.load(Ordering::SeqCst) + self.directories.reads.load(Ordering::SeqCst)
    }

    async fn put(&self, content: &[u8]) -> B3Digest {
        let mut w = self.blobs.open_write().await;
        w.write_all(content).await.unwrap();
        w.close().await.unwrap()
    }

    /// A root with a child directory that has a grandchild; returns them root first.
    async fn put_tree(&self, blob: B3Digest, size: u64) -> Vec<Directory> {
        let mut leaf = Directory::new();
        leaf.add(PathComponent::try_from("file").unwrap(), Node::file(blob, size, false)).unwrap();
        let mut mid = Directory::new();
        mid.add(PathComponent::try_from("leaf").unwrap(), Node::directory(leaf.digest(), leaf.size())).unwrap();
        let mut root = Directory::new();
        root.add(PathComponent::try_from("mid").unwrap(), Node::directory(mid.digest(), mid.size())).unwrap();
        let mut putter = self.directories.put_multiple_start();
        for d in [&leaf, &mid, &root] {
            putter.put(d.clone()).await.unwrap();
        }
        putter.close().await.unwrap();
        vec![root, mid, leaf]
    }

    /// A cache of this far side in `dir`, as a process would open it.
    fn cached(&self, cache: &Arc<DiskCache>) -> (DiskCacheBlobService, DiskCacheDirectoryService) {
        (
            DiskCacheBlobService::new(cache.clone(), self.blobs.clone()),
            DiskCacheDirectoryService::new(cache.clone(), self.directories.clone()),
        )
    }
}

async fn read_all(service: &dyn BlobService, digest: &B3Digest) -> Vec<u8> {
    let mut out = Vec::new();
    service.open_read(digest).await.unwrap().expect("blob absent").read_to_end(&mut out).await.unwrap();
    out
}

/// The object files (64 hex digits) of a kind (`chunks`, `lists`, `dirs`) in a cache directory.
fn object_files(dir: &Path, kind: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(fan_outs) = std::fs::read_dir(dir.join(kind)) else { return out };
    for fan_out in fan_outs {
        for entry in std::fs::read_dir(fan_out.unwrap().path()).unwrap() {
            out.push(entry.unwrap().path());
        }
    }
    out
}

fn object_file(dir: &Path, kind: &str, digest: &B3Digest) -> PathBuf {
    let hex = digest.to_hex();
    dir.join(kind).join(&hex[..2]).join(hex)
}

/// Bytes the cache's object files take on disk.
fn cache_bytes(dir: &Path) -> u64 {
    ["chunks", "lists", "dirs"]
        .iter()
        .flat_map(|kind| object_files(dir, kind))
        .map(|p| std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0))
        .sum()
}

/// A file's modification time: its place in the eviction order.
fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// What the file system stamps a file written now with (a fresh file in `dir`).
fn file_clock(dir: &Path) -> SystemTime {
    let probe = dir.join("probe");
    std::fs::write(&probe, b"").unwrap();
    let stamped = modified(&probe);
    std::fs::remove_file(&probe).unwrap();
    stamped
}

/// Waits until `clock` reads later than `time`, failing the test after 10 s.
fn wait_until_past(time: SystemTime, clock: impl Fn() -> SystemTime) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while clock() <= time {
        assert!(std::time::Instant::now() < deadline, "the clock did not pass {time:?} within 10 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

const BIG: usize = 3 * 1024 * 1024 + 777;

/// Something done to a cache file's bytes.
type Damage = fn(&mut Vec<u8>);

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_cache_answers_without_the_far_store_also_after_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let far = Far::new();
    let contents: Vec<Vec<u8>> = [0, 1, 100_000, BIG].iter().enumerate().map(|(i, &n)| data(n, i as u32)).collect();
    let mut digests = Vec::new();
    for c in &contents {
        digests.push(far.put(c).await);
    }
    let tree = far.put_tree(digests[2], contents[2].len() as u64).await;
    let root = tree[0].digest();

    let cache = Arc::new(DiskCache::open(tmp.path(), 1 << 30).unwrap());
    let (blobs, directories) = far.cached(&cache);
    for (d, c) in digests.iter().zip(&contents) {
        assert!(read_all(&blobs, d).await == *c, "cold read of {d} differs");
    }
    let cold: Vec<Directory> = directories.get_recursive(&root).try_collect().await.unwrap();
    assert_eq!(cold, tree);
    assert!(far.reads() > 0);
    assert!(object_files(tmp.path(), "lists").len() == 1, "the multi-chunk blob's list is cached");

    // A new instance on the same directory, as a remount or reboot opens it.
    drop((blobs, directories, cache));
    let before = far.reads();
    let cache = Arc::new(DiskCache::open(tmp.path(), 1 << 30).unwrap());
    let (blobs, directories) = far.cached(&cache);
    for (d, c) in digests.iter().zip(&contents) {
        assert!(read_all(&blobs, d).await == *c, "warm read of {d} differs");
        assert!(blobs.has(d).await.unwrap());
        let listed: u64 = blobs.chunks(d).await.unwrap().unwrap().iter().map(|c| c.size).sum();
        assert_eq!(listed, c.len() as u64);
    }
    // A read from the middle of the large blob, through its cached chunks.
    let mut r = blobs.open_read(&digests[3]).await.unwrap().unwrap();
    r.seek(std::io::SeekFrom::Start(2_000_000)).await.unwrap();
    let mut tail = Vec::new();
    r.read_to_end(&mut tail).await.unwrap();
    assert!(tail == contents[3][2_000_000..]);
    let warm: Vec<Directory> = directories.get_recursive(&root).try_collect().await.unwrap();
    assert_eq!(warm, tree);
    assert_eq!(directories.get(&tree[2].digest()).await.unwrap().as_ref(), Some(&tree[2]));
    assert_eq!(far.reads(), before, "the warm cache asked the far store");
}

/// Many blobs at once (the mount's prefetch): cold, what the cache lacks comes from the far
/// store in one batched read and is cached; warm, all of it comes from the cache (more than one
/// trip's worth of files, a blob cached chunk by chunk, a digest asked twice), a corrupt file
/// is fetched again, and an absent blob is `None`.
#[tokio::test(flavor = "multi_thread")]
async fn many_blobs_at_once_come_from_the_cache_and_what_it_lacks_in_one_far_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let far = Far::new();
    let contents: Vec<Vec<u8>> = (0..40).map(|i| data(100 + i * 997, 300 + i as u32)).collect();
    let mut digests = Vec::new();
    for c in &contents {
        digests.push(far.put(c).await);
    }
    let big = data(BIG, 9);
    let big_digest = far.put(&big).await;
    let want = |asked: &[B3Digest]| -> Vec<(B3Digest, Option<Vec<u8>>)> {
        asked
            .iter()
            .map(|d| {
                let content = digests.iter().position(|x| x == d).map(|i| contents[i].clone());
                (*d, content.or_else(|| (*d == big_digest).then(|| big.clone())))
            })
            .collect()
    };

    let cache = Arc::new(DiskCache::open(tmp.path(), 1 << 30).unwrap());
    let (blobs, _) = far.cached(&cache);
    assert_eq!(many(&blobs, digests.clone()).await, want(&digests));
    assert_eq!((far.blobs.batches.load(Ordering::SeqCst), far.reads()), (1, 0), "one far batch, no single reads");
    read_all(&blobs, &big_digest).await;

    drop((blobs, cache));
    let chunk = object_file(tmp.path(), "chunks", &digests[7]);
    let mut bytes = std::fs::read(&chunk).unwrap();
    bytes[50] ^= 1;
    std::fs::write(&chunk, bytes).unwrap();
    let cache = Arc::new(DiskCache::open(tmp.path(), 1 << 30).unwrap());
    let (blobs, _) = far.cached(&cache);
    let (batches, reads) = (far.blobs.batches.load(Ordering::SeqCst), far.reads());
    let mut asked = digests.clone();
    asked.extend([big_digest, digests[3]]);
    assert_eq!(many(&blobs, asked.clone()).await, want(&asked), "a corrupt cache file was served");
    assert_eq!(far.blobs.batches.load(Ordering::SeqCst), batches + 1, "only the corrupt blob is fetched again");
    assert_eq!(many(&blobs, asked.clone()).await, want(&asked));
    assert_eq!(far.blobs.batches.load(Ordering::SeqCst), batches + 1, "the warm cache asked the far store");
    assert_eq!(far.reads(), reads);
    let absent = B3Digest::of(b"absent");
    assert_eq!(many(&blobs, vec![absent]).await, vec![(absent, None)]);
}

/// `read_many` of `asked`, each result's bytes (failing on an error).
async fn many(service: &DiskCacheBlobService, asked: Vec<B3Digest>) -> Vec<(B3Digest, Option<Vec<u8>>)> {
    let results: Vec<_> = futures::StreamExt::collect(service.read_many(asked)).await;
    results.into_iter().map(|(d, r)| (d, r.unwrap().map(|b| b.to_vec()))).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn torn_and_corrupt_cache_files_are_never_served_and_are_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let far = Far::new();
    let small = data(50_000, 1);
    let big = data(BIG, 2);
    let small_digest = far.put(&small).await;
    let big_digest = far.put(&big).await;
    let tree = far.put_tree(small_digest, small.len() as u64).await;
    let root = tree[0].digest();
    let cache = Arc::new(DiskCache::open(tmp.path(), 1 << 30).unwrap());
    let (blobs, directories) = far.cached(&cache);
    read_all(&blobs, &small_digest).await;
    read_all(&blobs, &big_digest).await;
    let _: Vec<Directory> = directories.get_recursive(&root).try_collect().await.unwrap();

    let chunk = object_file(tmp.path(), "chunks", &small_digest);
    let list = object_file(tmp.path(), "lists", &big_digest);
    let big_chunks = blobs.chunks(&big_digest).await.unwrap().unwrap();
    let inner_chunk = object_file(tmp.path(), "chunks", &big_chunks[1].digest);
    let dir_file = object_file(tmp.path(), "dirs", &tree[1].digest());
    // What a power loss can leave (a truncated file) and what a bad disk can (a flipped byte).
    let damage: [(&PathBuf, Damage); 4] = [
        (&chunk, |b| b.truncate(b.len() / 2)),
        (&inner_chunk, |b| b[100] ^= 0x40),
        (&list, |b| b.truncate(b.len() - 3)),
        (&dir_file, |b| {
            let n = b.len() - 1;
            b[n] ^= 1
        }),
    ];
    for (path, hurt) in &damage {
        let mut bytes = std::fs::read(path).unwrap();
        let good = bytes.clone();
        hurt(&mut bytes);
        assert_ne!(bytes, good);
        std::fs::write(path, &bytes).unwrap();
    }

    let cache = Arc::new(DiskCache::open(tmp.path(), 1 << 30).unwrap());
    let (blobs, directories) = far.cached(&cache);
    let before = far.reads();
    assert!(read_all(&blobs, &small_digest).await == small, "a torn chunk file was served");
    assert!(read_all(&blobs, &big_digest).await == big, "a corrupt chunk or list was served");
    let again: Vec<Directory> = directories.get_recursive(&root).try_collect().await.unwrap();
    assert_eq!(again, tree, "a corrupt directory file was served");
    assert!(far.reads() > before, "the damaged files were not fetched again");

    // Each damaged file is replaced by a good one, and then served without the far store.
    assert_eq!(B3Digest::of(&std::fs::read(&chunk).unwrap()), small_digest);
    assert_eq!(B3Digest::of(&std::fs::read(&inner_chunk).unwrap()), big_chunks[1].digest);
    assert!(list.exists() && dir_file.exists());
    let before = far.reads();
    assert!(read_all(&blobs, &small_digest).await == small);
    assert!(read_all(&blobs, &big_digest).await == big);
    let _: Vec<Directory> = directories.get_recursive(&root).try_collect().await.unwrap();
    assert_eq!(far.reads(), before, "the replaced files are not used");
}

#[tokio::test(flavor = "multi_thread")]
async fn eviction_keeps_the_cache_at_its_bound_least_recently_used_first() {
    let tmp = tempfile::tempdir().unwrap();
    let far = Far::new();
    const BOUND: u64 = 1 << 20;
    // 40,000 bytes take ten 4 KiB blocks: 25 such files fit the bound.
    let contents: Vec<Vec<u8>> = (0..36).map(|i| data(40_000, 1000 + i)).collect();
    let mut digests = Vec::new();
    for c in &contents {
        digests.push(far.put(c).await);
    }
    let cache = Arc::new(DiskCache::open_with(tmp.path(), BOUND, Duration::ZERO).unwrap());
    let (blobs, _) = far.cached(&cache);
    // Evictions run beside the reads; a store waits for one only an eighth over the bound.
    let slack = BOUND / 8 + 40_960;
    for (i, d) in digests.iter().enumerate().take(20) {
        assert!(read_all(&blobs, d).await == contents[i]);
        assert!(cache_bytes(tmp.path()) <= BOUND + slack);
    }
    // The phases are kept strictly apart in file time: a hit stamps its file with
    // SystemTime::now(), a new file gets the kernel's coarser clock, up to a tick behind it.
    let newest = object_files(tmp.path(), "chunks").iter().map(|f| modified(f)).max().unwrap();
    wait_until_past(newest, SystemTime::now);
    // A hit makes blob 0 the most recently used of the first twenty.
    let before = far.reads();
    assert!(read_all(&blobs, &digests[0]).await == contents[0]);
    assert_eq!(far.reads(), before);
    let clock = tempfile::tempdir().unwrap();
    wait_until_past(modified(&object_file(tmp.path(), "chunks", &digests[0])), || file_clock(clock.path()));
    for (i, d) in digests.iter().enumerate().skip(20) {
        assert!(read_all(&blobs, d).await == contents[i]);
        let used = cache_bytes(tmp.path());
        assert!(used <= BOUND + slack, "{used} bytes cached after blob {i}, bound {BOUND}");
    }
    // The last background eviction done (evict_now waits for it), and one more scan.
    cache.evict_now().unwrap();
    assert!(cache_bytes(tmp.path()) <= BOUND);
    let cached = |i: usize| object_file(tmp.path(), "chunks", &digests[i]).exists();
    let evicted: Vec<usize> = (0..36).filter(|&i| !cached(i)).collect();
    assert!(evicted.len() >= 10, "only {evicted:?} evicted");
    assert!(cached(0), "the recently used blob 0 was evicted: {evicted:?}");
    assert!(evicted.iter().all(|&i| (1..20).contains(&i)), "newer blobs evicted before older ones: {evicted:?}");
    // Whatever was evicted is read again from the far store, and right.
    assert!(read_all(&blobs, &digests[evicted[0]]).await == contents[evicted[0]]);
    assert!(std::fs::read_dir(tmp.path().join("tmp")).unwrap().next().is_none(), "temporary files left");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_that_cannot_store_is_bypassed() {
    let tmp = tempfile::tempdir().unwrap();
    let far = Far::new();
    let content = data(70_000, 9);
    let digest = far.put(&content).await;
    let cache = Arc::new(DiskCache::open(tmp.path(), 1 << 30).unwrap());
    // The temporary directory replaced by a file: every store fails from now on.
    std::fs::remove_dir(tmp.path().join("tmp")).unwrap();
    std::fs::write(tmp.path().join("tmp"), b"in the way").unwrap();
    let (blobs, _) = far.cached(&cache);
    for _ in 0..3 {
        assert!(read_all(&blobs, &digest).await == content, "a read the far store could answer failed");
    }
    assert!(object_files(tmp.path(), "chunks").is_empty());
}

#[test]
fn unusable_directories_are_refused_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(DiskCache::open(&file, 1 << 20), Err(DiskCacheError::NotADirectory { .. })));

    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("precious"), b"not ours").unwrap();
    let err = DiskCache::open(&foreign, 1 << 20).err().expect("a foreign directory was taken");
    assert!(matches!(err, DiskCacheError::Foreign { .. }), "{err}");
    assert!(foreign.join("precious").exists());

    // Owned by someone else: as root, a directory given away; otherwise one of root's.
    // SAFETY: geteuid has no preconditions.
    let us = unsafe { libc::geteuid() };
    let other = if us == 0 {
        let given = tmp.path().join("given-away");
        std::fs::create_dir(&given).unwrap();
        std::os::unix::fs::chown(&given, Some(65534), Some(65534)).unwrap();
        given
    } else {
        PathBuf::from("/")
    };
    let err = DiskCache::open(&other, 1 << 20).err().expect("a directory of another user was taken");
    assert!(matches!(err, DiskCacheError::WrongOwner { .. }), "{err}");
    assert!(err.to_string().contains("owned by uid"), "{err}");

    assert!(matches!(DiskCache::open(&tmp.path().join("zero"), 0), Err(DiskCacheError::Size { .. })));

    // A cache opened once is recognised again (its marker), even though it is not empty.
    let ours = tmp.path().join("ours");
    DiskCache::open(&ours, 1 << 20).unwrap();
    DiskCache::open(&ours, 1 << 20).unwrap();
}

/// A far service that sends every blob with its first byte flipped (chunk lists are right).
struct LyingBlobs(Arc<dyn BlobService>);

#[async_trait]
impl BlobHooks for LyingBlobs {
    fn inner(&self) -> &dyn BlobService {
        self.0.as_ref()
    }
    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        let Some(mut reader) = self.0.open_read(digest).await? else { return Ok(None) };
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).await.unwrap();
        if let Some(first) = bytes.first_mut() {
            *first ^= 1;
        }
        Ok(Some(Box::new(PlainReader(std::io::Cursor::new(bytes)))))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_bytes_from_the_far_store_fail_the_read_and_are_not_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let far = Far::new();
    let small = data(30_000, 5);
    let big = data(BIG, 6);
    let small_digest = far.put(&small).await;
    let big_digest = far.put(&big).await;
    let cache = Arc::new(DiskCache::open(tmp.path(), 1 << 30).unwrap());
    let blobs = DiskCacheBlobService::new(cache, Arc::new(Wrapped(LyingBlobs(far.blobs.clone()))));
    let err = blobs.open_read(&small_digest).await.err().expect("wrong bytes of a small blob were accepted");
    assert!(matches!(err, Error::Corrupt(_)), "{err}");
    let mut out = Vec::new();
    let read = match blobs.open_read(&big_digest).await {
        Ok(Some(mut reader)) => reader.read_to_end(&mut out).await.map(|_| ()),
        Ok(None) => panic!("big blob absent"),
        Err(e) => Err(std::io::Error::other(e)),
    };
    assert!(read.is_err(), "wrong bytes of a large blob were served");
    for file in object_files(tmp.path(), "chunks") {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(B3Digest::of(&std::fs::read(&file).unwrap()).to_hex(), name, "a wrong chunk was cached");
    }
    assert!(!object_file(tmp.path(), "chunks", &small_digest).exists());
}
