//! [`RootNodes`]: where a filesystem over castore finds its top-level entries. Below them
//! everything is castore (directories and blobs by digest); only the entries of the root come
//! from somewhere else, for a Nix store its PathInfos.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use super::{Directory, Error, Node};

/// The entries of a filesystem's root, by name.
#[async_trait]
pub trait RootNodes: Send + Sync {
    /// The root entry named `name`; `None` when there is none by that name (a name that could
    /// never be one is simply absent).
    async fn get(&self, name: &[u8]) -> Result<Option<RootNode>, Error>;

    /// Every root entry with its name, in no particular order.
    fn list(&self) -> BoxStream<'_, Result<(Bytes, Node), Error>>;
}

/// One root entry, as [`RootNodes::get`] finds it.
pub struct RootNode {
    /// The entry's node.
    pub node: Node,
    /// The directory graph below a directory node, root first and each directory after one
    /// that refers to it (checked as they arrive), where the source sent it along in the same
    /// round trip; `None` when it did not, and the caller fetches directories as it needs them.
    pub graph: Option<BoxStream<'static, Result<Directory, Error>>>,
}
