//! The factory registration API (`DEVICE_API`): the request body, its
//! `overrides`, and the credentials it is sent with (docs/device-api.md).

use super::config::LmpSettings;
use crate::http::{self, HttpError};
use crate::secret::Secret;
use base64::Engine;
use serde::Serialize;
use std::collections::BTreeMap;

/// `section -> key -> TOML literal`; an empty literal unsets the key.
pub type Overrides = BTreeMap<&'static str, BTreeMap<&'static str, String>>;

#[derive(Serialize, Debug)]
pub struct RegistrationRequest<'a> {
    pub name: &'a str,
    pub uuid: &'a str,
    pub csr: &'a str,
    #[serde(rename = "hardware-id")]
    pub hardware_id: &'a str,
    #[serde(rename = "sota-config-dir")]
    pub sota_config_dir: &'a str,
    #[serde(rename = "use-ostree-server")]
    pub use_ostree_server: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<&'a str>,
    pub overrides: &'a Overrides,
}

#[derive(Clone)]
pub enum Credentials {
    /// `<header>: <token>`, `OSF-TOKEN` by default.
    Token { header: String, token: Secret },
    /// An OAuth access token, sent the way the factory API expects it.
    Bearer(Secret),
}

/// The TOML literal of a string, e.g. `main` -> `"main"`.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

/// Overrides the factory applies to the `sota.toml` it returns.
pub fn overrides(settings: &LmpSettings, uses_hsm: bool) -> Overrides {
    let mut overrides: Overrides = BTreeMap::new();
    let pacman = overrides.entry("pacman").or_default();
    pacman.insert("tags", toml_string(&settings.tags));
    if let Some(apps) = &settings.apps {
        pacman.insert("type", toml_string("ostree+compose_apps"));
        pacman.insert(
            "compose_apps_root",
            toml_string(&settings.sota_dir.join("compose-apps").to_string_lossy()),
        );
        pacman.insert("compose_apps", toml_string(&apps.join(",")));
    }
    if let Some(restorable) = &settings.restorable_apps {
        pacman.insert("reset_apps", toml_string(&restorable.join(",")));
    }
    if uses_hsm {
        let tls = overrides.entry("tls").or_default();
        tls.insert("pkey_source", toml_string("pkcs11"));
        tls.insert("cert_source", toml_string("pkcs11"));
        for section in ["storage", "import"] {
            let entries = overrides.entry(section).or_default();
            entries.insert("tls_pkey_path", String::new());
            entries.insert("tls_clientcert_path", String::new());
        }
    }
    overrides
}

/// POSTs the registration; on 201 returns the raw body for validation.
pub async fn register(
    client: &http::Client,
    url: &reqwest::Url,
    request: &RegistrationRequest<'_>,
    credentials: &Credentials,
) -> Result<Vec<u8>, HttpError> {
    let builder = client.reqwest().post(url.clone()).json(request);
    let builder = match credentials {
        Credentials::Token { header, token } => {
            builder.header(header.as_str(), http::sensitive_header(token.expose())?)
        }
        Credentials::Bearer(token) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(token.expose());
            builder.header(
                reqwest::header::AUTHORIZATION,
                http::sensitive_header(&format!("Bearer {encoded}"))?,
            )
        }
    };
    let response = http::send(builder).await?;
    if response.status == 201 {
        Ok(response.body)
    } else {
        Err(response.into_error())
    }
}
