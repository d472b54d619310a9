//! HTTP: `/metrics` (Prometheus exposition of the cluster rollups: text, or
//! protobuf with native histograms when asked, see [`crate::scrape`]; gzip
//! when accepted), `/healthz` and `/readyz`, the JSON API under `/api/v1/`
//! ([`crate::api`]) and the live page at `/` ([`crate::page`]).

use crate::aggregate::{unix_secs, Aggregator, Kind};
use crate::config::GaugeRule;
use crate::scrape::{self, Format};
use crate::stats::Stats;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use parking_lot::Mutex;
use shoal_core::exposition::{format_value, help_text, summary_labels, TextWriter};
use shoal_core::names::sanitize_metric_name;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) aggregator: Arc<Mutex<Aggregator>>,
    pub(crate) stats: Arc<Stats>,
    /// Set once state is restored and every listener is up; cleared when
    /// the drain starts.
    pub(crate) ready: Arc<AtomicBool>,
}

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/", get(crate::page::index))
        .route("/app.js", get(crate::page::script))
        .route("/style.css", get(crate::page::style))
        .route("/api/v1", get(crate::api::index))
        .route("/api/v1/", get(crate::api::index))
        .route("/api/v1/series", get(crate::api::series))
        .route("/api/v1/query", get(crate::api::query))
        .route("/api/v1/instances", get(crate::api::instances))
        .route("/api/v1/health", get(crate::api::health))
        .fallback(crate::api::not_found)
        .with_state(state)
}

/// `/readyz`: 200 once serving (state restored, listeners up), 503 before
/// and while draining; `/healthz` says only that the process answers.
async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// Renders the cluster rollups and the collector's self-metrics in the text
/// format. (The protobuf answer is [`crate::scrape::render_protobuf`]; see
/// [`crate::scrape`] for what each carries.)
pub fn render(aggregator: &Aggregator, stats: &Stats) -> String {
    let now = unix_secs();
    let views = aggregator.views(now);
    let quantiles = aggregator.config().quantiles.clone();
    let mut families: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for v in views {
        families.entry(sanitize_metric_name(v.key.name())).or_default().push(v);
    }
    let mut w = TextWriter::default();
    for (name, views) in families {
        let kind = views[0].kind;
        let help = family_help(aggregator, views[0].key.name(), kind, false);
        match kind {
            Kind::Counter => {
                w.family(&name, "counter", &help);
                for v in views {
                    w.sample(&name, v.key.labels(), None, &v.total.to_string());
                }
            }
            Kind::Gauge => {
                w.family(&name, "gauge", &help);
                for v in views {
                    if let Some(g) = v.gauge {
                        w.sample(&name, v.key.labels(), None, &format_value(g));
                    }
                }
            }
            Kind::Histogram => {
                w.family(&name, "summary", &help);
                for v in views {
                    let sketch = v.window.unwrap_or_default();
                    let labels = summary_labels(v.key.labels());
                    for &q in &quantiles {
                        let value = sketch.quantile(q).map(format_value).unwrap_or_else(|| "NaN".into());
                        w.sample(&name, &labels, Some(("quantile", &q.to_string())), &value);
                    }
                    w.sample(&format!("{name}_sum"), &labels, None, &format_value(v.sum));
                    w.sample(&format!("{name}_count"), &labels, None, &v.total.to_string());
                }
            }
        }
    }
    stats.write(&mut w, aggregator.series_count(), aggregator.instance_count());
    w.finish()
}

/// HELP of the family of metric `name`: the SDKs' description (and unit)
/// when they gave one, else what the rollup is. `native`: a histogram goes
/// out with native buckets (protobuf), not as a summary.
pub(crate) fn family_help(aggregator: &Aggregator, name: &str, kind: Kind, native: bool) -> String {
    let described = aggregator.description(name);
    let fallback = match kind {
        Kind::Counter => "cluster total merged by shoal-collector".to_string(),
        Kind::Gauge => {
            format!("cluster gauge rolled up by {} over live instances", rule_name(aggregator.config().gauge_rule(name)))
        }
        Kind::Histogram if native => "cluster histogram from merged sketches, every sample since the series began".to_string(),
        Kind::Histogram => format!(
            "cluster quantiles over the last {}s from merged sketches; _sum and _count cumulative",
            aggregator.config().summary_window_secs
        ),
    };
    help_text(described.map(|d| d.help.as_str()), described.and_then(|d| d.unit.as_deref()), &fallback)
}

/// The rule as the config spells it.
pub(crate) fn rule_name(rule: GaugeRule) -> &'static str {
    match rule {
        GaugeRule::Sum => "sum",
        GaugeRule::Min => "min",
        GaugeRule::Max => "max",
        GaugeRule::Mean => "mean",
    }
}

/// All values of header `name`, joined by `,` (one list, RFC 9110 5.3);
/// values that are not visible ASCII are left out.
fn header_list(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    let values: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// `/metrics`: the text format, or the protobuf one when the `Accept`
/// header prefers it ([`scrape::format`]); gzipped when `Accept-Encoding`
/// allows it ([`scrape::accepts_gzip`]).
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let format = scrape::format(header_list(&headers, header::ACCEPT).as_deref());
    let body = match format {
        Format::Text => {
            let agg = state.aggregator.lock();
            render(&agg, &state.stats).into_bytes()
        }
        Format::Protobuf => scrape::render_protobuf(&state.aggregator, &state.stats),
    };
    let mut response_headers = HeaderMap::new();
    response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    response_headers.insert(header::VARY, HeaderValue::from_static("Accept, Accept-Encoding"));
    let body = if scrape::accepts_gzip(header_list(&headers, header::ACCEPT_ENCODING).as_deref()) {
        response_headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        scrape::gzip(&body)
    } else {
        body
    };
    (response_headers, body).into_response()
}
