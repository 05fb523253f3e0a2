//! This profile's parsers of untrusted input, for the fuzz targets in
//! `fuzz/` (docs/fuzzing.md), beside the shared ones in
//! `crate::fuzzing`: the profile's own functions, re-exported. Not an
//! API: hidden from the documentation.

pub use super::api::{parse_credentials, Credentials};
pub use super::jwt::{unverified_claims, Claims};
pub use super::mac::{checked_address as sysfs_mac_address, InterfaceAddress};
