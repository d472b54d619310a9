//! The Prometheus protobuf answer of `/metrics`, and how a scrape chooses
//! between it and the text format ([`negotiate`]).
//!
//! # Protobuf versus text
//!
//! A scraper that asks for `application/vnd.google.protobuf;
//! proto=io.prometheus.client.MetricFamily; encoding=delimited` (Prometheus
//! 2.42 started with `--enable-feature=native-histograms` does) gets
//! varint-length-delimited [`proto::MetricFamily`] messages; anyone else gets
//! the text format 0.0.4. Either may be gzipped (`Accept-Encoding`). The two
//! answers carry the same families, names, labels and HELP, except for
//! histograms:
//!
//! - counters: `COUNTER`, the cluster total (a double, as Prometheus stores
//!   it; text writes the exact integer);
//! - gauges: `GAUGE`, rolled up over live instances;
//! - histograms: **text** has a `summary` (quantiles over the last
//!   `summary_window_secs`, cumulative `_sum` / `_count`); **protobuf** has a
//!   `HISTOGRAM` with native buckets: the cumulative merged sketch of the
//!   rollup (every sample since the series began), schema = sketch scale
//!   (finer than 8 downscaled exactly), zero bucket, spans and delta counts,
//!   `sample_count` and `sample_sum`, through the same conversion
//!   remote-write uses ([`crate::remote_write::native_histogram`]). The
//!   summary quantiles exist only in text. A family with a histogram the
//!   native schema cannot express (sketch scale below −4, or no cumulative
//!   sketch) goes out as a `SUMMARY` there too, like remote-write does;
//! - the collector's self-metrics: their types (`COUNTER`, `GAUGE`).
//!
//! No sample carries a timestamp (the scrape's time applies). A family
//! without series is left out of the protobuf answer (text keeps its HELP
//! and TYPE lines).

pub mod negotiate;
pub mod proto;

pub use negotiate::{accepts_gzip, format, Format, PROTOBUF_CONTENT_TYPE, TEXT_CONTENT_TYPE};

use crate::aggregate::{unix_secs, Aggregator, Kind};
use crate::remote_write::{native_histogram, ExportHistogram, ExportSeries, ExportValue};
use crate::stats::Stats;
use parking_lot::Mutex;
use proto::{BucketSpan, LabelPair, Metric, MetricFamily, MetricType};
use shoal_core::exposition::TextWriter;
use shoal_core::names::{sanitize_label_name, sanitize_metric_name};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;

/// What the self-metrics are written to: a family header, then its
/// samples. The text writer is one; [`FamilyWriter`] (protobuf) the other.
pub trait MetricWriter {
    /// Starts a family of type `kind` (`counter`, `gauge`, ...).
    fn family(&mut self, name: &str, kind: &str, help: &str);
    /// One sample of the current family; `extra` is a label appended after
    /// `labels`, `value` is spelt as in the text format.
    fn sample(&mut self, name: &str, labels: &[(String, String)], extra: Option<(&str, &str)>, value: &str);
}

impl MetricWriter for TextWriter {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        TextWriter::family(self, name, kind, help);
    }

    fn sample(&mut self, name: &str, labels: &[(String, String)], extra: Option<(&str, &str)>, value: &str) {
        TextWriter::sample(self, name, labels, extra, value);
    }
}

/// Collects counter, gauge and untyped families as protobuf messages.
#[derive(Default)]
pub struct FamilyWriter {
    families: Vec<MetricFamily>,
}

impl FamilyWriter {
    /// The families written.
    pub fn finish(self) -> Vec<MetricFamily> {
        self.families
    }
}

impl MetricWriter for FamilyWriter {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let kind = match kind {
            "counter" => MetricType::Counter,
            "gauge" => MetricType::Gauge,
            _ => MetricType::Untyped,
        };
        self.families.push(MetricFamily {
            name: Some(name.to_string()),
            help: Some(help.to_string()),
            r#type: Some(kind as i32),
            metric: Vec::new(),
            unit: None,
        });
    }

    fn sample(&mut self, name: &str, labels: &[(String, String)], extra: Option<(&str, &str)>, value: &str) {
        // Rust parses every spelling `format_value` writes (`+Inf`, `NaN`).
        let value = value.parse::<f64>().unwrap_or(f64::NAN);
        let family = match self.families.last_mut() {
            Some(f) if f.name.as_deref() == Some(name) => f,
            // A sample outside its family's name (never written by the
            // self-metrics): a family of its own, untyped.
            _ => {
                self.family(name, "untyped", "");
                self.families.last_mut().expect("just pushed")
            }
        };
        let mut label = label_pairs(labels);
        label.extend(extra.map(|(k, v)| LabelPair { name: Some(sanitize_label_name(k)), value: Some(v.to_string()) }));
        let mut metric = Metric { label, ..Metric::default() };
        match family.r#type() {
            MetricType::Counter => metric.counter = Some(proto::Counter { value: Some(value) }),
            MetricType::Gauge => metric.gauge = Some(proto::Gauge { value: Some(value) }),
            _ => metric.untyped = Some(proto::Untyped { value: Some(value) }),
        }
        family.metric.push(metric);
    }
}

fn label_pairs(labels: &[(String, String)]) -> Vec<LabelPair> {
    labels.iter().map(|(k, v)| LabelPair { name: Some(sanitize_label_name(k)), value: Some(v.clone()) }).collect()
}

/// The native histogram message of `h`, or `None` when the native schema
/// cannot express it. The spans and deltas are remote-write's
/// ([`native_histogram`]), moved into the exposition message.
pub fn histogram_message(h: &ExportHistogram) -> Option<proto::Histogram> {
    let native = native_histogram(h, 0)?;
    let zero_count = match native.zero_count {
        Some(crate::remote_write::proto::histogram::ZeroCount::ZeroCountInt(n)) => n,
        // `native_histogram` writes integer histograms only.
        _ => 0,
    };
    let spans = |spans: Vec<crate::remote_write::proto::BucketSpan>| {
        spans.into_iter().map(|s| BucketSpan { offset: Some(s.offset), length: Some(s.length) }).collect()
    };
    Some(proto::Histogram {
        sample_count: Some(h.count),
        sample_sum: Some(h.sum),
        schema: Some(native.schema),
        zero_threshold: Some(native.zero_threshold),
        zero_count: Some(zero_count),
        negative_span: spans(native.negative_spans),
        negative_delta: native.negative_deltas,
        positive_span: spans(native.positive_spans),
        positive_delta: native.positive_deltas,
        ..proto::Histogram::default()
    })
}

/// The families of `/metrics` in protobuf: the cluster rollups (sorted by
/// name, as in text), then the self-metrics; families without series are
/// left out. Taken under the aggregator's
/// lock (the cumulative sketches are cloned there, as for remote-write).
pub fn families(aggregator: &Mutex<Aggregator>, stats: &Stats) -> Vec<MetricFamily> {
    let (mut out, series, instances) = {
        let agg = aggregator.lock();
        (rollup_families(&agg), agg.series_count(), agg.instance_count())
    };
    let mut w = FamilyWriter::default();
    stats.write(&mut w, series, instances);
    out.extend(w.finish());
    // A family without series (a gauge no live instance reports, remote-write
    // counters without targets) is left out, as the Go client library does;
    // the text format keeps its HELP and TYPE lines.
    out.retain(|f| !f.metric.is_empty());
    out
}

fn rollup_families(agg: &Aggregator) -> Vec<MetricFamily> {
    let export = agg.export(unix_secs());
    // Each exposed family's metric name (descriptions are kept by it) and kind.
    let mut first: HashMap<String, (String, Kind)> = HashMap::new();
    for v in &export.views {
        first.entry(sanitize_metric_name(v.key.name())).or_insert_with(|| (v.key.name().to_string(), v.kind));
    }
    let interval = export.into_interval(0);
    let mut by_name: BTreeMap<&str, Vec<&ExportSeries>> = BTreeMap::new();
    for s in &interval.series {
        by_name.entry(s.name.as_str()).or_default().push(s);
    }
    let mut families = Vec::with_capacity(by_name.len());
    for (name, series) in by_name {
        let Some((raw, kind)) = first.get(name) else { continue };
        let unit = agg.description(raw).and_then(|d| d.unit.clone());
        let family = |kind: MetricType, help: String, metric: Vec<Metric>| MetricFamily {
            name: Some(name.to_string()),
            help: Some(help),
            r#type: Some(kind as i32),
            metric,
            unit: unit.clone(),
        };
        // One kind per metric name; a series of another kind (two names
        // that sanitise alike) is left out rather than mistyped.
        let metric = |s: &ExportSeries| Metric { label: label_pairs(&s.labels), ..Metric::default() };
        match kind {
            Kind::Counter => {
                let metric = series
                    .iter()
                    .filter_map(|s| match s.value {
                        ExportValue::Counter(total) => {
                            Some(Metric { counter: Some(proto::Counter { value: Some(total as f64) }), ..metric(s) })
                        }
                        _ => None,
                    })
                    .collect();
                families.push(family(MetricType::Counter, crate::http::family_help(agg, raw, *kind, true), metric));
            }
            Kind::Gauge => {
                let metric = series
                    .iter()
                    .filter_map(|s| match s.value {
                        ExportValue::Gauge(v) => Some(Metric { gauge: Some(proto::Gauge { value: Some(v) }), ..metric(s) }),
                        _ => None,
                    })
                    .collect();
                families.push(family(MetricType::Gauge, crate::http::family_help(agg, raw, *kind, true), metric));
            }
            Kind::Histogram => {
                let histograms: Vec<(&ExportSeries, &ExportHistogram)> =
                    series.iter().filter_map(|s| if let ExportValue::Histogram(h) = &s.value { Some((*s, h)) } else { None }).collect();
                let native: Option<Vec<Metric>> = histograms
                    .iter()
                    .map(|(s, h)| histogram_message(h).map(|hist| Metric { histogram: Some(hist), ..metric(s) }))
                    .collect();
                match native {
                    Some(metric) => families.push(family(MetricType::Histogram, crate::http::family_help(agg, raw, *kind, true), metric)),
                    None => {
                        let metric = histograms
                            .iter()
                            .map(|(s, h)| Metric {
                                summary: Some(proto::Summary {
                                    sample_count: Some(h.count),
                                    sample_sum: Some(h.sum),
                                    quantile: h
                                        .quantiles
                                        .iter()
                                        .map(|&(q, v)| proto::Quantile { quantile: Some(q), value: Some(v) })
                                        .collect(),
                                }),
                                ..metric(s)
                            })
                            .collect();
                        families.push(family(MetricType::Summary, crate::http::family_help(agg, raw, *kind, false), metric));
                    }
                }
            }
        }
    }
    families
}

/// Varint-length-delimited encoding of `families` (the protobuf answer).
pub fn encode_delimited(families: &[MetricFamily]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in families {
        prost::Message::encode_length_delimited(f, &mut out).expect("a Vec grows");
    }
    out
}

/// Decodes a protobuf answer (tests, receivers).
pub fn decode_delimited(mut bytes: &[u8]) -> Result<Vec<MetricFamily>, prost::DecodeError> {
    let mut families = Vec::new();
    while !bytes.is_empty() {
        families.push(<MetricFamily as prost::Message>::decode_length_delimited(&mut bytes)?);
    }
    Ok(families)
}

/// The protobuf answer of `/metrics`: [`families`], encoded.
pub fn render_protobuf(aggregator: &Mutex<Aggregator>, stats: &Stats) -> Vec<u8> {
    encode_delimited(&families(aggregator, stats))
}

/// gzip (`Content-Encoding: gzip`) of `body`, default level.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4 + 64), flate2::Compression::default());
    e.write_all(body).expect("writing to a Vec cannot fail");
    e.finish().expect("writing to a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use shoal_core::Sketch;
    use shoal_proto as pb;
    use std::sync::Arc;

    fn def(r: u32, name: &str, help: &str, unit: &str) -> pb::SeriesDefinition {
        pb::SeriesDefinition {
            r#ref: r,
            name: name.into(),
            labels: vec![pb::Label { key: "route".into(), value: "/a".into() }],
            help: help.into(),
            unit: unit.into(),
        }
    }

    fn sketch_of(scale: i32, values: &[f64]) -> pb::Sketch {
        let mut s = Sketch::with_scale(scale);
        values.iter().for_each(|v| s.record(*v).unwrap());
        shoal_proto::convert::sketch_to_proto(&s)
    }

    /// Two instances: a counter, a gauge and a histogram each; then
    /// `coarse_seconds`, a histogram at a scale the native schema cannot express.
    fn aggregator() -> (Mutex<Aggregator>, Arc<Stats>) {
        let stats = Arc::new(Stats::default());
        let mut agg = Aggregator::new(Config::default(), stats.clone());
        let now = unix_secs();
        for (i, (instance, values)) in [("a", vec![0.0, 0.001, 0.5, 3.0, 3.0]), ("b", vec![-2.0, 0.25, 7.5, 1e6])].into_iter().enumerate() {
            let req = pb::FlushRequest {
                instance_id: instance.into(),
                sequence: 1,
                definitions: vec![
                    def(1, "req_total", "Requests.", ""),
                    def(2, "temp", "", ""),
                    def(3, "lat_seconds", "Latency.", "seconds"),
                    def(4, "coarse_seconds", "", ""),
                ],
                counters: vec![pb::CounterDelta { r#ref: 1, delta: 5 + 2 * i as u64 }],
                gauges: vec![pb::GaugeValue { r#ref: 2, value: 1.5 + i as f64 }],
                histograms: vec![
                    pb::HistogramDelta { r#ref: 3, sketch: Some(sketch_of(6, &values)) },
                    pb::HistogramDelta { r#ref: 4, sketch: Some(sketch_of(-6, &[1.0, 1e9])) },
                ],
                ..Default::default()
            };
            agg.apply(&req, now).unwrap();
        }
        (Mutex::new(agg), stats)
    }

    fn family<'a>(families: &'a [MetricFamily], name: &str) -> &'a MetricFamily {
        families.iter().find(|f| f.name() == name).unwrap_or_else(|| panic!("no family {name}"))
    }

    /// `(Prometheus index, count)` of every bucket of spans and deltas.
    fn buckets(spans: &[BucketSpan], deltas: &[i64]) -> Vec<(i32, u64)> {
        let (mut out, mut index, mut count, mut d) = (Vec::new(), 0i32, 0i64, deltas.iter());
        // The first offset is an index, later ones gaps after the previous span.
        for s in spans {
            index += s.offset();
            for _ in 0..s.length() {
                count += d.next().unwrap();
                out.push((index, count as u64));
                index += 1;
            }
        }
        assert!(d.next().is_none(), "as many deltas as buckets");
        out
    }

    #[test]
    fn protobuf_round_trips_with_native_buckets_of_the_cumulative_sketch() {
        let (agg, stats) = aggregator();
        let families = families(&agg, &stats);
        let bytes = encode_delimited(&families);
        assert_eq!(decode_delimited(&bytes).unwrap(), families, "round trip");

        let req = family(&families, "req_total");
        assert_eq!(req.r#type(), MetricType::Counter);
        assert_eq!(req.help(), "Requests.");
        assert_eq!(req.metric.len(), 1);
        assert_eq!(req.metric[0].counter.as_ref().unwrap().value(), 12.0);
        assert_eq!(req.metric[0].label, vec![LabelPair { name: Some("route".into()), value: Some("/a".into()) }]);
        let temp = family(&families, "temp");
        assert_eq!((temp.r#type(), temp.metric[0].gauge.as_ref().unwrap().value()), (MetricType::Gauge, 4.0));
        assert_eq!(temp.help(), "cluster gauge rolled up by sum over live instances");

        let lat = family(&families, "lat_seconds");
        assert_eq!(lat.r#type(), MetricType::Histogram);
        assert_eq!((lat.help(), lat.unit()), ("Latency. (unit: seconds)", "seconds"));
        let h = lat.metric[0].histogram.as_ref().unwrap();
        let cumulative = {
            let agg = agg.lock();
            let export = agg.export(unix_secs());
            export.views.into_iter().find(|v| v.key.name() == "lat_seconds").unwrap().cumulative.unwrap()
        };
        assert_eq!((h.sample_count(), h.sample_sum()), (9, 0.0 + 0.001 + 0.5 + 3.0 + 3.0 - 2.0 + 0.25 + 7.5 + 1e6));
        assert_eq!((h.schema(), h.zero_count(), h.zero_threshold()), (6, 1, shoal_core::sketch::ZERO_THRESHOLD));
        assert!(h.bucket.is_empty(), "no classic buckets");
        let positive: Vec<(i32, u64)> = cumulative.positive().iter().filter(|b| b.1 > 0).map(|(i, n)| (i + 1, n)).collect();
        let negative: Vec<(i32, u64)> = cumulative.negative().iter().filter(|b| b.1 > 0).map(|(i, n)| (i + 1, n)).collect();
        assert_eq!(buckets(&h.positive_span, &h.positive_delta), positive);
        assert_eq!(buckets(&h.negative_span, &h.negative_delta), negative);
        assert_eq!(positive.iter().map(|b| b.1).sum::<u64>(), 7);
        assert_eq!(negative, vec![(64, 1)], "|-2| = 2^(64/64) is the inclusive upper bound of bucket 64");

        // Scale -6 cannot be a native schema: a summary, as in text.
        let coarse = family(&families, "coarse_seconds");
        assert_eq!(coarse.r#type(), MetricType::Summary);
        let s = coarse.metric[0].summary.as_ref().unwrap();
        assert_eq!(s.sample_count(), 4);
        assert_eq!(s.quantile.iter().map(|q| q.quantile()).collect::<Vec<_>>(), Config::default().quantiles);

        // Self-metrics keep their types.
        let series = family(&families, "shoal_collector_series");
        assert_eq!((series.r#type(), series.metric[0].gauge.as_ref().unwrap().value()), (MetricType::Gauge, 4.0));
        let merged = family(&families, "shoal_collector_values_merged_total");
        // Counter increments 5 + 7, histogram samples 5 + 4 + 2 + 2.
        assert_eq!((merged.r#type(), merged.metric[0].counter.as_ref().unwrap().value()), (MetricType::Counter, 25.0));
        let rejected = family(&families, "shoal_collector_batches_rejected_total");
        assert!(rejected.metric.iter().all(|m| m.label.iter().any(|l| l.name() == "reason")));
    }

    #[test]
    fn protobuf_and_text_expose_the_same_families() {
        let (agg, stats) = aggregator();
        let families = families(&agg, &stats);
        let text = crate::http::render(&agg.lock(), &stats);
        let typed: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let (name, kind) = l.split_once(' ').unwrap();
                (name.to_string(), kind.to_string())
            })
            .collect();
        // Text keeps HELP and TYPE of families without samples; protobuf leaves them out.
        let typed: Vec<(String, String)> = typed
            .into_iter()
            .filter(|(name, _)| text.lines().any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{"))))
            .collect();
        assert!(typed.len() > 10, "{typed:?}");
        let from_proto: Vec<(String, String)> = families
            .iter()
            .map(|f| {
                let kind = match f.r#type() {
                    // Text has no native histograms: a summary there.
                    MetricType::Histogram => "summary",
                    MetricType::Counter => "counter",
                    MetricType::Gauge => "gauge",
                    MetricType::Summary => "summary",
                    other => panic!("{other:?}"),
                };
                (f.name().to_string(), kind.to_string())
            })
            .collect();
        assert_eq!(from_proto, typed);
        let helps: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# HELP req_total ")).collect();
        assert_eq!(helps, vec![family(&families, "req_total").help()]);
    }

    #[test]
    fn self_metric_values_parse_back() {
        let mut w = FamilyWriter::default();
        w.family("g", "gauge", "h");
        for v in ["+Inf", "-Inf", "NaN", "0.0000001", "18446744073709551615"] {
            w.sample("g", &[], Some(("k", v)), v);
        }
        w.sample("stray", &[], None, "1");
        let f = w.finish();
        let values: Vec<f64> = f[0].metric.iter().map(|m| m.gauge.as_ref().unwrap().value()).collect();
        assert_eq!(values[..2], [f64::INFINITY, f64::NEG_INFINITY]);
        assert!(values[2].is_nan());
        assert_eq!(values[3..], [1e-7, u64::MAX as f64]);
        assert_eq!(f[1].r#type(), MetricType::Untyped, "a stray sample gets a family of its own");
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let body = b"metric 1\n".repeat(1000);
        let zipped = gzip(&body);
        assert!(zipped.len() < body.len() / 10);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(zipped.as_slice()).read_to_end(&mut out).unwrap();
        assert_eq!(out, body);
    }
}
