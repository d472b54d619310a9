//! What a collector forwards upstream (`upstream`): the deltas it merged
//! since the forwarder's last take, per rollup series.
//!
//! Every merged counter increment and histogram sample is added here too
//! (keyed by the rollup key, which the upstream extends with this
//! collector's `upstream_labels`); the forwarder ([`crate::forward`], the
//! protocol crate's flush client) takes it every interval. Gauges are not
//! accumulated: a take reads each gauge's current rolled-up value.
//!
//! Exactly once across a crash (with `data_dir`): a take moves the
//! accumulated deltas into an *in-flight* part named by a token and is
//! logged in the WAL inside the same critical section (so replay makes the
//! same cut between merges). The forwarder saves what it took in its own
//! state file with the token, then says so ([`Forward::taken`]): parts up
//! to it are dropped. After a restart the forwarder tells which token its
//! state file holds ([`Forward::resume`]): parts up to it are dropped
//! (the forwarder has them), later ones go back to the accumulated deltas,
//! to be taken again. In-flight parts are in checkpoints.

use crate::aggregate::snapshot::{SnapForward, SnapForwardPart, SnapForwardValue};
use shoal_core::{CounterDelta, Deltas, HistogramDelta, SeriesKey, Sketch};
use shoal_proto::convert::{sketch_from_proto, sketch_to_proto};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Counter increments and merged samples per rollup series.
#[derive(Clone, Debug, Default)]
pub struct Part {
    counters: HashMap<Arc<SeriesKey>, u64>,
    histograms: HashMap<Arc<SeriesKey>, Sketch>,
}

impl Part {
    fn is_empty(&self) -> bool {
        self.counters.is_empty() && self.histograms.is_empty()
    }

    fn absorb(&mut self, other: Part) {
        for (k, v) in other.counters {
            let c = self.counters.entry(k).or_insert(0);
            *c = c.wrapping_add(v);
        }
        for (k, s) in other.histograms {
            match self.histograms.get_mut(&k) {
                Some(mine) => mine.merge(&s),
                None => {
                    self.histograms.insert(k, s);
                }
            }
        }
    }

    /// As deltas, sorted by key (the client splits them deterministically).
    fn to_deltas(&self) -> Deltas {
        let mut counters: Vec<CounterDelta> = self.counters.iter().map(|(k, v)| CounterDelta { key: k.clone(), delta: *v }).collect();
        counters.sort_by(|a, b| a.key.canonical().cmp(b.key.canonical()));
        let mut histograms: Vec<HistogramDelta> =
            self.histograms.iter().map(|(k, s)| HistogramDelta { key: k.clone(), sketch: s.clone() }).collect();
        histograms.sort_by(|a, b| a.key.canonical().cmp(b.key.canonical()));
        Deltas { counters, histograms, ..Deltas::default() }
    }

    /// As deltas, sorted by key, without copying.
    fn into_deltas(self) -> Deltas {
        let mut counters: Vec<CounterDelta> = self.counters.into_iter().map(|(key, delta)| CounterDelta { key, delta }).collect();
        counters.sort_by(|a, b| a.key.canonical().cmp(b.key.canonical()));
        let mut histograms: Vec<HistogramDelta> = self.histograms.into_iter().map(|(key, sketch)| HistogramDelta { key, sketch }).collect();
        histograms.sort_by(|a, b| a.key.canonical().cmp(b.key.canonical()));
        Deltas { counters, histograms, ..Deltas::default() }
    }

    /// Values in this part (counter increments, samples).
    pub fn values(&self) -> u64 {
        let counters = self.counters.values().fold(0u64, |a, v| a.wrapping_add(*v));
        self.histograms.values().fold(counters, |a, s| a.wrapping_add(s.count()))
    }
}

/// The forwarding state of an aggregator.
#[derive(Debug, Default)]
pub struct Forward {
    accumulating: Part,
    inflight: VecDeque<(u64, Part)>,
    last_token: u64,
}

impl Forward {
    /// Adds a merged counter increment.
    pub fn add_counter(&mut self, key: &Arc<SeriesKey>, delta: u64) {
        let c = self.accumulating.counters.entry(key.clone()).or_insert(0);
        *c = c.wrapping_add(delta);
    }

    /// Adds a merged histogram delta.
    pub fn add_histogram(&mut self, key: &Arc<SeriesKey>, sketch: &Sketch) {
        match self.accumulating.histograms.get_mut(key) {
            Some(s) => s.merge(sketch),
            None => {
                self.accumulating.histograms.insert(key.clone(), sketch.clone());
            }
        }
    }

    /// A take: the accumulated deltas, under a new token. With `keep`
    /// (durable), they stay in flight until [`Forward::taken`].
    pub fn take(&mut self, keep: bool) -> (u64, Deltas) {
        self.last_token += 1;
        let part = std::mem::take(&mut self.accumulating);
        if !keep || part.is_empty() {
            return (self.last_token, part.into_deltas());
        }
        let deltas = part.to_deltas();
        self.inflight.push_back((self.last_token, part));
        (self.last_token, deltas)
    }

    /// A take as replayed from the WAL (nothing is handed out).
    pub fn replay_take(&mut self, token: u64) {
        self.last_token = token;
        let part = std::mem::take(&mut self.accumulating);
        if !part.is_empty() {
            self.inflight.push_back((token, part));
        }
    }

    /// A take that did not reach the forwarder (its log record never became
    /// durable): its deltas are accumulated again.
    pub fn untake(&mut self, token: u64) {
        if let Some(i) = self.inflight.iter().position(|(t, _)| *t == token) {
            let (_, part) = self.inflight.remove(i).expect("found");
            self.accumulating.absorb(part);
        }
    }

    /// The forwarder holds every take up to `token`.
    pub fn taken(&mut self, token: u64) {
        while self.inflight.front().is_some_and(|(t, _)| *t <= token) {
            self.inflight.pop_front();
        }
    }

    /// A restarted forwarder holds the takes up to `token`; later ones are
    /// taken again.
    pub fn resume(&mut self, token: u64) {
        // Tokens only grow, even if this state is older than the
        // forwarder's (a data dir restored without its forward state).
        self.last_token = self.last_token.max(token);
        self.taken(token);
        for (_, part) in std::mem::take(&mut self.inflight) {
            self.accumulating.absorb(part);
        }
    }

    /// Values accumulated or in flight.
    pub fn values(&self) -> u64 {
        self.inflight.iter().fold(self.accumulating.values(), |a, (_, p)| a.wrapping_add(p.values()))
    }

    /// For a checkpoint; `key` indexes the snapshot's key table.
    pub fn snapshot<'a>(&'a self, key: &mut dyn FnMut(&'a SeriesKey) -> u32) -> SnapForward {
        let mut part = |token: u64, p: &'a Part| SnapForwardPart {
            token,
            counters: p.counters.iter().map(|(k, v)| SnapForwardValue { key: key(k), counter: *v, sketch: None }).collect(),
            histograms: p
                .histograms
                .iter()
                .map(|(k, s)| SnapForwardValue { key: key(k), counter: 0, sketch: Some(sketch_to_proto(s)) })
                .collect(),
        };
        let accumulating = Some(part(0, &self.accumulating));
        let inflight = self.inflight.iter().map(|(t, p)| part(*t, p)).collect();
        SnapForward { last_token: self.last_token, accumulating, inflight }
    }

    /// From a checkpoint; `key` resolves the snapshot's key table.
    pub fn restore(s: SnapForward, key: &dyn Fn(u32) -> Result<Arc<SeriesKey>, String>) -> Result<Forward, String> {
        let part = |p: SnapForwardPart| -> Result<Part, String> {
            let mut out = Part::default();
            for c in p.counters {
                out.counters.insert(key(c.key)?, c.counter);
            }
            for h in p.histograms {
                let k = key(h.key)?;
                let sketch = h.sketch.as_ref().ok_or_else(|| format!("forwarded histogram {} without a sketch", k.canonical()))?;
                let sketch = sketch_from_proto(sketch).map_err(|e| format!("forwarded sketch of {}: {e}", k.canonical()))?;
                out.histograms.insert(k, sketch);
            }
            Ok(out)
        };
        let mut f = Forward { last_token: s.last_token, ..Forward::default() };
        if let Some(a) = s.accumulating {
            f.accumulating = part(a)?;
        }
        for p in s.inflight {
            let token = p.token;
            f.inflight.push_back((token, part(p)?));
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Arc<SeriesKey> {
        Arc::new(SeriesKey::new(name, [("service", "api")]))
    }

    #[test]
    fn a_take_lost_with_the_forwarder_is_taken_again_and_a_saved_one_never() {
        let mut f = Forward::default();
        f.add_counter(&key("a_total"), 5);
        let (t1, d1) = f.take(true);
        assert_eq!(d1.values(), 5);
        f.add_counter(&key("a_total"), 7);
        let (t2, d2) = f.take(true);
        assert_eq!((t1, t2, d2.values()), (1, 2, 7));
        f.add_counter(&key("a_total"), 1);
        // The forwarder's state file holds take 1 only: 7 is taken again, with the 1.
        f.resume(t1);
        let (_, again) = f.take(true);
        assert_eq!(again.counter("a_total{service=\"api\"}"), Some(8));
        f.taken(3);
        assert_eq!(f.values(), 0);
    }

    #[test]
    fn replayed_takes_cut_where_the_live_ones_did_and_untake_gives_back() {
        let mut live = Forward::default();
        let mut replayed = Forward::default();
        let mut s = Sketch::default();
        s.record(0.5).unwrap();
        for f in [&mut live, &mut replayed] {
            f.add_counter(&key("a_total"), 2);
            f.add_histogram(&key("h"), &s);
        }
        let (token, _) = live.take(true);
        replayed.replay_take(token);
        for f in [&mut live, &mut replayed] {
            f.add_counter(&key("a_total"), 3);
        }
        assert_eq!(live.values(), replayed.values());
        live.untake(token);
        let (_, d) = live.take(false);
        assert_eq!((d.values(), d.histograms.len()), (6, 1));
    }
}
