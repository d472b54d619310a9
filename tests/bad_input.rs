//! A batch malformed as such gets a clear InvalidArgument and changes
//! nothing; a malformed series (name, labels, value, sketch) or one sent as
//! the wrong kind is rejected alone, with a reason, and the rest of its batch
//! is merged. The collector keeps serving everyone else.

mod common;

use common::*;
use shoal_proto as pb;

fn valid() -> pb::FlushRequest {
    pb::FlushRequest {
        instance_id: "i-1".into(),
        instance_labels: vec![],
        sequence: 1,
        interval_start_unix_nanos: 0,
        interval_end_unix_nanos: 0,
        definitions: vec![pb::SeriesDefinition { r#ref: 1, name: "ok_total".into(), labels: vec![], ..Default::default() }],
        counters: vec![pb::CounterDelta { r#ref: 1, delta: 1 }],
        gauges: vec![],
        histograms: vec![],
    }
}

#[test]
fn malformed_batches_are_refused_with_a_reason() {
    let collector = start_collector(None, |_| {});
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = pb::ingest_client::IngestClient::connect(collector.grpc_url()).await.unwrap();
        let cases: Vec<(pb::FlushRequest, &str)> = vec![
            (pb::FlushRequest { instance_id: String::new(), ..valid() }, "instance_id"),
            (pb::FlushRequest { sequence: 0, ..valid() }, "sequence"),
            (
                pb::FlushRequest {
                    definitions: vec![pb::SeriesDefinition { r#ref: 1, name: "bad name".into(), labels: vec![], ..Default::default() }],
                    ..valid()
                },
                "metric name",
            ),
            (
                pb::FlushRequest {
                    definitions: vec![pb::SeriesDefinition {
                        r#ref: 1,
                        name: "x".into(),
                        labels: vec![pb::Label { key: "k".into(), value: "1".into() }, pb::Label { key: "k".into(), value: "2".into() }],
                        ..Default::default()
                    }],
                    ..valid()
                },
                "repeated",
            ),
            (
                pb::FlushRequest {
                    gauges: vec![pb::GaugeValue { r#ref: 1, value: f64::NAN }],
                    counters: vec![],
                    definitions: vec![pb::SeriesDefinition { r#ref: 1, name: "g".into(), labels: vec![], ..Default::default() }],
                    ..valid()
                },
                "not finite",
            ),
            (
                pb::FlushRequest {
                    counters: vec![],
                    histograms: vec![pb::HistogramDelta {
                        r#ref: 1,
                        sketch: Some(pb::Sketch { scale: 42, zero_count: 0, sum: 0.0, min: 0.0, max: 0.0, positive: None, negative: None }),
                    }],
                    ..valid()
                },
                "scale",
            ),
            (
                pb::FlushRequest {
                    counters: vec![],
                    histograms: vec![pb::HistogramDelta {
                        r#ref: 1,
                        sketch: Some(pb::Sketch {
                            scale: 6,
                            zero_count: 0,
                            sum: 1.0,
                            min: 1.0,
                            max: 1.0,
                            positive: Some(pb::Buckets { offset: i32::MAX - 2, counts: vec![1, 1, 1, 1], gaps: vec![] }),
                            negative: None,
                        }),
                    }],
                    ..valid()
                },
                "outside",
            ),
            (
                pb::FlushRequest {
                    counters: vec![pb::CounterDelta { r#ref: 1, delta: 1 }, pb::CounterDelta { r#ref: 1, delta: 1 }],
                    ..valid()
                },
                "twice",
            ),
        ];
        // Malformed as a batch: refused whole.
        let whole = ["instance_id", "sequence", "twice"];
        for (i, (mut req, expected)) in cases.into_iter().enumerate() {
            if !req.instance_id.is_empty() {
                req.instance_id = format!("case-{i}");
            }
            if whole.contains(&expected) {
                let status = client.flush(req).await.expect_err("must be refused");
                assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
                assert!(status.message().contains(expected), "{expected:?} not in {:?}", status.message());
            } else {
                // A malformed series: its batch is acknowledged, the series rejected with the reason.
                let response = client.flush(req).await.expect("acknowledged").into_inner();
                assert_eq!(response.acknowledged_sequence, 1);
                assert_eq!(response.rejected.len(), 1, "{expected}: {response:?}");
                assert!(response.rejected[0].message.contains(expected), "{expected:?} not in {:?}", response.rejected[0]);
            }
        }
        // A counter then sent as a gauge is refused, alone: the counter of
        // the same batch is merged.
        client.flush(valid()).await.unwrap();
        let conflict = pb::FlushRequest {
            sequence: 2,
            counters: vec![pb::CounterDelta { r#ref: 1, delta: 2 }],
            gauges: vec![pb::GaugeValue { r#ref: 2, value: 1.0 }],
            definitions: vec![pb::SeriesDefinition {
                r#ref: 2,
                name: "ok_total".into(),
                labels: vec![pb::Label { key: "x".into(), value: "y".into() }],
                ..Default::default()
            }],
            ..valid()
        };
        let response = client.flush(conflict).await.unwrap().into_inner();
        assert_eq!(response.acknowledged_sequence, 2);
        assert_eq!(response.rejected.len(), 1, "{response:?}");
        assert_eq!((response.rejected[0].r#ref, response.rejected[0].reason.as_str()), (2, "kind_conflict"));
        assert!(response.rejected[0].message.contains("is a counter"), "{response:?}");
    });
    let text = scrape(&collector);
    assert_eq!(sample(&text, "ok_total"), Some(3.0), "{text}");
    assert_eq!(sample(&text, r#"shoal_collector_batches_rejected_total{reason="invalid_field"}"#), Some(3.0), "{text}");
    assert_eq!(sample(&text, r#"shoal_collector_series_rejected_total{reason="invalid_series"}"#), Some(2.0), "{text}");
    assert_eq!(sample(&text, r#"shoal_collector_series_rejected_total{reason="invalid_value"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"shoal_collector_series_rejected_total{reason="invalid_sketch"}"#), Some(2.0), "{text}");
    assert_eq!(sample(&text, r#"shoal_collector_batches_rejected_total{reason="invalid_sketch"}"#), Some(0.0), "{text}");
    assert_eq!(sample(&text, r#"shoal_collector_batches_rejected_total{reason="kind_conflict"}"#), Some(0.0), "{text}");
    assert_eq!(sample(&text, r#"shoal_collector_series_rejected_total{reason="kind_conflict"}"#), Some(1.0), "{text}");
    collector.shutdown().unwrap();
}
