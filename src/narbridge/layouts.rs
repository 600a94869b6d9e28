//! NAR layouts of recently served store paths, so a NAR asked for again (by the next CI runner
//! substituting the same closure) is not laid out again: its directory graph fetched, decoded
//! and walked. A layout depends only on the root directory's digest (content-addressed, so
//! never outdated); the cache is bounded in bytes and drops the least recently used first.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::castore::B3Digest;
use crate::lru::WeightedLru;
use crate::nar::NarLayout;

/// Bytes of layouts kept: a small path's layout is a few KB (framing and one entry per file),
/// so this holds thousands of them.
const CAPACITY_BYTES: usize = 64 * 1024 * 1024;

/// Layouts by root directory digest, least recently used dropped first (down to 90 % of the
/// bound); a layout larger than a quarter of the bound is not kept.
pub struct LayoutCache {
    inner: Mutex<WeightedLru<B3Digest, Arc<NarLayout>>>,
}

impl Default for LayoutCache {
    fn default() -> Self {
        let lru =
            WeightedLru::new(CAPACITY_BYTES, CAPACITY_BYTES / 10 * 9, CAPACITY_BYTES / 4, |layout: &Arc<NarLayout>| {
                layout.memory()
            });
        Self { inner: Mutex::new(lru) }
    }
}

impl LayoutCache {
    /// The layout of the tree below `root`, marked as just used.
    pub fn get(&self, root: &B3Digest) -> Option<Arc<NarLayout>> {
        self.inner.lock().get(root)
    }

    /// Keeps `layout` for `root`, dropping the least recently used layouts past the bound.
    pub fn insert(&self, root: B3Digest, layout: Arc<NarLayout>) {
        self.inner.lock().insert(root, layout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::castore::directoryservice::{DirectoryService, MemoryDirectoryStore, StoredDirectoryService};
    use crate::castore::{Directory, Node, PathComponent};

    #[tokio::test]
    async fn layouts_are_kept_by_root_and_the_oldest_dropped_past_the_bound() {
        let directories = StoredDirectoryService::new(MemoryDirectoryStore::default());
        let mut dir = Directory::new();
        // A name as long as a path component gets: about 256 bytes of framing per entry.
        for i in 0..1000u32 {
            let name = PathComponent::try_from(format!("{i:0>250}").as_str()).unwrap();
            dir.add(name, Node::file(B3Digest::of(&i.to_le_bytes()), 1, false)).unwrap();
        }
        let root = directories.put(dir.clone()).await.unwrap();
        let layout = Arc::new(NarLayout::of(&Node::directory(root, dir.size()), &directories).await.unwrap());
        let weight = layout.memory();
        assert!(weight > 250_000, "{weight}");
        let cache = LayoutCache::default();
        let keys: Vec<B3Digest> = (0..CAPACITY_BYTES / weight + 10).map(|i| B3Digest::of(&i.to_le_bytes())).collect();
        cache.insert(keys[0], layout.clone());
        for key in &keys[1..] {
            // The first key stays in use, so it outlives the ones inserted after it.
            assert!(cache.get(&keys[0]).is_some());
            cache.insert(*key, layout.clone());
        }
        assert!(cache.get(&keys[0]).is_some(), "the layout in use was dropped");
        assert!(cache.get(&keys[1]).is_none(), "the least recently used layout was kept");
        assert!(cache.get(keys.last().unwrap()).is_some(), "the newest layout was dropped");
        assert!(cache.inner.lock().held() <= CAPACITY_BYTES);
    }
}
