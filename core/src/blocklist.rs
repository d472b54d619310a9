//! The blocklist: metric names and glob patterns whose series are not
//! merged (collector) and not sent (SDK, which receives the collector's list
//! in every flush response).

use crate::names::sanitize_metric_name;
use std::fmt;

/// Metric names and glob patterns (`*`, `?`, `[abc]`, `{a,b}`) whose series
/// are not sent. The collector pushes it in every flush response; the flusher
/// applies it when it takes deltas, so a blocked series costs the hot path
/// nothing beyond what a live series costs, and its deltas are taken (so they
/// never pile up) and dropped, counted. An empty list blocks nothing.
#[derive(Clone, Debug, Default)]
pub struct Blocklist {
    patterns: Vec<String>,
    set: globset::GlobSet,
}

impl Blocklist {
    /// Compiles patterns; the error names the bad one.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Blocklist, BlocklistError> {
        let mut builder = globset::GlobSetBuilder::new();
        for p in patterns {
            let p = p.as_ref();
            let glob = globset::GlobBuilder::new(p)
                .literal_separator(false)
                .build()
                .map_err(|e| BlocklistError { pattern: Some(p.to_string()), message: e.to_string() })?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| BlocklistError { pattern: None, message: e.to_string() })?;
        Ok(Blocklist { patterns: patterns.iter().map(|p| p.as_ref().to_string()).collect(), set })
    }

    /// The patterns, as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// True if nothing is blocked.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// True if a series of this metric name is blocked. The name is
    /// sanitised first (`a.b` is matched as `a_b`), as on the wire.
    pub fn blocks(&self, name: &str) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let wire = sanitize_metric_name(name);
        self.set.is_match(wire.as_str())
    }
}

/// A blocklist pattern that does not compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlocklistError {
    /// The pattern at fault, if one is.
    pub pattern: Option<String>,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for BlocklistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pattern {
            Some(p) => write!(f, "blocklist pattern {p:?}: {}", self.message),
            None => write!(f, "blocklist: {}", self.message),
        }
    }
}

impl std::error::Error for BlocklistError {}
