//! Validation of a directory graph uploaded leaves first (a DirectoryService Put stream).

use std::collections::{HashMap, HashSet};

use futures::TryStreamExt;

use super::DirectoryService;
use crate::castore::{B3Digest, Directory, Error};

/// Collects a leaves-first directory graph and checks it: every child directory was sent
/// earlier (or is already stored), every DirectoryNode.size is at least what the protocol text
/// requires, and every directory sent is reachable from the root (the last one).
#[derive(Default)]
pub struct GraphBuilder {
    directories: Vec<(B3Digest, Directory)>,
    /// Protocol-text size (entries below) of every directory sent or looked up so far.
    minimal_sizes: HashMap<B3Digest, u64>,
    sent: HashSet<B3Digest>,
}

impl GraphBuilder {
    /// Adds the next directory. `stored` is asked about children not sent in this graph.
    pub async fn add(&mut self, directory: Directory, stored: &dyn DirectoryService) -> Result<(), Error> {
        let digest = directory.digest();
        if self.sent.contains(&digest) {
            return Ok(());
        }
        for (name, child, size) in directory.child_directories() {
            if !self.minimal_sizes.contains_key(child) {
                self.learn_stored(child, stored).await.map_err(|e| match e {
                    Error::NotFound(_) => Error::InvalidRequest(format!(
                        "directory {digest}: entry {name:?} refers to directory {child}, which was neither sent before it nor is stored"
                    )),
                    other => other,
                })?;
            }
            let minimal = self.minimal_sizes[child];
            if size < minimal {
                return Err(Error::InvalidRequest(format!(
                    "directory {digest}: entry {name:?} has wrong size {size}: directory {child} has {minimal} entries below it"
                )));
            }
        }
        let minimal = directory.minimal_size(|child| self.minimal_sizes[child]);
        self.minimal_sizes.insert(digest, minimal);
        self.sent.insert(digest);
        self.directories.push((digest, directory));
        Ok(())
    }

    /// Computes the protocol-text sizes of an already stored directory and all below it.
    async fn learn_stored(&mut self, root: &B3Digest, stored: &dyn DirectoryService) -> Result<(), Error> {
        let below: Vec<Directory> = stored.get_recursive(root).try_collect().await?;
        let by_digest: HashMap<B3Digest, &Directory> = below.iter().map(|d| (d.digest(), d)).collect();
        // Post-order walk, so each directory's size is computed after all of its children's.
        let mut stack = vec![(*root, false)];
        while let Some((digest, children_done)) = stack.pop() {
            if self.minimal_sizes.contains_key(&digest) {
                continue;
            }
            let Some(directory) = by_digest.get(&digest) else {
                return Err(Error::NotFound(format!("directory {digest}")));
            };
            if children_done {
                let minimal = directory.minimal_size(|child| self.minimal_sizes.get(child).copied().unwrap_or(0));
                self.minimal_sizes.insert(digest, minimal);
            } else {
                stack.push((digest, true));
                for (_, child, _) in directory.child_directories() {
                    stack.push((*child, false));
                }
            }
        }
        Ok(())
    }

    /// Ends the graph: returns the root digest and the directories to store.
    pub fn finish(self) -> Result<(B3Digest, Vec<(B3Digest, Directory)>), Error> {
        let Some((root, _)) = self.directories.last() else {
            return Err(Error::InvalidRequest("no directories were sent".into()));
        };
        let root = *root;
        let by_digest: HashMap<&B3Digest, &Directory> = self.directories.iter().map(|(d, dir)| (d, dir)).collect();
        let mut reachable = HashSet::from([root]);
        let mut stack = vec![root];
        while let Some(digest) = stack.pop() {
            if let Some(directory) = by_digest.get(&digest) {
                for (_, child, _) in directory.child_directories() {
                    if reachable.insert(*child) {
                        stack.push(*child);
                    }
                }
            }
        }
        if let Some((stray, _)) = self.directories.iter().find(|(d, _)| !reachable.contains(d)) {
            return Err(Error::InvalidRequest(format!(
                "directory {stray} is not reachable from the root {root} (the last directory sent)"
            )));
        }
        Ok((root, self.directories))
    }
}
