//! # shoal-collector
//!
//! Merges the deltas that a fleet of shoal SDK instances flushes over gRPC
//! into cluster rollups (exact counter totals, cluster quantiles from merged
//! sketches) and serves them to Prometheus on `/metrics`, with a JSON query
//! API under `/api/v1/` and `/healthz`.
//!
//! Embed one (tests, the fleet demo) with [`Collector::start`]; the
//! `shoal-collector` binary runs [`serve`] until SIGINT/SIGTERM.
//!
//! Stages, one module each, no loops between them: [`ingest`] (the gRPC
//! service, the bounded queue, refusals before decoding) -> [`validate`] (a
//! [`validate::ValidBatch`] or a typed refusal of the whole batch) ->
//! [`aggregate`] (instances and dedup, admission and limits, rollups) ->
//! `http` (exposition and queries; [`scrape`] the protobuf answer with native
//! histograms and the content negotiation). Beside them: [`rejection`] (why things
//! are refused), [`stats`] (self-metrics), [`config`] (settings, TOML).
//!
//! The collector is built on `shoal-core` and `shoal-proto` only, never on
//! the SDK.

#![warn(missing_docs)]

pub mod aggregate;
mod api;
pub mod config;
pub mod daemon;
pub mod durable;
pub mod forward;
mod http;
pub mod ingest;
mod page;
pub mod persist;
pub mod rejection;
pub mod remote_write;
pub mod scrape;
pub mod security;
pub mod stats;
pub mod statsd;
pub mod validate;

pub use crate::aggregate::Aggregator;
pub use crate::config::{Config, GaugeRule};
pub use crate::http::render;

use parking_lot::Mutex;
use shoal_proto::ingest_server::IngestServer;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Shared state of a running collector.
#[derive(Clone)]
pub struct Shared {
    /// The rollups.
    pub aggregator: Arc<Mutex<Aggregator>>,
    /// Self-metrics.
    pub stats: Arc<stats::Stats>,
    /// The bounded ingest queue, its retry hint and injectable faults.
    pub ingest: Arc<ingest::IngestControl>,
    /// The WAL and checkpoints (with `data_dir`); `None`: in memory only.
    pub durable: Option<Arc<persist::Durable>>,
    /// The forwarder to the upstream tier, while serving with `upstream`.
    pub forwarder: Arc<Mutex<Option<Arc<forward::Forwarder>>>>,
    /// TLS and tokens, while serving.
    pub security: Arc<Mutex<Option<Arc<security::Security>>>>,
    /// Serving: state restored and every listener up (`/readyz`).
    pub ready: Arc<std::sync::atomic::AtomicBool>,
}

impl Shared {
    /// Fresh in-memory state (empty rollups, new epoch) for `config`,
    /// whatever its `data_dir` (see [`Shared::open`]).
    pub fn new(config: Config) -> Shared {
        let stats = Arc::new(stats::Stats::default());
        let ingest = Arc::new(ingest::IngestControl::new(config.ingest_queue.max(1), config.overload_retry_after_ms));
        Shared {
            aggregator: Arc::new(Mutex::new(Aggregator::new(config, stats.clone()))),
            stats,
            ingest,
            durable: None,
            forwarder: Arc::default(),
            security: Arc::default(),
            ready: Arc::default(),
        }
    }

    /// The state for `config`: restored from `data_dir` if set (blocking:
    /// opens the WAL, loads the checkpoint, replays), else [`Shared::new`].
    /// A corrupt checkpoint is an error naming the file.
    pub fn open(config: Config) -> Result<Shared, String> {
        Shared::open_with(config, durable::WalOptions::default())
    }

    /// [`Shared::open`] with WAL options (tests inject faults this way).
    pub fn open_with(config: Config, options: durable::WalOptions) -> Result<Shared, String> {
        if config.data_dir.is_none() {
            return Ok(Shared::new(config));
        }
        let stats = Arc::new(stats::Stats::default());
        let ingest = Arc::new(ingest::IngestControl::new(config.ingest_queue.max(1), config.overload_retry_after_ms));
        let (aggregator, durable) = persist::Durable::open(config, stats.clone(), options)?;
        Ok(Shared {
            aggregator: Arc::new(Mutex::new(aggregator)),
            stats,
            ingest,
            durable: Some(Arc::new(durable)),
            forwarder: Arc::default(),
            security: Arc::default(),
            ready: Arc::default(),
        })
    }

    /// Applies the reloadable settings of `config` (blocklist, series
    /// limits, gauge rules, quantiles, retry hint, ...): the next flush
    /// response carries the new blocklist to every SDK. A bad config changes
    /// nothing and is counted. Returns the changed settings that need a
    /// restart (not applied).
    pub fn reload(&self, config: &Config) -> Result<Vec<&'static str>, String> {
        let result = self.aggregator.lock().reload(config);
        match &result {
            Ok(ignored) => {
                self.stats.config_reloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.ingest.retry_after_ms.store(config.overload_retry_after_ms, std::sync::atomic::Ordering::Relaxed);
                if !ignored.is_empty() {
                    tracing::warn!("config reloaded; these settings need a restart and were not applied: {ignored:?}");
                }
                if let Some(forwarder) = self.forwarder.lock().clone() {
                    // The client answers between two sends: not on the caller's thread.
                    std::thread::spawn(move || forwarder.apply_upstream());
                }
                tracing::info!(blocklist = ?config.blocklist, "config reloaded");
            }
            Err(e) => {
                self.stats.config_reload_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!("config reload refused, keeping the old settings: {e}");
            }
        }
        result
    }

    /// Re-reads the TLS certificates and keys and the tokens files (what
    /// SIGHUP does, with or without a config file). What fails to load
    /// keeps its old contents.
    pub fn reload_security(&self) -> Result<(), String> {
        match self.security.lock().clone() {
            Some(security) => security.reload(),
            None => Ok(()),
        }
    }

    /// [`Shared::reload`] from a TOML file (what SIGHUP does).
    pub fn reload_from_file(&self, path: &std::path::Path) -> Result<Vec<&'static str>, String> {
        match Config::from_toml_file(path) {
            Ok(config) => self.reload(&config),
            Err(e) => {
                self.stats.config_reload_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!("config reload refused, keeping the old settings: {e}");
                Err(e)
            }
        }
    }
}

/// Binds both listeners and serves until `shutdown` completes, then drains
/// in-flight requests. Runs on the caller's tokio runtime.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), String> {
    config.validate()?;
    let shared = tokio::task::spawn_blocking(move || Shared::open(config)).await.map_err(|e| e.to_string())??;
    serve_shared(shared, shutdown).await
}

/// [`serve`] over state the caller keeps (to reload it, e.g. on SIGHUP).
pub async fn serve_shared(shared: Shared, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), String> {
    let config = shared.aggregator.lock().config().clone();
    config.validate()?;
    let grpc =
        tokio::net::TcpListener::bind(config.grpc_listen).await.map_err(|e| format!("cannot bind gRPC {}: {e}", config.grpc_listen))?;
    let http =
        tokio::net::TcpListener::bind(config.http_listen).await.map_err(|e| format!("cannot bind HTTP {}: {e}", config.http_listen))?;
    tracing::info!(grpc = %config.grpc_listen, http = %config.http_listen, "shoal-collector listening");
    let statsd = config.statsd_listen.map(|addr| statsd::Sockets::bind(addr, config.statsd_recv_buffer)).transpose()?;
    let security = security::Security::load(&config, shared.stats.security.clone())?;
    serve_on(shared, grpc, http, statsd, security, shutdown).await
}

async fn serve_on(
    shared: Shared,
    grpc: tokio::net::TcpListener,
    http: tokio::net::TcpListener,
    statsd: Option<statsd::Sockets>,
    security: security::Security,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let security = Arc::new(security);
    *shared.security.lock() = Some(security.clone());
    let (grpc_addr, http_addr) = (grpc.local_addr().map_err(|e| e.to_string())?, http.local_addr().map_err(|e| e.to_string())?);
    security::warn_exposure(grpc_addr, http_addr, &security);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let statsd = statsd.map(|sockets| statsd::listen::start(&shared, sockets, stop_rx.clone())).transpose()?;
    let interval = shared.aggregator.lock().config().interval();
    let service = ingest::IngestService::new(shared.aggregator.clone(), shared.stats.clone(), shared.ingest.clone())
        .with_durable(shared.durable.clone());
    let mut durable_tasks = Vec::new();
    if let Some(d) = &shared.durable {
        durable_tasks.push(tokio::spawn(d.clone().track_appends()));
        durable_tasks.push(tokio::spawn(d.clone().checkpoint_loop(shared.aggregator.clone(), stop_rx.clone())));
    }
    let ingest_server = IngestServer::new(service).max_decoding_message_size(ingest::MAX_BATCH_BYTES);
    let mut grpc_builder = tonic::transport::Server::builder().layer(ingest::CountRefusalsLayer(shared.stats.clone()));
    let grpc_server = match &security.ingest_tokens {
        // The token is checked before the message is decoded.
        Some(tokens) => grpc_builder.add_service(tonic::service::interceptor::InterceptedService::new(
            ingest_server,
            security::IngestAuth { tokens: tokens.clone(), stats: security.stats.clone() },
        )),
        None => grpc_builder.add_service(ingest_server),
    };
    let (tls, stats) = (security.tls.clone(), security.stats.clone());
    let grpc = security::listener::SecureListener::start(grpc, tls.clone(), security::tls::Listener::Ingest, stats.clone())
        .map_err(|e| format!("gRPC listener: {e}"))?;
    let http = security::listener::SecureListener::start(http, tls, security::tls::Listener::Http, stats)
        .map_err(|e| format!("HTTP listener: {e}"))?;
    let mut rx = stop_rx.clone();
    let grpc_task = tokio::spawn(async move {
        let incoming = grpc.into_incoming();
        grpc_server
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
            .map_err(|e| format!("gRPC server: {e}"))
    });
    let mut app =
        http::router(http::AppState { aggregator: shared.aggregator.clone(), stats: shared.stats.clone(), ready: shared.ready.clone() });
    if let Some(tokens) = &security.http_tokens {
        app = app.layer(axum::middleware::from_fn_with_state((tokens.clone(), security.stats.clone()), security::require_http_token));
    }
    let mut rx = stop_rx.clone();
    let http_task = tokio::spawn(async move {
        axum::serve(http, app)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
            .map_err(|e| format!("HTTP server: {e}"))
    });
    let (targets, data_dir) = {
        let agg = shared.aggregator.lock();
        (agg.config().remote_write.iter().map(|t| t.target()).collect::<Vec<_>>(), agg.config().data_dir.clone())
    };
    // Durable queues with a durable collector (`Shared::new` is in memory whatever `data_dir` says).
    let data_dir = data_dir.filter(|_| shared.durable.is_some() && !targets.is_empty());
    let durable_queues = data_dir.is_some();
    let remote = match data_dir {
        None => remote_write::RemoteWriteSet::new(targets)?,
        // Durable queues: what was queued before the restart goes first.
        Some(dir) => {
            let storages = tokio::task::spawn_blocking(move || remote_write::disk_queue::open_all(&dir, targets))
                .await
                .map_err(|e| format!("remote-write: opening the queues failed: {e}"))?;
            remote_write::RemoteWriteSet::with_storage(storages)?
        }
    };
    let remote = Arc::new(remote);
    shared.stats.set_remote_write_targets(remote.writers().iter().map(|w| (w.target().url.clone(), w.stats_handle())).collect());
    let forward_config = shared.aggregator.lock().config().clone();
    if let Some(f) =
        forward::Forwarder::start(&forward_config, shared.aggregator.clone(), shared.durable.clone(), tokio::runtime::Handle::current())?
    {
        shared.stats.set_forwarder(f.stats().clone());
        *shared.forwarder.lock() = Some(Arc::new(f));
    }
    shared.ready.store(true, std::sync::atomic::Ordering::Release);
    let aggregator = shared.aggregator.clone();
    let mut rx = stop_rx.clone();
    let durable = shared.durable.clone();
    let maintenance = tokio::spawn(async move {
        // Ticks just after each interval boundary (wall clock): maintenance,
        // then the interval that just closed goes to every remote-write target.
        let step = interval.as_millis().max(1) as u64;
        let mut last_closed = unix_millis() / step;
        loop {
            let now = unix_millis();
            let next = (now / step + 1) * step;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(next - now + 5)) => {}
                _ = rx.wait_for(|s| *s) => return remote,
            }
            {
                let mut agg = aggregator.lock();
                match &durable {
                    Some(d) => d.maintain(&mut agg, aggregate::unix_secs()),
                    None => agg.maintain(aggregate::unix_secs()),
                }
            }
            let closed = unix_millis() / step;
            if closed > last_closed {
                last_closed = closed;
                push_interval(&aggregator, durable.as_ref(), &remote, (closed * step) as i64).await;
            }
        }
    });
    shutdown.await;
    shared.ready.store(false, std::sync::atomic::Ordering::Release);
    tracing::info!("shutting down: draining in-flight requests");
    let _ = stop_tx.send(true);
    // Graceful drain, bounded: an HTTP/2 peer that is not polling its
    // connection (an SDK between flushes) never completes the GOAWAY
    // handshake, and must not keep the collector from stopping.
    let grace = Duration::from_millis(shared.aggregator.lock().config().shutdown_grace_ms);
    let grpc_result = finish_within(grpc_task, grace, "gRPC").await;
    let http_result = finish_within(http_task, grace, "HTTP").await;
    if let Some(statsd) = statsd {
        // Lines received before the stop are merged (and logged) before the
        // last forward, the last remote-write push and the checkpoint.
        statsd.finish().await;
    }
    let forwarder = shared.forwarder.lock().take();
    if let Some(f) = forwarder {
        // Nothing merges any more: the last take covers everything.
        let _ = tokio::task::spawn_blocking(move || f.shutdown()).await;
    }
    if let Ok(remote) = maintenance.await {
        if !remote.writers().is_empty() {
            // What was merged since the last close (the SDKs' final flushes)
            // goes out too, then the queues drain within the grace period.
            push_interval(&shared.aggregator, shared.durable.as_ref(), &remote, unix_millis() as i64).await;
            // Every push has finished: the set is ours alone again.
            let stats = match Arc::try_unwrap(remote) {
                Ok(remote) => remote.shutdown(grace).await,
                Err(remote) => remote.stats(),
            };
            for t in stats.into_iter().filter(|t| t.queue_len > 0) {
                if durable_queues {
                    tracing::info!(url = %t.url, queued = t.queue_len, "remote-write: intervals still queued at shutdown stay in the data dir, sent after the restart");
                } else {
                    tracing::warn!(url = %t.url, queued = t.queue_len, "remote-write: intervals still queued at shutdown, dropped");
                }
            }
        }
    }
    if let Some(d) = &shared.durable {
        // A clean stop leaves a fresh checkpoint: the next start replays nothing.
        if let Err(e) = d.checkpoint(&shared.aggregator).await {
            tracing::warn!("final checkpoint failed (the log is replayed at the next start): {e}");
        }
    }
    for t in durable_tasks {
        t.abort();
    }
    grpc_result.and(http_result)
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as u64
}

/// Takes the rollups under the lock (clones), builds the interval ending at
/// `end_ms` off it and queues it on every target, on a blocking thread
/// (building takes a while; a durable queue writes and fsyncs a file). A
/// durable collector first waits until everything the export saw is on disk:
/// a value pushed out must never be one a crash could take back (the
/// receiver would see a counter go down, then the SDK's resend counted
/// twice). While degraded, the interval is skipped; counters are cumulative,
/// so the next one covers it.
async fn push_interval(
    aggregator: &Arc<Mutex<Aggregator>>,
    durable: Option<&Arc<persist::Durable>>,
    remote: &Arc<remote_write::RemoteWriteSet>,
    end_ms: i64,
) {
    if remote.writers().is_empty() {
        return;
    }
    let (export, ticket) = {
        let agg = aggregator.lock();
        (agg.export(aggregate::unix_secs()), durable.map(|d| d.last_ticket()))
    };
    if let (Some(d), Some(ticket)) = (durable, ticket) {
        if d.wait(ticket).await.is_err() {
            tracing::warn!("remote-write: interval skipped, the write-ahead log is failing (the next interval carries the totals)");
            return;
        }
    }
    let remote = remote.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || remote.push(export.into_interval(end_ms))).await {
        tracing::error!("remote-write: building or queueing the interval failed: {e}");
    }
}

async fn finish_within(task: tokio::task::JoinHandle<Result<(), String>>, grace: Duration, what: &str) -> Result<(), String> {
    let abort = task.abort_handle();
    match tokio::time::timeout(grace, task).await {
        Ok(joined) => joined.map_err(|e| e.to_string())?,
        Err(_) => {
            tracing::info!("{what} connections still open after {grace:?}: closing them");
            abort.abort();
            Ok(())
        }
    }
}

/// A collector running on its own threads (its own tokio runtime), for
/// embedding in tests and demos. Stops on [`Collector::shutdown`] or drop.
pub struct Collector {
    tls: bool,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    shared: Shared,
    statsd_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Collector {
    /// Binds the configured addresses (port 0 picks a free port) and starts
    /// serving in the background.
    pub fn start(config: Config) -> Result<Collector, String> {
        Collector::start_with(config, durable::WalOptions::default())
    }

    /// [`Collector::start`] with WAL options (fault injection in tests);
    /// they matter only with `data_dir`.
    pub fn start_with(config: Config, options: durable::WalOptions) -> Result<Collector, String> {
        config.validate()?;
        let grpc = std::net::TcpListener::bind(config.grpc_listen).map_err(|e| format!("cannot bind gRPC {}: {e}", config.grpc_listen))?;
        let http = std::net::TcpListener::bind(config.http_listen).map_err(|e| format!("cannot bind HTTP {}: {e}", config.http_listen))?;
        let (grpc_addr, http_addr) = (grpc.local_addr().map_err(|e| e.to_string())?, http.local_addr().map_err(|e| e.to_string())?);
        grpc.set_nonblocking(true).map_err(|e| e.to_string())?;
        http.set_nonblocking(true).map_err(|e| e.to_string())?;
        let statsd = config.statsd_listen.map(|addr| statsd::Sockets::bind(addr, config.statsd_recv_buffer)).transpose()?;
        let statsd_addr = statsd.as_ref().map(statsd::Sockets::local_addr);
        let shared = Shared::open_with(config.clone(), options)?;
        let security = security::Security::load(&config, shared.stats.security.clone())?;
        let tls = security.tls.is_some();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("shoal-collector")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name("shoal-collector-main".into())
            .spawn(move || {
                let result = runtime.block_on(async move {
                    let grpc = tokio::net::TcpListener::from_std(grpc).map_err(|e| e.to_string())?;
                    let http = tokio::net::TcpListener::from_std(http).map_err(|e| e.to_string())?;
                    serve_on(serving, grpc, http, statsd, security, async move {
                        let _ = stopped.await;
                    })
                    .await
                });
                runtime.shutdown_timeout(Duration::from_secs(2));
                result
            })
            .map_err(|e| e.to_string())?;
        Ok(Collector { tls, grpc_addr, http_addr, shared, statsd_addr, stop: Some(stop), thread: Some(thread) })
    }

    /// Address of the gRPC ingest listener.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// `http://ADDR` (`https://ADDR` with TLS) for `ShoalBuilder::collector`.
    pub fn grpc_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.grpc_addr)
    }

    /// `http://ADDR` (`https://ADDR` with TLS) of the HTTP listener.
    pub fn http_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.http_addr)
    }

    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// Address of the HTTP listener.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Address of the StatsD listener (UDP and TCP), when `statsd_listen` is set.
    pub fn statsd_addr(&self) -> Option<SocketAddr> {
        self.statsd_addr
    }

    /// The state (rollups and self-metrics).
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Applies the reloadable settings of `config` (see [`Shared::reload`]).
    pub fn reload(&self, config: &Config) -> Result<Vec<&'static str>, String> {
        self.shared.reload(config)
    }

    /// With `upstream`: takes what was merged now and forwards it, waiting
    /// for the upstream's acknowledgements (blocking; call it off the
    /// collector's runtime). Without one: an error.
    pub fn forward_now(&self) -> Result<(), String> {
        if self.shared.aggregator.lock().config().upstream.is_empty() {
            return Err("this collector has no upstream".into());
        }
        // The server thread starts the forwarder just after `start` returns.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(f) = self.shared.forwarder.lock().clone() {
                return f.flush_now();
            }
            if std::time::Instant::now() > deadline {
                return Err("the forwarder did not start".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The `/metrics` text, rendered in process.
    pub fn render_metrics(&self) -> String {
        let agg = self.shared.aggregator.lock();
        render(&agg, &self.shared.stats)
    }

    /// Stops accepting, drains in-flight requests and waits for the threads.
    pub fn shutdown(mut self) -> Result<(), String> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| "collector thread panicked".to_string())?,
            None => Ok(()),
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}
