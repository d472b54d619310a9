//! A whole [`Aggregator`] as a versioned protobuf message (hand-written
//! `prost` structs), for the durable checkpoints: series (with their retained
//! interval points and sketches), instances (labels, last sequence, refs,
//! gauges), HELP and units per name, and the epoch. `series_per_name` and `kinds_by_name` are derived
//! from the series on restore.
//!
//! Series keys are written once, in a key table; series, refs and gauges
//! refer to them by index (refs of many instances share one key).

use super::instances::{Instance, RefEntry};
use super::rollup::{Point, Series};
use super::Aggregator;
use crate::config::Config;
use crate::rejection::Rejection;
use crate::stats::Stats;
use crate::validate::Description;
use shoal_core::{Kind, SeriesKey};
use shoal_proto as pb;
use shoal_proto::convert::{labels_from_proto, labels_to_proto, sketch_from_proto, sketch_to_proto};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// The snapshot format version written; others are refused.
pub const SNAPSHOT_VERSION: u32 = 1;

/// A whole aggregator.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Snapshot {
    /// [`SNAPSHOT_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The collector epoch (survives restarts: SDKs need not resend definitions).
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
    /// Every series key referred to below.
    #[prost(message, repeated, tag = "3")]
    pub keys: Vec<SnapKey>,
    /// Rollup series.
    #[prost(message, repeated, tag = "4")]
    pub series: Vec<SnapSeries>,
    /// Instances.
    #[prost(message, repeated, tag = "5")]
    pub instances: Vec<SnapInstance>,
    /// HELP and unit per metric name.
    #[prost(message, repeated, tag = "6")]
    pub descriptions: Vec<SnapDescription>,
    /// The rollup interval the points are indexed by (0: unknown).
    #[prost(uint64, tag = "7")]
    pub interval_secs: u64,
    /// What is accumulated or in flight for the upstream (`upstream`).
    #[prost(message, optional, tag = "8")]
    pub forward: Option<SnapForward>,
}

/// The forwarding state ([`super::forward::Forward`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapForward {
    /// The last take's token.
    #[prost(uint64, tag = "1")]
    pub last_token: u64,
    /// Merged since the last take.
    #[prost(message, optional, tag = "2")]
    pub accumulating: Option<SnapForwardPart>,
    /// Taken, not yet saved by the forwarder.
    #[prost(message, repeated, tag = "3")]
    pub inflight: Vec<SnapForwardPart>,
}

/// Deltas of one take (or the accumulating ones, token 0).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapForwardPart {
    /// The take's token.
    #[prost(uint64, tag = "1")]
    pub token: u64,
    /// Counter increments.
    #[prost(message, repeated, tag = "2")]
    pub counters: Vec<SnapForwardValue>,
    /// Histogram deltas.
    #[prost(message, repeated, tag = "3")]
    pub histograms: Vec<SnapForwardValue>,
}

/// One series' forwarded delta.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapForwardValue {
    /// Index in [`Snapshot::keys`].
    #[prost(uint32, tag = "1")]
    pub key: u32,
    /// Counter increment.
    #[prost(uint64, tag = "2")]
    pub counter: u64,
    /// Histogram delta.
    #[prost(message, optional, tag = "3")]
    pub sketch: Option<pb::Sketch>,
}

/// A metric name's HELP and unit.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapDescription {
    /// Metric name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// HELP text.
    #[prost(string, tag = "2")]
    pub help: String,
    /// Unit.
    #[prost(string, optional, tag = "3")]
    pub unit: Option<String>,
}

/// A series key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapKey {
    /// Metric name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Labels.
    #[prost(message, repeated, tag = "2")]
    pub labels: Vec<pb::Label>,
}

/// A rollup series.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapSeries {
    /// Index in [`Snapshot::keys`].
    #[prost(uint32, tag = "1")]
    pub key: u32,
    /// Index in `Kind::ALL`.
    #[prost(uint32, tag = "2")]
    pub kind: u32,
    /// Cumulative total (counter) or count (histogram).
    #[prost(uint64, tag = "3")]
    pub total: u64,
    /// Histogram: cumulative sum.
    #[prost(double, tag = "4")]
    pub sum: f64,
    /// Last update, Unix seconds.
    #[prost(uint64, tag = "5")]
    pub last_update: u64,
    /// Retained interval points, ascending.
    #[prost(message, repeated, tag = "6")]
    pub points: Vec<SnapPoint>,
    /// Histogram: every sample since the series began (native histograms).
    #[prost(message, optional, tag = "7")]
    pub cumulative: Option<pb::Sketch>,
}

/// One interval point.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapPoint {
    /// Interval index.
    #[prost(uint64, tag = "1")]
    pub interval: u64,
    /// Counter increase (counters).
    #[prost(uint64, tag = "2")]
    pub counter: u64,
    /// Merged sketch (histograms).
    #[prost(message, optional, tag = "3")]
    pub sketch: Option<pb::Sketch>,
    /// Rolled-up value (gauges).
    #[prost(double, optional, tag = "4")]
    pub gauge: Option<f64>,
}

/// One instance.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapInstance {
    /// Instance id.
    #[prost(string, tag = "1")]
    pub id: String,
    /// Instance labels.
    #[prost(message, repeated, tag = "2")]
    pub labels: Vec<pb::Label>,
    /// Last merged sequence (the dedup state).
    #[prost(uint64, tag = "3")]
    pub last_sequence: u64,
    /// Last seen, Unix seconds.
    #[prost(uint64, tag = "4")]
    pub last_seen: u64,
    /// Accepted refs.
    #[prost(uint64, tag = "5")]
    pub accepted: u64,
    /// Refs.
    #[prost(message, repeated, tag = "6")]
    pub refs: Vec<SnapRef>,
    /// Gauge values.
    #[prost(message, repeated, tag = "7")]
    pub gauges: Vec<SnapGauge>,
}

/// What a ref stands for.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapRef {
    /// The ref.
    #[prost(uint32, tag = "1")]
    pub r#ref: u32,
    /// A series: its index in [`Snapshot::keys`] plus one; 0: refused.
    #[prost(uint32, tag = "2")]
    pub key: u32,
    /// Refused: index in `Rejection::ALL`.
    #[prost(uint32, tag = "3")]
    pub refused: u32,
}

/// An instance's gauge value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapGauge {
    /// Index in [`Snapshot::keys`].
    #[prost(uint32, tag = "1")]
    pub key: u32,
    /// Value.
    #[prost(double, tag = "2")]
    pub value: f64,
}

#[derive(Default)]
struct KeyTable<'a> {
    index: HashMap<&'a str, u32>,
    keys: Vec<SnapKey>,
}

impl<'a> KeyTable<'a> {
    fn of(&mut self, key: &'a SeriesKey) -> u32 {
        let next = self.keys.len() as u32;
        *self.index.entry(key.canonical()).or_insert_with(|| {
            self.keys.push(SnapKey { name: key.name().to_string(), labels: labels_to_proto(key.labels()) });
            next
        })
    }
}

fn kind_index(kind: Kind) -> u32 {
    Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0) as u32
}

impl Aggregator {
    /// The whole state, as a checkpoint stores it.
    pub fn snapshot(&self) -> Snapshot {
        let mut table = KeyTable::default();
        let series = self
            .series
            .values()
            .map(|s| SnapSeries {
                key: table.of(&s.key),
                kind: kind_index(s.kind),
                total: s.total,
                sum: s.sum,
                last_update: s.last_update,
                points: s
                    .points
                    .iter()
                    .map(|(interval, p)| match p {
                        Point::Counter(v) => SnapPoint { interval: *interval, counter: *v, sketch: None, gauge: None },
                        Point::Histogram(sk) => {
                            SnapPoint { interval: *interval, counter: 0, sketch: Some(sketch_to_proto(sk)), gauge: None }
                        }
                        Point::Gauge(v) => SnapPoint { interval: *interval, counter: 0, sketch: None, gauge: Some(*v) },
                    })
                    .collect(),
                cumulative: s.cumulative.as_ref().map(sketch_to_proto),
            })
            .collect();
        let instances = self
            .instances
            .iter()
            .map(|(id, i)| SnapInstance {
                id: id.clone(),
                labels: labels_to_proto(&i.labels),
                last_sequence: i.last_sequence,
                last_seen: i.last_seen_secs,
                accepted: i.accepted as u64,
                refs: i
                    .refs
                    .iter()
                    .map(|(r, e)| match e {
                        RefEntry::Series(k) => SnapRef { r#ref: *r, key: table.of(k) + 1, refused: 0 },
                        RefEntry::Refused(why) => SnapRef { r#ref: *r, key: 0, refused: *why as u32 },
                    })
                    .collect(),
                gauges: i.gauges.iter().map(|(k, v)| SnapGauge { key: table.of(k), value: *v }).collect(),
            })
            .collect();
        let descriptions = self
            .descriptions
            .iter()
            .map(|(name, d)| SnapDescription { name: name.clone(), help: d.help.clone(), unit: d.unit.clone() })
            .collect();
        let forward = self.forward.as_ref().map(|f| f.snapshot(&mut |k| table.of(k)));
        Snapshot {
            version: SNAPSHOT_VERSION,
            epoch: self.epoch,
            keys: table.keys,
            series,
            instances,
            descriptions,
            interval_secs: self.config.interval_secs,
            forward,
        }
    }

    /// An aggregator holding `snapshot`, under `config`. The error says what
    /// is inconsistent.
    pub fn restore(config: Config, stats: Arc<Stats>, snapshot: Snapshot) -> Result<Aggregator, String> {
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(format!("snapshot version {} (this collector reads {SNAPSHOT_VERSION})", snapshot.version));
        }
        if snapshot.interval_secs != 0 && snapshot.interval_secs != config.interval_secs {
            // Points are indexed by interval: they cannot be re-bucketed.
            return Err(format!(
                "written with interval_secs = {}, this collector runs with {}: start it with --interval-secs {} \
                 (or move the data dir aside to start empty)",
                snapshot.interval_secs, config.interval_secs, snapshot.interval_secs
            ));
        }
        let mut agg = Aggregator::new(config, stats);
        agg.epoch = snapshot.epoch;
        let keys: Vec<Arc<SeriesKey>> =
            snapshot.keys.into_iter().map(|k| Arc::new(SeriesKey::new(k.name, labels_from_proto(&k.labels)))).collect();
        let key = |i: u32| keys.get(i as usize).cloned().ok_or_else(|| format!("key index {i} out of range"));
        agg.series.reserve(snapshot.series.len());
        for s in snapshot.series {
            let k = key(s.key)?;
            let kind = *Kind::ALL.get(s.kind as usize).ok_or_else(|| format!("kind {} out of range", s.kind))?;
            let mut points = VecDeque::with_capacity(s.points.len());
            for p in s.points {
                let point = match (kind, p.sketch) {
                    (Kind::Gauge, _) => Point::Gauge(p.gauge.ok_or_else(|| format!("gauge point without a value in {}", k.canonical()))?),
                    (Kind::Histogram, Some(sk)) => {
                        Point::Histogram(sketch_from_proto(&sk).map_err(|e| format!("sketch of {}: {e}", k.canonical()))?)
                    }
                    (Kind::Histogram, None) => return Err(format!("histogram point without a sketch in {}", k.canonical())),
                    _ => Point::Counter(p.counter),
                };
                points.push_back((p.interval, point));
            }
            *agg.series_per_name.entry(k.name().to_string()).or_insert(0) += 1;
            agg.kinds_by_name.entry(k.name().to_string()).or_insert(kind);
            let cumulative = match s.cumulative {
                Some(sk) if kind == Kind::Histogram => {
                    Some(sketch_from_proto(&sk).map_err(|e| format!("cumulative sketch of {}: {e}", k.canonical()))?)
                }
                _ => None,
            };
            let series = Series { key: k.clone(), kind, total: s.total, sum: s.sum, points, cumulative, last_update: s.last_update };
            agg.series.insert(k, series);
        }
        for i in snapshot.instances {
            let mut instance = Instance::new(i.last_seen);
            instance.labels = labels_from_proto(&i.labels);
            instance.last_sequence = i.last_sequence;
            instance.accepted = i.accepted as usize;
            for r in i.refs {
                let entry = match r.key {
                    0 => RefEntry::Refused(
                        *Rejection::ALL.get(r.refused as usize).ok_or_else(|| format!("reason {} out of range", r.refused))?,
                    ),
                    k => RefEntry::Series(key(k - 1)?),
                };
                instance.refs.insert(r.r#ref, entry);
            }
            for g in i.gauges {
                instance.gauges.insert(key(g.key)?, g.value);
            }
            agg.instances.insert(i.id, instance);
        }
        for d in snapshot.descriptions {
            agg.descriptions.insert(d.name, Description { help: d.help, unit: d.unit });
        }
        match (snapshot.forward, agg.forward.is_some()) {
            (Some(f), true) => agg.forward = Some(super::forward::Forward::restore(f, &key)?),
            (Some(f), false) => {
                let f = super::forward::Forward::restore(f, &key)?;
                if f.values() > 0 {
                    tracing::warn!(
                        values = f.values(),
                        "the checkpoint holds deltas for an upstream, but no upstream is configured: they are not forwarded"
                    );
                }
            }
            (None, _) => {}
        }
        Ok(agg)
    }
}
