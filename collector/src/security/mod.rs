//! Who may talk to the collector: TLS on both listeners ([`tls`],
//! [`listener`]), bearer tokens on ingest and optionally on HTTP
//! ([`tokens`]), and tenants (a token's tenant becomes the `tenant` label of
//! everything it sends, see [`apply_tenant`]).
//!
//! Defaults stay safe: both listeners are on loopback. A listener bound
//! beyond loopback without TLS is warned about at start; ingest without
//! tokens there too, louder ([`warn_exposure`]).
//!
//! Refusals never reach the merge step: a request without a valid token is
//! answered `UNAUTHENTICATED` before its body is decoded, counted by reason
//! in `shoal_collector_auth_refused_total`; a failed handshake is counted in
//! `shoal_collector_tls_handshake_failures_total`. Tokens never appear in
//! logs or errors.

pub mod listener;
pub mod tls;
pub mod tokens;

use crate::config::Config;
use crate::scrape::MetricWriter;
use shoal_proto as pb;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokens::{AuthRefusal, TokenStore, TENANT_LABEL};

/// TLS and tokens of a running collector; [`Security::reload`] re-reads
/// every file (SIGHUP).
pub struct Security {
    /// Server TLS of both listeners, when `tls_cert` is set.
    pub tls: Option<Arc<tls::ServerTls>>,
    /// Tokens required on gRPC ingest (`auth_tokens_file`).
    pub ingest_tokens: Option<Arc<TokenStore>>,
    /// Tokens required on HTTP but `/healthz` and `/readyz` (`http_auth_tokens_file`).
    pub http_tokens: Option<Arc<TokenStore>>,
    /// Counts.
    pub stats: Arc<SecurityStats>,
}

impl Security {
    /// Reads the files `config` names; an error names the file.
    pub fn load(config: &Config, stats: Arc<SecurityStats>) -> Result<Security, String> {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(tls::ServerTls::load(tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: config.tls_client_ca.clone(),
            })?)),
            _ => None,
        };
        let store = |path: &Option<std::path::PathBuf>| path.as_deref().map(TokenStore::load).transpose().map(|s| s.map(Arc::new));
        Ok(Security { tls, ingest_tokens: store(&config.auth_tokens_file)?, http_tokens: store(&config.http_auth_tokens_file)?, stats })
    }

    /// No TLS, no tokens.
    pub fn none(stats: Arc<SecurityStats>) -> Security {
        Security { tls: None, ingest_tokens: None, http_tokens: None, stats }
    }

    /// Re-reads the certificates, keys and tokens files. What fails to load
    /// keeps its old contents (logged, counted); the rest is applied.
    pub fn reload(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => tracing::info!(cert = %tls.files().cert.display(), "TLS certificates reloaded"),
                Err(e) => errors.push(e),
            }
        }
        for store in [&self.ingest_tokens, &self.http_tokens].into_iter().flatten() {
            match store.reload() {
                Ok(n) => tracing::info!(path = %store.path().display(), tokens = n, "tokens reloaded"),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            self.stats.reloads.fetch_add(1, Relaxed);
            return Ok(());
        }
        self.stats.reload_errors.fetch_add(1, Relaxed);
        let message = errors.join("; ");
        tracing::error!("security reload: kept the old contents of what failed: {message}");
        Err(message)
    }
}

/// Warns when a listener is reachable beyond loopback without TLS, louder
/// when ingest also takes batches from anyone.
pub fn warn_exposure(grpc: SocketAddr, http: SocketAddr, security: &Security) {
    let tls = security.tls.is_some();
    if !grpc.ip().is_loopback() {
        match (tls, security.ingest_tokens.is_some()) {
            (_, false) => tracing::error!(
                %grpc,
                "gRPC ingest listens beyond loopback WITHOUT tokens{}: anyone who reaches this port can write any series; set auth_tokens_file{}",
                if tls { "" } else { " or TLS" },
                if tls { "" } else { " and tls_cert/tls_key" }
            ),
            (false, true) => {
                tracing::warn!(%grpc, "gRPC ingest listens beyond loopback without TLS: tokens and data cross the network in clear; set tls_cert/tls_key")
            }
            (true, true) => {}
        }
    }
    if !http.ip().is_loopback() && !tls {
        tracing::warn!(%http, "HTTP listens beyond loopback without TLS; set tls_cert/tls_key");
    }
}

/// Counts of the security layer, exposed under `shoal_collector_`.
#[derive(Debug, Default)]
pub struct SecurityStats {
    /// TLS handshakes completed.
    pub handshakes: AtomicU64,
    handshake_failures: [AtomicU64; tls::HANDSHAKE_FAILURES.len()],
    ingest_refused: [AtomicU64; AuthRefusal::ALL.len()],
    http_refused: [AtomicU64; AuthRefusal::ALL.len()],
    /// Reloads of every file that succeeded.
    pub reloads: AtomicU64,
    /// Reloads where some file failed (its old contents stay).
    pub reload_errors: AtomicU64,
    /// Series whose own `tenant` label differed from their token's tenant
    /// (overridden).
    pub tenant_label_overrides: AtomicU64,
    auth_warned: Throttle,
}

impl SecurityStats {
    /// Counts a failed handshake; `reason` is one of [`tls::HANDSHAKE_FAILURES`].
    pub fn handshake_failed(&self, reason: &str) {
        let i = tls::HANDSHAKE_FAILURES.iter().position(|r| *r == reason).unwrap_or(tls::HANDSHAKE_FAILURES.len() - 1);
        self.handshake_failures[i].fetch_add(1, Relaxed);
    }

    /// Failed handshakes for `reason` so far.
    pub fn handshake_failures(&self, reason: &str) -> u64 {
        tls::HANDSHAKE_FAILURES.iter().position(|r| *r == reason).map_or(0, |i| self.handshake_failures[i].load(Relaxed))
    }

    /// Ingest requests refused for `reason` so far.
    pub fn ingest_refused(&self, reason: AuthRefusal) -> u64 {
        self.ingest_refused[reason as usize].load(Relaxed)
    }

    /// HTTP requests refused for `reason` so far.
    pub fn http_refused(&self, reason: AuthRefusal) -> u64 {
        self.http_refused[reason as usize].load(Relaxed)
    }

    fn refused(&self, listener: &'static str, reason: AuthRefusal, peer: Option<SocketAddr>) {
        let counts = if listener == "grpc" { &self.ingest_refused } else { &self.http_refused };
        counts[reason as usize].fetch_add(1, Relaxed);
        if self.auth_warned.ready() {
            let peer = peer.map_or_else(|| "?".to_string(), |p| p.to_string());
            tracing::warn!(listener, %peer, reason = reason.as_str(), "request refused: {} (logged at most every 10 s)", reason.message());
        }
    }

    /// Writes the counts.
    pub fn write(&self, w: &mut impl MetricWriter) {
        let name = "shoal_collector_tls_handshakes_total";
        w.family(name, "counter", "TLS handshakes completed (both listeners)");
        w.sample(name, &[], None, &self.handshakes.load(Relaxed).to_string());
        let name = "shoal_collector_tls_handshake_failures_total";
        w.family(name, "counter", "TLS handshakes that failed, by reason; the connection was closed, nothing read from it");
        for (reason, n) in tls::HANDSHAKE_FAILURES.iter().zip(&self.handshake_failures) {
            w.sample(name, &[("reason".into(), reason.to_string())], None, &n.load(Relaxed).to_string());
        }
        let name = "shoal_collector_auth_refused_total";
        w.family(name, "counter", "Requests refused for their bearer token, by listener and reason; never decoded nor merged");
        for (listener, counts) in [("grpc", &self.ingest_refused), ("http", &self.http_refused)] {
            for (reason, n) in AuthRefusal::ALL.iter().zip(counts) {
                let labels = [("listener".to_string(), listener.to_string()), ("reason".to_string(), reason.as_str().to_string())];
                w.sample(name, &labels, None, &n.load(Relaxed).to_string());
            }
        }
        let counters = [
            ("shoal_collector_security_reloads_total", &self.reloads, "Reloads (SIGHUP) of the TLS and tokens files that all succeeded"),
            (
                "shoal_collector_security_reload_errors_total",
                &self.reload_errors,
                "Reloads (SIGHUP) where a TLS or tokens file failed to load; its old contents stay",
            ),
            (
                "shoal_collector_tenant_label_overrides_total",
                &self.tenant_label_overrides,
                "Series definitions whose own tenant label was replaced by their token's tenant",
            ),
        ];
        for (name, value, help) in counters {
            w.family(name, "counter", help);
            w.sample(name, &[], None, &value.load(Relaxed).to_string());
        }
    }
}

/// At most one `true` every 10 s: rate-limits log lines from hot paths
/// without a lock.
#[derive(Debug, Default)]
pub struct Throttle {
    last_ms: AtomicU64,
}

impl Throttle {
    const EVERY_MS: u64 = 10_000;

    /// Whether to log now.
    pub fn ready(&self) -> bool {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64).max(1);
        let last = self.last_ms.load(Relaxed);
        (last == 0 || now.saturating_sub(last) >= Self::EVERY_MS) && self.last_ms.compare_exchange(last, now, Relaxed, Relaxed).is_ok()
    }
}

/// The tenant a request's token carries, for the ingest handler.
#[derive(Clone, Debug)]
pub struct Tenant(pub String);

/// Checks the bearer token of every ingest call before its message is
/// decoded; puts the token's tenant in the request's extensions.
#[derive(Clone)]
pub struct IngestAuth {
    /// The tokens.
    pub tokens: Arc<TokenStore>,
    /// Where refusals are counted.
    pub stats: Arc<SecurityStats>,
}

impl tonic::service::Interceptor for IngestAuth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let tokens = self.tokens.current();
        let header = request.metadata().get("authorization").map(|v| v.as_bytes());
        match tokens.check(header) {
            Ok(tenant) => {
                if let Some(t) = tenant {
                    let tenant = Tenant(t.to_string());
                    request.extensions_mut().insert(tenant);
                }
                Ok(request)
            }
            Err(reason) => {
                let peer = request.extensions().get::<listener::PeerAddr>().and_then(|p| p.0);
                self.stats.refused("grpc", reason, peer);
                Err(tonic::Status::unauthenticated(reason.message()))
            }
        }
    }
}

/// Paths answered without a token: liveness and readiness probes.
const OPEN_PATHS: [&str; 5] = ["/healthz", "/readyz", "/", "/app.js", "/style.css"];

/// axum middleware: a bearer token from `tokens` on every path but the
/// probes and the live page's static files (they hold no data: the page
/// sends the token it is given in its URL's `#token=` to the API); `401`
/// with a JSON error otherwise.
pub async fn require_http_token(
    axum::extract::State((tokens, stats)): axum::extract::State<(Arc<TokenStore>, Arc<SecurityStats>)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let header = request.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
    match tokens.current().check(header) {
        Ok(_) => next.run(request).await,
        Err(reason) => {
            stats.refused("http", reason, None);
            let body = serde_json::json!({ "error": reason.message() });
            (http::StatusCode::UNAUTHORIZED, [(http::header::WWW_AUTHENTICATE, "Bearer")], axum::Json(body)).into_response()
        }
    }
}

/// Makes `request` the tenant's: its instance is the tenant's own (two
/// tenants' instances never share an id, a sequence or refs), and every
/// series it defines carries `tenant="<tenant>"`, whatever `tenant` label the
/// sender gave (an override is counted): one tenant cannot write into
/// another's series. Definitions are sent once per series, so this costs
/// nothing per value.
pub fn apply_tenant(request: &mut pb::FlushRequest, tenant: &str, stats: &SecurityStats) {
    request.instance_id = format!("{tenant}/{}", request.instance_id);
    request.instance_labels.retain(|l| l.key != TENANT_LABEL);
    request.instance_labels.push(pb::Label { key: TENANT_LABEL.into(), value: tenant.into() });
    for d in &mut request.definitions {
        // Series labels override instance labels: drop the series' own, so
        // the instance label (the tenant) is the one that stays.
        let before = d.labels.len();
        let mut overridden = false;
        d.labels.retain(|l| {
            let own = l.key == TENANT_LABEL;
            overridden |= own && l.value != tenant;
            !own
        });
        if overridden {
            stats.tenant_label_overrides.fetch_add(1, Relaxed);
        }
        debug_assert!(d.labels.len() + 1 >= before);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_owns_its_instance_and_series() {
        let stats = SecurityStats::default();
        let label = |k: &str, v: &str| pb::Label { key: k.into(), value: v.into() };
        let mut request = pb::FlushRequest {
            instance_id: "i-1".into(),
            instance_labels: vec![label("service", "api"), label("tenant", "b")],
            definitions: vec![
                pb::SeriesDefinition {
                    r#ref: 1,
                    name: "x".into(),
                    labels: vec![label("tenant", "b"), label("m", "GET")],
                    ..Default::default()
                },
                pb::SeriesDefinition { r#ref: 2, name: "y".into(), labels: vec![label("tenant", "a")], ..Default::default() },
            ],
            ..Default::default()
        };
        apply_tenant(&mut request, "a", &stats);
        assert_eq!(request.instance_id, "a/i-1");
        assert_eq!(request.instance_labels, vec![label("service", "api"), label("tenant", "a")]);
        assert_eq!(request.definitions[0].labels, vec![label("m", "GET")]);
        assert!(request.definitions[1].labels.is_empty());
        assert_eq!(stats.tenant_label_overrides.load(Relaxed), 1, "only the definition that named another tenant");
    }

    #[test]
    fn throttle_lets_one_through_per_period() {
        let t = Throttle::default();
        assert!(t.ready());
        assert!(!t.ready());
    }
}
