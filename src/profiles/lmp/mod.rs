//! Linux microPlatform: the factory registration API (`DEVICE_API`, see
//! docs/device-api.md), the sota directory (docs/sota-dir.md), the token
//! objects aktualizr-lite and fioconfig use, then fioconfig's first check-in
//! and aktualizr-lite.

pub(crate) mod answer;
pub(crate) mod api;
pub(crate) mod config;
pub(crate) mod hooks;
pub mod oauth;
pub(crate) mod p11;
mod status;

use super::{
    report_fields, Answer, Answers, Backend, Enrolment, FromSettings, StateLocation, StepOutcome,
    StoredFile,
};
use crate::config::{Common, Declarations, Resolver};
use crate::csr::{build_csr_pem, CsrSubject};
use crate::error::{Error, ErrorKind, Result};
use crate::http::{self, HttpError};
use crate::keys::pkcs11::Token;
use crate::keys::{KeyAlgorithm, KeySpec, TokenLayout};
use crate::retry::{retry, Retryable};
use crate::store::{PRIVATE_MODE, PUBLIC_MODE};
use answer::ValidityCheck;
use config::LmpSettings;
use rcgen::PublicKeyData;
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::path::Path;

/// Where aktualizr-lite and fioconfig look for the key and certificate.
pub(crate) const TOKEN_LAYOUT: TokenLayout = TokenLayout {
    token_label: "aktualizr",
    key_label: "tls",
    key_id: "01",
    cert_label: "client",
    cert_id: "03",
    // fioconfig decrypts the device configuration with ECDH through the token.
    derive_needed_by: Some("fioconfig"),
};

pub(crate) const PRIVATE_KEY: &str = "pkey.pem";

/// Files whose presence means "registered", as the C++ tool decides it:
/// aktualizr-lite creates `sql.db` on its first run.
pub(crate) const REGISTERED_MARKERS: &[&str] = &["sql.db", answer::CLIENT_CERT];

pub(crate) struct Lmp {
    settings: LmpSettings,
}

impl Lmp {
    /// The device's UUID as its certificate says (fioconfig may have moved
    /// the certificate when it rotated it: `import.tls_clientcert_path`).
    fn registered_uuid(&self) -> Option<String> {
        let sota_dir = &self.settings.sota_dir;
        let sota_toml = crate::config::read_optional(&sota_dir.join(answer::SOTA_TOML))
            .ok()
            .flatten()
            .and_then(|text| text.parse::<toml::Table>().ok());
        let cert_path = sota_toml
            .as_ref()
            .and_then(|t| t.get("import")?.get("tls_clientcert_path")?.as_str())
            .filter(|p| !p.is_empty())
            .map(|p| sota_dir.join(p))
            .unwrap_or_else(|| sota_dir.join(answer::CLIENT_CERT));
        let pem = crate::config::read_optional(&cert_path).ok().flatten()?;
        let certs = crate::x509::pem_certificates(&pem).ok()?;
        crate::x509::common_name(certs.first()?)
    }

    /// Without a token the only way to authenticate is a person approving
    /// the device in a browser: refuse at once when nobody can.
    fn ensure_credentials_obtainable(&self, common: &Common) -> Result<()> {
        if self.settings.token.is_none() && (common.boot || !std::io::stdin().is_terminal()) {
            return Err(Error::config(
                "no API token: provide /etc/lmp-device-register-token, --api-token-file or TOKEN_FILE (interactive OAuth needs a terminal)",
            ));
        }
        Ok(())
    }

    async fn credentials(&self, client: &http::Client, uuid: &str) -> Result<api::Credentials> {
        let settings = &self.settings;
        if let Some(token) = &settings.token {
            return Ok(api::Credentials::Token {
                header: settings.token_header.clone(),
                token: token.clone(),
            });
        }
        let token = oauth::device_flow(
            client.reqwest(),
            &settings.oauth_base,
            uuid,
            &settings.factory,
            &mut |text| {
                // Nobody to tell when stderr is gone; the flow then times out.
                let _ = writeln!(std::io::stderr(), "{text}");
            },
        )
        .await?;
        Ok(api::Credentials::Bearer(token))
    }

    /// The error for a failed registration, with what to do about a 409.
    fn refusal(&self, error: HttpError, uuid: &str, resumed: bool) -> Error {
        if error.status() == Some(409) {
            // The device exists: made by an earlier run, or by an earlier
            // attempt of this one whose answer was lost. A server without
            // idempotent re-signing will not hand out its certificate again.
            if resumed || error.may_have_been_received() {
                return Error::new(
                    ErrorKind::AlreadyRegistered,
                    format!(
                        "the server already holds device {uuid}, registered by an attempt that did not finish, and will not issue its certificate again ({error}): delete device {uuid} in the factory and run again to register it with the same identity, or run with --force to register a new identity"
                    ),
                )
                .with_outcome_unknown();
            }
            return Error::new(
                ErrorKind::AlreadyRegistered,
                format!(
                    "registering at {}: {error}; the server already knows this device (use --force with a new UUID to register it again)",
                    self.settings.device_api
                ),
            );
        }
        error.into_error(&format!("registering at {}", self.settings.device_api))
    }

    /// What to store from a validated answer: its files (sota.toml with a
    /// `[p11]` section for a token key), and what they replace.
    fn answer(
        &self,
        uuid: &str,
        name: &str,
        bundle: &answer::Bundle,
        token: Option<&Token>,
    ) -> Result<Answer> {
        let s = &self.settings;
        let files = files_to_store(bundle, token.map(p11::section))?;
        // aktualizr-lite's database belongs to the identity being replaced,
        // and so does a software key when the new one is in the token.
        let mut obsolete = vec!["sql.db".to_string()];
        if token.is_some() {
            obsolete.push(PRIVATE_KEY.to_string());
        }
        let report = json!({
            "uuid": uuid,
            "name": name,
            "factory": s.factory,
            "sota_dir": s.sota_dir.display().to_string(),
        });
        Ok(Answer {
            files,
            obsolete,
            token_certificate: token.map(|_| bundle.files[answer::CLIENT_CERT].clone()),
            summary: format!("registered device {uuid} ({name})"),
            report: report_fields(report),
        })
    }
}

impl FromSettings for Lmp {
    const ABOUT: &'static str = "Linux microPlatform: the factory registration API, then fioconfig";
    const SETTINGS: Declarations = config::SETTINGS;

    fn registration(location: &StateLocation) -> crate::status::Registration {
        status::registration(&location.dir)
    }

    fn resolve(r: &mut Resolver<'_>) -> Option<Lmp> {
        config::resolve(r).map(|settings| Lmp { settings })
    }

    fn locate(r: &mut Resolver<'_>) -> Option<super::StateLocation> {
        let dir = config::sota_dir(r)?;
        Some(super::StateLocation::new(dir, REGISTERED_MARKERS))
    }
}

/// The files of a validated answer, in the order they are committed. With a
/// token key (`p11`: its section), `sota.toml` carries the user PIN in
/// `[p11]` and is private.
pub(crate) fn files_to_store(
    bundle: &answer::Bundle,
    p11: Option<toml::Table>,
) -> Result<Vec<StoredFile>> {
    let p11_sota_toml = p11
        .map(|p11| p11::sota_toml_with_p11(&bundle.sota_toml, p11))
        .transpose()?;
    let mut files = Vec::new();
    for name in answer::ALLOWED_FILES {
        match (name, &p11_sota_toml) {
            (answer::SOTA_TOML, Some(text)) => {
                files.push(StoredFile::new(name, PRIVATE_MODE, text.expose()));
            }
            _ => {
                if let Some(contents) = bundle.files.get(name) {
                    files.push(StoredFile::new(name, PUBLIC_MODE, contents.as_str()));
                }
            }
        }
    }
    Ok(files)
}

impl Backend for Lmp {
    fn state_dir(&self) -> &Path {
        &self.settings.sota_dir
    }

    fn markers(&self) -> Vec<&str> {
        REGISTERED_MARKERS.to_vec()
    }

    fn key_spec(&self) -> Option<KeySpec> {
        Some(KeySpec {
            file: PRIVATE_KEY,
            algorithm: KeyAlgorithm::EcP256,
            token: TOKEN_LAYOUT,
        })
    }

    fn preflight(&self, common: &Common) -> Result<()> {
        hooks::ensure_aklite_not_running(&self.settings.aklite_lock)?;
        self.ensure_credentials_obtainable(common)
    }

    fn announce(&self) {
        let s = &self.settings;
        crate::logging::note(crate::logging::Context::Factory, &s.factory);
        tracing::info!(
            "registering with factory {} (tag {}, hardware id {}, {}) at {}",
            s.factory,
            s.tags,
            s.hardware_id,
            if s.production {
                "production"
            } else {
                "not production"
            },
            s.device_api
        );
        if s.device_api.scheme() == "http" {
            tracing::warn!(
                "DEVICE_API {} is plain http: the token and the certificates cross the network unencrypted",
                s.device_api
            );
        }
    }

    fn registered_report(&self) -> serde_json::Map<String, serde_json::Value> {
        let uuid = self.registered_uuid();
        let name = self.settings.name.clone().or_else(|| uuid.clone());
        let report = json!({
            "uuid": uuid,
            "name": name,
            "factory": self.settings.factory,
            "sota_dir": self.settings.sota_dir.display().to_string(),
            "fioconfig": StepOutcome::Skipped,
            "aktualizr_lite": StepOutcome::Skipped,
        });
        report_fields(report)
    }

    fn configured_id(&self) -> Option<&str> {
        self.settings.uuid.as_deref()
    }

    fn new_id(&self, token: Option<&Token>) -> String {
        if let Some(uuid) = &self.settings.uuid {
            return uuid.clone();
        }
        if let Some(uuid) = token.and_then(Token::slot_uuid) {
            tracing::info!("device UUID {uuid} read from the PKCS#11 slot");
            return uuid;
        }
        let uuid = uuid::Uuid::new_v4().to_string();
        tracing::info!("generated device UUID {uuid}");
        uuid
    }

    fn answers(&self) -> Answers {
        // The reference server signs a known device again, but the
        // Foundries API answers 409 for a UUID it holds: take the stricter.
        Answers::Once {
            service: "the factory",
        }
    }

    async fn enrol(&self, enrolment: Enrolment<'_>) -> Result<Answer> {
        let s = &self.settings;
        let Enrolment {
            common,
            id: uuid,
            key,
            resumed,
            ..
        } = enrolment;
        let key = key.ok_or_else(|| Error::internal("an LmP registration needs a key"))?;
        let token = key.token();
        let name = s.name.clone().unwrap_or_else(|| uuid.to_string());
        tracing::info!("device UUID {uuid}, name {name}");

        let mut urls = vec![&s.device_api];
        if s.token.is_none() {
            urls.push(&s.oauth_base);
        }
        let client = http::Client::new(&urls, s.cacert.as_ref(), None, common.request_timeout)?;
        let credentials = self.credentials(&client, uuid).await?;

        let csr = build_csr_pem(
            key,
            &CsrSubject {
                common_name: uuid,
                organizational_unit: Some(&s.factory),
                production: s.production,
            },
        )?;
        let sota_dir_text = s.sota_dir.to_string_lossy();
        let overrides = api::overrides(s, token.is_some());
        let request = api::RegistrationRequest {
            name: &name,
            uuid,
            csr: &csr,
            hardware_id: &s.hardware_id,
            sota_config_dir: &sota_dir_text,
            use_ostree_server: s.use_ostree_server,
            group: s.group.as_deref(),
            overrides: &overrides,
        };
        let body = retry(&common.retry, "registering", |_| {
            api::register(&client, &s.device_api, &request, &credentials)
        })
        .await
        .map_err(|e| self.refusal(e, uuid, resumed))?;

        let bundle = answer::validate(&body, key.der_bytes(), ValidityCheck::at_system_time())?;
        for ignored in &bundle.ignored {
            tracing::warn!(
                "the server sent {ignored:?}, which is not a registration file; not written"
            );
        }
        self.answer(uuid, &name, &bundle, token.map(|t| t.as_ref()))
    }

    fn after_commit(&self) -> Vec<(&'static str, StepOutcome)> {
        let fioconfig = hooks::fioconfig_check_in(&self.settings.fioconfig);
        if let StepOutcome::Failed(why) = &fioconfig {
            tracing::warn!("initial configuration check-in failed (the device is registered; fioconfig will retry on its own): {why}");
        }
        let aktualizr_lite = if self.settings.start_daemon {
            let outcome = hooks::start_aktualizr_lite();
            if let StepOutcome::Failed(why) = &outcome {
                tracing::warn!("could not start aktualizr-lite: {why}");
            }
            outcome
        } else {
            StepOutcome::Skipped
        };
        vec![("fioconfig", fioconfig), ("aktualizr_lite", aktualizr_lite)]
    }

    fn endpoints(&self) -> Vec<super::Endpoint> {
        let s = &self.settings;
        let endpoint = |what, url: &reqwest::Url| super::Endpoint {
            what,
            url: url.clone(),
            cacert: s.cacert.clone(),
        };
        let mut endpoints = vec![endpoint("DEVICE_API", &s.device_api)];
        // Without a token, the OAuth device flow asks there first.
        if s.token.is_none() {
            endpoints.push(endpoint("OAUTH_BASE", &s.oauth_base));
        }
        endpoints
    }
}
