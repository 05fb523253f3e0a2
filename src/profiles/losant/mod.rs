//! Losant dynamic registration (the "Dynamic Registration" application
//! template): the device sends the registration JWT flashed on every device
//! and its manufacturer id, and gets its device id, access key and access
//! secret back, once. They are stored in the credentials file (0600), the
//! shape the template's sample firmware reads. There is no key and no
//! certificate, so `/etc/sota/hsm` plays no part. The contract:
//! docs/losant.md.

pub(crate) mod api;
pub(crate) mod config;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod jwt;
pub(crate) mod mac;
mod status;

use super::{
    report_fields, Answer, Answers, Backend, Enrolment, FromSettings, StateLocation, StepOutcome,
    StoredFile,
};
use crate::config::{Common, Declarations, Resolver};
use crate::error::{Error, ErrorKind, Result};
use crate::http::{self, HttpError};
use crate::keys::pkcs11::Token;
use crate::keys::KeySpec;
use crate::retry::{retry, Retryable};
use crate::store::PRIVATE_MODE;
use config::LosantSettings;
use serde_json::{json, Map, Value};
use std::path::Path;

pub(crate) struct Losant {
    settings: LosantSettings,
}

impl Losant {
    /// The error for a failed registration, with what to do about it.
    fn refusal(&self, error: HttpError, url: &reqwest::Url, id: &str, resumed: bool) -> Error {
        if api::is_already_registered(&error) {
            let how = if error.may_have_been_received() {
                "an earlier attempt of this run sent the request, and its answer was lost on the way"
            } else if resumed {
                "an earlier run of this device sent the request and never stored the answer"
            } else {
                "and this device holds no credentials for it"
            };
            return Error::new(
                ErrorKind::AlreadyRegistered,
                format!(
                    "Losant already has a device with manufacturer id {id} ({how}): Losant hands out a device's credentials only once, so delete that device in the Losant application, then run again"
                ),
            );
        }
        let error = error.into_error(&format!("registering with Losant at {url}"));
        if error.kind() == ErrorKind::BadResponse {
            return Error::new(
                ErrorKind::BadResponse,
                format!("{error}; Losant may have created the device anyway: if it lists manufacturer id {id}, delete it there before the next run"),
            );
        }
        error
    }

    /// The `--json` fields of a registration (never the access secret).
    fn report(&self, id: &str, credentials: Option<&api::Credentials>) -> Map<String, Value> {
        report_fields(json!({
            "deviceId": credentials.map(|c| &c.device_id),
            "accessKey": credentials.map(|c| &c.access_key),
            "manufacturerId": id,
            "credentials": self.settings.credentials_path().display().to_string(),
        }))
    }
}

impl FromSettings for Losant {
    const ABOUT: &'static str =
        "Losant dynamic registration: a registration JWT and a manufacturer id";
    const SETTINGS: Declarations = config::SETTINGS;

    fn registration(location: &StateLocation) -> crate::status::Registration {
        status::registration(&location.dir.join(&location.markers[0]))
    }

    fn resolve(r: &mut Resolver<'_>) -> Option<Losant> {
        config::resolve(r).map(|settings| Losant { settings })
    }

    fn locate(r: &mut Resolver<'_>) -> Option<super::StateLocation> {
        let (dir, credentials) = config::credentials(r)?;
        Some(super::StateLocation::new(dir, &[credentials.as_str()]))
    }
}

impl Backend for Losant {
    fn state_dir(&self) -> &Path {
        &self.settings.state_dir
    }

    fn markers(&self) -> Vec<&str> {
        vec![self.settings.credentials_name()]
    }

    fn key_spec(&self) -> Option<KeySpec> {
        None
    }

    fn preflight(&self, _common: &Common) -> Result<()> {
        // Resolution lets a registered device go without its token; a forced
        // or repeated registration needs it.
        if self.settings.token.is_none() || self.settings.url.is_none() {
            return Err(Error::config(format!(
                "{}: the Losant registration token file does not exist",
                self.settings.token_file.display()
            )));
        }
        Ok(())
    }

    fn announce(&self) {
        let s = &self.settings;
        let url = s.url.as_ref().map(|u| u.to_string()).unwrap_or_default();
        tracing::info!(
            "registering manufacturer id {} ({}) with Losant at {url}{}",
            s.manufacturer_id,
            s.manufacturer_id_source,
            s.issuer
                .as_ref()
                .map(|iss| format!(" (token issued by {iss})"))
                .unwrap_or_default()
        );
    }

    fn registered_report(&self) -> Map<String, Value> {
        let stored = crate::config::read_secret_optional(&self.settings.credentials_path())
            .ok()
            .flatten()
            .map(zeroize::Zeroizing::new)
            .and_then(|text| api::parse_credentials(text.as_bytes()).ok())
            .map(|(credentials, _)| credentials);
        self.report(&self.settings.manufacturer_id, stored.as_ref())
    }

    fn configured_id(&self) -> Option<&str> {
        self.settings
            .manufacturer_id_configured
            .then_some(self.settings.manufacturer_id.as_str())
    }

    fn new_id(&self, _token: Option<&Token>) -> String {
        self.settings.manufacturer_id.clone()
    }

    fn answers(&self) -> Answers {
        // A used manufacturer id is refused forever.
        Answers::Once {
            service: "the Losant application",
        }
    }

    async fn enrol(&self, enrolment: Enrolment<'_>) -> Result<Answer> {
        let s = &self.settings;
        let Enrolment {
            common,
            id,
            resumed,
            ..
        } = enrolment;
        let (Some(url), Some(token)) = (&s.url, &s.token) else {
            return Err(Error::internal("no Losant registration URL or token"));
        };
        let client = http::Client::new(&[url], s.cacert.as_ref(), None, common.request_timeout)?;
        let body = retry(&common.retry, "registering with Losant", |_| {
            api::register(&client, url, token, id)
        })
        .await
        .map_err(|e| self.refusal(e, url, id, resumed))?;
        let (credentials, ignored) = api::parse_credentials(&body).map_err(|e| {
            let unusable = HttpError::Body(format!("the Losant answer is unusable: {e}"));
            self.refusal(unusable, url, id, resumed)
        })?;
        if !ignored.is_empty() {
            tracing::warn!("the Losant answer also holds {ignored:?}; not stored");
        }

        Ok(Answer {
            files: vec![StoredFile::new(
                s.credentials_name(),
                PRIVATE_MODE,
                credentials.file_contents().expose(),
            )],
            obsolete: Vec::new(),
            token_certificate: None,
            summary: format!(
                "registered Losant device {} (manufacturer id {id}, access key {})",
                credentials.device_id, credentials.access_key
            ),
            report: self.report(id, Some(&credentials)),
        })
    }

    fn after_commit(&self) -> Vec<(&'static str, StepOutcome)> {
        Vec::new()
    }

    fn endpoints(&self) -> Vec<super::Endpoint> {
        let s = &self.settings;
        s.url
            .iter()
            .map(|url| super::Endpoint {
                what: "Losant registration URL",
                url: url.clone(),
                cacert: s.cacert.clone(),
            })
            .collect()
    }

    fn secret_files(&self) -> Vec<std::path::PathBuf> {
        vec![self.settings.token_file.clone()]
    }
}
