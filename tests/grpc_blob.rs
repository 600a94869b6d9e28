//! BlobService over gRPC against real servers: the `tvix-store daemon` binary on a unix socket
//! and on loopback TCP, and our server in process where the test needs to see which chunks were
//! fetched, needs a server that lies, or waits for the server to finish a cancelled call.

use std::collections::HashSet;
use std::io::SeekFrom;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tvix_store::castore::blobservice::{BlobReader, BlobService, BlobWriter, CHUNK_MAX, CHUNK_MIN, ChunkMeta};
use tvix_store::castore::{B3Digest, Error};
use tvix_store::proto::castore as proto;
use tvix_store::proto::castore::blob_service_client::BlobServiceClient;
use tvix_store::store::Store;

use crate::blob_common::{BlobHooks, PlainReader, Wrapped};
use crate::grpc_common::{Daemon, alive_tasks, data, serve_in_process, tasks_end_at_most};

async fn put(service: &dyn BlobService, content: &[u8]) -> B3Digest {
    let mut w = service.open_write().await;
    // Odd piece sizes, so message boundaries never line up with chunk boundaries.
    for piece in content.chunks(77_777) {
        w.write_all(piece).await.unwrap();
    }
    w.close().await.unwrap()
}

async fn read_all(service: &dyn BlobService, digest: &B3Digest) -> Vec<u8> {
    let mut r = service.open_read(digest).await.unwrap().expect("blob must exist");
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.unwrap();
    back
}

async fn roundtrip_sizes(addr: &str) {
    let service = tvix_store::compose::blob_service(addr).unwrap();
    let sizes = [0, 1, CHUNK_MIN - 1, CHUNK_MIN, CHUNK_MIN + 1, CHUNK_MAX - 1, CHUNK_MAX, CHUNK_MAX + 1, 7_654_321];
    for (seed, len) in sizes.into_iter().enumerate() {
        let content = data(len, seed as u32 + 1);
        let digest = put(service.as_ref(), &content).await;
        assert_eq!(digest, B3Digest::of(&content), "digest of a {len}-byte blob");
        assert!(service.has(&digest).await.unwrap(), "has() after put of {len} bytes");
        let chunks = service.chunks(&digest).await.unwrap().expect("chunk list");
        assert_eq!(chunks.iter().map(|c| c.size).sum::<u64>(), len as u64, "chunk sizes of {len} bytes");
        assert!(chunks.iter().all(|c| c.size <= CHUNK_MAX as u64));
        if len > 2 * CHUNK_MAX {
            assert!(chunks.len() > 2, "a {len}-byte blob must be cut into several chunks");
        }
        assert!(read_all(service.as_ref(), &digest).await == content, "content of {len} bytes differs");
        // Every listed chunk can be read on its own, by its digest.
        for c in &chunks {
            let chunk = read_all(service.as_ref(), &c.digest).await;
            assert_eq!(chunk.len() as u64, c.size);
            assert_eq!(B3Digest::of(&chunk), c.digest);
        }
    }
    let absent = B3Digest::of(b"never stored");
    assert!(!service.has(&absent).await.unwrap());
    assert!(service.open_read(&absent).await.unwrap().is_none());
    assert!(service.chunks(&absent).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn roundtrip_over_unix_socket() {
    let daemon = Daemon::unix();
    roundtrip_sizes(&daemon.addr).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn roundtrip_over_tcp() {
    let daemon = Daemon::tcp();
    roundtrip_sizes(&daemon.addr).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_huge_write_is_split_into_acceptable_messages() {
    // 80 MiB in a single write_all is more than one gRPC message may carry (64 MiB): the writer
    // must cut it into messages instead of sending a message the server refuses.
    let daemon = Daemon::unix();
    let service = tvix_store::compose::blob_service(&daemon.addr).unwrap();
    let content = data(80 * 1024 * 1024, 99);
    let mut w = service.open_write().await;
    w.write_all(&content).await.unwrap();
    assert_eq!(w.close().await.unwrap(), B3Digest::of(&content));
    assert!(read_all(service.as_ref(), &B3Digest::of(&content)).await == content);
    // The same handed over as one buffer.
    let content = data(80 * 1024 * 1024, 98);
    let mut w = service.open_write().await;
    w.write_bytes(Bytes::from(content.clone())).await.unwrap();
    assert_eq!(w.close().await.unwrap(), B3Digest::of(&content));
}

#[tokio::test(flavor = "multi_thread")]
async fn seeking_reads_the_right_bytes() {
    let daemon = Daemon::unix();
    let service = tvix_store::compose::blob_service(&daemon.addr).unwrap();
    let content = data(5_000_000, 99);
    let digest = put(service.as_ref(), &content).await;
    let mut r = service.open_read(&digest).await.unwrap().unwrap();
    for at in [4_999_999u64, 0, 2_500_000, 1_048_576, 123] {
        r.seek(SeekFrom::Start(at)).await.unwrap();
        let mut buf = vec![0u8; 1000];
        let n = r.read(&mut buf).await.unwrap();
        assert!(n > 0);
        assert_eq!(&buf[..n], &content[at as usize..at as usize + n], "bytes at {at}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_invalid_argument_or_not_found() {
    let daemon = Daemon::unix();
    let mut raw = BlobServiceClient::new(tvix_store::compose::channel(&daemon.addr).unwrap());
    let short = raw
        .stat(proto::StatBlobRequest { digest: Bytes::from(vec![1u8; 31]), send_chunks: true, send_bao: false })
        .await
        .unwrap_err();
    assert_eq!(short.code(), tonic::Code::InvalidArgument);
    assert!(short.message().contains("31 bytes"), "message must name the length: {}", short.message());
    let short = raw.read(proto::ReadBlobRequest { digest: Bytes::from(vec![1u8; 33]) }).await.unwrap_err();
    assert_eq!(short.code(), tonic::Code::InvalidArgument);
    assert!(short.message().contains("33 bytes"), "{}", short.message());
    let absent = B3Digest::of(b"absent");
    let missing = raw
        .stat(proto::StatBlobRequest { digest: absent.into(), send_chunks: false, send_bao: false })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert!(missing.message().contains(&absent.to_string()), "{}", missing.message());
    let missing = raw.read(proto::ReadBlobRequest { digest: absent.into() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

/// Counts the bytes a server-side reader handed out.
struct Counting {
    inner: Box<dyn BlobReader>,
    count: Arc<AtomicU64>,
}

impl tokio::io::AsyncRead for Counting {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        self.count.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        result
    }
}

impl BlobReader for Counting {
    fn poll_piece(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        max: usize,
    ) -> std::task::Poll<std::io::Result<bytes::Bytes>> {
        let result = std::pin::Pin::new(&mut self.inner).poll_piece(cx, max);
        if let std::task::Poll::Ready(Ok(piece)) = &result {
            self.count.fetch_add(piece.len() as u64, Ordering::Relaxed);
        }
        result
    }
}

impl tokio::io::AsyncSeek for Counting {
    fn start_seek(mut self: std::pin::Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        std::pin::Pin::new(&mut self.inner).start_seek(position)
    }
    fn poll_complete(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<u64>> {
        std::pin::Pin::new(&mut self.inner).poll_complete(cx)
    }
}

/// A blob service wrapper that records which digests were opened for reading (and how many
/// bytes were read of them), and can lie.
struct Instrumented {
    inner: Arc<dyn BlobService>,
    reads: Mutex<Vec<B3Digest>>,
    served: Mutex<Vec<(B3Digest, Arc<AtomicU64>)>>,
    /// Chunk list answered for every blob instead of the real one (Some(vec![]) = "no chunks").
    chunk_list: Option<Vec<ChunkMeta>>,
    /// Bytes served instead of the stored ones.
    serve_instead: Option<Vec<u8>>,
}

impl Instrumented {
    /// An honest wrapper around `inner`.
    fn over(inner: Arc<dyn BlobService>) -> Self {
        Self { inner, reads: Mutex::new(vec![]), served: Mutex::new(vec![]), chunk_list: None, serve_instead: None }
    }
}

/// `content` stored in a memory backend and served in-process through an [`Instrumented`]
/// wrapper, with a client of that server.
struct Served {
    instrumented: Arc<Wrapped<Instrumented>>,
    client: Arc<dyn BlobService>,
    digest: B3Digest,
    chunks: Vec<ChunkMeta>,
    _server: (tempfile::TempDir, tokio::sync::oneshot::Sender<()>),
}

async fn serve_instrumented(content: &[u8]) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let backend = tvix_store::compose::blob_service("memory://").unwrap();
    let digest = put(backend.as_ref(), content).await;
    let chunks = backend.chunks(&digest).await.unwrap().unwrap();
    let instrumented = Arc::new(Wrapped(Instrumented::over(backend)));
    let (addr, stop) = in_process(instrumented.clone(), dir.path()).await;
    let client = tvix_store::compose::blob_service(&addr).unwrap();
    Served { instrumented, client, digest, chunks, _server: (dir, stop) }
}

#[async_trait]
impl BlobHooks for Instrumented {
    fn inner(&self) -> &dyn BlobService {
        self.inner.as_ref()
    }
    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        self.reads.lock().push(*digest);
        if let Some(bytes) = &self.serve_instead {
            return Ok(Some(Box::new(PlainReader(std::io::Cursor::new(bytes.clone())))));
        }
        let Some(inner) = self.inner.open_read(digest).await? else {
            return Ok(None);
        };
        let count = Arc::new(AtomicU64::new(0));
        self.served.lock().push((*digest, count.clone()));
        Ok(Some(Box::new(Counting { inner, count })))
    }
    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        match (&self.chunk_list, self.inner.chunks(digest).await?) {
            (Some(list), Some(_)) => Ok(Some(list.clone())),
            (_, real) => Ok(real),
        }
    }
}

/// Serves `blob` in-process on a unix socket; returns the client address and a stop handle.
async fn in_process(blob: Arc<dyn BlobService>, dir: &std::path::Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    let store = Store::new(
        blob,
        tvix_store::compose::directory_service("memory://").unwrap(),
        tvix_store::compose::path_info_service("memory://").unwrap(),
    );
    serve_in_process(store, dir).await
}

#[tokio::test(flavor = "multi_thread")]
async fn ranged_read_fetches_only_the_covering_chunk() {
    let content = data(24_000_000, 7);
    let Served { instrumented, client, digest, chunks, _server } = serve_instrumented(&content).await;
    assert!(chunks.len() >= 8, "need several chunks, got {}", chunks.len());

    // The client's chunk list is the server's.
    assert_eq!(client.chunks(&digest).await.unwrap().unwrap(), chunks);

    // Opening tries one whole-blob read (the fast path for small blobs), which a large blob
    // cancels early: the server must not have read much of the 24 MB.
    let mut r = client.open_read(&digest).await.unwrap().unwrap();
    let probed: u64 =
        instrumented.served.lock().iter().filter(|(d, _)| *d == digest).map(|(_, n)| n.load(Ordering::Relaxed)).sum();
    assert!(probed <= 6 * 1024 * 1024, "whole-blob probe read {probed} bytes of the blob");
    instrumented.reads.lock().clear();

    // 100 bytes from the middle of the third chunk.
    let start: u64 = chunks[..2].iter().map(|c| c.size).sum::<u64>() + chunks[2].size / 2;
    r.seek(SeekFrom::Start(start)).await.unwrap();
    let mut buf = vec![0u8; 100];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf[..], &content[start as usize..start as usize + 100]);
    drop(r);
    let reads: HashSet<B3Digest> = instrumented.reads.lock().iter().copied().collect();
    assert_eq!(reads, HashSet::from([chunks[2].digest]), "only the covering chunk may be fetched");

    // A read spanning the boundary of chunks 3 and 4 fetches those two; having moved forward
    // chunk by chunk, the reader may also fetch (up to 8) following chunks ahead, but nothing
    // before the range and never the whole blob.
    let boundary: u64 = chunks[..4].iter().map(|c| c.size).sum();
    let mut r = client.open_read(&digest).await.unwrap().unwrap();
    instrumented.reads.lock().clear();
    r.seek(SeekFrom::Start(boundary - 10)).await.unwrap();
    let mut buf = vec![0u8; 20];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf[..], &content[boundary as usize - 10..boundary as usize + 10]);
    drop(r);
    let reads: HashSet<B3Digest> = instrumented.reads.lock().iter().copied().collect();
    assert!(reads.contains(&chunks[3].digest) && reads.contains(&chunks[4].digest), "{reads:?}");
    let allowed: HashSet<B3Digest> = chunks[3..chunks.len().min(5 + 8)].iter().map(|c| c.digest).collect();
    assert!(reads.is_subset(&allowed), "fetched chunks outside the range and read-ahead: {reads:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sequential_read_of_a_large_blob_is_one_call() {
    let content = data(24_000_000, 9);
    let Served { instrumented, client, digest, chunks, _server } = serve_instrumented(&content).await;
    assert!(chunks.len() >= 8);
    let mut r = client.open_read(&digest).await.unwrap().unwrap();
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.unwrap();
    assert!(back == content);
    // One Read of the whole blob (the one open_read started to see whether the blob is small),
    // cut into verified chunks by the client; no call per chunk.
    assert_eq!(*instrumented.reads.lock(), vec![digest]);
    // Read again from the start by the same reader: a new call for the whole blob.
    r.seek(SeekFrom::Start(0)).await.unwrap();
    instrumented.reads.lock().clear();
    back.clear();
    r.read_to_end(&mut back).await.unwrap();
    assert!(back == content);
    assert_eq!(*instrumented.reads.lock(), vec![digest]);
}

#[tokio::test(flavor = "multi_thread")]
async fn small_blob_is_read_with_one_call() {
    let content = data(700_000, 8);
    let Served { instrumented, client, digest, chunks, _server } = serve_instrumented(&content).await;
    assert!(chunks.len() > 1, "want a multi-chunk small blob");
    assert!(read_all(client.as_ref(), &digest).await == content);
    assert_eq!(*instrumented.reads.lock(), vec![digest], "one whole-blob Read, no chunk reads");
}

#[tokio::test(flavor = "multi_thread")]
async fn server_without_chunks_is_read_whole_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let backend = tvix_store::compose::blob_service("memory://").unwrap();
    let content = data(3_000_000, 11);
    let digest = put(backend.as_ref(), &content).await;
    let honest = Arc::new(Wrapped(Instrumented { chunk_list: Some(vec![]), ..Instrumented::over(backend.clone()) }));
    let (addr, _stop) = in_process(honest.clone(), dir.path()).await;
    let client = tvix_store::compose::blob_service(&addr).unwrap();
    assert!(read_all(client.as_ref(), &digest).await == content);
    let reads = honest.reads.lock().clone();
    assert!(!reads.is_empty() && reads.iter().all(|d| *d == digest), "only whole-blob reads: {reads:?}");

    let dir2 = tempfile::tempdir().unwrap();
    let mut wrong = content.clone();
    wrong[1_234_567] ^= 1;
    let liar = Arc::new(Wrapped(Instrumented {
        chunk_list: Some(vec![]),
        serve_instead: Some(wrong),
        ..Instrumented::over(backend)
    }));
    let (addr, _stop2) = in_process(liar, dir2.path()).await;
    let client = tvix_store::compose::blob_service(&addr).unwrap();
    let err = match client.open_read(&digest).await {
        Err(e) => e,
        Ok(_) => panic!("a blob whose bytes do not match its digest must not be readable"),
    };
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
}

/// Reading `digest` fails as corrupt, either at open or while reading; in the latter case only
/// a prefix of the real `content` of at most `good` bytes was handed out before the error.
async fn assert_corrupt_read_stops_before(client: &dyn BlobService, digest: &B3Digest, content: &[u8], good: u64) {
    match client.open_read(digest).await {
        Err(err) => assert!(matches!(err, Error::Corrupt(_)), "{err:?}"),
        Ok(None) => panic!("blob {digest} reported absent"),
        Ok(Some(mut r)) => {
            let mut back = Vec::new();
            let err = r.read_to_end(&mut back).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
            assert!(
                back.len() as u64 <= good && content.starts_with(&back),
                "unverified bytes of {digest} were handed out"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_bytes_from_server_are_refused() {
    // A small blob (read whole) and a large one (read chunk-wise).
    for len in [200_000, 3_000_000] {
        let dir = tempfile::tempdir().unwrap();
        let backend = tvix_store::compose::blob_service("memory://").unwrap();
        let content = data(len, 5);
        let digest = put(backend.as_ref(), &content).await;
        let mut wrong = content.clone();
        wrong[len / 2] ^= 0xff;
        let liar = Arc::new(Wrapped(Instrumented { serve_instead: Some(wrong), ..Instrumented::over(backend) }));
        let (addr, _stop) = in_process(liar, dir.path()).await;
        let client = tvix_store::compose::blob_service(&addr).unwrap();
        // Chunks before the corrupt one verify and may be handed out; the corrupt one not.
        assert_corrupt_read_stops_before(client.as_ref(), &digest, &content, len as u64 / 2).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_chunk_on_the_servers_disk_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs");
    let backend = tvix_store::compose::blob_service(&format!("objectstore+file://{}", blobs.display())).unwrap();
    let small = data(8_000, 11);
    let large = data(3_000_000, 12);
    let small_digest = put(backend.as_ref(), &small).await;
    let large_digest = put(backend.as_ref(), &large).await;
    let chunks = backend.chunks(&large_digest).await.unwrap().unwrap();
    assert!(chunks.len() >= 3);
    let flip = |digest: &B3Digest| {
        let hex = digest.to_hex();
        let path = blobs.join("chunks").join(&hex[..2]).join(&hex);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    };
    flip(&small_digest);
    flip(&chunks[1].digest);
    let (addr, _stop) = in_process(backend, dir.path()).await;
    let client = tvix_store::compose::blob_service(&addr).unwrap();

    // The server refuses (DATA_LOSS), the client reports corruption.
    let err = client.open_read(&small_digest).await.err().expect("a corrupt small blob must not open");
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    // The error may come at open (the first Read call already runs into the corrupt chunk) or
    // while reading, after the good first chunk.
    assert_corrupt_read_stops_before(client.as_ref(), &large_digest, &large, chunks[0].size).await;
    // Reading from the middle fetches the corrupt chunk by itself.
    let err = client.open_read(&chunks[1].digest).await.err().expect("a corrupt chunk must not open");
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    let mut raw = BlobServiceClient::new(tvix_store::compose::channel(&addr).unwrap());
    let mut stream = raw.read(proto::ReadBlobRequest { digest: large_digest.into() }).await.unwrap().into_inner();
    let mut status = None;
    while let Some(message) = futures::StreamExt::next(&mut stream).await {
        if let Err(s) = message {
            status = Some(s);
            break;
        }
    }
    let status = status.expect("the stream must end in an error");
    assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
    assert!(status.message().contains(&chunks[1].digest.to_string()), "{}", status.message());
}

/// Counts what the server's Put handlers hand to their blob writers: bytes, and writers closed
/// (each a blob stored).
struct Receiving {
    inner: Arc<dyn BlobService>,
    received: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
}

#[async_trait]
impl BlobHooks for Receiving {
    fn inner(&self) -> &dyn BlobService {
        self.inner.as_ref()
    }
    async fn open_write(&self) -> Box<dyn BlobWriter> {
        let inner = self.inner.open_write().await;
        Box::new(CountingWriter { inner, received: self.received.clone(), closed: self.closed.clone() })
    }
}

struct CountingWriter {
    inner: Box<dyn BlobWriter>,
    received: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
}

impl tokio::io::AsyncWrite for CountingWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = polled {
            self.received.fetch_add(n as u64, Ordering::SeqCst);
        }
        polled
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl BlobWriter for CountingWriter {
    async fn write_bytes(&mut self, data: Bytes) -> std::io::Result<()> {
        let len = data.len() as u64;
        self.inner.write_bytes(data).await?;
        self.received.fetch_add(len, Ordering::SeqCst);
        Ok(())
    }
    async fn close(&mut self) -> Result<B3Digest, Error> {
        let stored = self.inner.close().await;
        self.closed.fetch_add(1, Ordering::SeqCst);
        stored
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn abandoned_upload_stores_nothing() {
    // The daemon's server over its backend (blobs on disk), in this process and counted: the
    // test sees what the server received, and waits for its handling of the cancelled calls.
    let dir = tempfile::tempdir().unwrap();
    let blobs = tvix_store::compose::blob_service(&format!("objectstore+file://{}/blobs", dir.path().display()));
    let received = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let counted = Receiving { inner: blobs.unwrap(), received: received.clone(), closed: closed.clone() };
    let (addr, _stop) = in_process(Arc::new(Wrapped(counted)), dir.path()).await;
    let service = tvix_store::compose::blob_service(&addr).unwrap();
    // A finished upload first: the connection it opens stays, and is among the tasks counted.
    let connected = put(service.as_ref(), b"connected").await;
    assert_eq!(closed.load(Ordering::SeqCst), 1);
    let tasks = alive_tasks();
    let mut prefixes = Vec::new();
    let mut sent = received.load(Ordering::SeqCst);
    for i in 0..10u32 {
        let prefix = data(100_000 + i as usize, 1000 + i);
        let mut w = service.open_write().await;
        w.write_all(&prefix).await.unwrap();
        w.flush().await.unwrap();
        // The server has all of it, everything but the end of the stream.
        sent += prefix.len() as u64;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while received.load(Ordering::SeqCst) < sent {
            assert!(std::time::Instant::now() < deadline, "the server did not receive upload {i} within 10 s");
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        // Dropped unclosed: the client cancels the Put; the server must not store what it got.
        drop(w);
        prefixes.push(B3Digest::of(&prefix));
    }
    // Every cancelled Put has ended on both sides (the client's call, the server's handling of it
    // and the storing task it started): nothing can still be on its way into the store.
    tasks_end_at_most(tasks).await;
    assert_eq!(closed.load(Ordering::SeqCst), 1, "the server closed the writer of a cancelled upload");
    for digest in prefixes {
        assert!(!service.has(&digest).await.unwrap(), "blob {digest} of an abandoned upload is visible");
    }
    assert!(service.has(&connected).await.unwrap());
}
