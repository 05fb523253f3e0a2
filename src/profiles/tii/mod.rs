//! TII fleet management (docs/tii.md): a provisioning server on the factory
//! network signs the device's CSR, then the device registers itself with the
//! fleet manager over NATS, proving itself with that certificate (mutual
//! TLS, the key in software or in a PKCS#11 token).

pub(crate) mod config;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod nats;
pub(crate) mod provision;
mod status;

use super::{
    report_fields, Answer, Answers, Backend, Enrolment, FromSettings, StateLocation, StepOutcome,
    StoredFile,
};
use crate::config::{CaBundle, Common, Declarations, Resolver};
use crate::csr::{build_csr_pem, CsrSubject};
use crate::error::{Error, ErrorKind, Result};
use crate::http;
use crate::keys::pkcs11::Token;
use crate::keys::{DeviceKey, KeySpec, TokenLayout};
use crate::retry::{retry, Retryable};
use crate::store::{PRIVATE_MODE, PUBLIC_MODE};
use crate::tls::{self, ClientIdentity};
use config::{NatsUrl, TiiSettings};
use nats::NatsError;
use provision::Provisioned;
use rcgen::PublicKeyData;
use serde_json::json;
use std::path::Path;

/// The profile's objects in a PKCS#11 token.
pub const TOKEN_LAYOUT: TokenLayout = TokenLayout {
    token_label: "fleet-registration",
    key_label: "device",
    key_id: "01",
    cert_label: "device",
    cert_id: "03",
    derive_needed_by: None,
};

pub const PRIVATE_KEY: &str = "device.key";
/// The device certificate and its chain.
pub const DEVICE_CERT: &str = "device.crt";
/// `caCertificate` of the provisioning answer.
pub const CA_CERT: &str = "ca.crt";
/// The fleet manager's result payload; its presence means "registered".
pub const REGISTRATION: &str = "registration.json";

pub(crate) const REGISTERED_MARKERS: &[&str] = &[REGISTRATION];

pub(crate) struct Tii {
    settings: TiiSettings,
}

impl Tii {
    /// The device id, as the stored certificate names it.
    fn registered_id(&self) -> Option<String> {
        let pem =
            crate::config::read_optional(&self.settings.state_dir.join(DEVICE_CERT)).ok()??;
        let certificates = crate::x509::pem_certificates(&pem).ok()?;
        let cn = crate::x509::common_name(certificates.first()?)?;
        let id = self.settings.cn_template.id_in(&cn).unwrap_or(&cn);
        Some(id.to_string())
    }

    /// The error for a failed NATS registration. Once the provisioning
    /// server has issued a certificate for this identity, only a definite
    /// refusal by the fleet manager gives it up; every other failure keeps
    /// it, so that the next run presents the same device again.
    fn nats_error(&self, error: NatsError, id: &str, resumed: bool, url: &NatsUrl) -> Error {
        let maybe_received = error.may_have_been_received();
        let doing = format!("registering device {id} with the fleet manager at {url}");
        let kept = format!(
            "; the outcome is unknown, so device {id} and its key are kept: the next run registers the same identity"
        );
        let (kind, keep) = match error.last() {
            NatsError::AlreadyRegistered(_) if resumed || maybe_received => {
                return Error::new(
                    ErrorKind::AlreadyRegistered,
                    format!(
                        "{doing}: {error}: an earlier attempt registered it, but its result (and with it the registration data) was lost, and the fleet manager does not send it twice; delete device {id} in the fleet manager and run again to register the same identity, or run with --force to register a new one"
                    ),
                )
                .with_outcome_unknown();
            }
            NatsError::AlreadyRegistered(_) => {
                return Error::new(
                    ErrorKind::AlreadyRegistered,
                    format!("{doing}: {error}; the fleet manager already knows this device"),
                );
            }
            NatsError::Failure(_) => {
                return Error::new(ErrorKind::Rejected, format!("{doing}: {error}"));
            }
            NatsError::Connect(_) | NatsError::Transport(_) | NatsError::NoResult(_) => {
                (ErrorKind::Unavailable, kept)
            }
            NatsError::Tls(_) => (
                ErrorKind::Config,
                format!(
                    " (the NATS server must present a certificate vouched for by the provisioning answer's caCertificate and accept this device's){kept}"
                ),
            ),
            NatsError::Refused(_) => (ErrorKind::Rejected, kept),
            NatsError::BadResult(_) => (ErrorKind::BadResponse, kept),
            NatsError::AfterUnknown(_) => (ErrorKind::Internal, kept),
        };
        Error::new(kind, format!("{doing}: {error}{keep}")).with_outcome_unknown()
    }
    /// Step 1: the provisioning server signs the device's CSR.
    async fn provision(&self, common: &Common, id: &str, key: &DeviceKey) -> Result<Provisioned> {
        let s = &self.settings;
        let common_name = s.cn_template.common_name(id);
        tracing::info!("device id {id}, certificate name {common_name}");
        let csr = build_csr_pem(
            key,
            &CsrSubject {
                common_name: &common_name,
                organizational_unit: None,
                production: false,
            },
        )?;
        let endpoint = provision::endpoint(&s.provisioning_url);
        let client = http::Client::new(
            &[&endpoint],
            s.cacert.as_ref(),
            None,
            common.request_timeout,
        )?;
        let body = retry(&common.retry, "provisioning", |_| {
            provision::request(&client, &endpoint, &csr)
        })
        .await
        .map_err(|e| e.into_error(&format!("provisioning at {endpoint}")))?;
        let provisioned = provision::validate(
            &body,
            key.der_bytes(),
            id,
            x509_parser::time::ASN1Time::now(),
        )?;
        tracing::info!(
            "the provisioning server issued {}",
            crate::x509::subject(&provisioned.chain[0])
        );
        Ok(provisioned)
    }

    /// Step 2: the registration with the fleet manager, over mutual TLS
    /// with that certificate.
    async fn register_with_fleet(
        &self,
        common: &Common,
        id: &str,
        key: &DeviceKey,
        resumed: bool,
        provisioned: &Provisioned,
    ) -> Result<(nats::Registered, NatsUrl)> {
        let s = &self.settings;
        let nats_url = s
            .nats_url
            .clone()
            .or_else(|| provisioned.nats_url.clone())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::BadResponse,
                    "the provisioning answer names no fleetManagementNatsUrl and no nats_url is configured",
                )
            })?;
        let roots = tls::roots(Some(&CaBundle {
            path: "caCertificate of the provisioning answer".into(),
            certificates: provisioned.roots.clone(),
        }))?;
        let tls_config = tls::client_config(
            roots,
            Some(ClientIdentity {
                chain: provisioned.chain.clone(),
                key: key.tls_signing_key()?,
            }),
        )?;
        let message = self.register_message(id, provisioned)?;
        let registered = retry(&common.retry, "registering with the fleet manager", |_| {
            nats::register(nats::Attempt {
                url: &nats_url,
                tls: &tls_config,
                id,
                message: &message,
                connect_timeout: http::CONNECT_TIMEOUT.min(common.request_timeout),
                result_timeout: s.result_timeout,
            })
        })
        .await
        .map_err(|e| self.nats_error(e, id, resumed, &nats_url))?;
        Ok((registered, nats_url))
    }

    /// The registration message the fleet manager receives.
    fn register_message(&self, id: &str, provisioned: &Provisioned) -> Result<Vec<u8>> {
        let s = &self.settings;
        serde_json::to_vec(&nats::RegisterMessage {
            id,
            device_type: &s.device_type,
            architecture: &s.architecture,
            build_version: &s.build_version,
            current_owner: s.current_owner.as_deref(),
            tailscale_id: s.tailscale_id.as_deref(),
            certificate: &provisioned.leaf_pem(),
            ca_certificate: &provisioned.issuing_ca_pem(),
            alias: s.alias.as_deref(),
        })
        .map_err(|e| Error::internal(format!("cannot encode the registration: {e}")))
    }

    /// What to store: the certificates and the fleet manager's result.
    fn answer(
        &self,
        id: &str,
        key_in_token: bool,
        provisioned: &Provisioned,
        registered: &nats::Registered,
        nats_url: &NatsUrl,
    ) -> Result<Answer> {
        let s = &self.settings;
        let registration = serde_json::to_string_pretty(&registered.payload)
            .map_err(|e| Error::internal(format!("cannot encode the registration data: {e}")))?;
        let files = vec![
            StoredFile::new(DEVICE_CERT, PUBLIC_MODE, provisioned.chain_pem()),
            StoredFile::new(CA_CERT, PUBLIC_MODE, provisioned.ca_pem()),
            // Last: its presence means "registered". Older fleet managers
            // put secrets in it.
            StoredFile::new(REGISTRATION, PRIVATE_MODE, registration + "\n"),
        ];
        // A software key of a registration being replaced by a token key.
        let obsolete = match key_in_token {
            true => vec![PRIVATE_KEY.to_string()],
            false => Vec::new(),
        };
        let alias = registered.alias.clone().or_else(|| s.alias.clone());
        Ok(Answer {
            files,
            obsolete,
            token_certificate: key_in_token.then(|| provisioned.leaf_pem()),
            summary: match &alias {
                Some(alias) => format!("registered device {id} ({alias}) with the fleet manager"),
                None => format!("registered device {id} with the fleet manager"),
            },
            report: report_fields(json!({
                "id": id,
                "alias": alias,
                "device_type": s.device_type,
                "nats_url": nats_url.to_string(),
                "state_dir": s.state_dir.display().to_string(),
            })),
        })
    }
}

impl FromSettings for Tii {
    const ABOUT: &'static str = "TII fleet management: a provisioning server signs the CSR, then NATS registration over mutual TLS";
    const SETTINGS: Declarations = config::SETTINGS;

    fn registration(location: &StateLocation) -> crate::status::Registration {
        status::registration(&location.dir)
    }

    fn resolve(r: &mut Resolver<'_>) -> Option<Tii> {
        config::resolve(r).map(|settings| Tii { settings })
    }

    fn locate(r: &mut Resolver<'_>) -> Option<super::StateLocation> {
        let dir = config::state_dir(r)?;
        Some(super::StateLocation::new(dir, REGISTERED_MARKERS))
    }
}

impl Backend for Tii {
    fn state_dir(&self) -> &Path {
        &self.settings.state_dir
    }

    fn markers(&self) -> Vec<&str> {
        REGISTERED_MARKERS.to_vec()
    }

    fn key_spec(&self) -> Option<KeySpec> {
        Some(KeySpec {
            file: PRIVATE_KEY,
            algorithm: self.settings.key_type,
            token: TOKEN_LAYOUT,
        })
    }

    fn preflight(&self, _common: &Common) -> Result<()> {
        Ok(())
    }

    fn announce(&self) {
        let s = &self.settings;
        tracing::info!(
            "registering a {} device ({}, build {}, {} key) through the provisioning server at {}",
            s.device_type,
            s.architecture,
            s.build_version,
            s.key_type.describe(),
            s.provisioning_url
        );
        if s.provisioning_url.scheme() == "http" {
            tracing::warn!(
                "the provisioning server {} is plain http: the CSR and the certificates cross the network unencrypted and unauthenticated",
                s.provisioning_url
            );
        }
    }

    fn registered_report(&self) -> serde_json::Map<String, serde_json::Value> {
        report_fields(json!({
            "id": self.registered_id(),
            "state_dir": self.settings.state_dir.display().to_string(),
        }))
    }

    fn configured_id(&self) -> Option<&str> {
        self.settings.device_id.as_deref()
    }

    fn new_id(&self, _token: Option<&Token>) -> String {
        if let Some(id) = &self.settings.device_id {
            return id.clone();
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        tracing::info!("generated device id {id}");
        id
    }

    fn answers(&self) -> Answers {
        // The provisioning server signs again, but the fleet manager sends
        // its result (and the registration data in it) once.
        Answers::Once {
            service: "the fleet manager",
        }
    }

    async fn enrol(&self, enrolment: Enrolment<'_>) -> Result<Answer> {
        // One stage as far as the device's files go: the certificate is
        // stored with the fleet manager's answer (a rerun asks for it again).
        let Enrolment {
            common,
            id,
            key,
            resumed,
            ..
        } = enrolment;
        let key = key.ok_or_else(|| Error::internal("a tii registration needs a key"))?;
        let provisioned = self.provision(common, id, key).await?;
        let (registered, nats_url) = self
            .register_with_fleet(common, id, key, resumed, &provisioned)
            .await?;
        self.answer(
            id,
            key.token().is_some(),
            &provisioned,
            &registered,
            &nats_url,
        )
    }

    fn after_commit(&self) -> Vec<(&'static str, StepOutcome)> {
        Vec::new()
    }

    fn endpoints(&self) -> Vec<super::Endpoint> {
        let s = &self.settings;
        let provisioning = super::Endpoint {
            what: "provisioning_url",
            url: provision::endpoint(&s.provisioning_url),
            cacert: s.cacert.clone(),
        };
        // The fleet manager's TLS is vouched for by the provisioning
        // answer's CA, which only a registration gets: reached, not
        // shaken hands with (a nats:// URL).
        let nats = s.nats_url.as_ref().and_then(|nats| {
            Some(super::Endpoint {
                what: "nats_url",
                url: reqwest::Url::parse(&nats.to_string()).ok()?,
                cacert: None,
            })
        });
        [provisioning].into_iter().chain(nats).collect()
    }
}
