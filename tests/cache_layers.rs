//! The cache combinators' own promises, over memory and gRPC layers: a miss is filled into the
//! near store with what was validated, new data goes where `write` says, and a far store that
//! fails during a fill leaves no partial entry in the near one.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::TryStreamExt;
use futures::stream::BoxStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeek, AsyncWriteExt, ReadBuf};
use tvix_store::castore::blobservice::{BlobReader, BlobService, CacheBlobService};
use tvix_store::castore::directoryservice::{CacheDirectoryService, DirectoryPutter, DirectoryService};
use tvix_store::castore::{B3Digest, CacheWrites, Directory, Error, Node, PathComponent};
use tvix_store::compose;
use tvix_store::pathinfo::{CachePathInfoService, PathInfo, PathInfoService};
use tvix_store::storepath::StorePath;

use crate::blob_common::{BlobHooks, Wrapped};
use crate::grpc_common::{Daemon, data, tasks_end_at_most};

async fn put_blob(service: &dyn BlobService, content: &[u8]) -> B3Digest {
    let mut w = service.open_write().await;
    w.write_all(content).await.unwrap();
    w.close().await.unwrap()
}

async fn read_blob(service: &dyn BlobService, digest: &B3Digest) -> Result<Vec<u8>, Error> {
    let mut r = service.open_read(digest).await?.ok_or_else(|| Error::NotFound(digest.to_string()))?;
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.map_err(|e| Error::from_io(digest, e))?;
    Ok(back)
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_miss_fills_near_from_a_grpc_far_and_writes_go_far() {
    let daemon = Daemon::unix();
    let far = compose::blob_service(&daemon.addr).unwrap();
    let near = compose::blob_service("memory://").unwrap();
    let cache = CacheBlobService::new(near.clone(), far.clone(), CacheWrites::Far);

    let content = data(3_000_000, 11);
    let digest = put_blob(far.as_ref(), &content).await;
    assert!(!near.has(&digest).await.unwrap());
    assert!(read_blob(&cache, &digest).await.unwrap() == content);
    assert!(near.has(&digest).await.unwrap(), "a read miss must fill the near store");
    assert!(read_blob(near.as_ref(), &digest).await.unwrap() == content);

    // New blobs go to the far store only (write = "far", the default).
    let fresh = data(1000, 12);
    let fresh_digest = put_blob(&cache, &fresh).await;
    assert!(far.has(&fresh_digest).await.unwrap());
    assert!(!near.has(&fresh_digest).await.unwrap());
    // write = "near": the other way round.
    let near_first = CacheBlobService::new(near.clone(), far.clone(), CacheWrites::Near);
    let local = data(1000, 13);
    let local_digest = put_blob(&near_first, &local).await;
    assert!(near.has(&local_digest).await.unwrap());
    assert!(!far.has(&local_digest).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn read_many_takes_hits_from_near_and_fills_misses_from_far_in_one_batch() {
    let daemon = Daemon::unix();
    let far = compose::blob_service(&daemon.addr).unwrap();
    let near = compose::blob_service("memory://").unwrap();
    let cache = CacheBlobService::new(near.clone(), far.clone(), CacheWrites::Far);
    let contents: Vec<Vec<u8>> = (0..6).map(|i| data(1000 * (i + 1), 30 + i as u32)).collect();
    let mut digests = Vec::new();
    for (i, content) in contents.iter().enumerate() {
        digests.push(put_blob(far.as_ref(), content).await);
        // Every other blob is in near already.
        if i % 2 == 0 {
            put_blob(near.as_ref(), content).await;
        }
    }
    let absent = B3Digest::of(b"nowhere");
    let asked = [&digests[..], &[absent, digests[1]]].concat();
    let results: Vec<_> = futures::StreamExt::collect::<Vec<_>>(cache.read_many(asked.clone())).await;
    assert_eq!(results.len(), asked.len());
    for (i, ((digest, result), want)) in results.iter().zip(&asked).enumerate() {
        assert_eq!(digest, want, "in the order asked");
        let got = result.as_ref().unwrap();
        match contents.get(i).or(if i == 7 { Some(&contents[1]) } else { None }) {
            Some(content) => assert!(got.as_deref() == Some(&content[..]), "blob {i}"),
            None => assert!(got.is_none(), "the absent blob"),
        }
    }
    for digest in &digests {
        assert!(near.has(digest).await.unwrap(), "every blob read from far is filled into near");
    }
}

/// A far blob service whose readers fail after `good` bytes, as a far store dying mid-transfer.
struct FailingFar {
    inner: Arc<dyn BlobService>,
    good: usize,
}

struct FailingReader {
    inner: Box<dyn BlobReader>,
    left: usize,
}

impl AsyncRead for FailingReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.left == 0 {
            return Poll::Ready(Err(std::io::Error::other("far store connection lost")));
        }
        let want = self.left.min(buf.remaining());
        let mut limited = buf.take(want);
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, &mut limited);
        let n = limited.filled().len();
        // SAFETY: `limited` wrote `n` initialised bytes into `buf`'s unfilled part.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        this.left -= n;
        result
    }
}

impl BlobReader for FailingReader {}

impl AsyncSeek for FailingReader {
    fn start_seek(mut self: Pin<&mut Self>, position: std::io::SeekFrom) -> std::io::Result<()> {
        Pin::new(&mut self.inner).start_seek(position)
    }
    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        Pin::new(&mut self.inner).poll_complete(cx)
    }
}

#[async_trait]
impl BlobHooks for FailingFar {
    fn inner(&self) -> &dyn BlobService {
        self.inner.as_ref()
    }
    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        Ok(self
            .inner
            .open_read(digest)
            .await?
            .map(|inner| Box::new(FailingReader { inner, left: self.good }) as Box<dyn BlobReader>))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_far_blob_store_failing_mid_fill_leaves_nothing_in_near() {
    let backing = compose::blob_service("memory://").unwrap();
    let content = data(2_500_000, 21);
    let digest = put_blob(backing.as_ref(), &content).await;
    let far: Arc<dyn BlobService> = Arc::new(Wrapped(FailingFar { inner: backing, good: 1_300_000 }));
    let near = compose::blob_service("memory://").unwrap();
    let cache = CacheBlobService::new(near.clone(), far, CacheWrites::Far);
    let err = read_blob(&cache, &digest).await.expect_err("a failing far store must fail the read");
    assert!(err.to_string().contains("connection lost"), "{err}");
    // Nothing here runs for good (memory stores, no server): once no task is left, the fill's
    // near writer and the storing task behind it have ended, and stored whatever they would.
    tasks_end_at_most(0).await;
    assert!(!near.has(&digest).await.unwrap(), "the near store holds a partial blob");
}

fn directory_graph() -> (Directory, Directory) {
    let mut leaf = Directory::new();
    leaf.add(PathComponent::try_from("f").unwrap(), Node::file(B3Digest::of(b"x"), 1, false)).unwrap();
    let mut root = Directory::new();
    root.add(PathComponent::try_from("sub").unwrap(), Node::directory(leaf.digest(), leaf.size())).unwrap();
    (leaf, root)
}

#[tokio::test(flavor = "multi_thread")]
async fn directory_miss_fills_the_whole_closure_from_grpc() {
    let daemon = Daemon::unix();
    let far = compose::directory_service(&daemon.addr).unwrap();
    let near = compose::directory_service("memory://").unwrap();
    let (leaf, root) = directory_graph();
    let mut putter = far.put_multiple_start();
    putter.put(leaf.clone()).await.unwrap();
    putter.put(root.clone()).await.unwrap();
    putter.close().await.unwrap();
    drop(putter);
    let cache = CacheDirectoryService::new(near.clone(), far, CacheWrites::Far);
    assert_eq!(cache.get(&root.digest()).await.unwrap(), Some(root.clone()));
    assert_eq!(near.get(&leaf.digest()).await.unwrap(), Some(leaf.clone()), "children are filled too");
    let all: Vec<Directory> = cache.get_recursive(&root.digest()).try_collect().await.unwrap();
    assert_eq!(all, vec![root, leaf]);
}

/// A far directory service that sends the root of a closure and then fails.
struct FailingDirectories(Directory);

#[async_trait]
impl DirectoryService for FailingDirectories {
    async fn get(&self, _: &B3Digest) -> Result<Option<Directory>, Error> {
        Ok(Some(self.0.clone()))
    }
    fn get_recursive(&self, _: &B3Digest) -> BoxStream<'_, Result<Directory, Error>> {
        let root = self.0.clone();
        Box::pin(futures::stream::iter([Ok(root), Err(Error::Unavailable("far store went away".into()))]))
    }
    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        unimplemented!("never written to in this test")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_far_directory_store_failing_mid_fill_leaves_nothing_in_near() {
    let (leaf, root) = directory_graph();
    let near = compose::directory_service("memory://").unwrap();
    let cache = CacheDirectoryService::new(near.clone(), Arc::new(FailingDirectories(root.clone())), CacheWrites::Far);
    let err = cache.get(&root.digest()).await.expect_err("a failing far store must fail the get");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert_eq!(near.get(&root.digest()).await.unwrap(), None);
    assert_eq!(near.get(&leaf.digest()).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn path_info_miss_fills_near_and_lists_both() {
    let daemon = Daemon::unix();
    let far = compose::path_info_service(&daemon.addr).unwrap();
    let near = compose::path_info_service("memory://").unwrap();
    let info = |i: u8, name: &str| PathInfo {
        store_path: StorePath::from_parts([i; 20], name).unwrap(),
        node: Node::file(B3Digest::of(&[i]), 1, false),
        references: vec![],
        nar_size: 120,
        nar_sha256: [i; 32],
        signatures: vec![],
        deriver: None,
        ca: None,
    };
    far.put(info(1, "in-far")).await.unwrap();
    near.put(info(2, "in-near")).await.unwrap();
    let cache = CachePathInfoService::new(near.clone(), far.clone(), CacheWrites::Far);
    assert_eq!(cache.get([1; 20]).await.unwrap(), Some(info(1, "in-far")));
    assert_eq!(near.get([1; 20]).await.unwrap(), Some(info(1, "in-far")), "a miss fills the near store");
    assert_eq!(cache.get([3; 20]).await.unwrap(), None);
    let listed: Vec<PathInfo> = cache.list().try_collect().await.unwrap();
    assert_eq!(listed.len(), 2, "each path once: {listed:?}");
}
