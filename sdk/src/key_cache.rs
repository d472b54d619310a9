//! Per-thread caches of facade keys already resolved to a series: what makes
//! `metrics::counter!("x", "method" => "GET")` cheap when it resolves its key
//! on every call.
//!
//! One small direct-mapped table per thread and per series kind (so an entry
//! holds the series' own type: no `dyn Any`, no downcast). A lookup is one
//! TLS access, one multiply to pick the slot, and a comparison of the family
//! id and the key: the key's precomputed hash first, then, for the macros'
//! `static` keys, the addresses of its name and label slice (same addresses:
//! same immutable bytes), and only otherwise the full `Key` equality. A miss
//! (or two keys sharing a slot) falls back to the family's read-locked map,
//! so the cache is never needed for correctness, only for speed.
//!
//! Memory is bounded: [`SLOTS`] entries per kind for a thread that records
//! through the macros, allocated on its first miss, freed when it exits.

use std::cell::RefCell;
use std::sync::Arc;

/// Entries per thread and per kind (a power of two).
pub(crate) const SLOTS: usize = 256;

struct Entry<S> {
    family: u64,
    key: metrics::Key,
    /// Where `key`'s name and label slice live (read once at insert: the
    /// `metrics` accessors are not inlined across crates).
    name: *const str,
    labels: *const [metrics::Label],
    series: Arc<S>,
}

/// One thread's table for one kind; empty until the first insert.
pub(crate) struct KeyCache<S> {
    slots: Option<Box<[Option<Entry<S>>]>>,
}

impl<S> KeyCache<S> {
    pub(crate) const fn new() -> Self {
        KeyCache { slots: None }
    }
}

/// The slot of a (family, key) pair: the family id and the key's hash mixed
/// by a multiply, the table index taken from the high bits.
#[inline(always)]
fn slot_of(family: u64, key: &metrics::Key) -> usize {
    const MIX: u64 = 0x9e37_79b9_7f4a_7c15;
    ((key.get_hash() ^ family.wrapping_mul(MIX)).wrapping_mul(MIX) >> (64 - SLOTS.trailing_zeros())) as usize
}

impl<S> Entry<S> {
    /// Whether `key` is this entry's key. Equal addresses of the name and of
    /// the label slice mean the same bytes (the entry's clone of the key keeps
    /// what it points to alive and unchanged), which settles the common case
    /// of the macros' `static` keys without comparing strings.
    #[inline(always)]
    fn holds(&self, family: u64, key: &metrics::Key) -> bool {
        if self.family != family || self.key.get_hash() != key.get_hash() {
            return false;
        }
        if std::ptr::eq(self.name, key.name()) && std::ptr::eq(self.labels, key.labels().as_slice()) {
            return true;
        }
        self.key == *key
    }
}

/// A kind of series with its own per-thread [`KeyCache`].
pub(crate) trait Cached: Sized + 'static {
    fn with_cache<R>(f: impl FnOnce(&RefCell<KeyCache<Self>>) -> R) -> Option<R>;
}

/// The series `key` resolved to in `family`, if this thread has it cached.
#[inline(always)]
pub(crate) fn get<S: Cached>(family: u64, key: &metrics::Key) -> Option<Arc<S>> {
    S::with_cache(|cache| {
        let cache = cache.try_borrow().ok()?;
        let entry = cache.slots.as_ref()?[slot_of(family, key)].as_ref()?;
        entry.holds(family, key).then(|| entry.series.clone())
    })
    .flatten()
}

/// Remembers that `key` resolves to `series` in `family` (replacing whatever
/// held its slot).
pub(crate) fn insert<S: Cached>(family: u64, key_ref: &metrics::Key, series: &Arc<S>) {
    S::with_cache(|cache| {
        let Ok(mut cache) = cache.try_borrow_mut() else { return };
        let slots = cache.slots.get_or_insert_with(|| (0..SLOTS).map(|_| None).collect());
        let key = key_ref.clone();
        let (name, labels) = (key.name() as *const str, key.labels().as_slice() as *const [metrics::Label]);
        slots[slot_of(family, key_ref)] = Some(Entry { family, key, name, labels, series: series.clone() });
    });
}

/// Declares the per-thread cache of a series type.
macro_rules! cached_kind {
    ($series:ty) => {
        impl $crate::key_cache::Cached for $series {
            #[inline(always)]
            fn with_cache<R>(f: impl FnOnce(&std::cell::RefCell<$crate::key_cache::KeyCache<Self>>) -> R) -> Option<R> {
                thread_local! {
                    static CACHE: std::cell::RefCell<$crate::key_cache::KeyCache<$series>> =
                        const { std::cell::RefCell::new($crate::key_cache::KeyCache::new()) };
                }
                // `try_with`: a destructor recording during thread exit
                // finds no cache and takes the shared path.
                CACHE.try_with(f).ok()
            }
        }
    };
}
pub(crate) use cached_kind;

#[cfg(test)]
mod tests {
    use super::*;

    struct Thing(u32);
    cached_kind!(Thing);

    #[test]
    fn static_and_owned_keys_hit_the_same_entry() {
        static LABELS: [metrics::Label; 1] = [metrics::Label::from_static_parts("method", "GET")];
        static KEY: metrics::Key = metrics::Key::from_static_parts("requests", &LABELS);
        let family = 7;
        assert!(get::<Thing>(family, &KEY).is_none());
        insert(family, &KEY, &Arc::new(Thing(1)));
        assert_eq!(get::<Thing>(family, &KEY).map(|t| t.0), Some(1));
        // The same key built at run time (other addresses) still matches.
        let owned = metrics::Key::from_parts("requests".to_string(), vec![metrics::Label::new("method", "GET".to_string())]);
        assert_eq!(get::<Thing>(family, &owned).map(|t| t.0), Some(1));
        // Another family, another label value, another name: misses.
        assert!(get::<Thing>(family + 1, &KEY).is_none());
        let other = metrics::Key::from_parts("requests", vec![metrics::Label::new("method", "PUT")]);
        assert!(get::<Thing>(family, &other).is_none());
        assert!(get::<Thing>(family, &metrics::Key::from_name("request")).is_none());
    }

    #[test]
    fn a_slot_holds_the_latest_key_and_memory_stays_bounded() {
        let family = 9;
        let keys: Vec<metrics::Key> = (0..SLOTS * 4).map(|i| metrics::Key::from_name(format!("k{i}"))).collect();
        for (i, k) in keys.iter().enumerate() {
            insert(family, k, &Arc::new(Thing(i as u32)));
            assert_eq!(get::<Thing>(family, k).map(|t| t.0), Some(i as u32));
        }
        // Every hit is the right series; at most SLOTS are held.
        let hits = keys.iter().enumerate().filter(|(i, k)| match get::<Thing>(family, k) {
            Some(t) => {
                assert_eq!(t.0, *i as u32);
                true
            }
            None => false,
        });
        assert!(hits.count() <= SLOTS);
        let held = Thing::with_cache(|c| c.borrow().slots.as_ref().unwrap().iter().flatten().count()).unwrap();
        assert!(held <= SLOTS && held > SLOTS / 2, "{held}");
    }
}
