//! The JSON API under `/api/v1/`, read by people, scripts and the live page.
//!
//! Strict on purpose: an unknown or repeated parameter, an empty name or
//! label key, a malformed number is a 400 naming the parameter; every error
//! body is JSON (`{"error": ..., "parameter": ...}`). A typo never widens a
//! query into "everything" silently.

use crate::aggregate::browse::SeriesFilter;
use crate::aggregate::{unix_secs, Kind, Point};
use crate::http::AppState;
use crate::rejection::Rejection;
use crate::scrape::MetricWriter;
use crate::stats::Stats;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use shoal_core::sketch::mapping::bucket_lower_boundary;
use shoal_core::Sketch;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;

/// Series in one page of `/api/v1/series` or `/api/v1/query` by default,
/// and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// Most quantiles and label filters one request may ask for: each costs a
/// pass per point or per series under the aggregator's lock.
const MAX_QUANTILES: usize = 32;
const MAX_LABEL_FILTERS: usize = 32;

/// The scale heatmap buckets are coarsened to: 4 buckets per power of two
/// (each about 19% wide). Exact: coarsening merges whole buckets.
const HEATMAP_SCALE: i32 = 2;

/// Every endpoint with what it takes (served at `/api/v1/` and in 404s).
const ENDPOINTS: [(&str, &str); 5] = [
    ("/api/v1/series", "series by name, label and text search, paged: name, match, labels=k=v,k2=v2, kind, offset, limit"),
    ("/api/v1/query", "points of a metric's series: name (required), series (one exact name{labels}), labels, quantiles, start, end, step (seconds), buckets=true, limit"),
    ("/api/v1/instances", "instances reporting (and silent ones) with last seen, batches/s and series"),
    ("/api/v1/health", "the collector's own counters: ingest, rejections by reason, conservation, queue, remote-write targets"),
    ("/api/v1/", "this list"),
];

/// A refusal of a request: its status and a JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    parameter: Option<String>,
}

impl ApiError {
    /// A 400 about `parameter`; the message names it.
    fn bad(parameter: &str, message: impl Into<String>) -> ApiError {
        let mut message = message.into();
        if !message.contains(&format!("`{parameter}")) {
            message = format!("`{parameter}`: {message}");
        }
        ApiError { status: StatusCode::BAD_REQUEST, message, parameter: Some(parameter.to_string()) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(p) = self.parameter {
            body["parameter"] = Value::String(p);
        }
        (self.status, Json(body)).into_response()
    }
}

/// The query string as given, checked against what an endpoint takes.
type RawParams = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// Each parameter at most once, and only those in `known`.
fn params(raw: RawParams, known: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let Query(pairs) = raw.map_err(|e| ApiError { status: StatusCode::BAD_REQUEST, message: e.body_text(), parameter: None })?;
    let mut out = HashMap::new();
    for (k, v) in pairs {
        if !known.contains(&k.as_str()) {
            return Err(ApiError::bad(&k, format!("unknown parameter `{k}`; this endpoint takes: {}", known.join(", "))));
        }
        if out.contains_key(&k) {
            return Err(ApiError::bad(&k, format!("parameter `{k}` given more than once")));
        }
        out.insert(k, v);
    }
    Ok(out)
}

/// A non-empty value of `key`, if given.
fn non_empty<'a>(p: &'a HashMap<String, String>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match p.get(key).map(String::as_str) {
        Some("") => Err(ApiError::bad(key, format!("parameter `{key}` is empty"))),
        other => Ok(other),
    }
}

/// `k1=v1,k2=v2`: every key non-empty, every pair with `=`.
fn label_filter(p: &HashMap<String, String>) -> Result<Vec<(String, String)>, ApiError> {
    let Some(text) = non_empty(p, "labels")? else { return Ok(Vec::new()) };
    let mut labels: Vec<(String, String)> = Vec::new();
    for pair in text.split(',') {
        match pair.split_once('=') {
            Some((k, _)) if k.trim().is_empty() => {
                return Err(ApiError::bad("labels", format!("in `labels`, the filter `{pair}` has an empty label name")))
            }
            Some((k, _)) if labels.iter().any(|(seen, _)| seen == k.trim()) => {
                return Err(ApiError::bad("labels", format!("in `labels`, label `{}` is given more than once", k.trim())))
            }
            Some((k, v)) => labels.push((k.trim().to_string(), v.to_string())),
            None => return Err(ApiError::bad("labels", format!("in `labels`, the filter `{pair}` is not name=value"))),
        }
        if labels.len() > MAX_LABEL_FILTERS {
            return Err(ApiError::bad("labels", format!("at most {MAX_LABEL_FILTERS} label filters")));
        }
    }
    Ok(labels)
}

fn number<T: std::str::FromStr>(p: &HashMap<String, String>, key: &str, what: &str) -> Result<Option<T>, ApiError> {
    non_empty(p, key)?.map(|v| v.parse::<T>().map_err(|_| ApiError::bad(key, format!("`{key}={v}` is not {what}")))).transpose()
}

fn kind_filter(p: &HashMap<String, String>) -> Result<Option<Kind>, ApiError> {
    non_empty(p, "kind")?
        .map(|k| {
            Kind::ALL
                .into_iter()
                .find(|x| x.as_str() == k)
                .ok_or_else(|| ApiError::bad("kind", format!("kind `{k}` is not counter, gauge or histogram")))
        })
        .transpose()
}

fn limit(p: &HashMap<String, String>) -> Result<usize, ApiError> {
    match number::<usize>(p, "limit", "a whole number")? {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad("limit", format!("`limit={n}` is outside 1..={MAX_LIMIT}"))),
    }
}

fn labels_json(labels: &[(String, String)]) -> Value {
    Value::Object(labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
}

/// `GET /api/v1/`: what there is.
pub(crate) async fn index() -> Json<Value> {
    Json(endpoints())
}

fn endpoints() -> Value {
    json!({ "endpoints": ENDPOINTS.iter().map(|(path, what)| json!({"path": path, "description": what})).collect::<Vec<_>>() })
}

/// Any other path: a JSON 404 listing the endpoints.
pub(crate) async fn not_found(uri: axum::http::Uri) -> Response {
    let mut body = endpoints();
    body["error"] = Value::String(format!("no such endpoint: {}", uri.path()));
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// `GET /api/v1/series`.
pub(crate) async fn series(State(state): State<AppState>, raw: RawParams) -> Result<Json<Value>, ApiError> {
    let p = params(raw, &["name", "match", "labels", "kind", "offset", "limit"])?;
    let labels = label_filter(&p)?;
    let filter = SeriesFilter {
        name: non_empty(&p, "name")?,
        contains: non_empty(&p, "match")?,
        labels: &labels,
        kind: kind_filter(&p)?,
        series: None,
    };
    let offset = number::<usize>(&p, "offset", "a whole number")?.unwrap_or(0);
    let limit = limit(&p)?;
    let agg = state.aggregator.lock();
    let page = agg.series_page(&filter, offset, limit);
    let series: Vec<Value> = page
        .series
        .iter()
        .map(|(key, kind)| {
            let d = agg.description(key.name());
            let mut s = json!({
                "series": key.canonical(),
                "name": key.name(),
                "labels": labels_json(key.labels()),
                "kind": kind.as_str(),
                "help": d.map(|d| d.help.as_str()).filter(|h| !h.is_empty()),
                "unit": d.and_then(|d| d.unit.as_deref()),
            });
            if *kind == Kind::Gauge {
                s["rule"] = json!(crate::http::rule_name(agg.config().gauge_rule(key.name())));
            }
            s
        })
        .collect();
    Ok(Json(json!({ "total": page.total, "offset": offset, "limit": limit, "series": series })))
}

/// The time range and step of a query as given (Unix seconds), checked
/// before the aggregator is locked.
struct RangeParams {
    start: Option<u64>,
    end: Option<u64>,
    step: Option<u64>,
}

impl RangeParams {
    fn parse(p: &HashMap<String, String>) -> Result<RangeParams, ApiError> {
        let secs = |key: &str| -> Result<Option<u64>, ApiError> {
            match number::<f64>(p, key, "a Unix time in seconds")? {
                // Past 2^53 a time is no longer exact in JSON (or in
                // JavaScript): refused as out of range.
                Some(t) if t.is_finite() && (0.0..=9.0e15).contains(&t) => Ok(Some(t as u64)),
                Some(t) => Err(ApiError::bad(key, format!("`{key}={t}` is not a Unix time in seconds between 0 and 9e15"))),
                None => Ok(None),
            }
        };
        let (start, end) = (secs("start")?, secs("end")?);
        if let (Some(s), Some(e)) = (start, end) {
            if s > e {
                return Err(ApiError::bad("start", format!("start ({s}) is after end ({e})")));
            }
        }
        let step = number::<u64>(p, "step", "a whole number of seconds")?;
        if step.is_some_and(|s| s > 9_000_000_000_000_000) {
            return Err(ApiError::bad("step", "`step` is beyond 9e15 seconds"));
        }
        Ok(RangeParams { start, end, step })
    }

    /// In interval indices, against the collector's interval.
    fn resolve(&self, interval: u64, now: u64) -> Result<Range, ApiError> {
        let step = match self.step {
            None => interval,
            Some(s) if s >= interval && s % interval == 0 => s,
            Some(s) => return Err(ApiError::bad("step", format!("`step={s}` must be a positive multiple of the interval ({interval}s)"))),
        };
        Ok(Range { interval, step, first: self.start.unwrap_or(0) / interval, last: self.end.unwrap_or(now) / interval })
    }
}

/// The time range and step of a query, in interval indices.
struct Range {
    interval: u64,
    step: u64,
    first: u64,
    last: u64,
}

impl Range {
    /// The step index of interval `i`.
    fn step_of(&self, i: u64) -> u64 {
        i.saturating_mul(self.interval) / self.step
    }
}

/// `GET /api/v1/query`.
pub(crate) async fn query(State(state): State<AppState>, raw: RawParams) -> Result<Json<Value>, ApiError> {
    let p = params(raw, &["name", "series", "labels", "quantiles", "start", "end", "step", "buckets", "limit"])?;
    let name = non_empty(&p, "name")?.ok_or_else(|| ApiError::bad("name", "missing parameter `name` (the metric name)"))?;
    let exact = non_empty(&p, "series")?;
    let labels = label_filter(&p)?;
    let mut quantiles: Vec<f64> = Vec::new();
    for q in non_empty(&p, "quantiles")?.unwrap_or("0.5,0.9,0.99,0.999").split(',') {
        match q.trim().parse::<f64>() {
            Ok(v) if (0.0..=1.0).contains(&v) => {
                if !quantiles.contains(&v) {
                    quantiles.push(v);
                }
            }
            _ => return Err(ApiError::bad("quantiles", format!("quantile `{q}` is not a number in [0, 1]"))),
        }
        if quantiles.len() > MAX_QUANTILES {
            return Err(ApiError::bad("quantiles", format!("at most {MAX_QUANTILES} quantiles")));
        }
    }
    let buckets = match p.get("buckets").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(ApiError::bad("buckets", format!("`buckets={other}` is not true or false"))),
    };
    let limit = limit(&p)?;
    let range = RangeParams::parse(&p)?;
    let now = unix_secs();
    let (total, found, range, rule) = {
        let agg = state.aggregator.lock();
        let range = range.resolve(agg.config().interval_secs, now)?;
        let filter = SeriesFilter { name: Some(name), labels: &labels, series: exact, ..Default::default() };
        let (total, found) = agg.points_matching(&filter, range.first..=range.last, now, limit);
        let rule = crate::http::rule_name(agg.config().gauge_rule(name));
        (total, found, range, rule)
    };
    let series: Vec<Value> = found
        .into_iter()
        .map(|(key, kind, points)| {
            let points = stepped(&range, kind, points)
                .into_iter()
                .map(|(step, point)| {
                    let start = step.saturating_mul(range.step);
                    point_json(start, start.saturating_add(range.step), &point, &quantiles, buckets)
                })
                .collect::<Vec<_>>();
            let mut s = json!({"series": key.canonical(), "labels": labels_json(key.labels()), "kind": kind.as_str(), "points": points});
            if kind == Kind::Gauge {
                s["rule"] = json!(rule);
            }
            s
        })
        .collect();
    Ok(Json(json!({ "name": name, "interval_secs": range.interval, "step_secs": range.step, "total": total, "series": series })))
}

/// The points of one series within the range, merged per step: counters
/// summed, sketches merged, a gauge's last value. A step without a point
/// is absent (a gap), never a zero.
fn stepped(range: &Range, kind: Kind, points: Vec<(u64, Point)>) -> Vec<(u64, Point)> {
    let mut out: Vec<(u64, Point)> = Vec::new();
    for (i, point) in points.into_iter().filter(|(i, _)| (range.first..=range.last).contains(i)) {
        let step = range.step_of(i);
        match (out.last_mut(), point) {
            (Some((s, Point::Counter(a))), Point::Counter(b)) if *s == step => *a = a.wrapping_add(b),
            (Some((s, Point::Histogram(a))), Point::Histogram(b)) if *s == step => crate::aggregate::merge_bounded(a, b),
            (Some((s, Point::Gauge(a))), Point::Gauge(b)) if *s == step => *a = b,
            (_, point) => out.push((step, point)),
        }
    }
    debug_assert!(out.iter().all(|(_, p)| matches!(
        (kind, p),
        (Kind::Counter, Point::Counter(_)) | (Kind::Histogram, Point::Histogram(_)) | (Kind::Gauge, Point::Gauge(_))
    )));
    out
}

fn point_json(start: u64, end: u64, point: &Point, quantiles: &[f64], buckets: bool) -> Value {
    match point {
        Point::Counter(v) => json!({"start": start, "end": end, "value": v}),
        Point::Gauge(v) => json!({"start": start, "end": end, "value": finite(*v)}),
        Point::Histogram(s) => {
            let qs: Map<String, Value> = quantiles.iter().map(|q| (q.to_string(), json!(s.quantile(*q).map(finite)))).collect();
            let mut p = json!({
                "start": start, "end": end, "count": s.count(), "sum": finite(s.sum()),
                "min": s.min().map(finite), "max": s.max().map(finite), "quantiles": qs,
            });
            if buckets {
                p["buckets"] = heatmap_buckets(s);
            }
            p
        }
    }
}

/// JSON has no NaN or infinity: those become `null`.
fn finite(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

/// `[lower, upper, count]` of every non-empty bucket, ascending, at
/// [`HEATMAP_SCALE`] (or the sketch's own scale when coarser); zeros as
/// `[0, 0, n]`.
fn heatmap_buckets(sketch: &Sketch) -> Value {
    let mut s = sketch.clone();
    if s.scale() > HEATMAP_SCALE {
        s.downscale((s.scale() - HEATMAP_SCALE) as u32);
    }
    let scale = s.scale();
    let bounds = |i: i32| (bucket_lower_boundary(scale, i), bucket_lower_boundary(scale, i + 1));
    let mut out: Vec<Value> = s
        .negative()
        .iter()
        .rev()
        .filter(|(_, n)| *n > 0)
        .map(|(i, n)| {
            let (lo, hi) = bounds(i);
            json!([finite(-hi), finite(-lo), n])
        })
        .collect();
    if s.zero_count() > 0 {
        out.push(json!([0.0, 0.0, s.zero_count()]));
    }
    out.extend(s.positive().iter().filter(|(_, n)| *n > 0).map(|(i, n)| {
        let (lo, hi) = bounds(i);
        json!([finite(lo), finite(hi), n])
    }));
    Value::Array(out)
}

/// `GET /api/v1/instances`.
pub(crate) async fn instances(State(state): State<AppState>, raw: RawParams) -> Result<Json<Value>, ApiError> {
    params(raw, &[])?;
    let now = unix_secs();
    let (list, interval) = {
        let agg = state.aggregator.lock();
        (agg.instances_overview(now), agg.config().interval_secs)
    };
    let mut services: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for i in &list {
        let e = services.entry(i.service().unwrap_or("")).or_default();
        e.0 += 1;
        e.1 += usize::from(i.silent);
    }
    let services: Vec<Value> =
        services.into_iter().map(|(s, (n, silent))| json!({"service": s, "instances": n, "silent": silent})).collect();
    let instances: Vec<Value> = list
        .iter()
        .map(|i| {
            json!({
                "id": i.id, "service": i.service(), "labels": labels_json(&i.labels),
                "last_seen": i.last_seen_secs, "first_seen": i.first_seen_secs, "seconds_since_seen": now.saturating_sub(i.last_seen_secs),
                "batches": i.batches, "batches_per_sec": i.batches_per_sec(), "series": i.series, "silent": i.silent,
            })
        })
        .collect();
    Ok(Json(json!({ "now": now, "interval_secs": interval, "services": services, "instances": instances })))
}

/// Collects self-metric samples as JSON objects.
#[derive(Default)]
struct JsonSamples(Vec<Value>);

impl MetricWriter for JsonSamples {
    fn family(&mut self, _name: &str, _kind: &str, _help: &str) {}

    fn sample(&mut self, name: &str, labels: &[(String, String)], extra: Option<(&str, &str)>, value: &str) {
        let mut l: Map<String, Value> = labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        if let Some((k, v)) = extra {
            l.insert(k.to_string(), Value::String(v.to_string()));
        }
        self.0.push(json!({"name": name, "labels": l, "value": value.parse::<f64>().ok().map(finite)}));
    }
}

/// `GET /api/v1/health`.
pub(crate) async fn health(State(state): State<AppState>, raw: RawParams) -> Result<Json<Value>, ApiError> {
    params(raw, &[])?;
    let (series, instances) = {
        let agg = state.aggregator.lock();
        (agg.series_count(), agg.instance_count())
    };
    Ok(Json(health_json(&state.stats, series, instances)))
}

fn health_json(stats: &Stats, series: usize, instances: usize) -> Value {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
    let mut rejections = Map::new();
    let (mut rejected_updates, mut rejected_values) = (0u64, 0u64);
    for why in Rejection::ALL {
        let flow = stats.rejected_flow(why);
        let (u, v) = (flow.series_updates(), flow.values());
        rejected_updates = rejected_updates.wrapping_add(u);
        rejected_values = rejected_values.wrapping_add(v);
        rejections.insert(why.as_str().to_string(), json!({"batches": stats.rejected(why), "series_updates": u, "values": v}));
    }
    // received = merged + duplicate + unknown_refs + Σ rejected: the
    // balance is zero unless something was lost.
    let balance = |received: u64, parts: [u64; 4]| received as i128 - parts.iter().map(|&p| p as i128).sum::<i128>();
    let conservation = json!({
        "values": {
            "received": stats.received.values(), "merged": stats.merged.values(), "duplicate": stats.duplicate.values(),
            "unknown_refs": stats.unknown_refs.values(), "rejected": rejected_values,
            "balance": balance(stats.received.values(), [stats.merged.values(), stats.duplicate.values(), stats.unknown_refs.values(), rejected_values]) as f64,
        },
        "series_updates": {
            "received": stats.received.series_updates(), "merged": stats.merged.series_updates(),
            "duplicate": stats.duplicate.series_updates(), "unknown_refs": stats.unknown_refs.series_updates(), "rejected": rejected_updates,
            "balance": balance(stats.received.series_updates(), [stats.merged.series_updates(), stats.duplicate.series_updates(), stats.unknown_refs.series_updates(), rejected_updates]) as f64,
        },
    });
    let remote_write: Vec<Value> = stats
        .remote_write()
        .into_iter()
        .map(|t| {
            let dropped: u64 = t.dropped.values().map(|d| d.samples).sum();
            json!({
                "url": t.url, "samples_sent": t.samples_sent, "histograms_sent": t.histograms_sent, "requests_sent": t.requests_sent,
                "requests_failed": t.requests_failed, "retries": t.retries, "samples_dropped": dropped, "queue_len": t.queue_len,
                "last_success_unix_ms": t.last_success_unix_ms,
            })
        })
        .collect();
    let mut all = JsonSamples::default();
    stats.write(&mut all, series, instances);
    json!({
        "series": series,
        "instances": instances,
        "ingest": {
            "batches_received": load(&stats.batches_received), "batches_merged": load(&stats.batches_merged),
            "batches_duplicate": load(&stats.batches_duplicate), "values_received": stats.received.values(),
            "values_merged": stats.merged.values(), "bytes_received": load(&stats.bytes_received),
        },
        "queue": { "depth": load(&stats.ingest_queue_depth), "peak": load(&stats.ingest_queue_peak) },
        "rejections": rejections,
        "conservation": conservation,
        "remote_write": remote_write,
        "metrics": all.0,
    })
}
