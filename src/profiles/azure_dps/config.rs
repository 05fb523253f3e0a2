//! The azure-dps profile's settings: the `[azure-dps]` table of the config
//! file (and `--cacert`), checked and completed with the defaults.

use crate::config::{
    ca_bundle, parse_url, CaBundle, Declarations, Resolver, Setting, Source, CACERT,
};
use std::path::PathBuf;
use Source::{Default, Key, UnderRoot};

pub(crate) const DEFAULT_ENDPOINT: &str = "https://global.azure-devices-provisioning.net";
pub(crate) const DEFAULT_API_VERSION: &str = "2021-10-01";
/// Relative to `--root`.
const DEFAULT_STATE_DIR: &str = "var/lib/azure-dps";
/// DPS takes longer registration ids, but the id is also the certificate's
/// common name, which X.509 limits to 64 characters.
const MAX_REGISTRATION_ID: usize = 64;

/// The profile's table in the config file (its name).
pub(crate) const TABLE: &str = "azure-dps";

const ID_SCOPE: Setting<String> = Setting::new(
    "DPS ID scope",
    "The ID scope of the Device Provisioning Service: letters and digits, e.g. 0ne00000A0A (Azure portal, DPS overview)",
    &[Key("id_scope")],
)
.required()
.check(id_scope);

const ENDPOINT: Setting<String, reqwest::Url> = Setting::new(
    "DPS endpoint",
    "The Device Provisioning Service, https:// only",
    &[Key("endpoint"), Default(DEFAULT_ENDPOINT)],
)
.check(endpoint);

const API_VERSION: Setting<String> = Setting::new(
    "api version",
    "The DPS REST api-version",
    &[Key("api_version"), Default(DEFAULT_API_VERSION)],
)
.check(api_version);

const REGISTRATION_ID: Setting<String> = Setting::new(
    "registration id",
    "The DPS registration id, which is also the certificate's common name: lower-case letters, digits and - . _ :, at most 64 characters",
    &[Key("registration_id")],
)
.otherwise("the device UUID (from the PKCS#11 slot description, as for LmP, else a new random one), lower case")
.check(registration_id);

const PAYLOAD: Setting<String, serde_json::Value> = Setting::new(
    "payload",
    "JSON text sent to DPS with the registration (custom allocation policies read it)",
    &[Key("payload")],
)
.otherwise("none")
.check(json);

const ENROL_URL: Setting<String, reqwest::Url> = Setting::new(
    "factory enrolment",
    "The factory's enrolment endpoint (docs/azure-dps.md), needed while the device has no certificate",
    &[Key("enrol_url")],
)
.otherwise("none")
.check(url);

const FACTORY_CA: Setting<PathBuf, CaBundle> = Setting::new(
    "factory CA",
    "PEM file: the chain the factory issues must verify to one of its certificates",
    &[Key("factory_ca")],
)
.otherwise("the chain must only hang together")
.check(ca_bundle);

const STATE_DIR: Setting<PathBuf> = Setting::new(
    "state dir",
    "Where the key, the certificate and assignment.json go",
    &[Key("state_dir"), UnderRoot(DEFAULT_STATE_DIR)],
);

pub(super) const SETTINGS: Declarations = &[
    &ID_SCOPE,
    &ENDPOINT,
    &API_VERSION,
    &REGISTRATION_ID,
    &PAYLOAD,
    &ENROL_URL,
    &FACTORY_CA,
    &CACERT,
    &STATE_DIR,
];

#[derive(Debug)]
pub(crate) struct AzureDpsSettings {
    pub state_dir: PathBuf,
    pub id_scope: String,
    pub endpoint: reqwest::Url,
    pub api_version: String,
    /// Asked for by configuration; otherwise the device UUID.
    pub registration_id: Option<String>,
    /// Sent to DPS with the registration (custom allocation policies read it).
    pub payload: Option<serde_json::Value>,
    /// The factory's enrolment endpoint, for a device without a certificate.
    pub enrol_url: Option<reqwest::Url>,
    /// The CA the factory's certificate chain must verify to.
    pub factory_ca: Option<CaBundle>,
    /// Trusted for the HTTPS endpoints instead of the system roots.
    pub cacert: Option<CaBundle>,
}

/// Whether `id` can be a DPS registration id that is also a certificate's
/// common name; the error says why not.
pub(crate) fn check_registration_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("it is empty".into());
    }
    if id.chars().count() > MAX_REGISTRATION_ID {
        return Err(format!(
            "it is {} characters long; the certificate's common name holds at most {MAX_REGISTRATION_ID}",
            id.chars().count()
        ));
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-._:".contains(*c)))
    {
        Some(c) => Err(format!(
            "it contains {c:?}: DPS takes only lower-case letters, digits and - . _ :"
        )),
        None => Ok(()),
    }
}

/// DPS ID scopes are short alphanumeric strings ("0ne00000A0A").
fn is_id_scope(scope: &str) -> bool {
    !scope.is_empty() && scope.len() <= 64 && scope.chars().all(|c| c.is_ascii_alphanumeric())
}

fn is_api_version(version: &str) -> bool {
    !version.is_empty()
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

fn id_scope(scope: String, what: &str) -> Result<String, String> {
    match scope.trim() {
        scope if is_id_scope(scope) => Ok(scope.to_string()),
        _ => Err(format!(
            "{what} {scope:?} is not a DPS ID scope (letters and digits, e.g. 0ne00000A0A)"
        )),
    }
}

fn url(value: String, what: &str) -> Result<reqwest::Url, String> {
    parse_url(what, &value)
}

/// DPS knows the device by its TLS client certificate.
fn endpoint(value: String, what: &str) -> Result<reqwest::Url, String> {
    let url = parse_url(what, &value)?;
    if url.scheme() != "https" {
        return Err(format!(
            "{what} {url} must be https: DPS knows the device by its TLS client certificate"
        ));
    }
    Ok(url)
}

fn api_version(version: String, what: &str) -> Result<String, String> {
    if !is_api_version(&version) {
        return Err(format!("{what} {version:?} is not an api-version"));
    }
    Ok(version)
}

fn registration_id(id: String, what: &str) -> Result<String, String> {
    check_registration_id(&id)
        .map_err(|why| format!("{what} {id:?} cannot be a registration id: {why}"))?;
    Ok(id)
}

fn json(text: String, what: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(&text).map_err(|e| format!("{what} is not JSON: {e}"))
}

pub(crate) fn resolve(r: &mut Resolver<'_>) -> Option<AzureDpsSettings> {
    let state_dir = r.get(&STATE_DIR);
    let id_scope = r.get(&ID_SCOPE);
    let endpoint = r.get(&ENDPOINT);
    let api_version = r.get(&API_VERSION);
    let registration_id = r.get(&REGISTRATION_ID);
    let payload = r.get(&PAYLOAD);
    let enrol_url = r.get(&ENROL_URL);
    let factory_ca = r.get(&FACTORY_CA);
    let cacert = r.get(&CACERT);
    Some(AzureDpsSettings {
        state_dir: state_dir?,
        id_scope: id_scope?,
        endpoint: endpoint?,
        api_version: api_version?,
        registration_id,
        payload,
        enrol_url,
        factory_ca,
        cacert,
    })
}

/// The state dir alone (for `--status`).
pub(crate) fn state_dir(r: &mut Resolver<'_>) -> Option<PathBuf> {
    r.get(&STATE_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_ids_follow_the_dps_rules() {
        for good in [
            "0b3c9c7e-8f6a-4d1e-9a43-2f5a1c0d9e77",
            "line-3.device_7:a",
            &"a".repeat(64),
        ] {
            assert_eq!(check_registration_id(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("Device-1", "'D'"),
            ("dev ice", "' '"),
            ("dev/ice", "'/'"),
            ("dévice", "'é'"),
            (&"a".repeat(65), "65 characters"),
        ] {
            let err = check_registration_id(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn id_scopes_and_api_versions_are_plain_words() {
        assert!(is_id_scope("0ne00000A0A"));
        assert!(!is_id_scope(""));
        assert!(!is_id_scope("0ne/../x"));
        assert!(is_api_version("2021-10-01"));
        assert!(is_api_version("2019-03-31-preview"));
        assert!(!is_api_version("2021&x=1"));
    }
}
