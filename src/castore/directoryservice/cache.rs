//! A read-through cache of two directory services: read the near one; on a miss fetch the
//! directory's whole closure from the far one (one recursive get), store it in the near one as
//! one validated graph, and answer from there.
//!
//! The closure is stored through the near service's ordinary putter, which validates every
//! directory and stores all of them or none: a far store failing midway leaves nothing in the
//! near one. Storing the closure (not the directory alone) keeps the near store's invariant that
//! a stored directory's children are stored too.

use std::collections::HashMap;

use async_trait::async_trait;
use futures::TryStreamExt;
use futures::stream::BoxStream;

use super::{DirectoryPutter, DirectoryService};
use crate::castore::{B3Digest, Cache, Directory, Error};

/// Directories from `near`, filled from `far` on a miss; new ones go where [`CacheWrites`](crate::castore::CacheWrites) says.
pub type CacheDirectoryService = Cache<dyn DirectoryService>;

impl Cache<dyn DirectoryService> {
    /// Copies `root` and everything below it from far to near; `false` when far does not have
    /// `root` either.
    async fn fill(&self, root: &B3Digest) -> Result<bool, Error> {
        let mut fetched: HashMap<B3Digest, Directory> = HashMap::new();
        let mut stream = self.far.get_recursive(root);
        loop {
            match stream.try_next().await {
                Ok(Some(directory)) => {
                    fetched.insert(directory.digest(), directory);
                }
                Ok(None) => break,
                // The root itself missing (nothing received yet) is a plain miss.
                Err(Error::NotFound(_)) if fetched.is_empty() => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        drop(stream);
        let mut putter = self.near.put_multiple_start();
        for directory in leaves_first(root, fetched)? {
            putter.put(directory).await?;
        }
        let stored = putter.close().await?;
        if stored != *root {
            return Err(Error::Corrupt(format!(
                "far store answered directory {root} with a graph whose root is {stored}; not cached"
            )));
        }
        tracing::debug!(%root, "directory closure cached from the far store");
        Ok(true)
    }
}

/// The directories of a closure in an order where each comes after all of its children, ending
/// with `root`. Fails when a directory refers to one the far store did not send.
fn leaves_first(root: &B3Digest, mut fetched: HashMap<B3Digest, Directory>) -> Result<Vec<Directory>, Error> {
    let mut order = Vec::with_capacity(fetched.len());
    // Depth-first with an explicit stack (a deep tree must not overflow ours): a directory is
    // emitted once every child is, i.e. when it is popped the second time.
    let mut stack: Vec<(B3Digest, bool)> = vec![(*root, false)];
    let mut emitted = std::collections::HashSet::new();
    while let Some((digest, children_done)) = stack.pop() {
        if emitted.contains(&digest) {
            continue;
        }
        if children_done {
            let directory = fetched
                .remove(&digest)
                .ok_or_else(|| Error::Corrupt(format!("far store sent directory {digest} twice below {root}")))?;
            emitted.insert(digest);
            order.push(directory);
            continue;
        }
        let directory = fetched.get(&digest).ok_or_else(|| {
            Error::NotFound(format!("directory {digest} below {root}: the far store did not send it"))
        })?;
        stack.push((digest, true));
        for (_, child, _) in directory.child_directories() {
            if !emitted.contains(child) {
                stack.push((*child, false));
            }
        }
    }
    Ok(order)
}

#[async_trait]
impl DirectoryService for Cache<dyn DirectoryService> {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        if let Some(directory) = self.near.get(digest).await? {
            crate::castore::cache::count("directory", true);
            return Ok(Some(directory));
        }
        crate::castore::cache::count("directory", false);
        if !self.fill(digest).await? {
            return Ok(None);
        }
        self.near.get(digest).await
    }

    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'_, Result<Directory, Error>> {
        let root = *root;
        Box::pin(async_stream::try_stream! {
            if self.near.get(&root).await?.is_none() && !self.fill(&root).await? {
                Err(Error::NotFound(format!("directory {root}")))?;
            }
            let mut near = self.near.get_recursive(&root);
            while let Some(directory) = near.try_next().await? {
                yield directory;
            }
        })
    }

    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        self.target().put_multiple_start()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::castore::CacheWrites;
    use crate::castore::directoryservice::{MemoryDirectoryStore, StoredDirectoryService};
    use crate::castore::{Node, PathComponent};

    fn dir_with(children: &[(&str, &Directory)]) -> Directory {
        let mut d = Directory::new();
        for (name, child) in children {
            let name = PathComponent::try_from(*name).unwrap();
            d.add(name, Node::directory(child.digest(), child.size())).unwrap();
        }
        d
    }

    /// A child referred to by a directory yielded after it (breadth-first) must still be
    /// stored before that directory.
    #[tokio::test]
    async fn fills_a_diamond_in_a_valid_order() {
        let leaf = Directory::new();
        let mid = dir_with(&[("leaf", &leaf)]);
        let root = dir_with(&[("a", &leaf), ("b", &mid)]);
        let far: Arc<dyn DirectoryService> = Arc::new(StoredDirectoryService::new(MemoryDirectoryStore::default()));
        let mut putter = far.put_multiple_start();
        for d in [&leaf, &mid, &root] {
            putter.put(d.clone()).await.unwrap();
        }
        assert_eq!(putter.close().await.unwrap(), root.digest());
        drop(putter);
        let near: Arc<dyn DirectoryService> = Arc::new(StoredDirectoryService::new(MemoryDirectoryStore::default()));
        let cache = CacheDirectoryService::new(near.clone(), far, CacheWrites::Far);
        assert_eq!(cache.get(&root.digest()).await.unwrap(), Some(root.clone()));
        for d in [&leaf, &mid, &root] {
            assert!(near.get(&d.digest()).await.unwrap().is_some(), "{} not cached", d.digest());
        }
    }
}
