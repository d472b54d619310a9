//! Validation of a flush batch before anything of it is merged. Every refusal
//! names the field and what is wrong with it.

use crate::aggregate::Refused;
use crate::stats::Rejection;
use shoal_proto as pb;
use std::collections::HashSet;

/// Longest instance id.
pub const MAX_INSTANCE_ID: usize = 256;
/// Longest metric name.
pub const MAX_NAME: usize = 256;
/// Longest label key.
pub const MAX_LABEL_KEY: usize = 128;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 1024;
/// Most labels on a series or an instance.
pub const MAX_LABELS: usize = 32;
/// Most series-updates (and definitions) in one batch.
pub const MAX_BATCH_SERIES: usize = 200_000;
/// Most bytes of instance labels (keys and values) on a batch: they are
/// copied into every series key the batch defines.
pub const MAX_INSTANCE_LABEL_BYTES: usize = 4096;
/// Most bytes of series keys one batch may define (instance labels
/// included): bounds what decoding a small batch can make the collector
/// allocate.
pub const MAX_BATCH_KEY_BYTES: usize = 64 * 1024 * 1024;
/// Most histogram bucket counts in one batch, both sides of every sketch.
pub const MAX_BATCH_BUCKETS: usize = 4 * 1024 * 1024;

fn invalid(message: String) -> Refused {
    Refused { reason: Rejection::InvalidField, message }
}

/// True for `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// True for `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn valid_label_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn labels(labels: &[pb::Label], what: &str) -> Result<(), Refused> {
    if labels.len() > MAX_LABELS {
        return Err(invalid(format!("{what}: {} labels, at most {MAX_LABELS}", labels.len())));
    }
    let mut seen = HashSet::new();
    for l in labels {
        if l.key.len() > MAX_LABEL_KEY || !valid_label_key(&l.key) {
            return Err(invalid(format!(
                "{what}: label key {:?} must match [a-zA-Z_][a-zA-Z0-9_]* and be at most {MAX_LABEL_KEY} bytes",
                truncate(&l.key)
            )));
        }
        if l.value.len() > MAX_LABEL_VALUE {
            return Err(invalid(format!("{what}: value of label {:?} is {} bytes, at most {MAX_LABEL_VALUE}", l.key, l.value.len())));
        }
        if !seen.insert(l.key.as_str()) {
            return Err(invalid(format!("{what}: label key {:?} repeated", l.key)));
        }
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Checks every field of a batch.
pub fn batch(req: &pb::FlushRequest) -> Result<(), Refused> {
    if req.instance_id.is_empty() || req.instance_id.len() > MAX_INSTANCE_ID {
        return Err(invalid(format!("instance_id must be 1 to {MAX_INSTANCE_ID} bytes, got {}", req.instance_id.len())));
    }
    if req.instance_id.chars().any(char::is_control) {
        return Err(invalid(format!("instance_id {:?} contains control characters", truncate(&req.instance_id))));
    }
    if req.sequence == 0 {
        return Err(invalid("sequence must start at 1".into()));
    }
    if req.interval_start_unix_nanos > req.interval_end_unix_nanos {
        return Err(invalid(format!("interval start {} is after its end {}", req.interval_start_unix_nanos, req.interval_end_unix_nanos)));
    }
    labels(&req.instance_labels, "instance_labels")?;
    let instance_label_bytes: usize = req.instance_labels.iter().map(|l| l.key.len() + l.value.len()).sum();
    if instance_label_bytes > MAX_INSTANCE_LABEL_BYTES {
        return Err(invalid(format!("instance_labels: {instance_label_bytes} bytes, at most {MAX_INSTANCE_LABEL_BYTES}")));
    }
    let updates = req.counters.len() + req.gauges.len() + req.histograms.len();
    if updates > MAX_BATCH_SERIES || req.definitions.len() > MAX_BATCH_SERIES {
        return Err(invalid(format!(
            "batch carries {updates} series-updates and {} definitions, at most {MAX_BATCH_SERIES} each",
            req.definitions.len()
        )));
    }
    let mut refs = HashSet::with_capacity(req.definitions.len());
    let mut key_bytes = 0usize;
    for d in &req.definitions {
        key_bytes += d.name.len() + d.labels.iter().map(|l| l.key.len() + l.value.len()).sum::<usize>() + instance_label_bytes;
        if key_bytes > MAX_BATCH_KEY_BYTES {
            return Err(invalid(format!("definitions expand to more than {MAX_BATCH_KEY_BYTES} bytes of series keys")));
        }
        if d.name.len() > MAX_NAME || !valid_metric_name(&d.name) {
            return Err(invalid(format!(
                "definition of ref {}: metric name {:?} must match [a-zA-Z_:][a-zA-Z0-9_:]* and be at most {MAX_NAME} bytes",
                d.r#ref,
                truncate(&d.name)
            )));
        }
        labels(&d.labels, &format!("series {:?}", d.name))?;
        if !refs.insert(d.r#ref) {
            return Err(invalid(format!("ref {} defined twice", d.r#ref)));
        }
    }
    let mut used = HashSet::with_capacity(updates);
    for r in req.counters.iter().map(|c| c.r#ref).chain(req.gauges.iter().map(|g| g.r#ref)).chain(req.histograms.iter().map(|h| h.r#ref)) {
        if !used.insert(r) {
            return Err(invalid(format!("ref {r} appears twice in one batch")));
        }
    }
    if let Some(g) = req.gauges.iter().find(|g| !g.value.is_finite()) {
        return Err(invalid(format!("gauge ref {}: value {} is not finite", g.r#ref, g.value)));
    }
    let buckets: usize = req
        .histograms
        .iter()
        .filter_map(|h| h.sketch.as_ref())
        .flat_map(|s| [&s.positive, &s.negative])
        .flatten()
        .map(|b| b.counts.len())
        .sum();
    if buckets > MAX_BATCH_BUCKETS {
        return Err(Refused {
            reason: Rejection::InvalidSketch,
            message: format!("batch carries {buckets} histogram bucket counts, at most {MAX_BATCH_BUCKETS}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus() {
        assert!(valid_metric_name("http_requests_total"));
        assert!(valid_metric_name("a:b"));
        assert!(!valid_metric_name("9a"));
        assert!(!valid_metric_name(""));
        assert!(!valid_metric_name("a.b"));
        assert!(valid_label_key("_x1"));
        assert!(!valid_label_key("a:b"));
    }

    fn ok() -> pb::FlushRequest {
        pb::FlushRequest {
            instance_id: "i".into(),
            sequence: 1,
            definitions: vec![pb::SeriesDefinition { r#ref: 1, name: "a".into(), labels: vec![] }],
            counters: vec![pb::CounterDelta { r#ref: 1, delta: 1 }],
            ..Default::default()
        }
    }

    #[test]
    fn sizes_that_would_amplify_are_refused() {
        assert!(batch(&ok()).is_ok());
        let big_labels: Vec<pb::Label> = (0..8).map(|i| pb::Label { key: format!("k{i}"), value: "v".repeat(1000) }).collect();
        let r = batch(&pb::FlushRequest { instance_labels: big_labels.clone(), ..ok() }).unwrap_err();
        assert!(r.message.contains("instance_labels"), "{}", r.message);
        // Four 1000-byte instance labels copied into 20,000 definitions: 80 MB of keys from a ~200 kB batch.
        let definitions = (0..20_000).map(|r| pb::SeriesDefinition { r#ref: r, name: "a".into(), labels: vec![] }).collect();
        let r = batch(&pb::FlushRequest { instance_labels: big_labels[..4].to_vec(), definitions, counters: vec![], ..ok() }).unwrap_err();
        assert!(r.message.contains("expand"), "{}", r.message);
        let r = batch(&pb::FlushRequest { instance_id: "a\nb".into(), ..ok() }).unwrap_err();
        assert!(r.message.contains("control"), "{}", r.message);
        let sketch = pb::Sketch {
            positive: Some(pb::Buckets { offset: 0, counts: vec![0; MAX_BATCH_BUCKETS + 1], gaps: vec![] }),
            ..Default::default()
        };
        let r =
            batch(&pb::FlushRequest { histograms: vec![pb::HistogramDelta { r#ref: 1, sketch: Some(sketch) }], counters: vec![], ..ok() })
                .unwrap_err();
        assert_eq!(r.reason, Rejection::InvalidSketch);
    }
}
