//! OAuth 2.0 device authorisation (RFC 8628) for a technician without an API
//! token: show a code, wait for someone to approve it in a browser.

use crate::error::{Error, ErrorKind, Result};
use crate::http::{self, HttpError};
use crate::retry::{retry, Again, RetryPolicy, Retryable};
use crate::secret::Secret;
use serde::Deserialize;
use std::cell::Cell;
use std::time::Duration;

#[derive(Deserialize)]
struct DeviceAuthorization {
    device_code: String,
    user_code: String,
    verification_uri: String,
    expires_in: u64,
    #[serde(default = "default_interval")]
    interval: u64,
}

fn default_interval() -> u64 {
    5
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Longest wait we accept from a server, whatever it says.
const MAX_EXPIRY: Duration = Duration::from_secs(30 * 60);

fn endpoint(base: &reqwest::Url, path: &str) -> Result<reqwest::Url> {
    let joined = format!("{}/{path}", base.as_str().trim_end_matches('/'));
    reqwest::Url::parse(&joined)
        .map_err(|e| Error::config(format!("bad OAuth URL {joined:?}: {e}")))
}

/// Runs the device flow; `prompt` receives the text for the technician.
pub async fn device_flow(
    client: &reqwest::Client,
    base: &reqwest::Url,
    client_id: &str,
    factory: &str,
    prompt: &mut dyn FnMut(&str),
) -> Result<Secret> {
    let scope = format!("{factory}:devices:create");
    let auth = authorize(client, base, client_id, &scope).await?;
    let expires = Duration::from_secs(auth.expires_in).min(MAX_EXPIRY);
    prompt(&format!(
        "Visit {} and enter the code {} to authorise this device ({}); the code expires in {} minutes.",
        http::shown(&auth.verification_uri),
        http::shown(&auth.user_code),
        client_id,
        expires.as_secs().div_ceil(60)
    ));
    let approval = Approval {
        client,
        token_url: endpoint(base, "token/")?,
        device_code: &auth.device_code,
        client_id,
        scope: &scope,
        interval: Cell::new(Duration::from_secs(auth.interval.clamp(1, 60))),
    };
    // Until approved, the server answers "pending" and sets the pace; its
    // failures are retried as every request's are. The code's expiry is the
    // deadline.
    // RFC 8628: the first poll, too, comes one interval after the code.
    let first_poll = approval.interval.get();
    let policy = RetryPolicy {
        deadline: expires.saturating_sub(first_poll),
        max_attempts: u32::MAX,
        ..RetryPolicy::interactive()
    };
    tokio::time::sleep(first_poll).await;
    retry(&policy, "waiting for OAuth approval", |_| approval.poll())
        .await
        .map_err(Waiting::into_error)
}

/// `POST authorization/device/`: the codes for the technician and the agent.
async fn authorize(
    client: &reqwest::Client,
    base: &reqwest::Url,
    client_id: &str,
    scope: &str,
) -> Result<DeviceAuthorization> {
    let url = endpoint(base, "authorization/device/")?;
    let form = [("client_id", client_id), ("scope", scope)];
    let response = http::send(client.post(url).form(&form))
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("OAuth device authorisation: {e}"),
            )
        })?;
    if response.status != 200 {
        return Err(Error::new(
            ErrorKind::Rejected,
            format!(
                "OAuth device authorisation: HTTP {}: {}",
                response.status,
                http::server_message(&response.body)
            ),
        ));
    }
    serde_json::from_slice(&response.body).map_err(|e| {
        Error::new(
            ErrorKind::BadResponse,
            format!("OAuth device authorisation answer is not usable: {e}"),
        )
    })
}

/// The token endpoint's questions for one device code.
struct Approval<'a> {
    client: &'a reqwest::Client,
    token_url: reqwest::Url,
    device_code: &'a str,
    client_id: &'a str,
    scope: &'a str,
    /// The server's pace: `interval`, longer after each `slow_down`.
    interval: Cell<Duration>,
}

/// Why there is no token yet.
#[derive(Debug)]
enum Waiting {
    /// Not approved yet (`authorization_pending`, `slow_down`).
    Pending(Duration),
    /// The request failed; retried like any other.
    Http(HttpError),
    /// The server ended the flow (`access_denied`, `expired_token`, …).
    Refused(String),
    /// An answer that is neither a token nor an OAuth error.
    Unusable(String),
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Waiting::Pending(_) => f.write_str("not approved yet"),
            Waiting::Http(e) => e.fmt(f),
            Waiting::Refused(why) | Waiting::Unusable(why) => f.write_str(why),
        }
    }
}

impl Retryable for Waiting {
    fn retry_hint(&self) -> Option<Again> {
        match self {
            Waiting::Pending(interval) => Some(Again::NotYet(Some(*interval))),
            Waiting::Http(e) => e.retry_hint(),
            Waiting::Refused(_) | Waiting::Unusable(_) => None,
        }
    }
}

impl Waiting {
    fn into_error(self) -> Error {
        match self {
            Waiting::Pending(_) => Error::new(
                ErrorKind::Rejected,
                "the OAuth code expired before it was approved",
            ),
            Waiting::Http(e) => e.into_error("polling for OAuth approval"),
            Waiting::Refused(why) => Error::new(
                ErrorKind::Rejected,
                format!("OAuth authorisation failed: {why}"),
            ),
            Waiting::Unusable(why) => Error::new(ErrorKind::BadResponse, why),
        }
    }
}

impl Approval<'_> {
    /// One poll of the token endpoint.
    async fn poll(&self) -> std::result::Result<Secret, Waiting> {
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", self.device_code),
            ("client_id", self.client_id),
            ("scope", self.scope),
        ];
        let request = self.client.post(self.token_url.clone()).form(&form);
        let response = http::send(request).await.map_err(Waiting::Http)?;
        let answer: Option<TokenAnswer> = serde_json::from_slice(&response.body).ok();
        match (response.status, answer) {
            (
                200,
                Some(TokenAnswer {
                    access_token: Some(token),
                    ..
                }),
            ) if !token.is_empty() => Ok(Secret::new(token)),
            (400, Some(TokenAnswer { error: Some(e), .. })) if e == "authorization_pending" => {
                Err(Waiting::Pending(self.interval.get()))
            }
            // RFC 8628 3.5: five seconds more, for this and every later poll.
            (400, Some(TokenAnswer { error: Some(e), .. })) if e == "slow_down" => {
                self.interval
                    .set(self.interval.get() + Duration::from_secs(5));
                Err(Waiting::Pending(self.interval.get()))
            }
            (
                _,
                Some(TokenAnswer {
                    error: Some(e),
                    error_description,
                    ..
                }),
            ) => {
                let description = error_description
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                Err(Waiting::Refused(http::shown(&format!("{e}{description}"))))
            }
            (status, _) if status >= 500 || status == 429 => {
                Err(Waiting::Http(response.into_error()))
            }
            (status, _) => Err(Waiting::Unusable(format!(
                "OAuth token answer HTTP {status} is not usable: {}",
                http::server_message(&response.body)
            ))),
        }
    }
}
