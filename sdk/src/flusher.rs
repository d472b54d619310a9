//! The flusher: the only part of the SDK that talks to the network. It is
//! the protocol crate's flush client ([`shoal_proto::client`]: batches,
//! refs, resends, backoff, conservation counts) fed with this process's
//! deltas; the same client forwards a collector's rollups upstream.

use crate::error::Error;
use crate::inner::Inner;
use shoal_proto::client::{ClientConfig, ClientError, ClientSecurity, FlushClient, SplitLimits};
use std::sync::Arc;
use std::time::Duration;

/// Settings of the flusher.
#[derive(Clone, Debug)]
pub(crate) struct FlusherConfig {
    pub(crate) endpoints: Vec<String>,
    pub(crate) interval: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) security: ClientSecurity,
}

/// Handle to the flusher thread.
pub(crate) struct Flusher(FlushClient);

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Error {
        match e {
            ClientError::InvalidConfig(m) => Error::InvalidConfig(m),
            ClientError::Flush(m) => Error::Flush(m),
            ClientError::ShutDown => Error::ShutDown,
        }
    }
}

impl Flusher {
    pub(crate) fn start(inner: Arc<Inner>, config: FlusherConfig) -> Result<Flusher, Error> {
        let identity = inner.identity.clone();
        let stats = inner.flusher_stats.clone();
        let config = ClientConfig {
            endpoints: config.endpoints,
            interval: config.interval,
            shutdown_timeout: config.shutdown_timeout,
            split: SplitLimits::default(),
            state_file: None,
            security: config.security,
        };
        Ok(Flusher(FlushClient::start(inner, identity, stats, config)?))
    }

    pub(crate) fn flush_now(&self) -> Result<(), Error> {
        Ok(self.0.flush_now()?)
    }

    pub(crate) fn shutdown(self) -> Result<(), Error> {
        Ok(self.0.shutdown()?)
    }
}
