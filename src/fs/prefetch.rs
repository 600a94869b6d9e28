//! Walk-order prefetch of small files.
//!
//! Readers of a tree (tar, cp -r, rsync, an interpreter importing modules) open its files one
//! after another in listing order, descending into each directory as they meet it. Against a
//! remote store each small file then costs a round trip that nothing overlaps: at 50 ms, a
//! tree of 1,700 files took 47 s to read with tar. So when a file is read from its start and
//! its bytes were not prefetched, the next files of that walk are planned ([`walk_ahead`]: the
//! rest of its directory, the directories below it, then the rest of the directories above,
//! depth first in listing order, as far as [`WINDOW_FILES`] / [`WINDOW_BYTES`] reach) and
//! fetched in the background with batched reads (one call to a daemon per batch). Reading a
//! window's first file plans the next window (files already held are passed over), so the
//! fetches stay a window ahead of a reader that follows the walk, and stop when nobody reads.
//!
//! Bounded: files of at most [`MAX_FILE`] bytes, at most [`PLANS_IN_FLIGHT`] windows fetched
//! at once, at most [`CAPACITY_BYTES`] held (oldest dropped first). Prefetched bytes are found
//! by blob digest, so a file needs no inode yet to be prefetched. Foreground reads never wait
//! for a prefetch they did not ask for: a file not in a window is read the normal way at once,
//! and a file whose prefetch is late ([`patience`]) is then read the normal way too.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::inodes::Listing;
use crate::castore::blobservice::BlobService;
use crate::castore::{B3Digest, Node};

/// Largest file prefetched; larger ones are read by their blob reader, with its own read-ahead.
pub(crate) const MAX_FILE: u64 = 512 * 1024;
/// Most files planned in one window.
const WINDOW_FILES: usize = 256;
/// Most bytes planned in one window: at 50 ms round trips, 8 MiB per round trip is 160 MB/s
/// per window in flight, more than a walk of small files needs.
const WINDOW_BYTES: u64 = 8 * 1024 * 1024;
/// Entries looked at while planning one window (directories, symlinks and large files
/// included), so planning over a tree of mostly large files stays cheap.
const WINDOW_STEPS: usize = 4 * WINDOW_FILES;
/// Files per batched read: a window is fetched as several batches side by side, so the first
/// files of a window arrive without waiting behind the whole window.
const BATCH_FILES: usize = 64;
/// Bytes per batched read (see [`BATCH_FILES`]).
const BATCH_BYTES: u64 = 2 * 1024 * 1024;
/// Windows fetched at once, for all readers together; a plan over the bound is skipped (the
/// next unprefetched read plans again).
const PLANS_IN_FLIGHT: usize = 2;
/// Bytes prefetched or being prefetched held at once; past it the oldest files are dropped. A
/// reader following the walk holds two windows (the one it reads and the next), so what is
/// dropped is what it passed over.
const CAPACITY_BYTES: u64 = 4 * WINDOW_BYTES;

/// How long a reader waits for its file's prefetch before reading the file alone, out of the
/// `call_timeout` its read has. A batch lands within a few round trips, but the file a reader
/// wants can sit behind hundreds of others (two windows of up to 256 files in flight): on a
/// loaded S3 engine answering GETs one by one, that wait passed the 5 s call timeout and the
/// read failed with EIO, where asking for the one file would have taken one GET.
pub(crate) fn patience(call_timeout: Duration) -> Duration {
    (call_timeout / 4).min(Duration::from_secs(1))
}

type Fetch = Shared<BoxFuture<'static, Option<Bytes>>>;

/// A file of a batch: its digest, its size, and where its bytes go.
type Wanted = (B3Digest, u64, oneshot::Sender<Option<Bytes>>);

/// What [`Prefetcher::read`] found.
pub(crate) enum Prefetched {
    /// The bytes asked for.
    Data(Bytes),
    /// Not prefetched (or the fetch failed): read the normal way.
    No,
    /// The fetch did not arrive within the wait: read the normal way, which asks for this one
    /// file alone instead of waiting behind the rest of its batch.
    Late,
}

/// One prefetched (or prefetching) file.
struct Held {
    fetch: Fetch,
    size: u64,
    /// Reading this file from its start plans the next window.
    plans_next: bool,
    /// Which insertion this is, so a stale entry of `order` does not drop a later one.
    added: u64,
}

#[derive(Default)]
struct Files {
    by_digest: HashMap<B3Digest, Held>,
    /// Oldest first, for dropping past [`CAPACITY_BYTES`]. A file read to its end leaves its
    /// entry here (removing it would cost a scan of thousands of small files per read); it is
    /// skipped when it comes up.
    order: VecDeque<(B3Digest, u64)>,
    bytes: u64,
    added: u64,
}

impl Files {
    /// Holds a file being prefetched, as the newest.
    fn hold(&mut self, digest: B3Digest, fetch: Fetch, size: u64, plans_next: bool) {
        self.added += 1;
        let added = self.added;
        self.by_digest.insert(digest, Held { fetch, size, plans_next, added });
        self.order.push_back((digest, added));
        self.bytes += size;
    }

    fn forget(&mut self, digest: &B3Digest) {
        if let Some(held) = self.by_digest.remove(digest) {
            self.bytes -= held.size;
        }
    }

    fn drop_oldest_past_capacity(&mut self) {
        while self.bytes > CAPACITY_BYTES {
            let Some((old, added)) = self.order.pop_front() else { break };
            if self.by_digest.get(&old).is_some_and(|held| held.added == added) {
                self.forget(&old);
            }
        }
        // Stale entries of files read long ago would otherwise pile up while nothing is dropped.
        if self.order.len() > 4 * self.by_digest.len() + WINDOW_FILES {
            let by_digest = &self.by_digest;
            self.order.retain(|(digest, added)| by_digest.get(digest).is_some_and(|held| held.added == *added));
        }
    }
}

/// Prefetched and prefetching files.
#[derive(Default)]
pub(crate) struct Prefetcher {
    files: Mutex<Files>,
    plans: Arc<AtomicUsize>,
}

impl Prefetcher {
    /// Whether reading `digest` from its start should plan a window: it was not prefetched
    /// (the reader left the windows planned so far), or it is the first file of a window.
    pub fn wants_plan(&self, digest: &B3Digest) -> bool {
        self.files.lock().by_digest.get(digest).is_none_or(|held| held.plans_next)
    }

    /// Whether `digest` is prefetched or being prefetched (a plan passes over it).
    pub fn holds(&self, digest: &B3Digest) -> bool {
        self.files.lock().by_digest.contains_key(digest)
    }

    /// Starts fetching `files` (digest and size, in walk order) not held yet, on `runtime`, in
    /// batches read side by side with [`BlobService::read_many`]; each file's bytes go to its
    /// reader as soon as they arrive. Does nothing while [`PLANS_IN_FLIGHT`] windows are
    /// being fetched.
    pub fn start(&self, runtime: &Handle, blob: &Arc<dyn BlobService>, files: Vec<(B3Digest, u64)>) {
        if self.plans.fetch_add(1, Ordering::AcqRel) >= PLANS_IN_FLIGHT {
            self.plans.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let mut batches: Vec<Vec<Wanted>> = Vec::new();
        {
            let mut state = self.files.lock();
            let mut new = Vec::new();
            let mut planned = HashSet::new();
            for (digest, size) in files {
                if state.by_digest.contains_key(&digest) || !planned.insert(digest) {
                    continue;
                }
                let (tx, rx) = oneshot::channel::<Option<Bytes>>();
                // A fetch given up (its sender dropped) reads as failed: read the normal way.
                let fetch: Fetch = async move { rx.await.ok().flatten() }.boxed().shared();
                new.push((digest, size, (tx, fetch)));
            }
            for (i, (digest, size, (tx, fetch))) in new.into_iter().enumerate() {
                state.hold(digest, fetch, size, i == 0);
                let fits = batches.last().is_some_and(|b| {
                    b.len() < BATCH_FILES && b.iter().map(|(_, s, _)| s).sum::<u64>() + size <= BATCH_BYTES
                });
                if !fits {
                    batches.push(Vec::new());
                }
                if let Some(batch) = batches.last_mut() {
                    batch.push((digest, size, tx));
                }
            }
            state.drop_oldest_past_capacity();
        }
        let plans = self.plans.clone();
        if batches.is_empty() {
            plans.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let blob = blob.clone();
        runtime.spawn(async move {
            futures::stream::iter(batches)
                .for_each_concurrent(None, |batch| {
                    let blob = blob.clone();
                    async move {
                        let (digests, mut waiting): (Vec<B3Digest>, VecDeque<(u64, oneshot::Sender<_>)>) =
                            batch.into_iter().map(|(d, size, tx)| (d, (size, tx))).unzip();
                        let mut results = blob.read_many(digests);
                        while let Some((_, result)) = results.next().await {
                            let Some((size, tx)) = waiting.pop_front() else { break };
                            let _ = tx.send(result.ok().flatten().filter(|data| data.len() as u64 == size));
                        }
                    }
                })
                .await;
            plans.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// The bytes `offset..offset+size` of the blob `digest` if it was prefetched, waiting at
    /// most `wait` for a fetch under way. A file is forgotten once its end was served or its
    /// fetch failed or was late (the caller then reads it the normal way).
    pub fn read(&self, runtime: &Handle, digest: &B3Digest, offset: u64, size: u32, wait: Duration) -> Prefetched {
        let Some(fetch) = self.files.lock().by_digest.get(digest).map(|held| held.fetch.clone()) else {
            return Prefetched::No;
        };
        let data = match runtime.block_on(async move { tokio::time::timeout(wait, fetch).await }) {
            Ok(Some(data)) => data,
            Ok(None) => {
                self.files.lock().forget(digest);
                return Prefetched::No;
            }
            Err(_) => {
                self.files.lock().forget(digest);
                return Prefetched::Late;
            }
        };
        let len = data.len() as u64;
        let start = offset.min(len);
        let end = offset.saturating_add(u64::from(size)).min(len);
        if end == len {
            self.files.lock().forget(digest);
        }
        Prefetched::Data(data.slice(start as usize..end as usize))
    }
}

/// The small files a depth-first walk in listing order meets after a given entry, as far as one
/// window reaches. `chain` is the walk's position: the directories from the store path's root
/// down to the one being read, each with the index of the next entry the walk visits in it.
/// `listing_of` gives a subdirectory's listing if it is at hand (the planner never fetches
/// one: a subdirectory without a listing is skipped); files `held` already are passed over
/// without counting towards the window.
pub(crate) fn walk_ahead(
    chain: Vec<(Arc<Listing>, usize)>,
    mut listing_of: impl FnMut(&B3Digest) -> Option<Arc<Listing>>,
    held: impl Fn(&B3Digest) -> bool,
) -> Vec<(B3Digest, u64)> {
    let mut stack = chain;
    let (mut files, mut bytes, mut steps) = (Vec::new(), 0u64, 0usize);
    while files.len() < WINDOW_FILES && bytes < WINDOW_BYTES && steps < WINDOW_STEPS {
        let Some((listing, next)) = stack.last_mut() else { break };
        let Some((_, node)) = listing.entries.get(*next) else {
            stack.pop();
            continue;
        };
        *next += 1;
        steps += 1;
        match node {
            Node::File { digest, size, .. } if *size > 0 && *size <= MAX_FILE && !held(digest) => {
                files.push((*digest, *size));
                bytes += size;
            }
            Node::Directory { digest, .. } => {
                if let Some(child) = listing_of(digest) {
                    stack.push((child, 0));
                }
            }
            _ => {}
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::castore::blobservice::{ChunkedBlobService, MemoryChunkStore};
    use crate::castore::{Directory, PathComponent};
    use tokio::io::AsyncWriteExt;

    fn name(s: &str) -> PathComponent {
        PathComponent::try_from(s).unwrap()
    }

    #[test]
    fn past_the_capacity_the_oldest_files_go_and_a_file_held_again_stays() {
        let mut files = Files::default();
        let hold = |files: &mut Files, digest: B3Digest, size: u64| {
            files.hold(digest, async { None }.boxed().shared(), size, false);
        };
        let (a, b) = (B3Digest::of(b"a"), B3Digest::of(b"b"));
        hold(&mut files, a, 1);
        hold(&mut files, b, 1);
        // `a` read to its end, then planned again: its first entry in the order is stale.
        files.forget(&a);
        hold(&mut files, a, 1);
        // One byte over the capacity in all: dropping `b` is enough.
        let count = CAPACITY_BYTES / MAX_FILE;
        for i in 0..count {
            let size = if i + 1 == count { MAX_FILE - 1 } else { MAX_FILE };
            hold(&mut files, B3Digest::of(&i.to_le_bytes()), size);
        }
        files.drop_oldest_past_capacity();
        assert!(files.bytes <= CAPACITY_BYTES);
        assert!(!files.by_digest.contains_key(&b), "the oldest file stayed");
        assert!(files.by_digest.contains_key(&a), "the stale entry dropped the file held again");
    }

    #[test]
    fn a_walk_continues_below_then_above_in_listing_order() {
        let file = |tag: u8, size: u64| Node::file(B3Digest::of(&[tag]), size, false);
        let mut sub = Directory::new();
        sub.add(name("s1"), file(3, 30)).unwrap();
        sub.add(name("s2"), file(4, MAX_FILE + 1)).unwrap();
        sub.add(name("s3"), file(5, 50)).unwrap();
        let mut here = Directory::new();
        here.add(name("a"), file(1, 10)).unwrap();
        here.add(name("b"), file(2, 20)).unwrap();
        here.add(name("c-sub"), Node::directory(sub.digest(), sub.size())).unwrap();
        here.add(name("d"), file(6, 60)).unwrap();
        let mut root = Directory::new();
        root.add(name("a-here"), Node::directory(here.digest(), here.size())).unwrap();
        root.add(name("b-missing"), Node::directory(B3Digest::of(b"not listed"), 1)).unwrap();
        root.add(name("c"), file(7, 70)).unwrap();
        let listings: HashMap<B3Digest, Arc<Listing>> =
            [&sub, &here, &root].iter().map(|d| (d.digest(), Arc::new(Listing::new(d)))).collect();
        let at = |d: &Directory| listings[&d.digest()].clone();
        // Reading `a` (index 0) of `here`, which is entry 0 of the root.
        let planned = walk_ahead(vec![(at(&root), 1), (at(&here), 1)], |d| listings.get(d).cloned(), |_| false);
        let tags: Vec<u64> = planned.iter().map(|(_, size)| *size / 10).collect();
        assert_eq!(tags, [2, 3, 5, 6, 7], "b, the sub's small files, d, then the root's c");
        let held = B3Digest::of(&[3]);
        let planned = walk_ahead(vec![(at(&root), 1), (at(&here), 1)], |d| listings.get(d).cloned(), |d| *d == held);
        let tags: Vec<u64> = planned.iter().map(|(_, size)| *size / 10).collect();
        assert_eq!(tags, [2, 5, 6, 7], "a file held already is passed over");
    }

    #[test]
    fn prefetched_files_are_served_and_a_wrong_size_is_read_the_normal_way() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let blob: Arc<dyn BlobService> = Arc::new(ChunkedBlobService::new(MemoryChunkStore::default()));
        let contents: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
        let digests: Vec<B3Digest> = runtime.block_on(async {
            let mut digests = Vec::new();
            for content in &contents {
                let mut w = blob.open_write().await;
                w.write_all(content).await.unwrap();
                digests.push(w.close().await.unwrap());
            }
            digests
        });
        let prefetcher = Prefetcher::default();
        let mut files: Vec<(B3Digest, u64)> = (0..5).map(|i| (digests[i], contents[i].len() as u64)).collect();
        // File 3 is said to be longer than its blob: not served from the prefetch.
        files[3].1 += 1;
        let absent = B3Digest::of(b"absent");
        files.push((absent, 10));
        assert!(prefetcher.wants_plan(&digests[0]), "nothing is prefetched yet");
        prefetcher.start(runtime.handle(), &blob, files);
        assert!(prefetcher.wants_plan(&digests[0]), "the window's first file plans the next window");
        assert!(!prefetcher.wants_plan(&digests[1]), "a later file of the window is held");
        assert!(prefetcher.holds(&digests[1]));
        let timeout = Duration::from_secs(10);
        for i in [0usize, 1, 2, 4] {
            let Prefetched::Data(data) = prefetcher.read(runtime.handle(), &digests[i], 0, 4096, timeout) else {
                panic!("file {i} not prefetched");
            };
            assert_eq!(&data[..], &contents[i][..]);
            // Served to its end, so forgotten.
            assert!(matches!(prefetcher.read(runtime.handle(), &digests[i], 0, 1, timeout), Prefetched::No));
        }
        assert!(matches!(prefetcher.read(runtime.handle(), &digests[3], 0, 4096, timeout), Prefetched::No));
        assert!(matches!(prefetcher.read(runtime.handle(), &absent, 0, 4096, timeout), Prefetched::No));
    }
}
