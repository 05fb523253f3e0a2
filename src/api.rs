//! The registration API client: the request body of the DEVICE_API contract,
//! bounded response reading, and errors that say whether a retry can help.

use crate::error::{Error, ErrorKind};
use crate::retry::Retryable;
use crate::secret::Secret;
use base64::Engine;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// No registration answer is anywhere near this large (four PEM files and a
/// small TOML file).
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Error bodies are shown to the user; more than this is noise.
const MAX_SHOWN_ERROR_CHARS: usize = 2000;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `section -> key -> TOML literal`; an empty literal unsets the key.
pub type Overrides = BTreeMap<&'static str, BTreeMap<&'static str, String>>;

#[derive(Serialize, Debug)]
pub struct RegistrationRequest<'a> {
    pub name: &'a str,
    pub uuid: &'a str,
    pub csr: &'a str,
    #[serde(rename = "hardware-id")]
    pub hardware_id: &'a str,
    #[serde(rename = "sota-config-dir")]
    pub sota_config_dir: &'a str,
    #[serde(rename = "use-ostree-server")]
    pub use_ostree_server: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<&'a str>,
    pub overrides: &'a Overrides,
}

#[derive(Clone)]
pub enum Credentials {
    /// `<header>: <token>`, `OSF-TOKEN` by default.
    Token { header: String, token: Secret },
    /// An OAuth access token, sent the way the factory API expects it.
    Bearer(Secret),
}

#[derive(Debug)]
pub enum ApiError {
    /// Could not connect, timed out, or the connection broke.
    Transport(String),
    /// The TLS handshake failed: the server is not who it should be (or we
    /// trust the wrong CA). Retrying cannot fix that.
    Tls(String),
    /// The server answered something other than what we asked for.
    Status {
        code: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The answer was unusable before even looking at its content.
    Body(String),
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Transport(msg) => write!(f, "{msg}"),
            ApiError::Tls(msg) => write!(
                f,
                "{msg} (to trust a factory CA, pass --cacert or set DEVICE_API_CACERT)"
            ),
            ApiError::Status { code, message, .. } if message.is_empty() => {
                write!(f, "HTTP {code}")
            }
            ApiError::Status { code, message, .. } => write!(f, "HTTP {code}: {message}"),
            ApiError::Body(msg) => write!(f, "{msg}"),
        }
    }
}

impl Retryable for ApiError {
    fn retry_hint(&self) -> Option<Option<Duration>> {
        match self {
            ApiError::Transport(_) => Some(None),
            ApiError::Status {
                code, retry_after, ..
            } => match code {
                408 | 429 | 500..=599 => Some(*retry_after),
                _ => None,
            },
            ApiError::Tls(_) | ApiError::Body(_) => None,
        }
    }
}

impl ApiError {
    /// Maps the final failure of a registration attempt to the agent's error.
    pub fn into_error(self, what: &str) -> Error {
        let kind = match &self {
            ApiError::Transport(_) => ErrorKind::Unavailable,
            ApiError::Tls(_) => ErrorKind::Config,
            ApiError::Status { code: 409, .. } => ErrorKind::AlreadyRegistered,
            ApiError::Status { code, .. } if self.retry_hint().is_some() || *code < 400 => {
                if (300..400).contains(code) {
                    ErrorKind::Rejected
                } else {
                    ErrorKind::Unavailable
                }
            }
            ApiError::Status { .. } => ErrorKind::Rejected,
            ApiError::Body(_) => ErrorKind::BadResponse,
        };
        let hint = match &self {
            ApiError::Status { code: 409, .. } => {
                "; the server already knows this device (use --force with a new UUID to register it again)"
            }
            ApiError::Status { code: 300..=399, .. } => {
                "; redirects are not followed, so that the token is never sent elsewhere: point DEVICE_API at the final URL"
            }
            _ => "",
        };
        let error = Error::new(kind, format!("{what}: {self}{hint}"));
        if matches!(self, ApiError::Transport(_)) {
            error.with_outcome_unknown()
        } else {
            error
        }
    }
}

pub struct ApiClient {
    http: reqwest::Client,
    credentials: Option<Credentials>,
}

impl ApiClient {
    /// `cacert`: trust only this PEM bundle instead of the system roots.
    pub fn new(cacert: Option<&Path>, request_timeout: Duration) -> Result<Self, Error> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(request_timeout))
            .timeout(request_timeout)
            // A redirect would carry the token to wherever the server says.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("lmp-device-register/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = cacert {
            let pem = crate::localfiles::read_required(path)?;
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| {
                Error::config(format!(
                    "{}: not a PEM certificate bundle: {e}",
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(Error::config(format!(
                    "{}: holds no certificate",
                    path.display()
                )));
            }
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot set up HTTP: {e}")))?;
        Ok(ApiClient {
            http,
            credentials: None,
        })
    }

    pub fn set_credentials(&mut self, credentials: Credentials) {
        self.credentials = Some(credentials);
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Any HTTP answer at all means the server is reachable.
    pub async fn probe(&self, url: &reqwest::Url) -> Result<u16, ApiError> {
        let response = self
            .http
            .head(url.clone())
            .send()
            .await
            .map_err(transport_error)?;
        Ok(response.status().as_u16())
    }

    /// POSTs the registration; on 201 returns the raw body for validation.
    pub async fn register(
        &self,
        url: &reqwest::Url,
        request: &RegistrationRequest<'_>,
    ) -> Result<Vec<u8>, ApiError> {
        let mut builder = self.http.post(url.clone()).json(request);
        builder = match &self.credentials {
            Some(Credentials::Token { header, token }) => {
                builder.header(header.as_str(), sensitive_header(token.expose())?)
            }
            Some(Credentials::Bearer(token)) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(token.expose());
                builder.header(
                    reqwest::header::AUTHORIZATION,
                    sensitive_header(&format!("Bearer {encoded}"))?,
                )
            }
            None => builder,
        };
        let response = builder.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = read_bounded(response).await?;
        if status == 201 {
            return Ok(body);
        }
        Err(ApiError::Status {
            code: status,
            message: server_message(&body),
            retry_after,
        })
    }
}

fn sensitive_header(value: &str) -> Result<reqwest::header::HeaderValue, ApiError> {
    let mut value = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
        ApiError::Body("the API token contains characters not allowed in an HTTP header".into())
    })?;
    value.set_sensitive(true);
    Ok(value)
}

pub fn transport_error(error: reqwest::Error) -> ApiError {
    // reqwest's Display omits the cause ("error sending request"), which is
    // what a technician needs ("connection refused", "certificate ...").
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    let tls_failure = caused_by_tls(&error);
    if error.is_timeout() {
        message.push_str(" (timed out)");
    }
    if tls_failure {
        ApiError::Tls(message)
    } else {
        ApiError::Transport(message)
    }
}

/// Whether a rustls error is somewhere in the chain. io::Error hides the
/// error it wraps from `source()`, and hyper nests io::Errors, so look inside.
fn caused_by_tls(error: &(dyn std::error::Error + 'static)) -> bool {
    if error.is::<rustls::Error>() {
        return true;
    }
    if let Some(inner) = error
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        return caused_by_tls(inner);
    }
    error.source().is_some_and(caused_by_tls)
}

/// Reads at most `MAX_RESPONSE_BYTES`, so a hostile server cannot exhaust
/// the memory of a small device.
pub async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, ApiError> {
    if response
        .content_length()
        .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
    {
        return Err(ApiError::Body(format!(
            "the response is larger than {MAX_RESPONSE_BYTES} bytes"
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ApiError::Body(format!(
                "the response is larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `Retry-After` is either delta-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The human part of an error answer: `{"error": ...}`, `{"errors": ...}`,
/// or the plain text, without control characters and bounded in length.
pub fn server_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let message = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(map)) => {
            if let Some(serde_json::Value::String(e)) = map.get("error") {
                e.clone()
            } else if let Some(errors) = map.get("errors") {
                render_errors(errors)
            } else if let Some(serde_json::Value::String(m)) = map.get("message") {
                m.clone()
            } else {
                text.to_string()
            }
        }
        _ => text.to_string(),
    };
    let cleaned: String = message
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if cleaned.chars().count() > MAX_SHOWN_ERROR_CHARS {
        let cut: String = cleaned.chars().take(MAX_SHOWN_ERROR_CHARS).collect();
        format!("{cut}...")
    } else {
        cleaned
    }
}

fn render_errors(errors: &serde_json::Value) -> String {
    match errors {
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(field, problem)| format!("{field}: {}", render_errors(problem)))
            .collect::<Vec<_>>()
            .join("; "),
        serde_json::Value::Array(items) => items
            .iter()
            .map(render_errors)
            .collect::<Vec<_>>()
            .join(", "),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_are_extracted_from_json_and_text() {
        assert_eq!(
            server_message(b"Invalid factory(x) must be y\n"),
            "Invalid factory(x) must be y"
        );
        assert_eq!(server_message(br#"{"error": "bad csr"}"#), "bad csr");
        assert_eq!(
            server_message(br#"{"errors": {"name": ["is taken"], "csr": "bad"}}"#),
            "csr: bad; name: is taken"
        );
        assert_eq!(server_message(b"a\x1b[31mb"), "a [31mb");
        assert!(server_message(&[b'x'; 5000]).ends_with("..."));
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let status = |code| ApiError::Status {
            code,
            message: String::new(),
            retry_after: None,
        };
        assert!(ApiError::Transport("refused".into()).retry_hint().is_some());
        for code in [408, 429, 500, 502, 503] {
            assert!(status(code).retry_hint().is_some(), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 307] {
            assert!(status(code).retry_hint().is_none(), "{code}");
        }
        assert_eq!(
            status(409).into_error("x").kind(),
            ErrorKind::AlreadyRegistered
        );
        assert_eq!(status(400).into_error("x").kind(), ErrorKind::Rejected);
        assert_eq!(status(503).into_error("x").kind(), ErrorKind::Unavailable);
        assert_eq!(status(307).into_error("x").kind(), ErrorKind::Rejected);
    }
}
