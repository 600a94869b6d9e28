//! The cache of directory listings, bounded by the number of entries it holds.
//!
//! Directories are content-addressed and immutable, so any listing can be dropped at any time
//! and fetched again from the DirectoryService: the cap holds even while the kernel keeps every
//! inode referenced. Eviction is least recently used, in batches (down to 3/4 of the cap) so
//! that the sort it needs runs once per quarter cap of inserted entries, not per insert.

use std::collections::HashMap;
use std::sync::Arc;

use crate::castore::B3Digest;

use super::inodes::Listing;

/// What a listing costs against the cap: its entries, plus one so that a flood of empty
/// directories is bounded too.
fn weight(listing: &Listing) -> usize {
    listing.entries.len() + 1
}

/// Listings by directory digest.
#[derive(Debug)]
pub(crate) struct ListingCache {
    map: HashMap<B3Digest, (Arc<Listing>, u64)>,
    /// Sum of the weights in `map`.
    entries: usize,
    /// Bumped on every use; a listing's stamp is the tick of its last use.
    tick: u64,
    /// Most entries kept; `usize::MAX` for no limit.
    cap: usize,
}

impl ListingCache {
    pub fn new(cap: usize) -> Self {
        Self { map: HashMap::new(), entries: 0, tick: 0, cap }
    }

    /// The listing with this digest, marked as just used.
    pub fn get(&mut self, digest: &B3Digest) -> Option<Arc<Listing>> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(digest).map(|(listing, used)| {
            *used = tick;
            listing.clone()
        })
    }

    /// Whether the listing is cached (without marking it used).
    #[cfg(test)]
    pub fn contains(&self, digest: &B3Digest) -> bool {
        self.map.contains_key(digest)
    }

    /// Caches a listing (a listing already cached stays as it is), then evicts past the cap. A
    /// listing larger than the whole cap is not kept at all: its caller still holds it.
    pub fn insert(&mut self, digest: B3Digest, listing: Arc<Listing>) {
        if self.map.contains_key(&digest) {
            return;
        }
        let w = weight(&listing);
        if w > self.cap {
            return;
        }
        self.tick += 1;
        self.entries += w;
        self.map.insert(digest, (listing, self.tick));
        if self.entries > self.cap {
            self.trim(self.cap - self.cap / 4);
        }
    }

    /// Drops a listing (its directory is no longer shown anywhere).
    pub fn remove(&mut self, digest: &B3Digest) {
        if let Some((listing, _)) = self.map.remove(digest) {
            self.entries -= weight(&listing);
        }
    }

    /// Evicts least recently used listings until at most `target` entries are left.
    fn trim(&mut self, target: usize) {
        let mut by_age: Vec<(u64, B3Digest)> = self.map.iter().map(|(d, (_, used))| (*used, *d)).collect();
        by_age.sort_unstable_by_key(|(used, _)| *used);
        for (_, digest) in by_age {
            if self.entries <= target {
                break;
            }
            self.remove(&digest);
        }
    }

    /// Number of cached listings.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Entries held (see [`weight`]).
    pub fn entries(&self) -> usize {
        self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::castore::{Directory, Node, PathComponent};

    fn listing(n: usize) -> Arc<Listing> {
        let mut dir = Directory::new();
        for i in 0..n {
            let name = PathComponent::try_from(bytes::Bytes::from(format!("f{i}"))).unwrap();
            dir.add(name, Node::File { digest: B3Digest::of(b"x"), size: 0, executable: false }).unwrap();
        }
        Arc::new(Listing::new(&dir))
    }

    #[test]
    fn cap_is_enforced_least_recently_used_first() {
        let mut cache = ListingCache::new(100);
        for i in 0..9u8 {
            cache.insert(B3Digest::of(&[i]), listing(9));
        }
        assert_eq!(cache.entries(), 90);
        // Used recently: survives the trim the next insert causes.
        assert!(cache.get(&B3Digest::of(&[0])).is_some());
        cache.insert(B3Digest::of(&[100]), listing(19));
        assert!(cache.entries() <= 100, "{}", cache.entries());
        assert!(cache.contains(&B3Digest::of(&[0])));
        assert!(cache.contains(&B3Digest::of(&[100])));
        assert!(!cache.contains(&B3Digest::of(&[1])), "oldest unused goes first");
        // Larger than the whole cap: not kept.
        cache.insert(B3Digest::of(&[200]), listing(200));
        assert!(!cache.contains(&B3Digest::of(&[200])));
        cache.remove(&B3Digest::of(&[0]));
        assert!(!cache.contains(&B3Digest::of(&[0])));
        let sum: usize = cache.map.values().map(|(l, _)| weight(l)).sum();
        assert_eq!(sum, cache.entries());
    }
}
