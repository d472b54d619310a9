//! # shoal-proto
//!
//! The shoal flush protocol and everything both of its ends share:
//!
//! - [`v1`] the schema, generated from `proto/shoal.proto` (read that file
//!   for the delivery rules) with tonic and prost;
//! - [`convert`] conversions between the schema and the core types
//!   (`TryFrom` with a typed [`convert::DecodeError`]);
//! - [`limits`] the protocol limits and the per-series rules, one
//!   definition for the SDK, the collector and the fuzz target;
//! - [`client`] the sending side (batches, refs, resends, backoff,
//!   conservation counts), used by the SDK's flusher and by a collector
//!   forwarding upstream: one client implementation.

#![warn(missing_docs)]

/// Version 1 of the protocol (generated).
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("shoal.v1");
}

pub mod client;
pub mod convert;
pub mod limits;

pub use v1::*;
