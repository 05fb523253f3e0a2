//! A loopback double of a Losant application built from the "Dynamic
//! Registration" template (docs/losant.md is the contract).
//!
//! It keeps the template's contract for real: the registration JWT is
//! verified (HS256 with the application's secret, and its issuer), a
//! manufacturer id is registered at most once, and the answers are the
//! template's:
//!
//! * `POST /api/register-device` with `Content-Type: application/json` and
//!   `{"token": "<JWT>", "manufacturerId": "<id>"}`, checked in this order:
//!   - 403 `{"error": "Missing manufacturerId field."}`: no JSON body (the
//!     endpoint only parses `application/json`), or no non-empty string
//!     `manufacturerId`;
//!   - 403 `{"error": "Invalid registration token"}`: `token` missing, not
//!     signed HS256 with the secret, or with another issuer;
//!   - 403 `{"error": "Device already registered."}`: the manufacturer id has
//!     a device already;
//!   - 200 `{"deviceId", "accessKey", "accessSecret"}`, fresh random strings.
//! * Another path: 404 `{"error": "Not found"}`; another method: 405.
//!
//! Tests script failures with [`LosantReply`]; the replies other than
//! `Register` and `RegisterThenHangUp` answer without looking at the request.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};

use crate::listen::{self, HangUp};
use crate::pki::{random_hex, random_uuid, Pki};
use crate::Recorded;

/// Where the template's experience endpoint listens.
pub const REGISTER_PATH: &str = "/api/register-device";

const MAX_REQUEST_BODY: usize = 1 << 20;

/// How the double behaves.
#[derive(Clone, Debug)]
pub struct LosantOptions {
    /// The application's JWT secret.
    pub secret: String,
    /// The `iss` claim the application puts in its tokens.
    pub issuer: String,
    /// Serve HTTPS with a certificate for `127.0.0.1` and `localhost` from a
    /// test CA (see [`Losant::server_ca_pem`]).
    pub tls: bool,
    /// What to do once the scripted queue is empty.
    pub default_reply: LosantReply,
}

impl Default for LosantOptions {
    fn default() -> Self {
        LosantOptions {
            secret: "losant-app-secret-9c41d7e2".into(),
            issuer: "losant-app-5f0c3a52".into(),
            tls: false,
            default_reply: LosantReply::Register,
        }
    }
}

/// One scripted answer to a registration request.
#[derive(Clone, Debug)]
pub enum LosantReply {
    /// Verify and answer per the contract.
    Register,
    /// Verify and register the device, then drop the connection without an
    /// answer: the credentials are lost on the way.
    RegisterThenHangUp,
    /// Answer `code` with `body` (`application/json`); `retry_after` sets the
    /// `Retry-After` header verbatim.
    Status {
        code: u16,
        body: String,
        retry_after: Option<String>,
    },
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with this JSON.
    Json(Value),
    /// 200 with the three strings, padded by another field to about this
    /// many bytes.
    Oversized(usize),
}

/// A device the application holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LosantDevice {
    pub manufacturer_id: String,
    pub device_id: String,
    pub access_key: String,
    pub access_secret: String,
}

struct Shared {
    pki: Pki,
    origin: String,
    secret: String,
    issuer: String,
    default_reply: LosantReply,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    devices: Vec<LosantDevice>,
    replies: VecDeque<LosantReply>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running double. Stops when dropped.
pub struct Losant {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _server: listen::Background,
}

impl Losant {
    /// Starts the double on `127.0.0.1` and an ephemeral port. Panics when it
    /// cannot: this is test tooling.
    pub fn start(opts: LosantOptions) -> Losant {
        let runtime = listen::runtime("losant");
        let listener = {
            let _runtime = runtime.enter();
            let socket = tokio::net::TcpSocket::new_v4().expect("losant: socket");
            socket
                .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                .expect("losant: bind 127.0.0.1");
            socket.listen(128).expect("losant: listen")
        };
        let addr = listener.local_addr().expect("losant: local_addr");
        let scheme = if opts.tls { "https" } else { "http" };
        let shared = Arc::new(Shared {
            pki: Pki::new("losant").expect("losant: test PKI"),
            origin: format!("{scheme}://{addr}"),
            secret: opts.secret,
            issuer: opts.issuer,
            default_reply: opts.default_reply,
            state: Mutex::default(),
        });
        let tls = opts.tls.then(|| shared.pki.tls_acceptor());
        let task_shared = shared.clone();
        let server = listen::accept(listener, tls, move |connection| {
            serve(TokioIo::new(connection.stream), task_shared.clone())
        });
        Losant {
            shared,
            addr,
            _server: listen::Background::run("losant", runtime, server),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The registration endpoint, e.g. `http://127.0.0.1:PORT/api/register-device`.
    pub fn url(&self) -> String {
        format!("{}{REGISTER_PATH}", self.shared.origin)
    }

    /// The CA that issued the HTTPS server certificate.
    pub fn server_ca_pem(&self) -> String {
        self.shared.pki.server_ca_pem()
    }

    /// A registration token as the application issues it: its issuer and
    /// this double's URL in the `url` claim.
    pub fn token(&self) -> String {
        self.token_for(&self.url())
    }

    /// A valid token whose `url` claim is `url`.
    pub fn token_for(&self, url: &str) -> String {
        let claims = json!({"iss": self.shared.issuer, "url": url});
        self.token_with(&claims, &self.shared.secret)
    }

    /// Any HS256 token: these claims, signed with `secret`.
    pub fn token_with(&self, claims: &Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("losant: sign a JWT")
    }

    /// The application's issuer.
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    /// Queues scripted replies, one per registration request.
    pub fn push_replies(&self, replies: impl IntoIterator<Item = LosantReply>) {
        self.shared.state().replies.extend(replies);
    }

    /// Every request seen, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.state().requests.clone()
    }

    /// The `manufacturerId` of every request that carried one, in order.
    pub fn requested_ids(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .filter_map(|body| body["manufacturerId"].as_str().map(str::to_string))
            .collect()
    }

    /// The devices the application holds, in the order they were made.
    pub fn devices(&self) -> Vec<LosantDevice> {
        self.shared.state().devices.clone()
    }

    /// A device made earlier (by another device, or by hand in Losant).
    pub fn add_device(&self, manufacturer_id: &str) -> LosantDevice {
        let device = new_device(manufacturer_id);
        self.shared.state().devices.push(device.clone());
        device
    }
}

fn new_device(manufacturer_id: &str) -> LosantDevice {
    LosantDevice {
        manufacturer_id: manufacturer_id.into(),
        // Losant ids are 24 hex digits; keys are UUIDs; secrets 64 hex digits.
        device_id: random_hex(12),
        access_key: random_uuid(),
        access_secret: random_hex(32),
    }
}

async fn serve<IO>(io: IO, shared: Arc<Shared>)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

type Answer = Response<Full<Bytes>>;

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Answer, HangUp> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(error(413, "Request body too large")),
    };
    shared.state().requests.push(Recorded::new(&parts, &body));
    if parts.uri.path() != REGISTER_PATH {
        return Ok(error(404, "Not found"));
    }
    if parts.method != Method::POST {
        return Ok(error(405, "Method not allowed"));
    }
    let reply = shared
        .state()
        .replies
        .pop_front()
        .unwrap_or_else(|| shared.default_reply.clone());
    let json_body = listen::is_json(&parts.headers);
    match reply {
        LosantReply::Register => Ok(shared.register(json_body, &body)),
        LosantReply::RegisterThenHangUp => {
            let answer = shared.register(json_body, &body);
            if answer.status() == StatusCode::OK {
                Err(HangUp)
            } else {
                Ok(answer)
            }
        }
        LosantReply::Status {
            code,
            body,
            retry_after,
        } => {
            let mut answer = with_body(code, "application/json", body);
            if let Some(value) = retry_after {
                let value = HeaderValue::from_str(&value).expect("losant: Retry-After");
                answer.headers_mut().insert(RETRY_AFTER, value);
            }
            Ok(answer)
        }
        LosantReply::Garbage => Ok(with_body(
            200,
            "application/json",
            "<html><body>502 Bad Gateway</body></html>".to_string(),
        )),
        LosantReply::Json(value) => Ok(with_body(200, "application/json", value.to_string())),
        LosantReply::Oversized(size) => {
            let device = new_device("oversized");
            let answer = json!({
                "deviceId": device.device_id,
                "accessKey": device.access_key,
                "accessSecret": device.access_secret,
                "padding": "x".repeat(size),
            });
            Ok(with_body(200, "application/json", answer.to_string()))
        }
    }
}

impl Shared {
    /// The template's workflow.
    fn register(&self, json_body: bool, body: &[u8]) -> Answer {
        let request: Value = if json_body {
            serde_json::from_slice(body).unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        let manufacturer_id = match request.get("manufacturerId") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            _ => return error(403, "Missing manufacturerId field."),
        };
        let token = request.get("token").and_then(Value::as_str).unwrap_or("");
        if !self.verifies(token) {
            return error(403, "Invalid registration token");
        }
        let mut state = self.state();
        if state
            .devices
            .iter()
            .any(|d| d.manufacturer_id == manufacturer_id)
        {
            return error(403, "Device already registered.");
        }
        let device = new_device(&manufacturer_id);
        state.devices.push(device.clone());
        let answer = json!({
            "deviceId": device.device_id,
            "accessKey": device.access_key,
            "accessSecret": device.access_secret,
        });
        with_body(200, "application/json", answer.to_string())
    }

    /// HS256 with the application's secret and its issuer; the template's
    /// tokens carry no expiry.
    fn verifies(&self, token: &str) -> bool {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["iss"]);
        validation.validate_exp = false;
        let key = DecodingKey::from_secret(self.secret.as_bytes());
        jsonwebtoken::decode::<Value>(token, &key, &validation).is_ok()
    }
}

fn with_body(code: u16, content_type: &str, body: String) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = StatusCode::from_u16(code).expect("losant: HTTP status");
    if let Ok(value) = HeaderValue::from_str(content_type) {
        answer.headers_mut().insert(CONTENT_TYPE, value);
    }
    answer
}

fn error(code: u16, message: &str) -> Answer {
    with_body(
        code,
        "application/json",
        json!({ "error": message }).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// One HTTP/1.1 exchange over plain TCP: (status, JSON body).
    fn post(losant: &Losant, path: &str, content_type: &str, body: &str) -> (u16, Value) {
        let mut tcp = std::net::TcpStream::connect(losant.addr()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            tcp,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = String::new();
        tcp.read_to_string(&mut raw).unwrap();
        let status = raw[9..12].parse().unwrap();
        let json = raw.split("\r\n\r\n").nth(1).unwrap_or_default();
        (status, serde_json::from_str(json).unwrap_or(Value::Null))
    }

    fn register(losant: &Losant, token: &str, id: &str) -> (u16, Value) {
        let body = json!({"token": token, "manufacturerId": id}).to_string();
        post(losant, REGISTER_PATH, "application/json", &body)
    }

    #[test]
    fn registers_a_manufacturer_id_once() {
        let losant = Losant::start(LosantOptions::default());
        let (status, answer) = register(&losant, &losant.token(), "aa:bb:cc:dd:ee:ff");
        assert_eq!(status, 200, "{answer}");
        let devices = losant.devices();
        assert_eq!(devices.len(), 1);
        assert_eq!(answer["deviceId"], devices[0].device_id.as_str());
        assert_eq!(answer["accessKey"], devices[0].access_key.as_str());
        assert_eq!(answer["accessSecret"], devices[0].access_secret.as_str());
        assert_eq!(devices[0].device_id.len(), 24);

        let (status, answer) = register(&losant, &losant.token(), "aa:bb:cc:dd:ee:ff");
        assert_eq!(
            (status, answer),
            (403, json!({"error": "Device already registered."}))
        );
        assert_eq!(losant.devices().len(), 1);
    }

    #[test]
    fn refuses_tokens_of_another_application() {
        let losant = Losant::start(LosantOptions::default());
        let url = losant.url();
        let invalid = json!({"error": "Invalid registration token"});
        let other_secret = losant.token_with(&json!({"iss": losant.issuer(), "url": url}), "x");
        let other_issuer = losant.token_with(
            &json!({"iss": "another-app", "url": url}),
            &LosantOptions::default().secret,
        );
        let no_issuer = losant.token_with(&json!({"url": url}), &LosantOptions::default().secret);
        for token in [
            other_secret.as_str(),
            &other_issuer,
            &no_issuer,
            "",
            "a.b.c",
        ] {
            assert_eq!(
                register(&losant, token, "id-1"),
                (403, invalid.clone()),
                "{token}"
            );
        }
        assert!(losant.devices().is_empty());
    }

    #[test]
    fn wants_a_json_manufacturer_id() {
        let losant = Losant::start(LosantOptions::default());
        let missing = (403, json!({"error": "Missing manufacturerId field."}));
        let token = losant.token();
        for body in [
            json!({"token": token}),
            json!({"token": token, "manufacturerId": ""}),
            json!({"token": token, "manufacturerId": 7}),
        ] {
            let sent = post(
                &losant,
                REGISTER_PATH,
                "application/json",
                &body.to_string(),
            );
            assert_eq!(sent, missing, "{body}");
        }
        let form = json!({"token": token, "manufacturerId": "id"}).to_string();
        assert_eq!(post(&losant, REGISTER_PATH, "text/plain", &form), missing);
        assert_eq!(
            post(&losant, "/api/other", "application/json", &form).0,
            404
        );
        assert!(losant.devices().is_empty());
    }

    #[test]
    fn scripted_replies_come_first() {
        let losant = Losant::start(LosantOptions::default());
        losant.push_replies([LosantReply::Status {
            code: 503,
            body: "{}".into(),
            retry_after: None,
        }]);
        assert_eq!(register(&losant, &losant.token(), "id").0, 503);
        assert_eq!(register(&losant, &losant.token(), "id").0, 200);
        assert_eq!(losant.requested_ids(), ["id", "id"]);
    }
}
