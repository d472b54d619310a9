//! Dense bucket counts with adaptive counter width.
//!
//! A store covers one contiguous index range `[offset, offset + len)`. Counts
//! start as `u8` and the whole array widens to `u16`, `u32`, then `u64` only when
//! one count needs it (the technique of the OpenTelemetry SDKs). A lognormal
//! spanning six decades at scale 6 touches ~1,300 buckets: 1.3 KiB as `u8`,
//! 2.6 KiB as `u16`; the flat `u64` layout would need 10 KiB.

/// Counts of one sign of a sketch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketStore {
    offset: i32,
    counts: Counts,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Counts {
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
}

impl Default for Counts {
    fn default() -> Self {
        Counts::U8(Vec::new())
    }
}

macro_rules! each_width {
    ($counts:expr, $v:ident => $body:expr) => {
        match $counts {
            Counts::U8($v) => $body,
            Counts::U16($v) => $body,
            Counts::U32($v) => $body,
            Counts::U64($v) => $body,
        }
    };
}

impl Counts {
    fn len(&self) -> usize {
        each_width!(self, v => v.len())
    }

    fn get(&self, i: usize) -> u64 {
        match self {
            Counts::U8(v) => v[i].into(),
            Counts::U16(v) => v[i].into(),
            Counts::U32(v) => v[i].into(),
            Counts::U64(v) => v[i],
        }
    }

    fn max_of_width(&self) -> u64 {
        match self {
            Counts::U8(_) => u8::MAX as u64,
            Counts::U16(_) => u16::MAX as u64,
            Counts::U32(_) => u32::MAX as u64,
            Counts::U64(_) => u64::MAX,
        }
    }

    fn heap_bytes(&self) -> usize {
        each_width!(self, v => v.capacity() * std::mem::size_of_val(&v.first().copied().unwrap_or_default()))
    }

    /// Widens until `needed` fits.
    fn widen_for(&mut self, needed: u64) {
        while needed > self.max_of_width() {
            *self = match std::mem::take(self) {
                Counts::U8(v) => Counts::U16(v.into_iter().map(u16::from).collect()),
                Counts::U16(v) => Counts::U32(v.into_iter().map(u32::from).collect()),
                Counts::U32(v) => Counts::U64(v.into_iter().map(u64::from).collect()),
                Counts::U64(v) => Counts::U64(v),
            };
        }
    }

    /// Sets `i` to `value`; the caller has widened for it.
    fn set(&mut self, i: usize, value: u64) {
        match self {
            Counts::U8(v) => v[i] = value as u8,
            Counts::U16(v) => v[i] = value as u16,
            Counts::U32(v) => v[i] = value as u32,
            Counts::U64(v) => v[i] = value,
        }
    }

    /// Grows to `new_len` slots with `shift` zeros in front of the old ones.
    fn grow(&mut self, shift: usize, new_len: usize) {
        if shift == 0 {
            // Appending: let Vec amortise.
            each_width!(self, v => v.resize(new_len, 0));
            return;
        }
        each_width!(self, v => {
            let mut grown = Vec::with_capacity(new_len);
            grown.resize(shift, 0);
            grown.extend_from_slice(v);
            grown.resize(new_len, 0);
            *v = grown;
        })
    }
}

impl BucketStore {
    /// A store holding `counts` for the buckets `offset, offset + 1, ...`,
    /// trimmed of empty edge slots, at the narrowest width that fits.
    pub fn from_counts(offset: i32, counts: &[u64]) -> BucketStore {
        let first = counts.iter().position(|&c| c > 0);
        let last = counts.iter().rposition(|&c| c > 0);
        let (Some(first), Some(last)) = (first, last) else { return BucketStore::default() };
        let slice = &counts[first..=last];
        let max = slice.iter().copied().max().unwrap_or(0);
        let counts = if max <= u8::MAX as u64 {
            Counts::U8(slice.iter().map(|&c| c as u8).collect())
        } else if max <= u16::MAX as u64 {
            Counts::U16(slice.iter().map(|&c| c as u16).collect())
        } else if max <= u32::MAX as u64 {
            Counts::U32(slice.iter().map(|&c| c as u32).collect())
        } else {
            Counts::U64(slice.to_vec())
        };
        BucketStore { offset: offset + first as i32, counts }
    }

    /// True if no bucket holds a count.
    pub fn is_empty(&self) -> bool {
        self.counts.len() == 0
    }

    /// Index of the first slot (meaningful when not empty).
    pub fn offset(&self) -> i32 {
        self.offset
    }

    /// Number of slots from the first to the last non-empty bucket.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Count of bucket `index` (0 outside the range).
    pub fn get(&self, index: i32) -> u64 {
        let rel = index as i64 - self.offset as i64;
        if rel < 0 || rel >= self.counts.len() as i64 {
            0
        } else {
            self.counts.get(rel as usize)
        }
    }

    /// A store holding the `(index, count)` buckets of `sparse`, at the
    /// narrowest width that fits: with indices strictly ascending (what a
    /// take produces), one allocation of the run from the first to the last
    /// index; otherwise the counts are added one by one (repeated indices
    /// sum, saturating).
    pub fn from_sparse(sparse: &[(i32, u64)]) -> BucketStore {
        if !sparse.windows(2).all(|w| w[0].0 < w[1].0) {
            let mut store = BucketStore::default();
            for &(index, count) in sparse {
                store.add(index, count);
            }
            return store;
        }
        let Some((&(first, _), &(last, _))) = sparse.iter().find(|&&(_, c)| c > 0).zip(sparse.iter().rfind(|&&(_, c)| c > 0)) else {
            return BucketStore::default();
        };
        let mut store = BucketStore::default();
        store.add_range_fresh(first, last);
        store.counts.widen_for(sparse.iter().map(|&(_, c)| c).max().unwrap_or(0));
        each_width!(&mut store.counts, v => {
            for &(index, count) in sparse {
                if (first..=last).contains(&index) {
                    // Widened above for the largest count: no truncation.
                    v[(index - first) as usize] = count as _;
                }
            }
        });
        store
    }

    /// Raises the run of buckets `first .. first + len` to the cumulative
    /// counts `now(0) .. now(len - 1)` (read from cells that only grow) and
    /// calls `rose(index, by)`, ascending, for every bucket whose count
    /// changed: a delta taken against this store as the state of the
    /// previous take, without building a second store. A run inside the
    /// store's range (the steady state) costs one pass reading `now` once
    /// per slot. Cells only grow, so a slot where `now` is 0 was 0 before
    /// (outside the range it is not looked at). A count below the stored
    /// one (a cell that wrapped past `u64::MAX`) is reported by wrapping
    /// subtraction, as counter deltas are.
    // One body serves every width: for `u64` counts the conversions are
    // no-ops.
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    pub fn advance(&mut self, first: i32, len: usize, now: impl Fn(usize) -> u64, mut rose: impl FnMut(i32, u64)) {
        let rel = first as i64 - self.offset as i64;
        let (lo, hi) = if !self.is_empty() && rel >= 0 && rel as usize + len <= self.counts.len() {
            (0, len)
        } else {
            let Some(lo) = (0..len).position(|k| now(k) > 0) else { return };
            let hi = (0..len).rposition(|k| now(k) > 0).map_or(lo, |k| k) + 1;
            let (from, to) = (first + lo as i32, first + hi as i32 - 1);
            if self.is_empty() {
                self.add_range_fresh(from, to);
            } else {
                self.add_range(from, to);
            }
            (lo, hi)
        };
        let mut k = lo;
        while k < hi {
            let width_max = self.counts.max_of_width();
            let start = (first as i64 + k as i64 - self.offset as i64) as usize;
            // Where a count outgrew the width: widen, then go on from there.
            let outgrown = each_width!(&mut self.counts, v => {
                let mut outgrown = None;
                for (j, slot) in v[start..start + (hi - k)].iter_mut().enumerate() {
                    let n = now(k + j);
                    let before = u64::from(*slot);
                    if n != before {
                        if n > width_max {
                            outgrown = Some(k + j);
                            break;
                        }
                        // Checked against the width's maximum just above.
                        *slot = n as _;
                        rose(first + (k + j) as i32, n.wrapping_sub(before));
                    }
                }
                outgrown
            });
            match outgrown {
                Some(at) => {
                    self.counts.widen_for(now(at));
                    k = at;
                }
                None => break,
            }
        }
    }

    /// Calls `f(index, count)` for every non-empty bucket, ascending: the
    /// fast form of [`BucketStore::iter`] for sparse runs (a delta of a
    /// few samples over a wide range), skipping empty slots eight bytes of
    /// `u8` counts at a time.
    // One body serves every width: for `u64` counts the conversions are
    // no-ops.
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    pub fn for_each_nonzero(&self, mut f: impl FnMut(i32, u64)) {
        let offset = self.offset;
        match &self.counts {
            Counts::U8(v) => {
                let mut chunks = v.chunks_exact(8);
                let mut at = 0;
                for chunk in chunks.by_ref() {
                    let mut word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
                    while word != 0 {
                        let k = word.trailing_zeros() as usize / 8;
                        f(offset + (at + k) as i32, u64::from(chunk[k]));
                        word &= !(0xff << (k * 8));
                    }
                    at += 8;
                }
                for (k, &c) in chunks.remainder().iter().enumerate() {
                    if c != 0 {
                        f(offset + (at + k) as i32, u64::from(c));
                    }
                }
            }
            counts => each_width!(counts, v => {
                for (k, &c) in v.iter().enumerate() {
                    if c != 0 {
                        f(offset + k as i32, u64::from(c));
                    }
                }
            }),
        }
    }

    /// Sum of all bucket counts (saturating; a store never holds more than
    /// `u64::MAX` samples in practice).
    pub fn total(&self) -> u64 {
        // Narrow counts cannot overflow a u64 sum (a range holds < 2^32
        // buckets): a plain sum the compiler vectorises.
        match &self.counts {
            Counts::U8(v) => v.iter().map(|&c| u64::from(c)).sum(),
            Counts::U16(v) => v.iter().map(|&c| u64::from(c)).sum(),
            Counts::U32(v) => v.iter().map(|&c| u64::from(c)).sum(),
            Counts::U64(v) => v.iter().fold(0u64, |acc, &c| acc.saturating_add(c)),
        }
    }

    /// Heap bytes held by the counts.
    pub fn heap_bytes(&self) -> usize {
        self.counts.heap_bytes()
    }

    /// `(index, count)` of every non-empty bucket, ascending.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (i32, u64)> + '_ {
        (0..self.counts.len()).map(move |i| (self.offset + i as i32, self.counts.get(i))).filter(|&(_, c)| c > 0)
    }

    /// Adds `n` to bucket `index`, growing the range and widening as needed.
    /// Saturates at `u64::MAX` instead of wrapping.
    pub fn add(&mut self, index: i32, n: u64) {
        if n == 0 {
            return;
        }
        if self.counts.len() == 0 {
            self.offset = index;
            self.counts.grow(0, 1);
        } else if index < self.offset {
            let shift = (self.offset as i64 - index as i64) as usize;
            let new_len = self.counts.len() + shift;
            self.counts.grow(shift, new_len);
            self.offset = index;
        } else {
            let rel = (index as i64 - self.offset as i64) as usize;
            if rel >= self.counts.len() {
                let shift = 0;
                self.counts.grow(shift, rel + 1);
            }
        }
        let rel = (index as i64 - self.offset as i64) as usize;
        let value = self.counts.get(rel).saturating_add(n);
        self.counts.widen_for(value);
        self.counts.set(rel, value);
    }

    /// Subtracts `other` bucket by bucket; `None` if some bucket of `other`
    /// exceeds this one (the caller passed something that is not a prefix of
    /// this store's history).
    pub fn checked_sub(&self, other: &BucketStore) -> Option<BucketStore> {
        let mut out = BucketStore::default();
        for (i, c) in other.iter() {
            if self.get(i) < c {
                return None;
            }
        }
        for (i, c) in self.iter() {
            let d = c - other.get(i);
            out.add(i, d);
        }
        Some(out)
    }

    /// Adds every bucket of `other`.
    pub fn merge(&mut self, other: &BucketStore) {
        if other.is_empty() {
            return;
        }
        // Reserve the union range once, then add.
        let first = other.offset;
        let last = other.offset + other.counts.len() as i32 - 1;
        if !self.is_empty() {
            self.add_range(first, last);
        }
        for (i, c) in other.iter() {
            self.add(i, c);
        }
    }

    fn add_range(&mut self, first: i32, last: i32) {
        let cur_last = self.offset + self.counts.len() as i32 - 1;
        let new_first = first.min(self.offset);
        let new_last = last.max(cur_last);
        if new_first == self.offset && new_last == cur_last {
            return;
        }
        let shift = (self.offset as i64 - new_first as i64) as usize;
        let new_len = (new_last as i64 - new_first as i64 + 1) as usize;
        self.counts.grow(shift, new_len);
        self.offset = new_first;
    }

    /// Merges `2^by` neighbouring buckets into one (index `i` becomes `i >> by`).
    pub fn downscale(&mut self, by: u32) {
        if by == 0 || self.is_empty() {
            return;
        }
        let mut out = BucketStore::default();
        for (i, c) in self.iter() {
            out.add(i >> by, c);
        }
        *self = out;
    }

    /// Drops empty slots at both ends and releases spare capacity.
    pub fn trim(&mut self) {
        let first = self.iter().next().map(|(i, _)| i);
        let last = self.iter().next_back().map(|(i, _)| i);
        match (first, last) {
            (Some(f), Some(l)) => {
                if f != self.offset || (l - f + 1) as usize != self.counts.len() {
                    let mut out = BucketStore::default();
                    out.add_range_fresh(f, l);
                    for (i, c) in self.iter() {
                        out.add(i, c);
                    }
                    *self = out;
                }
            }
            _ => *self = BucketStore::default(),
        }
    }

    fn add_range_fresh(&mut self, first: i32, last: i32) {
        self.offset = first;
        self.counts = Counts::default();
        self.counts.grow(0, (last as i64 - first as i64 + 1) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widens_only_when_needed() {
        let mut s = BucketStore::default();
        s.add(5, 200);
        assert!(matches!(s.counts, Counts::U8(_)));
        s.add(5, 100);
        assert!(matches!(s.counts, Counts::U16(_)));
        assert_eq!(s.get(5), 300);
        s.add(-3, u32::MAX as u64);
        assert!(matches!(s.counts, Counts::U32(_)));
        s.add(-3, 1);
        assert!(matches!(s.counts, Counts::U64(_)));
        assert_eq!(s.get(-3), u32::MAX as u64 + 1);
        assert_eq!(s.get(5), 300);
        assert_eq!(s.total(), u32::MAX as u64 + 301);
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        let mut s = BucketStore::default();
        s.add(0, u64::MAX);
        s.add(0, 5);
        assert_eq!(s.get(0), u64::MAX);
    }

    #[test]
    fn merge_and_sub_are_inverse() {
        let mut a = BucketStore::default();
        let mut b = BucketStore::default();
        for i in -10..10 {
            a.add(i * 3, (i + 11) as u64);
            b.add(i * 2 + 40, 1000);
        }
        let mut ab = a.clone();
        ab.merge(&b);
        let back = ab.checked_sub(&b).unwrap();
        assert_eq!(back.iter().collect::<Vec<_>>(), a.iter().collect::<Vec<_>>());
        assert!(a.checked_sub(&ab).is_none());
    }

    proptest::proptest! {
        /// `checked_sub` is bucket-wise subtraction, `None` exactly when some
        /// bucket of the subtrahend exceeds the minuend, and its result is
        /// what `add` alone would build.
        #[test]
        fn checked_sub_is_bucketwise(
            later in proptest::collection::vec((-40i32..40, 0u64..70_000), 0..60),
            earlier in proptest::collection::vec((-45i32..45, 0u64..300), 0..30),
        ) {
            let mut a = BucketStore::default();
            for &(i, n) in &later {
                a.add(i, n);
            }
            let mut b = BucketStore::default();
            for &(i, n) in &earlier {
                b.add(i, n);
            }
            let fits = b.iter().all(|(i, c)| a.get(i) >= c);
            match a.checked_sub(&b) {
                None => proptest::prop_assert!(!fits),
                Some(d) => {
                    proptest::prop_assert!(fits);
                    let mut expected = BucketStore::default();
                    for (i, c) in a.iter() {
                        expected.add(i, c - b.get(i));
                    }
                    proptest::prop_assert_eq!(d, expected);
                }
            }
        }
    }

    proptest::proptest! {
        /// `advance` over runs of cumulative counts reports exactly the
        /// buckets that rose and by how much, and leaves the store equal to
        /// the cumulative counts; `from_sparse` of what it reported is the
        /// store `add` alone would build.
        #[test]
        fn advance_reports_what_rose_and_keeps_the_cumulative_state(
            steps in proptest::collection::vec(proptest::collection::vec((0usize..192, 1u64..100_000), 0..40), 1..6),
            first in -300i32..300,
        ) {
            let mut cumulative = vec![0u64; 192];
            let mut taken = BucketStore::default();
            for step in steps {
                let before = cumulative.clone();
                for (slot, n) in step {
                    cumulative[slot] += n;
                }
                // Three runs of 64, as the SDK reads pages.
                let mut rose = Vec::new();
                for run in 0..3 {
                    taken.advance(first + run as i32 * 64, 64, |k| cumulative[run * 64 + k], |i, by| rose.push((i, by)));
                }
                let expected: Vec<(i32, u64)> = (0..192)
                    .filter(|&k| cumulative[k] != before[k])
                    .map(|k| (first + k as i32, cumulative[k] - before[k]))
                    .collect();
                proptest::prop_assert_eq!(&rose, &expected);
                for (k, &c) in cumulative.iter().enumerate() {
                    proptest::prop_assert_eq!(taken.get(first + k as i32), c);
                }
                let mut added = BucketStore::default();
                for &(i, by) in &expected {
                    added.add(i, by);
                }
                proptest::prop_assert_eq!(&BucketStore::from_sparse(&rose), &added);
                let mut visited = Vec::new();
                added.for_each_nonzero(|i, c| visited.push((i, c)));
                proptest::prop_assert_eq!(visited, added.iter().collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn from_sparse_picks_the_narrowest_width() {
        assert!(BucketStore::from_sparse(&[]).is_empty());
        let s = BucketStore::from_sparse(&[(-4, 3), (9, 255)]);
        assert!(matches!(s.counts, Counts::U8(_)));
        assert_eq!((s.offset(), s.len(), s.get(-4), s.get(0), s.get(9)), (-4, 14, 3, 0, 255));
        // Any order, repeats and zeros: what `add` alone builds.
        let mut added = BucketStore::default();
        for (i, c) in [(9, 1), (-2, 4), (9, 300), (0, 0)] {
            added.add(i, c);
        }
        assert_eq!(BucketStore::from_sparse(&[(9, 1), (-2, 4), (9, 300), (0, 0)]), added);
        assert_eq!(BucketStore::from_sparse(&[(1, 0), (3, 5), (6, 0)]), BucketStore::from_sparse(&[(3, 5)]));
        let s = BucketStore::from_sparse(&[(7, u32::MAX as u64 + 1)]);
        assert!(matches!(s.counts, Counts::U64(_)));
        assert_eq!(s.total(), u32::MAX as u64 + 1);
    }

    #[test]
    fn advance_reports_a_wrapped_cell_by_wrapping_subtraction() {
        // A cell that passed u64::MAX reads lower than before: what rose is
        // the wrapping difference, as counter deltas are, not the raw count.
        let mut taken = BucketStore::default();
        let mut rose = Vec::new();
        taken.advance(10, 3, |k| [0, u64::MAX - 1, 7][k], |i, by| rose.push((i, by)));
        assert_eq!(rose, vec![(11, u64::MAX - 1), (12, 7)]);
        rose.clear();
        taken.advance(10, 3, |k| [0, 3, 7][k], |i, by| rose.push((i, by)));
        assert_eq!(rose, vec![(11, 5)], "MAX - 1 -> 3 is 5 more samples");
        assert_eq!((taken.get(11), taken.get(12)), (3, 7), "the state follows the cell");
        rose.clear();
        taken.advance(10, 3, |k| [0, 3, 7][k], |i, by| rose.push((i, by)));
        assert!(rose.is_empty(), "nothing new");
    }

    #[test]
    fn downscale_merges_neighbours() {
        let mut s = BucketStore::default();
        for i in -8..8 {
            s.add(i, 1);
        }
        s.downscale(2);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(-2, 4), (-1, 4), (0, 4), (1, 4)]);
    }
}
