//! Per-thread caches of facade keys already resolved to a series: what makes
//! `metrics::counter!("x", "method" => "GET")` cheap when it resolves its key
//! on every call.
//!
//! One small two-way set-associative table per thread and per series kind
//! (so an entry holds the series' own type: no `dyn Any`, no downcast). A
//! lookup is one TLS access, one multiply to pick the set, and a comparison
//! of the family id and the key (the set's second entry only if the first
//! is another key): the key's precomputed hash first, then, for the macros'
//! `static` keys, the addresses of its name and label slice (same addresses:
//! same immutable bytes), and only otherwise the full `Key` equality. A miss
//! falls back to the family's read-locked map, so the cache is never needed
//! for correctness, only for speed. Two ways per set keep two busy keys
//! whose hashes share a set from evicting each other on every call (the
//! hashes are fixed, so such a pair would clash in every run); a third
//! evicts the older of the two.
//!
//! Memory is bounded: [`SETS`] x 2 entries per kind for a thread that
//! records through the macros, allocated on its first miss, freed when the
//! thread exits. An entry keeps its series alive until it is replaced, so a
//! thread that outlives a dropped `Shoal` may hold up to that many of its
//! series until other keys take their places.

use std::cell::RefCell;
use std::sync::Arc;

/// Sets per thread and per kind (a power of two), two entries each.
pub(crate) const SETS: usize = 256;

struct Entry<S> {
    family: u64,
    key: metrics::Key,
    /// Where `key`'s name and label slice live (read once at insert: the
    /// `metrics` accessors are not inlined across crates).
    name: *const str,
    labels: *const [metrics::Label],
    series: Arc<S>,
}

/// Two entries, and which one the next insert replaces.
struct Set<S> {
    ways: [Option<Entry<S>>; 2],
    victim: usize,
}

/// One thread's table for one kind; empty until the first insert.
pub(crate) struct KeyCache<S> {
    sets: Option<Box<[Set<S>]>>,
}

impl<S> KeyCache<S> {
    pub(crate) const fn new() -> Self {
        KeyCache { sets: None }
    }
}

/// The set of a (family, key) pair: the family id and the key's hash mixed
/// by a multiply, the index taken from the high bits.
#[inline(always)]
fn set_of(family: u64, key: &metrics::Key) -> usize {
    const MIX: u64 = 0x9e37_79b9_7f4a_7c15;
    ((key.get_hash() ^ family.wrapping_mul(MIX)).wrapping_mul(MIX) >> (64 - SETS.trailing_zeros())) as usize
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
        let set = &cache.sets.as_ref()?[set_of(family, key)];
        set.ways.iter().flatten().find(|entry| entry.holds(family, key)).map(|entry| entry.series.clone())
    })
    .flatten()
}

/// Remembers that `key` resolves to `series` in `family`, in an empty way
/// of its set or else in place of the older entry.
pub(crate) fn insert<S: Cached>(family: u64, key_ref: &metrics::Key, series: &Arc<S>) {
    S::with_cache(|cache| {
        let Ok(mut cache) = cache.try_borrow_mut() else { return };
        let sets = cache.sets.get_or_insert_with(|| (0..SETS).map(|_| Set { ways: [None, None], victim: 0 }).collect());
        let set = &mut sets[set_of(family, key_ref)];
        let way = match set.ways.iter().position(Option::is_none) {
            Some(empty) => empty,
            None => {
                let oldest = set.victim;
                set.victim ^= 1;
                oldest
            }
        };
        let key = key_ref.clone();
        let (name, labels) = (key.name() as *const str, key.labels().as_slice() as *const [metrics::Label]);
        set.ways[way] = Some(Entry { family, key, name, labels, series: series.clone() });
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
    fn two_keys_sharing_a_set_both_stay_and_a_third_evicts_the_older() {
        let family = 11;
        let keys: Vec<metrics::Key> = (0..10_000).map(|i| metrics::Key::from_name(format!("k{i}"))).collect();
        let target = set_of(family, &keys[0]);
        let same: Vec<&metrics::Key> = keys.iter().filter(|k| set_of(family, k) == target).take(3).collect();
        assert_eq!(same.len(), 3, "10,000 keys over {SETS} sets");
        insert(family, same[0], &Arc::new(Thing(0)));
        insert(family, same[1], &Arc::new(Thing(1)));
        for _ in 0..3 {
            assert_eq!(get::<Thing>(family, same[0]).map(|t| t.0), Some(0));
            assert_eq!(get::<Thing>(family, same[1]).map(|t| t.0), Some(1));
        }
        insert(family, same[2], &Arc::new(Thing(2)));
        assert!(get::<Thing>(family, same[0]).is_none(), "the older entry made room");
        assert_eq!(get::<Thing>(family, same[1]).map(|t| t.0), Some(1));
        assert_eq!(get::<Thing>(family, same[2]).map(|t| t.0), Some(2));
    }

    #[test]
    fn hits_are_always_the_right_series_and_memory_stays_bounded() {
        let family = 9;
        let keys: Vec<metrics::Key> = (0..SETS * 8).map(|i| metrics::Key::from_name(format!("k{i}"))).collect();
        for (i, k) in keys.iter().enumerate() {
            insert(family, k, &Arc::new(Thing(i as u32)));
            assert_eq!(get::<Thing>(family, k).map(|t| t.0), Some(i as u32));
        }
        let hits = keys.iter().enumerate().filter(|(i, k)| match get::<Thing>(family, k) {
            Some(t) => {
                assert_eq!(t.0, *i as u32);
                true
            }
            None => false,
        });
        assert!(hits.count() <= 2 * SETS);
        let held = Thing::with_cache(|c| c.borrow().sets.as_ref().unwrap().iter().map(|s| s.ways.iter().flatten().count()).sum::<usize>())
            .unwrap();
        assert!(held <= 2 * SETS && held > SETS, "{held}");
    }
}
