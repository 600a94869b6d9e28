//! Nix binary caches as a PathInfo source (`nix+http://`, `nix+https://`, `nix+file://`): a
//! lookup fetches the path's narinfo, checks it (its store path, and with trusted keys at least
//! one valid signature or, as in Nix 2.8, a CA that gives the path), downloads and decompresses
//! the NAR as it streams, ingests it into the blob and directory services while checking
//! FileHash/FileSize, NarHash/NarSize and the CA, and only then answers with the PathInfo.
//! Stacked under a cache combinator (near = a local PathInfo service), the next lookup of the
//! path is local.
//!
//! What a lookup answers when something is wrong (the mount turns `None` into ENOENT and an
//! error into EIO):
//! - not in the cache (404/403/410), or neither signed by a trusted key nor content-addressed:
//!   `None`, remembered for the negative TTL; the log says why for a signature;
//! - a narinfo that is malformed or names another path, a NAR that is missing, not a NAR, or
//!   disagrees with the narinfo or its CA, a failed download: an error naming the store path
//!   and what disagreed. Nothing is remembered: the next lookup tries again. Blobs and
//!   directories already ingested stay behind unreferenced (for gc); no PathInfo refers to
//!   them.
//!
//! Concurrent lookups of one path share one download, which runs as a task of its own, so a
//! caller that gives up (a mount's call timeout) does not cancel it: the next lookup finds it
//! done or joins it.

mod stats;
pub mod transport;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use futures::stream::BoxStream;
use tokio::io::{AsyncReadExt, BufReader};

pub use stats::SubstituteStats;
pub use transport::{FetchError, Location, Outside, Transport};

use crate::castore::blobservice::BlobService;
use crate::castore::directoryservice::DirectoryService;
use crate::castore::{Error, Node};
use crate::import::ingest_nar;
use crate::nar::HashingReader;
use crate::narinfo::{NarInfo, TrustedKeys, decompressor, format_sha256};
use crate::pathinfo::{CaKind, PathInfo, PathInfoService};
use crate::storepath::{DIGEST_LEN, STORE_DIR, StorePath, nixbase32};

/// Largest narinfo read from a binary cache, in bytes (1 MiB). Nix's own are a few hundred
/// bytes to a few KB (a path with many references and signatures); a cache that sends more is
/// refused as soon as this much has come in, so an endless narinfo costs no more memory than
/// this. Not a flag: no narinfo Nix writes comes near it.
pub const MAX_NARINFO_SIZE: u64 = 1 << 20;

/// How a binary cache is used.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Keys of which at least one must have signed a narinfo; `None`: signatures not checked.
    pub trusted_keys: Option<TrustedKeys>,
    /// Order among several caches, lowest first (Nix's `Priority`).
    pub priority: u32,
    /// A request that makes no progress for this long fails (and is retried).
    pub timeout: Duration,
    /// How long "not in this cache" is remembered.
    pub negative_ttl: Duration,
    /// Whether a narinfo's `URL:` may be absolute (a scheme, or a leading `/`) and point
    /// outside the cache, as Nix allows; off by default, so a cache cannot make us fetch from
    /// another server (or a local port).
    pub allow_absolute_urls: bool,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            trusted_keys: None,
            priority: 50,
            timeout: Duration::from_secs(30),
            // Short: a path pushed to the cache after a miss shows up within a minute.
            negative_ttl: Duration::from_secs(60),
            allow_absolute_urls: false,
        }
    }
}

/// One Nix binary cache as a read-only PathInfo source.
pub struct BinaryCache {
    inner: Arc<Inner>,
}

type Lookup = Shared<BoxFuture<'static, Result<Option<PathInfo>, Error>>>;

struct Inner {
    transport: Transport,
    options: CacheOptions,
    /// The store's blob service, counting what is new to it into `stats`.
    blob: Arc<dyn BlobService>,
    directory: Arc<dyn DirectoryService>,
    stats: Arc<SubstituteStats>,
    /// Misses, with when they were seen.
    misses: parking_lot::Mutex<HashMap<[u8; DIGEST_LEN], Instant>>,
    /// Lookups under way, shared by every caller asking for the same path.
    in_flight: parking_lot::Mutex<HashMap<[u8; DIGEST_LEN], Lookup>>,
    /// NARs ingested by this process, by NarHash: a second path with the same NAR (or the same
    /// path looked up again before its PathInfo was kept) is not downloaded again.
    ingested: parking_lot::Mutex<HashMap<[u8; 32], Node>>,
}

impl BinaryCache {
    /// A cache fetched through `transport`, ingesting into `blob` and `directory`, counting
    /// into `stats` (which several caches may share).
    pub fn new(
        transport: Transport,
        options: CacheOptions,
        blob: Arc<dyn BlobService>,
        directory: Arc<dyn DirectoryService>,
        stats: Arc<SubstituteStats>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                transport,
                options,
                blob: Arc::new(stats::CountingBlobs::new(blob, stats.clone())),
                directory,
                stats,
                misses: Default::default(),
                in_flight: Default::default(),
                ingested: Default::default(),
            }),
        }
    }

    /// Its priority (lower is tried first).
    pub fn priority(&self) -> u32 {
        self.inner.options.priority
    }
}

#[async_trait]
impl PathInfoService for BinaryCache {
    async fn get(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfo>, Error> {
        {
            let mut misses = self.inner.misses.lock();
            match misses.get(&digest) {
                Some(seen) if seen.elapsed() < self.inner.options.negative_ttl => return Ok(None),
                Some(_) => {
                    misses.remove(&digest);
                }
                None => {}
            }
        }
        let lookup = {
            let mut in_flight = self.inner.in_flight.lock();
            match in_flight.get(&digest) {
                Some(lookup) => lookup.clone(),
                None => {
                    let inner = self.inner.clone();
                    let task = tokio::spawn(async move {
                        let result = inner.lookup(digest).await;
                        inner.in_flight.lock().remove(&digest);
                        result
                    });
                    let lookup = async move {
                        task.await.unwrap_or_else(|e| Err(Error::Storage(format!("substitution task failed: {e}"))))
                    }
                    .boxed()
                    .shared();
                    in_flight.insert(digest, lookup.clone());
                    lookup
                }
            }
        };
        lookup.await
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        Err(Error::InvalidRequest(format!(
            "binary cache {} is read-only; cannot store {}",
            self.inner.transport.describe(""),
            info.store_path
        )))
    }

    fn list(&self) -> BoxStream<'_, Result<PathInfo, Error>> {
        // A binary cache has no index of its paths.
        Box::pin(futures::stream::empty())
    }
}

impl Inner {
    async fn lookup(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfo>, Error> {
        let hash = nixbase32::encode(&digest);
        let name = format!("{hash}.narinfo");
        let where_ = self.transport.describe(&name);
        // Only the hash is known before the narinfo is in: it names the path in errors.
        let fetching = |e: FetchError| fetch_error(format!("{STORE_DIR}/{hash}: fetching its narinfo"), e);
        let location = self.transport.locate(&name, false).map_err(fetching)?;
        let Some(text) = self.transport.get(&location, MAX_NARINFO_SIZE).await.map_err(fetching)? else {
            self.misses.lock().insert(digest, Instant::now());
            return Ok(None);
        };
        self.stats.add_downloaded(text.len());
        let narinfo = NarInfo::parse_bytes(&text).map_err(|e| Error::Corrupt(format!("{where_}: {e}")))?;
        if *narinfo.store_path.digest() != digest {
            return Err(Error::Corrupt(format!("{where_}: names another store path, {}", narinfo.store_path)));
        }
        let store_path = narinfo.store_path.clone();
        let refuse = |why: &dyn std::fmt::Display| {
            tracing::warn!(path = %store_path, cache = %where_, "not substituting: {why}");
            self.misses.lock().insert(digest, Instant::now());
            Ok(None)
        };
        // Trusted for a signature or for its CA alone: either way the contents are checked
        // against the CA below, so a CA-trusted path is only what its CA says.
        if let Some(Err(why)) = self.options.trusted_keys.as_ref().map(|keys| keys.check(&narinfo)) {
            return refuse(&why);
        }
        let known = self.ingested.lock().get(&narinfo.nar_hash).cloned();
        let node = match known {
            Some(node) => node,
            None => {
                let node = self.fetch_nar(&narinfo).await?;
                self.ingested.lock().insert(narinfo.nar_hash, node.clone());
                node
            }
        };
        self.check_content_address(&narinfo, &node).await?;
        let info = narinfo.to_path_info(node).map_err(|e| Error::Corrupt(format!("{where_}: {e}")))?;
        tracing::info!(path = %store_path, "substituted from {}", self.transport.describe(""));
        Ok(Some(info))
    }

    /// Downloads, decompresses and ingests the NAR, checking it against the narinfo.
    async fn fetch_nar(&self, narinfo: &NarInfo) -> Result<Node, Error> {
        let path = &narinfo.store_path;
        let fetching = |e: FetchError| fetch_error(format!("{path}: fetching its NAR"), e);
        let location = self.transport.locate(&narinfo.url, self.options.allow_absolute_urls).map_err(fetching)?;
        let url = location.to_string();
        let body = self
            .transport
            .open(&location)
            .await
            .map_err(fetching)?
            .ok_or_else(|| Error::NotFound(format!("{path}: its NAR {url} is not in the cache")))?;
        let stats = self.stats.clone();
        let body: transport::Body = Box::pin(futures::StreamExt::inspect(body, move |chunk| {
            if let Ok(bytes) = chunk {
                stats.add_downloaded(bytes.len());
            }
        }));
        let mut compressed = HashingReader::new(transport::reader(body));
        let ingested = {
            let source = BufReader::new(&mut compressed);
            // Never more than the narinfo promises: a cache sending an endless NAR is cut off
            // (and the NAR then fails as truncated).
            let limit = narinfo.nar_size.saturating_add(1);
            let nar = decompressor(&narinfo.compression, source).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "{path}: NAR {url} is compressed with {:?}, which tvix-store cannot decompress",
                    narinfo.compression.as_str()
                ))
            })?;
            let nar = nar.take(limit);
            ingest_nar(self.blob.clone(), self.directory.clone(), nar, None)
                .await
                .map_err(|e| Error::Corrupt(format!("{path}: NAR {url}: {e}")))?
        };
        // What the decompressor left unread still counts for FileSize and FileHash.
        let rest = narinfo.file_size.map_or(1 << 20, |size| size.saturating_sub(compressed.size()).saturating_add(1));
        tokio::io::copy(&mut (&mut compressed).take(rest), &mut tokio::io::sink())
            .await
            .map_err(|e| Error::Unavailable(format!("{path}: NAR {url}: {e}")))?;
        let disagrees = |what: &str, narinfo_says: String, got: String| {
            Error::Corrupt(format!("{path}: {what} disagrees: the narinfo says {narinfo_says}, {url} has {got}"))
        };
        if let Some(size) = narinfo.file_size
            && size != compressed.size()
        {
            return Err(disagrees("FileSize", size.to_string(), compressed.size().to_string()));
        }
        if let Some(hash) = narinfo.file_hash
            && hash != compressed.sha256()
        {
            return Err(disagrees("FileHash", format_sha256(&hash), format_sha256(&compressed.sha256())));
        }
        if ingested.nar_size != narinfo.nar_size {
            return Err(disagrees("NarSize", narinfo.nar_size.to_string(), ingested.nar_size.to_string()));
        }
        if ingested.nar_sha256 != narinfo.nar_hash {
            return Err(disagrees("NarHash", format_sha256(&narinfo.nar_hash), format_sha256(&ingested.nar_sha256)));
        }
        Ok(ingested.node)
    }

    /// Checks a path's contents against its narinfo's CA, as Nix does when it adds a path
    /// with one (`ca hash mismatch`): for a recursive CA the hash of the NAR, for a flat or
    /// text CA that of the one file, with the CA's own algorithm (SHA-1 and MD5 included:
    /// Nix 2.8 trusts `fixed:sha1` and `fixed:md5` paths without a signature too).
    async fn check_content_address(&self, narinfo: &NarInfo, node: &Node) -> Result<(), Error> {
        let Some(ca) = &narinfo.ca else {
            return Ok(());
        };
        let path = &narinfo.store_path;
        let got: Vec<u8> = match ca.kind {
            CaKind::NarSha256 => narinfo.nar_hash.to_vec(),
            CaKind::NarSha512 => self.nar_hash::<sha2::Sha512>(path, node).await?,
            CaKind::NarSha1 => self.nar_hash::<sha1::Sha1>(path, node).await?,
            CaKind::NarMd5 => self.nar_hash::<md5::Md5>(path, node).await?,
            CaKind::FlatSha256 | CaKind::TextSha256 => self.file_hash::<sha2::Sha256>(path, node).await?,
            CaKind::FlatSha512 => self.file_hash::<sha2::Sha512>(path, node).await?,
            CaKind::FlatSha1 => self.file_hash::<sha1::Sha1>(path, node).await?,
            CaKind::FlatMd5 => self.file_hash::<md5::Md5>(path, node).await?,
        };
        if got[..] != ca.digest[..] {
            return Err(Error::Corrupt(format!(
                "{path}: its content address {} disagrees with its contents, which hash to {}",
                ca.to_nix_string(),
                nixbase32::encode(&got)
            )));
        }
        Ok(())
    }

    /// The hash of a path's NAR with another algorithm than the SHA-256 ingestion computed: the
    /// NAR is rendered again from the store.
    async fn nar_hash<D: sha2::Digest + Unpin>(&self, path: &StorePath, node: &Node) -> Result<Vec<u8>, Error> {
        let sink = crate::nar::write_nar(DigestSink(D::new()), node, &*self.blob, &*self.directory)
            .await
            .map_err(|e| Error::Storage(format!("{path}: re-reading the NAR to hash it: {e}")))?;
        Ok(sink.0.finalize().to_vec())
    }

    /// The hash of a flat path's file; anything but a regular file has no flat hash.
    async fn file_hash<D: sha2::Digest>(&self, path: &StorePath, node: &Node) -> Result<Vec<u8>, Error> {
        let Node::File { digest, .. } = node else {
            return Err(Error::Corrupt(format!("{path}: has a flat content address but is not a single file")));
        };
        let mut reader = self
            .blob
            .open_read(digest)
            .await?
            .ok_or_else(|| Error::Storage(format!("{path}: blob {digest} vanished right after ingestion")))?;
        let mut hasher = D::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|e| Error::Storage(format!("{path}: reading blob {digest}: {e}")))?;
            if n == 0 {
                return Ok(hasher.finalize().to_vec());
            }
            hasher.update(&buf[..n]);
        }
    }
}

/// A failed fetch as a store error, with `context` (the path and what was fetched) in front:
/// what the cache sent or named wrongly is corrupt data, anything else the cache being
/// unavailable.
fn fetch_error(context: String, e: FetchError) -> Error {
    match e {
        FetchError::TooLarge { .. } | FetchError::Outside { .. } | FetchError::NotAFile { .. } => {
            Error::Corrupt(format!("{context}: {e}"))
        }
        FetchError::Status { .. } | FetchError::Request { .. } => Error::Unavailable(format!("{context}: {e}")),
    }
}

/// An `AsyncWrite` that only hashes what it is given.
struct DigestSink<D>(D);

impl<D: sha2::Digest + Unpin> tokio::io::AsyncWrite for DigestSink<D> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.update(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Several binary caches tried in order, as Nix's `substituters`: the first that has a path
/// answers. A cache that fails is skipped; when every cache failed or missed and one failed,
/// its error is the answer (so a broken cache is not mistaken for a miss).
pub struct Substituters {
    caches: Vec<Arc<dyn PathInfoService>>,
}

impl Substituters {
    /// Tries `caches` in the order given.
    pub fn new(caches: Vec<Arc<dyn PathInfoService>>) -> Self {
        Self { caches }
    }
}

#[async_trait]
impl PathInfoService for Substituters {
    async fn get(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfo>, Error> {
        let mut failure = None;
        for cache in &self.caches {
            match cache.get(digest).await {
                Ok(Some(info)) => return Ok(Some(info)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(path = %nixbase32::encode(&digest), "substituter failed: {e}");
                    failure = Some(e);
                }
            }
        }
        failure.map_or(Ok(None), Err)
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        Err(Error::InvalidRequest(format!("substituters are read-only; cannot store {}", info.store_path)))
    }

    fn list(&self) -> BoxStream<'_, Result<PathInfo, Error>> {
        Box::pin(futures::stream::empty())
    }
}

/// A store path's closure under `path_info` (substituting where it substitutes): every path
/// reachable through References, each once, looked up `parallel` at a time. `found` sees each
/// PathInfo as it arrives; the result lists them in the order found.
pub async fn closure(
    path_info: &dyn PathInfoService,
    roots: &[StorePath],
    parallel: usize,
    found: &mut (dyn FnMut(&PathInfo) + Send),
) -> Result<Vec<PathInfo>, Error> {
    use futures::StreamExt;
    let mut seen: std::collections::HashSet<[u8; DIGEST_LEN]> = roots.iter().map(|p| *p.digest()).collect();
    let mut pending: Vec<StorePath> = roots.to_vec();
    let mut all = Vec::new();
    while !pending.is_empty() {
        let batch = std::mem::take(&mut pending);
        let mut lookups = futures::stream::iter(batch.into_iter().map(|path| async move {
            let info = path_info.get(*path.digest()).await?;
            info.ok_or_else(|| Error::NotFound(format!("{path}: in no substituter")))
        }))
        .buffered(parallel.max(1));
        while let Some(info) = lookups.next().await {
            let info = info?;
            for reference in &info.references {
                if seen.insert(*reference.digest()) {
                    pending.push(reference.clone());
                }
            }
            found(&info);
            all.push(info);
        }
    }
    Ok(all)
}
