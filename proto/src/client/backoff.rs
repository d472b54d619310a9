//! Retry timing: exponential backoff with jitter, and the collector's
//! retry hint.

use crate::limits::RETRY_AFTER_METADATA;
use rand::Rng;
use std::time::Duration;

/// Shortest wait after a failed attempt.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait after failed attempts (and cap on a collector's hint).
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Exponential backoff with "equal jitter": the n-th consecutive failure
/// waits uniformly in `[b/2, b]` with `b = min(MIN * 2^n, MAX)`, so a fleet
/// that failed together does not retry together.
#[derive(Clone, Debug)]
pub struct Backoff {
    current: Duration,
    min: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(MIN_BACKOFF, MAX_BACKOFF)
    }
}

impl Backoff {
    /// A backoff between `min` and `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { current: min, min, max: max.max(min) }
    }

    /// After a success: the next failure waits the minimum again.
    pub fn reset(&mut self) {
        self.current = self.min;
    }

    /// The wait after one more failure. With a collector's `hint` the wait is
    /// at least the hint plus up to half of it (jittered upwards).
    pub fn next_wait(&mut self, hint: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let mut wait = rng.gen_range(self.current / 2..=self.current);
        if let Some(hint) = hint {
            let hint = hint.min(self.max);
            wait = wait.max(hint + rng.gen_range(Duration::ZERO..=hint / 2));
        }
        self.current = (self.current * 2).min(self.max);
        wait
    }
}

/// The collector's retry hint (`retry-after-ms` metadata), capped at
/// [`MAX_BACKOFF`].
pub fn retry_hint(status: &tonic::Status) -> Option<Duration> {
    let ms: u64 = status.metadata().get(RETRY_AFTER_METADATA)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_millis(ms).min(MAX_BACKOFF))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn waits_double_with_jitter_up_to_the_cap_and_reset() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut bound = Duration::from_millis(100);
        for _ in 0..10 {
            let w = b.next_wait(None, &mut rng);
            assert!(w >= bound / 2 && w <= bound, "{w:?} outside [{:?}, {bound:?}]", bound / 2);
            bound = (bound * 2).min(Duration::from_secs(1));
        }
        b.reset();
        assert!(b.next_wait(None, &mut rng) <= Duration::from_millis(100));
    }

    #[test]
    fn a_hint_is_honoured_with_upward_jitter_and_capped() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut b = Backoff::default();
        let hint = Duration::from_millis(1000);
        let waits: Vec<Duration> = (0..50).map(|_| b.next_wait(Some(hint), &mut rng)).take(3).collect();
        for w in &waits {
            assert!(*w >= hint && *w <= hint * 3 / 2 || *w > hint * 3 / 2 && *w <= MAX_BACKOFF, "{w:?}");
        }
        let mut b = Backoff::default();
        assert!(b.next_wait(Some(Duration::from_secs(3600)), &mut rng) <= MAX_BACKOFF * 3 / 2);
        // Jitter spreads a fleet: 20 senders do not all pick one wait.
        let spread: std::collections::HashSet<u128> =
            (0..20).map(|_| Backoff::default().next_wait(Some(hint), &mut rng).as_micros()).collect();
        assert!(spread.len() > 10);
    }

    #[test]
    fn the_hint_is_read_from_metadata() {
        let mut status = tonic::Status::resource_exhausted("busy");
        assert_eq!(retry_hint(&status), None);
        status.metadata_mut().insert(RETRY_AFTER_METADATA, "250".parse().unwrap());
        assert_eq!(retry_hint(&status), Some(Duration::from_millis(250)));
        status.metadata_mut().insert(RETRY_AFTER_METADATA, "99999999".parse().unwrap());
        assert_eq!(retry_hint(&status), Some(MAX_BACKOFF));
    }
}
