//! The device side of the DPS REST API (docs/azure-dps.md): `PUT …/register`
//! starts an operation, `GET …/operations/{operationId}` is polled until DPS
//! decides. Both requests authenticate with the TLS client certificate.
//!
//! Two loops, both the shared retry policy: each request retries its own
//! transient failures (connections, 429, 5xx), and around them the
//! registration waits for DPS to decide (`assigning`), registers again when
//! DPS forgot the operation, and, on first boot only, waits for a disabled
//! enrollment to be enabled. One deadline bounds both.

use crate::error::{Error, ErrorKind, Result};
use crate::http::{self, HttpError};
use crate::retry::{retry, Again, RetryPolicy, Retryable};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

/// What the registration is about.
pub(crate) struct Registration<'a> {
    pub endpoint: &'a reqwest::Url,
    pub id_scope: &'a str,
    pub api_version: &'a str,
    pub registration_id: &'a str,
    pub payload: Option<&'a serde_json::Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RegisterRequest<'a> {
    registration_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a serde_json::Value>,
}

/// The answer to both requests.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct OperationStatus {
    operation_id: Option<String>,
    status: String,
    registration_state: Option<RegistrationState>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct RegistrationState {
    registration_id: Option<String>,
    created_date_time_utc: Option<String>,
    assigned_hub: Option<String>,
    device_id: Option<String>,
    substatus: Option<String>,
    error_code: Option<i64>,
    error_message: Option<String>,
    payload: Option<serde_json::Value>,
}

/// DPS's decision for an assigned device.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Assignment {
    pub assigned_hub: String,
    pub device_id: String,
    pub substatus: Option<String>,
    pub payload: Option<serde_json::Value>,
    pub created_date_time_utc: Option<String>,
}

/// Why the registration is not finished yet, or will not be.
#[derive(Debug)]
enum Pending {
    /// DPS has not decided yet.
    Assigning { retry_after: Option<Duration> },
    /// A poll named an operation DPS does not know (any 404 on a poll):
    /// register again.
    UnknownOperation,
    /// The enrollment is disabled: worth waiting for only on first boot,
    /// when the machine maker may enable it any time.
    Disabled { wait: bool },
    /// DPS decided against the device.
    Failed {
        code: Option<i64>,
        message: Option<String>,
    },
    /// A request failed, after its own retries if it was worth retrying.
    Http(HttpError),
    /// An answer that is not what DPS sends.
    Bad(String),
}

impl From<HttpError> for Pending {
    fn from(error: HttpError) -> Self {
        Pending::Http(error)
    }
}

impl std::fmt::Display for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pending::Assigning { .. } => f.write_str("DPS is still assigning the device"),
            Pending::UnknownOperation => {
                f.write_str("DPS does not know the registration operation; registering again")
            }
            Pending::Disabled { .. } => f.write_str("the enrollment is disabled in DPS"),
            Pending::Failed { code, message } => {
                f.write_str(message.as_deref().unwrap_or("no reason given"))?;
                match code {
                    Some(code) => write!(f, " (errorCode {code})"),
                    None => Ok(()),
                }
            }
            Pending::Http(error) => error.fmt(f),
            Pending::Bad(why) => f.write_str(why),
        }
    }
}

impl Retryable for Pending {
    fn retry_hint(&self) -> Option<Again> {
        match self {
            // Progress: DPS sets the pace of the polls.
            Pending::Assigning { retry_after } => Some(Again::NotYet(*retry_after)),
            Pending::UnknownOperation | Pending::Disabled { wait: true } => {
                Some(Again::Backoff(None))
            }
            _ => None,
        }
    }
}

/// `{endpoint}/{idScope}/registrations/{registrationId}/{tail…}?api-version=…`
fn url(registration: &Registration<'_>, tail: &[&str]) -> Result<reqwest::Url> {
    let mut url = registration.endpoint.clone();
    url.path_segments_mut()
        .map_err(|()| Error::config(format!("{} cannot take a path", registration.endpoint)))?
        .pop_if_empty()
        .extend([
            registration.id_scope,
            "registrations",
            registration.registration_id,
        ])
        .extend(tail);
    url.query_pairs_mut()
        .append_pair("api-version", registration.api_version);
    Ok(url)
}

/// DPS errors are `{"errorCode", "trackingId", "message"}`; the message is
/// what a person needs, the code and tracking id what DPS support asks for.
fn refusal(response: http::Response) -> HttpError {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct DpsError {
        error_code: Option<i64>,
        tracking_id: Option<String>,
    }
    let mut message = http::server_message(&response.body);
    if let Ok(DpsError {
        error_code,
        tracking_id,
    }) = serde_json::from_slice(&response.body)
    {
        let details: Vec<String> = [
            error_code.map(|c| format!("errorCode {c}")),
            tracking_id
                .filter(|t| t.len() <= 100 && t.chars().all(|c| c.is_ascii_graphic()))
                .map(|t| format!("trackingId {t}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !details.is_empty() {
            message = format!("{message} ({})", details.join(", "));
        }
    }
    HttpError::Status {
        code: response.status,
        message,
        retry_after: response.retry_after,
    }
}

/// One request; 200 and 202 carry an operation status.
async fn send(request: reqwest::RequestBuilder) -> std::result::Result<http::Response, HttpError> {
    let response = http::send(request).await?;
    match response.status {
        200 | 202 => Ok(response),
        _ => Err(refusal(response)),
    }
}

fn parse(response: &http::Response) -> std::result::Result<OperationStatus, Pending> {
    serde_json::from_slice(&response.body)
        .map_err(|e| Pending::Bad(format!("DPS answered {} with {e}", response.status)))
}

/// Registers the device and waits for DPS's decision. `boot`: a disabled
/// enrollment is waited for until the deadline instead of being final.
pub(crate) async fn register(
    client: &http::Client,
    registration: &Registration<'_>,
    policy: &RetryPolicy,
    boot: bool,
) -> Result<Assignment> {
    let id = registration.registration_id;
    let asking = Asking {
        client,
        registration,
        policy,
        boot,
        register_url: url(registration, &["register"])?,
        started: Instant::now(),
        operation: RefCell::new(None),
        disabled: Cell::new(false),
    };
    // Waiting for a decision is not failing: only the deadline ends it.
    let waiting = RetryPolicy {
        max_attempts: u32::MAX,
        ..policy.clone()
    };
    let decided = retry(&waiting, &format!("registering {id} with DPS"), |_| {
        asking.ask()
    })
    .await;
    let state = decided.map_err(|pending| {
        // Out of time while asking again: what stands in the way is the
        // enrollment DPS last said was disabled.
        let pending = match pending {
            Pending::Assigning { .. } | Pending::UnknownOperation if asking.disabled.get() => {
                Pending::Disabled { wait: true }
            }
            other => other,
        };
        final_error(pending, registration, asking.started)
    })?;
    assignment(state, id)
}

/// One registration with DPS in progress: the operation to poll, if any,
/// and whether DPS said the enrollment is disabled.
struct Asking<'a> {
    client: &'a http::Client,
    registration: &'a Registration<'a>,
    policy: &'a RetryPolicy,
    boot: bool,
    register_url: reqwest::Url,
    started: Instant,
    operation: RefCell<Option<String>>,
    disabled: Cell<bool>,
}

impl Asking<'_> {
    /// One question: register, or poll the operation DPS named; then what
    /// the answer means.
    async fn ask(&self) -> std::result::Result<RegistrationState, Pending> {
        let polled = self.operation.borrow_mut().take();
        let response = match &polled {
            None => self.put().await?,
            Some(operation_id) => self.poll(operation_id).await?,
        };
        self.interpret(&response, polled)
    }

    /// The shared policy, bounded by what is left of the registration's
    /// deadline: each request retries its own transient failures.
    fn request_policy(&self) -> RetryPolicy {
        RetryPolicy {
            deadline: self.policy.deadline.saturating_sub(self.started.elapsed()),
            ..self.policy.clone()
        }
    }

    async fn put(&self) -> std::result::Result<http::Response, Pending> {
        let request = RegisterRequest {
            registration_id: self.registration.registration_id,
            payload: self.registration.payload,
        };
        let put = || {
            self.client
                .reqwest()
                .put(self.register_url.clone())
                .json(&request)
        };
        Ok(retry(&self.request_policy(), "DPS register", |_| send(put())).await?)
    }

    async fn poll(&self, operation_id: &str) -> std::result::Result<http::Response, Pending> {
        let poll_url = url(self.registration, &["operations", operation_id])
            .map_err(|e| Pending::Bad(e.to_string()))?;
        let polled = retry(&self.request_policy(), "DPS operation status", |_| {
            send(self.client.reqwest().get(poll_url.clone()))
        })
        .await;
        polled.map_err(|e| {
            if e.status() == Some(404) {
                tracing::info!(
                    "DPS does not know operation {operation_id} ({e}); registering again"
                );
                Pending::UnknownOperation
            } else {
                e.into()
            }
        })
    }

    /// What DPS's answer means ([`decide`]), kept for the next question.
    fn interpret(
        &self,
        response: &http::Response,
        polled: Option<String>,
    ) -> std::result::Result<RegistrationState, Pending> {
        let decision = decide(response, polled, self.boot);
        if matches!(decision.outcome, Err(Pending::Disabled { .. })) {
            self.disabled.set(true);
        }
        *self.operation.borrow_mut() = decision.operation;
        decision.outcome
    }
}

/// What one operation status from DPS means, and the operation to poll
/// next (only while DPS is assigning).
struct Decision {
    outcome: std::result::Result<RegistrationState, Pending>,
    operation: Option<String>,
}

/// What DPS's answer means, apart from any request (the fuzz targets call
/// it too); `polled`: the operation the question was about (none for a
/// register); `boot`: a disabled enrollment is worth waiting for.
fn decide(response: &http::Response, polled: Option<String>, boot: bool) -> Decision {
    let refused = |pending| Decision {
        outcome: Err(pending),
        operation: None,
    };
    let answer = match parse(response) {
        Ok(answer) => answer,
        Err(pending) => return refused(pending),
    };
    let state = answer.registration_state.unwrap_or_default();
    match answer.status.as_str() {
        "assigned" => Decision {
            outcome: Ok(state),
            operation: None,
        },
        "assigning" | "unassigned" => match answer.operation_id.or(polled) {
            None => refused(Pending::Bad(
                "DPS is assigning the device but named no operationId".into(),
            )),
            Some(id) if id.is_empty() || id.len() > 200 => {
                refused(Pending::Bad("DPS named an unusable operationId".into()))
            }
            Some(id) => Decision {
                outcome: Err(Pending::Assigning {
                    retry_after: response.retry_after,
                }),
                operation: Some(id),
            },
        },
        "disabled" => refused(Pending::Disabled { wait: boot }),
        "failed" => refused(Pending::Failed {
            code: state.error_code,
            // DPS's words go to the log: cleaned and bounded.
            message: state
                .error_message
                .map(|m| http::server_message(m.as_bytes())),
        }),
        other => refused(Pending::Bad(format!(
            "DPS answered the unknown status {:?}",
            other.chars().take(40).collect::<String>()
        ))),
    }
}

/// An operation status as the registration reads it: the assignment DPS
/// decided on, else why there is none yet (or none at all) and the
/// operation to poll next; for the fuzz targets.
pub(crate) fn read_operation_status(
    response: &http::Response,
    polled: Option<String>,
    id: &str,
) -> std::result::Result<Assignment, (String, Option<String>)> {
    let decision = decide(response, polled, true);
    match decision.outcome {
        Ok(state) => assignment(state, id).map_err(|e| (e.to_string(), None)),
        Err(pending) => Err((pending.to_string(), decision.operation)),
    }
}

fn final_error(pending: Pending, registration: &Registration<'_>, started: Instant) -> Error {
    let id = registration.registration_id;
    let waited = started.elapsed().as_secs();
    match pending {
        Pending::Http(error) => error.into_error(&format!(
            "registering {id} with DPS at {} (ID scope {})",
            registration.endpoint, registration.id_scope
        )),
        Pending::Assigning { .. } => Error::new(
            ErrorKind::Unavailable,
            format!("DPS had not finished assigning {id} after {waited}s"),
        ),
        Pending::UnknownOperation => Error::new(
            ErrorKind::Unavailable,
            format!("DPS kept losing the registration operation of {id} for {waited}s"),
        ),
        Pending::Disabled { wait: false } => Error::new(
            ErrorKind::Rejected,
            format!(
                "the enrollment of {id} is disabled in DPS (ID scope {}): it must be enabled before the device can register",
                registration.id_scope
            ),
        ),
        Pending::Disabled { wait: true } => Error::new(
            ErrorKind::Unavailable,
            format!(
                "the enrollment of {id} was still disabled in DPS after {waited}s; the next boot asks again"
            ),
        ),
        failed @ Pending::Failed { .. } => Error::new(
            ErrorKind::Rejected,
            format!("DPS failed the registration of {id}: {failed}"),
        ),
        Pending::Bad(why) => Error::new(
            ErrorKind::BadResponse,
            format!("registering {id} with DPS: {why}"),
        ),
    }
}

fn assignment(state: RegistrationState, id: &str) -> Result<Assignment> {
    let bad = |why: String| {
        Error::new(
            ErrorKind::BadResponse,
            format!("DPS assigned {id}, but {why}"),
        )
    };
    let usable = |value: Option<String>, field: &str| match value {
        Some(v) if !v.is_empty() && !v.chars().any(char::is_control) => Ok(v),
        _ => Err(bad(format!("its answer has no usable {field}"))),
    };
    if let Some(other) = state.registration_id.as_deref().filter(|r| *r != id) {
        return Err(bad(format!(
            "the answer is for registration {:?}",
            other.chars().take(64).collect::<String>()
        )));
    }
    Ok(Assignment {
        assigned_hub: usable(state.assigned_hub, "assignedHub")?,
        device_id: usable(state.device_id, "deviceId")?,
        substatus: state.substatus,
        payload: state.payload,
        created_date_time_utc: state.created_date_time_utc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration<'a>(endpoint: &'a reqwest::Url) -> Registration<'a> {
        Registration {
            endpoint,
            id_scope: "0ne00000A0A",
            api_version: "2021-10-01",
            registration_id: "dev:1",
            payload: None,
        }
    }

    #[test]
    fn urls_name_the_scope_registration_and_api_version() {
        let endpoint =
            reqwest::Url::parse("https://global.azure-devices-provisioning.net").unwrap();
        assert_eq!(
            url(&registration(&endpoint), &["register"]).unwrap().as_str(),
            "https://global.azure-devices-provisioning.net/0ne00000A0A/registrations/dev:1/register?api-version=2021-10-01"
        );
        let endpoint = reqwest::Url::parse("https://dps.example/base/").unwrap();
        assert_eq!(
            url(&registration(&endpoint), &["operations", "4.abc"])
                .unwrap()
                .as_str(),
            "https://dps.example/base/0ne00000A0A/registrations/dev:1/operations/4.abc?api-version=2021-10-01"
        );
    }

    #[test]
    fn refusals_keep_the_message_code_and_tracking_id() {
        let response = http::Response {
            status: 401,
            retry_after: None,
            body: br#"{"errorCode":401002,"trackingId":"t-1","message":"Invalid certificate","timestampUtc":"x"}"#.to_vec(),
        };
        let error = refusal(response);
        assert_eq!(
            error.to_string(),
            "HTTP 401: Invalid certificate (errorCode 401002, trackingId t-1)"
        );
        assert!(error.retry_hint().is_none());
    }

    #[test]
    fn an_assignment_needs_a_hub_and_a_device_id() {
        let state = RegistrationState {
            registration_id: Some("dev:1".into()),
            assigned_hub: Some("hub.azure-devices.net".into()),
            device_id: Some("dev:1".into()),
            ..Default::default()
        };
        assert_eq!(
            assignment(state, "dev:1").unwrap().assigned_hub,
            "hub.azure-devices.net"
        );
        let err = assignment(RegistrationState::default(), "dev:1").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadResponse);
        assert!(err.to_string().contains("assignedHub"), "{err}");
        let other = RegistrationState {
            registration_id: Some("dev:2".into()),
            assigned_hub: Some("h".into()),
            device_id: Some("d".into()),
            ..Default::default()
        };
        assert!(assignment(other, "dev:1").is_err());
    }

    #[test]
    fn only_a_wait_worth_waiting_for_is_retried() {
        assert_eq!(
            Pending::Assigning {
                retry_after: Some(Duration::from_secs(3))
            }
            .retry_hint(),
            Some(Again::NotYet(Some(Duration::from_secs(3))))
        );
        assert_eq!(
            Pending::UnknownOperation.retry_hint(),
            Some(Again::Backoff(None))
        );
        assert_eq!(
            Pending::Disabled { wait: true }.retry_hint(),
            Some(Again::Backoff(None))
        );
        assert_eq!(Pending::Disabled { wait: false }.retry_hint(), None);
        assert_eq!(
            Pending::Failed {
                code: Some(400209),
                message: Some("x".into())
            }
            .retry_hint(),
            None
        );
        // The request's own retries are over by the time it gets here.
        let gave_up = HttpError::Status {
            code: 503,
            message: String::new(),
            retry_after: None,
        };
        assert!(Pending::Http(gave_up).retry_hint().is_none());
    }
}
