//! The claims of the registration token, read without verifying it.
//!
//! The token is an HS256 JWT signed with a secret only the Losant application
//! holds, so the device cannot check the signature; Losant does, when the
//! token comes back in the registration request. The device only needs the
//! registration URL the application put in the `url` claim (and `iss`, to
//! say in the log which application issued it). Nothing here ever quotes the
//! token itself.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use serde_json::{Map, Value};

/// RFC 7515 uses base64url without padding; padded tokens exist in the wild
/// and cost nothing to accept.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What the device reads from the registration token.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// The registration endpoint.
    pub url: Option<String>,
    /// The issuer (the application).
    pub iss: Option<String>,
}

/// Decodes the header and the payload of a compact JWT. The errors describe
/// the token's shape, never its content.
pub fn unverified_claims(token: &str) -> Result<Claims, String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts.as_slice() else {
        return Err(format!(
            "not a JWT: expected three dot-separated parts, found {}",
            parts.len()
        ));
    };
    if signature.is_empty() {
        return Err("not a JWT: the signature part is empty".into());
    }
    let header = json_object(header, "header")?;
    match header.get("alg").and_then(Value::as_str) {
        Some(alg) if !alg.eq_ignore_ascii_case("none") => {}
        _ => return Err("the JWT header names no signature algorithm".into()),
    }
    let payload = json_object(payload, "payload")?;
    Ok(Claims {
        url: string_claim(&payload, "url")?,
        iss: string_claim(&payload, "iss")?,
    })
}

fn json_object(part: &str, what: &str) -> Result<Map<String, Value>, String> {
    let bytes = BASE64URL
        .decode(part)
        .map_err(|_| format!("not a JWT: its {what} is not base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(format!("not a JWT: its {what} is not a JSON object")),
    }
}

fn string_claim(payload: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match payload.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) if !value.trim().is_empty() => Ok(Some(value.trim().into())),
        Some(Value::String(_)) => Ok(None),
        Some(_) => Err(format!("the JWT's {name} claim is not a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn token(header: &str, payload: &str) -> String {
        format!(
            "{}.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn reads_url_and_issuer() {
        let claims = unverified_claims(&token(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"url":"https://app.onlosant.com/api/register-device","iss":"app-1","sub":3}"#,
        ))
        .unwrap();
        assert_eq!(
            claims.url.as_deref(),
            Some("https://app.onlosant.com/api/register-device")
        );
        assert_eq!(claims.iss.as_deref(), Some("app-1"));
        let bare = unverified_claims(&token(r#"{"alg":"HS256"}"#, "{}")).unwrap();
        assert_eq!(bare, Claims::default());
    }

    #[test]
    fn padded_parts_are_accepted() {
        let header = base64::engine::general_purpose::URL_SAFE.encode(r#"{"alg":"HS256"}"#);
        let payload = base64::engine::general_purpose::URL_SAFE.encode(r#"{"url":"https://x"}"#);
        let claims = unverified_claims(&format!("{header}.{payload}.c2ln")).unwrap();
        assert_eq!(claims.url.as_deref(), Some("https://x"));
    }

    #[test]
    fn malformed_tokens_are_described_without_their_content() {
        let secretish = "s3cr3t-looking-part";
        for (bad, expected) in [
            (secretish.to_string(), "three dot-separated parts"),
            (format!("{secretish}.{secretish}.x"), "not base64url"),
            (
                token(r#"{"alg":"HS256"}"#, "[1]"),
                "payload is not a JSON object",
            ),
            (token("null", "{}"), "header is not a JSON object"),
            (token(r#"{"alg":"none"}"#, "{}"), "no signature algorithm"),
            (token(r#"{"typ":"JWT"}"#, "{}"), "no signature algorithm"),
            (
                token(r#"{"alg":"HS256"}"#, r#"{"url":7}"#),
                "url claim is not a string",
            ),
            (
                format!(
                    "{}.{}.",
                    URL_SAFE_NO_PAD.encode("{}"),
                    URL_SAFE_NO_PAD.encode("{}")
                ),
                "signature part is empty",
            ),
        ] {
            let err = unverified_claims(&bad).unwrap_err();
            assert!(err.contains(expected), "{err} should say {expected}");
            assert!(!err.contains(secretish), "{err}");
        }
    }
}
