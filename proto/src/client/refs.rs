//! The ref table: which numeric ref stands for which series, and which refs
//! the collector already knows (so their definitions are not sent again).

use std::collections::{HashMap, HashSet};

/// Series refs of one sender, numbered 1, 2, ... in order of first send,
/// and the refs the current collector process has acknowledged a
/// definition of.
#[derive(Debug, Default)]
pub struct RefTable {
    refs: HashMap<String, u32>,
    known: HashSet<u32>,
    epoch: Option<u64>,
}

impl RefTable {
    /// The series' ref, assigning the next one on first use.
    pub fn ref_of(&mut self, canonical: &str) -> u32 {
        if let Some(&r) = self.refs.get(canonical) {
            return r;
        }
        let r = self.refs.len() as u32 + 1;
        self.refs.insert(canonical.to_string(), r);
        r
    }

    /// The series' ref, if it has one.
    pub fn get(&self, canonical: &str) -> Option<u32> {
        self.refs.get(canonical).copied()
    }

    /// True if the collector holds this ref's definition.
    pub fn is_known(&self, r: u32) -> bool {
        self.known.contains(&r)
    }

    /// The collector acknowledged a batch that used (and so defined) these refs.
    pub fn mark_known(&mut self, refs: impl IntoIterator<Item = u32>) {
        self.known.extend(refs);
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
        self.refs.len()
    }

    /// True if no series has a ref yet.
    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_are_stable_and_dense() {
        let mut t = RefTable::default();
        assert_eq!(t.ref_of("a"), 1);
        assert_eq!(t.ref_of("b"), 2);
        assert_eq!(t.ref_of("a"), 1);
        assert_eq!(t.get("b"), Some(2));
        assert_eq!(t.get("c"), None);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_new_epoch_forgets_what_the_collector_knew() {
        let mut t = RefTable::default();
        let (a, b) = (t.ref_of("a"), t.ref_of("b"));
        assert!(t.observe_epoch(7), "the first epoch is new");
        t.mark_known([a, b]);
        assert!(!t.observe_epoch(7));
        assert!(t.is_known(a) && t.is_known(b));
        assert!(t.observe_epoch(8), "a restarted collector");
        assert!(!t.is_known(a) && !t.is_known(b));
        assert_eq!(t.ref_of("a"), a, "refs survive; only knowledge is reset");
        t.mark_known([a]);
        t.forget_known();
        assert!(!t.is_known(a));
    }
}
