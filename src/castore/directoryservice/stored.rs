//! The DirectoryService logic shared by local backends, over a plain key-value store of
//! validated directories.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use futures::stream::BoxStream;

use super::{DirectoryPutter, DirectoryService, GraphBuilder};
use crate::castore::inventory::{Removal, StoredStream};
use crate::castore::{B3Digest, Directory, Error};

/// Storage of validated directories by digest.
#[async_trait]
pub trait DirectoryStore: Send + Sync + 'static {
    /// The directory stored under `digest`. Implementations check that what they read decodes to
    /// a valid directory with that digest (Error::Corrupt otherwise).
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error>;

    /// Several directories at once, one result per digest in the order asked, each checked like
    /// [`DirectoryStore::get`]. A read-speed hook with a default (one `get` after the other); a
    /// store that reads many in one go (one read transaction, one trip to the blocking pool)
    /// overrides it and says so in [`DirectoryStore::gets_per_call`].
    async fn get_many(&self, digests: &[B3Digest]) -> Vec<Result<Option<Directory>, Error>> {
        let mut found = Vec::with_capacity(digests.len());
        for digest in digests {
            found.push(self.get(digest).await);
        }
        found
    }

    /// How many digests a recursive get hands to one [`DirectoryStore::get_many`] call: 1 (the
    /// default) for a store whose gets are independent round trips, which a recursive get then
    /// runs side by side instead.
    fn gets_per_call(&self) -> usize {
        1
    }

    /// Stores a whole validated graph atomically and durably: all of it or none.
    async fn insert_batch(&self, directories: Vec<(B3Digest, Directory)>) -> Result<(), Error>;

    /// Every stored directory (digest, encoded size, last write), for garbage collection. An
    /// insert of a directory already present counts as a write of it (see
    /// [`crate::castore::inventory`]).
    fn list(&self) -> StoredStream<'_>;

    /// Removes the directory stored under `digest` unless it was written at or after `cutoff`
    /// (checked as it is removed).
    async fn remove(&self, digest: &B3Digest, cutoff: SystemTime) -> Result<Removal, Error>;
}

/// Directory gets in flight during a recursive get. One at a time, a tree of a thousand
/// directories on an object store with 20 ms per GET would take 1000 x 20 ms = 20 s; sixteen at
/// a time, about 1.3 s (as wide as the tree allows).
const GET_RECURSIVE_PARALLEL: usize = 16;

/// A [`DirectoryService`] over a [`DirectoryStore`].
pub struct StoredDirectoryService<S> {
    store: Arc<S>,
}

impl<S: DirectoryStore> StoredDirectoryService<S> {
    /// Serves directories out of `store`.
    pub fn new(store: S) -> Self {
        Self { store: Arc::new(store) }
    }

    /// The store underneath, for garbage collection.
    pub fn directory_store(&self) -> Arc<dyn DirectoryStore> {
        self.store.clone()
    }
}

#[async_trait]
impl<S: DirectoryStore> DirectoryService for StoredDirectoryService<S> {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        self.store.get(digest).await
    }

    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'_, Result<Directory, Error>> {
        let root = *root;
        let per_call = self.store.gets_per_call().max(1);
        Box::pin(async_stream::try_stream! {
            // Breadth first, up to GET_RECURSIVE_PARALLEL calls in flight, answered in the
            // order asked: each directory still comes after the one that referred to it.
            let mut pending = VecDeque::from([(root, None::<B3Digest>)]);
            let mut seen = HashSet::from([root]);
            let mut in_flight = futures::stream::FuturesOrdered::new();
            loop {
                while in_flight.len() < GET_RECURSIVE_PARALLEL && !pending.is_empty() {
                    let wanted: Vec<(B3Digest, Option<B3Digest>)> =
                        pending.drain(..per_call.min(pending.len())).collect();
                    let store = self.store.clone();
                    in_flight.push_back(async move {
                        let digests: Vec<B3Digest> = wanted.iter().map(|(digest, _)| *digest).collect();
                        let got = store.get_many(&digests).await;
                        wanted.into_iter().zip(got).collect::<Vec<_>>()
                    });
                }
                let Some(answered) = futures::StreamExt::next(&mut in_flight).await else {
                    break;
                };
                for ((digest, parent), got) in answered {
                    let directory = got?.ok_or_else(|| match parent {
                        None => Error::NotFound(format!("directory {digest}")),
                        Some(parent) => Error::NotFound(format!(
                            "directory {digest}, referred to by directory {parent} below {root}"
                        )),
                    })?;
                    for (_, child, _) in directory.child_directories() {
                        if seen.insert(*child) {
                            pending.push_back((*child, Some(digest)));
                        }
                    }
                    yield directory;
                }
            }
        })
    }

    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        Box::new(StoredPutter { service: self, graph: GraphBuilder::default(), result: None })
    }
}

struct StoredPutter<'a, S> {
    service: &'a StoredDirectoryService<S>,
    graph: GraphBuilder,
    result: Option<Result<B3Digest, Error>>,
}

#[async_trait]
impl<S: DirectoryStore> DirectoryPutter for StoredPutter<'_, S> {
    async fn put(&mut self, directory: Directory) -> Result<(), Error> {
        if self.result.is_some() {
            return Err(Error::InvalidRequest("directory putter already closed".into()));
        }
        self.graph.add(directory, self.service).await
    }

    async fn close(&mut self) -> Result<B3Digest, Error> {
        if let Some(result) = &self.result {
            return result.clone();
        }
        let result = async {
            let (root, directories) = std::mem::take(&mut self.graph).finish()?;
            self.service.store.insert_batch(directories).await?;
            Ok(root)
        }
        .await;
        self.result = Some(result.clone());
        result
    }
}
