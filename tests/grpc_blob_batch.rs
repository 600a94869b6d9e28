//! The batched blob read (`tvix_store.ext.v1.BlobBatchService`, `BlobService::read_many` over
//! gRPC) against real servers on unix sockets: the `tvix-store daemon` binary, a server that
//! lies in its batched answers, and a plain tvix-protocol server without the extension.

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::io::AsyncReadExt;
use tvix_store::castore::blobservice::{BlobReader, BlobService, WholeReader};
use tvix_store::castore::{B3Digest, Error};
use tvix_store::grpc::GrpcBlobService;
use tvix_store::proto::castore::blob_service_server::BlobServiceServer;
use tvix_store::proto::castore::directory_service_server::DirectoryServiceServer;
use tvix_store::proto::ext;
use tvix_store::proto::ext::blob_batch_service_server::{BlobBatchService, BlobBatchServiceServer};
use tvix_store::server::{BlobBatchServer, BlobServer, DirectoryServer};

use crate::blob_common::{BlobHooks, Wrapped};
use crate::grpc_common::{Calls, Daemon, call_recorder, count, data};

async fn put(service: &dyn BlobService, content: &[u8]) -> B3Digest {
    let mut w = service.open_write().await;
    tokio::io::AsyncWriteExt::write_all(&mut w, content).await.unwrap();
    w.close().await.unwrap()
}

/// The blob by one plain open_read, read to its end.
async fn read_plain(service: &dyn BlobService, digest: &B3Digest) -> Option<Vec<u8>> {
    let mut r = service.open_read(digest).await.unwrap()?;
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.unwrap();
    Some(back)
}

async fn read_many(service: &dyn BlobService, digests: &[B3Digest]) -> Vec<(B3Digest, Result<Option<Bytes>, Error>)> {
    service.read_many(digests.to_vec()).collect().await
}

/// Contents of a mixed set: empty, tiny, small, a multi-chunk blob under 1 MiB, a large
/// multi-chunk blob, and one just over the largest chunk.
fn mixed_contents() -> Vec<Vec<u8>> {
    [0, 1, 5_000, 700_000, 5_000_000, 1024 * 1024 + 1]
        .iter()
        .enumerate()
        .map(|(i, len)| data(*len, 40 + i as u32))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn batched_results_equal_plain_reads() {
    let daemon = Daemon::unix();
    let channel = tvix_store::compose::channel(&daemon.addr).unwrap();
    let client = GrpcBlobService::new(channel.clone());
    assert_eq!(client.has_batch_read(), None, "nothing is known before the first call");
    let mut digests = Vec::new();
    for content in mixed_contents() {
        digests.push(put(&client, &content).await);
    }
    let absent = B3Digest::of(b"never stored");
    // An absent blob in the middle, and a repeat: one result per digest asked for, in order.
    let asked = [&digests[..3], &[absent], &digests[3..], &[digests[1]]].concat();
    let results = read_many(&client, &asked).await;
    assert_eq!(client.has_batch_read(), Some(true), "the daemon serves the batched read");
    assert_eq!(results.len(), asked.len());
    for ((digest, result), want) in results.iter().zip(&asked) {
        assert_eq!(digest, want, "results must come in the order asked");
        let got = result.as_ref().unwrap_or_else(|e| panic!("blob {digest}: {e}"));
        let plain = read_plain(&client, digest).await;
        assert_eq!(got.as_ref().map(|b| b.to_vec()), plain, "batched and plain read of {digest} differ");
    }
    assert!(results[3].1.as_ref().unwrap().is_none(), "the absent blob is reported absent");

    // On the wire: a large blob comes in several parts with increasing offsets, each blob's
    // parts end with `last`, and the absent one is marked not found.
    let mut raw = ext::blob_batch_service_client::BlobBatchServiceClient::new(channel.clone());
    let request = ext::ReadManyRequest { digests: vec![digests[4].into(), absent.into(), digests[0].into()] };
    let mut stream = raw.read_many(request).await.unwrap().into_inner();
    let mut parts = Vec::new();
    while let Some(message) = stream.next().await {
        parts.extend(message.unwrap().parts);
    }
    let large: Vec<_> = parts.iter().filter(|p| p.digest == Bytes::from(digests[4])).collect();
    assert!(large.len() > 2, "a 5 MB blob must come in several parts, got {}", large.len());
    let mut offset = 0;
    for p in &large {
        assert_eq!(p.offset, offset);
        assert!(p.data.len() <= 1024 * 1024);
        offset += p.data.len() as u64;
    }
    assert_eq!(offset, 5_000_000);
    assert!(large.last().unwrap().last && large.iter().filter(|p| p.last).count() == 1);
    let not_found: Vec<_> = parts.iter().filter(|p| p.digest == Bytes::from(absent)).collect();
    assert!(not_found.len() == 1 && not_found[0].not_found && not_found[0].data.is_empty());
    let order: Vec<Bytes> =
        parts.iter().map(|p| p.digest.clone()).collect::<Vec<_>>().into_iter().fold(Vec::new(), |mut acc, d| {
            if acc.last() != Some(&d) {
                acc.push(d);
            }
            acc
        });
    assert_eq!(order, vec![Bytes::from(digests[4]), Bytes::from(absent), Bytes::from(digests[0])], "answered in order");

    // Bad requests are refused whole.
    let short = raw.read_many(ext::ReadManyRequest { digests: vec![Bytes::from(vec![1u8; 31])] }).await.unwrap_err();
    assert_eq!(short.code(), tonic::Code::InvalidArgument);
    assert!(short.message().contains("digests[0]") && short.message().contains("31 bytes"), "{}", short.message());
    let too_many = vec![Bytes::from(absent); tvix_store::server::MAX_BATCH_DIGESTS + 1];
    let refused = raw.read_many(ext::ReadManyRequest { digests: too_many }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");

    // More digests than one call carries (the client cuts them into several calls).
    let many: Vec<B3Digest> = (0..2500).map(|i| digests[i % digests.len()]).collect();
    let results = read_many(&client, &many).await;
    assert_eq!(results.len(), many.len());
    for ((digest, result), want) in results.iter().zip(&many) {
        assert_eq!(digest, want);
        let bytes = result.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(B3Digest::of(bytes), *want);
    }
}

/// A blob service over `inner` that records which digests were opened for reading (what the
/// plain Read handler does for it), and serves wrong bytes for one digest.
struct Recording {
    inner: Arc<dyn BlobService>,
    opened: Mutex<Vec<B3Digest>>,
    corrupt: Option<B3Digest>,
}

#[async_trait]
impl BlobHooks for Recording {
    fn inner(&self) -> &dyn BlobService {
        self.inner.as_ref()
    }
    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        self.opened.lock().push(*digest);
        if self.corrupt == Some(*digest)
            && let Some(mut real) = read_plain(self.inner.as_ref(), digest).await
        {
            real[0] ^= 0xff;
            // A backend that lies: its reader claims to hand out verified bytes.
            return Ok(Some(Box::new(WholeReader::new(real.into()))));
        }
        self.inner.open_read(digest).await
    }
}

/// A batched read that answers the request's digests by position: 0 right, 1 left out,
/// 2 sent twice, then a blob not asked for, 3 with a flipped byte, 4 with a gap between its
/// parts, 5 right, 6 marked as failed on the server, 7 right but split over two messages.
struct Liar {
    store: Arc<dyn BlobService>,
    unrequested: B3Digest,
}

fn whole(digest: B3Digest, data: Vec<u8>) -> ext::BlobPart {
    ext::BlobPart { digest: digest.into(), offset: 0, data: data.into(), last: true, ..Default::default() }
}

#[tonic::async_trait]
impl BlobBatchService for Liar {
    type ReadManyStream = Pin<Box<dyn Stream<Item = Result<ext::ReadManyResponse, tonic::Status>> + Send>>;

    async fn read_many(
        &self,
        request: tonic::Request<ext::ReadManyRequest>,
    ) -> Result<tonic::Response<Self::ReadManyStream>, tonic::Status> {
        let digests: Vec<B3Digest> =
            request.into_inner().digests.iter().map(|d| B3Digest::try_from(d.as_ref()).unwrap()).collect();
        let mut bytes = Vec::new();
        for d in &digests {
            bytes.push(read_plain(self.store.as_ref(), d).await.unwrap());
        }
        let unrequested = read_plain(self.store.as_ref(), &self.unrequested).await.unwrap();
        let mut first = vec![
            whole(digests[0], bytes[0].clone()),
            whole(digests[2], bytes[2].clone()),
            whole(digests[2], bytes[2].clone()),
            whole(self.unrequested, unrequested),
        ];
        let mut flipped = bytes[3].clone();
        flipped[10] ^= 1;
        first.push(whole(digests[3], flipped));
        let half = bytes[4].len() / 2;
        first.push(ext::BlobPart {
            digest: digests[4].into(),
            offset: 0,
            data: bytes[4][..half].to_vec().into(),
            ..Default::default()
        });
        first.push(ext::BlobPart {
            digest: digests[4].into(),
            offset: half as u64 + 1,
            data: bytes[4][half + 1..].to_vec().into(),
            last: true,
            ..Default::default()
        });
        first.push(whole(digests[5], bytes[5].clone()));
        first.push(ext::BlobPart {
            digest: digests[6].into(),
            error_code: tonic::Code::DataLoss as u32,
            error_message: "a chunk is corrupt".into(),
            ..Default::default()
        });
        let half = bytes[7].len() / 2;
        first.push(ext::BlobPart {
            digest: digests[7].into(),
            offset: 0,
            data: bytes[7][..half].to_vec().into(),
            ..Default::default()
        });
        let second = vec![ext::BlobPart {
            digest: digests[7].into(),
            offset: half as u64,
            data: bytes[7][half..].to_vec().into(),
            last: true,
            ..Default::default()
        }];
        let messages = vec![Ok(ext::ReadManyResponse { parts: first }), Ok(ext::ReadManyResponse { parts: second })];
        Ok(tonic::Response::new(Box::pin(futures::stream::iter(messages))))
    }
}

/// Which batched read a test server offers.
enum Batch {
    /// None: a plain tvix-protocol server.
    Absent,
    Liar(Liar),
    /// Ours, over the same blob service.
    Ours,
}

const BATCH_PATH: &str = "/tvix_store.ext.v1.BlobBatchService/";
const READ_PATH: &str = "/tvix.castore.v1.BlobService/Read";

/// Serves `blob` with the tvix BlobService (and DirectoryService, when given), plus `batch`,
/// on a unix socket in `dir`; records the path of every call that reached the server (whether
/// it has that service or not).
async fn serve(
    dir: &std::path::Path,
    blob: Arc<dyn BlobService>,
    directory: Option<Arc<dyn tvix_store::castore::directoryservice::DirectoryService>>,
    batch: Batch,
) -> (String, Calls, tokio::sync::oneshot::Sender<()>) {
    let socket = dir.join("test.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let calls: Calls = Arc::default();
    let recorder = call_recorder(&calls);
    let (liar, ours) = match batch {
        Batch::Absent => (None, None),
        Batch::Liar(liar) => (Some(BlobBatchServiceServer::new(liar)), None),
        Batch::Ours => (None, Some(BlobBatchServiceServer::new(BlobBatchServer::new(blob.clone())))),
    };
    let router = tonic::transport::Server::builder()
        .layer(recorder)
        .add_service(BlobServiceServer::new(BlobServer::new(blob)))
        .add_optional_service(directory.map(|d| DirectoryServiceServer::new(DirectoryServer::new(d))))
        .add_optional_service(liar)
        .add_optional_service(ours);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = stopped.await;
    }));
    (format!("grpc+unix://{}", socket.display()), calls, stop)
}

/// Eight small blobs and one more (the "not asked for" one) in a memory store.
async fn eight_and_one() -> (Arc<dyn BlobService>, Vec<(B3Digest, Vec<u8>)>, B3Digest) {
    let store = tvix_store::compose::blob_service("memory://").unwrap();
    let mut blobs = Vec::new();
    for i in 0..8u32 {
        let content = data(1000 + 3000 * i as usize, 70 + i);
        blobs.push((put(store.as_ref(), &content).await, content));
    }
    let unrequested = put(store.as_ref(), &data(2222, 99)).await;
    (store, blobs, unrequested)
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_batched_entries_fail_only_themselves_and_are_read_again() {
    let (store, blobs, unrequested) = eight_and_one().await;
    let recording = Arc::new(Wrapped(Recording { inner: store.clone(), opened: Mutex::new(vec![]), corrupt: None }));
    let dir = tempfile::tempdir().unwrap();
    let (addr, calls, _stop) =
        serve(dir.path(), recording.clone(), None, Batch::Liar(Liar { store: store.clone(), unrequested })).await;
    let client = GrpcBlobService::new(tvix_store::compose::channel(&addr).unwrap());
    let digests: Vec<B3Digest> = blobs.iter().map(|(d, _)| *d).collect();
    let results = read_many(&client, &digests).await;
    assert_eq!(count(&calls, BATCH_PATH), 1);
    assert_eq!(client.has_batch_read(), Some(true));
    assert_eq!(results.len(), 8, "one result per digest asked for, none for the one not asked for");
    for ((digest, result), (want, content)) in results.iter().zip(&blobs) {
        assert_eq!(digest, want);
        let got = result.as_ref().unwrap_or_else(|e| panic!("blob {digest}: {e}"));
        assert!(got.as_deref() == Some(&content[..]), "wrong bytes for blob {digest}");
    }
    // Left out (1), corrupt (3), with a gap (4) and failed on the server (6) were read again
    // with a plain Read; the duplicated (2), the split (7) and the right ones were not.
    let mut opened = recording.opened.lock().clone();
    opened.sort();
    let mut want = vec![digests[1], digests[3], digests[4], digests[6]];
    want.sort();
    assert_eq!(opened, want, "exactly the broken entries are read again");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_entry_broken_in_the_batch_and_in_its_read_again_is_an_error_naming_it() {
    let (store, blobs, unrequested) = eight_and_one().await;
    let digests: Vec<B3Digest> = blobs.iter().map(|(d, _)| *d).collect();
    // Blob 3 comes corrupt in the batch, and corrupt again from the plain Read.
    let recording =
        Arc::new(Wrapped(Recording { inner: store.clone(), opened: Mutex::new(vec![]), corrupt: Some(digests[3]) }));
    let dir = tempfile::tempdir().unwrap();
    let (addr, _, _stop) =
        serve(dir.path(), recording, None, Batch::Liar(Liar { store: store.clone(), unrequested })).await;
    let client = GrpcBlobService::new(tvix_store::compose::channel(&addr).unwrap());
    let results = read_many(&client, &digests).await;
    assert_eq!(results.len(), 8);
    for (i, ((digest, result), (_, content))) in results.iter().zip(&blobs).enumerate() {
        if i == 3 {
            let err = result.as_ref().expect_err("corrupt twice must be an error");
            assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
            assert!(err.to_string().contains(&digest.to_string()), "the error must name the blob: {err}");
        } else {
            let got = result.as_ref().unwrap_or_else(|e| panic!("blob {digest}: {e}"));
            assert!(got.as_deref() == Some(&content[..]), "wrong bytes for blob {digest}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_tvix_server_is_read_one_blob_at_a_time_and_remembered() {
    let (store, blobs, _) = eight_and_one().await;
    let contents = mixed_contents();
    let mut digests: Vec<B3Digest> = blobs.iter().map(|(d, _)| *d).collect();
    for content in &contents {
        digests.push(put(store.as_ref(), content).await);
    }
    let absent = B3Digest::of(b"not there");
    digests.push(absent);
    let recording = Arc::new(Wrapped(Recording { inner: store.clone(), opened: Mutex::new(vec![]), corrupt: None }));
    let dir = tempfile::tempdir().unwrap();
    // Only the tvix services: the batched read is answered UNIMPLEMENTED.
    let (addr, calls, _stop) = serve(dir.path(), recording.clone(), None, Batch::Absent).await;
    let client = GrpcBlobService::new(tvix_store::compose::channel(&addr).unwrap());
    for round in 0..2 {
        let results = read_many(&client, &digests).await;
        assert_eq!(results.len(), digests.len());
        for ((digest, result), want) in results.iter().zip(&digests) {
            assert_eq!(digest, want);
            let got = result.as_ref().unwrap_or_else(|e| panic!("round {round}, blob {digest}: {e}"));
            if *digest == absent {
                assert!(got.is_none());
            } else {
                assert_eq!(B3Digest::of(got.as_ref().unwrap()), *digest, "round {round}");
            }
        }
        assert_eq!(client.has_batch_read(), Some(false));
        // The first call found out; the second went straight to plain Reads.
        assert_eq!(count(&calls, BATCH_PATH), 1, "round {round}: the fallback must be remembered");
        assert_eq!(recording.opened.lock().len(), digests.len() * (round + 1), "one Read per blob");
    }
    // A clone (same channel) knows it too.
    let clone = client.clone();
    let _ = read_many(&clone, &digests[..1]).await;
    assert_eq!(count(&calls, BATCH_PATH), 1);

    // A client forced to the plain protocol never asks, even a server that has the extension.
    let daemon = Daemon::unix();
    let forced = GrpcBlobService::new(tvix_store::compose::channel(&daemon.addr).unwrap()).plain_protocol();
    let digest = put(&forced, &contents[2]).await;
    let results = read_many(&forced, &[digest]).await;
    assert!(results[0].1.as_ref().unwrap().as_deref() == Some(&contents[2][..]));
    assert_eq!(forced.has_batch_read(), Some(false));
}

#[tokio::test(flavor = "multi_thread")]
async fn nar_rendering_over_grpc_reads_small_files_in_batches() {
    // 600 small files (more than two batches), a large one, and a subdirectory.
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path().join("tree");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("big"), data(3_000_000, 1)).unwrap();
    for i in 0..600u32 {
        std::fs::write(root.join(format!("f{i:04}")), data(100 + i as usize * 7, 1000 + i)).unwrap();
    }
    for i in 0..20u32 {
        std::fs::write(root.join("sub").join(format!("s{i:02}")), data(5000, 5000 + i)).unwrap();
    }
    let blob = tvix_store::compose::blob_service("memory://").unwrap();
    let directory = tvix_store::compose::directory_service("memory://").unwrap();
    let ingested = tvix_store::import::ingest_path(blob.clone(), directory.clone(), &root, None).await.unwrap();
    let local =
        tvix_store::nar::write_nar(Vec::new(), &ingested.node, blob.as_ref(), directory.as_ref()).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (addr, calls, _stop) = serve(dir.path(), blob.clone(), Some(directory.clone()), Batch::Ours).await;
    let remote_blob = GrpcBlobService::new(tvix_store::compose::channel(&addr).unwrap());
    let remote_directory = tvix_store::compose::directory_service(&addr).unwrap();
    let layout = tvix_store::nar::NarLayout::of(&ingested.node, remote_directory.as_ref()).await.unwrap();
    let rendered = layout.write(Vec::new(), &remote_blob).await.unwrap();
    assert!(rendered == local, "the NAR rendered over gRPC differs from the local one");
    // 620 small files in batches of at most 256 (cut also where the large file sits): a few
    // batched calls, and Reads only for the large file.
    let batches = count(&calls, BATCH_PATH);
    assert!((3..=5).contains(&batches), "{batches} batched calls for 620 small files");
    let reads = count(&calls, READ_PATH);
    assert!(reads <= 2, "{reads} Read calls: small files must not be read one by one");

    // A range inside the small files: its files only, still batched.
    calls.lock().clear();
    let (offset, size) = layout.files().nth(300).unwrap();
    let part = layout.write_range(Vec::new(), &remote_blob, offset + 1..offset + size + 5000).await.unwrap();
    assert!(part == local[offset as usize + 1..offset as usize + size as usize + 5000]);
    assert_eq!(count(&calls, BATCH_PATH), 1);
    assert_eq!(count(&calls, READ_PATH), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_chunk_on_the_servers_disk_fails_only_its_blob() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs");
    let store = tvix_store::compose::blob_service(&format!("objectstore+file://{}", blobs.display())).unwrap();
    let contents: Vec<Vec<u8>> = (0..5).map(|i| data(2000 + i * 100, 300 + i as u32)).collect();
    let mut digests = Vec::new();
    for content in &contents {
        digests.push(put(store.as_ref(), content).await);
    }
    let hex = digests[2].to_hex();
    let path = blobs.join("chunks").join(&hex[..2]).join(&hex);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let (addr, calls, _stop) = serve(dir.path(), store, None, Batch::Ours).await;
    let client = GrpcBlobService::new(tvix_store::compose::channel(&addr).unwrap());
    let results = read_many(&client, &digests).await;
    assert_eq!(count(&calls, BATCH_PATH), 1);
    for (i, (digest, result)) in results.iter().enumerate() {
        if i == 2 {
            let err = result.as_ref().expect_err("a corrupt blob must not be read");
            assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
            assert!(err.to_string().contains(&digest.to_string()), "{err}");
        } else {
            assert!(result.as_ref().unwrap().as_deref() == Some(&contents[i][..]), "blob {i}");
        }
    }
    // The server's error part made the client try once more with Read (which failed too).
    assert_eq!(count(&calls, READ_PATH), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_daemon_of_a_failover_list_is_asked_for_the_batched_read_on_its_own() {
    let contents = mixed_contents();
    // First a plain tvix server, then our daemon; both hold the same blobs.
    let plain_store = tvix_store::compose::blob_service("memory://").unwrap();
    let daemon = Daemon::unix();
    let ours = tvix_store::compose::blob_service(&daemon.addr).unwrap();
    let mut digests = Vec::new();
    for content in &contents {
        digests.push(put(plain_store.as_ref(), content).await);
        put(ours.as_ref(), content).await;
    }
    // The plain server runs on a runtime of its own, so that dropping the runtime breaks its
    // connections the way a dead daemon's break.
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let socket_dir = dir.path().to_path_buf();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let served = runtime.block_on(serve(&socket_dir, plain_store, None, Batch::Absent));
        tx.send((served.0, served.1)).unwrap();
        let _ = stop_rx.recv();
        drop(served.2);
        runtime.shutdown_background();
    });
    let (plain_addr, calls) = rx.recv().unwrap();
    let fallback = daemon.addr.trim_start_matches("grpc+unix://");
    let url = url::Url::parse(&format!("{plain_addr}?fallback={fallback}")).unwrap();
    let target = tvix_store::compose::url::grpc_target(&url).unwrap();
    let client = GrpcBlobService::new(tvix_store::grpc::channel(&target).unwrap());

    let results = read_many(&client, &digests).await;
    assert!(results.iter().all(|(_, r)| matches!(r, Ok(Some(_)))), "{results:?}");
    assert_eq!(client.has_batch_read(), Some(false), "the plain server has no batched read");
    assert_eq!(count(&calls, BATCH_PATH), 1);

    stop_tx.send(()).unwrap();
    server.join().unwrap();
    // The call that finds the plain server gone may fail; later ones go to our daemon, which is
    // asked for the batched read afresh and has it.
    let mut answered = false;
    for _ in 0..5 {
        let results = read_many(&client, &digests).await;
        if results.iter().all(|(_, r)| matches!(r, Ok(Some(_)))) {
            answered = true;
            break;
        }
    }
    assert!(answered, "our daemon did not answer after the failover");
    assert_eq!(client.has_batch_read(), Some(true), "our daemon was not asked for the batched read");
}
