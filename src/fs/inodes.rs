//! The inode table: one slot per inode the kernel (or an open handle) may still refer to,
//! freed once nobody does, so its size follows what the kernel keeps rather than everything
//! ever walked.
//!
//! FUSE reference counting: every reply that hands the kernel an inode (lookup, each
//! readdirplus entry other than `.`/`..`) adds one to the inode's lookup count, and
//! FORGET/BATCH_FORGET take counts away. A slot is freed when its lookup count is 0, no handle
//! is open on it and no live slot names it as parent (so `..` and the parent's listing stay
//! reachable for every live inode). Slots the kernel was never told about (plain readdir,
//! the root listing) start unreferenced and are freed after [`IDLE_SLOTS`] more of them.
//!
//! Numbers: slot index `i` in generation `g` is inode `g << 32 | (i + 1)`. A freed index is
//! reused with the next generation, so a number is never handed out twice (until a single
//! index is reused 2^32 times) while the table stays as dense as the live set: a `Vec` of
//! ~88-byte cells, where a hash map keyed by inode would round its 500,000 live entries up
//! to 2^20 buckets and double that. The kernel may re-look-up a forgotten name and then gets
//! the new number; it never sees an old number come back for another node.
//!
//! Every position in the tree gets its own inode (no sharing between equal subtrees): Linux
//! does not allow one directory inode under two names, and per-position inodes keep `..` exact.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::castore::{B3Digest, Directory, Node, PathComponent};

use super::{Ino, ROOT_INO};

/// How many never-referenced slots (from plain readdir or the root listing) are kept before
/// the oldest is freed: only enough that a readdir's `d_ino` usually matches a stat right
/// after it.
pub(crate) const IDLE_SLOTS: usize = 4096;

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

/// What one live inode number stands for.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The node; `None` for the mount root.
    pub node: Option<Node>,
    /// Parent directory (the root for store paths and for the root itself).
    pub parent: Ino,
    /// Position in the parent's listing (0 for store paths and the root).
    pub index: u32,
    /// Lookups the kernel holds.
    nlookup: u64,
    /// Open file and directory handles.
    opens: u32,
    /// Live slots whose parent this is.
    children: u32,
}

impl Slot {
    fn unreferenced(&self) -> bool {
        self.nlookup == 0 && self.opens == 0 && self.children == 0
    }
}

#[derive(Debug)]
struct Cell {
    generation: u32,
    slot: Option<Slot>,
}

/// What a change to the table freed, for the caller to drop from its other caches.
#[derive(Debug, Default)]
pub(crate) struct Freed {
    /// Digests of freed directories no live slot shows any more: their listings are dead
    /// weight (only a new lookup could need them again).
    pub listings: Vec<B3Digest>,
}

/// All live inodes.
#[derive(Debug)]
pub(crate) struct InodeTable {
    cells: Vec<Cell>,
    /// Indices of freed cells.
    free: Vec<u32>,
    live: usize,
    /// Per live directory slot with live children: listing index → child inode (0: none).
    kids: HashMap<Ino, Box<[Ino]>>,
    /// Entries found in the root: name → inode.
    roots: HashMap<Bytes, Ino>,
    /// The other way round, to drop a freed root entry from `roots` without a scan.
    root_names: HashMap<Ino, Bytes>,
    /// Live directory slots per directory digest, to know when a listing is no longer shown.
    dir_slots: HashMap<B3Digest, u32>,
    /// Slots created without a reference, oldest first (may have gained one since).
    idle: VecDeque<Ino>,
    /// When false the table only grows (eviction disabled): forgets are ignored.
    evict: bool,
}

fn split(ino: Ino) -> Option<(usize, u32)> {
    let index = usize::try_from((ino & 0xffff_ffff).checked_sub(1)?).ok()?;
    Some((index, (ino >> 32) as u32))
}

fn join(index: usize, generation: u32) -> Ino {
    (u64::from(generation) << 32) | (index as u64 + 1)
}

impl InodeTable {
    pub fn new(evict: bool) -> Self {
        let root = Slot { node: None, parent: ROOT_INO, index: 0, nlookup: 1, opens: 0, children: 0 };
        Self {
            cells: vec![Cell { generation: 0, slot: Some(root) }],
            free: Vec::new(),
            live: 1,
            kids: HashMap::new(),
            roots: HashMap::new(),
            root_names: HashMap::new(),
            dir_slots: HashMap::new(),
            idle: VecDeque::new(),
            evict,
        }
    }

    pub fn get(&self, ino: Ino) -> Option<&Slot> {
        let (index, generation) = split(ino)?;
        let cell = self.cells.get(index)?;
        if cell.generation != generation {
            return None;
        }
        cell.slot.as_ref()
    }

    fn get_mut(&mut self, ino: Ino) -> Option<&mut Slot> {
        let (index, generation) = split(ino)?;
        let cell = self.cells.get_mut(index)?;
        if cell.generation != generation {
            return None;
        }
        cell.slot.as_mut()
    }

    /// Live inodes, the root included.
    pub fn len(&self) -> usize {
        self.live
    }

    fn insert(&mut self, slot: Slot) -> Ino {
        if let Some(Node::Directory { digest, .. }) = &slot.node {
            *self.dir_slots.entry(*digest).or_insert(0) += 1;
        }
        if let Some(parent) = self.get_mut(slot.parent) {
            parent.children += 1;
        }
        self.live += 1;
        if let Some(index) = self.free.pop() {
            let cell = &mut self.cells[index as usize];
            cell.slot = Some(slot);
            return join(index as usize, cell.generation);
        }
        self.cells.push(Cell { generation: 0, slot: Some(slot) });
        join(self.cells.len() - 1, 0)
    }

    /// Frees `ino` if nothing refers to it any more, then its parent if that was all that
    /// kept the parent, and so on up.
    fn free_if_unreferenced(&mut self, mut ino: Ino, freed: &mut Freed) {
        while self.evict && ino != ROOT_INO {
            let Some((index, generation)) = split(ino) else { return };
            let Some(cell) = self.cells.get_mut(index) else { return };
            if cell.generation != generation || !cell.slot.as_ref().is_some_and(Slot::unreferenced) {
                return;
            }
            let Some(slot) = cell.slot.take() else { return };
            cell.generation = cell.generation.wrapping_add(1);
            // Fits: indices come from a Vec only ever pushed to with 32-bit inode halves.
            self.free.push(index as u32);
            self.live -= 1;
            self.kids.remove(&ino);
            if let Some(Node::Directory { digest, .. }) = &slot.node
                && let Some(n) = self.dir_slots.get_mut(digest)
            {
                *n -= 1;
                if *n == 0 {
                    self.dir_slots.remove(digest);
                    freed.listings.push(*digest);
                }
            }
            if slot.parent == ROOT_INO {
                if let Some(name) = self.root_names.remove(&ino) {
                    self.roots.remove(&name);
                }
            } else if let Some(kids) = self.kids.get_mut(&slot.parent)
                && let Some(k) = kids.get_mut(slot.index as usize)
                && *k == ino
            {
                *k = 0;
            }
            let parent = slot.parent;
            match self.get_mut(parent) {
                Some(p) => p.children = p.children.saturating_sub(1),
                None => return,
            }
            ino = parent;
        }
    }

    /// Records a slot created without a reference, freeing the oldest such slots past
    /// [`IDLE_SLOTS`] if they are still unreferenced.
    fn note_idle(&mut self, ino: Ino, freed: &mut Freed) {
        if !self.evict {
            return;
        }
        self.idle.push_back(ino);
        while self.idle.len() > IDLE_SLOTS {
            if let Some(old) = self.idle.pop_front() {
                self.free_if_unreferenced(old, freed);
            }
        }
    }

    /// The inode of the root entry with this name, if it is live.
    pub fn root_child(&self, name: &[u8]) -> Option<Ino> {
        self.roots.get(name).copied()
    }

    /// The inode of root entry `name` with node `node`, created if needed; with `reference` the
    /// kernel is handed it (a lookup), otherwise it may be freed again soon.
    pub fn root_child_ref(&mut self, name: &Bytes, node: Node, reference: bool, freed: &mut Freed) -> Ino {
        let ino = match self.roots.get(name) {
            Some(ino) => *ino,
            None => {
                let slot = Slot { node: Some(node), parent: ROOT_INO, index: 0, nlookup: 0, opens: 0, children: 0 };
                let ino = self.insert(slot);
                self.roots.insert(name.clone(), ino);
                self.root_names.insert(ino, name.clone());
                if !reference {
                    self.note_idle(ino, freed);
                }
                ino
            }
        };
        if reference {
            self.add_lookups(ino, 1);
        }
        ino
    }

    /// The inode of entry `index` of directory `parent` (whose listing has `len` entries and
    /// shows `node` there), created if needed; `reference` as for [`Self::root_child_ref`].
    /// `None` if `parent` is not a live directory or `index` is out of range.
    pub fn child_ref(
        &mut self,
        parent: Ino,
        index: usize,
        len: usize,
        node: &Node,
        reference: bool,
        freed: &mut Freed,
    ) -> Option<Ino> {
        if !matches!(self.get(parent)?.node, Some(Node::Directory { .. })) || index >= len {
            return None;
        }
        let known = self.kids.get(&parent).and_then(|k| k.get(index)).copied().filter(|&k| k != 0);
        let ino = match known {
            Some(ino) => ino,
            None => {
                let index32 = u32::try_from(index).ok()?;
                let slot = Slot { node: Some(node.clone()), parent, index: index32, nlookup: 0, opens: 0, children: 0 };
                let ino = self.insert(slot);
                let kids = self.kids.entry(parent).or_insert_with(|| vec![0; len].into_boxed_slice());
                if let Some(k) = kids.get_mut(index) {
                    *k = ino;
                }
                if !reference {
                    self.note_idle(ino, freed);
                }
                ino
            }
        };
        if reference {
            self.add_lookups(ino, 1);
        }
        Some(ino)
    }

    fn add_lookups(&mut self, ino: Ino, n: u64) {
        if let Some(slot) = self.get_mut(ino) {
            slot.nlookup = slot.nlookup.saturating_add(n);
        }
    }

    /// The kernel drops `n` lookups of `ino` (FORGET); frees it if that was the last reference.
    /// Unknown inodes are ignored: FORGET has no reply to carry an error.
    pub fn forget(&mut self, ino: Ino, n: u64, freed: &mut Freed) {
        if !self.evict || ino == ROOT_INO {
            return;
        }
        let Some(slot) = self.get_mut(ino) else { return };
        slot.nlookup = slot.nlookup.saturating_sub(n);
        self.free_if_unreferenced(ino, freed);
    }

    /// A handle on `ino` was opened: it stays live until [`Self::close`].
    pub fn open(&mut self, ino: Ino) {
        if let Some(slot) = self.get_mut(ino) {
            slot.opens = slot.opens.saturating_add(1);
        }
    }

    /// A handle on `ino` was closed.
    pub fn close(&mut self, ino: Ino, freed: &mut Freed) {
        if let Some(slot) = self.get_mut(ino) {
            slot.opens = slot.opens.saturating_sub(1);
            self.free_if_unreferenced(ino, freed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(n: u8) -> Node {
        Node::Directory { digest: B3Digest::of(&[n]), size: 0 }
    }

    fn file(n: u8) -> Node {
        Node::File { digest: B3Digest::of(&[n]), size: 1, executable: false }
    }

    #[test]
    fn cells_stay_small() {
        // 500,000 live inodes must fit well under the 128 MB the mount aims for.
        assert!(std::mem::size_of::<Cell>() <= 88, "{}", std::mem::size_of::<Cell>());
    }

    #[test]
    fn forget_frees_and_numbers_are_not_reused() {
        let mut t = InodeTable::new(true);
        let mut freed = Freed::default();
        let top = t.root_child_ref(&Bytes::from_static(b"a"), dir(1), true, &mut freed);
        let f = t.child_ref(top, 0, 2, &file(2), true, &mut freed).unwrap();
        assert_eq!(t.len(), 3);
        // The child keeps the parent: forgetting the parent alone frees nothing.
        t.forget(top, 1, &mut freed);
        assert_eq!(t.len(), 3);
        assert!(t.get(top).is_some());
        assert_eq!(t.get(f).unwrap().parent, top);
        // The child's last forget frees both, and the parent's listing is reported unused.
        t.forget(f, 1, &mut freed);
        assert_eq!(t.len(), 1);
        assert!(t.get(f).is_none() && t.get(top).is_none());
        assert!(t.root_child(b"a").is_none());
        assert_eq!(freed.listings, vec![B3Digest::of(&[1])]);
        // Looked up again: a new number, the old ones stay unknown.
        let top2 = t.root_child_ref(&Bytes::from_static(b"a"), dir(1), true, &mut freed);
        let f2 = t.child_ref(top2, 0, 2, &file(2), true, &mut freed).unwrap();
        assert!(![top, f].contains(&top2) && ![top, f].contains(&f2));
        assert!(t.get(f).is_none());
    }

    #[test]
    fn counts_add_up_and_handles_pin() {
        let mut t = InodeTable::new(true);
        let mut freed = Freed::default();
        let top = t.root_child_ref(&Bytes::from_static(b"a"), dir(1), true, &mut freed);
        let f = t.child_ref(top, 1, 2, &file(2), true, &mut freed).unwrap();
        assert_eq!(t.child_ref(top, 1, 2, &file(2), true, &mut freed), Some(f), "same number while live");
        t.open(f);
        t.forget(f, 2, &mut freed);
        assert!(t.get(f).is_some(), "an open handle keeps the inode");
        t.close(f, &mut freed);
        assert!(t.get(f).is_none());
        assert!(t.get(top).is_some(), "still looked up once");
        // Out of range, not a directory, unknown parent.
        assert!(t.child_ref(top, 2, 2, &file(2), true, &mut freed).is_none());
        let g = t.child_ref(top, 0, 2, &file(3), true, &mut freed).unwrap();
        assert!(t.child_ref(g, 0, 1, &file(4), true, &mut freed).is_none());
        assert!(t.child_ref(12345, 0, 1, &file(4), true, &mut freed).is_none());
    }

    #[test]
    fn idle_slots_are_bounded() {
        let mut t = InodeTable::new(true);
        let mut freed = Freed::default();
        let top = t.root_child_ref(&Bytes::from_static(b"a"), dir(1), true, &mut freed);
        let n = IDLE_SLOTS * 2;
        let first = t.child_ref(top, 0, n, &file(0), false, &mut freed).unwrap();
        for i in 1..n {
            t.child_ref(top, i, n, &file(0), false, &mut freed).unwrap();
        }
        assert_eq!(t.len(), 2 + IDLE_SLOTS);
        assert!(t.get(first).is_none());
        assert!(t.get(top).is_some(), "referenced");
    }

    #[test]
    fn disabled_eviction_keeps_everything() {
        let mut t = InodeTable::new(false);
        let mut freed = Freed::default();
        let top = t.root_child_ref(&Bytes::from_static(b"a"), dir(1), true, &mut freed);
        t.forget(top, 1, &mut freed);
        assert!(t.get(top).is_some());
    }
}
