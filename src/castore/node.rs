//! Nodes: what a directory entry (or a store path's root) points at.

use bytes::Bytes;

use super::{B3Digest, PathComponent};

/// The content a name refers to. The name itself lives in the containing [`super::Directory`]
/// (or, for a store path's root, in the PathInfo's store path).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Node {
    /// A directory, by the digest of its [`super::Directory`].
    Directory {
        /// BLAKE3 of the child Directory's canonical encoding.
        digest: B3Digest,
        /// DirectoryNode.size as deployed tvix/snix compute it (see [`super::Directory::size`]).
        size: u64,
    },
    /// A regular file.
    File {
        /// BLAKE3 of the contents.
        digest: B3Digest,
        /// Length of the contents in bytes.
        size: u64,
        /// Whether the executable bit is set.
        executable: bool,
    },
    /// A symbolic link.
    Symlink {
        /// The link target: non-empty, no NUL byte.
        target: SymlinkTarget,
    },
}

/// A validated symlink target: non-empty, no NUL byte, at most 4095 bytes (PATH_MAX - 1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SymlinkTarget(Bytes);

/// Longest symlink target we accept; Linux refuses longer ones in `symlink(2)`.
pub const MAX_SYMLINK_TARGET: usize = 4095;

/// Why a byte string is not a valid symlink target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSymlinkTarget {
    #[error("symlink target is empty")]
    Empty,
    #[error("symlink target contains a NUL byte")]
    Nul,
    #[error("symlink target is {0} bytes long, more than {MAX_SYMLINK_TARGET}")]
    TooLong(usize),
}

impl SymlinkTarget {
    /// The raw target bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The target as shared bytes.
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }
}

impl TryFrom<Bytes> for SymlinkTarget {
    type Error = InvalidSymlinkTarget;

    fn try_from(target: Bytes) -> Result<Self, Self::Error> {
        if target.is_empty() {
            return Err(InvalidSymlinkTarget::Empty);
        }
        if target.contains(&0) {
            return Err(InvalidSymlinkTarget::Nul);
        }
        if target.len() > MAX_SYMLINK_TARGET {
            return Err(InvalidSymlinkTarget::TooLong(target.len()));
        }
        Ok(Self(target))
    }
}

impl TryFrom<&[u8]> for SymlinkTarget {
    type Error = InvalidSymlinkTarget;

    fn try_from(target: &[u8]) -> Result<Self, Self::Error> {
        Self::try_from(Bytes::copy_from_slice(target))
    }
}

/// Why a protobuf node is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidNode {
    #[error("entry {name:?}: invalid name: {source}")]
    Name { name: String, source: super::path_component::InvalidName },
    #[error("entry {name:?}: invalid digest: {source}")]
    Digest { name: String, source: super::digest::InvalidDigestLen },
    #[error("entry {name:?}: {source}")]
    SymlinkTarget { name: String, source: InvalidSymlinkTarget },
    #[error("node has none of directory, file or symlink set")]
    Empty,
}

impl Node {
    /// Builds a directory node.
    pub fn directory(digest: B3Digest, size: u64) -> Self {
        Node::Directory { digest, size }
    }

    /// Builds a file node.
    pub fn file(digest: B3Digest, size: u64, executable: bool) -> Self {
        Node::File { digest, size, executable }
    }

    /// Parses a `tvix.castore.v1.Node`, returning its name (unvalidated: its rules depend on
    /// where the node stands) and the validated node.
    pub fn from_proto(node: crate::proto::castore::Node) -> Result<(Bytes, Node), InvalidNode> {
        use crate::proto::castore::node::Node as P;
        match node.node {
            Some(P::Directory(d)) => Ok((d.name.clone(), Node::from_directory_proto(&d)?)),
            Some(P::File(f)) => Ok((f.name.clone(), Node::from_file_proto(&f)?)),
            Some(P::Symlink(s)) => Ok((s.name.clone(), Node::from_symlink_proto(&s)?)),
            None => Err(InvalidNode::Empty),
        }
    }

    /// Serialises to a `tvix.castore.v1.Node` carrying `name`.
    pub fn into_proto(self, name: Bytes) -> crate::proto::castore::Node {
        use crate::proto::castore::{self as p, node::Node as P};
        let node = match self {
            Node::Directory { digest, size } => P::Directory(p::DirectoryNode { name, digest: digest.into(), size }),
            Node::File { digest, size, executable } => {
                P::File(p::FileNode { name, digest: digest.into(), size, executable })
            }
            Node::Symlink { target } => P::Symlink(p::SymlinkNode { name, target: target.to_bytes() }),
        };
        p::Node { node: Some(node) }
    }

    pub(crate) fn from_directory_proto(d: &crate::proto::castore::DirectoryNode) -> Result<Node, InvalidNode> {
        let digest =
            B3Digest::try_from(&d.digest).map_err(|source| InvalidNode::Digest { name: lossy(&d.name), source })?;
        Ok(Node::Directory { digest, size: d.size })
    }

    pub(crate) fn from_file_proto(f: &crate::proto::castore::FileNode) -> Result<Node, InvalidNode> {
        let digest =
            B3Digest::try_from(&f.digest).map_err(|source| InvalidNode::Digest { name: lossy(&f.name), source })?;
        Ok(Node::File { digest, size: f.size, executable: f.executable })
    }

    pub(crate) fn from_symlink_proto(s: &crate::proto::castore::SymlinkNode) -> Result<Node, InvalidNode> {
        let target = SymlinkTarget::try_from(s.target.clone())
            .map_err(|source| InvalidNode::SymlinkTarget { name: lossy(&s.name), source })?;
        Ok(Node::Symlink { target })
    }

    /// Validates `name` as a directory entry name, for error reporting in the node's context.
    pub(crate) fn entry_name(name: &Bytes) -> Result<PathComponent, InvalidNode> {
        PathComponent::try_from(name.clone()).map_err(|source| InvalidNode::Name { name: lossy(name), source })
    }
}

pub(crate) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
