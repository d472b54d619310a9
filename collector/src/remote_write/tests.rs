//! Unit tests: bucket indices, spans, encoding round trips, queue bounds.

use super::encode::{counter_name, spans_and_deltas, write_requests};
use super::proto::{histogram, BucketSpan, MetricType, TimeSeries, WriteRequest};
use super::*;
use shoal_core::sketch::mapping_for;
use std::time::Duration;

/// `math.Frexp` for a positive normal `v`: `v = frac * 2^exp`, `frac` in `[0.5, 1)`.
fn frexp(v: f64) -> (f64, i32) {
    let bits = v.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32 - 1022;
    let frac = f64::from_bits((bits & !(0x7ffu64 << 52)) | (1022u64 << 52));
    (frac, exp)
}

/// The bucket key Prometheus' Go client computes for `v` (client_golang
/// `histogram.go`, native histograms): bucket `key` covers `(b^(key-1), b^key]`.
fn prometheus_reference_index(schema: i32, v: f64) -> i32 {
    let (frac, exp) = frexp(v.abs());
    if schema > 0 {
        let n = 1i32 << schema;
        let bounds: Vec<f64> = (0..n).map(|i| 2f64.powf(i as f64 / n as f64) / 2.0).collect();
        bounds.partition_point(|&b| b < frac) as i32 + (exp - 1) * n
    } else {
        let key = if frac == 0.5 { exp - 1 } else { exp };
        let offset = (1 << -schema) - 1;
        (key + offset) >> -schema
    }
}

fn base(schema: i32) -> f64 {
    2f64.powf(2f64.powi(-schema))
}

#[test]
fn sketch_and_prometheus_put_a_value_in_the_same_bucket() {
    for schema in -4..=8 {
        let m = mapping_for(schema);
        let mut values = vec![1.0, 2.0, 0.5, 3.0, 1e-300, 1e300];
        let mut x = 1e-12;
        while x < 1e12 {
            values.push(x);
            x *= 1.0137;
        }
        // Every boundary of one octave, and its neighbours.
        let n = 1i32 << schema.max(0);
        for k in 0..n {
            let b = 2f64.powf(k as f64 / n as f64) * 8.0;
            values.extend([b, f64::from_bits(b.to_bits() - 1), f64::from_bits(b.to_bits() + 1)]);
        }
        for v in values {
            let ours = prometheus_index(m.index(v));
            assert_eq!(ours, prometheus_reference_index(schema, v), "schema {schema} v {v}");
        }
        // The definition: bucket i covers (b^(i-1), b^i].
        let i = prometheus_index(m.index(10.0));
        let b = base(schema);
        assert!(b.powi(i - 1) < 10.0 * (1.0 + 1e-12) && 10.0 <= b.powi(i) * (1.0 + 1e-12), "schema {schema}");
    }
    // 1.0 is the upper bound of Prometheus bucket 0 at every schema.
    for schema in -4..=8 {
        assert_eq!(prometheus_index(mapping_for(schema).index(1.0)), 0);
    }
}

#[test]
fn a_recorded_value_comes_out_in_the_prometheus_bucket() {
    for (schema, v) in [(6, 0.0123), (0, 5.0), (-4, 1e6), (8, 2.0), (3, -7.5)] {
        let mut sketch = shoal_core::Sketch::with_scale(schema);
        sketch.record(v).unwrap();
        let h = ExportHistogram::from_sketch(&sketch, &[0.5]);
        let p = native_histogram(&h, 7).unwrap();
        let (spans, deltas) = if v > 0.0 { (&p.positive_spans, &p.positive_deltas) } else { (&p.negative_spans, &p.negative_deltas) };
        assert_eq!(spans, &vec![BucketSpan { offset: prometheus_reference_index(schema, v), length: 1 }]);
        assert_eq!(deltas, &vec![1]);
        assert_eq!(p.schema, schema);
        assert_eq!(p.count, Some(histogram::Count::CountInt(1)));
        assert_eq!(p.timestamp, 7);
    }
}

#[test]
fn gaps_start_new_spans_and_counts_are_delta_encoded() {
    // Sketch indices -3, 0, 1, 2, 5 are Prometheus indices -2, 1, 2, 3, 6.
    let buckets = [(2, 3), (0, 1), (5, 4), (1, 2), (-3, 7), (9, 0)];
    let (spans, deltas) = spans_and_deltas(&buckets, 0);
    assert_eq!(
        spans,
        vec![BucketSpan { offset: -2, length: 1 }, BucketSpan { offset: 2, length: 3 }, BucketSpan { offset: 2, length: 1 },]
    );
    assert_eq!(deltas, vec![7, -6, 1, 1, 1]);
    // Decoding the way a receiver does gives the counts back.
    let mut index = 0;
    let mut count = 0i64;
    let mut decoded = Vec::new();
    let mut d = deltas.iter();
    for span in &spans {
        index += span.offset;
        for k in 0..span.length as i32 {
            count += d.next().unwrap();
            decoded.push((index + k, count as u64));
        }
        index += span.length as i32;
    }
    assert_eq!(decoded, vec![(-2, 7), (1, 1), (2, 2), (3, 3), (6, 4)]);
    // Huge counts survive the i64 deltas.
    let (_, deltas) = spans_and_deltas(&[(0, u64::MAX), (1, 1)], 0);
    assert_eq!((deltas[0] as u64, (deltas[0].wrapping_add(deltas[1])) as u64), (u64::MAX, 1));
    assert_eq!(spans_and_deltas(&[], 0), (vec![], vec![]));
}

#[test]
fn schemas_above_eight_are_downscaled_and_below_minus_four_refused() {
    let h = |schema| ExportHistogram {
        quantiles: vec![(0.5, 1.0)],
        sum: 3.0,
        count: 3,
        native: Some(NativeBuckets { schema, zero_threshold: 0.0, zero_count: 0, positive: vec![(4, 1), (5, 2)], negative: vec![] }),
    };
    let p = native_histogram(&h(9), 0).unwrap();
    assert_eq!(p.schema, 8);
    // Sketch 4 and 5 at scale 9 are sketch 2 at scale 8, Prometheus 3.
    assert_eq!(p.positive_spans, vec![BucketSpan { offset: 3, length: 1 }]);
    assert_eq!(p.positive_deltas, vec![3]);
    assert!(native_histogram(&h(-5), 0).is_none());
    // Native mode sends such a histogram as a summary, counted.
    let interval = Interval { end_ms: 1, series: vec![series("lat", ExportValue::Histogram(h(-5)))] };
    let (reqs, stats) = write_requests(&interval, HistogramMode::Native, 100);
    assert_eq!(stats.native_unrepresentable, 1);
    assert_eq!((stats.samples, stats.histograms), (3, 0));
    assert_eq!(reqs[0].metadata[0].r#type, MetricType::Summary as i32);
    assert_eq!(sample_count(&interval, HistogramMode::Native), 3);
}

fn series(name: &str, value: ExportValue) -> ExportSeries {
    ExportSeries {
        name: name.into(),
        labels: vec![("Zone".into(), "b".into()), ("method".into(), "GET".into())],
        help: Some(format!("help of {name}")),
        unit: None,
        value,
    }
}

fn labels(ts: &TimeSeries) -> Vec<(String, String)> {
    ts.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect()
}

fn find<'a>(req: &'a WriteRequest, name: &str, quantile: Option<&str>) -> &'a TimeSeries {
    req.timeseries
        .iter()
        .find(|t| {
            let l = labels(t);
            l.iter().any(|(k, v)| k == "__name__" && v == name)
                && match quantile {
                    None => true,
                    Some(q) => l.iter().any(|(k, v)| k == "quantile" && v == q),
                }
        })
        .unwrap_or_else(|| panic!("no series {name} {quantile:?}"))
}

fn sample_interval() -> Interval {
    let mut sketch = shoal_core::Sketch::default();
    for v in [-2.0, 0.0, 0.001, 0.25, 0.25, 3.0, 1000.0] {
        sketch.record(v).unwrap();
    }
    let mut hist = series("latency_seconds", ExportValue::Histogram(ExportHistogram::from_sketch(&sketch, &[0.5, 0.99])));
    hist.unit = Some("seconds".into());
    Interval {
        end_ms: 1_700_000_000_000,
        series: vec![
            series("requests", ExportValue::Counter((1 << 53) - 1)),
            series("errors_total", ExportValue::Counter(7)),
            series("temperature", ExportValue::Gauge(-3.5)),
            hist,
        ],
    }
}

#[test]
fn encodes_and_decodes_back_in_every_mode() {
    let interval = sample_interval();
    for mode in [HistogramMode::Summary, HistogramMode::Native, HistogramMode::Both] {
        let (encoded, stats) = encode_interval(&interval, mode, 1000).unwrap();
        assert_eq!(encoded.len(), 1);
        assert_eq!(stats.requests, 1);
        let req = decode_request(&encoded[0].body).unwrap();
        assert_eq!((encoded[0].samples, encoded[0].histograms), (stats.samples, stats.histograms));
        assert_eq!(stats.samples + stats.histograms, sample_count(&interval, mode));
        for ts in &req.timeseries {
            let names: Vec<&str> = ts.labels.iter().map(|l| l.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted, "labels sorted");
            assert_eq!(names, {
                let mut v = vec!["Zone", "__name__", "method"];
                if ts.labels.iter().any(|l| l.name == "quantile") {
                    v.push("quantile");
                }
                v
            });
            for s in &ts.samples {
                assert_eq!(s.timestamp, interval.end_ms);
            }
            for h in &ts.histograms {
                assert_eq!(h.timestamp, interval.end_ms);
            }
        }
        let total = find(&req, "requests_total", None);
        assert_eq!(total.samples[0].value as u64, (1 << 53) - 1);
        assert_eq!(find(&req, "errors_total", None).samples[0].value, 7.0);
        assert!(req.timeseries.iter().all(|t| !labels(t).iter().any(|(_, v)| v == "errors_total_total")));
        assert_eq!(find(&req, "temperature", None).samples[0].value, -3.5);

        let meta: Vec<(String, i32, String, String)> =
            req.metadata.iter().map(|m| (m.metric_family_name.clone(), m.r#type, m.help.clone(), m.unit.clone())).collect();
        let hist_type = if mode == HistogramMode::Summary { MetricType::Summary } else { MetricType::Histogram };
        assert_eq!(
            meta,
            vec![
                ("errors_total".into(), MetricType::Counter as i32, "help of errors_total".into(), "".into()),
                ("latency_seconds".into(), hist_type as i32, "help of latency_seconds".into(), "seconds".into()),
                ("requests_total".into(), MetricType::Counter as i32, "help of requests".into(), "".into()),
                ("temperature".into(), MetricType::Gauge as i32, "help of temperature".into(), "".into()),
            ]
        );

        let summary_series = req.timeseries.iter().filter(|t| !t.samples.is_empty()).count();
        if mode.summary() {
            assert_eq!(summary_series, 3 + 2 + 2);
            assert_eq!(find(&req, "latency_seconds_count", None).samples[0].value, 7.0);
            let sum = find(&req, "latency_seconds_sum", None).samples[0].value;
            assert!((sum - 1001.501).abs() < 1e-9);
            let ExportValue::Histogram(h) = &interval.series[3].value else { unreachable!() };
            assert_eq!(find(&req, "latency_seconds", Some("0.99")).samples[0].value, h.quantiles[1].1);
            assert_eq!(find(&req, "latency_seconds", Some("0.5")).samples[0].value, h.quantiles[0].1);
        } else {
            assert_eq!(summary_series, 3);
        }
        let natives: Vec<_> = req.timeseries.iter().filter(|t| !t.histograms.is_empty()).collect();
        if mode.native() {
            assert_eq!(natives.len(), 1);
            let h = &natives[0].histograms[0];
            assert_eq!(labels(natives[0])[1], ("__name__".into(), "latency_seconds".into()));
            assert_eq!(h.schema, 6);
            assert_eq!(h.count, Some(histogram::Count::CountInt(7)));
            assert_eq!(h.zero_count, Some(histogram::ZeroCount::ZeroCountInt(1)));
            assert_eq!(h.zero_threshold, f64::MIN_POSITIVE);
            let pos: i64 = h
                .positive_deltas
                .iter()
                .scan(0i64, |c, d| {
                    *c += d;
                    Some(*c)
                })
                .sum();
            let neg: i64 = h
                .negative_deltas
                .iter()
                .scan(0i64, |c, d| {
                    *c += d;
                    Some(*c)
                })
                .sum();
            assert_eq!((pos, neg), (5, 1));
            // 0.25 twice: one bucket of count 2.
            assert!(h.positive_spans.iter().all(|s| s.length == 1));
            assert_eq!(h.positive_spans.len(), 4);
            assert_eq!(h.positive_spans[0].offset, prometheus_reference_index(6, 0.001));
        } else {
            assert!(natives.is_empty());
        }
    }
}

#[test]
fn requests_respect_the_sample_bound_and_keep_a_series_together() {
    let interval = sample_interval();
    // Counters 1 + 1, gauge 1, histogram 2 quantiles + 2 = 4 (summary).
    let (reqs, stats) = write_requests(&interval, HistogramMode::Summary, 3);
    let sizes: Vec<usize> = reqs.iter().map(|r| r.timeseries.len()).collect();
    assert_eq!(sizes, vec![3, 4]);
    assert_eq!(stats.requests, 2);
    // Metadata travels with its families.
    assert_eq!(reqs[0].metadata.len(), 3);
    assert_eq!(reqs[1].metadata.len(), 1);
    assert_eq!(reqs[1].metadata[0].metric_family_name, "latency_seconds");
    let (reqs, _) = write_requests(&interval, HistogramMode::Both, 1);
    assert_eq!(reqs.iter().map(|r| r.timeseries.len()).collect::<Vec<_>>(), vec![1, 1, 1, 5]);
    assert!(write_requests(&Interval::default(), HistogramMode::Both, 10).0.is_empty());
}

#[test]
fn counter_suffix_is_not_doubled() {
    assert_eq!(counter_name("a"), "a_total");
    assert_eq!(counter_name("a_total"), "a_total");
    assert_eq!("both".parse::<HistogramMode>(), Ok(HistogramMode::Both));
    assert!("classic".parse::<HistogramMode>().is_err());
}

#[test]
fn snappy_is_the_block_format() {
    let body = compress(b"hello hello hello hello").unwrap();
    assert_eq!(snap::raw::Decoder::new().decompress_vec(&body).unwrap(), b"hello hello hello hello");
    assert!(decode_request(b"not snappy").is_err());
}

#[test]
fn backoff_is_capped_jittered_and_honours_retry_after() {
    let p = RetryPolicy::default();
    for _ in 0..100 {
        let first = p.backoff(0, None);
        assert!(first >= Duration::from_millis(15) && first <= Duration::from_millis(30), "{first:?}");
        let late = p.backoff(1000, None);
        assert!(late >= Duration::from_millis(2500) && late <= Duration::from_secs(5), "{late:?}");
    }
    assert!(p.backoff(0, Some(Duration::from_secs(10))) >= Duration::from_secs(10));
    assert_eq!(p.backoff(0, Some(Duration::from_secs(3600))), Duration::from_secs(300));
    assert_eq!(sender::parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
    assert_eq!(sender::parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
    assert_eq!(sender::parse_retry_after("soon"), None);
}

#[test]
fn invalid_targets_are_refused() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _g = rt.enter();
    assert!(RemoteWriter::new(RemoteWriteTarget::new("https://example.com/api/v1/write")).is_ok());
    assert!(RemoteWriter::new(RemoteWriteTarget::new("ftp://example.com/api/v1/write")).is_err());
    assert!(RemoteWriter::new(RemoteWriteTarget::new("not a url")).is_err());
    let mut t = RemoteWriteTarget::new("http://127.0.0.1:1/api/v1/write");
    t.headers.insert("Content-Type".into(), "text/plain".into());
    assert!(RemoteWriter::new(t).is_err());
    let mut t = RemoteWriteTarget::new("http://127.0.0.1:1/api/v1/write");
    t.headers.insert("X-Scope-OrgID".into(), "tenant-1".into());
    assert!(RemoteWriter::new(t).is_ok());
}

#[tokio::test]
async fn a_full_queue_drops_its_oldest_intervals_and_counts_them() {
    // A listener that accepts nothing: requests hang until their timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut target = RemoteWriteTarget::new(format!("http://{}/api/v1/write", silent.local_addr().unwrap()));
    target.queue_capacity = 2;
    target.timeout = Duration::from_secs(30);
    let writer = RemoteWriter::new(target).unwrap();
    for end_ms in 0..5 {
        writer.push(Interval { end_ms, series: vec![series("c", ExportValue::Counter(1))] });
    }
    writer.push(Interval { end_ms: 9, series: vec![] }); // ignored
    let s = writer.stats();
    assert_eq!(s.queue_len, 2);
    assert_eq!(s.dropped.get(&DropReason::QueueFull), Some(&sender::Dropped { batches: 3, samples: 3 }));
    assert_eq!(s.samples_sent, 0);
    assert_eq!(s.last_success_unix_ms, None);
    assert_eq!(DropReason::QueueFull.label(), "queue_full");
    assert_eq!(DropReason::Status(400).label(), "status_400");
    assert!(!writer.wait_idle(Duration::from_millis(20)).await);
}
