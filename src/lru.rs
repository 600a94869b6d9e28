//! A map bounded by the total weight of its values, least recently used dropped first: the
//! mount's directory listings and nar-bridge's NAR layouts. Values are content-addressed
//! (immutable), so any of them can be dropped at any time and computed again. Eviction runs in
//! batches, down to a low-water mark, so the sort it needs runs once per many inserts, not per
//! insert.

use std::collections::HashMap;
use std::hash::Hash;

/// Values by key, bounded by the sum of their weights.
#[derive(Debug)]
pub struct WeightedLru<K, V> {
    map: HashMap<K, (V, u64)>,
    /// Sum of the weights in `map`.
    held: usize,
    /// Bumped on every use; a value's stamp is the tick of its last use.
    tick: u64,
    /// Most weight kept; `usize::MAX` for no limit.
    cap: usize,
    /// What an eviction brings the weight down to.
    low_water: usize,
    /// Heaviest value kept: a heavier one is not cached at all (its caller still holds it).
    largest: usize,
    weight: fn(&V) -> usize,
}

impl<K: Hash + Eq + Copy, V: Clone> WeightedLru<K, V> {
    /// An empty map holding at most `cap` of weight, evicting down to `low_water`, and not
    /// keeping a value heavier than `largest`.
    pub fn new(cap: usize, low_water: usize, largest: usize, weight: fn(&V) -> usize) -> Self {
        Self { map: HashMap::new(), held: 0, tick: 0, cap, low_water, largest, weight }
    }

    /// The value under `key`, marked as just used.
    pub fn get(&mut self, key: &K) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(key).map(|(value, used)| {
            *used = tick;
            value.clone()
        })
    }

    /// Whether `key` has a value (without marking it used).
    pub fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// Keeps `value` under `key` (a value already there stays as it is), then evicts past the
    /// cap.
    pub fn insert(&mut self, key: K, value: V) {
        if self.map.contains_key(&key) {
            return;
        }
        let w = (self.weight)(&value);
        if w > self.largest {
            return;
        }
        self.tick += 1;
        self.held += w;
        self.map.insert(key, (value, self.tick));
        if self.held > self.cap {
            self.trim(self.low_water);
        }
    }

    /// Drops the value under `key`.
    pub fn remove(&mut self, key: &K) {
        if let Some((value, _)) = self.map.remove(key) {
            self.held -= (self.weight)(&value);
        }
    }

    /// Evicts least recently used values until at most `target` of weight is left.
    fn trim(&mut self, target: usize) {
        let mut by_age: Vec<(u64, K)> = self.map.iter().map(|(k, (_, used))| (*used, *k)).collect();
        by_age.sort_unstable_by_key(|(used, _)| *used);
        for (_, key) in by_age {
            if self.held <= target {
                break;
            }
            self.remove(&key);
        }
    }

    /// Number of values held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Weight held.
    pub fn held(&self) -> usize {
        self.held
    }
}
