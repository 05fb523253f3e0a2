//! `--status`: what this profile's state dir says about a registration.

use crate::config::read_optional;
use crate::status::{certificate_summary, KeyLocation, Registration};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// azure-dps: `assignment.json` names the device, the hub and where the
/// certificate and key are.
pub(super) fn registration(dir: &Path) -> Registration {
    use super::{ASSIGNMENT_FILE, CERTIFICATE_FILE, KEY_FILE};
    let assignment: Value = read_optional(&dir.join(ASSIGNMENT_FILE))
        .ok()
        .flatten()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let text = |value: &Value, key: &str| value.get(key)?.as_str().map(str::to_string);
    let key = match assignment.get("pkcs11") {
        Some(p11) => KeyLocation::Token {
            module: text(p11, "module"),
            token: text(p11, "tokenLabel").unwrap_or_default(),
            label: text(p11, "keyLabel").unwrap_or_default(),
            id: text(p11, "keyId").unwrap_or_default(),
        },
        None => KeyLocation::File(
            text(&assignment, "keyFile").map_or_else(|| dir.join(KEY_FILE), PathBuf::from),
        ),
    };
    let certificate = text(&assignment, "certificateFile")
        .map_or_else(|| dir.join(CERTIFICATE_FILE), PathBuf::from);
    Registration {
        id: text(&assignment, "registrationId"),
        name: text(&assignment, "deviceId"),
        factory: None,
        hub: text(&assignment, "assignedHub"),
        certificate: Some(certificate),
        key: Some(key),
    }
}

/// The certificate from the factory stored, the DPS assignment not yet.
pub(super) fn partway(dir: &Path) -> Option<(String, &'static str)> {
    let certificate = dir.join(super::CERTIFICATE_FILE);
    let id = certificate_summary(&certificate).ok()?.common_name?;
    Some((
        id,
        "certificate from the factory stored, DPS assignment to come",
    ))
}
