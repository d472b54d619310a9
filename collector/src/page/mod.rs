//! The live page at `/`: one HTML file, a script and a style sheet, written
//! by hand and compiled into the binary (no build step, no third-party
//! code). It reads only the JSON API ([`crate::api`]) and redraws itself
//! every second: the fleet (instances, silent ones), the collector's health,
//! a paged series search, and a chart of the selected series drawn as SVG.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");

/// Revalidated every load, so a new collector version is never mixed with
/// an old cached script.
const NO_CACHE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "no-cache");

/// `GET /`.
pub(crate) async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), NO_CACHE], INDEX_HTML)
}

/// `GET /app.js`.
pub(crate) async fn script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), NO_CACHE], APP_JS)
}

/// `GET /style.css`.
pub(crate) async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), NO_CACHE], STYLE_CSS)
}
