//! The OAuth 2.0 device authorization grant (RFC 8628), as the Foundries
//! auth server runs it for `lmp-device-register`.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use crate::pki::random_hex;

const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

#[derive(Debug, Default)]
pub(crate) struct OAuth {
    /// device_code → the pending grant.
    grants: HashMap<String, Grant>,
    access_tokens: HashSet<String>,
}

#[derive(Debug)]
struct Grant {
    client_id: String,
    pending_polls: u32,
}

impl OAuth {
    /// `POST <oauth>/authorization/device/` with form `client_id`, `scope`.
    pub(crate) fn authorize_device(
        &mut self,
        form: &[u8],
        factory: &str,
        pending_polls: u32,
        verification_uri: &str,
    ) -> (u16, Value) {
        let form = Form::parse(form);
        let Some(client_id) = form.get("client_id") else {
            return error("invalid_request");
        };
        if form.get("scope") != Some(&format!("{factory}:devices:create")) {
            return error("invalid_scope");
        }
        let device_code = format!("dc-{}", random_hex(16));
        self.grants.insert(
            device_code.clone(),
            Grant {
                client_id: client_id.clone(),
                pending_polls,
            },
        );
        let answer = json!({
            "device_code": device_code,
            "user_code": "ABCD-1234",
            "verification_uri": verification_uri,
            "expires_in": 60,
            "interval": 1,
        });
        (200, answer)
    }

    /// `POST <oauth>/token/` with form `grant_type`, `device_code`, `client_id`, `scope`.
    pub(crate) fn token(&mut self, form: &[u8]) -> (u16, Value) {
        let form = Form::parse(form);
        if form.get("grant_type").map(String::as_str) != Some(DEVICE_CODE_GRANT) {
            return error("unsupported_grant_type");
        }
        let code = form.get("device_code").cloned().unwrap_or_default();
        let Some(grant) = self.grants.get_mut(&code) else {
            return error("invalid_grant");
        };
        if form.get("client_id") != Some(&grant.client_id) {
            return error("invalid_grant");
        }
        if grant.pending_polls > 0 {
            grant.pending_polls -= 1;
            return error("authorization_pending");
        }
        // A device code is good for one access token.
        self.grants.remove(&code);
        let token = format!("at-{}", random_hex(16));
        self.access_tokens.insert(token.clone());
        (200, json!({"access_token": token, "token_type": "bearer"}))
    }

    pub(crate) fn is_access_token(&self, token: &str) -> bool {
        self.access_tokens.contains(token)
    }
}

fn error(code: &str) -> (u16, Value) {
    (400, json!({ "error": code }))
}

/// An `application/x-www-form-urlencoded` body; the first of repeated keys wins.
struct Form(HashMap<String, String>);

impl Form {
    fn parse(body: &[u8]) -> Form {
        let mut map = HashMap::new();
        for (k, v) in form_urlencoded::parse(body) {
            map.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        Form(map)
    }

    fn get(&self, key: &str) -> Option<&String> {
        self.0.get(key)
    }
}
