//! This profile's parsers of untrusted input, for the fuzz targets in
//! `fuzz/` (docs/fuzzing.md), beside the shared ones in
//! `crate::fuzzing`: the profile's own functions, re-exported. Not an
//! API: hidden from the documentation.

pub use super::config::NatsUrl;
pub use super::nats::{interpret as tii_nats_result, NatsError, Registered};
pub use super::provision::{validate as tii_provision, Provisioned};
