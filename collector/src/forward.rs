//! Tiers: this collector forwarding what it merged to upstream collectors
//! (`upstream`), as one instance of the next tier.
//!
//! There is no second protocol and no second client: [`ForwardSource`] is a
//! [`DeltaSource`] over the aggregator (what was merged since the last take,
//! per rollup series, see [`crate::aggregate::forward`]) and the protocol
//! crate's [`FlushClient`] does the rest exactly as for an SDK: numbered
//! batches, resends, dedup, backoff, conservation counts, shards by
//! rendezvous hashing. The upstream sees an instance whose id is this
//! collector's (kept in the data dir) and whose labels are `upstream_labels`.
//!
//! Exactly once across a crash of this collector (with `data_dir`): each take
//! is logged in the WAL and waited for before the client gets it; the client
//! saves what it holds in `data_dir/forward/state` (its instance id, per
//! shard the sequence, the numbered batches and the un-numbered deltas)
//! before sending anything new; after a restart it resends its numbered
//! batches under their numbers (the upstream drops what it merged) and the
//! takes it never saved are taken again.

use crate::aggregate::{unix_secs, Aggregator};
use crate::config::Config;
use crate::persist::Durable;
use parking_lot::Mutex;
use shoal_core::{Deltas, OwnMetrics};
use shoal_proto::client::{
    AuthToken, ClientConfig, ClientSecurity, DeltaSource, FlushClient, FlusherStats, Identity, SplitLimits, StateFile,
};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// How long a take waits for its WAL record to be durable before it is
/// given back (and the interval's deltas go with the next take).
const TAKE_DURABLE_WAIT: Duration = Duration::from_secs(10);

/// The aggregator as the flush client's source.
pub struct ForwardSource {
    aggregator: Arc<Mutex<Aggregator>>,
    durable: Option<Arc<Durable>>,
    runtime: tokio::runtime::Handle,
    stats: Arc<FlusherStats>,
    /// The last take handed to the client.
    handed: AtomicU64,
}

impl DeltaSource for ForwardSource {
    fn take_deltas(&self) -> Deltas {
        let durable = self.durable.as_deref();
        if durable.is_some_and(Durable::degraded) {
            // Memory is ahead of the log: nothing leaves until a checkpoint
            // has caught up (the deltas wait here, per series).
            return Deltas::default();
        }
        let (token, deltas, ticket) = {
            let mut agg = self.aggregator.lock();
            let Some((token, deltas)) = agg.forward_take(unix_secs(), durable.is_some()) else { return Deltas::default() };
            (token, deltas, durable.map(|d| d.log_forward_take(token)))
        };
        if let (Some(d), Some(ticket)) = (durable, ticket) {
            // The take must be on disk before the client may send it: else
            // a crash would replay its deltas as never taken.
            let waited = self.runtime.block_on(async { tokio::time::timeout(TAKE_DURABLE_WAIT, d.wait(ticket)).await });
            if !matches!(waited, Ok(Ok(()))) {
                tracing::warn!("forwarding: the write-ahead log did not take this interval's take; its deltas go with the next one");
                self.aggregator.lock().forward_untake(token);
                return Deltas::default();
            }
        }
        self.handed.store(token, Relaxed);
        deltas
    }

    fn describe(&self, name: &str) -> Option<(String, Option<String>)> {
        self.aggregator.lock().description(name).map(|d| (d.help.clone(), d.unit.clone()))
    }

    fn own_metrics(&self) -> OwnMetrics {
        self.stats.own_metrics()
    }

    fn take_token(&self) -> u64 {
        self.handed.load(Relaxed)
    }

    fn taken(&self, token: u64) {
        self.aggregator.lock().forward_taken(token);
    }

    fn resume(&self, token: u64) {
        self.aggregator.lock().forward_resume(token);
        self.handed.store(token, Relaxed);
    }
}

/// A running forwarder.
pub struct Forwarder {
    client: Mutex<Option<FlushClient>>,
    stats: Arc<FlusherStats>,
    aggregator: Arc<Mutex<Aggregator>>,
    /// One membership change at a time, each with the latest list.
    reloading: Mutex<()>,
}

/// TLS trust (`upstream_tls_ca_file`, beside the public roots) and the
/// bearer token (`upstream_auth_token_file`, read once at start) of the
/// upstream connections: the same options an SDK has.
pub fn upstream_security(config: &Config) -> Result<ClientSecurity, String> {
    let auth_token = match &config.upstream_auth_token_file {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("upstream_auth_token_file {}: {e}", path.display()))?;
            Some(AuthToken::new(text.trim()).map_err(|e| format!("upstream_auth_token_file {}: {e}", path.display()))?)
        }
    };
    Ok(ClientSecurity { tls_ca_file: config.upstream_tls_ca_file.clone(), tls_client_cert: None, auth_token })
}

impl Forwarder {
    /// Starts forwarding to `config.upstream` (`None` if it is empty).
    /// `runtime` runs the collector (a take waits on its WAL there).
    pub fn start(
        config: &Config,
        aggregator: Arc<Mutex<Aggregator>>,
        durable: Option<Arc<Durable>>,
        runtime: tokio::runtime::Handle,
    ) -> Result<Option<Forwarder>, String> {
        if config.upstream.is_empty() {
            return Ok(None);
        }
        let stats = Arc::new(FlusherStats::default());
        let state_file = match (&durable, &config.data_dir) {
            (Some(_), Some(dir)) => Some(StateFile::new(dir.join("forward").join("state"))),
            _ => None,
        };
        let source =
            Arc::new(ForwardSource { aggregator: aggregator.clone(), durable, runtime, stats: stats.clone(), handed: AtomicU64::new(0) });
        let identity = Identity {
            // A durable forwarder keeps the id of its state file.
            instance_id: format!("collector-{}-{:016x}", config.grpc_listen, rand::random::<u64>()),
            labels: config.upstream_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        let client_config = ClientConfig {
            endpoints: config.upstream.clone(),
            interval: config.interval(),
            shutdown_timeout: Duration::from_millis(config.shutdown_grace_ms.max(1000)),
            split: SplitLimits::default(),
            state_file,
            security: upstream_security(config)?,
        };
        let client = FlushClient::start(source, identity, stats.clone(), client_config).map_err(|e| format!("upstream: {e}"))?;
        tracing::info!(upstream = ?config.upstream, labels = ?config.upstream_labels, "forwarding to the upstream tier");
        Ok(Some(Forwarder { client: Mutex::new(Some(client)), stats, aggregator, reloading: Mutex::new(()) }))
    }

    /// The client's conservation counts.
    pub fn stats(&self) -> &Arc<FlusherStats> {
        &self.stats
    }

    /// Applies the configuration's current shard list (blocking; see
    /// [`FlushClient::set_endpoints`], which ignores an unchanged list).
    /// Reloads are applied one at a time, each reading the latest list, so
    /// an older list never wins over a newer one.
    pub fn apply_upstream(&self) {
        let _one_at_a_time = self.reloading.lock();
        let endpoints = self.aggregator.lock().config().upstream.clone();
        if let Some(client) = self.client.lock().as_ref() {
            match client.set_endpoints(endpoints.clone()) {
                Ok(()) => tracing::info!(upstream = ?endpoints, "forwarding: upstream shard list applied"),
                // A timeout still applies it, when the client is free.
                Err(e) => tracing::warn!(upstream = ?endpoints, "forwarding: the new upstream list is not confirmed: {e}"),
            }
        }
    }

    /// Takes and sends what was merged now, waiting for the acknowledgements
    /// (blocking).
    pub fn flush_now(&self) -> Result<(), String> {
        match self.client.lock().as_ref() {
            Some(c) => c.flush_now().map_err(|e| e.to_string()),
            None => Err("the forwarder is stopped".into()),
        }
    }

    /// The final take and flush (blocking). With a data dir, what the
    /// upstream did not acknowledge stays in the state file for the next
    /// start.
    pub fn shutdown(&self) {
        if let Some(client) = self.client.lock().take() {
            if let Err(e) = client.shutdown() {
                tracing::warn!("forwarding: final flush incomplete: {e}");
            }
        }
    }
}
