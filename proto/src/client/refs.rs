//! The ref table: which numeric ref stands for which series, and which refs
//! the collector already knows (so their definitions are not sent again).

use shoal_core::SeriesKey;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

/// Series refs of one sender, numbered 1, 2, ... in order of first send,
/// and the refs the current collector process has acknowledged a
/// definition of.
///
/// Looked up once per series per flush, so it is keyed by what the key
/// already carries: its precomputed stable id (no string hashing), checked
/// against the key the ref was given to (the same `Arc` in the steady state:
/// no string comparison either). Two keys with one id (a 64-bit collision)
/// stay apart: the later ones are found by their canonical text.
#[derive(Debug, Default)]
pub struct RefTable {
    by_id: HashMap<u64, u32, SeededId>,
    /// Keys whose id an earlier key already holds.
    collided: HashMap<String, u32>,
    /// The key of ref `r` at `r - 1`.
    keys: Vec<Arc<SeriesKey>>,
    /// Bit `r` set: the collector holds ref `r`'s definition.
    known: Vec<u64>,
    epoch: Option<u64>,
    /// Where in `keys` the next lookup is expected: a flush sends the
    /// series in the order of the previous one, which is the order their
    /// refs were given in, so the next key is usually the one after the
    /// last found (checked by `Arc` pointer: no hash lookup, no random
    /// access into the map).
    next: usize,
}

/// Hashes a (well mixed) key id with a per-table random seed, so that ids
/// chosen to share buckets cannot be crafted in advance.
#[derive(Debug, Clone)]
struct SeededId(u64);

impl Default for SeededId {
    fn default() -> Self {
        SeededId(rand::random::<u64>() | 1)
    }
}

impl BuildHasher for SeededId {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher { seed: self.0, hash: 0 }
    }
}

struct IdHasher {
    seed: u64,
    hash: u64,
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.hash
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 ids are hashed; fold anything else in all the same.
        for &b in bytes {
            self.write_u64(self.hash.rotate_left(8) ^ b as u64);
        }
    }
    fn write_u64(&mut self, id: u64) {
        // The full 128-bit product, folded: every bit of the result depends
        // on every bit of the seeded id (a 64-bit product's low bits would
        // depend on the id's low bits only, seed or not).
        let product = ((id ^ self.seed) as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        self.hash = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl RefTable {
    /// The series' ref, assigning the next one on first use.
    pub fn ref_of(&mut self, key: &Arc<SeriesKey>) -> u32 {
        if self.keys.get(self.next).is_some_and(|expected| Arc::ptr_eq(expected, key)) {
            self.next += 1;
            return self.next as u32;
        }
        if let Some(r) = self.get(key) {
            self.next = r as usize;
            return r;
        }
        let r = self.keys.len() as u32 + 1;
        self.next = r as usize;
        match self.by_id.entry(key.id()) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(r);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collided.insert(key.canonical().to_string(), r);
            }
        }
        self.keys.push(key.clone());
        r
    }

    /// The series' ref, if it has one.
    pub fn get(&self, key: &SeriesKey) -> Option<u32> {
        let r = *self.by_id.get(&key.id())?;
        let holder = &self.keys[r as usize - 1];
        if std::ptr::eq(Arc::as_ptr(holder), key) || holder.canonical() == key.canonical() {
            return Some(r);
        }
        self.collided.get(key.canonical()).copied()
    }

    /// True if the collector holds this ref's definition.
    pub fn is_known(&self, r: u32) -> bool {
        self.known.get(r as usize / 64).is_some_and(|word| word & (1 << (r % 64)) != 0)
    }

    /// The collector acknowledged a batch that used (and so defined) these refs.
    pub fn mark_known(&mut self, refs: impl IntoIterator<Item = u32>) {
        for r in refs {
            let word = r as usize / 64;
            if word >= self.known.len() {
                self.known.resize(word + 1, 0);
            }
            self.known[word] |= 1 << (r % 64);
        }
    }

    /// The collector lost or may have lost definitions: send them all again.
    pub fn forget_known(&mut self) {
        self.known.clear();
    }

    /// Records the collector's epoch from a response. A new epoch is a new
    /// collector process, which knows none of our definitions: returns true
    /// and forgets them.
    pub fn observe_epoch(&mut self, epoch: u64) -> bool {
        if self.epoch == Some(epoch) {
            return false;
        }
        self.epoch = Some(epoch);
        self.known.clear();
        true
    }

    /// Number of series with a ref.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True if no series has a ref yet.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Arc<SeriesKey> {
        Arc::new(SeriesKey::new(name, [("pod", "p-1")]))
    }

    #[test]
    fn refs_are_stable_and_dense() {
        let mut t = RefTable::default();
        assert_eq!(t.ref_of(&key("a")), 1);
        assert_eq!(t.ref_of(&key("b")), 2);
        assert_eq!(t.ref_of(&key("a")), 1, "an equal key in another Arc");
        assert_eq!(t.get(&key("b")), Some(2));
        assert_eq!(t.get(&key("c")), None);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn lookups_in_the_previous_order_or_any_other_find_the_same_refs() {
        let mut t = RefTable::default();
        let keys: Vec<_> = (0..50).map(|i| key(&format!("s{i}"))).collect();
        let refs: Vec<u32> = keys.iter().map(|k| t.ref_of(k)).collect();
        assert_eq!(refs, (1..=50).collect::<Vec<u32>>());
        // The same order (the expected next key), with gaps (series that did
        // not change), reversed, and equal keys in other Arcs.
        assert!(keys.iter().zip(&refs).all(|(k, &r)| t.ref_of(k) == r));
        assert!(keys.iter().zip(&refs).step_by(3).all(|(k, &r)| t.ref_of(k) == r));
        assert!(keys.iter().zip(&refs).rev().all(|(k, &r)| t.ref_of(k) == r));
        assert!(keys.iter().zip(&refs).all(|(k, &r)| t.ref_of(&Arc::new((**k).clone())) == r));
        assert_eq!(t.ref_of(&key("new")), 51);
        assert_eq!(t.ref_of(&keys[0]), 1);
        assert_eq!(t.len(), 51);
    }

    #[test]
    fn keys_sharing_an_id_get_refs_of_their_own() {
        let mut t = RefTable::default();
        let (a, b) = (key("a"), key("b"));
        assert_eq!(t.ref_of(&a), 1);
        // Force a 64-bit id collision: b's id held by a's ref.
        t.by_id.insert(b.id(), 1);
        assert_eq!(t.get(&b), None, "b is not a");
        assert_eq!(t.ref_of(&b), 2);
        assert_eq!((t.ref_of(&a), t.ref_of(&b)), (1, 2));
        assert_eq!(t.get(&key("b")), Some(2));
        t.mark_known([2, 130]);
        assert!(t.is_known(2) && t.is_known(130) && !t.is_known(1) && !t.is_known(129) && !t.is_known(100_000));
    }

    #[test]
    fn a_new_epoch_forgets_what_the_collector_knew() {
        let mut t = RefTable::default();
        let (a, b) = (t.ref_of(&key("a")), t.ref_of(&key("b")));
        assert!(t.observe_epoch(7), "the first epoch is new");
        t.mark_known([a, b]);
        assert!(!t.observe_epoch(7));
        assert!(t.is_known(a) && t.is_known(b));
        assert!(t.observe_epoch(8), "a restarted collector");
        assert!(!t.is_known(a) && !t.is_known(b));
        assert_eq!(t.ref_of(&key("a")), a, "refs survive; only knowledge is reset");
        t.mark_known([a]);
        t.forget_known();
        assert!(!t.is_known(a));
    }
}
