//! PathInfoService over gRPC against the real `tvix-store daemon`: put, get, list; and bad
//! PathInfo rejected with INVALID_ARGUMENT naming the problem, with nothing stored.

use bytes::Bytes;
use futures::TryStreamExt;
use tvix_store::castore::{B3Digest, Error, Node};
use tvix_store::pathinfo::{CaKind, ContentAddress, NarCalculationService, PathInfo, Signature};
use tvix_store::proto::store as proto;
use tvix_store::proto::store::path_info_service_client::PathInfoServiceClient;
use tvix_store::storepath::StorePath;

use crate::grpc_common::{self, Daemon};
use crate::nix_referee;

fn store_path(seed: u8, name: &str) -> StorePath {
    StorePath::from_parts([seed; 20], name).unwrap()
}

fn info(seed: u8, name: &str, references: Vec<StorePath>) -> PathInfo {
    PathInfo {
        store_path: store_path(seed, name),
        node: Node::file(B3Digest::of(name.as_bytes()), name.len() as u64, false),
        references,
        nar_size: 128,
        nar_sha256: [seed; 32],
        signatures: vec![Signature { name: "cache.example.org-1".into(), data: [7; 64] }],
        deriver: Some(store_path(seed.wrapping_add(1), "builder")),
        ca: Some(ContentAddress { kind: CaKind::NarSha256, digest: Bytes::from(vec![seed; 32]) }),
    }
}

fn raw_client(addr: &str) -> PathInfoServiceClient<tonic::transport::Channel> {
    PathInfoServiceClient::new(tvix_store::compose::channel(addr).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn put_get_list_over_unix_socket_and_tcp() {
    for daemon in [Daemon::unix(), Daemon::tcp()] {
        let service = tvix_store::compose::path_info_service(&daemon.addr).unwrap();
        let dep = info(1, "dep-1.0", vec![]);
        let main = info(2, "main-2.0", vec![dep.store_path.clone(), store_path(2, "main-2.0")]);
        let dir_node =
            PathInfo { node: Node::directory(B3Digest::of(b"some directory"), 4), ..info(3, "a-directory", vec![]) };
        for i in [&dep, &main, &dir_node] {
            assert_eq!(&service.put(i.clone()).await.unwrap(), i);
        }
        assert_eq!(service.get(*main.store_path.digest()).await.unwrap().as_ref(), Some(&main));
        assert_eq!(service.get(*dir_node.store_path.digest()).await.unwrap().as_ref(), Some(&dir_node));
        assert_eq!(service.get([9; 20]).await.unwrap(), None);
        let mut all: Vec<PathInfo> = service.list().try_collect().await.unwrap();
        all.sort_by(|a, b| a.store_path.cmp(&b.store_path));
        assert_eq!(all, vec![dep, main, dir_node]);
    }
}

/// Puts `bad` raw, expects INVALID_ARGUMENT with every word in the message, and nothing stored.
async fn assert_rejected(addr: &str, bad: proto::PathInfo, words: &[&str]) {
    let mut raw = raw_client(addr);
    let status = raw.put(bad.clone()).await.expect_err("PathInfo must be rejected");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    for word in words {
        assert!(status.message().contains(word), "message {:?} must mention {word:?}", status.message());
    }
    let listed: Vec<proto::PathInfo> =
        raw.list(proto::ListPathInfoRequest {}).await.unwrap().into_inner().try_collect().await.unwrap();
    assert!(listed.is_empty(), "a rejected PathInfo must not be listed: {listed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_pathinfo_is_rejected_and_invisible() {
    let daemon = Daemon::unix();
    let addr = daemon.addr.as_str();
    let dep = store_path(1, "dep");
    let good = info(5, "good", vec![dep.clone()]).to_proto();
    let set_name = |p: &mut proto::PathInfo, name: &str| {
        if let Some(tvix_store::proto::castore::node::Node::File(f)) = p.node.as_mut().and_then(|n| n.node.as_mut()) {
            f.name = Bytes::copy_from_slice(name.as_bytes());
        }
    };

    let mut p = good.clone();
    set_name(&mut p, &format!("{}-bad name", &store_path(5, "x").to_basename()[..32]));
    assert_rejected(addr, p, &["not a valid store path basename", "bad name"]).await;

    let mut p = good.clone();
    set_name(&mut p, "tooshort-name");
    assert_rejected(addr, p, &["not a valid store path basename", "tooshort-name"]).await;

    let mut p = good.clone();
    set_name(&mut p, &format!("{}-name", "e".repeat(32)));
    assert_rejected(addr, p, &["not a valid store path basename", "invalid hash"]).await;

    let mut p = good.clone();
    p.node = None;
    assert_rejected(addr, p, &["root node is missing"]).await;

    let mut p = good.clone();
    p.references[0] = Bytes::from(vec![1u8; 19]);
    assert_rejected(addr, p, &["reference 0", "19 bytes"]).await;

    let mut p = good.clone();
    p.references.push(Bytes::from(vec![2u8; 20]));
    assert_rejected(addr, p, &["2 references but 1 reference_names"]).await;

    let mut p = good.clone();
    if let Some(n) = p.narinfo.as_mut() {
        n.reference_names[0] = store_path(3, "dep").to_basename();
    }
    assert_rejected(addr, p, &["reference_names[0]", "does not match"]).await;

    let mut p = good.clone();
    if let Some(n) = p.narinfo.as_mut() {
        n.nar_sha256 = Bytes::from(vec![0u8; 20]);
    }
    assert_rejected(addr, p, &["nar_sha256", "20 bytes"]).await;

    let mut p = good.clone();
    if let Some(tvix_store::proto::castore::node::Node::File(f)) = p.node.as_mut().and_then(|n| n.node.as_mut()) {
        f.digest = Bytes::from(vec![0u8; 16]);
    }
    assert_rejected(addr, p, &["invalid root node", "16 bytes"]).await;

    // The unchanged message is accepted: the rejections above were for the one fault each.
    raw_client(addr).put(good).await.expect("the valid PathInfo is accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_get_requests() {
    let daemon = Daemon::unix();
    let mut raw = raw_client(&daemon.addr);
    let get = |by_what| proto::GetPathInfoRequest { by_what };
    let status = raw
        .get(get(Some(proto::get_path_info_request::ByWhat::ByOutputHash(Bytes::from(vec![0u8; 32])))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("32 bytes"), "{}", status.message());
    let status = raw.get(get(None)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let unknown = store_path(8, "x");
    let status = raw
        .get(get(Some(proto::get_path_info_request::ByWhat::ByOutputHash(Bytes::copy_from_slice(unknown.digest())))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().contains(&unknown.to_basename()[..32]), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn calculate_nar_matches_nix_store_dump() {
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;
    let daemon = Daemon::unix();
    let channel = tvix_store::compose::channel(&daemon.addr).unwrap();
    let client = tvix_store::grpc::GrpcPathInfoService::new(channel.clone());
    let blobs = tvix_store::grpc::GrpcBlobService::new(channel);

    // The referee: Nix's own NAR of a file with the same contents.
    let content = grpc_common::data(300_000, 42);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("f");
    std::fs::write(&path, &content).unwrap();
    let dump = nix_referee::nix("nix-store", &["--dump".as_ref(), path.as_os_str()]);
    let want: [u8; 32] = sha2::Sha256::digest(&dump).into();

    let mut w = tvix_store::castore::blobservice::BlobService::open_write(&blobs).await;
    w.write_all(&content).await.unwrap();
    let digest = w.close().await.unwrap();
    let node = Node::file(digest, content.len() as u64, false);
    assert_eq!(client.calculate_nar(&node).await.unwrap(), (dump.len() as u64, want));

    // An invalid node is refused before any calculation.
    let status =
        raw_client(&daemon.addr).calculate_nar(tvix_store::proto::castore::Node { node: None }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    // A file whose blob is not stored cannot be serialised.
    let missing = Node::file(B3Digest::of(b"not stored"), 10, false);
    let err = client.calculate_nar(&missing).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
}
