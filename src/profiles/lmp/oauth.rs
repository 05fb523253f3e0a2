//! OAuth 2.0 device authorisation (RFC 8628) for a technician without an API
//! token: show a code, wait for someone to approve it in a browser.

use crate::error::{Error, ErrorKind, Result};
use crate::http::{self, HttpError};
use crate::secret::Secret;
use serde::Deserialize;
use std::time::{Duration, Instant};

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

async fn post_form(
    client: &reqwest::Client,
    url: &reqwest::Url,
    form: &[(&str, &str)],
) -> std::result::Result<(u16, Vec<u8>), HttpError> {
    let response = http::send(client.post(url.clone()).form(form)).await?;
    Ok((response.status, response.body))
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Unavailable, format!("{what}: {e}"))
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
    let (status, body) = post_form(
        client,
        &endpoint(base, "authorization/device/")?,
        &[("client_id", client_id), ("scope", &scope)],
    )
    .await
    .map_err(|e| unavailable("OAuth device authorisation", e))?;
    if status != 200 {
        return Err(Error::new(
            ErrorKind::Rejected,
            format!(
                "OAuth device authorisation: HTTP {status}: {}",
                http::server_message(&body)
            ),
        ));
    }
    let auth: DeviceAuthorization = serde_json::from_slice(&body).map_err(|e| {
        Error::new(
            ErrorKind::BadResponse,
            format!("OAuth device authorisation answer is not usable: {e}"),
        )
    })?;
    let expires = Duration::from_secs(auth.expires_in).min(MAX_EXPIRY);
    let interval = Duration::from_secs(auth.interval.clamp(1, 60));
    prompt(&format!(
        "Visit {} and enter the code {} to authorise this device ({}); the code expires in {} minutes.",
        auth.verification_uri,
        auth.user_code,
        client_id,
        expires.as_secs().div_ceil(60)
    ));

    let token_url = endpoint(base, "token/")?;
    let started = Instant::now();
    loop {
        if started.elapsed() >= expires {
            return Err(Error::new(
                ErrorKind::Rejected,
                "the OAuth code expired before it was approved",
            ));
        }
        tokio::time::sleep(interval).await;
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", auth.device_code.as_str()),
            ("client_id", client_id),
            ("scope", scope.as_str()),
        ];
        let (status, body) = match post_form(client, &token_url, &form).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!("polling for OAuth approval failed: {e}; trying again");
                continue;
            }
        };
        let answer: Option<TokenAnswer> = serde_json::from_slice(&body).ok();
        match (status, answer) {
            (
                200,
                Some(TokenAnswer {
                    access_token: Some(token),
                    ..
                }),
            ) if !token.is_empty() => {
                return Ok(Secret::new(token));
            }
            (400, Some(TokenAnswer { error: Some(e), .. })) if e == "authorization_pending" => {}
            (400, Some(TokenAnswer { error: Some(e), .. })) if e == "slow_down" => {
                tokio::time::sleep(interval).await;
            }
            (
                _,
                Some(TokenAnswer {
                    error: Some(e),
                    error_description,
                    ..
                }),
            ) => {
                return Err(Error::new(
                    ErrorKind::Rejected,
                    format!(
                        "OAuth authorisation failed: {e}{}",
                        error_description
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default()
                    ),
                ));
            }
            (status, _) if status >= 500 => {
                tracing::warn!("OAuth server answered HTTP {status}; trying again");
            }
            (status, _) => {
                return Err(Error::new(
                    ErrorKind::BadResponse,
                    format!(
                        "OAuth token answer HTTP {status} is not usable: {}",
                        http::server_message(&body)
                    ),
                ));
            }
        }
    }
}
