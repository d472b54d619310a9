//! The error type of every fallible shoal call.

use std::fmt;

/// What went wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A builder setting is invalid; the message says which and why.
    InvalidConfig(String),
    /// A global `metrics` recorder is already installed.
    RecorderAlreadyInstalled,
    /// A flush did not reach the collector; the deltas are kept and sent with
    /// the next batch.
    Flush(String),
    /// The flusher has been shut down.
    ShutDown,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig(m) => write!(f, "invalid shoal configuration: {m}"),
            Error::RecorderAlreadyInstalled => write!(f, "a global metrics recorder is already installed"),
            Error::Flush(m) => write!(f, "flush failed (deltas kept for the next batch): {m}"),
            Error::ShutDown => write!(f, "shoal has been shut down"),
        }
    }
}

impl std::error::Error for Error {}
