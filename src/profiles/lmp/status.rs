//! `--status`: what this profile's state dir says about a registration.

use crate::config::read_secret_optional;
use crate::status::{from_certificate, KeyLocation, Registration};
use std::path::Path;

/// LmP: `sota.toml` says where the certificate and key are (fioconfig
/// repoints `import.*` when it rotates them) and `[p11]` which token holds
/// the key; the certificate names the device (CN) and factory (OU). The
/// device's name stays with the factory.
pub(super) fn registration(dir: &Path) -> Registration {
    use super::{answer, PRIVATE_KEY, TOKEN_LAYOUT};
    let sota_toml = read_secret_optional(&dir.join(answer::SOTA_TOML))
        .ok()
        .flatten()
        .map(zeroize::Zeroizing::new)
        .and_then(|text| text.parse::<toml::Table>().ok())
        .unwrap_or_default();
    let text = |section: &str, key: &str| {
        sota_toml
            .get(section)?
            .get(key)?
            .as_str()
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let in_dir = |configured: Option<String>, default: &str| {
        dir.join(configured.unwrap_or_else(|| default.to_string()))
    };
    let key = match sota_toml.get("p11") {
        Some(_) => KeyLocation::Token {
            module: text("p11", "module"),
            token: text("p11", "label").unwrap_or_else(|| TOKEN_LAYOUT.token_label.into()),
            label: TOKEN_LAYOUT.key_label.into(),
            id: text("p11", "tls_pkey_id").unwrap_or_else(|| TOKEN_LAYOUT.key_id.into()),
        },
        None => KeyLocation::File(in_dir(text("import", "tls_pkey_path"), PRIVATE_KEY)),
    };
    let certificate = in_dir(text("import", "tls_clientcert_path"), answer::CLIENT_CERT);
    from_certificate(certificate, key)
}
