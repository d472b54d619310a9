//! Builds remote-write requests from an [`Interval`] and compresses them.
//!
//! [`write_requests`] turns an interval into one or more [`WriteRequest`]s of
//! at most `max_samples_per_request` samples (a native histogram counts as
//! one) each; the time series of one [`ExportSeries`] always travel in the same
//! request, so a histogram's quantiles, `_sum` and `_count` arrive together.
//! [`encode_interval`] adds the protobuf encoding and the snappy block
//! compression the wire format asks for.

use super::proto::{self, histogram, BucketSpan, Label, MetricMetadata, MetricType, Sample, TimeSeries, WriteRequest};
use super::{ExportHistogram, ExportSeries, ExportValue, HistogramMode, Interval};
use bytes::Bytes;
use prost::Message;
use std::collections::BTreeMap;

/// Finest native histogram schema Prometheus accepts.
pub const MAX_SCHEMA: i32 = 8;
/// Coarsest native histogram schema Prometheus accepts.
pub const MIN_SCHEMA: i32 = -4;

/// What encoding an interval produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodeStats {
    /// Input series.
    pub series: usize,
    /// Float samples written.
    pub samples: u64,
    /// Native histogram samples written.
    pub histograms: u64,
    /// Histograms that `native` mode had to send as a summary (scale below -4
    /// or no buckets available).
    pub native_unrepresentable: u64,
    /// Requests the interval was split into.
    pub requests: usize,
}

/// One compressed request, ready for the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedRequest {
    /// Snappy-compressed (block format) protobuf `WriteRequest`.
    pub body: Bytes,
    /// Float samples in it.
    pub samples: u64,
    /// Native histogram samples in it.
    pub histograms: u64,
}

/// The Prometheus native histogram index of sketch bucket `sketch_index`.
///
/// Both sides use base `2^(2^-scale)` and upper-inclusive buckets; the sketch's
/// bucket `i` covers `(base^i, base^(i+1)]`, Prometheus' bucket `i` covers
/// `(base^(i-1), base^i]`.
#[inline]
pub fn prometheus_index(sketch_index: i32) -> i32 {
    sketch_index + 1
}

/// The series name a counter is exported under: `name_total`, not doubled.
pub fn counter_name(name: &str) -> String {
    if name.ends_with("_total") {
        name.to_string()
    } else {
        format!("{name}_total")
    }
}

/// Number of samples (float samples + native histograms) `interval` produces
/// for a target in `mode`.
pub fn sample_count(interval: &Interval, mode: HistogramMode) -> u64 {
    interval.series.iter().map(|s| series_sample_count(s, mode)).sum()
}

fn series_sample_count(s: &ExportSeries, mode: HistogramMode) -> u64 {
    match &s.value {
        ExportValue::Counter(_) | ExportValue::Gauge(_) => 1,
        ExportValue::Histogram(h) => {
            let native = mode.native() && native_representable(h);
            let summary = mode.summary() || !native;
            (native as u64) + if summary { h.quantiles.len() as u64 + 2 } else { 0 }
        }
    }
}

fn native_representable(h: &ExportHistogram) -> bool {
    h.native.as_ref().is_some_and(|n| n.schema >= MIN_SCHEMA)
}

/// The native histogram sample of `h` at `timestamp`, or `None` when it has no
/// buckets or its schema is below [`MIN_SCHEMA`]. Schemas above
/// [`MAX_SCHEMA`] are downscaled (exact: neighbouring buckets merge).
pub fn native_histogram(h: &ExportHistogram, timestamp: i64) -> Option<proto::Histogram> {
    let native = h.native.as_ref()?;
    if native.schema < MIN_SCHEMA {
        return None;
    }
    let (schema, shift) = if native.schema > MAX_SCHEMA { (MAX_SCHEMA, (native.schema - MAX_SCHEMA) as u32) } else { (native.schema, 0) };
    let (positive_spans, positive_deltas) = spans_and_deltas(&native.positive, shift);
    let (negative_spans, negative_deltas) = spans_and_deltas(&native.negative, shift);
    Some(proto::Histogram {
        count: Some(histogram::Count::CountInt(h.count)),
        sum: h.sum,
        schema,
        zero_threshold: native.zero_threshold,
        zero_count: Some(histogram::ZeroCount::ZeroCountInt(native.zero_count)),
        negative_spans,
        negative_deltas,
        negative_counts: Vec::new(),
        positive_spans,
        positive_deltas,
        positive_counts: Vec::new(),
        reset_hint: histogram::ResetHint::Unknown as i32,
        timestamp,
    })
}

/// Spans and delta-encoded counts of `(sketch index, count)` buckets, after
/// downscaling by `shift` and converting to Prometheus indices. Empty buckets
/// are left out; every gap starts a new span.
pub fn spans_and_deltas(buckets: &[(i32, u64)], shift: u32) -> (Vec<BucketSpan>, Vec<i64>) {
    // Prometheus indices, sorted, duplicates (from downscaling or the input) merged.
    let mut merged: BTreeMap<i32, u64> = BTreeMap::new();
    for &(i, c) in buckets {
        if c > 0 {
            let e = merged.entry(prometheus_index(i >> shift)).or_insert(0);
            *e = e.saturating_add(c);
        }
    }
    let mut spans: Vec<BucketSpan> = Vec::new();
    let mut deltas = Vec::with_capacity(merged.len());
    let mut next: Option<i32> = None; // index just after the last span
    let mut previous = 0u64;
    for (index, count) in merged {
        match (next, spans.last_mut()) {
            (Some(n), Some(last)) if n == index => last.length += 1,
            (Some(n), _) => spans.push(BucketSpan { offset: index - n, length: 1 }),
            (None, _) => spans.push(BucketSpan { offset: index, length: 1 }),
        }
        next = Some(index + 1);
        // Counts are u64 and deltas i64: wrapping arithmetic round-trips
        // exactly through the receiver's running int64 sum.
        deltas.push((count as i64).wrapping_sub(previous as i64));
        previous = count;
    }
    (spans, deltas)
}

fn labels_of(name: &str, labels: &[(String, String)], extra: Option<(&str, String)>) -> Vec<Label> {
    let mut out = Vec::with_capacity(labels.len() + 2);
    out.push(Label { name: "__name__".into(), value: name.into() });
    out.extend(labels.iter().map(|(k, v)| Label { name: k.clone(), value: v.clone() }));
    if let Some((k, v)) = extra {
        out.push(Label { name: k.into(), value: v });
    }
    // Upper-case label names sort before `__name__`.
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn float_series(labels: Vec<Label>, value: f64, timestamp: i64) -> TimeSeries {
    TimeSeries { labels, samples: vec![Sample { value, timestamp }], exemplars: Vec::new(), histograms: Vec::new() }
}

/// Appends the time series of `s` to `out`; returns its metadata.
fn series_of(s: &ExportSeries, mode: HistogramMode, timestamp: i64, out: &mut Vec<TimeSeries>, stats: &mut EncodeStats) -> MetricMetadata {
    let (family, kind) = match &s.value {
        ExportValue::Counter(total) => {
            let name = counter_name(&s.name);
            out.push(float_series(labels_of(&name, &s.labels, None), *total as f64, timestamp));
            stats.samples += 1;
            (name, MetricType::Counter)
        }
        ExportValue::Gauge(v) => {
            out.push(float_series(labels_of(&s.name, &s.labels, None), *v, timestamp));
            stats.samples += 1;
            (s.name.clone(), MetricType::Gauge)
        }
        ExportValue::Histogram(h) => {
            let mut native_sent = false;
            if mode.native() {
                match native_histogram(h, timestamp) {
                    Some(hist) => {
                        out.push(TimeSeries {
                            labels: labels_of(&s.name, &s.labels, None),
                            samples: Vec::new(),
                            exemplars: Vec::new(),
                            histograms: vec![hist],
                        });
                        stats.histograms += 1;
                        native_sent = true;
                    }
                    None => stats.native_unrepresentable += 1,
                }
            }
            if mode.summary() || !native_sent {
                for &(q, v) in &h.quantiles {
                    out.push(float_series(labels_of(&s.name, &s.labels, Some(("quantile", q.to_string()))), v, timestamp));
                }
                out.push(float_series(labels_of(&format!("{}_sum", s.name), &s.labels, None), h.sum, timestamp));
                out.push(float_series(labels_of(&format!("{}_count", s.name), &s.labels, None), h.count as f64, timestamp));
                stats.samples += h.quantiles.len() as u64 + 2;
            }
            let kind = if native_sent { MetricType::Histogram } else { MetricType::Summary };
            (s.name.clone(), kind)
        }
    };
    MetricMetadata {
        r#type: kind as i32,
        metric_family_name: family,
        help: s.help.clone().unwrap_or_default(),
        unit: s.unit.clone().unwrap_or_default(),
    }
}

/// The requests for `interval` in `mode`, each with at most
/// `max_samples_per_request` samples (unless one series alone has more) and
/// the metadata of the families it carries. An empty interval gives none.
pub fn write_requests(interval: &Interval, mode: HistogramMode, max_samples_per_request: usize) -> (Vec<WriteRequest>, EncodeStats) {
    let max = max_samples_per_request.max(1) as u64;
    let mut stats = EncodeStats { series: interval.series.len(), ..EncodeStats::default() };
    let mut requests = Vec::new();
    let mut timeseries = Vec::new();
    let mut metadata: BTreeMap<String, MetricMetadata> = BTreeMap::new();
    let mut in_request = 0u64;
    for s in &interval.series {
        let n = series_sample_count(s, mode);
        if in_request > 0 && in_request + n > max {
            requests.push(WriteRequest {
                timeseries: std::mem::take(&mut timeseries),
                metadata: std::mem::take(&mut metadata).into_values().collect(),
            });
            in_request = 0;
        }
        let meta = series_of(s, mode, interval.end_ms, &mut timeseries, &mut stats);
        metadata.entry(meta.metric_family_name.clone()).or_insert(meta);
        in_request += n;
    }
    if !timeseries.is_empty() {
        requests.push(WriteRequest { timeseries, metadata: metadata.into_values().collect() });
    }
    stats.requests = requests.len();
    (requests, stats)
}

/// Snappy block-format compression (what remote-write 1.0 asks for; not the
/// framed format).
pub fn compress(bytes: &[u8]) -> Result<Vec<u8>, snap::Error> {
    snap::raw::Encoder::new().compress_vec(bytes)
}

/// Protobuf-encodes and compresses `request`.
pub fn encode_request(request: &WriteRequest) -> Result<Vec<u8>, snap::Error> {
    compress(&request.encode_to_vec())
}

/// Decompresses and decodes a request body (receivers, tests).
pub fn decode_request(body: &[u8]) -> Result<WriteRequest, String> {
    let raw = snap::raw::Decoder::new().decompress_vec(body).map_err(|e| format!("snappy: {e}"))?;
    WriteRequest::decode(raw.as_slice()).map_err(|e| format!("protobuf: {e}"))
}

/// [`write_requests`], encoded and compressed.
pub fn encode_interval(
    interval: &Interval,
    mode: HistogramMode,
    max_samples_per_request: usize,
) -> Result<(Vec<EncodedRequest>, EncodeStats), snap::Error> {
    let (requests, stats) = write_requests(interval, mode, max_samples_per_request);
    let encoded = requests
        .iter()
        .map(|r| {
            Ok(EncodedRequest {
                body: Bytes::from(encode_request(r)?),
                samples: r.timeseries.iter().map(|t| t.samples.len() as u64).sum(),
                histograms: r.timeseries.iter().map(|t| t.histograms.len() as u64).sum(),
            })
        })
        .collect::<Result<Vec<_>, snap::Error>>()?;
    Ok((encoded, stats))
}
