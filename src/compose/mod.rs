//! Building the store's services: the only module that knows store URL schemes and the
//! composition file, and the only one that imports every backend (redb, gRPC, object stores).
//!
//! A command's services come from flags (one store URL each), a composition file
//! (`--store-config`, see [`config`]), or the embedded default store ([`defaultstore`]). Each is
//! turned into a [`Graph`] and checked whole before anything is opened; then the services are
//! built in order blob → directory → path-info, and each builder gets the services already built
//! (a path-info source that ingests NARs needs somewhere to put blobs and directories).

mod awsprofile;
pub mod config;
pub mod defaultstore;
mod graph;
mod objectstore;
pub mod url;

use std::path::PathBuf;
use std::sync::Arc;

pub use graph::{Combinators, Entry, Graph, ROOT};
pub use url::Leaf;

use crate::castore::CacheWrites;
use crate::castore::blobservice::{
    BlobService, CacheBlobService, ChunkStore, ChunkedBlobService, LocalChunkStore, MemoryChunkStore,
    ObjectStoreChunkStore,
};
use crate::castore::directoryservice::{
    CacheDirectoryService, DirectoryService, DirectoryStore, MemoryDirectoryStore, ObjectStoreDirectoryStore,
    StoredDirectoryService,
};
use crate::castore::diskcache::{
    DEFAULT_SIZE, DiskCache, DiskCacheBlobService, DiskCacheDirectoryService, DiskCacheError,
};
use crate::grpc::{GrpcBlobService, GrpcDirectoryService, GrpcPathInfoService, GrpcTarget};
use crate::maintenance::Backends;
use crate::narinfo::{SigningKey, SigningPathInfoService};
use crate::pathinfo::{
    CachePathInfoService, DiskCachePathInfoService, MemoryPathInfoService, ObjectStorePathInfoService, PathInfoRemoval,
    PathInfoService,
};
use crate::store::Store;
use crate::substitute::{BinaryCache, SubstituteStats, Substituters, Transport};
use defaultstore::{DefaultStoreError, StoreLock};

/// Which of the three services something is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// BlobService.
    Blob,
    /// DirectoryService.
    Directory,
    /// PathInfoService.
    PathInfo,
}

impl Kind {
    /// The service's name in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Blob => "blob",
            Kind::Directory => "directory",
            Kind::PathInfo => "path-info",
        }
    }
}

/// Why the services could not be set up. Every message is one line naming the flag, file entry
/// or URL at fault.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// A store URL that is malformed or names a scheme the service does not take.
    #[error("{entry}: invalid store URL {url:?}: {reason}")]
    Url { entry: String, url: String, reason: String },
    /// A composition entry that is wrong in itself.
    #[error("{entry}: {reason}")]
    Entry { entry: String, reason: String },
    /// Entries that refer to each other in a circle.
    #[error("cycle: {0}")]
    Cycle(String),
    /// The composition file cannot be read.
    #[error("cannot read store config {}: {source}", path.display())]
    ReadConfig { path: PathBuf, source: std::io::Error },
    /// A flag and the composition file both set one service.
    #[error("{flag} and [{table}] in --store-config both set the {noun} service; give one of them")]
    Conflict { flag: &'static str, table: &'static str, noun: &'static str },
    /// A backend that could not be opened.
    #[error("{entry}: cannot open {url}: {reason}")]
    Open { entry: String, url: String, reason: String },
    /// The embedded default store.
    #[error(transparent)]
    DefaultStore(#[from] DefaultStoreError),
    /// The disk cache of `--cache-dir` cannot be used.
    #[error("--cache-dir: {0}")]
    DiskCache(#[from] DiskCacheError),
}

/// Where a command's services come from, as given on its command line.
#[derive(Debug, Clone, Default)]
pub struct StoreArgs {
    /// `--blob-service-addr`.
    pub blob: Option<String>,
    /// `--directory-service-addr`.
    pub directory: Option<String>,
    /// `--path-info-service-addr`.
    pub path_info: Option<String>,
    /// `--store-config`.
    pub config: Option<PathBuf>,
    /// `--substituter`: binary caches (as Nix names them) to fetch unknown paths from, in order.
    pub substituters: Vec<String>,
    /// `--trusted-public-key`: keys of which one must have signed what a substituter sends.
    pub trusted_public_keys: Vec<String>,
    /// `--cache-dir`: a disk cache in front of the blob and directory services.
    pub cache_dir: Option<PathBuf>,
    /// `--cache-size`: the disk cache's bound in bytes ([`DEFAULT_SIZE`] if not given).
    pub cache_size: Option<u64>,
}

/// How a command uses the embedded default store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The daemon: owns the store's files for its lifetime (waiting for the lock), and serves
    /// them on the store's socket.
    Owner,
    /// Every other command: talks to the owner if one runs, else opens the files itself. A
    /// long-running one (mount, virtiofs) then serves them to others while it holds them.
    Client,
}

/// A store as a command opened it: the [`Store`] its consumers work on, and what this process
/// holds besides.
pub struct Opened {
    /// The store's services.
    pub store: Store,
    /// Held while this process has the default store's files open.
    pub store_lock: Option<StoreLock>,
    /// What the binary caches among these services fetched and stored (zero without any).
    pub substitute_stats: Arc<SubstituteStats>,
    /// Where `delete` and garbage collection can run on this store.
    pub maintenance: Maintenance,
}

/// Where a store's `delete` and garbage collection run: they remove from the backends
/// themselves, which only the process holding them can do.
#[derive(Clone)]
pub enum Maintenance {
    /// This process holds the backends.
    Local(Backends),
    /// The store is a daemon's (or the default store's owner's), reached at this address: the
    /// operations run there, through its admin service.
    Remote(GrpcTarget),
    /// Neither; the reason, for the message.
    Unsupported(String),
}

impl Maintenance {
    /// The backends, where this process holds them.
    pub fn local_backends(&self) -> Option<Backends> {
        match self {
            Maintenance::Local(backends) => Some(backends.clone()),
            Maintenance::Remote(_) | Maintenance::Unsupported(_) => None,
        }
    }
}

/// The checked graphs of the three services (`None` where the default store fills in), and the
/// substituters.
struct Plan {
    blob: Option<Graph>,
    directory: Option<Graph>,
    path_info: Option<Graph>,
    substituters: Vec<(String, url::BinaryCacheSpec)>,
    /// `--cache-dir` and its bound: a disk cache in front of the blob, directory and path-info
    /// services.
    disk_cache: Option<(PathBuf, u64)>,
}

impl Plan {
    /// Parses and checks every flag and the composition file; opens nothing.
    fn from_args(args: &StoreArgs) -> Result<Self, ComposeError> {
        if args.cache_size.is_some() && args.cache_dir.is_none() {
            return Err(ComposeError::Entry {
                entry: "--cache-size".into(),
                reason: "bounds the disk cache of --cache-dir, which is not given".into(),
            });
        }
        let composition = match &args.config {
            Some(path) => config::load(path)?,
            None => config::Composition::default(),
        };
        let substituters =
            args.substituters
                .iter()
                .map(|addr| {
                    let entry = format!("--substituter {addr}");
                    let spec = url::binary_cache(addr, &args.trusted_public_keys)
                        .map_err(|reason| ComposeError::Url { entry: entry.clone(), url: addr.clone(), reason })?;
                    Ok((entry, spec))
                })
                .collect::<Result<_, ComposeError>>()?;
        Ok(Self {
            blob: pick(Kind::Blob, "--blob-service-addr", "blobservices", &args.blob, composition.blob)?,
            directory: pick(
                Kind::Directory,
                "--directory-service-addr",
                "directoryservices",
                &args.directory,
                composition.directory,
            )?,
            path_info: pick(
                Kind::PathInfo,
                "--path-info-service-addr",
                "pathinfoservices",
                &args.path_info,
                composition.path_info,
            )?,
            substituters,
            disk_cache: args.cache_dir.clone().map(|dir| (dir, args.cache_size.unwrap_or(DEFAULT_SIZE))),
        })
    }
}

/// One service's graph: from its flag, or from its table in the composition file (not both).
fn pick(
    kind: Kind,
    flag: &'static str,
    table: &'static str,
    given: &Option<String>,
    file: Option<Graph>,
) -> Result<Option<Graph>, ComposeError> {
    match (given, file) {
        (Some(_), Some(_)) => Err(ComposeError::Conflict { flag, table, noun: kind.noun() }),
        (Some(addr), None) => Graph::single(kind, flag, addr).map(Some),
        (None, file) => Ok(file),
    }
}

/// Opens the services `args` name; what they leave out comes from the embedded default store.
pub async fn open(args: &StoreArgs, role: Role) -> Result<Opened, ComposeError> {
    let mut plan = Plan::from_args(args)?;
    let mut store_lock = None;
    if plan.blob.is_none() || plan.directory.is_none() || plan.path_info.is_none() {
        let attached = defaultstore::attach(&defaultstore::store_dir()?, role == Role::Owner).await?;
        let default = |kind: Kind| {
            let (url, leaf) = attached.backend(kind);
            Graph::of_leaf(kind, "the default store", url, leaf)
        };
        plan.blob.get_or_insert_with(|| default(Kind::Blob));
        plan.directory.get_or_insert_with(|| default(Kind::Directory));
        plan.path_info.get_or_insert_with(|| default(Kind::PathInfo));
        store_lock = attached.into_lock();
    }
    build(plan, store_lock).await
}

/// Opens the services of three graphs (each checked), as [`open`] would for flags naming them:
/// no default store, no substituters.
pub async fn open_graphs(blob: Graph, directory: Graph, path_info: Graph) -> Result<Opened, ComposeError> {
    for graph in [&blob, &directory, &path_info] {
        graph.check()?;
    }
    let plan = Plan {
        blob: Some(blob),
        directory: Some(directory),
        path_info: Some(path_info),
        substituters: Vec::new(),
        disk_cache: None,
    };
    build(plan, None).await
}

/// Builds the services of a complete plan.
async fn build(plan: Plan, store_lock: Option<StoreLock>) -> Result<Opened, ComposeError> {
    let (Some(blob), Some(directory), Some(path_info)) = (&plan.blob, &plan.directory, &plan.path_info) else {
        unreachable!("every service is planned before building");
    };
    for graph in [blob, directory, path_info] {
        for (entry, url, leaf) in graph.leaves() {
            if let Some(objects) = objectstore::remote(leaf) {
                let open_error =
                    |reason: String| ComposeError::Open { entry: entry.clone(), url: url.to_string(), reason };
                objects.map_err(open_error)?.probe().await.map_err(|e| open_error(e.to_string()))?;
            }
        }
    }
    let mut kept = Kept::default();
    let substitute_stats = Arc::new(SubstituteStats::default());
    let (no_blobs, no_directories) = no_services();
    let nothing_built = Built { blob: &no_blobs, directory: &no_directories, stats: &substitute_stats };
    let mut blob = build_service::<dyn BlobService>(blob, &nothing_built, &mut kept.chunks)?;
    let mut directory = build_service::<dyn DirectoryService>(directory, &nothing_built, &mut kept.directories)?;
    let disk_cache = match &plan.disk_cache {
        Some((dir, size)) => Some(Arc::new(DiskCache::open(dir, *size)?)),
        None => None,
    };
    if let Some(cache) = &disk_cache {
        // One cache, so blobs, directories and PathInfo share one bound.
        blob = Arc::new(DiskCacheBlobService::new(cache.clone(), blob));
        directory = Arc::new(DiskCacheDirectoryService::new(cache.clone(), directory));
    }
    let built = Built { blob: &blob, directory: &directory, stats: &substitute_stats };
    let mut path_info = build_service::<dyn PathInfoService>(path_info, &built, &mut kept.path_infos)?;
    if let Some(cache) = disk_cache {
        path_info = Arc::new(DiskCachePathInfoService::new(cache, path_info));
    }
    let maintenance = maintenance(&plan, kept);
    if let Some(far) = substituters(&plan.substituters, &blob, &directory, &substitute_stats)? {
        // What a substituter sends is kept in the store's own PathInfo service, so the next
        // lookup is local; the caches themselves are never written to.
        path_info = Arc::new(CachePathInfoService::new(path_info, far, CacheWrites::Near));
    }
    Ok(Opened { store: Store::new(blob, directory, path_info), store_lock, substitute_stats, maintenance })
}

/// The backends of services that are each one backend, kept as they are built.
#[derive(Default)]
struct Kept {
    chunks: Option<Arc<dyn ChunkStore>>,
    directories: Option<Arc<dyn DirectoryStore>>,
    path_infos: Option<Arc<dyn PathInfoRemoval>>,
}

/// Where `delete` and garbage collection can run on the services `plan` describes.
fn maintenance(plan: &Plan, kept: Kept) -> Maintenance {
    let roots = [&plan.blob, &plan.directory, &plan.path_info].map(|g| g.as_ref().and_then(Graph::root_leaf));
    if !plan.substituters.is_empty() {
        return Maintenance::Unsupported("the store has substituters: collect garbage without --substituter".into());
    }
    if plan.disk_cache.is_some() {
        return Maintenance::Unsupported("--cache-dir puts a cache in front of the store: run without it".into());
    }
    if let (Some(chunks), Some(directories), Some(path_infos)) = (kept.chunks, kept.directories, kept.path_infos) {
        return Maintenance::Local(Backends { chunks, directories, path_infos });
    }
    match roots {
        [Some(Leaf::Grpc(a) | Leaf::GrpcTvixOnly(a)), Some(Leaf::Grpc(b) | Leaf::GrpcTvixOnly(b)), Some(Leaf::Grpc(c) | Leaf::GrpcTvixOnly(c))]
            if a == b && b == c =>
        {
            Maintenance::Remote(a.clone())
        }
        _ => Maintenance::Unsupported(
            "the blob, directory and path-info services must each be one backend (no cache or signing in between), or all one daemon's address"
                .into(),
        ),
    }
}

/// Config parsing refuses `keyfile-signing` outside path-info services; this is the backstop.
const SIGNS_PATH_INFO_ONLY: &str = "keyfile-signing wraps path-info services only";

/// What a path-info backend may need of the services built before it: a binary cache ingests
/// NARs into the blob and directory services, and counts what it fetched.
struct Built<'a> {
    blob: &'a Arc<dyn BlobService>,
    directory: &'a Arc<dyn DirectoryService>,
    stats: &'a Arc<SubstituteStats>,
}

/// One kind of service as the composition layer builds it: a service from each store URL it
/// takes (with the backend beneath it that maintenance works on, where it has one), and the
/// combinators. [`build_service`] turns any graph of entries into a service of any kind with it.
trait ServiceKind: Send + Sync + 'static {
    /// The backend seam beneath a service of this kind (what `delete` and gc remove from).
    type Backend: ?Sized;

    /// The service `leaf` names, and its backend; an error says why `leaf` is not one.
    fn open(leaf: &Leaf, built: &Built<'_>) -> Result<Backed<Self>, String>;

    /// `near` read first and filled from `far`.
    fn cache(near: Arc<Self>, far: Arc<Self>, writes: CacheWrites) -> Arc<Self>;

    /// `far` read through the disk cache `cache`.
    fn disk_cache(far: Arc<Self>, cache: Arc<DiskCache>) -> Arc<Self>;

    /// `inner` signing what is put into it with the key in `keyfile`.
    fn sign(_inner: Arc<Self>, _keyfile: &std::path::Path) -> Result<Arc<Self>, String> {
        Err(SIGNS_PATH_INFO_ONLY.into())
    }
}

/// A service, and the backend seam beneath it where it has one.
type Backed<T> = (Arc<T>, Option<Arc<<T as ServiceKind>::Backend>>);

/// Builds `graph`'s service, keeping its backend in `kept` when the graph is one backend that
/// has one.
fn build_service<T: ServiceKind + ?Sized>(
    graph: &Graph,
    built: &Built<'_>,
    kept: &mut Option<Arc<T::Backend>>,
) -> Result<Arc<T>, ComposeError> {
    let single = graph.root_leaf().is_some();
    graph.build::<T>(
        &mut |leaf| {
            let (service, backend) = T::open(leaf, built)?;
            if single {
                *kept = backend;
            }
            Ok(service)
        },
        &Combinators {
            cache: &T::cache,
            disk_cache: &|far, dir, size| {
                let cache = DiskCache::open(dir, size).map_err(|e| e.to_string())?;
                Ok(T::disk_cache(far, Arc::new(cache)))
            },
            sign: &T::sign,
        },
    )
}

/// A service that is also its own backend seam.
fn removable<T: ?Sized, B: ?Sized>(service: Arc<T>, backend: Arc<B>) -> (Arc<T>, Option<Arc<B>>) {
    (service, Some(backend))
}

impl ServiceKind for dyn BlobService {
    type Backend = dyn ChunkStore;

    fn open(leaf: &Leaf, _: &Built<'_>) -> Result<Backed<Self>, String> {
        fn chunked<S: ChunkStore>(store: S) -> Backed<dyn BlobService> {
            let service = ChunkedBlobService::new(store);
            let chunks = service.chunk_store();
            (Arc::new(service), Some(chunks))
        }
        Ok(match leaf {
            Leaf::Memory => chunked(MemoryChunkStore::default()),
            Leaf::LocalFiles(dir) => chunked(LocalChunkStore::open(dir).map_err(|e| e.to_string())?),
            Leaf::ObjectStoreMemory => chunked(ObjectStoreChunkStore::in_objects(objectstore::memory())),
            Leaf::S3(_) | Leaf::Cloud(_) => {
                chunked(ObjectStoreChunkStore::in_objects(objectstore::remote(leaf).ok_or("not an object store")??))
            }
            Leaf::Grpc(target) => (Arc::new(GrpcBlobService::new(crate::grpc::channel(target)?)), None),
            Leaf::GrpcTvixOnly(target) => {
                (Arc::new(GrpcBlobService::new(crate::grpc::channel(target)?).plain_protocol()), None)
            }
            Leaf::Redb(_) => return Err("redb does not store blobs".into()),
            Leaf::BinaryCache(_) => return Err("a binary cache is a path-info source only".into()),
        })
    }

    fn cache(near: Arc<Self>, far: Arc<Self>, writes: CacheWrites) -> Arc<Self> {
        Arc::new(CacheBlobService::new(near, far, writes))
    }

    fn disk_cache(far: Arc<Self>, cache: Arc<DiskCache>) -> Arc<Self> {
        Arc::new(DiskCacheBlobService::new(cache, far))
    }
}

impl ServiceKind for dyn DirectoryService {
    type Backend = dyn DirectoryStore;

    fn open(leaf: &Leaf, _: &Built<'_>) -> Result<Backed<Self>, String> {
        fn stored<S: DirectoryStore>(store: S) -> Backed<dyn DirectoryService> {
            let service = StoredDirectoryService::new(store);
            let directories = service.directory_store();
            (Arc::new(service), Some(directories))
        }
        Ok(match leaf {
            Leaf::Memory => stored(MemoryDirectoryStore::default()),
            Leaf::Redb(path) => stored(crate::redb::RedbDirectoryStore::open(path).map_err(|e| e.to_string())?),
            Leaf::Grpc(target) | Leaf::GrpcTvixOnly(target) => {
                (Arc::new(GrpcDirectoryService::new(crate::grpc::channel(target)?)), None)
            }
            Leaf::ObjectStoreMemory => stored(ObjectStoreDirectoryStore::new(&objectstore::memory())),
            Leaf::S3(_) | Leaf::Cloud(_) => {
                stored(ObjectStoreDirectoryStore::new(&objectstore::remote(leaf).ok_or("not an object store")??))
            }
            Leaf::LocalFiles(_) => return Err("this backend stores blobs only".into()),
            Leaf::BinaryCache(_) => return Err("a binary cache is a path-info source only".into()),
        })
    }

    fn cache(near: Arc<Self>, far: Arc<Self>, writes: CacheWrites) -> Arc<Self> {
        Arc::new(CacheDirectoryService::new(near, far, writes))
    }

    fn disk_cache(far: Arc<Self>, cache: Arc<DiskCache>) -> Arc<Self> {
        Arc::new(DiskCacheDirectoryService::new(cache, far))
    }
}

impl ServiceKind for dyn PathInfoService {
    type Backend = dyn PathInfoRemoval;

    fn open(leaf: &Leaf, built: &Built<'_>) -> Result<Backed<Self>, String> {
        Ok(match leaf {
            Leaf::Memory => {
                let service = Arc::new(MemoryPathInfoService::default());
                removable(service.clone(), service)
            }
            Leaf::Redb(path) => {
                let service = Arc::new(crate::redb::RedbPathInfoService::open(path).map_err(|e| e.to_string())?);
                removable(service.clone(), service)
            }
            Leaf::Grpc(target) => (Arc::new(GrpcPathInfoService::new(crate::grpc::channel(target)?)), None),
            Leaf::GrpcTvixOnly(target) => {
                (Arc::new(GrpcPathInfoService::new(crate::grpc::channel(target)?).plain_protocol()), None)
            }
            Leaf::BinaryCache(spec) => (Arc::new(binary_cache(spec, built.blob, built.directory, built.stats)?), None),
            Leaf::ObjectStoreMemory => {
                let service = Arc::new(ObjectStorePathInfoService::new(&objectstore::memory()));
                removable(service.clone(), service)
            }
            Leaf::S3(_) | Leaf::Cloud(_) => {
                let objects = objectstore::remote(leaf).ok_or("not an object store")??;
                let service = Arc::new(ObjectStorePathInfoService::new(&objects));
                removable(service.clone(), service)
            }
            Leaf::LocalFiles(_) => return Err("this backend stores blobs only".into()),
        })
    }

    fn cache(near: Arc<Self>, far: Arc<Self>, writes: CacheWrites) -> Arc<Self> {
        Arc::new(CachePathInfoService::new(near, far, writes))
    }

    fn disk_cache(far: Arc<Self>, cache: Arc<DiskCache>) -> Arc<Self> {
        Arc::new(DiskCachePathInfoService::new(cache, far))
    }

    fn sign(inner: Arc<Self>, keyfile: &std::path::Path) -> Result<Arc<Self>, String> {
        let key = SigningKey::from_file(keyfile).map_err(|e| e.to_string())?;
        Ok(Arc::new(SigningPathInfoService::new(inner, key)))
    }
}

/// Builds a blob service graph.
pub fn build_blob(graph: &Graph) -> Result<Arc<dyn BlobService>, ComposeError> {
    let (blob, directory) = no_services();
    build_service(graph, &Built { blob: &blob, directory: &directory, stats: &Arc::default() }, &mut None)
}

/// Builds a directory service graph.
pub fn build_directory(graph: &Graph) -> Result<Arc<dyn DirectoryService>, ComposeError> {
    let (blob, directory) = no_services();
    build_service(graph, &Built { blob: &blob, directory: &directory, stats: &Arc::default() }, &mut None)
}

/// Builds a path-info service graph. The blob and directory services already built are handed
/// in: a path-info source that substitutes from a binary cache ingests NARs into them.
pub fn build_path_info(
    graph: &Graph,
    blob: &Arc<dyn BlobService>,
    directory: &Arc<dyn DirectoryService>,
) -> Result<Arc<dyn PathInfoService>, ComposeError> {
    build_service(graph, &Built { blob, directory, stats: &Arc::default() }, &mut None)
}

/// Stand-ins for the services a blob or directory graph never uses: only path-info backends
/// look at the services built before them.
fn no_services() -> (Arc<dyn BlobService>, Arc<dyn DirectoryService>) {
    let store = Store::in_memory();
    (store.blob, store.directory)
}

/// A binary cache ingesting into `blob` and `directory`, counting into `stats`.
fn binary_cache(
    spec: &url::BinaryCacheSpec,
    blob: &Arc<dyn BlobService>,
    directory: &Arc<dyn DirectoryService>,
    stats: &Arc<SubstituteStats>,
) -> Result<BinaryCache, String> {
    let options = spec.options()?;
    let transport = match spec.url.scheme() {
        "file" => {
            Transport::File { dir: spec.url.to_file_path().map_err(|()| format!("{} is not a local path", spec.url))? }
        }
        _ => Transport::http(spec.url.clone(), options.timeout)?,
    };
    Ok(BinaryCache::new(transport, options, blob.clone(), directory.clone(), stats.clone()))
}

/// The substituters, in priority order (ties in the order given), each ingesting into `blob` and
/// `directory`; `None` when there are none.
fn substituters(
    specs: &[(String, url::BinaryCacheSpec)],
    blob: &Arc<dyn BlobService>,
    directory: &Arc<dyn DirectoryService>,
    stats: &Arc<SubstituteStats>,
) -> Result<Option<Arc<dyn PathInfoService>>, ComposeError> {
    if specs.is_empty() {
        return Ok(None);
    }
    let mut caches = Vec::new();
    for (entry, spec) in specs {
        let cache = binary_cache(spec, blob, directory, stats).map_err(|reason| ComposeError::Open {
            entry: entry.clone(),
            url: spec.url.to_string(),
            reason,
        })?;
        caches.push(cache);
    }
    caches.sort_by_key(BinaryCache::priority);
    let caches = caches.into_iter().map(|c| Arc::new(c) as Arc<dyn PathInfoService>).collect();
    Ok(Some(Arc::new(Substituters::new(caches))))
}

/// A blob service from one store URL (for tests and tools that take a single address).
pub fn blob_service(addr: &str) -> Result<Arc<dyn BlobService>, ComposeError> {
    build_blob(&Graph::single(Kind::Blob, "blob service", addr)?)
}

/// A directory service from one store URL.
pub fn directory_service(addr: &str) -> Result<Arc<dyn DirectoryService>, ComposeError> {
    build_directory(&Graph::single(Kind::Directory, "directory service", addr)?)
}

/// A path-info service from one store URL.
pub fn path_info_service(addr: &str) -> Result<Arc<dyn PathInfoService>, ComposeError> {
    let (no_blobs, no_directories) = no_services();
    build_path_info(&Graph::single(Kind::PathInfo, "path-info service", addr)?, &no_blobs, &no_directories)
}

/// A gRPC channel to a `grpc+unix://` or `grpc+http://` address (for raw protocol clients).
pub fn channel(addr: &str) -> Result<tonic::transport::Channel, ComposeError> {
    let bad = |reason: String| ComposeError::Url { entry: "gRPC address".into(), url: addr.to_string(), reason };
    let parsed = ::url::Url::parse(addr).map_err(|e| bad(e.to_string()))?;
    let target: GrpcTarget = url::grpc_target(&parsed).map_err(bad)?;
    crate::grpc::single_channel(&target).map_err(|reason| ComposeError::Open {
        entry: "gRPC address".into(),
        url: addr.to_string(),
        reason,
    })
}
