//! The filesystem core: the store as a read-only tree, independent of any FUSE library.
//!
//! [`StoreFs`] answers lookup/getattr/readdir/read... with its own types ([`Attr`], [`Entry`],
//! [`DirEntry`], [`FsError`]); the FUSE frontend ([`fuse`]) and the virtiofs frontend are thin
//! adapters over it. Its API is synchronous because both FUSE libraries call filesystems from
//! their own worker threads: service calls run on a tokio runtime through a [`Handle`], so
//! methods must never be called from inside that runtime (its worker threads stay free for the
//! chunk fetches and read-ahead the blob readers spawn).
//!
//! The core knows castore only: the entries of the root come from a [`RootNodes`] (for the
//! mount of a Nix store, its store paths by basename, from the PathInfoService); below them
//! everything is directories and blobs by digest. A root entry's whole directory graph is
//! fetched with one recursive Get the first time it is needed (as much of it as fits a quarter
//! of the listing cache) and cached.
//!
//! Memory is bounded (see docs/mount-memory.md): inodes are counted the FUSE way (lookups and
//! readdirplus entries add, FORGET takes away) and freed once the kernel has forgotten them
//! and no handle is open ([`inodes`]); listings live in a cache capped at
//! [`Options::listing_cache_entries`] entries ([`listings`]), and a directory's listing is
//! also dropped as soon as no live inode shows that directory.

mod attr;
mod error;
pub mod fuse;
mod inodes;
mod listings;
mod prefetch;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use futures::stream::BoxStream;
use parking_lot::{Condvar, Mutex, RwLock};
use tokio::io::AsyncSeekExt;
use tokio::runtime::Handle;

pub use attr::{
    Attr, BLKSIZE, DirEntry, Entry, FileKind, Ino, Lookup, MTIME_SECS, Opened, OpenedDir, ROOT_INO, StatFs, XattrReply,
};
pub use error::{FsError, Subject};

use crate::castore::blobservice::{BlobReader, BlobReaderExt, BlobService};
use crate::castore::directoryservice::DirectoryService;
use crate::castore::{self, B3Digest, Directory, Node, RootNodes};
use inodes::{Freed, InodeTable, Listing};
use listings::{ListingCache, listing_cache};

/// Extended attribute carrying a regular file's blob digest (`b3:` + base64, as tvix prints
/// digests), shown with [`Options::show_xattr`].
pub const XATTR_BLOB_DIGEST: &str = "user.tvix.castore.blob.digest";
/// Extended attribute carrying a directory's digest, shown with [`Options::show_xattr`].
pub const XATTR_DIRECTORY_DIGEST: &str = "user.tvix.castore.directory.digest";

/// How the filesystem behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// List the root entries (store paths) in the root; otherwise readdir on the root fails
    /// with EPERM (lookups still work).
    pub list_root: bool,
    /// Expose blob and directory digests as extended attributes.
    pub show_xattr: bool,
    /// Upper bound for every call to the services (and every read): past it the operation
    /// fails with EIO instead of hanging when a backing daemon is gone.
    pub call_timeout: Duration,
    /// Entry and attribute TTL for everything that exists: content is immutable.
    pub ttl: Duration,
    /// Negative-entry TTL for misses in the root, so store paths added later show up soon.
    pub root_negative_ttl: Duration,
    /// Owner shown for every inode.
    pub uid: u32,
    /// Group shown for every inode.
    pub gid: u32,
    /// Most directory entries kept in cached listings (a listing counts its entries plus
    /// one). Listings past it are dropped least recently used first and fetched again when
    /// needed. A cached entry costs 80 bytes (name handle and node) plus the name's bytes, so
    /// the default of 100,000 holds about 10 MB.
    pub listing_cache_entries: usize,
    /// Free inodes the kernel has forgotten and bound the listing cache. Off, the filesystem
    /// keeps every inode and listing it ever handed out (the behaviour before eviction, kept
    /// for measuring it): forgets are ignored and `listing_cache_entries` is not applied.
    pub evict: bool,
}

/// Default of [`Options::listing_cache_entries`].
pub const LISTING_CACHE_ENTRIES: usize = 100_000;

impl Default for Options {
    fn default() -> Self {
        Self {
            list_root: false,
            show_xattr: false,
            call_timeout: Duration::from_secs(5),
            ttl: Duration::from_secs(3600),
            root_negative_ttl: Duration::from_secs(1),
            uid: 0,
            gid: 0,
            listing_cache_entries: LISTING_CACHE_ENTRIES,
            evict: true,
        }
    }
}

/// One open regular file: a blob reader kept across reads, so sequential reads continue where
/// the last one stopped (with the reader's read-ahead) and only jumps seek.
struct OpenFile {
    ino: Ino,
    size: u64,
    /// Opened on first read; dropped after a failure so the next read starts afresh.
    reader: Option<Box<dyn BlobReader>>,
    /// The reader's position.
    pos: u64,
    /// Offsets of the reads that arrived and are not done yet.
    pending: Vec<u64>,
}

/// One entry (store path) in a snapshot of the root listing.
struct RootEntry {
    name: Bytes,
    node: Node,
}

/// A snapshot of the root's entries, sorted by name. Inodes are resolved when listed:
/// a store path's inode may be freed and handed out anew while the handle is open.
type RootListing = Vec<RootEntry>;

/// An open file shared by the frontend threads serving its reads.
struct FileSlot {
    /// The file's blob, readable without waiting for the state's lock (prefetched bytes are
    /// found by it).
    digest: B3Digest,
    state: Mutex<OpenFile>,
    /// Signalled whenever the reader's position moved or a read arrived.
    moved: Condvar,
}

/// The kernel sends a file's read-ahead requests in parallel and worker threads pick them up in
/// any order; serving them in offset order keeps the blob reader sequential (and its read-ahead
/// alive) instead of seeking back and forth. A read ahead of the reader's position therefore
/// waits while reads for the bytes before it are known to be under way (at most
/// [`REORDER_WAIT`]), and, when none is known yet but it looks like the next request of a
/// sequential stream (within [`REORDER_NEAR`]), for [`REORDER_GRACE`] for one to arrive.
/// Reads far ahead (a jump) never wait.
const REORDER_WAIT: Duration = Duration::from_millis(20);
/// See [`REORDER_WAIT`]: twice the largest FUSE read.
const REORDER_NEAR: u64 = 2 * 1024 * 1024;
/// See [`REORDER_WAIT`].
const REORDER_GRACE: Duration = Duration::from_millis(2);

/// How many per-inode readers (for reads without a handle) are kept; each holds at most its
/// current chunk and read-ahead, and is dropped once read to the end.
const INODE_READERS: usize = 8;

/// The file handle frontends pass to [`StoreFs::read`] when the kernel did not open the file
/// through us (FUSE `no_open`); [`StoreFs::open`] never returns it.
pub const NO_HANDLE: u64 = 0;

/// The store as a read-only filesystem. Cheap to share: wrap it in an `Arc` and call it from
/// any number of frontend threads.
pub struct StoreFs {
    blob: Arc<dyn BlobService>,
    directory: Arc<dyn DirectoryService>,
    roots: Arc<dyn RootNodes>,
    runtime: Handle,
    options: Options,
    inodes: RwLock<InodeTable>,
    /// Directory listings by digest. Never locked while `inodes` is held by the same thread,
    /// nor the other way round.
    listings: Mutex<ListingCache>,
    files: Mutex<HashMap<u64, Arc<FileSlot>>>,
    /// Open handles of directories other than the root, with their inode (kept live while
    /// open).
    dir_handles: Mutex<HashMap<u64, Ino>>,
    /// Readers for reads without a handle, most recently used last.
    inode_files: Mutex<std::collections::VecDeque<(Ino, Arc<FileSlot>)>>,
    prefetch: prefetch::Prefetcher,
    /// Snapshots of the root listing, per open root directory handle.
    root_dirs: Mutex<HashMap<u64, Arc<RootListing>>>,
    next_fh: AtomicU64,
}

impl StoreFs {
    /// A filesystem over these services, with the root entries `roots`; `runtime` runs their
    /// async calls.
    pub fn new(
        blob: Arc<dyn BlobService>,
        directory: Arc<dyn DirectoryService>,
        roots: Arc<dyn RootNodes>,
        runtime: Handle,
        options: Options,
    ) -> Self {
        let cap = if options.evict { options.listing_cache_entries } else { usize::MAX };
        Self {
            blob,
            directory,
            roots,
            runtime,
            inodes: RwLock::new(InodeTable::new(options.evict)),
            listings: Mutex::new(listing_cache(cap)),
            options,
            files: Mutex::new(HashMap::new()),
            dir_handles: Mutex::new(HashMap::new()),
            root_dirs: Mutex::new(HashMap::new()),
            inode_files: Mutex::new(std::collections::VecDeque::new()),
            prefetch: prefetch::Prefetcher::default(),
            next_fh: AtomicU64::new(1),
        }
    }

    /// The options this filesystem was built with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Runs a service call on the runtime, bounded by the call timeout.
    fn call<T>(
        &self,
        subject: Subject,
        what: impl FnOnce() -> String,
        fut: impl Future<Output = Result<T, castore::Error>>,
    ) -> Result<T, FsError> {
        let timeout = self.options.call_timeout;
        // The timer must be created inside the runtime: enter it before building the timeout.
        match self.runtime.block_on(async move { tokio::time::timeout(timeout, fut).await }) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(FsError::Store { what: what(), subject, source }),
            Err(_) => Err(FsError::Timeout { what: what(), subject, after: self.options.call_timeout }),
        }
    }

    /// The listing of the directory with this digest. On a miss, one recursive Get fetches it
    /// and, while they fit the graph budget, the directories below it ([`collect_listings`]).
    fn listing(&self, digest: &B3Digest) -> Result<Arc<Listing>, FsError> {
        if let Some(l) = self.listings.lock().get(digest) {
            return Ok(l);
        }
        let budget = self.graph_budget();
        let directory = self.directory.clone();
        let want = *digest;
        let fetched = self.call(Subject::Digest(*digest), || format!("fetching directory {digest}"), async move {
            collect_listings(directory.get_recursive(&want), budget).await
        })?;
        self.keep_listings(digest, fetched)
    }

    /// Directory entries one fetch of a graph may bring into the listing cache: a quarter of
    /// the cache, so one store path cannot push out all others; without eviction, all.
    fn graph_budget(&self) -> usize {
        if self.options.evict { self.options.listing_cache_entries / 4 } else { usize::MAX }
    }

    /// Keeps the listings of a fetched graph and returns the one of `digest`, which must have
    /// come first.
    fn keep_listings(
        &self,
        digest: &B3Digest,
        fetched: Vec<(B3Digest, Arc<Listing>)>,
    ) -> Result<Arc<Listing>, FsError> {
        let wanted = match fetched.first() {
            Some((d, l)) if d == digest => l.clone(),
            _ => {
                return Err(FsError::Store {
                    what: format!("fetching directory {digest}"),
                    subject: Subject::Digest(*digest),
                    source: castore::Error::NotFound(format!("directory {digest} was not returned first")),
                });
            }
        };
        let mut listings = self.listings.lock();
        // The others first: should the cap be tight, the one asked for is the newest.
        for (d, l) in fetched.into_iter().skip(1) {
            listings.insert(d, l);
        }
        listings.insert(*digest, wanted.clone());
        Ok(wanted)
    }

    /// Drops the listings of directories the table no longer shows.
    fn drop_listings(&self, freed: Freed) {
        if freed.listings.is_empty() {
            return;
        }
        let mut listings = self.listings.lock();
        for digest in &freed.listings {
            listings.remove(digest);
        }
    }

    /// Live inodes (the root included): what the kernel still refers to, open handles, and a
    /// bounded number handed out by plain readdir.
    pub fn inode_count(&self) -> usize {
        self.inodes.read().len()
    }

    /// Sets the gauges of the filesystem's state (inode table, open handles, cached listings),
    /// for a metrics scrape.
    pub fn publish_gauges(&self) {
        metrics::gauge!("tvix_fs_inodes").set(self.inode_count() as f64);
        metrics::gauge!("tvix_fs_open_handles", "kind" => "file").set(self.files.lock().len() as f64);
        let dirs = self.dir_handles.lock().len() + self.root_dirs.lock().len();
        metrics::gauge!("tvix_fs_open_handles", "kind" => "directory").set(dirs as f64);
        metrics::gauge!("tvix_fs_cached_listings").set(self.cached_listings() as f64);
    }

    /// Directory listings cached.
    pub fn cached_listings(&self) -> usize {
        self.listings.lock().len()
    }

    /// Entries held by the cached listings (see [`Options::listing_cache_entries`]).
    pub fn cached_entries(&self) -> usize {
        self.listings.lock().held()
    }

    fn node_of(&self, ino: Ino) -> Result<Option<Node>, FsError> {
        match self.inodes.read().get(ino) {
            None => Err(FsError::UnknownInode(ino)),
            Some(slot) => Ok(slot.node.clone()),
        }
    }

    /// Attributes of the mount root.
    pub fn root_attr(&self) -> Attr {
        Attr {
            ino: ROOT_INO,
            size: 0,
            blocks: 0,
            kind: FileKind::Directory,
            perm: 0o555,
            nlink: 2,
            uid: self.options.uid,
            gid: self.options.gid,
            mtime_secs: MTIME_SECS,
            blksize: BLKSIZE,
        }
    }

    /// Attributes of inode `ino` holding `node`; directories need their listing (link count).
    fn attr_of_node(&self, ino: Ino, node: &Node) -> Result<Attr, FsError> {
        let (kind, size, perm, nlink) = match node {
            Node::Directory { digest, .. } => {
                let listing = self.listing(digest)?;
                (FileKind::Directory, 0, 0o555, 2u32.saturating_add(listing.subdirs))
            }
            Node::File { size, executable, .. } => {
                (FileKind::RegularFile, *size, if *executable { 0o555 } else { 0o444 }, 1)
            }
            Node::Symlink { target } => (FileKind::Symlink, target.as_bytes().len() as u64, 0o777, 1),
        };
        Ok(Attr {
            ino,
            size,
            blocks: attr::blocks_of(size),
            kind,
            perm,
            nlink,
            uid: self.options.uid,
            gid: self.options.gid,
            mtime_secs: MTIME_SECS,
            blksize: BLKSIZE,
        })
    }

    fn entry(&self, attr: Attr) -> Entry {
        Entry { ino: attr.ino, attr, entry_ttl: self.options.ttl, attr_ttl: self.options.ttl }
    }

    /// Looks `name` up in directory `parent`. In the root, the [`RootNodes`] are asked for it
    /// unless already known.
    /// A successful lookup is one reference the kernel holds until it forgets it.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Entry, FsError> {
        observe("lookup", || {
            if parent == ROOT_INO {
                return self.lookup_root(name);
            }
            let node = self.node_of(parent)?.ok_or(FsError::UnknownInode(parent))?;
            let Node::Directory { digest, .. } = node else {
                return Err(FsError::NotDirectory(parent));
            };
            let listing = self.listing(&digest)?;
            let index = listing.find(name).ok_or(FsError::NotFound)?;
            let (_, node) = &listing.entries[index];
            // Attributes first (they may need a fetch): the reference is only taken once nothing
            // can fail any more, so an error never leaves a count the kernel does not hold.
            let mut attr = self.attr_of_node(0, node)?;
            let mut freed = Freed::default();
            let ino = self.inodes.write().child_ref(parent, index, listing.entries.len(), node, true, &mut freed);
            self.drop_listings(freed);
            attr.ino = ino.ok_or(FsError::UnknownInode(parent))?;
            Ok(self.entry(attr))
        })
    }

    fn lookup_root(&self, name: &[u8]) -> Result<Entry, FsError> {
        let known = {
            let inodes = self.inodes.read();
            inodes.root_child(name).and_then(|ino| inodes.get(ino)).and_then(|slot| slot.node.clone())
        };
        let name = Bytes::copy_from_slice(name);
        let node = match known {
            Some(node) => node,
            None => {
                let roots = self.roots.clone();
                let budget = self.graph_budget();
                let wanted = name.clone();
                let (node, graph) = self
                    .call(
                        Subject::StorePath(String::from_utf8_lossy(&name).into_owned()),
                        || format!("looking up {}", String::from_utf8_lossy(&name)),
                        async move {
                            let Some(found) = roots.get(&wanted).await? else {
                                return Ok(None);
                            };
                            let graph = match found.graph {
                                // Not needed for the lookup: a graph that fails is fetched
                                // again from the DirectoryService when it is listed.
                                Some(graph) => collect_listings(graph, budget).await.unwrap_or_else(|e| {
                                    tracing::debug!(entry = %String::from_utf8_lossy(&wanted), "directory graph sent along unusable: {e}");
                                    Vec::new()
                                }),
                                None => Vec::new(),
                            };
                            Ok(Some((found.node, graph)))
                        },
                    )?
                    .ok_or(FsError::NotFound)?;
                if let Node::Directory { digest: root, .. } = &node
                    && !graph.is_empty()
                {
                    // A graph not starting at the root is refused whole (gRPC checks that it
                    // does); the root's listing is then fetched when it is needed.
                    let _ = self.keep_listings(root, graph);
                }
                node
            }
        };
        let mut attr = self.attr_of_node(0, &node)?;
        let mut freed = Freed::default();
        // Re-created here if it was freed since it was read above.
        attr.ino = self.inodes.write().root_child_ref(&name, node, true, &mut freed);
        self.drop_listings(freed);
        Ok(self.entry(attr))
    }

    /// [`Self::lookup`] as the kernel is answered: a name that does not exist is a negative
    /// entry it may remember ([`Self::negative_ttl`]), other failures are errors.
    pub fn lookup_reply(&self, parent: Ino, name: &[u8]) -> Result<Lookup, FsError> {
        match self.lookup(parent, name) {
            Ok(entry) => Ok(Lookup::Found(entry)),
            Err(FsError::NotFound) => Ok(Lookup::Absent { ttl: self.negative_ttl(parent) }),
            Err(e) => Err(e),
        }
    }

    /// How long the kernel may remember that `name` does not exist in `parent`: short in the
    /// root (paths get added), long elsewhere (store paths never change).
    pub fn negative_ttl(&self, parent: Ino) -> Duration {
        if parent == ROOT_INO { self.options.root_negative_ttl } else { self.options.ttl }
    }

    /// Attributes of an inode.
    pub fn getattr(&self, ino: Ino) -> Result<Attr, FsError> {
        observe("getattr", || match self.node_of(ino)? {
            None => Ok(self.root_attr()),
            Some(node) => self.attr_of_node(ino, &node),
        })
    }

    /// How long the kernel may cache attributes.
    pub fn attr_ttl(&self) -> Duration {
        self.options.ttl
    }

    /// The kernel forgets `nlookup` lookups of `ino` (FUSE FORGET); once it holds none and no
    /// handle is open, the inode is freed (and its number never handed out again). Forgets
    /// of unknown inodes are ignored: FORGET has no reply.
    pub fn forget(&self, ino: Ino, nlookup: u64) {
        self.batch_forget(&[(ino, nlookup)]);
    }

    /// Several forgets at once (FUSE BATCH_FORGET), under one lock.
    pub fn batch_forget(&self, forgets: &[(Ino, u64)]) {
        let mut freed = Freed::default();
        {
            let mut inodes = self.inodes.write();
            for &(ino, n) in forgets {
                inodes.forget(ino, n, &mut freed);
            }
        }
        self.drop_listings(freed);
    }

    /// The target of a symlink.
    pub fn readlink(&self, ino: Ino) -> Result<Bytes, FsError> {
        observe("readlink", || match self.node_of(ino)? {
            Some(Node::Symlink { target }) => Ok(target.to_bytes()),
            _ => Err(FsError::NotSymlink(ino)),
        })
    }

    /// Opens a directory for reading; returns the handle to pass to readdir/releasedir. The
    /// root can always be opened but only listed with [`Options::list_root`] (readdir fails
    /// with EPERM otherwise); its listing is taken once per handle so offsets stay valid while
    /// paths are added. Other directories stay live while open, and the kernel may cache their
    /// listings.
    pub fn opendir(&self, ino: Ino) -> Result<OpenedDir, FsError> {
        observe("opendir", || {
            match self.node_of(ino)? {
                None => {
                    // Opening the root must work (`tar -C`, `find` open it to chdir/openat), only
                    // listing it is refused.
                    if !self.options.list_root {
                        return Ok(OpenedDir { fh: 0, cache_listing: false });
                    }
                    let roots = self.roots.clone();
                    let mut entries: RootListing =
                        self.call(Subject::None, || "listing the root entries".to_string(), async move {
                            roots.list().map_ok(|(name, node)| RootEntry { name, node }).try_collect().await
                        })?;
                    entries.sort_by(|a, b| a.name.cmp(&b.name));
                    let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                    self.root_dirs.lock().insert(fh, Arc::new(entries));
                    Ok(OpenedDir { fh, cache_listing: false })
                }
                Some(Node::Directory { digest, .. }) => {
                    self.listing(&digest)?;
                    let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                    self.inodes.write().open(ino);
                    self.dir_handles.lock().insert(fh, ino);
                    Ok(OpenedDir { fh, cache_listing: true })
                }
                Some(_) => Err(FsError::NotDirectory(ino)),
            }
        })
    }

    /// Lists directory `ino` from `offset` (0 at the start, else a previous entry's
    /// `next_offset`), passing entries to `add` until it returns false (the entry it returned
    /// false for was not taken) or the directory ends. Entries are `.`, `..`, then children in
    /// name order. Plain readdir: the kernel takes no reference on the entries (see
    /// [`Self::readdirplus`]).
    pub fn readdir(
        &self,
        ino: Ino,
        fh: u64,
        offset: u64,
        add: &mut dyn FnMut(DirEntry) -> bool,
    ) -> Result<(), FsError> {
        observe("readdir", || self.list(ino, fh, offset, false, add))
    }

    /// [`Self::readdir`] for READDIRPLUS: every entry taken other than `.` and `..` is a
    /// lookup, one reference the kernel holds until it forgets it.
    pub fn readdirplus(
        &self,
        ino: Ino,
        fh: u64,
        offset: u64,
        add: &mut dyn FnMut(DirEntry) -> bool,
    ) -> Result<(), FsError> {
        observe("readdirplus", || self.list(ino, fh, offset, true, add))
    }

    fn list(
        &self,
        ino: Ino,
        fh: u64,
        offset: u64,
        plus: bool,
        add: &mut dyn FnMut(DirEntry) -> bool,
    ) -> Result<(), FsError> {
        let (parent, node) = match self.inodes.read().get(ino) {
            None => return Err(FsError::UnknownInode(ino)),
            Some(slot) => (slot.parent, slot.node.clone()),
        };
        if node.is_none() && !self.options.list_root {
            return Err(FsError::RootNotListable);
        }
        let self_attr = self.getattr(ino)?;
        let dots = |off: u64| -> Result<Option<DirEntry>, FsError> {
            Ok(match off {
                0 => Some(DirEntry { name: Bytes::from_static(b"."), next_offset: 1, entry: self.entry(self_attr) }),
                1 => Some(DirEntry {
                    name: Bytes::from_static(b".."),
                    next_offset: 2,
                    entry: self.entry(self.getattr(parent)?),
                }),
                _ => None,
            })
        };
        let mut off = offset;
        while let Some(e) = dots(off)? {
            if !add(e) {
                return Ok(());
            }
            off += 1;
        }
        let start = usize::try_from(off - 2).unwrap_or(usize::MAX);
        let mut freed = Freed::default();
        // Each entry's reference is taken before it is offered and given back if it is not
        // taken: in between, the inode cannot be freed under the reply.
        let result = match node {
            None => {
                let entries = self.root_dirs.lock().get(&fh).cloned().ok_or(FsError::BadHandle(fh))?;
                for (i, e) in entries.iter().enumerate().skip(start) {
                    let mut attr = self.attr_of_node(0, &e.node)?;
                    attr.ino = self.inodes.write().root_child_ref(&e.name, e.node.clone(), plus, &mut freed);
                    if !add(DirEntry { name: e.name.clone(), next_offset: i as u64 + 3, entry: self.entry(attr) }) {
                        if plus {
                            self.inodes.write().forget(attr.ino, 1, &mut freed);
                        }
                        break;
                    }
                }
                Ok(())
            }
            Some(Node::Directory { digest, .. }) => {
                let listing = self.listing(&digest)?;
                let len = listing.entries.len();
                for (i, (name, node)) in listing.entries.iter().enumerate().skip(start) {
                    let mut attr = self.attr_of_node(0, node)?;
                    let child = self.inodes.write().child_ref(ino, i, len, node, plus, &mut freed);
                    attr.ino = child.ok_or(FsError::UnknownInode(ino))?;
                    if !add(DirEntry { name: name.to_bytes(), next_offset: i as u64 + 3, entry: self.entry(attr) }) {
                        if plus {
                            self.inodes.write().forget(attr.ino, 1, &mut freed);
                        }
                        break;
                    }
                }
                Ok(())
            }
            Some(_) => Err(FsError::NotDirectory(ino)),
        };
        self.drop_listings(freed);
        result
    }

    /// Closes a directory handle from [`Self::opendir`].
    pub fn releasedir(&self, fh: u64) {
        self.root_dirs.lock().remove(&fh);
        let Some(ino) = self.dir_handles.lock().remove(&fh) else { return };
        let mut freed = Freed::default();
        self.inodes.write().close(ino, &mut freed);
        self.drop_listings(freed);
    }

    /// Opens a regular file for reading; `flags` are the open(2) flags. Asking for write
    /// access fails with EROFS. The inode stays live while the handle is open.
    pub fn open(&self, ino: Ino, flags: i32) -> Result<Opened, FsError> {
        observe("open", || {
            if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
                return Err(FsError::ReadOnly);
            }
            let (digest, size) = match self.node_of(ino)? {
                Some(Node::File { digest, size, .. }) => (digest, size),
                Some(Node::Directory { .. }) | None => return Err(FsError::IsDirectory(ino)),
                Some(Node::Symlink { .. }) => return Err(FsError::NotSymlink(ino)),
            };
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            let file = OpenFile { ino, size, reader: None, pos: 0, pending: Vec::new() };
            self.inodes.write().open(ino);
            let slot = FileSlot { digest, state: Mutex::new(file), moved: Condvar::new() };
            self.files.lock().insert(fh, Arc::new(slot));
            Ok(Opened { fh, keep_cache: true })
        })
    }

    /// Reads up to `size` bytes at `offset` of file `ino`; fewer only at the end of the file.
    /// `fh` is the handle from [`Self::open`], or [`NO_HANDLE`] from a frontend that lets the
    /// kernel skip opens (FUSE `no_open`): the core then keeps a reader per inode (a few, most
    /// recently used). Fails with EIO (after at most the call timeout) when the store cannot
    /// deliver.
    pub fn read(&self, ino: Ino, fh: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        observe("read", || {
            let slot = if fh == NO_HANDLE {
                self.inode_slot(ino)?
            } else {
                self.files.lock().get(&fh).cloned().ok_or(FsError::BadHandle(fh))?
            };
            let digest = slot.digest;
            if offset == 0 && self.prefetch.wants_plan(&digest) {
                self.prefetch_walk(ino);
            }
            let started = std::time::Instant::now();
            let patience = prefetch::patience(self.options.call_timeout);
            let prefetched = self.prefetch.read(&self.runtime, &digest, offset, size, patience);
            let result = match prefetched {
                prefetch::Prefetched::Data(_) => "hit",
                prefetch::Prefetched::No => "miss",
                prefetch::Prefetched::Late => "late",
            };
            metrics::counter!("tvix_fs_prefetch_reads_total", "result" => result).increment(1);
            if let prefetch::Prefetched::Data(data) = prefetched {
                return Ok(data);
            }
            // A late prefetch used part of the call timeout; the read as a whole keeps to it.
            let budget = self.options.call_timeout.saturating_sub(started.elapsed());
            let mut file = slot.state.lock();
            if offset >= file.size || size == 0 {
                return Ok(Bytes::new());
            }
            file.pending.push(offset);
            // Reads waiting for earlier ones re-check: this may be one of those.
            slot.moved.notify_all();
            let start = std::time::Instant::now();
            loop {
                if file.reader.is_none() || offset <= file.pos {
                    break;
                }
                let pos = file.pos;
                let before_us = file.pending.iter().any(|&o| o >= pos && o < offset);
                let limit = if before_us {
                    REORDER_WAIT
                } else if offset - pos <= REORDER_NEAR {
                    REORDER_GRACE
                } else {
                    break;
                };
                let deadline = start + limit;
                if std::time::Instant::now() >= deadline {
                    break;
                }
                slot.moved.wait_until(&mut file, deadline);
            }
            if let Some(i) = file.pending.iter().position(|&o| o == offset) {
                file.pending.swap_remove(i);
            }
            let result = self.read_locked(&slot.digest, &mut file, offset, size, budget);
            if file.pos >= file.size {
                // Read to the end: free the reader's buffers now rather than at release.
                file.reader = None;
            }
            slot.moved.notify_all();
            result
        })
    }

    /// Starts fetching the small files a walk of `ino`'s store path meets after `ino` (see
    /// [`prefetch`]): the walk's position is `ino`'s place in its directory and that
    /// directory's place in each directory above it, up to the store path's root.
    fn prefetch_walk(&self, ino: Ino) {
        // Directory digests from the store path's root down, each with the entry to go on at.
        let mut chain: Vec<(B3Digest, usize)> = Vec::new();
        {
            let inodes = self.inodes.read();
            let mut child = ino;
            loop {
                let Some(slot) = inodes.get(child) else { return };
                // Store paths are not siblings in any listing order worth following.
                if slot.parent == ROOT_INO {
                    break;
                }
                let Some(Some(Node::Directory { digest, .. })) = inodes.get(slot.parent).map(|p| p.node.as_ref())
                else {
                    return;
                };
                chain.push((*digest, slot.index as usize + 1));
                child = slot.parent;
            }
        }
        if chain.is_empty() {
            return;
        }
        chain.reverse();
        let files = {
            let mut listings = self.listings.lock();
            let mut at = Vec::with_capacity(chain.len());
            for (digest, next) in chain {
                let Some(listing) = listings.get(&digest) else { return };
                at.push((listing, next));
            }
            prefetch::walk_ahead(at, |digest| listings.get(digest), |digest| self.prefetch.holds(digest))
        };
        self.prefetch.start(&self.runtime, &self.blob, files);
    }

    /// The shared reader slot of inode `ino`, for reads without a handle.
    fn inode_slot(&self, ino: Ino) -> Result<Arc<FileSlot>, FsError> {
        let mut slots = self.inode_files.lock();
        if let Some(i) = slots.iter().position(|(i, _)| *i == ino) {
            let entry = slots.remove(i).ok_or(FsError::UnknownInode(ino))?;
            let slot = entry.1.clone();
            slots.push_back(entry);
            return Ok(slot);
        }
        let (digest, size) = match self.node_of(ino)? {
            Some(Node::File { digest, size, .. }) => (digest, size),
            Some(Node::Symlink { .. }) => return Err(FsError::NotSymlink(ino)),
            _ => return Err(FsError::IsDirectory(ino)),
        };
        let file = OpenFile { ino, size, reader: None, pos: 0, pending: Vec::new() };
        let slot = Arc::new(FileSlot { digest, state: Mutex::new(file), moved: Condvar::new() });
        if slots.len() >= INODE_READERS {
            slots.pop_front();
        }
        slots.push_back((ino, slot.clone()));
        Ok(slot)
    }

    fn read_locked(
        &self,
        digest: &B3Digest,
        file: &mut OpenFile,
        offset: u64,
        size: u32,
        timeout: Duration,
    ) -> Result<Bytes, FsError> {
        let want = (file.size - offset).min(u64::from(size)) as usize;
        let blob = self.blob.clone();
        let digest = *digest;
        let result = self.runtime.block_on(async {
            tokio::time::timeout(timeout, async {
                // One retry with a fresh reader: a reader whose connection broke (daemon restarted)
                // fails once, a new one works.
                let mut last = None;
                for _ in 0..2 {
                    match read_at(&blob, &digest, file, offset, want).await {
                        Ok(buf) => return Ok(buf),
                        Err(e) => {
                            file.reader = None;
                            last = Some(e);
                        }
                    }
                }
                Err(last.unwrap_or_else(|| std::io::Error::other("read failed")))
            })
            .await
        });
        let ino = file.ino;
        let what = || format!("reading {want} bytes at offset {offset} of blob {digest} (inode {ino})");
        match result {
            Ok(Ok(buf)) => Ok(buf),
            Ok(Err(source)) => Err(FsError::Io { what: what(), subject: Subject::Digest(digest), source }),
            Err(_) => {
                file.reader = None;
                Err(FsError::Timeout { what: what(), subject: Subject::Digest(digest), after: timeout })
            }
        }
    }

    /// Closes a file handle from [`Self::open`].
    pub fn release(&self, fh: u64) {
        let Some(slot) = self.files.lock().remove(&fh) else { return };
        let ino = slot.state.lock().ino;
        let mut freed = Freed::default();
        self.inodes.write().close(ino, &mut freed);
        self.drop_listings(freed);
    }

    fn xattrs(&self, ino: Ino) -> Result<Vec<(&'static str, String)>, FsError> {
        if !self.options.show_xattr {
            self.node_of(ino)?;
            return Ok(Vec::new());
        }
        Ok(match self.node_of(ino)? {
            Some(Node::File { digest, .. }) => vec![(XATTR_BLOB_DIGEST, digest.to_string())],
            Some(Node::Directory { digest, .. }) => vec![(XATTR_DIRECTORY_DIGEST, digest.to_string())],
            _ => Vec::new(),
        })
    }

    /// The value of extended attribute `name` ([`XATTR_BLOB_DIGEST`],
    /// [`XATTR_DIRECTORY_DIGEST`]); `size` 0 asks for its length only.
    pub fn getxattr(&self, ino: Ino, name: &[u8], size: u32) -> Result<XattrReply, FsError> {
        observe("getxattr", || {
            let value = self
                .xattrs(ino)?
                .into_iter()
                .find(|(n, _)| n.as_bytes() == name)
                .map(|(_, v)| v.into_bytes())
                .ok_or(FsError::NoXattr)?;
            xattr_reply(value, size)
        })
    }

    /// The NUL-terminated names of the extended attributes of `ino`; `size` 0 asks for the
    /// length only.
    pub fn listxattr(&self, ino: Ino, size: u32) -> Result<XattrReply, FsError> {
        observe("listxattr", || {
            let mut names = Vec::new();
            for (name, _) in self.xattrs(ino)? {
                names.extend_from_slice(name.as_bytes());
                names.push(0);
            }
            xattr_reply(names, size)
        })
    }

    /// Filesystem statistics.
    pub fn statfs(&self) -> StatFs {
        StatFs {
            blocks: 0,
            bfree: 0,
            bavail: 0,
            files: self.inodes.read().len() as u64,
            ffree: 0,
            bsize: BLKSIZE,
            namelen: 255,
            frsize: BLKSIZE,
        }
    }
}

fn xattr_reply(value: Vec<u8>, size: u32) -> Result<XattrReply, FsError> {
    if size == 0 {
        return Ok(XattrReply::Size(value.len() as u32));
    }
    if value.len() > size as usize {
        return Err(FsError::XattrRange { len: value.len(), size });
    }
    Ok(XattrReply::Data(value))
}

/// Reads `want` bytes at `offset` through the file's kept reader, opening it if needed and
/// seeking only when the offset is not where the last read stopped.
async fn read_at(
    blob: &Arc<dyn BlobService>,
    digest: &B3Digest,
    file: &mut OpenFile,
    offset: u64,
    want: usize,
) -> std::io::Result<Bytes> {
    if file.reader.is_none() {
        let reader = blob.open_read(digest).await.map_err(std::io::Error::from)?.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("blob {digest} is not in the store"))
        })?;
        file.reader = Some(reader);
        file.pos = 0;
    }
    let Some(reader) = file.reader.as_mut() else {
        return Err(std::io::Error::other("no reader"));
    };
    if file.pos != offset {
        tracing::trace!(blob = %digest, from = file.pos, to = offset, "seek");
        reader.seek(std::io::SeekFrom::Start(offset)).await?;
        file.pos = offset;
    }
    // The reader's verified buffers are handed on as they are: a read within one of them (a
    // small file, most reads of a chunk) is a slice, with no copy before the kernel's.
    let first = if want == 0 { Bytes::new() } else { reader.piece(want).await? };
    file.pos += first.len() as u64;
    let data = if first.len() == want || first.is_empty() {
        first
    } else {
        // Spanning buffers: gathered into one, the only copy.
        let mut buf = bytes::BytesMut::with_capacity(want);
        buf.extend_from_slice(&first);
        while buf.len() < want {
            let piece = reader.piece(want - buf.len()).await?;
            if piece.is_empty() {
                break;
            }
            file.pos += piece.len() as u64;
            buf.extend_from_slice(&piece);
        }
        buf.freeze()
    };
    if data.len() < want {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("blob {digest} ended at {} bytes, shorter than its recorded size", file.pos),
        ));
    }
    Ok(data)
}

/// Counts an operation of the filesystem core (both frontends) and how long it took, by
/// operation and outcome; a read also counts its bytes.
fn observe<T: Observed>(op: &'static str, call: impl FnOnce() -> Result<T, FsError>) -> Result<T, FsError> {
    let started = std::time::Instant::now();
    let result = call();
    let outcome = match &result {
        Ok(value) => {
            value.count(op);
            "ok"
        }
        Err(e) => e.kind_label(),
    };
    metrics::counter!("tvix_fs_operations_total", "op" => op, "outcome" => outcome).increment(1);
    metrics::histogram!("tvix_fs_operation_seconds", "op" => op).record(started.elapsed().as_secs_f64());
    result
}

/// What an operation's answer adds to the metrics beyond its count.
trait Observed {
    fn count(&self, _op: &'static str) {}
}

impl Observed for Bytes {
    fn count(&self, op: &'static str) {
        if op == "read" {
            metrics::counter!("tvix_fs_read_bytes_total").increment(self.len() as u64);
        }
    }
}

impl Observed for Entry {}
impl Observed for Attr {}
impl Observed for u64 {}
impl Observed for () {}
impl Observed for Opened {}
impl Observed for OpenedDir {}
impl Observed for Lookup {}
impl Observed for XattrReply {}

/// Reads a directory graph (root first, as a recursive Get sends it) into listings, while they
/// fit `budget` directory entries (breadth first, the order a walk needs them); the rest of the
/// stream is dropped unread. Only the root must arrive: a directory below it that does not is
/// fetched (and fails) when it is needed.
async fn collect_listings(
    mut stream: BoxStream<'_, Result<Directory, castore::Error>>,
    budget: usize,
) -> Result<Vec<(B3Digest, Arc<Listing>)>, castore::Error> {
    let mut out = Vec::new();
    let mut entries = 0usize;
    loop {
        let dir = match stream.try_next().await {
            Ok(Some(dir)) => dir,
            Ok(None) => break,
            Err(_) if !out.is_empty() => break,
            Err(e) => return Err(e),
        };
        entries = entries.saturating_add(dir.len() + 1);
        if !out.is_empty() && entries > budget {
            break;
        }
        // Converted one by one: the Directory form (a BTreeMap) is several times larger and
        // must not pile up for a whole store path.
        out.push((dir.digest(), Arc::new(Listing::new(&dir))));
    }
    Ok(out)
}
