//! The example profile of docs/adding-a-profile.md: a made-up service that
//! takes `POST {"name"}` and answers `{"deviceId"}`, which the device keeps
//! in `device.json`. Images never build it (cargo feature `example`).

use super::{
    report_fields, Answer, Answers, Backend, Enrolment, FromSettings, StateLocation, StepOutcome,
    StoredFile,
};
use crate::config::{
    long, parse_url, read_optional, CaBundle, Common, Declarations, Resolver, Setting, Source,
    CACERT,
};
use crate::error::{Error, ErrorKind, Result};
use crate::http::{self, HttpError};
use crate::keys::{pkcs11::Token, KeySpec};
use crate::retry::retry;
use crate::status::Registration;
use crate::store::PUBLIC_MODE;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// The one file of a registration, in the state dir.
const DEVICE_FILE: &str = "device.json";

const URL: Setting<String, reqwest::Url> = Setting::new(
    "example URL",
    "The example service's registration endpoint",
    &[
        long("example-url", "URL"),
        Source::Env("EXAMPLE_URL"),
        Source::Key("url"),
    ],
)
.required()
.check(check_url);

const NAME: Setting<String> = Setting::new(
    "device name",
    "The name the device registers under",
    &[
        Source::Key("name"),
        Source::Line {
            path: "etc/hostname",
            what: "the host name",
        },
    ],
)
.required();

const STATE_DIR: Setting<PathBuf> = Setting::new(
    "state directory",
    "Where the device keeps its registration",
    &[
        Source::Key("state_dir"),
        Source::UnderRoot("var/lib/example"),
    ],
);

fn check_url(url: String, from: &str) -> std::result::Result<reqwest::Url, String> {
    parse_url(from, &url)
}

pub(crate) struct Example {
    url: reqwest::Url,
    name: String,
    state_dir: PathBuf,
    cacert: Option<CaBundle>,
}

impl FromSettings for Example {
    const ABOUT: &'static str = "The example of docs/adding-a-profile.md: a device name, POSTed";
    const SETTINGS: Declarations = &[&URL, &NAME, &STATE_DIR, &CACERT];

    fn resolve(r: &mut Resolver<'_>) -> Option<Example> {
        // Each setting is read before any `?`: every problem is reported.
        let (url, name, state_dir) = (r.get(&URL), r.get(&NAME), r.get(&STATE_DIR));
        let cacert = r.get(&CACERT);
        Some(Example {
            url: url?,
            name: name?,
            state_dir: state_dir?,
            cacert,
        })
    }

    /// For `--status`: where the state is, whatever else is configured.
    fn locate(r: &mut Resolver<'_>) -> Option<StateLocation> {
        Some(StateLocation::new(r.get(&STATE_DIR)?, &[DEVICE_FILE]))
    }

    /// For `--status`: what `device.json` says.
    fn registration(location: &StateLocation) -> Registration {
        let stored = read_optional(&location.dir.join(DEVICE_FILE))
            .ok()
            .flatten();
        let stored: Value = stored
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        let text = |key: &str| stored[key].as_str().map(str::to_string);
        Registration {
            id: text("deviceId"),
            name: text("name"),
            factory: None,
            hub: None,
            certificate: None,
            key: None,
        }
    }
}

impl Backend for Example {
    fn state_dir(&self) -> &Path {
        &self.state_dir
    }
    fn markers(&self) -> Vec<&str> {
        vec![DEVICE_FILE]
    }
    fn key_spec(&self) -> Option<KeySpec> {
        None
    }
    fn preflight(&self, _common: &Common) -> Result<()> {
        Ok(())
    }
    fn announce(&self) {
        tracing::info!("registering {} with {}", self.name, self.url);
    }
    fn registered_report(&self) -> Map<String, Value> {
        report_fields(json!({ "name": self.name }))
    }
    fn configured_id(&self) -> Option<&str> {
        None
    }
    fn new_id(&self, _token: Option<&Token>) -> String {
        self.name.clone()
    }
    fn answers(&self) -> Answers {
        Answers::Once {
            service: "the example service",
        }
    }

    async fn enrol(&self, enrolment: Enrolment<'_>) -> Result<Answer> {
        let (common, name) = (enrolment.common, enrolment.id);
        let client = http::Client::new(
            &[&self.url],
            self.cacert.as_ref(),
            None,
            common.request_timeout,
        )?;
        let body = retry(&common.retry, "registering", |_| {
            post(&client, &self.url, name)
        })
        .await
        .map_err(|e| e.into_error(&format!("registering with {}", self.url)))?;
        let answer: Value = serde_json::from_slice(&body).unwrap_or_default();
        let Some(device_id) = answer["deviceId"].as_str().filter(|id| !id.is_empty()) else {
            return Err(Error::new(
                ErrorKind::BadResponse,
                "the answer has no deviceId",
            ));
        };
        let report = report_fields(json!({ "name": name, "deviceId": device_id }));
        Ok(Answer {
            files: vec![StoredFile::new(
                DEVICE_FILE,
                PUBLIC_MODE,
                format!("{}\n", Value::from(report.clone())),
            )],
            obsolete: Vec::new(),
            token_certificate: None,
            summary: format!("registered {name} as device {device_id}"),
            report,
        })
    }

    fn after_commit(&self) -> Vec<(&'static str, StepOutcome)> {
        Vec::new()
    }

    fn endpoints(&self) -> Vec<super::Endpoint> {
        vec![super::Endpoint {
            what: "example URL",
            url: self.url.clone(),
            cacert: self.cacert.clone(),
        }]
    }
}

/// POSTs the name; on 200, the answer's body.
async fn post(
    client: &http::Client,
    url: &reqwest::Url,
    name: &str,
) -> std::result::Result<Vec<u8>, HttpError> {
    let request = client
        .reqwest()
        .post(url.clone())
        .json(&json!({ "name": name }));
    match http::send(request).await? {
        answer if answer.status == 200 => Ok(answer.body),
        refusal => Err(refusal.into_error()),
    }
}
