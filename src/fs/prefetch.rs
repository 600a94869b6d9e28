//! Directory-order prefetch of small files.
//!
//! Reading a tree file by file (tar, cp -r, rsync) opens the files of a directory in listing
//! order, one after another; each small file then costs a full store round trip (chunk list,
//! then chunk) that nothing overlaps. When the files of a directory are read in order, the next
//! few small ones are fetched in the background (with one batched read: one call to a daemon),
//! so their reads find the bytes waiting. Bounded: a few files of at most [`MAX_FILE`] bytes
//! each.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::Ino;
use crate::castore::B3Digest;
use crate::castore::blobservice::BlobService;

/// Largest file prefetched.
pub(crate) const MAX_FILE: u64 = 512 * 1024;
/// How many files ahead of the one being read are prefetched.
pub(crate) const AHEAD: usize = 8;
/// Most prefetched files kept at once (unread ones are dropped oldest first).
const CAPACITY: usize = 32;
/// Directories whose read order is remembered.
const DIRECTORIES: usize = 256;

type Fetch = Shared<BoxFuture<'static, Option<Bytes>>>;

/// What [`Prefetcher::read`] found.
pub(crate) enum Prefetched {
    /// The bytes asked for.
    Data(Bytes),
    /// Not prefetched (or the fetch failed): read the normal way.
    No,
    /// The fetch did not finish within the timeout: the store hangs.
    TimedOut,
}

/// Prefetched and prefetching files.
#[derive(Default)]
pub(crate) struct Prefetcher {
    files: Mutex<(HashMap<Ino, Fetch>, VecDeque<Ino>)>,
    /// Per directory, the index of the file last read from its start.
    last_read: Mutex<HashMap<Ino, usize>>,
}

impl Prefetcher {
    /// Records that the file at `index` in directory `parent` is read from its start; returns
    /// whether that continues an in-order pass over the directory (so prefetching pays).
    pub fn note_read(&self, parent: Ino, index: usize) -> bool {
        let mut last = self.last_read.lock();
        if last.len() >= DIRECTORIES && !last.contains_key(&parent) {
            last.clear();
        }
        let previous = last.insert(parent, index);
        matches!(previous, Some(p) if p < index && index - p <= AHEAD + 1)
    }

    /// Starts fetching `(ino, digest, size)` files not fetched yet, on `runtime`: all of them
    /// with one [`BlobService::read_many`] (one batched call to a daemon), each file's bytes
    /// handed to its reader as soon as they arrived.
    pub fn start(&self, runtime: &Handle, blob: &Arc<dyn BlobService>, files: Vec<(Ino, B3Digest, u64)>) {
        let mut wanted = Vec::new();
        let mut waiting = Vec::new();
        {
            let mut state = self.files.lock();
            let (map, order) = &mut *state;
            for (ino, digest, size) in files {
                if map.contains_key(&ino) {
                    continue;
                }
                let (tx, rx) = oneshot::channel::<Option<Bytes>>();
                // A fetch given up (its sender dropped) reads as failed: read the normal way.
                let fetch: Fetch = async move { rx.await.ok().flatten() }.boxed().shared();
                map.insert(ino, fetch);
                order.push_back(ino);
                while order.len() > CAPACITY {
                    if let Some(old) = order.pop_front() {
                        map.remove(&old);
                    }
                }
                wanted.push(digest);
                waiting.push((tx, size));
            }
        }
        if wanted.is_empty() {
            return;
        }
        let blob = blob.clone();
        runtime.spawn(async move {
            let mut results = blob.read_many(wanted);
            let mut waiting = waiting.into_iter();
            while let Some((_, result)) = results.next().await {
                let Some((tx, size)) = waiting.next() else { break };
                let _ = tx.send(result.ok().flatten().filter(|data| data.len() as u64 == size));
            }
        });
    }

    /// The bytes `offset..offset+size` of `ino` if it was prefetched, waiting at most
    /// `timeout` for a fetch under way. A file is forgotten once its end was served or its
    /// fetch failed (the caller then reads it the normal way).
    pub fn read(&self, runtime: &Handle, ino: Ino, offset: u64, size: u32, timeout: Duration) -> Prefetched {
        let Some(fetch) = self.files.lock().0.get(&ino).cloned() else {
            return Prefetched::No;
        };
        let data = match runtime.block_on(async move { tokio::time::timeout(timeout, fetch).await }) {
            Ok(Some(data)) => data,
            Ok(None) => {
                self.forget(ino);
                return Prefetched::No;
            }
            Err(_) => {
                self.forget(ino);
                return Prefetched::TimedOut;
            }
        };
        let len = data.len() as u64;
        let start = offset.min(len);
        let end = offset.saturating_add(u64::from(size)).min(len);
        if end == len {
            self.forget(ino);
        }
        Prefetched::Data(data.slice(start as usize..end as usize))
    }

    fn forget(&self, ino: Ino) {
        let mut state = self.files.lock();
        let (map, order) = &mut *state;
        if map.remove(&ino).is_some() {
            order.retain(|i| *i != ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::castore::blobservice::{ChunkedBlobService, MemoryChunkStore};
    use tokio::io::AsyncWriteExt;

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
        let mut files: Vec<(Ino, B3Digest, u64)> =
            (0..5).map(|i| (10 + i as Ino, digests[i], contents[i].len() as u64)).collect();
        // File 13 is said to be longer than its blob: not served from the prefetch.
        files[3].2 += 1;
        let absent = B3Digest::of(b"absent");
        files.push((20, absent, 10));
        prefetcher.start(runtime.handle(), &blob, files);
        let timeout = Duration::from_secs(10);
        for i in [0usize, 1, 2, 4] {
            let Prefetched::Data(data) = prefetcher.read(runtime.handle(), 10 + i as Ino, 0, 4096, timeout) else {
                panic!("file {i} not prefetched");
            };
            assert_eq!(&data[..], &contents[i][..]);
            // Served to its end, so forgotten.
            assert!(matches!(prefetcher.read(runtime.handle(), 10 + i as Ino, 0, 1, timeout), Prefetched::No));
        }
        assert!(matches!(prefetcher.read(runtime.handle(), 13, 0, 4096, timeout), Prefetched::No));
        assert!(matches!(prefetcher.read(runtime.handle(), 20, 0, 4096, timeout), Prefetched::No));
    }
}
