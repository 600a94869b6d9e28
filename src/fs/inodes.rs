//! The inode table: numbers handed out once and never reused while the filesystem lives.
//!
//! A directory's children get a contiguous block of numbers the first time any of them is
//! needed, so a child's number is `block start + its index in the sorted listing`: no map from
//! (parent, name) to inode is needed, and numbers stay stable without reference counting.
//! Every position in the tree gets its own inode (no sharing between equal subtrees): Linux
//! does not allow one directory inode under two names, and per-position inodes keep `..` exact.

use std::collections::HashMap;

use crate::castore::{Directory, Node, PathComponent};
use crate::storepath::DIGEST_LEN;

use super::{Ino, ROOT_INO};

/// A directory's entries in name order, as the core serves them.
#[derive(Debug)]
pub(crate) struct Listing {
    /// Entries sorted by name bytes.
    pub entries: Vec<(PathComponent, Node)>,
    /// Number of child directories (for the link count).
    pub subdirs: u32,
}

impl Listing {
    pub fn new(dir: &Directory) -> Self {
        let entries: Vec<(PathComponent, Node)> =
            dir.entries().map(|(name, node)| (name.clone(), node.clone())).collect();
        let subdirs = entries.iter().filter(|(_, n)| matches!(n, Node::Directory { .. })).count();
        Self { entries, subdirs: u32::try_from(subdirs).unwrap_or(u32::MAX) }
    }

    /// Index of the entry called `name`.
    pub fn find(&self, name: &[u8]) -> Option<usize> {
        self.entries.binary_search_by(|(n, _)| n.as_ref().cmp(name)).ok()
    }
}

/// What one inode number stands for.
#[derive(Debug)]
pub(crate) enum Slot {
    /// The mount root.
    Root,
    /// A node of some store path.
    Node {
        node: Node,
        parent: Ino,
        /// First inode of this directory's children block, once allocated.
        children: Option<Ino>,
    },
}

/// All inodes handed out so far.
#[derive(Debug)]
pub(crate) struct InodeTable {
    /// Slot of inode `n` is at index `n - 1`.
    slots: Vec<Slot>,
    /// Store paths found in the root: digest → (name, inode).
    roots: HashMap<[u8; DIGEST_LEN], (String, Ino)>,
}

impl InodeTable {
    pub fn new() -> Self {
        Self { slots: vec![Slot::Root], roots: HashMap::new() }
    }

    pub fn get(&self, ino: Ino) -> Option<&Slot> {
        let index = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.slots.get(index)
    }

    pub fn len(&self) -> u64 {
        self.slots.len() as u64
    }

    fn next_ino(&self) -> Ino {
        self.slots.len() as Ino + 1
    }

    /// The inode of the store path with this digest, if it was found before.
    pub fn root_child(&self, digest: &[u8; DIGEST_LEN]) -> Option<(&str, Ino)> {
        self.roots.get(digest).map(|(name, ino)| (name.as_str(), *ino))
    }

    /// Gives the store path `digest`/`name` with root node `node` an inode (once).
    pub fn add_root_child(&mut self, digest: [u8; DIGEST_LEN], name: &str, node: Node) -> Ino {
        if let Some((_, ino)) = self.roots.get(&digest) {
            return *ino;
        }
        let ino = self.next_ino();
        self.slots.push(Slot::Node { node, parent: ROOT_INO, children: None });
        self.roots.insert(digest, (name.to_string(), ino));
        ino
    }

    /// The first inode of `parent`'s children, allocating the block from `listing` on first use.
    /// `parent` must be a directory slot.
    pub fn children_of(&mut self, parent: Ino, listing: &Listing) -> Option<Ino> {
        let next = self.next_ino();
        let index = usize::try_from(parent.checked_sub(1)?).ok()?;
        match self.slots.get_mut(index)? {
            Slot::Node { children: Some(base), .. } => return Some(*base),
            Slot::Node { children: children @ None, node: Node::Directory { .. }, .. } => {
                *children = Some(next);
            }
            _ => return None,
        }
        self.slots.extend(
            listing
                .entries
                .iter()
                .map(|(_, node)| Slot::Node { node: node.clone(), parent, children: None }),
        );
        Some(next)
    }

    /// The first inode of `parent`'s children if already allocated.
    pub fn children_base(&self, parent: Ino) -> Option<Ino> {
        match self.get(parent)? {
            Slot::Node { children, .. } => *children,
            Slot::Root => None,
        }
    }
}
