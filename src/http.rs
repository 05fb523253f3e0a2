//! The one HTTP client of the agent: TLS trust built only when needed (see
//! `tls`), bounded response reading, the server's own words for errors, and
//! errors that say whether a retry can help.

use crate::config::CaBundle;
use crate::error::{Error, ErrorKind};
use crate::retry::{Again, Retryable};
use crate::tls::ClientIdentity;
use std::fmt;
use std::time::{Duration, SystemTime};

/// No answer the agent expects is anywhere near this large (a few PEM files
/// and a small TOML or JSON document).
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Error bodies are shown to the user; more than this is noise.
const MAX_SHOWN_ERROR_CHARS: usize = 2000;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum HttpError {
    /// No connection came about: the request was never sent.
    Connect(String),
    /// The connection broke or timed out after the request went out: the
    /// server may have acted on it.
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
    /// The last of several attempts, an earlier one of which the server may
    /// have acted on.
    AfterUnknown(Box<HttpError>),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Connect(msg) | HttpError::Transport(msg) => {
                write!(f, "cannot reach the server: {msg}")
            }
            HttpError::Tls(msg) => write!(
                f,
                "{msg} (to trust the server's CA instead of the system roots, pass --cacert)"
            ),
            HttpError::Status { code, message, .. } if message.is_empty() => {
                write!(f, "HTTP {code}")
            }
            HttpError::Status { code, message, .. } => write!(f, "HTTP {code}: {message}"),
            HttpError::Body(msg) => write!(f, "{msg}"),
            HttpError::AfterUnknown(last) => last.fmt(f),
        }
    }
}

impl Retryable for HttpError {
    fn retry_hint(&self) -> Option<Again> {
        match self {
            HttpError::Connect(_) => Some(Again::Unreachable),
            HttpError::Transport(_) => Some(Again::Backoff(None)),
            HttpError::Status {
                code, retry_after, ..
            } => match code {
                408 | 429 | 500..=599 => Some(Again::Backoff(*retry_after)),
                _ => None,
            },
            HttpError::Tls(_) | HttpError::Body(_) => None,
            HttpError::AfterUnknown(last) => last.retry_hint(),
        }
    }

    fn may_have_been_received(&self) -> bool {
        matches!(self, HttpError::Transport(_) | HttpError::AfterUnknown(_))
    }

    fn after_possibly_received(self) -> Self {
        match self {
            already @ HttpError::AfterUnknown(_) => already,
            last => HttpError::AfterUnknown(Box::new(last)),
        }
    }
}

impl HttpError {
    /// Maps the final failure of a request to the agent's error; `doing`
    /// says what was being done ("registering at <url>").
    ///
    /// The outcome is unknown (and a pending identity is kept) when the
    /// server may have acted on some attempt and did not answer the last one
    /// with a definite refusal.
    pub fn into_error(self, doing: &str) -> Error {
        let outcome_unknown = match &self {
            HttpError::Transport(_) => true,
            HttpError::AfterUnknown(last) => {
                last.retry_hint().is_some() || last.status() == Some(409)
            }
            _ => false,
        };
        let last = match self {
            HttpError::AfterUnknown(last) => *last,
            other => other,
        };
        let kind = match &last {
            HttpError::Connect(_) | HttpError::Transport(_) => ErrorKind::Unavailable,
            HttpError::Tls(_) => ErrorKind::Config,
            HttpError::Status { code: 409, .. } => ErrorKind::AlreadyRegistered,
            HttpError::Status {
                code: 300..=399, ..
            } => ErrorKind::Rejected,
            HttpError::Status { code, .. } if last.retry_hint().is_some() || *code < 300 => {
                ErrorKind::Unavailable
            }
            HttpError::Status { .. } => ErrorKind::Rejected,
            HttpError::Body(_) => ErrorKind::BadResponse,
            HttpError::AfterUnknown(_) => ErrorKind::Internal,
        };
        let hint = match &last {
            HttpError::Status { code: 300..=399, .. } => {
                "; redirects are not followed, so that credentials are never sent elsewhere: configure the final URL"
            }
            _ => "",
        };
        let error = Error::new(kind, format!("{doing}: {last}{hint}"));
        if outcome_unknown {
            error.with_outcome_unknown()
        } else {
            error
        }
    }

    /// The HTTP status of a refusal, if it was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { code, .. } => Some(*code),
            HttpError::AfterUnknown(last) => last.status(),
            _ => None,
        }
    }
}

/// An answer read in full (within [`MAX_RESPONSE_BYTES`]).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl Response {
    /// The answer as a refusal, with the server's message.
    pub fn into_error(self) -> HttpError {
        HttpError::Status {
            code: self.status,
            message: server_message(&self.body),
            retry_after: self.retry_after,
        }
    }
}

/// A reqwest client with the agent's limits and TLS set-up.
pub struct Client {
    http: reqwest::Client,
}

impl Client {
    /// A client for these URLs: TLS trust is loaded only when one of them is
    /// https (`cacert` instead of the system roots when given), and
    /// `identity` is offered to servers that ask for a client certificate.
    pub fn new(
        urls: &[&reqwest::Url],
        cacert: Option<&CaBundle>,
        identity: Option<ClientIdentity>,
        request_timeout: Duration,
    ) -> Result<Self, Error> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(request_timeout))
            .timeout(request_timeout)
            // A redirect would carry credentials to wherever the server says.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("lmp-device-register/", env!("CARGO_PKG_VERSION")));
        if urls.iter().any(|url| url.scheme() == "https") {
            let roots = crate::tls::roots(cacert)?;
            builder = builder.use_preconfigured_tls(crate::tls::client_config(roots, identity)?);
        }
        let http = builder
            .build()
            .map_err(|e| Error::internal(format!("cannot set up HTTP: {e}")))?;
        Ok(Client { http })
    }

    pub fn reqwest(&self) -> &reqwest::Client {
        &self.http
    }
}

/// Sends a request and reads its answer, whatever the status.
pub async fn send(request: reqwest::RequestBuilder) -> Result<Response, HttpError> {
    let response = request.send().await.map_err(transport_error)?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let url = response.url().clone();
    let body = read_bounded(response).await?;
    tracing::debug!("{url} answered HTTP {status} ({} bytes)", body.len());
    Ok(Response {
        status,
        retry_after,
        body,
    })
}

/// A header value that reqwest keeps out of its debug output.
pub fn sensitive_header(value: &str) -> Result<reqwest::header::HeaderValue, HttpError> {
    let mut value = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
        HttpError::Body("a credential contains characters not allowed in an HTTP header".into())
    })?;
    value.set_sensitive(true);
    Ok(value)
}

pub fn transport_error(error: reqwest::Error) -> HttpError {
    // reqwest's Display omits the cause ("error sending request"), which is
    // what a technician needs ("connection refused", "certificate ...").
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    if error.is_timeout() {
        message.push_str(" (timed out)");
    }
    if caused_by_tls(&error) {
        HttpError::Tls(message)
    } else if error.is_connect() {
        HttpError::Connect(message)
    } else {
        HttpError::Transport(message)
    }
}

/// Whether a rustls error is somewhere in the chain. io::Error hides the
/// error it wraps from `source()`, and hyper nests io::Errors, so look inside.
pub(crate) fn caused_by_tls(error: &(dyn std::error::Error + 'static)) -> bool {
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
pub async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, HttpError> {
    if response
        .content_length()
        .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
    {
        return Err(HttpError::Body(format!(
            "the response is larger than {MAX_RESPONSE_BYTES} bytes"
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(HttpError::Body(format!(
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
    shown(&message)
}

/// A server's words as they may reach a terminal, a log or an error:
/// control characters (escape sequences) as spaces, bounded in length.
pub fn shown(message: &str) -> String {
    // Trimmed after the control characters became spaces: an escape
    // sequence at either end would otherwise leave a space there.
    let spaced: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = spaced.trim();
    if cleaned.chars().count() > MAX_SHOWN_ERROR_CHARS {
        let cut: String = cleaned.chars().take(MAX_SHOWN_ERROR_CHARS).collect();
        format!("{cut}...")
    } else {
        cleaned.to_string()
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
        // Found by fuzzing: a control character at an end left a space there.
        assert_eq!(server_message(b"\x05missing\x00"), "missing");
        assert_eq!(server_message(b"\x1b[31mError\x07"), "[31mError");
        assert!(server_message(&[b'x'; 5000]).ends_with("..."));
        // What an OAuth server says goes to the technician's terminal too.
        assert_eq!(
            shown("https://x/\x1b]0;owned\x07verify"),
            "https://x/ ]0;owned verify"
        );
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
        let status = |code| HttpError::Status {
            code,
            message: String::new(),
            retry_after: None,
        };
        assert!(HttpError::Transport("refused".into())
            .retry_hint()
            .is_some());
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
