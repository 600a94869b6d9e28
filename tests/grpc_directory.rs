//! DirectoryService over gRPC against the real `tvix-store daemon`: graphs put and read back
//! recursively, and every kind of bad input rejected with INVALID_ARGUMENT (or NOT_FOUND),
//! a message naming the problem, and nothing of the rejected stream becoming visible. Abandoned
//! uploads go to our server in process, where the test can wait for its handling of them.

use std::collections::HashSet;

use bytes::Bytes;
use futures::TryStreamExt;
use prost::Message;
use tvix_store::castore::{B3Digest, Directory, Error};
use tvix_store::proto::castore as proto;
use tvix_store::proto::castore::directory_service_client::DirectoryServiceClient;

use crate::grpc_common::{Daemon, alive_tasks, serve_in_process, tasks_end_at_most};

fn file(name: &[u8], content: &[u8]) -> proto::FileNode {
    proto::FileNode {
        name: Bytes::copy_from_slice(name),
        digest: B3Digest::of(content).into(),
        size: content.len() as u64,
        executable: false,
    }
}

fn dir_node(name: &[u8], child: &proto::Directory, size: u64) -> proto::DirectoryNode {
    proto::DirectoryNode { name: Bytes::copy_from_slice(name), digest: digest(child).into(), size }
}

/// BLAKE3 of the message's encoding: the digest a server would store it under.
fn digest(d: &proto::Directory) -> B3Digest {
    B3Digest::of(&d.encode_to_vec())
}

fn typed(d: &proto::Directory) -> Directory {
    Directory::from_proto(d.clone()).expect("test directory must be valid")
}

/// A valid leaf directory no other test uses.
fn unique_leaf(tag: &str) -> proto::Directory {
    proto::Directory { files: vec![file(b"one", tag.as_bytes()), file(b"two", b"2")], ..Default::default() }
}

fn raw_client(addr: &str) -> DirectoryServiceClient<tonic::transport::Channel> {
    DirectoryServiceClient::new(tvix_store::compose::channel(addr).unwrap())
}

async fn raw_put(addr: &str, stream: Vec<proto::Directory>) -> Result<B3Digest, tonic::Status> {
    let response = raw_client(addr).put(futures::stream::iter(stream)).await?;
    Ok(B3Digest::try_from(&response.into_inner().root_digest).unwrap())
}

async fn assert_absent(addr: &str, d: &proto::Directory) {
    let status = raw_client(addr)
        .get(proto::GetDirectoryRequest {
            by_what: Some(proto::get_directory_request::ByWhat::Digest(digest(d).into())),
            recursive: false,
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("directory {} of a rejected stream must not be visible", digest(d)));
    assert_eq!(status.code(), tonic::Code::NotFound);
}

/// Sends `stream` and expects it rejected with `code` and a message containing every one of
/// `words`; then checks that no directory of it became visible.
async fn assert_rejected(addr: &str, stream: Vec<proto::Directory>, code: tonic::Code, words: &[&str]) {
    let status = raw_put(addr, stream.clone()).await.expect_err("stream must be rejected");
    assert_eq!(status.code(), code, "status: {status:?}");
    for word in words {
        assert!(status.message().contains(word), "message {:?} must mention {word:?}", status.message());
    }
    for d in &stream {
        assert_absent(addr, d).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn graph_roundtrip_over_unix_socket_and_tcp() {
    for daemon in [Daemon::unix(), Daemon::tcp()] {
        let service = tvix_store::compose::directory_service(&daemon.addr).unwrap();
        let leaf1 = unique_leaf("leaf1");
        let leaf2 = proto::Directory {
            symlinks: vec![proto::SymlinkNode { name: "l".into(), target: "../target".into() }],
            ..Default::default()
        };
        let mid = proto::Directory {
            directories: vec![dir_node(b"x", &leaf1, typed(&leaf1).size())],
            files: vec![file(b"f", b"mid file")],
            ..Default::default()
        };
        let root = proto::Directory {
            directories: vec![
                dir_node(b"m", &mid, typed(&mid).size()),
                dir_node(b"y", &leaf2, typed(&leaf2).size()),
                dir_node(b"z", &leaf1, typed(&leaf1).size()),
            ],
            ..Default::default()
        };
        let mut putter = service.put_multiple_start();
        for d in [&leaf1, &leaf2, &mid, &root] {
            putter.put(typed(d)).await.unwrap();
        }
        let root_digest = putter.close().await.unwrap();
        drop(putter);
        assert_eq!(root_digest, digest(&root));

        assert_eq!(service.get(&digest(&mid)).await.unwrap(), Some(typed(&mid)));
        let all: Vec<Directory> = service.get_recursive(&root_digest).try_collect().await.unwrap();
        assert_eq!(all.len(), 4, "each directory once, leaf1 although referred to twice");
        assert_eq!(all[0], typed(&root), "root first");
        let mut referred = HashSet::new();
        for d in &all {
            if d != &all[0] {
                assert!(referred.contains(&d.digest()), "{} sent before anything referred to it", d.digest());
            }
            referred.extend(d.child_directories().map(|(_, c, _)| *c));
        }
        let got: HashSet<B3Digest> = all.iter().map(|d| d.digest()).collect();
        let want: HashSet<B3Digest> = [&leaf1, &leaf2, &mid, &root].into_iter().map(digest).collect();
        assert_eq!(got, want);

        // A new graph may refer to directories already stored.
        let root2 =
            proto::Directory { directories: vec![dir_node(b"again", &mid, typed(&mid).size())], ..Default::default() };
        assert_eq!(service.put(typed(&root2)).await.unwrap(), digest(&root2));
        let below: Vec<Directory> = service.get_recursive(&digest(&root2)).try_collect().await.unwrap();
        assert_eq!(below.len(), 3);

        let absent = B3Digest::of(b"no such directory");
        assert_eq!(service.get(&absent).await.unwrap(), None);
        let err = service.get_recursive(&absent).try_collect::<Vec<_>>().await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_directories_are_rejected_and_invisible() {
    let daemon = Daemon::unix();
    let addr = daemon.addr.as_str();
    use tonic::Code::InvalidArgument as IA;

    let unsorted = proto::Directory { files: vec![file(b"b", b"1"), file(b"a", b"2")], ..Default::default() };
    assert_rejected(addr, vec![unique_leaf("u1"), unsorted], IA, &["not sorted", "\"a\""]).await;

    let duplicate = proto::Directory { files: vec![file(b"a", b"1"), file(b"a", b"2")], ..Default::default() };
    assert_rejected(addr, vec![unique_leaf("u2"), duplicate], IA, &["more than once", "\"a\""]).await;

    let cross_duplicate = proto::Directory {
        files: vec![file(b"same", b"1")],
        symlinks: vec![proto::SymlinkNode { name: "same".into(), target: "t".into() }],
        ..Default::default()
    };
    assert_rejected(addr, vec![unique_leaf("u3"), cross_duplicate], IA, &["more than once", "same"]).await;

    for (i, (name, word)) in
        [(&b""[..], "empty"), (b".", "`.` or `..`"), (b"..", "`.` or `..`"), (b"a/b", "'/'"), (b"a\0b", "NUL")]
            .into_iter()
            .enumerate()
    {
        let bad = proto::Directory { files: vec![file(name, b"x")], ..Default::default() };
        assert_rejected(addr, vec![unique_leaf(&format!("name{i}")), bad], IA, &["invalid name", word]).await;
        // The same name on a directory entry and a symlink is just as invalid.
        let bad_symlink = proto::Directory {
            symlinks: vec![proto::SymlinkNode { name: Bytes::copy_from_slice(name), target: "t".into() }],
            ..Default::default()
        };
        assert_rejected(addr, vec![bad_symlink], IA, &["invalid name", word]).await;
    }

    let mut short = file(b"short", b"x");
    short.digest = Bytes::from(vec![0u8; 31]);
    let short_digest = proto::Directory { files: vec![short], ..Default::default() };
    assert_rejected(addr, vec![unique_leaf("u4"), short_digest], IA, &["short", "invalid digest", "31 bytes"]).await;

    let empty_target = proto::Directory {
        symlinks: vec![proto::SymlinkNode { name: "l".into(), target: Bytes::new() }],
        ..Default::default()
    };
    assert_rejected(addr, vec![empty_target], IA, &["symlink target is empty"]).await;

    // unique_leaf has 2 entries below it: size 1 is too small (the deployed value is 4; the
    // protocol text's 2 is accepted too).
    let child = unique_leaf("u5");
    let too_small = proto::Directory { directories: vec![dir_node(b"c", &child, 1)], ..Default::default() };
    assert_rejected(addr, vec![child.clone(), too_small], IA, &["wrong size", "\"c\""]).await;
    let protocol_size = proto::Directory { directories: vec![dir_node(b"c", &child, 2)], ..Default::default() };
    raw_put(addr, vec![child.clone(), protocol_size]).await.expect("size 2 (the protocol text's value) is accepted");

    let unknown =
        proto::Directory { directories: vec![dir_node(b"ghost", &unique_leaf("never sent"), 4)], ..Default::default() };
    assert_rejected(addr, vec![unique_leaf("u6"), unknown], IA, &["\"ghost\"", "neither sent before it nor is stored"])
        .await;

    let leaf = unique_leaf("u7");
    let stray = unique_leaf("u8 stray");
    let root = proto::Directory { directories: vec![dir_node(b"c", &leaf, 4)], ..Default::default() };
    assert_rejected(addr, vec![leaf, stray.clone(), root], IA, &["not reachable", &digest(&stray).to_string()]).await;

    assert_rejected(addr, vec![], IA, &["no directories"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_get_requests() {
    let daemon = Daemon::unix();
    let mut raw = raw_client(&daemon.addr);
    let status = raw
        .get(proto::GetDirectoryRequest {
            by_what: Some(proto::get_directory_request::ByWhat::Digest(Bytes::from(vec![0u8; 20]))),
            recursive: true,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("20 bytes"), "{}", status.message());
    let status = raw.get(proto::GetDirectoryRequest { by_what: None, recursive: false }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    for recursive in [false, true] {
        let absent = B3Digest::of(b"absent");
        let status = raw
            .get(proto::GetDirectoryRequest {
                by_what: Some(proto::get_directory_request::ByWhat::Digest(absent.into())),
                recursive,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(status.message().contains(&absent.to_string()), "{}", status.message());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn abandoned_upload_stores_nothing() {
    // The daemon's server (directories in memory, as the daemon's), in this process: its handling
    // of the cancelled calls runs in the test's runtime, where the test can wait for it to end.
    let dir = tempfile::tempdir().unwrap();
    let (addr, _stop) = serve_in_process(tvix_store::store::Store::in_memory(), dir.path()).await;
    let service = tvix_store::compose::directory_service(&addr).unwrap();
    // A finished upload first: the connection it opens stays, and is among the tasks counted.
    let connected = unique_leaf("connected");
    let mut putter = service.put_multiple_start();
    putter.put(typed(&connected)).await.unwrap();
    assert_eq!(putter.close().await.unwrap(), digest(&connected));
    drop(putter);
    let tasks = alive_tasks();
    // Many times over: whether the server sees the call cancelled before or after the
    // directory arrived is a matter of timing, and either way it must store nothing.
    let leaves: Vec<proto::Directory> = (0..30).map(|i| unique_leaf(&format!("abandoned {i}"))).collect();
    for (i, leaf) in leaves.iter().enumerate() {
        let mut putter = service.put_multiple_start();
        putter.put(typed(leaf)).await.unwrap();
        if i % 2 == 1 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        drop(putter);
    }
    // Every cancelled Put has ended on both sides (the client's call, the server's handling of
    // it): were the server to store a truncated graph, it would have by now.
    tasks_end_at_most(tasks).await;
    for leaf in &leaves {
        assert_eq!(service.get(&digest(leaf)).await.unwrap(), None, "abandoned {}", digest(leaf));
        assert_absent(&addr, leaf).await;
    }
    assert_eq!(service.get(&digest(&connected)).await.unwrap(), Some(typed(&connected)));
}
