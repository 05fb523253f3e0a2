//! The `[p11]` section of `sota.toml` that points aktualizr-lite and
//! fioconfig at the key and certificate in the token.

use crate::error::{Error, Result};
use crate::keys::pkcs11::Token;
use crate::secret::Secret;

/// What `[p11]` must say for aktualizr-lite and fioconfig to find this
/// token's key and certificate.
pub fn section(token: &Token) -> toml::Table {
    let mut p11 = toml::Table::new();
    let mut set = |key: &str, value: &str| {
        p11.insert(key.to_string(), toml::Value::String(value.to_string()));
    };
    let settings = token.settings();
    let layout = token.layout();
    set("module", &settings.absolute_module().to_string_lossy());
    set("pass", settings.pin.expose());
    set("label", layout.token_label);
    set("tls_pkey_id", layout.key_id);
    set("tls_clientcert_id", layout.cert_id);
    p11
}

/// `sota.toml` as the server sent it plus the `[p11]` section; it holds the
/// user PIN, so it is a secret.
pub fn sota_toml_with_p11(server: &toml::Table, p11: toml::Table) -> Result<Secret> {
    let mut config = server.clone();
    match config.get_mut("p11") {
        Some(toml::Value::Table(existing)) => existing.extend(p11),
        _ => {
            config.insert("p11".into(), toml::Value::Table(p11));
        }
    }
    toml::to_string(&config)
        .map(Secret::new)
        .map_err(|e| Error::internal(format!("cannot write sota.toml: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p11_section_is_merged_and_quotes_survive() {
        let server: toml::Table = "[tls]\nserver = \"https://x\"\n[p11]\nlabel = \"old\"\n"
            .parse()
            .unwrap();
        let mut p11 = toml::Table::new();
        p11.insert("pass".into(), toml::Value::String("a\"b\\c'".into()));
        p11.insert("label".into(), toml::Value::String("aktualizr".into()));
        let text = sota_toml_with_p11(&server, p11).unwrap();
        let parsed: toml::Table = text.expose().parse().unwrap();
        assert_eq!(parsed["p11"]["pass"].as_str(), Some("a\"b\\c'"));
        assert_eq!(parsed["p11"]["label"].as_str(), Some("aktualizr"));
        assert_eq!(parsed["tls"]["server"].as_str(), Some("https://x"));
    }
}
