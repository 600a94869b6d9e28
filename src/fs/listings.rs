//! The cache of directory listings, bounded by the number of entries it holds.
//!
//! Directories are content-addressed and immutable, so any listing can be dropped at any time
//! and fetched again from the DirectoryService: the cap holds even while the kernel keeps every
//! inode referenced. Eviction is least recently used, in batches (down to 3/4 of the cap) so
//! that the sort it needs runs once per quarter cap of inserted entries, not per insert
//! ([`WeightedLru`]).

use std::sync::Arc;

use crate::castore::B3Digest;
use crate::lru::WeightedLru;

use super::inodes::Listing;

/// What a listing costs against the cap: its entries, plus one so that a flood of empty
/// directories is bounded too.
fn weight(listing: &Listing) -> usize {
    listing.entries.len() + 1
}

/// Listings by directory digest, at most `cap` entries in all (see [`weight`]); evictions go
/// down to 3/4 of the cap, and a listing larger than the whole cap is not kept at all.
pub(crate) type ListingCache = WeightedLru<B3Digest, Arc<Listing>>;

/// A listing cache of at most `cap` entries.
pub(crate) fn listing_cache(cap: usize) -> ListingCache {
    WeightedLru::new(cap, cap - cap / 4, cap, |listing: &Arc<Listing>| weight(listing))
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
        let mut cache = listing_cache(100);
        for i in 0..9u8 {
            cache.insert(B3Digest::of(&[i]), listing(9));
        }
        assert_eq!(cache.held(), 90);
        // Used recently: survives the trim the next insert causes.
        assert!(cache.get(&B3Digest::of(&[0])).is_some());
        cache.insert(B3Digest::of(&[100]), listing(19));
        assert!(cache.held() <= 100, "{}", cache.held());
        assert!(cache.contains(&B3Digest::of(&[0])));
        assert!(cache.contains(&B3Digest::of(&[100])));
        assert!(!cache.contains(&B3Digest::of(&[1])), "oldest unused goes first");
        // Larger than the whole cap: not kept.
        cache.insert(B3Digest::of(&[200]), listing(200));
        assert!(!cache.contains(&B3Digest::of(&[200])));
        cache.remove(&B3Digest::of(&[0]));
        assert!(!cache.contains(&B3Digest::of(&[0])));
        let kept: Vec<u8> = (0..=200u8).filter(|i| cache.contains(&B3Digest::of(&[*i]))).collect();
        let sum: usize = kept.iter().map(|i| weight(&cache.get(&B3Digest::of(&[*i])).unwrap())).sum();
        assert_eq!(sum, cache.held());
    }
}
