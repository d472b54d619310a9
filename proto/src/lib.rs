//! The shoal flush protocol: generated from `proto/shoal.proto` (read that
//! file for the delivery rules) with tonic and prost.

#![allow(clippy::all, missing_docs)]

/// Version 1 of the protocol.
pub mod v1 {
    tonic::include_proto!("shoal.v1");
}

pub use v1::*;
