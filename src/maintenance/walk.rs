//! The closure of a store path's root node: its directories and files, with the path of each
//! below the store path for messages.

use std::collections::{HashMap, HashSet};

use futures::TryStreamExt;

use crate::castore::directoryservice::DirectoryService;
use crate::castore::{B3Digest, Error, Node};

/// A file of a store path's tree.
#[derive(Debug, Clone)]
pub(crate) struct FileRef {
    /// Where it is below the store path (`""` for a store path that is a file).
    pub path: String,
    /// Its blob.
    pub digest: B3Digest,
    /// Its size as the directory entry states it.
    pub size: u64,
}

/// What [`walk`] found below a root node.
#[derive(Debug, Default)]
pub(crate) struct Tree {
    /// Directories not in `seen` before, now added to it.
    pub directories: Vec<B3Digest>,
    /// Files of those directories (and the root, if it is a file).
    pub files: Vec<FileRef>,
}

/// Walks `root`'s closure, skipping directories in `seen` (their files were listed by an
/// earlier walk) and adding the new ones. A missing or invalid directory fails the walk with
/// the error naming it.
pub(crate) async fn walk(
    directory: &dyn DirectoryService,
    root: &Node,
    seen: &mut HashSet<B3Digest>,
) -> Result<Tree, Error> {
    let mut tree = Tree::default();
    match root {
        Node::File { digest, size, .. } => {
            tree.files.push(FileRef { path: String::new(), digest: *digest, size: *size });
        }
        Node::Symlink { .. } => {}
        Node::Directory { digest, .. } => {
            if seen.contains(digest) {
                return Ok(tree);
            }
            let mut paths: HashMap<B3Digest, String> = HashMap::from([(*digest, String::new())]);
            let mut directories = directory.get_recursive(digest);
            while let Some(dir) = directories.try_next().await? {
                let dir_digest = dir.digest();
                let here = paths.get(&dir_digest).cloned().unwrap_or_default();
                if !seen.insert(dir_digest) {
                    continue;
                }
                tree.directories.push(dir_digest);
                for (name, node) in dir.entries() {
                    let path = format!("{here}/{name}");
                    match node {
                        Node::Directory { digest, .. } => {
                            paths.entry(*digest).or_insert(path);
                        }
                        Node::File { digest, size, .. } => {
                            tree.files.push(FileRef { path, digest: *digest, size: *size });
                        }
                        Node::Symlink { .. } => {}
                    }
                }
            }
        }
    }
    Ok(tree)
}
