//! The state one `Shoal` shares with the global recorder and its flusher.

use crate::delta;
use crate::registry::Registry;
use parking_lot::Mutex;
use shoal_core::{Deltas, OwnMetrics};
use shoal_proto::client::{DeltaSource, FlusherStats, Identity};
use std::sync::Arc;

/// Registry, identity and flush counts of one `Shoal`.
pub(crate) struct Inner {
    pub(crate) registry: Registry,
    pub(crate) identity: Identity,
    /// Serialises delta takes (the flusher's and `Shoal::take_deltas`).
    take_lock: Mutex<()>,
    pub(crate) flusher_stats: Arc<FlusherStats>,
    /// Whether the own health series go to the collector.
    send_own_metrics: bool,
}

impl Inner {
    pub(crate) fn new(registry: Registry, identity: Identity, send_own_metrics: bool) -> Inner {
        Inner { registry, identity, take_lock: Mutex::new(()), flusher_stats: Arc::new(FlusherStats::default()), send_own_metrics }
    }

    pub(crate) fn take_deltas(&self) -> Deltas {
        let _serialised = self.take_lock.lock();
        delta::take(&self.registry)
    }
}

impl DeltaSource for Inner {
    fn take_deltas(&self) -> Deltas {
        Inner::take_deltas(self)
    }

    fn describe(&self, name: &str) -> Option<(String, Option<String>)> {
        let d = self.registry.descriptions.read().get(name).cloned()?;
        Some((d.text, d.unit.map(|u| u.as_str().to_string())))
    }

    fn own_metrics(&self) -> OwnMetrics {
        match self.send_own_metrics {
            true => crate::render::own_metrics(self),
            false => OwnMetrics::default(),
        }
    }
}
