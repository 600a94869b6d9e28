//! Who may write to a daemon, and what a write may store (docs/access.md). Each attack is
//! mounted against a real `tvix-store daemon` and judged by what the store serves afterwards:
//! the NAR `tvix-store dump` renders through the daemon, and what `path-info` says.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest;
use tvix_store::proto::store::path_info_service_client::PathInfoServiceClient;
use tvix_store::proto::store::{self as proto};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tvix-store")
}

/// A daemon on the default store in `store`, also listening on a loopback TCP port (so its
/// unix socket is the store's own, `store/daemon.sock`).
struct Daemon {
    child: Child,
    tcp: String,
}

impl Daemon {
    fn start(store: &Path, extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let tcp = format!("127.0.0.1:{port}");
        let child = Command::new(bin())
            .args(["daemon", "-l", &tcp])
            .args(extra)
            .env("TVIX_STORE_DIR", store)
            .env_remove("TVIX_STORE_TOKEN_FILE")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&tcp).is_err() || !store.join("daemon.sock").exists() {
            assert!(Instant::now() < deadline, "the daemon did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, tcp }
    }

    fn tcp_url(&self) -> String {
        format!("grpc+http://{}", self.tcp)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tvix-store ARGS` against the services at `addr`, presenting the token in `token_file`.
fn client(addr: &str, token_file: Option<&Path>, args: &[&str]) -> Output {
    let mut command = Command::new(bin());
    command
        .args(args)
        .args(["--blob-service-addr", addr, "--directory-service-addr", addr, "--path-info-service-addr", addr])
        .env_remove("TVIX_STORE_DIR")
        .env_remove("TVIX_STORE_TOKEN_FILE");
    if let Some(file) = token_file {
        command.env("TVIX_STORE_TOKEN_FILE", file);
    }
    command.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A small tree to import: `name/` with a file and an executable.
fn tree(parent: &Path, name: &str, content: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("file"), content).unwrap();
    std::fs::write(dir.join("run"), format!("#!/bin/sh\necho {content}\n")).unwrap();
    std::fs::set_permissions(dir.join("run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Imports `path` into the default store in `store` through its owner socket (as root: every
/// right); returns the store path.
fn import_as_owner(store: &Path, path: &Path) -> String {
    let out = Command::new(bin()).arg("import").arg(path).env("TVIX_STORE_DIR", store).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn dump(addr: &str, store_path: &str) -> Vec<u8> {
    let out = client(addr, None, &["dump", store_path]);
    assert!(out.status.success(), "dump {store_path}: {}", stderr(&out));
    out.stdout
}

/// What `tvix-store path-info` says of `store_path` through `addr` (as `nix path-info --json`:
/// an invalid path has `"valid": false`, a valid one its NAR hash).
fn path_info(addr: &str, store_path: &str) -> serde_json::Value {
    let out = client(addr, None, &["path-info", store_path]);
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    parsed.as_array().and_then(|a| a.first()).cloned().unwrap_or(parsed)
}

fn is_valid(addr: &str, store_path: &str) -> bool {
    let info = path_info(addr, store_path);
    assert!(info.get("narHash").is_some() || info["valid"] == false, "{info}");
    info.get("narHash").is_some()
}

/// A token file for `token`, and its tokens-file line with `rights` under `name`.
fn token(dir: &Path, name: &str, rights: &str, token: &str) -> (PathBuf, String) {
    let file = dir.join(format!("{name}.token"));
    std::fs::write(&file, token).unwrap();
    let hash = data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(token.as_bytes()));
    (file, format!("{name} {rights} {hash}\n"))
}

/// A raw PathInfo Put through the daemon at `addr`, with `token` if given.
async fn put_raw(addr: &str, token: Option<&str>, info: proto::PathInfo) -> Result<proto::PathInfo, tonic::Status> {
    let channel = tvix_store::compose::channel(addr).unwrap();
    let mut request = tonic::Request::new(info);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    PathInfoServiceClient::new(channel).put(request).await.map(tonic::Response::into_inner)
}

/// The PathInfo of `store_path` through `addr`, as the wire has it.
async fn get_raw(addr: &str, store_path: &str) -> proto::PathInfo {
    let digest = tvix_store::storepath::StorePath::parse(store_path).unwrap();
    let channel = tvix_store::compose::channel(addr).unwrap();
    let request = proto::GetPathInfoRequest {
        by_what: Some(proto::get_path_info_request::ByWhat::ByOutputHash(digest.digest().to_vec().into())),
    };
    PathInfoServiceClient::new(channel).get(request).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_tcp_clients_read_but_can_neither_add_nor_replace() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let good = import_as_owner(&store, &tree(tmp.path(), "good", "original"));
    let evil_tree = tree(tmp.path(), "evil", "replaced");
    let daemon = Daemon::start(&store, &[]);
    let before = dump(&daemon.tcp_url(), &good);

    // Reading is what anonymous TCP clients may do.
    assert!(is_valid(&daemon.tcp_url(), &good));
    // Adding a path: refused at the first blob.
    let out = client(&daemon.tcp_url(), None, &["import", evil_tree.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("lacks the write right"), "{}", stderr(&out));
    // Replacing the existing path's root with a root the store has (the original's own
    // PathInfo, pointed at another tree's root): refused before any service looks at it.
    let mut replaced = get_raw(&daemon.tcp_url(), &good).await;
    let other = import_as_owner(&store, &evil_tree);
    let evil_root = get_raw(&daemon.tcp_url(), &other).await.node;
    let mut node = evil_root.clone().unwrap();
    rename_root(&mut node, &good);
    replaced.node = Some(node);
    let refused = put_raw(&daemon.tcp_url(), None, replaced).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // What is served afterwards is what was there.
    assert_eq!(dump(&daemon.tcp_url(), &good), before, "an anonymous client changed what the store serves");
}

/// Gives the root node of a PathInfo the name of `store_path` (its basename).
fn rename_root(node: &mut tvix_store::proto::castore::Node, store_path: &str) {
    use tvix_store::proto::castore::node::Node as N;
    let basename = store_path.trim_start_matches("/nix/store/").as_bytes().to_vec();
    match node.node.as_mut().unwrap() {
        N::Directory(d) => d.name = basename.into(),
        N::File(f) => f.name = basename.into(),
        N::Symlink(s) => s.name = basename.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_token_adds_only_what_is_claimed_and_only_admin_replaces() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let good = import_as_owner(&store, &tree(tmp.path(), "good", "original"));
    let (push_file, push_line) = token(tmp.path(), "push", "read,write", "push-secret");
    let (_, ops_line) = token(tmp.path(), "ops", "all", "ops-secret");
    let tokens = tmp.path().join("tokens");
    std::fs::write(&tokens, format!("{push_line}{ops_line}")).unwrap();
    let daemon = Daemon::start(&store, &["--tokens-file", tokens.to_str().unwrap()]);
    let addr = daemon.tcp_url();
    let before = dump(&addr, &good);

    // A write token adds a new path through the daemon (its NAR checked there).
    let added_tree = tree(tmp.path(), "added", "new");
    let out = client(&addr, Some(&push_file), &["import", added_tree.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let added = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(is_valid(&addr, &added));

    // An unknown token: refused whatever it asks for.
    let unknown = put_raw(&addr, Some("guessed"), get_raw(&addr, &added).await).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::Unauthenticated, "{unknown:?}");

    // A PathInfo whose root the store does not have.
    let mut missing_root = get_raw(&addr, &added).await;
    let fake = "/nix/store/00000000000000000000000000000000-missing-root";
    match missing_root.node.as_mut().and_then(|n| n.node.as_mut()) {
        Some(tvix_store::proto::castore::node::Node::Directory(d)) => d.digest = vec![7u8; 32].into(),
        other => panic!("{other:?}"),
    }
    rename_root(missing_root.node.as_mut().unwrap(), fake);
    let refused = put_raw(&addr, Some("push-secret"), missing_root).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(!is_valid(&addr, fake), "a PathInfo without its contents was stored");

    // A PathInfo claiming a NAR hash its contents do not have (a signing oracle's input).
    let mut false_hash = get_raw(&addr, &added).await;
    let lie = "/nix/store/11111111111111111111111111111111-false-hash";
    rename_root(false_hash.node.as_mut().unwrap(), lie);
    false_hash.narinfo.as_mut().unwrap().nar_sha256 = vec![9u8; 32].into();
    let refused = put_raw(&addr, Some("push-secret"), false_hash).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("claims NAR hash"), "{refused:?}");
    assert!(!is_valid(&addr, lie), "a PathInfo with a false NAR hash was stored");

    // The write token may not give an existing path other contents.
    let mut replaced = get_raw(&addr, &good).await;
    let mut other_root = get_raw(&addr, &added).await.node.unwrap();
    rename_root(&mut other_root, &good);
    replaced.node = Some(other_root);
    let refused = put_raw(&addr, Some("push-secret"), replaced.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert_eq!(dump(&addr, &good), before, "a write token replaced a path");

    // But it may add a signature to it.
    let mut signed = get_raw(&addr, &good).await;
    signed
        .narinfo
        .as_mut()
        .unwrap()
        .signatures
        .push(proto::nar_info::Signature { name: "test-key-1".into(), data: vec![1u8; 64].into() });
    put_raw(&addr, Some("push-secret"), signed).await.unwrap();
    assert!(path_info(&addr, &good)["signatures"].to_string().contains("test-key-1"));
    assert_eq!(dump(&addr, &good), before);

    // The admin token may replace it (its claims still checked: the NAR hash must match the
    // new contents, so the added path's is taken along).
    // (Without the added path's content address, which names the added path, not this one.)
    replaced.narinfo = get_raw(&addr, &added).await.narinfo.map(|mut n| {
        n.ca = None;
        n
    });
    put_raw(&addr, Some("ops-secret"), replaced).await.unwrap();
    assert_eq!(dump(&addr, &good), dump(&addr, &added), "the admin's replacement is served");
}

#[test]
fn other_users_on_the_unix_socket_may_read_but_not_write() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let good = import_as_owner(&store, &tree(tmp.path(), "good", "original"));
    let evil_tree = tree(tmp.path(), "evil", "other");
    let _daemon = Daemon::start(&store, &[]);
    // Let `nobody` reach the socket and read the tree; the file mode is what lets a user
    // connect at all, the daemon decides what it may do.
    for dir in [tmp.path(), store.as_path(), evil_tree.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(store.join("daemon.sock"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = format!("grpc+unix://{}", store.join("daemon.sock").display());
    let as_nobody = |args: &[&str]| {
        use std::os::unix::process::CommandExt;
        Command::new(bin())
            .args(args)
            .args(["--blob-service-addr", &socket, "--directory-service-addr", &socket])
            .args(["--path-info-service-addr", &socket])
            .env_remove("TVIX_STORE_TOKEN_FILE")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let read = as_nobody(&["path-info", &good]);
    assert!(read.status.success() && String::from_utf8_lossy(&read.stdout).contains("narHash"), "{read:?}");
    let write = as_nobody(&["import", evil_tree.to_str().unwrap()]);
    assert!(!write.status.success());
    assert!(stderr(&write).contains("uid 65534 lacks the write right"), "{}", stderr(&write));
}
