//! Timers: a guard that records the elapsed seconds into a histogram when it
//! is dropped, read from a `quanta` clock (TSC-based where available, ~30 ns
//! per read instead of a syscall).

use quanta::Instant;

/// Records the seconds since it was created into its histogram on drop.
#[must_use = "a timer records when dropped; bind it with `let _t = ...`"]
pub struct Timer {
    histogram: metrics::Histogram,
    start: Instant,
    armed: bool,
}

impl Timer {
    /// Starts timing into `histogram`.
    #[inline]
    pub fn new(histogram: metrics::Histogram) -> Timer {
        Timer { histogram, start: Instant::now(), armed: true }
    }

    /// Seconds elapsed so far.
    pub fn elapsed_seconds(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Records now and returns the recorded seconds.
    pub fn stop(mut self) -> f64 {
        let secs = self.elapsed_seconds();
        self.histogram.record(secs);
        self.armed = false;
        secs
    }

    /// Drops the timer without recording.
    pub fn cancel(mut self) {
        self.armed = false;
    }
}

impl Drop for Timer {
    #[inline]
    fn drop(&mut self) {
        if self.armed {
            self.histogram.record(self.start.elapsed().as_secs_f64());
        }
    }
}

/// Starts a [`Timer`] recording into the histogram `name` (with optional
/// labels, as in `metrics::histogram!`) of the current recorder.
///
/// ```
/// let shoal = shoal::Shoal::builder().build().unwrap();
/// metrics::with_local_recorder(&shoal, || {
///     let _t = shoal::timer!("db_query_duration_seconds", "table" => "users");
///     // ... the query ...
/// });
/// assert!(shoal.render_prometheus().contains("db_query_duration_seconds_count{table=\"users\"} 1"));
/// ```
#[macro_export]
macro_rules! timer {
    ($($args:tt)+) => {
        $crate::Timer::new($crate::__private::metrics::histogram!($($args)+))
    };
}
