//! A PathInfo with its directory graph in one call (`tvix_store.ext.v1.PathInfoGraphService`,
//! `PathInfoService::get_with_graph` over gRPC) against servers on unix sockets: ours, one that
//! lies in its answers, and a plain tvix-protocol server without the extension; and the mount
//! core's first lookup of a store path, which uses it.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use tvix_store::castore::directoryservice::DirectoryService;
use tvix_store::castore::{B3Digest, Directory, Error, Node, PathComponent};
use tvix_store::fs::{Options, ROOT_INO, StoreFs};
use tvix_store::grpc::{GrpcDirectoryService, GrpcPathInfoService};
use tvix_store::pathinfo::{PathInfo, PathInfoRootNodes, PathInfoService};
use tvix_store::proto::castore::directory_service_server::DirectoryServiceServer;
use tvix_store::proto::ext::PathInfoGraphResponse;
use tvix_store::proto::ext::path_info_graph_response::Item;
use tvix_store::proto::ext::path_info_graph_service_server::{PathInfoGraphService, PathInfoGraphServiceServer};
use tvix_store::proto::store::GetPathInfoRequest;
use tvix_store::proto::store::path_info_service_server::PathInfoServiceServer;
use tvix_store::server::{DirectoryServer, NoNarCalculation, PathInfoGraphServer, PathInfoServer};
use tvix_store::store::Store;
use tvix_store::storepath::StorePath;

use crate::grpc_common::{Calls, call_recorder, count};

const GRAPH_PATH: &str = "/tvix_store.ext.v1.PathInfoGraphService/Get";
const PATH_INFO_PATH: &str = "/tvix.store.v1.PathInfoService/Get";
const DIRECTORY_PATH: &str = "/tvix.castore.v1.DirectoryService/Get";

fn name(s: &str) -> PathComponent {
    PathComponent::try_from(Bytes::from(s.to_string())).unwrap()
}

/// A store path with a directory graph (`top` holding `a/` and `b/`, `a/` holding `deep/`), one
/// whose root is a file, in memory services.
struct Fixture {
    path_info: Arc<dyn PathInfoService>,
    directory: Arc<dyn DirectoryService>,
    tree: PathInfo,
    file: PathInfo,
    /// The tree's directories, as a recursive Get of its root sends them.
    graph: Vec<Directory>,
}

fn info_of(seed: u8, name: &str, node: Node) -> PathInfo {
    PathInfo {
        store_path: StorePath::from_parts([seed; 20], name).unwrap(),
        node,
        references: vec![],
        nar_size: 0,
        nar_sha256: [seed; 32],
        signatures: vec![],
        deriver: None,
        ca: None,
    }
}

async fn fixture() -> Fixture {
    let path_info = tvix_store::compose::path_info_service("memory://").unwrap();
    let directory = tvix_store::compose::directory_service("memory://").unwrap();
    let file = Node::file(B3Digest::of(b"content"), 7, false);
    let mut deep = Directory::new();
    deep.add(name("leaf"), file.clone()).unwrap();
    let mut a = Directory::new();
    a.add(name("deep"), Node::directory(deep.digest(), deep.size())).unwrap();
    let mut b = Directory::new();
    b.add(name("file"), file.clone()).unwrap();
    let mut top = Directory::new();
    top.add(name("a"), Node::directory(a.digest(), a.size())).unwrap();
    top.add(name("b"), Node::directory(b.digest(), b.size())).unwrap();
    for d in [&deep, &a, &b, &top] {
        directory.put(d.clone()).await.unwrap();
    }
    let tree = info_of(1, "tree", Node::directory(top.digest(), top.size()));
    let file = info_of(2, "file", file);
    for info in [&tree, &file] {
        path_info.put(info.clone()).await.unwrap();
    }
    let graph = directory.get_recursive(&top.digest()).try_collect().await.unwrap();
    Fixture { path_info, directory, tree, file, graph }
}

/// Which PathInfoGraphService a test server offers.
enum Graph {
    /// None: a plain tvix-protocol server.
    Absent,
    Ours,
    Liar(Box<Liar>),
}

/// Serves the fixture's services over the tvix protocol, plus `graph`, on a unix socket in
/// `dir`, recording the path of every call that reached the server.
async fn serve(dir: &std::path::Path, f: &Fixture, graph: Graph) -> (String, Calls) {
    let socket = dir.join("test.sock");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(tokio::net::UnixListener::bind(&socket).unwrap());
    let calls: Calls = Arc::default();
    let recorder = call_recorder(&calls);
    let (ours, liar) = match graph {
        Graph::Absent => (None, None),
        Graph::Ours => (
            Some(PathInfoGraphServiceServer::new(PathInfoGraphServer::new(f.path_info.clone(), f.directory.clone()))),
            None,
        ),
        Graph::Liar(liar) => (None, Some(PathInfoGraphServiceServer::new(*liar))),
    };
    let router = tonic::transport::Server::builder()
        .layer(recorder)
        .add_service(PathInfoServiceServer::new(PathInfoServer::new(
            Store { path_info: f.path_info.clone(), directory: f.directory.clone(), ..Store::in_memory() },
            Arc::new(NoNarCalculation),
        )))
        .add_service(DirectoryServiceServer::new(DirectoryServer::new(f.directory.clone())))
        .add_optional_service(ours)
        .add_optional_service(liar);
    tokio::spawn(router.serve_with_incoming(incoming));
    (format!("grpc+unix://{}", socket.display()), calls)
}

fn client_of(addr: &str) -> GrpcPathInfoService {
    GrpcPathInfoService::new(tvix_store::compose::channel(addr).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_path_and_its_whole_graph_come_in_one_call() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let (addr, calls) = serve(tmp.path(), &f, Graph::Ours).await;
    let client = client_of(&addr);

    let found = client.get_with_graph(*f.tree.store_path.digest()).await.unwrap().expect("the tree is stored");
    assert_eq!(found.info, f.tree);
    let graph: Vec<Directory> = found.graph.expect("a graph along").try_collect().await.unwrap();
    assert_eq!(graph, f.graph);
    assert_eq!(client.has_graph_call(), Some(true));
    assert_eq!((count(&calls, GRAPH_PATH), count(&calls, PATH_INFO_PATH), count(&calls, DIRECTORY_PATH)), (1, 0, 0));

    // A store path that is a file has no graph; an unknown one is None, not an error.
    let file = client.get_with_graph(*f.file.store_path.digest()).await.unwrap().unwrap();
    assert_eq!(file.info, f.file);
    assert!(file.graph.is_none());
    assert!(client.get_with_graph([9; 20]).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tvix_server_without_it_is_asked_for_the_pathinfo_alone_and_remembered() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let (addr, calls) = serve(tmp.path(), &f, Graph::Absent).await;
    let client = client_of(&addr);
    for round in 1..=2 {
        let found = client.get_with_graph(*f.tree.store_path.digest()).await.unwrap().unwrap();
        assert_eq!(found.info, f.tree);
        assert!(found.graph.is_none());
        // The first call found out (UNIMPLEMENTED); the second went straight to the tvix Get.
        assert_eq!((count(&calls, GRAPH_PATH), count(&calls, PATH_INFO_PATH)), (1, round));
    }
    assert_eq!(client.has_graph_call(), Some(false));

    // A client held to the tvix protocol never asks, even a server that has the extension.
    let ours = tempfile::tempdir().unwrap();
    let (addr, calls) = serve(ours.path(), &f, Graph::Ours).await;
    let plain = client_of(&addr).plain_protocol();
    assert_eq!(plain.get_with_graph(*f.tree.store_path.digest()).await.unwrap().unwrap().info, f.tree);
    assert_eq!((count(&calls, GRAPH_PATH), count(&calls, PATH_INFO_PATH)), (0, 1));
}

/// What a lying server answers for the tree's store path.
#[derive(Clone, Copy)]
enum Lie {
    /// The file's PathInfo instead of the tree's.
    OtherPathInfo,
    /// A directory first, no PathInfo.
    NoPathInfo,
    /// The PathInfo, then a directory below the root before the root.
    NotRootFirst,
    /// The PathInfo, then the root, then a directory nothing sent refers to.
    Unrelated,
    /// The PathInfo and the root, then the stream ends: `a/` and `b/` are missing.
    Truncated,
}

struct Liar {
    lie: Lie,
    tree: PathInfo,
    file: PathInfo,
    graph: Vec<Directory>,
}

#[tonic::async_trait]
impl PathInfoGraphService for Liar {
    type GetStream = Pin<Box<dyn Stream<Item = Result<PathInfoGraphResponse, tonic::Status>> + Send>>;

    async fn get(
        &self,
        _: tonic::Request<GetPathInfoRequest>,
    ) -> Result<tonic::Response<Self::GetStream>, tonic::Status> {
        let info = |i: &PathInfo| PathInfoGraphResponse { item: Some(Item::PathInfo(i.to_proto())) };
        let dir = |d: &Directory| PathInfoGraphResponse { item: Some(Item::Directory(d.to_proto())) };
        let g = &self.graph;
        let unrelated = Directory::new();
        let messages = match self.lie {
            Lie::OtherPathInfo => vec![info(&self.file)],
            Lie::NoPathInfo => vec![dir(&g[0])],
            Lie::NotRootFirst => vec![info(&self.tree), dir(&g[1]), dir(&g[0])],
            Lie::Unrelated => vec![info(&self.tree), dir(&g[0]), dir(&unrelated)],
            Lie::Truncated => vec![info(&self.tree), dir(&g[0])],
        };
        Ok(tonic::Response::new(Box::pin(futures::stream::iter(messages.into_iter().map(Ok)))))
    }
}

fn liar(f: &Fixture, lie: Lie) -> Box<Liar> {
    Box::new(Liar { lie, tree: f.tree.clone(), file: f.file.clone(), graph: f.graph.clone() })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lying_server_is_refused_naming_what_it_sent() {
    let f = fixture().await;
    let digest = *f.tree.store_path.digest();
    for (lie, words) in [
        (Lie::OtherPathInfo, "server sent /nix/store/"),
        (Lie::NoPathInfo, "first message of a PathInfo graph is no PathInfo"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (addr, _) = serve(tmp.path(), &f, Graph::Liar(liar(&f, lie))).await;
        let err = client_of(&addr).get_with_graph(digest).await.err().expect("a lie must fail the call");
        assert!(matches!(err, Error::Corrupt(_)) && err.to_string().contains(words), "{err}");
    }
    let root = f.graph[0].digest();
    for (lie, delivered, words) in [
        (Lie::NotRootFirst, 0, "which no directory sent before it refers to"),
        (Lie::Unrelated, 1, "which no directory sent before it refers to"),
        (Lie::Truncated, 1, "the server did not send it"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (addr, _) = serve(tmp.path(), &f, Graph::Liar(liar(&f, lie))).await;
        let found = client_of(&addr).get_with_graph(digest).await.unwrap().unwrap();
        assert_eq!(found.info, f.tree);
        let mut graph = found.graph.unwrap();
        let mut got = Vec::new();
        let err = loop {
            match graph.try_next().await {
                Ok(Some(d)) => got.push(d.digest()),
                Ok(None) => panic!("{:?}: the broken graph ended without an error", lie as u8),
                Err(e) => break e,
            }
        };
        // Only checked directories came out before the error: the root, when it came first.
        assert_eq!(got, vec![root; delivered]);
        assert!(err.to_string().contains(words), "{err}");
    }
}

/// The mount core's first lookup of a store path: one call with our daemon (no DirectoryService
/// call for the walk after it), and a broken graph sent along is not used: the directories are
/// then fetched with the DirectoryService and the walk sees the right tree.
#[test]
fn the_mounts_first_lookup_of_a_store_path_brings_its_graph() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let f = runtime.block_on(fixture());
    // Channels spawn their connection task on the runtime they are made in.
    let _in_runtime = runtime.enter();
    for (graph, graph_calls, directory_calls) in
        [(Graph::Ours, 1, 0), (Graph::Liar(liar(&f, Lie::NotRootFirst)), 1, 1), (Graph::Absent, 1, 1)]
    {
        let tmp = tempfile::tempdir().unwrap();
        let (addr, calls) = runtime.block_on(serve(tmp.path(), &f, graph));
        let channel = tvix_store::compose::channel(&addr).unwrap();
        let fs = StoreFs::new(
            tvix_store::compose::blob_service("memory://").unwrap(),
            Arc::new(GrpcDirectoryService::new(channel.clone())),
            Arc::new(PathInfoRootNodes::new(Arc::new(GrpcPathInfoService::new(channel)))),
            runtime.handle().clone(),
            Options::default(),
        );
        let top = fs.lookup(ROOT_INO, f.tree.store_path.to_basename().as_bytes()).unwrap();
        let deep = fs.lookup(fs.lookup(top.ino, b"a").unwrap().ino, b"deep").unwrap();
        assert!(fs.lookup(deep.ino, b"leaf").is_ok());
        assert!(fs.lookup(fs.lookup(top.ino, b"b").unwrap().ino, b"file").is_ok());
        assert_eq!((count(&calls, GRAPH_PATH), count(&calls, DIRECTORY_PATH)), (graph_calls, directory_calls));
    }
}
