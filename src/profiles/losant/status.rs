//! `--status`: what this profile's state dir says about a registration.

use crate::config::read_secret_optional;
use crate::status::Registration;
use std::path::Path;

/// losant: the credentials file (read as the secret it holds; only the
/// device id is shown).
pub(super) fn registration(credentials: &Path) -> Registration {
    let device_id = read_secret_optional(credentials)
        .ok()
        .flatten()
        .map(zeroize::Zeroizing::new)
        .and_then(|text| super::api::parse_credentials(text.as_bytes()).ok())
        .map(|(credentials, _)| credentials.device_id);
    Registration {
        id: device_id,
        name: None,
        factory: None,
        hub: None,
        certificate: None,
        key: None,
    }
}
