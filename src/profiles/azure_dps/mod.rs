//! Azure IoT Hub Device Provisioning Service with X.509 (docs/azure-dps.md).
//!
//! Two stages, often in two runs: at the factory the device's CSR (the key
//! is made on the device, in software or in a PKCS#11 token, and never
//! leaves it) is exchanged for a certificate whose common name is the
//! registration id, and the flow stores it at once ([`Checkpoint`]); at the
//! end customer's first boot the device registers with DPS over mutual TLS
//! and learns which IoT hub it belongs to (`assignment.json`).
//!
//! [`Checkpoint`]: crate::profiles::Checkpoint

pub(crate) mod config;
pub(crate) mod dps;
pub(crate) mod factory;
#[doc(hidden)]
pub mod fuzzing;
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
use crate::keys::{DeviceKey, KeyAlgorithm, KeySpec, TokenLayout};
use crate::retry::{retry, Retryable};
use crate::store::PUBLIC_MODE;
use crate::tls::ClientIdentity;
use config::AzureDpsSettings;
use factory::DeviceCertificate;
use rcgen::PublicKeyData;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::path::Path;
use x509_parser::time::ASN1Time;

/// The profile's objects in a PKCS#11 token: a token of its own, so that it
/// never meets LmP's `aktualizr` objects.
pub(crate) const TOKEN_LAYOUT: TokenLayout = TokenLayout {
    token_label: "azure-dps",
    key_label: "device",
    key_id: "01",
    cert_label: "device",
    cert_id: "02",
    derive_needed_by: None,
};

pub(crate) const KEY_FILE: &str = "device.key";
pub(crate) const CERTIFICATE_FILE: &str = "device.crt";
pub(crate) const ASSIGNMENT_FILE: &str = "assignment.json";

pub(crate) struct AzureDps {
    settings: AzureDpsSettings,
}

/// `assignment.json`: what an application needs to connect to its hub.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AssignmentFile<'a> {
    assigned_hub: &'a str,
    device_id: &'a str,
    registration_id: &'a str,
    substatus: Option<&'a str>,
    payload: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_date_time_utc: Option<&'a str>,
    certificate_file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pkcs11: Option<Pkcs11Location>,
}

/// Where a token key lives; the PIN stays in `/etc/sota/hsm`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Pkcs11Location {
    module: String,
    token_label: &'static str,
    key_label: &'static str,
    key_id: &'static str,
    certificate_label: &'static str,
    certificate_id: &'static str,
}

impl Pkcs11Location {
    fn of(token: &Token) -> Pkcs11Location {
        let layout = token.layout();
        Pkcs11Location {
            module: token.settings().absolute_module().display().to_string(),
            token_label: layout.token_label,
            key_label: layout.key_label,
            key_id: layout.key_id,
            certificate_label: layout.cert_label,
            certificate_id: layout.cert_id,
        }
    }
}

impl AzureDps {
    fn dir(&self) -> &Path {
        &self.settings.state_dir
    }

    /// The certificate an earlier run stored, checked against the key the
    /// flow loaded for it.
    fn stored_certificate(&self, id: &str, key: &DeviceKey) -> Result<DeviceCertificate> {
        let path = self.dir().join(CERTIFICATE_FILE);
        let unusable = |why: String| {
            Error::config(format!(
                "{}: {why}; run with --force to make a new identity",
                path.display()
            ))
        };
        let pem = crate::store::read_stored_text(self.dir(), CERTIFICATE_FILE)?
            .ok_or_else(|| unusable("it has disappeared".into()))?;
        // The same checks as at the factory: a certificate that expired or
        // no longer fits the key or the factory CA can only be replaced.
        factory::check_chain(
            &pem,
            key.der_bytes(),
            id,
            self.settings.factory_ca.as_ref(),
            ASN1Time::now(),
        )
        .map_err(unusable)
    }

    /// The factory step: CSR out, certificate back.
    async fn enrol_at_factory(
        &self,
        common: &Common,
        id: &str,
        key: &DeviceKey,
        resumed: bool,
    ) -> Result<DeviceCertificate> {
        let s = &self.settings;
        let Some(url) = &s.enrol_url else {
            return Err(Error::config(format!(
                "{} has no device certificate and no enrol_url is configured to get one",
                s.state_dir.display()
            )));
        };
        let csr = build_csr_pem(
            key,
            &CsrSubject {
                common_name: id,
                organizational_unit: None,
                production: false,
            },
        )?;
        let client = http::Client::new(&[url], s.cacert.as_ref(), None, common.request_timeout)?;
        let request = factory::EnrolRequest {
            registration_id: id,
            csr: &csr,
        };
        tracing::info!("asking the factory at {url} for the certificate of {id}");
        let body = retry(&common.retry, "enrolling at the factory", |_| {
            factory::enrol(&client, url, &request)
        })
        .await
        .map_err(|e| self.factory_refusal(e, id, resumed))?;
        factory::validate(
            &body,
            key.der_bytes(),
            id,
            s.factory_ca.as_ref(),
            ASN1Time::now(),
        )
    }

    fn factory_refusal(&self, error: HttpError, id: &str, resumed: bool) -> Error {
        let url = self.settings.enrol_url.as_ref().map(|u| u.as_str());
        let doing = format!("enrolling {id} at {}", url.unwrap_or_default());
        if error.status() == Some(409) && (resumed || error.may_have_been_received()) {
            // An earlier attempt of this identity may be what the factory
            // remembers: keep the identity, so it can be sorted out there.
            return Error::new(
                ErrorKind::AlreadyRegistered,
                format!(
                    "{doing}: {error}; an earlier attempt of this device may have been enrolled: delete {id} at the factory and run again, or run with --force for a new identity"
                ),
            )
            .with_outcome_unknown();
        }
        error.into_error(&doing)
    }

    fn assignment_file(
        &self,
        id: &str,
        key: &DeviceKey,
        assignment: &dps::Assignment,
    ) -> Result<String> {
        let dir = self.dir();
        let file = AssignmentFile {
            assigned_hub: &assignment.assigned_hub,
            device_id: &assignment.device_id,
            registration_id: id,
            substatus: assignment.substatus.as_deref(),
            payload: assignment.payload.as_ref(),
            created_date_time_utc: assignment.created_date_time_utc.as_deref(),
            certificate_file: dir.join(CERTIFICATE_FILE).display().to_string(),
            key_file: match key {
                DeviceKey::Software(_) => Some(dir.join(KEY_FILE).display().to_string()),
                DeviceKey::Token(_) => None,
            },
            pkcs11: key.token().map(|token| Pkcs11Location::of(token)),
        };
        let mut text = serde_json::to_string_pretty(&file)
            .map_err(|e| Error::internal(format!("cannot write {ASSIGNMENT_FILE}: {e}")))?;
        text.push('\n');
        Ok(text)
    }
}

impl FromSettings for AzureDps {
    const ABOUT: &'static str = "Azure IoT Hub Device Provisioning Service: a certificate from the factory, then DPS with it";
    const SETTINGS: Declarations = config::SETTINGS;

    fn registration(location: &StateLocation) -> crate::status::Registration {
        status::registration(&location.dir)
    }

    fn partway(dir: &Path) -> Option<(String, &'static str)> {
        status::partway(dir)
    }

    fn resolve(r: &mut Resolver<'_>) -> Option<AzureDps> {
        config::resolve(r).map(|settings| AzureDps { settings })
    }

    fn locate(r: &mut Resolver<'_>) -> Option<super::StateLocation> {
        let dir = config::state_dir(r)?;
        Some(super::StateLocation::new(dir, &[ASSIGNMENT_FILE]))
    }
}

impl Backend for AzureDps {
    fn state_dir(&self) -> &Path {
        self.dir()
    }

    fn markers(&self) -> Vec<&str> {
        vec![ASSIGNMENT_FILE]
    }

    fn key_spec(&self) -> Option<KeySpec> {
        Some(KeySpec {
            file: KEY_FILE,
            algorithm: KeyAlgorithm::EcP256,
            token: TOKEN_LAYOUT,
        })
    }

    fn preflight(&self, common: &Common) -> Result<()> {
        let needs_certificate = common.force || self.stored_identity()?.is_none();
        if needs_certificate && self.settings.enrol_url.is_none() {
            return Err(Error::config(format!(
                "{} holds no device certificate{} and no enrol_url is configured in [{}] to get one from the factory",
                self.dir().display(),
                if common.force { " to keep (--force)" } else { "" },
                config::TABLE
            )));
        }
        Ok(())
    }

    fn announce(&self) {
        let s = &self.settings;
        tracing::info!(
            "registering with Azure DPS at {} (ID scope {}, api-version {})",
            s.endpoint,
            s.id_scope,
            s.api_version
        );
        if let Some(url) = s.enrol_url.as_ref().filter(|u| u.scheme() == "http") {
            tracing::warn!(
                "enrol_url {url} is plain http: without factory_ca nothing vouches for the certificate it returns"
            );
        }
    }

    fn registered_report(&self) -> Map<String, Value> {
        let path = self.dir().join(ASSIGNMENT_FILE);
        let stored: Value = crate::config::read_optional(&path)
            .ok()
            .flatten()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        report_fields(json!({
            "registration_id": stored.get("registrationId"),
            "assigned_hub": stored.get("assignedHub"),
            "device_id": stored.get("deviceId"),
            "state_dir": self.dir().display().to_string(),
        }))
    }

    fn configured_id(&self) -> Option<&str> {
        self.settings.registration_id.as_deref()
    }

    fn new_id(&self, token: Option<&Token>) -> String {
        if let Some(id) = &self.settings.registration_id {
            return id.clone();
        }
        if let Some(uuid) = token.and_then(Token::slot_uuid) {
            tracing::info!("registration id {uuid}: the device UUID of the PKCS#11 slot");
            return uuid;
        }
        let uuid = uuid::Uuid::new_v4().to_string();
        tracing::info!("registration id {uuid}: a new device UUID");
        uuid
    }

    /// The registration id `device.crt` names. Only a missing file means
    /// none: the factory's certificate is never replaced without --force,
    /// so one that cannot be read is an error (exit 1, retried by the unit)
    /// and one that names no registration id needs a person to decide.
    fn stored_identity(&self) -> Result<Option<String>> {
        let Some(pem) = crate::store::read_stored_text(self.dir(), CERTIFICATE_FILE)? else {
            return Ok(None);
        };
        let id = crate::x509::pem_certificates(&pem)
            .ok()
            .and_then(|chain| crate::x509::common_name(chain.first()?))
            .filter(|id| config::check_registration_id(id).is_ok());
        match id {
            Some(id) => Ok(Some(id)),
            None => Err(Error::config(format!(
                "{} holds no certificate for a registration id; run with --force to replace it with a new identity",
                self.dir().join(CERTIFICATE_FILE).display()
            ))),
        }
    }

    fn answers(&self) -> Answers {
        // DPS assigns a registration id again whenever it asks.
        Answers::Again
    }

    async fn enrol(&self, enrolment: Enrolment<'_>) -> Result<Answer> {
        let Enrolment {
            common,
            id,
            key,
            resumed,
            stored,
            checkpoint,
        } = enrolment;
        let s = &self.settings;
        let key = key.ok_or_else(|| Error::internal("a DPS registration needs a key"))?;
        let certificate = if stored {
            self.stored_certificate(id, key)?
        } else {
            let certificate = self.enrol_at_factory(common, id, key, resumed).await?;
            checkpoint.store_identity(vec![StoredFile::new(
                CERTIFICATE_FILE,
                PUBLIC_MODE,
                certificate.pem.as_str(),
            )])?;
            certificate
        };

        let identity = ClientIdentity {
            chain: certificate.chain.clone(),
            key: key.tls_signing_key()?,
        };
        let client = http::Client::new(
            &[&s.endpoint],
            s.cacert.as_ref(),
            Some(identity),
            common.request_timeout,
        )?;
        let registration = dps::Registration {
            endpoint: &s.endpoint,
            id_scope: &s.id_scope,
            api_version: &s.api_version,
            registration_id: id,
            payload: s.payload.as_ref(),
        };
        let assignment = dps::register(&client, &registration, &common.retry, common.boot)
            .await
            .map_err(|e| match e.kind() {
                // Said here because only the profile knows where it is.
                ErrorKind::Rejected | ErrorKind::Unavailable => Error::new(
                    e.kind(),
                    format!(
                        "{e}; the device keeps its key and certificate ({})",
                        s.state_dir.join(CERTIFICATE_FILE).display()
                    ),
                ),
                _ => e,
            })?;

        let assignment_json = self.assignment_file(id, key, &assignment)?;
        let report = report_fields(json!({
            "registration_id": id,
            "assigned_hub": assignment.assigned_hub,
            "device_id": assignment.device_id,
            "substatus": assignment.substatus,
            "state_dir": s.state_dir.display().to_string(),
        }));
        Ok(Answer {
            files: vec![StoredFile::new(
                ASSIGNMENT_FILE,
                PUBLIC_MODE,
                assignment_json,
            )],
            obsolete: Vec::new(),
            token_certificate: key.token().map(|_| certificate.leaf_pem()),
            summary: format!(
                "registered {id} with Azure DPS: IoT hub {}, device id {}",
                assignment.assigned_hub, assignment.device_id
            ),
            report,
        })
    }

    fn after_commit(&self) -> Vec<(&'static str, StepOutcome)> {
        Vec::new()
    }

    fn endpoints(&self) -> Vec<super::Endpoint> {
        let s = &self.settings;
        let endpoint = |what, url: &reqwest::Url| super::Endpoint {
            what,
            url: url.clone(),
            cacert: s.cacert.clone(),
        };
        let factory = s.enrol_url.iter().map(|url| endpoint("enrol_url", url));
        factory
            .chain([endpoint("DPS endpoint", &s.endpoint)])
            .collect()
    }
}
