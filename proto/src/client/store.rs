//! The client's durable state, for a durable source (a collector
//! forwarding upstream with a data directory).
//!
//! What must survive a crash so that nothing is lost or counted twice: the
//! instance id (the upstream dedups by it), and per shard the last sequence
//! number, the numbered batches not yet known to be acknowledged (resent
//! with the same numbers after a restart: the upstream drops the ones it
//! merged) and the deltas taken but not yet numbered. Plus the source's
//! take token: which of the source's takes this state already holds (see
//! [`super::DeltaSource::resume`]).
//!
//! The file is rewritten whole (tmp + fsync + rename + directory fsync)
//! after every take and before a newly numbered batch is first sent: a
//! batch never reaches the upstream before the state holding it is on
//! disk. It holds deltas per series, so its size is bounded like the
//! client's memory. Gauges and the own series are not kept (a gauge is
//! sent again at the next interval; the own series are outside the
//! conservation counts).

use super::Batch;
use crate::convert::{labels_from_proto, labels_to_proto, sketch_from_proto, sketch_to_proto};
use crate::v1 as pb;
use prost::Message;
use shoal_core::{CounterDelta, Deltas, HistogramDelta, SeriesKey};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a client holds for one shard.
#[derive(Clone, Debug, Default)]
pub struct LaneState {
    /// The shard's URL.
    pub endpoint: String,
    /// Last sequence number given to a batch.
    pub sequence: u64,
    /// Numbered batches, in order.
    pub sealed: Vec<Batch>,
    /// Taken, not yet numbered.
    pub accumulating: Deltas,
    /// Start of the accumulating interval, Unix nanoseconds.
    pub accumulating_since: u64,
}

/// A client's durable state.
#[derive(Clone, Debug, Default)]
pub struct ClientState {
    /// The instance id the client sends as.
    pub instance_id: String,
    /// The source's last take this state holds.
    pub take_token: u64,
    /// Every shard with something held.
    pub lanes: Vec<LaneState>,
}

#[derive(Clone, PartialEq, Message)]
struct StateMsg {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(string, tag = "2")]
    instance_id: String,
    #[prost(uint64, tag = "3")]
    take_token: u64,
    #[prost(message, repeated, tag = "4")]
    lanes: Vec<LaneMsg>,
}

#[derive(Clone, PartialEq, Message)]
struct LaneMsg {
    #[prost(string, tag = "1")]
    endpoint: String,
    #[prost(uint64, tag = "2")]
    sequence: u64,
    #[prost(message, repeated, tag = "3")]
    sealed: Vec<BatchMsg>,
    #[prost(message, optional, tag = "4")]
    accumulating: Option<DeltasMsg>,
    #[prost(uint64, tag = "5")]
    accumulating_since: u64,
}

#[derive(Clone, PartialEq, Message)]
struct BatchMsg {
    #[prost(uint64, tag = "1")]
    sequence: u64,
    #[prost(uint64, tag = "2")]
    start_nanos: u64,
    #[prost(uint64, tag = "3")]
    end_nanos: u64,
    #[prost(message, optional, tag = "4")]
    deltas: Option<DeltasMsg>,
}

#[derive(Clone, PartialEq, Message)]
struct DeltasMsg {
    #[prost(message, repeated, tag = "1")]
    counters: Vec<KeyedCounter>,
    #[prost(message, repeated, tag = "2")]
    histograms: Vec<KeyedHistogram>,
}

#[derive(Clone, PartialEq, Message)]
struct KeyedCounter {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "2")]
    labels: Vec<pb::Label>,
    #[prost(uint64, tag = "3")]
    delta: u64,
}

#[derive(Clone, PartialEq, Message)]
struct KeyedHistogram {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "2")]
    labels: Vec<pb::Label>,
    #[prost(message, optional, tag = "3")]
    sketch: Option<pb::Sketch>,
}

const VERSION: u32 = 1;

fn deltas_to_msg(d: &Deltas) -> DeltasMsg {
    DeltasMsg {
        counters: d
            .counters
            .iter()
            .map(|c| KeyedCounter { name: c.key.name().to_string(), labels: labels_to_proto(c.key.labels()), delta: c.delta })
            .collect(),
        histograms: d
            .histograms
            .iter()
            .map(|h| KeyedHistogram {
                name: h.key.name().to_string(),
                labels: labels_to_proto(h.key.labels()),
                sketch: Some(sketch_to_proto(&h.sketch)),
            })
            .collect(),
    }
}

fn deltas_from_msg(m: Option<DeltasMsg>) -> Result<Deltas, String> {
    let Some(m) = m else { return Ok(Deltas::default()) };
    let key = |name: String, labels: &[pb::Label]| Arc::new(SeriesKey::new(name, labels_from_proto(labels)));
    let mut d = Deltas::default();
    for c in m.counters {
        d.counters.push(CounterDelta { key: key(c.name, &c.labels), delta: c.delta });
    }
    for h in m.histograms {
        let sketch = h.sketch.as_ref().ok_or("a histogram without a sketch")?;
        let sketch = sketch_from_proto(sketch).map_err(|e| format!("histogram {}: {e}", h.name))?;
        d.histograms.push(HistogramDelta { key: key(h.name, &h.labels), sketch });
    }
    Ok(d)
}

impl ClientState {
    fn to_msg(&self) -> StateMsg {
        StateMsg {
            version: VERSION,
            instance_id: self.instance_id.clone(),
            take_token: self.take_token,
            lanes: self
                .lanes
                .iter()
                .map(|l| LaneMsg {
                    endpoint: l.endpoint.clone(),
                    sequence: l.sequence,
                    sealed: l
                        .sealed
                        .iter()
                        .map(|b| BatchMsg {
                            sequence: b.sequence,
                            start_nanos: b.start_nanos,
                            end_nanos: b.end_nanos,
                            deltas: Some(deltas_to_msg(&b.deltas)),
                        })
                        .collect(),
                    accumulating: Some(deltas_to_msg(&l.accumulating)),
                    accumulating_since: l.accumulating_since,
                })
                .collect(),
        }
    }

    fn from_msg(m: StateMsg) -> Result<ClientState, String> {
        if m.version != VERSION {
            return Err(format!("version {} (this build reads {VERSION})", m.version));
        }
        let mut lanes = Vec::with_capacity(m.lanes.len());
        for l in m.lanes {
            let mut sealed = Vec::with_capacity(l.sealed.len());
            for b in l.sealed {
                sealed.push(Batch {
                    sequence: b.sequence,
                    start_nanos: b.start_nanos,
                    end_nanos: b.end_nanos,
                    deltas: deltas_from_msg(b.deltas)?,
                    own: Deltas::default(),
                });
            }
            lanes.push(LaneState {
                endpoint: l.endpoint,
                sequence: l.sequence,
                sealed,
                accumulating: deltas_from_msg(l.accumulating)?,
                accumulating_since: l.accumulating_since,
            });
        }
        Ok(ClientState { instance_id: m.instance_id, take_token: m.take_token, lanes })
    }
}

/// The state file of a client.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The file at `path` (its directory is created on the first save).
    pub fn new(path: impl Into<PathBuf>) -> StateFile {
        StateFile { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state; `None` if there is no file yet. A file that cannot
    /// be read or decoded is an error naming it (never silently ignored:
    /// the batches in it may be unacknowledged).
    pub fn load(&self) -> Result<Option<ClientState>, String> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
        };
        let msg = StateMsg::decode(bytes.as_slice()).map_err(|e| format!("corrupt {}: {e}", self.path.display()))?;
        ClientState::from_msg(msg).map(Some).map_err(|e| format!("corrupt {}: {e}", self.path.display()))
    }

    /// Writes `state` durably: tmp file, fsync, rename, directory fsync.
    pub fn save(&self, state: &ClientState) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("tmp");
        let bytes = state.to_msg().encode_to_vec();
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::Sketch;

    #[test]
    fn a_saved_state_loads_back_with_every_value() {
        let dir = std::env::temp_dir().join(format!("shoal-store-{}", std::process::id()));
        let file = StateFile::new(dir.join("forward.state"));
        assert!(file.load().unwrap().is_none());
        let mut d = Deltas::default();
        d.counters.push(CounterDelta { key: Arc::new(SeriesKey::new("a_total", [("k", "v")])), delta: 7 });
        let mut s = Sketch::default();
        s.record(0.25).unwrap();
        s.record(3.0).unwrap();
        d.histograms.push(HistogramDelta { key: Arc::new(SeriesKey::new("h", [("x", "y")])), sketch: s });
        let state = ClientState {
            instance_id: "edge-1".into(),
            take_token: 42,
            lanes: vec![LaneState {
                endpoint: "http://127.0.0.1:1".into(),
                sequence: 9,
                sealed: vec![Batch { sequence: 9, start_nanos: 1, end_nanos: 2, deltas: d.clone(), own: Deltas::default() }],
                accumulating: d.clone(),
                accumulating_since: 2,
            }],
        };
        file.save(&state).unwrap();
        let back = file.load().unwrap().unwrap();
        assert_eq!((back.instance_id.as_str(), back.take_token), ("edge-1", 42));
        let lane = &back.lanes[0];
        assert_eq!((lane.sequence, lane.sealed[0].sequence, lane.accumulating_since), (9, 9, 2));
        assert_eq!(lane.sealed[0].deltas.values(), d.values());
        assert_eq!(lane.accumulating.counter("a_total{k=\"v\"}"), Some(7));
        assert_eq!(lane.accumulating.histogram("h{x=\"y\"}").unwrap().count(), 2);
        std::fs::write(file.path(), b"\xff\xff garbage").unwrap();
        assert!(file.load().unwrap_err().contains("corrupt"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
