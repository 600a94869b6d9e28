//! Directory-order prefetch of small files.
//!
//! Reading a tree file by file (tar, cp -r, rsync) opens the files of a directory in listing
//! order, one after another; each small file then costs a full store round trip (chunk list,
//! then chunk) that nothing overlaps. When the files of a directory are read in order, the next
//! few small ones are fetched in the background, so their reads find the bytes waiting. Bounded:
//! a few files of at most [`MAX_FILE`] bytes each.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use tokio::io::AsyncReadExt;
use tokio::runtime::Handle;

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

    /// Starts fetching `(ino, digest, size)` files not fetched yet, on `runtime`.
    pub fn start(&self, runtime: &Handle, blob: &Arc<dyn BlobService>, files: Vec<(Ino, B3Digest, u64)>) {
        let mut state = self.files.lock();
        let (map, order) = &mut *state;
        for (ino, digest, size) in files {
            if map.contains_key(&ino) {
                continue;
            }
            let blob = blob.clone();
            let task = runtime.spawn(async move {
                let mut reader = blob.open_read(&digest).await.ok()??;
                let mut buf = Vec::with_capacity(size as usize);
                reader.read_to_end(&mut buf).await.ok()?;
                (buf.len() as u64 == size).then(|| Bytes::from(buf))
            });
            let fetch: Fetch = async move { task.await.ok().flatten() }.boxed().shared();
            map.insert(ino, fetch);
            order.push_back(ino);
            while order.len() > CAPACITY {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
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
