//! The registration endpoint of Losant's "Dynamic Registration" application
//! template: `POST {"token", "manufacturerId"}` → 200 `{"deviceId",
//! "accessKey", "accessSecret"}`; every refusal is a 403 `{"error": …}`.

use crate::http::{self, HttpError};
use crate::secret::Secret;
use serde::Serialize;
use serde_json::Value;

/// No credential Losant issues is anywhere near this long; a longer one is
/// not what the template answers.
const MAX_FIELD_CHARS: usize = 1024;

/// The refusal of a manufacturer id Losant already holds a device for.
pub const ALREADY_REGISTERED: &str = "Device already registered.";

#[derive(Serialize)]
struct RegisterRequest<'a> {
    token: &'a str,
    #[serde(rename = "manufacturerId")]
    manufacturer_id: &'a str,
}

/// What Losant hands out, once.
pub struct Credentials {
    pub device_id: String,
    pub access_key: String,
    pub access_secret: Secret,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials({}, {}, [redacted])",
            self.device_id, self.access_key
        )
    }
}

impl Credentials {
    /// The credentials file, in the shape of the template's sample firmware.
    pub fn file_contents(&self) -> Secret {
        let file = serde_json::json!({
            "deviceId": self.device_id,
            "accessKey": self.access_key,
            "accessSecret": self.access_secret.expose(),
        });
        let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
        text.push('\n');
        Secret::new(text)
    }
}

/// POSTs the registration; on 200 returns the raw body.
pub async fn register(
    client: &http::Client,
    url: &reqwest::Url,
    token: &Secret,
    manufacturer_id: &str,
) -> Result<Vec<u8>, HttpError> {
    let request = RegisterRequest {
        token: token.expose(),
        manufacturer_id,
    };
    let response = http::send(client.reqwest().post(url.clone()).json(&request)).await?;
    match response.status {
        200 => Ok(response.body),
        // Not the template's answer; whatever it did, retrying will not help.
        code @ 201..=299 => Err(HttpError::Body(format!(
            "the server answered HTTP {code}, not 200"
        ))),
        _ => Err(response.into_error()),
    }
}

/// Whether the refusal is the template's "already registered" 403.
pub fn is_already_registered(error: &HttpError) -> bool {
    match error {
        HttpError::Status {
            code: 403, message, ..
        } => message.trim().eq_ignore_ascii_case(ALREADY_REGISTERED),
        HttpError::AfterUnknown(last) => is_already_registered(last),
        _ => false,
    }
}

/// The answer as credentials: a JSON object with the three strings, and the
/// names of other members, which are not stored. The errors never quote the
/// answer, which holds a secret.
pub fn parse_credentials(body: &[u8]) -> Result<(Credentials, Vec<String>), String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| format!("the answer is not JSON ({} bytes)", body.len()))?;
    let Value::Object(mut fields) = value else {
        return Err("the answer is not a JSON object".into());
    };
    let mut take = |name: &str| -> Result<String, String> {
        match fields.remove(name) {
            Some(Value::String(text)) => {
                if text.is_empty() {
                    Err(format!("{name} is empty"))
                } else if text.chars().any(char::is_control) {
                    Err(format!("{name} contains control characters"))
                } else if text.chars().count() > MAX_FIELD_CHARS {
                    Err(format!(
                        "{name} is longer than {MAX_FIELD_CHARS} characters"
                    ))
                } else {
                    Ok(text)
                }
            }
            Some(_) => Err(format!("{name} is not a string")),
            None => Err(format!("{name} is missing")),
        }
    };
    let device_id = take("deviceId")?;
    let access_key = take("accessKey")?;
    let access_secret = Secret::new(take("accessSecret")?);
    let credentials = Credentials {
        device_id,
        access_key,
        access_secret,
    };
    Ok((credentials, fields.keys().cloned().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "5e3b1f0d9a7c4e2b8f6a1d3c5e7b9f0a";

    #[test]
    fn the_three_strings_make_credentials() {
        let body = format!(
            r#"{{"deviceId":"64f1c2","accessKey":"key-1","accessSecret":"{SECRET}","extra":1}}"#
        );
        let (credentials, ignored) = parse_credentials(body.as_bytes()).unwrap();
        assert_eq!(ignored, ["extra"]);
        assert_eq!(credentials.device_id, "64f1c2");
        assert_eq!(credentials.access_key, "key-1");
        assert_eq!(credentials.access_secret.expose(), SECRET);
        assert!(!format!("{credentials:?}").contains(SECRET));
        let file: Value = serde_json::from_str(credentials.file_contents().expose()).unwrap();
        assert_eq!(
            file,
            serde_json::json!({"deviceId": "64f1c2", "accessKey": "key-1", "accessSecret": SECRET})
        );
    }

    #[test]
    fn anything_else_is_refused_without_quoting_it() {
        for (body, expected) in [
            format!("<html>{SECRET}</html>"),
            format!("[\"{SECRET}\"]"),
            r#"{"deviceId":"d","accessKey":"k"}"#.to_string(),
            format!(r#"{{"deviceId":"d","accessKey":7,"accessSecret":"{SECRET}"}}"#),
            format!(r#"{{"deviceId":"","accessKey":"k","accessSecret":"{SECRET}"}}"#),
            format!(r#"{{"deviceId":"d\u0007","accessKey":"k","accessSecret":"{SECRET}"}}"#),
            format!(
                r#"{{"deviceId":"{}","accessKey":"k","accessSecret":"{SECRET}"}}"#,
                "d".repeat(1025)
            ),
        ]
        .iter()
        .zip([
            "not JSON",
            "not a JSON object",
            "accessSecret is missing",
            "accessKey is not a string",
            "deviceId is empty",
            "control characters",
            "longer than",
        ]) {
            let err = parse_credentials(body.as_bytes()).unwrap_err();
            assert!(err.contains(expected), "{err} should say {expected}");
            assert!(!err.contains(SECRET), "{err}");
        }
    }

    #[test]
    fn only_the_templates_403_means_already_registered() {
        let refusal = |code, message: &str| HttpError::Status {
            code,
            message: message.into(),
            retry_after: None,
        };
        assert!(is_already_registered(&refusal(
            403,
            "Device already registered."
        )));
        assert!(is_already_registered(&refusal(
            403,
            " device already registered. "
        )));
        assert!(is_already_registered(&HttpError::AfterUnknown(Box::new(
            refusal(403, ALREADY_REGISTERED)
        ))));
        assert!(!is_already_registered(&refusal(
            403,
            "Invalid registration token"
        )));
        assert!(!is_already_registered(&refusal(409, ALREADY_REGISTERED)));
        assert!(!is_already_registered(&HttpError::Transport(
            "reset".into()
        )));
    }
}
