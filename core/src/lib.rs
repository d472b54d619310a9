//! # shoal-core
//!
//! The building blocks every part of shoal shares, with no I/O and no
//! dependency on `metrics`, tonic or tokio (the `tracing` / `metrics` split:
//! this crate is what the SDK, the protocol crate, the collector and the
//! macros build on):
//!
//! - [`sketch`] the mergeable histogram (base-2 exponential buckets, exact
//!   merge, relative-error guarantee);
//! - [`key`] series identity (`name{k="v",...}`) and its stable hash;
//! - [`names`] the metric-name and label-key rules, and sanitising;
//! - [`kind`] the kind of a series;
//! - [`deltas`] what a set of series recorded over an interval;
//! - [`blocklist`] names and globs whose series are not merged or sent;
//! - [`exposition`] the Prometheus text format writer.

#![warn(missing_docs)]

pub mod blocklist;
pub mod deltas;
pub mod exposition;
pub mod key;
pub mod kind;
pub mod names;
pub mod own;
pub mod sketch;

pub use crate::blocklist::{Blocklist, BlocklistError};
pub use crate::deltas::{CounterDelta, Deltas, GaugeValue, HistogramDelta};
pub use crate::key::SeriesKey;
pub use crate::kind::Kind;
pub use crate::own::{OwnMetrics, OwnValue};
pub use crate::sketch::Sketch;
