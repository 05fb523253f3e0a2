//! The azure-dps profile's settings: the `[azure-dps]` table of the config
//! file (and `--cacert`), checked and completed with the defaults.

use crate::config::{parse_url, CaBundle, Resolver};
use serde::Deserialize;
use std::path::PathBuf;

pub(crate) const DEFAULT_ENDPOINT: &str = "https://global.azure-devices-provisioning.net";
pub(crate) const DEFAULT_API_VERSION: &str = "2021-10-01";
/// Relative to `--root`.
const DEFAULT_STATE_DIR: &str = "var/lib/azure-dps";
/// DPS takes longer registration ids, but the id is also the certificate's
/// common name, which X.509 limits to 64 characters.
const MAX_REGISTRATION_ID: usize = 64;

pub(crate) const TABLE: &str = "azure-dps";

/// The `[azure-dps]` table of the config file.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct Table {
    id_scope: Option<String>,
    endpoint: Option<String>,
    api_version: Option<String>,
    registration_id: Option<String>,
    payload: Option<String>,
    enrol_url: Option<String>,
    factory_ca: Option<PathBuf>,
    cacert: Option<PathBuf>,
    state_dir: Option<PathBuf>,
}

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

fn state_dir(r: &Resolver<'_>, configured: Option<PathBuf>) -> PathBuf {
    configured.unwrap_or_else(|| r.path(DEFAULT_STATE_DIR))
}

/// The state dir alone, for `--status`, which needs no other setting.
pub(crate) fn locate(r: &mut Resolver<'_>) -> PathBuf {
    let table: Table = r.section(TABLE);
    let configured = r
        .configured_path(TABLE, "state_dir", table.state_dir)
        .unwrap_or_default();
    state_dir(r, configured)
}

pub(crate) fn resolve(r: &mut Resolver<'_>) -> Option<AzureDpsSettings> {
    let mut table: Table = r.section(TABLE);
    let key = |r: &Resolver<'_>, name: &str| r.file_key(TABLE, name);

    for (name, path) in [
        ("state_dir", &mut table.state_dir),
        ("factory_ca", &mut table.factory_ca),
        ("cacert", &mut table.cacert),
    ] {
        *path = r
            .configured_path(TABLE, name, path.take())
            .unwrap_or_default();
    }

    let id_scope = match &table.id_scope {
        Some(scope) if is_id_scope(scope.trim()) => Some(scope.trim().to_string()),
        Some(scope) => {
            let what = key(r, "id_scope");
            r.problem(format!(
                "{what} {scope:?} is not a DPS ID scope (letters and digits, e.g. 0ne00000A0A)"
            ));
            None
        }
        None => {
            let what = key(r, "id_scope");
            r.problem(format!(
                "missing {what}: the ID scope of the Device Provisioning Service (Azure portal, DPS overview)"
            ));
            None
        }
    };
    if id_scope.is_some() {
        let what = key(r, "id_scope");
        r.origin("DPS ID scope", what);
    }

    let endpoint = match &table.endpoint {
        Some(url) => {
            let what = key(r, "endpoint");
            r.origin("DPS endpoint", what.clone());
            parse_url(&what, url).map_err(|e| r.problem(e)).ok()
        }
        None => parse_url("the default DPS endpoint", DEFAULT_ENDPOINT)
            .map_err(|e| r.problem(e))
            .ok(),
    };
    let endpoint = endpoint.filter(|url| {
        if url.scheme() == "https" {
            return true;
        }
        let what = key(r, "endpoint");
        r.problem(format!(
            "{what} {url} must be https: DPS knows the device by its TLS client certificate"
        ));
        false
    });

    let api_version = table
        .api_version
        .clone()
        .unwrap_or_else(|| DEFAULT_API_VERSION.to_string());
    if !is_api_version(&api_version) {
        let what = key(r, "api_version");
        r.problem(format!("{what} {api_version:?} is not an api-version"));
    }

    let registration_id = table.registration_id.clone();
    if let Some(id) = &registration_id {
        let what = key(r, "registration_id");
        match check_registration_id(id) {
            Ok(()) => r.origin("registration id", what),
            Err(why) => r.problem(format!("{what} {id:?} cannot be a registration id: {why}")),
        }
    }

    let payload = match &table.payload {
        None => None,
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(value) => Some(value),
            Err(e) => {
                let what = key(r, "payload");
                r.problem(format!("{what} is not JSON: {e}"));
                None
            }
        },
    };

    let enrol_url = match &table.enrol_url {
        Some(url) => {
            let what = key(r, "enrol_url");
            r.origin("factory enrolment", what.clone());
            parse_url(&what, url).map_err(|e| r.problem(e)).ok()
        }
        None => None,
    };

    let factory_ca = table.factory_ca.clone().and_then(|path| {
        let what = key(r, "factory_ca");
        r.ca_bundle(path, &what)
    });
    let cacert = r.cacert(TABLE, table.cacert.as_ref());
    let state_dir = state_dir(r, table.state_dir.clone());

    Some(AzureDpsSettings {
        state_dir,
        id_scope: id_scope?,
        endpoint: endpoint?,
        api_version,
        registration_id,
        payload,
        enrol_url,
        factory_ca,
        cacert,
    })
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
