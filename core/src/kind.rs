//! The kind of a series, one definition for the SDK, the protocol and the
//! collector.

/// What kind of metric a series is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Monotonic `u64` counter: deltas are summed.
    Counter,
    /// Last-value `f64` gauge: rolled up across instances by a rule.
    Gauge,
    /// Distribution recorded into a mergeable sketch.
    Histogram,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Counter, Kind::Gauge, Kind::Histogram];

    /// Lower-case name, as in self-metric labels and the JSON API.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
