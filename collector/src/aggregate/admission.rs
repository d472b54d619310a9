//! Admission: whether a series-update may be merged (the blocklist, one kind
//! per metric name, the series limits), decided for a whole batch before
//! anything of it is committed.

use crate::config::Config;
use crate::rejection::{Refused, Rejection};
use shoal_core::{Blocklist, Kind, SeriesKey};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The series limits in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Series one instance may define.
    pub per_instance: usize,
    /// Rollup series per metric name.
    pub per_metric: usize,
    /// Rollup series in all.
    pub total: usize,
}

/// Refused refs an instance may hold per series it may define: beyond
/// `per_instance * REFUSED_REFS_FACTOR` refused definitions, its batches are
/// refused whole (the refs table must stay bounded). A conforming SDK with
/// ten times its limit in series still sees every extra series refused one
/// by one.
pub const REFUSED_REFS_FACTOR: usize = 16;

impl Limits {
    /// The limits of a configuration.
    pub fn of(config: &Config) -> Limits {
        Limits { per_instance: config.max_series_per_instance, per_metric: config.max_series_per_metric, total: config.max_series_total }
    }

    /// Refused definitions an instance may accumulate.
    pub fn refused_refs(&self) -> usize {
        self.per_instance.saturating_mul(REFUSED_REFS_FACTOR)
    }
}

/// What the collector already holds, as admission sees it.
pub(crate) struct Holdings<'a> {
    pub(crate) blocklist: &'a Blocklist,
    pub(crate) kinds_by_name: &'a HashMap<String, Kind>,
    pub(crate) series_per_name: &'a HashMap<String, usize>,
    pub(crate) series: &'a dyn Fn(&SeriesKey) -> bool,
    pub(crate) series_count: usize,
}

/// What one batch would add, accumulated while its updates are admitted and
/// committed only if the batch merges.
#[derive(Default)]
pub(crate) struct Admission {
    /// Names this batch gives a kind to.
    pub(crate) kinds: HashMap<String, Kind>,
    /// Rollup series this batch creates.
    pub(crate) new_series: HashSet<Arc<SeriesKey>>,
    /// New rollup series per metric name.
    pub(crate) new_per_name: HashMap<String, usize>,
}

impl Admission {
    /// Whether an update of `kind` to `key` may be merged: not blocked, the
    /// kind its name already has, and within the series limits if it would
    /// create a rollup series.
    pub(crate) fn admit(&mut self, held: &Holdings<'_>, limits: &Limits, key: &Arc<SeriesKey>, kind: Kind) -> Result<(), Refused> {
        let name = key.name();
        if held.blocklist.blocks(name) {
            return Err(Refused::new(Rejection::Blocked, format!("metric {name:?} is on the collector's blocklist")));
        }
        let existing = held.kinds_by_name.get(name).or_else(|| self.kinds.get(name)).copied();
        if let Some(existing) = existing {
            if existing != kind {
                return Err(Refused::new(
                    Rejection::KindConflict,
                    format!("metric {name:?} is a {existing} here but was sent as a {kind}"),
                ));
            }
        }
        if !(held.series)(key) && !self.new_series.contains(key) {
            let for_name = held.series_per_name.get(name).copied().unwrap_or(0) + self.new_per_name.get(name).copied().unwrap_or(0);
            if for_name >= limits.per_metric {
                return Err(Refused::new(Rejection::SeriesLimitMetric, format!("metric {name:?} has {for_name} series, the limit")));
            }
            if held.series_count + self.new_series.len() >= limits.total {
                return Err(Refused::new(Rejection::SeriesLimitTotal, format!("the collector holds {} series, the limit", limits.total)));
            }
            self.new_series.insert(key.clone());
            *self.new_per_name.entry(name.to_string()).or_insert(0) += 1;
        }
        if existing.is_none() {
            self.kinds.insert(name.to_string(), kind);
        }
        Ok(())
    }
}
