//! Collector settings: defaults, the optional TOML file, and validation.

use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// How the gauges of several instances roll up into one cluster value.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GaugeRule {
    /// Sum over instances (the default: queue depths, connections, memory).
    #[default]
    Sum,
    /// Smallest instance value.
    Min,
    /// Largest instance value.
    Max,
    /// Mean over instances.
    Mean,
}

impl GaugeRule {
    /// Combines instance values (never empty).
    pub fn apply(self, values: &[f64]) -> f64 {
        match self {
            GaugeRule::Sum => values.iter().sum(),
            GaugeRule::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
            GaugeRule::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            GaugeRule::Mean => values.iter().sum::<f64>() / values.len() as f64,
        }
    }
}

/// Everything the collector can be told. Every field has a default; the TOML
/// file and the command line override them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC ingest address.
    pub grpc_listen: SocketAddr,
    /// HTTP address of `/metrics`, `/healthz` and `/api/v1/...`.
    pub http_listen: SocketAddr,
    /// Width of the aligned rollup intervals, in seconds.
    pub interval_secs: u64,
    /// How long interval rollups are kept, in seconds.
    pub retention_secs: u64,
    /// Window of the quantiles exposed on `/metrics`, in seconds.
    pub summary_window_secs: u64,
    /// An instance silent for this many intervals stops contributing gauges.
    pub gauge_stale_intervals: u64,
    /// An instance silent this long is forgotten (its dedup state too), in seconds.
    pub instance_expiry_secs: u64,
    /// Gauge rollup rule per metric name (default: sum).
    pub gauge_rules: HashMap<String, GaugeRule>,
    /// Quantiles shown on `/metrics` for every histogram.
    pub quantiles: Vec<f64>,
    /// On shutdown, how long in-flight requests may take to finish, in ms.
    pub shutdown_grace_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc_listen: "127.0.0.1:7171".parse().expect("valid default address"),
            http_listen: "127.0.0.1:9171".parse().expect("valid default address"),
            interval_secs: 10,
            retention_secs: 3600,
            summary_window_secs: 60,
            gauge_stale_intervals: 3,
            instance_expiry_secs: 3600,
            gauge_rules: HashMap::new(),
            quantiles: vec![0.5, 0.9, 0.99, 0.999],
            shutdown_grace_ms: 2000,
        }
    }
}

impl Config {
    /// Reads a TOML file; unknown keys are errors.
    pub fn from_toml_file(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Config::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval_secs == 0 {
            return Err("interval_secs must be at least 1".into());
        }
        if self.retention_secs < self.interval_secs {
            return Err("retention_secs must be at least interval_secs".into());
        }
        if self.summary_window_secs == 0 {
            return Err("summary_window_secs must be at least 1".into());
        }
        if self.gauge_stale_intervals == 0 {
            return Err("gauge_stale_intervals must be at least 1".into());
        }
        if let Some(q) = self.quantiles.iter().find(|q| !(0.0..=1.0).contains(*q)) {
            return Err(format!("quantile {q} is not in [0, 1]"));
        }
        Ok(())
    }

    /// The rollup interval.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs)
    }

    /// The rule for a gauge name.
    pub fn gauge_rule(&self, name: &str) -> GaugeRule {
        self.gauge_rules.get(name).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let c = Config::from_toml("interval_secs = 5\n[gauge_rules]\ncpu = \"max\"\n").unwrap();
        assert_eq!(c.interval_secs, 5);
        assert_eq!(c.gauge_rule("cpu"), GaugeRule::Max);
        assert_eq!(c.gauge_rule("other"), GaugeRule::Sum);
        assert_eq!(c.retention_secs, 3600);
        assert!(Config::from_toml("nonsense = 1").unwrap_err().contains("nonsense"));
        assert!(Config::from_toml("interval_secs = 0").unwrap_err().contains("interval_secs"));
        assert!(Config::from_toml("[gauge_rules]\ncpu = \"median\"").is_err());
    }

    #[test]
    fn gauge_rules_combine_values() {
        let v = [1.0, 5.0, 3.0];
        assert_eq!(GaugeRule::Sum.apply(&v), 9.0);
        assert_eq!(GaugeRule::Min.apply(&v), 1.0);
        assert_eq!(GaugeRule::Max.apply(&v), 5.0);
        assert_eq!(GaugeRule::Mean.apply(&v), 3.0);
    }
}
