//! Shards: which of several collectors receives a series.
//!
//! Rendezvous (highest-random-weight) hashing: a series goes to the shard
//! whose weight `xxh3(series hash, seeded by the shard's hash)` is highest.
//! Every sender computes the same answer from the same shard list, so each
//! series' cluster rollup lives on exactly one shard; adding or removing
//! one of N shards moves only the series that win or lose on that shard,
//! about 1/N of them, and nothing else moves.
//!
//! The series hash is the stable hash of the *rollup key* the receiving
//! collector will build: the exposed series key with the sender's instance
//! labels added (series labels win on a clash, as in the collector's
//! binding), so every instance with the same labels routes a series to the
//! same shard. A shard is named by its URL as configured: the same list,
//! in any order, gives the same routes.

use shoal_core::key::stable_hash;
use shoal_core::SeriesKey;

/// A shard list.
#[derive(Clone, Debug, Default)]
pub struct Router {
    shards: Vec<(String, u64)>,
}

impl Router {
    /// Routes over `shards` (their URLs).
    pub fn new(shards: &[String]) -> Router {
        Router { shards: shards.iter().map(|s| (s.clone(), stable_hash(s))).collect() }
    }

    /// The shards, in configuration order.
    pub fn shards(&self) -> impl Iterator<Item = &str> {
        self.shards.iter().map(|(s, _)| s.as_str())
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// True without shards.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// The hash a series is routed by: the stable hash of the rollup key
    /// a collector builds for `key` sent with `instance_labels`.
    pub fn series_hash(key: &SeriesKey, instance_labels: &[(String, String)]) -> u64 {
        let exposed = key.exposed();
        let mut labels = instance_labels.to_vec();
        labels.extend(exposed.labels().iter().cloned());
        stable_hash(SeriesKey::new(exposed.name(), labels).canonical())
    }

    /// Index of the shard that owns the series of hash `series` (0 without
    /// shards).
    pub fn shard_of(&self, series: u64) -> usize {
        let bytes = series.to_le_bytes();
        let mut best = (0usize, 0u64);
        for (i, (_, seed)) in self.shards.iter().enumerate() {
            let weight = xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, *seed);
            if i == 0 || weight > best.1 {
                best = (i, weight);
            }
        }
        best.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://10.0.0.{i}:7171")).collect()
    }

    #[test]
    fn adding_a_shard_moves_about_one_in_n_and_only_to_the_new_shard() {
        let (two, three) = (Router::new(&shards(2)), Router::new(&shards(3)));
        let n = 30_000u64;
        let mut moved = 0;
        let mut per_shard = [0u64; 3];
        for i in 0..n {
            let h = Router::series_hash(&SeriesKey::new("requests_total", [("id", i.to_string())]), &[]);
            let (before, after) = (two.shard_of(h), three.shard_of(h));
            per_shard[after] += 1;
            if before != after {
                assert_eq!(after, 2, "a series only moves to the new shard");
                moved += 1;
            }
        }
        let fraction = moved as f64 / n as f64;
        assert!((0.30..0.37).contains(&fraction), "moved {fraction}");
        for count in per_shard {
            assert!((count as f64 / n as f64 - 1.0 / 3.0).abs() < 0.02, "{per_shard:?}");
        }
    }

    #[test]
    fn the_route_is_the_rollup_key_so_instance_labels_and_order_count_not_the_instance() {
        let r = Router::new(&shards(4));
        let reversed = Router::new(&shards(4).into_iter().rev().collect::<Vec<_>>());
        let key = SeriesKey::new("latency.seconds", [("route", "/a")]);
        let labels = vec![("service".to_string(), "api".to_string())];
        let h = Router::series_hash(&key, &labels);
        // The collector's rollup key: exposed name, instance labels added.
        let rollup = SeriesKey::new("latency_seconds", [("route", "/a"), ("service", "api")]);
        assert_eq!(h, stable_hash(rollup.canonical()));
        let name = |r: &Router, h| r.shards().nth(r.shard_of(h)).unwrap().to_string();
        assert_eq!(name(&r, h), name(&reversed, h), "the shard list's order does not matter");
        assert_ne!(h, Router::series_hash(&key, &[]));
    }
}
