//! Step 2: the device registers itself with the fleet manager over NATS,
//! proving itself with the certificate it just got (mutual TLS):
//! subscribe to `device_results.<id>.register`, then publish the
//! registration to `device_actions.<id>.register` and wait for the result.

use super::config::NatsUrl;
use crate::retry::{Again, Retryable};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// The registration message (camelCase, as the fleet manager reads it);
/// optional fields are left out when unset.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct RegisterMessage<'a> {
    pub id: &'a str,
    pub device_type: &'a str,
    pub architecture: &'a str,
    pub build_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_owner: Option<&'a str>,
    #[serde(rename = "tailscaleID", skip_serializing_if = "Option::is_none")]
    pub tailscale_id: Option<&'a str>,
    /// The device certificate (PEM).
    pub certificate: &'a str,
    /// The CA that issued it (PEM).
    pub ca_certificate: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<&'a str>,
}

/// The fleet manager's answer on `device_results.<id>.register`.
#[derive(Deserialize)]
struct ResultMessage {
    status: String,
    #[serde(default)]
    payload: Option<serde_json::Value>,
    #[serde(default)]
    alias: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// A registration the fleet manager accepted.
pub struct Registered {
    /// The result's payload; older fleet managers put secrets in it.
    pub payload: serde_json::Value,
    pub alias: Option<String>,
}

impl fmt::Debug for Registered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Registered(alias {:?})", self.alias)
    }
}

/// How an attempt failed, as far as retrying and the identity are concerned.
#[derive(Debug)]
pub enum NatsError {
    /// No connection came about: nothing was published.
    Connect(String),
    /// The TLS handshake failed: the server is not vouched for by
    /// caCertificate, or it refused the device certificate.
    Tls(String),
    /// The server refused this device (authorization, permissions).
    Refused(String),
    /// The connection broke after the registration went out.
    Transport(String),
    /// The registration went out and no result came within the timeout.
    NoResult(Duration),
    /// The fleet manager answered `failure`.
    Failure(String),
    /// The fleet manager answered that the device is already registered.
    AlreadyRegistered(String),
    /// The result cannot be understood.
    BadResult(String),
    /// The last of several attempts, an earlier one of which the fleet
    /// manager may have acted on.
    AfterUnknown(Box<NatsError>),
}

impl fmt::Display for NatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsError::Connect(why) => write!(f, "cannot reach the NATS server: {why}"),
            NatsError::Tls(why) => write!(f, "TLS with the NATS server failed: {why}"),
            NatsError::Refused(why) => write!(f, "the NATS server refused the device: {why}"),
            NatsError::Transport(why) => write!(f, "the NATS connection broke: {why}"),
            NatsError::NoResult(timeout) => write!(
                f,
                "no result from the fleet manager within {}s",
                timeout.as_secs()
            ),
            NatsError::Failure(why) => write!(f, "the fleet manager refused the device: {why}"),
            NatsError::AlreadyRegistered(why) => write!(f, "the fleet manager says: {why}"),
            NatsError::BadResult(why) => write!(f, "the fleet manager's result is unusable: {why}"),
            NatsError::AfterUnknown(last) => last.fmt(f),
        }
    }
}

impl Retryable for NatsError {
    fn retry_hint(&self) -> Option<Again> {
        match self {
            NatsError::Connect(_) => Some(Again::Unreachable),
            NatsError::Transport(_) | NatsError::NoResult(_) => Some(Again::Backoff(None)),
            NatsError::AfterUnknown(last) => last.retry_hint(),
            _ => None,
        }
    }

    fn may_have_been_received(&self) -> bool {
        matches!(
            self,
            NatsError::Transport(_) | NatsError::NoResult(_) | NatsError::AfterUnknown(_)
        )
    }

    fn after_possibly_received(self) -> Self {
        match self {
            already @ NatsError::AfterUnknown(_) => already,
            last => NatsError::AfterUnknown(Box::new(last)),
        }
    }
}

impl NatsError {
    /// The failure of the last attempt.
    pub fn last(&self) -> &NatsError {
        match self {
            NatsError::AfterUnknown(last) => last,
            other => other,
        }
    }
}

/// What one attempt needs.
pub struct Attempt<'a> {
    pub url: &'a NatsUrl,
    pub tls: &'a rustls::ClientConfig,
    pub id: &'a str,
    pub message: &'a [u8],
    pub connect_timeout: Duration,
    pub result_timeout: Duration,
}

/// `device_actions.<id>.register`
pub fn action_subject(id: &str) -> String {
    format!("device_actions.{id}.register")
}

/// `device_results.<id>.register`
pub fn result_subject(id: &str) -> String {
    format!("device_results.{id}.register")
}

/// An error with its causes, on one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn connect_error(error: async_nats::ConnectError) -> NatsError {
    use async_nats::ConnectErrorKind as Kind;
    let text = chain(&error);
    match error.kind() {
        Kind::Tls => NatsError::Tls(text),
        _ if crate::http::caused_by_tls(&error) => NatsError::Tls(text),
        Kind::AuthorizationViolation | Kind::Authentication => NatsError::Refused(text),
        Kind::ServerParse => NatsError::Refused(format!("bad server address: {text}")),
        Kind::Dns | Kind::TimedOut | Kind::Io | Kind::MaxReconnects => NatsError::Connect(text),
    }
}

/// A server error on the connection: permission violations are final.
fn server_error(error: &async_nats::ServerError) -> NatsError {
    NatsError::Refused(error.to_string())
}

/// One attempt: connect, subscribe, publish, wait for the result.
///
/// The connection trusts only caCertificate (the rustls configuration is
/// ours), but async-nats still reads the system roots on every connect and
/// discards them; a certificate file there that cannot be read fails the
/// connection with a TLS error that names it.
pub async fn register(attempt: Attempt<'_>) -> Result<Registered, NatsError> {
    let (errors_tx, mut errors) = tokio::sync::mpsc::unbounded_channel();
    let options = async_nats::ConnectOptions::new()
        .name(concat!("lmp-device-register/", env!("CARGO_PKG_VERSION")))
        .require_tls(true)
        .tls_client_config(attempt.tls.clone())
        .connection_timeout(attempt.connect_timeout)
        .ignore_discovered_servers()
        .event_callback(move |event| {
            let errors_tx = errors_tx.clone();
            async move {
                match event {
                    async_nats::Event::ServerError(error) => {
                        let _ = errors_tx.send(server_error(&error));
                    }
                    other => tracing::debug!("NATS: {other}"),
                }
            }
        });
    let client = options
        .connect(attempt.url.client_url())
        .await
        .map_err(connect_error)?;
    let outcome = exchange(&client, &attempt, &mut errors).await;
    // Nothing is left to send; the connection ends with this attempt.
    drop(client);
    outcome
}

async fn exchange(
    client: &async_nats::Client,
    attempt: &Attempt<'_>,
    errors: &mut tokio::sync::mpsc::UnboundedReceiver<NatsError>,
) -> Result<Registered, NatsError> {
    let id = attempt.id;
    let mut results = client
        .subscribe(result_subject(id))
        .await
        .map_err(|e| NatsError::Connect(format!("cannot subscribe: {}", chain(&e))))?;
    // The server has the subscription once it answered the flush's PING:
    // a result can no longer slip past before we listen.
    client
        .flush()
        .await
        .map_err(|e| NatsError::Connect(format!("cannot subscribe: {}", chain(&e))))?;
    if let Ok(error) = errors.try_recv() {
        return Err(error);
    }

    let mut headers = async_nats::HeaderMap::new();
    headers.insert("ID", id);
    headers.insert("timestamp", timestamp().as_str());
    client
        .publish_with_headers(action_subject(id), headers, attempt.message.to_vec().into())
        .await
        .map_err(|e| NatsError::Transport(chain(&e)))?;
    client
        .flush()
        .await
        .map_err(|e| NatsError::Transport(chain(&e)))?;
    tracing::info!(
        "published the registration of device {id} to {}; waiting up to {}s for the result",
        action_subject(id),
        attempt.result_timeout.as_secs()
    );

    let wait = async {
        tokio::select! {
            message = results.next() => match message {
                Some(message) => interpret(&message.payload),
                None => Err(NatsError::Transport("the subscription ended".into())),
            },
            Some(error) = errors.recv() => Err(error),
        }
    };
    tokio::time::timeout(attempt.result_timeout, wait)
        .await
        .unwrap_or(Err(NatsError::NoResult(attempt.result_timeout)))
}

/// Now, in RFC 3339 UTC to the second (`2024-09-02T10:26:32Z`).
pub fn timestamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The fleet manager's result: the registration data, or why not.
pub fn interpret(payload: &[u8]) -> Result<Registered, NatsError> {
    // serde's message quotes a string it did not expect, and the result
    // holds the registration's secrets (a fleet manager that encodes its
    // result twice sends all of it as one string): say only where.
    let result: ResultMessage = serde_json::from_slice(payload).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "not the expected shape",
            _ => "not JSON",
        };
        NatsError::BadResult(format!(
            "not the expected JSON: {what} at line {} column {}",
            e.line(),
            e.column()
        ))
    })?;
    match result.status.as_str() {
        "success" => Ok(Registered {
            payload: match result.payload {
                Some(serde_json::Value::Null) | None => serde_json::json!({}),
                Some(payload) => payload,
            },
            alias: result.alias.filter(|a| !a.is_empty()),
        }),
        "failure" => {
            let why = crate::http::server_message(result.error.unwrap_or_default().as_bytes());
            if why.eq_ignore_ascii_case("device already registered") {
                Err(NatsError::AlreadyRegistered(why))
            } else if why.is_empty() {
                Err(NatsError::Failure("no reason given".into()))
            } else {
                Err(NatsError::Failure(why))
            }
        }
        other => Err(NatsError::BadResult(format!(
            "unknown status {:?}",
            crate::http::server_message(other.as_bytes())
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_camel_case_without_unset_fields() {
        let message = RegisterMessage {
            id: "abc",
            device_type: "drone",
            architecture: "arm64",
            build_version: "1.2",
            current_owner: None,
            tailscale_id: Some("ts"),
            certificate: "CERT",
            ca_certificate: "CA",
            alias: None,
        };
        let value = serde_json::to_value(&message).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "id": "abc",
                "deviceType": "drone",
                "architecture": "arm64",
                "buildVersion": "1.2",
                "tailscaleID": "ts",
                "certificate": "CERT",
                "caCertificate": "CA",
            })
        );
    }

    #[test]
    fn results_are_told_apart() {
        let ok = interpret(br#"{"status":"success","payload":{"token":"t"},"alias":"a"}"#).unwrap();
        assert_eq!(ok.payload, serde_json::json!({"token": "t"}));
        assert_eq!(ok.alias.as_deref(), Some("a"));
        let bare = interpret(br#"{"status":"success"}"#).unwrap();
        assert_eq!(bare.payload, serde_json::json!({}));
        assert!(matches!(
            interpret(br#"{"status":"failure","error":"device already registered"}"#),
            Err(NatsError::AlreadyRegistered(_))
        ));
        assert!(matches!(
            interpret(br#"{"status":"failure","error":"unknown device type"}"#),
            Err(NatsError::Failure(why)) if why == "unknown device type"
        ));
        assert!(matches!(
            interpret(br#"{"status":"maybe"}"#),
            Err(NatsError::BadResult(_))
        ));
        assert!(matches!(interpret(b"nope"), Err(NatsError::BadResult(_))));
    }

    /// Found by fuzzing: serde's message quoted the result when it was a
    /// JSON string, as a result encoded twice is, secrets and all.
    #[test]
    fn an_unusable_result_is_not_quoted() {
        let twice = serde_json::to_vec(
            &serde_json::json!({"status": "success", "payload": {"token": "s3cr3t-token"}})
                .to_string(),
        )
        .unwrap();
        for result in [
            twice.as_slice(),
            br#"{"status": "success", "alias": ["s3cr3t-token"]}"#,
        ] {
            let error = interpret(result).err().unwrap().to_string();
            assert!(error.contains("not the expected JSON"), "{error}");
            assert!(!error.contains("s3cr3t"), "{error}");
        }
    }

    #[test]
    fn timestamps_are_rfc_3339_utc_to_the_second() {
        let stamp = timestamp();
        assert_eq!(stamp.len(), "2024-09-02T10:26:32Z".len(), "{stamp}");
        assert!(stamp.ends_with('Z'));
        assert_eq!(&stamp[10..11], "T");
    }

    #[test]
    fn only_transient_failures_are_retried() {
        for retried in [
            NatsError::Connect("refused".into()),
            NatsError::Transport("reset".into()),
            NatsError::NoResult(Duration::from_secs(1)),
        ] {
            assert!(retried.retry_hint().is_some(), "{retried}");
        }
        for last in [
            NatsError::Tls("bad certificate".into()),
            NatsError::Refused("Permissions Violation".into()),
            NatsError::Failure("no".into()),
            NatsError::AlreadyRegistered("device already registered".into()),
            NatsError::BadResult("?".into()),
        ] {
            assert!(last.retry_hint().is_none(), "{last}");
        }
        let after = NatsError::NoResult(Duration::from_secs(1)).after_possibly_received();
        assert!(matches!(after.last(), NatsError::NoResult(_)));
        assert!(after.may_have_been_received());
    }
}
