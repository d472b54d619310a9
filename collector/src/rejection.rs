//! Why a batch, or one series of a batch, was refused: one vocabulary for
//! validation, the merge engine, the gRPC answers and the self-metrics.

use std::fmt;

/// Why a batch or a series of a batch was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// A batch malformed as such (instance id, sequence, instance labels,
    /// sizes, refs defined or used twice): the whole batch.
    InvalidField,
    /// A series whose name or labels break the protocol rules: that series.
    InvalidSeries,
    /// A non-finite gauge value: that series.
    InvalidValue,
    /// A malformed sketch: that series.
    InvalidSketch,
    /// A metric sent as a different kind than it already is: that series.
    KindConflict,
    /// The ingest queue was full: the whole batch, to be resent.
    Overloaded,
    /// The instance has as many series as it may: that series.
    SeriesLimitInstance,
    /// The metric name has as many rollup series as it may: that series.
    SeriesLimitMetric,
    /// The collector holds as many rollup series as it may: that series.
    SeriesLimitTotal,
    /// The metric name is on the blocklist: that series.
    Blocked,
    /// The instance keeps defining series past what the collector keeps
    /// track of: the whole batch.
    InstanceLimit,
    /// A message larger than the protocol allows, refused before decoding.
    TooLarge,
    /// A message that is not a valid protobuf `FlushRequest`.
    Undecodable,
}

pub(crate) const REASONS: usize = 13;

impl Rejection {
    /// Every reason, for exposition.
    pub const ALL: [Rejection; REASONS] = [
        Rejection::InvalidField,
        Rejection::InvalidSeries,
        Rejection::InvalidValue,
        Rejection::InvalidSketch,
        Rejection::KindConflict,
        Rejection::Overloaded,
        Rejection::SeriesLimitInstance,
        Rejection::SeriesLimitMetric,
        Rejection::SeriesLimitTotal,
        Rejection::Blocked,
        Rejection::InstanceLimit,
        Rejection::TooLarge,
        Rejection::Undecodable,
    ];

    /// Label value (also the `reason` of a `SeriesRejection`).
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::InvalidField => "invalid_field",
            Rejection::InvalidSeries => "invalid_series",
            Rejection::InvalidValue => "invalid_value",
            Rejection::InvalidSketch => "invalid_sketch",
            Rejection::KindConflict => "kind_conflict",
            Rejection::Overloaded => "overloaded",
            Rejection::SeriesLimitInstance => "series_limit_instance",
            Rejection::SeriesLimitMetric => "series_limit_metric",
            Rejection::SeriesLimitTotal => "series_limit_total",
            Rejection::Blocked => "blocked",
            Rejection::InstanceLimit => "instance_limit",
            Rejection::TooLarge => "too_large",
            Rejection::Undecodable => "undecodable",
        }
    }
}

/// A refusal with its detail: of a whole batch (nothing of it was merged)
/// or of one series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// Self-metric reason.
    pub reason: Rejection,
    /// Human-readable detail (for the gRPC status or the series rejection).
    pub message: String,
}

impl Refused {
    /// A refusal.
    pub fn new(reason: Rejection, message: impl Into<String>) -> Refused {
        Refused { reason, message: message.into() }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.message)
    }
}

impl std::error::Error for Refused {}
