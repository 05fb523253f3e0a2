//! `--status`: what this profile's state dir says about a registration.

use crate::status::{from_certificate, KeyLocation, Registration};
use std::path::Path;

/// A software key file beside the certificate, else the key in the
/// profile's token.
fn file_or_token(dir: &Path, file: &str, layout: &crate::keys::TokenLayout) -> KeyLocation {
    let path = dir.join(file);
    if path.symlink_metadata().is_ok() {
        return KeyLocation::File(path);
    }
    KeyLocation::Token {
        module: None,
        token: layout.token_label.into(),
        label: layout.key_label.into(),
        id: layout.key_id.into(),
    }
}

pub(super) fn registration(dir: &Path) -> Registration {
    use super::{DEVICE_CERT, PRIVATE_KEY, TOKEN_LAYOUT};
    let key = file_or_token(dir, PRIVATE_KEY, &TOKEN_LAYOUT);
    let mut registration = from_certificate(dir.join(DEVICE_CERT), key);
    // The organisational unit is not a factory here.
    registration.factory = None;
    registration
}
