//! Directory: the validated form of `tvix.castore.v1.Directory`.

use std::collections::BTreeMap;

use prost::Message;

use super::node::{InvalidNode, lossy};
use super::{B3Digest, Node, PathComponent};
use crate::proto::castore as proto;

/// A directory listing: names to nodes. Ordering and uniqueness of names are guaranteed by the
/// map, so every `Directory` encodes to the canonical protobuf form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    entries: BTreeMap<PathComponent, Node>,
}

/// Why a protobuf Directory is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDirectory {
    #[error(transparent)]
    Node(#[from] InvalidNode),
    #[error("entry {0:?} is not sorted after the entry before it in its list")]
    Unsorted(String),
    #[error("entry {0:?} appears more than once")]
    Duplicate(String),
    #[error("entry {0:?}: sizes below this directory overflow a 64-bit count")]
    SizeOverflow(String),
}

impl Directory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry; fails if the name is taken.
    pub fn add(&mut self, name: PathComponent, node: Node) -> Result<(), InvalidDirectory> {
        use std::collections::btree_map::Entry;
        match self.entries.entry(name) {
            Entry::Occupied(e) => Err(InvalidDirectory::Duplicate(e.key().to_string())),
            Entry::Vacant(e) => {
                e.insert(node);
                Ok(())
            }
        }
    }

    /// Entries in name order.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = (&PathComponent, &Node)> {
        self.entries.iter()
    }

    /// The node called `name`.
    pub fn get(&self, name: &[u8]) -> Option<&Node> {
        // PathComponent orders by bytes, so a lookup by a temporary key is exact.
        let key = PathComponent::try_from(name).ok()?;
        self.entries.get(&key)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// DirectoryNode.size for this directory as deployed tvix and snix compute and enforce it:
    /// the number of entries plus, per entry, 1 for a file or symlink and 1 + its size for a
    /// directory. (The protocol text defines a smaller value; see [`Self::minimal_size`].)
    pub fn size(&self) -> u64 {
        self.child_sizes().saturating_add(self.entries.len() as u64)
    }

    /// The smallest DirectoryNode.size a reference to this directory may carry: the protocol
    /// text's count of entries below, given `minimal_size_of` for each child directory.
    pub fn minimal_size(&self, mut minimal_size_of: impl FnMut(&B3Digest) -> u64) -> u64 {
        self.entries.values().fold(0u64, |acc, node| {
            let below = match node {
                Node::Directory { digest, .. } => 1u64.saturating_add(minimal_size_of(digest)),
                _ => 1,
            };
            acc.saturating_add(below)
        })
    }

    fn child_sizes(&self) -> u64 {
        self.entries.values().fold(0u64, |acc, node| {
            let below = match node {
                Node::Directory { size, .. } => size.saturating_add(1),
                _ => 1,
            };
            acc.saturating_add(below)
        })
    }

    /// Digests of the child directories, in name order.
    pub fn child_directories(&self) -> impl Iterator<Item = (&PathComponent, &B3Digest, u64)> {
        self.entries.iter().filter_map(|(name, node)| match node {
            Node::Directory { digest, size } => Some((name, digest, *size)),
            _ => None,
        })
    }

    /// BLAKE3 of the canonical protobuf encoding: this directory's address.
    pub fn digest(&self) -> B3Digest {
        B3Digest::of(&self.to_proto().encode_to_vec())
    }

    /// The canonical protobuf form.
    pub fn to_proto(&self) -> proto::Directory {
        let mut out = proto::Directory::default();
        for (name, node) in &self.entries {
            let name = name.to_bytes();
            match node.clone() {
                Node::Directory { digest, size } => {
                    out.directories.push(proto::DirectoryNode { name, digest: digest.into(), size })
                }
                Node::File { digest, size, executable } => {
                    out.files.push(proto::FileNode { name, digest: digest.into(), size, executable })
                }
                Node::Symlink { target } => out.symlinks.push(proto::SymlinkNode { name, target: target.to_bytes() }),
            }
        }
        out
    }

    /// Validates a protobuf Directory against every rule of the wire contract that can be
    /// checked without looking at other directories.
    pub fn from_proto(d: proto::Directory) -> Result<Self, InvalidDirectory> {
        let mut dir = Directory::new();
        let lists: [Vec<(&bytes::Bytes, Result<Node, InvalidNode>)>; 3] = [
            d.directories.iter().map(|n| (&n.name, Node::from_directory_proto(n))).collect(),
            d.files.iter().map(|n| (&n.name, Node::from_file_proto(n))).collect(),
            d.symlinks.iter().map(|n| (&n.name, Node::from_symlink_proto(n))).collect(),
        ];
        for list in lists {
            let mut previous: Option<&bytes::Bytes> = None;
            for (name, node) in list {
                let component = Node::entry_name(name)?;
                let node = node?;
                if let Some(prev) = previous {
                    if prev.as_ref() == name.as_ref() {
                        return Err(InvalidDirectory::Duplicate(lossy(name)));
                    }
                    if prev.as_ref() > name.as_ref() {
                        return Err(InvalidDirectory::Unsorted(lossy(name)));
                    }
                }
                previous = Some(name);
                dir.add(component, node)?;
            }
        }
        // Sizes come from the peer; refuse values whose sums would wrap, so that size() stays exact.
        let mut total: u64 = dir.entries.len() as u64;
        for (name, node) in &dir.entries {
            let below = match node {
                Node::Directory { size, .. } => size.checked_add(1),
                _ => Some(1),
            };
            total = below
                .and_then(|b| total.checked_add(b))
                .ok_or_else(|| InvalidDirectory::SizeOverflow(name.to_string()))?;
        }
        Ok(dir)
    }

    /// Decodes and validates a Directory from its protobuf encoding.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeDirectoryError> {
        let proto = proto::Directory::decode(buf)?;
        Ok(Self::from_proto(proto)?)
    }

    /// The canonical protobuf encoding.
    pub fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }
}

/// Why bytes could not be decoded into a valid Directory.
#[derive(Debug, thiserror::Error)]
pub enum DecodeDirectoryError {
    #[error("not a protobuf Directory: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error(transparent)]
    Invalid(#[from] InvalidDirectory),
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn file(name: &str) -> proto::FileNode {
        proto::FileNode {
            name: Bytes::copy_from_slice(name.as_bytes()),
            digest: Bytes::from(vec![7u8; 32]),
            size: 3,
            executable: false,
        }
    }

    #[test]
    fn size_matches_deployed_tvix() {
        let d = Directory::from_proto(proto::Directory { files: vec![file("a"), file("b")], ..Default::default() })
            .unwrap();
        assert_eq!(d.size(), 4);
        assert_eq!(d.minimal_size(|_| 0), 2);
    }

    #[test]
    fn rejects_unsorted_duplicate_and_cross_list_duplicates() {
        let unsorted = proto::Directory { files: vec![file("b"), file("a")], ..Default::default() };
        assert!(matches!(Directory::from_proto(unsorted), Err(InvalidDirectory::Unsorted(n)) if n == "a"));
        let dup = proto::Directory { files: vec![file("a"), file("a")], ..Default::default() };
        assert!(matches!(Directory::from_proto(dup), Err(InvalidDirectory::Duplicate(_))));
        let cross = proto::Directory {
            files: vec![file("a")],
            symlinks: vec![proto::SymlinkNode { name: "a".into(), target: "x".into() }],
            ..Default::default()
        };
        assert!(matches!(Directory::from_proto(cross), Err(InvalidDirectory::Duplicate(_))));
    }

    #[test]
    fn digest_is_blake3_of_canonical_encoding() {
        // The empty directory's digest is BLAKE3 of the empty string, as in tvix.
        assert_eq!(Directory::new().digest(), B3Digest::of(b""));
    }
}
