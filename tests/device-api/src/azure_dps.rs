//! A loopback double of Azure IoT Hub Device Provisioning Service (the
//! device side of its REST API, X.509 attestation) and of the factory
//! enrolment endpoint that issues device certificates (docs/azure-dps.md).
//!
//! # DPS (`AzureDps::endpoint`)
//!
//! HTTPS that completes the handshake only with a client certificate chained
//! to the device root ([`AzureDps::device_root_pem`]). Then, in order:
//! - a scripted [`DpsReply`] that fits the request answers it;
//! - 404 `{"errorCode":404001,"message":"ID scope not found"}` for another ID scope;
//! - 401 `{"errorCode":401002,"message":"Invalid certificate"}` when the
//!   certificate's common name is not the registration id of the path, or
//!   its key is not the one the enrollment holds;
//! - 400 without `api-version`, or (`PUT`) without a JSON body whose
//!   `registrationId` is the path's;
//! - 401 `{"errorCode":401002,"message":"Unauthorized"}` without an enrollment;
//! - `PUT …/{idScope}/registrations/{id}/register` → 202
//!   `{"operationId","status":"assigning"}` (with `Retry-After` when
//!   [`DpsOptions::retry_after`] is set), or the decision at once with
//!   [`DpsOptions::decide_on_register`];
//! - `GET …/registrations/{id}/operations/{operationId}` → 404 for an
//!   unknown operation; 202 `assigning` for the first
//!   [`DpsOptions::polls_before_assigned`] polls; then 200 with the decision,
//!   taken from the enrollment as it is at that moment: `disabled`, or
//!   `assigned` with `registrationState` (`assignedHub`, `deviceId` = the
//!   registration id, `substatus`, `createdDateTimeUtc`, and the request's
//!   `payload` echoed as a custom allocation policy would).
//!
//! # Factory enrolment (`AzureDps::enrol_url`)
//!
//! HTTPS without client certificates. `POST` `{"registrationId","csr"}`:
//! the CSR must be a P-256 ECDSA-SHA256 request whose signature verifies,
//! with the registration id as its only common name and keyUsage
//! digitalSignature / extendedKeyUsage clientAuth requested (400 with a
//! plain-text reason otherwise). The same id with another key is 409; the
//! same key again is issued again. Answer: 201 `{"certificate": leaf +
//! intermediate}`, and the device is entered in the DPS enrollment table
//! with its key, disabled unless [`DpsOptions::enable_at_factory`].

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::SubjectPublicKeyInfo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::csr;
use crate::listen;
use crate::pki::{random_hex, Issuance, Pki, Subject};

const MAX_REQUEST_BODY: usize = 1 << 20;

type Answer = Response<Full<Bytes>>;

#[derive(Clone, Debug)]
pub struct DpsOptions {
    pub id_scope: String,
    pub assigned_hub: String,
    /// How many polls answer `assigning` before DPS decides.
    pub polls_before_assigned: u32,
    /// `Retry-After` on `assigning` answers.
    pub retry_after: Option<String>,
    /// The factory enters each device it issues a certificate for in the
    /// enrollment table.
    pub enroll_at_factory: bool,
    /// ... enabled (otherwise disabled, until [`AzureDps::set_enrollment`]).
    pub enable_at_factory: bool,
    /// The OU of the certificates the factory issues.
    pub factory: String,
    /// Decide at the `PUT` already (200 with the decision, as if its first
    /// poll had come at once), so that a test about something other than
    /// polling does not wait for one.
    pub decide_on_register: bool,
}

impl Default for DpsOptions {
    fn default() -> Self {
        DpsOptions {
            id_scope: "0ne00000A0A".into(),
            assigned_hub: "test-hub.azure-devices.net".into(),
            polls_before_assigned: 1,
            retry_after: Some("1".into()),
            enroll_at_factory: true,
            enable_at_factory: false,
            factory: "demo-factory".into(),
            decide_on_register: false,
        }
    }
}

/// A scripted answer, taken by the next request it fits.
#[derive(Clone, Debug, PartialEq)]
pub enum DpsReply {
    /// Any request: this status, JSON body and `Retry-After`.
    Status {
        code: u16,
        body: Value,
        retry_after: Option<String>,
    },
    /// A poll: the operation ends with status `failed`.
    Failed { error_code: i64, message: String },
    /// A poll: 404, as if DPS had lost the operation.
    UnknownOperation,
}

impl DpsReply {
    fn fits(&self, poll: bool) -> bool {
        matches!(self, DpsReply::Status { .. }) || poll
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Dps,
    Factory,
}

/// A request as the double saw it, with what it answered.
#[derive(Clone, Debug)]
pub struct DpsRequest {
    pub service: Service,
    pub method: String,
    pub path: String,
    pub query: String,
    /// The common name of the client certificate (DPS only).
    pub client_cn: Option<String>,
    pub body: Vec<u8>,
    pub at: Instant,
    /// The HTTP status and, for operation answers, the DPS status
    /// (`"202 assigning"`, `"200 disabled"`, `"429"`).
    pub outcome: String,
}

/// A device DPS assigned to a hub.
#[derive(Clone, Debug)]
pub struct DpsAssignment {
    pub registration_id: String,
    pub assigned_hub: String,
    pub payload: Option<Value>,
    /// The SubjectPublicKeyInfo (DER) of the certificate it registered with.
    pub spki_der: Vec<u8>,
}

/// A certificate the factory issued.
#[derive(Clone, Debug)]
pub struct Issued {
    pub registration_id: String,
    pub spki_der: Vec<u8>,
    pub certificate: String,
}

#[derive(Clone, Debug)]
struct Enrollment {
    enabled: bool,
    /// The key an individual enrollment was made for; `None` accepts any
    /// certificate from the device CA (as an enrollment group does).
    spki_der: Option<Vec<u8>>,
}

struct Operation {
    registration_id: String,
    polls_left: u32,
    payload: Option<Value>,
    decided: Option<Value>,
}

#[derive(Default)]
struct State {
    retry_after: Option<String>,
    requests: Vec<DpsRequest>,
    enrollments: HashMap<String, Enrollment>,
    operations: HashMap<String, Operation>,
    replies: VecDeque<DpsReply>,
    assignments: Vec<DpsAssignment>,
    issued: Vec<Issued>,
}

struct Shared {
    pki: Pki,
    options: DpsOptions,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running doubles (DPS and the factory). Stop when dropped.
pub struct AzureDps {
    shared: Arc<Shared>,
    dps: SocketAddr,
    factory: SocketAddr,
    _server: listen::Background,
}

impl AzureDps {
    pub fn start(options: DpsOptions) -> AzureDps {
        let runtime = listen::runtime("azure-dps");
        let shared = Arc::new(Shared {
            pki: Pki::new(&options.factory).expect("azure-dps: test PKI"),
            state: Mutex::new(State {
                retry_after: options.retry_after.clone(),
                ..State::default()
            }),
            options,
        });
        let bind = |runtime: &tokio::runtime::Runtime| {
            let _entered = runtime.enter();
            let std = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                .expect("azure-dps: bind 127.0.0.1");
            std.set_nonblocking(true).expect("azure-dps: nonblocking");
            TcpListener::from_std(std).expect("azure-dps: listener")
        };
        let (dps_listener, factory_listener) = (bind(&runtime), bind(&runtime));
        let dps = dps_listener.local_addr().expect("azure-dps: address");
        let factory = factory_listener.local_addr().expect("azure-dps: address");
        let dps_tls = shared.pki.tls_acceptor_for_devices();
        let factory_tls = shared.pki.tls_acceptor();

        let dps_server = serve(dps_listener, dps_tls, Service::Dps, shared.clone());
        let factory_server = serve(
            factory_listener,
            factory_tls,
            Service::Factory,
            shared.clone(),
        );
        let server = async move {
            tokio::join!(dps_server, factory_server);
        };
        AzureDps {
            shared,
            dps,
            factory,
            _server: listen::Background::run("azure-dps", runtime, server),
        }
    }

    /// `https://127.0.0.1:PORT`, the DPS `endpoint`.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.dps)
    }

    /// `https://127.0.0.1:PORT/enrol`, the factory's `enrol_url`.
    pub fn enrol_url(&self) -> String {
        format!("https://{}/enrol", self.factory)
    }

    pub fn id_scope(&self) -> &str {
        &self.shared.options.id_scope
    }

    /// The CA of both HTTPS server certificates (the agent's `cacert`).
    pub fn server_ca_pem(&self) -> String {
        self.shared.pki.server_ca_pem()
    }

    /// The root of the device certificates (the agent's `factory_ca`; DPS
    /// trusts it for client certificates).
    pub fn device_root_pem(&self) -> String {
        self.shared.pki.root_pem()
    }

    /// Enters or changes an enrollment; one made here accepts any
    /// certificate from the device CA, one the factory made keeps its key.
    pub fn set_enrollment(&self, registration_id: &str, enabled: bool) {
        self.shared
            .state()
            .enrollments
            .entry(registration_id.to_string())
            .and_modify(|e| e.enabled = enabled)
            .or_insert(Enrollment {
                enabled,
                spki_der: None,
            });
    }

    /// `Some(enabled)` for an enrolled registration id.
    pub fn enrollment(&self, registration_id: &str) -> Option<bool> {
        self.shared
            .state()
            .enrollments
            .get(registration_id)
            .map(|e| e.enabled)
    }

    /// Changes [`DpsOptions::retry_after`] from now on.
    pub fn set_retry_after(&self, retry_after: Option<&str>) {
        self.shared.state().retry_after = retry_after.map(str::to_string);
    }

    pub fn push_replies(&self, replies: impl IntoIterator<Item = DpsReply>) {
        self.shared.state().replies.extend(replies);
    }

    pub fn pending_replies(&self) -> usize {
        self.shared.state().replies.len()
    }

    /// Every request to either service, in order.
    pub fn requests(&self) -> Vec<DpsRequest> {
        self.shared.state().requests.clone()
    }

    pub fn dps_requests(&self) -> Vec<DpsRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.service == Service::Dps)
            .collect()
    }

    pub fn assignments(&self) -> Vec<DpsAssignment> {
        self.shared.state().assignments.clone()
    }

    /// Certificates the factory issued, in order.
    pub fn issued(&self) -> Vec<Issued> {
        self.shared.state().issued.clone()
    }
}

async fn serve(listener: TcpListener, tls: TlsAcceptor, service: Service, shared: Arc<Shared>) {
    // A client without an acceptable certificate fails in the handshake, as
    // it does with DPS.
    listen::accept(listener, Some(tls), move |connection| {
        let client = connection
            .client_certificate
            .and_then(|leaf| common_name_and_key(&leaf));
        serve_connection(connection.stream, service, client, shared.clone())
    })
    .await;
}

fn common_name_and_key(der: &[u8]) -> Option<(String, Vec<u8>)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some((cn.to_string(), cert.public_key().raw.to_vec()))
}

async fn serve_connection<IO>(
    io: IO,
    service: Service,
    client: Option<(String, Vec<u8>)>,
    shared: Arc<Shared>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handler = hyper::service::service_fn(move |req| {
        let (shared, client) = (shared.clone(), client.clone());
        async move { Ok::<_, std::convert::Infallible>(handle(&shared, service, client, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), handler)
        .await;
}

async fn handle(
    shared: &Shared,
    service: Service,
    client: Option<(String, Vec<u8>)>,
    req: Request<Incoming>,
) -> Answer {
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_REQUEST_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (answer, outcome) = match service {
        Service::Dps => dps(shared, &parts, &body, client.as_ref()),
        Service::Factory => factory(shared, &parts, &body),
    };
    shared.state().requests.push(DpsRequest {
        service,
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        client_cn: client.map(|(cn, _)| cn),
        body: body.to_vec(),
        at: Instant::now(),
        outcome,
    });
    answer
}

fn answer(code: u16, content_type: &str, body: String, retry_after: Option<&str>) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = StatusCode::from_u16(code).expect("azure-dps: status code");
    answer.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("azure-dps: content type"),
    );
    if let Some(value) = retry_after {
        answer.headers_mut().insert(
            RETRY_AFTER,
            HeaderValue::from_str(value).expect("azure-dps: Retry-After"),
        );
    }
    answer
}

/// A DPS error answer, shaped like the service's.
fn dps_error(code: u16, error_code: i64, message: &str) -> (Answer, String) {
    let body = json!({
        "errorCode": error_code,
        "trackingId": random_hex(8),
        "message": message,
        "timestampUtc": utc_now(),
    });
    (
        answer(code, "application/json", body.to_string(), None),
        code.to_string(),
    )
}

fn operation_answer(code: u16, body: Value, retry_after: Option<&str>) -> (Answer, String) {
    let outcome = format!("{code} {}", body["status"].as_str().unwrap_or_default());
    (
        answer(code, "application/json", body.to_string(), retry_after),
        outcome,
    )
}

fn utc_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    )
}

fn dps(
    shared: &Shared,
    parts: &hyper::http::request::Parts,
    body: &[u8],
    client: Option<&(String, Vec<u8>)>,
) -> (Answer, String) {
    let segments: Vec<&str> = parts
        .uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .collect();
    let (scope, registration_id, operation) = match (&parts.method, segments.as_slice()) {
        (&Method::PUT, [scope, "registrations", id, "register"]) => (*scope, *id, None),
        (&Method::GET, [scope, "registrations", id, "operations", op]) => (*scope, *id, Some(*op)),
        _ => return dps_error(404, 404000, "Not found"),
    };
    let poll = operation.is_some();
    let options = &shared.options;

    let scripted = {
        let mut state = shared.state();
        match state.replies.front() {
            Some(reply) if reply.fits(poll) => state.replies.pop_front(),
            _ => None,
        }
    };
    match scripted {
        Some(DpsReply::Status {
            code,
            body,
            retry_after,
        }) => {
            return (
                answer(
                    code,
                    "application/json",
                    body.to_string(),
                    retry_after.as_deref(),
                ),
                code.to_string(),
            )
        }
        Some(DpsReply::UnknownOperation) => {
            return dps_error(404, 404000, "Operation not found");
        }
        Some(DpsReply::Failed { .. }) | None => {}
    }

    if scope != options.id_scope {
        return dps_error(404, 404001, "ID scope not found");
    }
    let Some((cn, spki)) = client.filter(|(cn, _)| cn == registration_id) else {
        return dps_error(401, 401002, "Invalid certificate");
    };
    let api_version = form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "api-version")
        .map(|(_, v)| v.into_owned());
    if api_version.is_none() {
        return dps_error(400, 400001, "api-version is required");
    }
    let enrollment = shared.state().enrollments.get(cn).cloned();
    let Some(enrollment) = enrollment else {
        return dps_error(401, 401002, "Unauthorized");
    };
    if enrollment.spki_der.as_ref().is_some_and(|key| key != spki) {
        return dps_error(401, 401002, "Invalid certificate");
    }

    let Some(operation_id) = operation else {
        let is_json = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let request: Option<Value> = serde_json::from_slice(body).ok();
        let Some(request) = request.filter(|_| is_json) else {
            return dps_error(400, 400004, "the body must be JSON");
        };
        if request["registrationId"].as_str() != Some(registration_id) {
            return dps_error(400, 400004, "registrationId must be the one of the path");
        }
        let operation_id = format!("4.{}.{}", random_hex(8), random_hex(16));
        let mut state = shared.state();
        let retry_after = state.retry_after.clone();
        state.operations.insert(
            operation_id.clone(),
            Operation {
                registration_id: registration_id.to_string(),
                polls_left: options.polls_before_assigned,
                payload: request.get("payload").cloned(),
                decided: None,
            },
        );
        drop(state);
        if !options.decide_on_register {
            return operation_answer(
                202,
                json!({ "operationId": operation_id, "status": "assigning" }),
                retry_after.as_deref(),
            );
        }
        return decide(
            shared,
            &operation_id,
            registration_id,
            None,
            &enrollment,
            spki,
        );
    };

    decide(
        shared,
        operation_id,
        registration_id,
        scripted,
        &enrollment,
        spki,
    )
}

/// The answer to a poll of `operation_id` (or a `PUT` that decides at once).
fn decide(
    shared: &Shared,
    operation_id: &str,
    registration_id: &str,
    scripted: Option<DpsReply>,
    enrollment: &Enrollment,
    spki: &[u8],
) -> (Answer, String) {
    let options = &shared.options;
    let mut state = shared.state();
    let Some(op) = state
        .operations
        .get_mut(operation_id)
        .filter(|op| op.registration_id == registration_id)
    else {
        drop(state);
        return dps_error(404, 404000, "Operation not found");
    };
    if let Some(decided) = &op.decided {
        return operation_answer(200, decided.clone(), None);
    }
    if let Some(DpsReply::Failed {
        error_code,
        message,
    }) = scripted
    {
        let decided = json!({
            "operationId": operation_id,
            "status": "failed",
            "registrationState": {
                "registrationId": registration_id,
                "status": "failed",
                "errorCode": error_code,
                "errorMessage": message,
                "lastUpdatedDateTimeUtc": utc_now(),
            },
        });
        op.decided = Some(decided.clone());
        return operation_answer(200, decided, None);
    }
    if op.polls_left > 0 {
        op.polls_left -= 1;
        let retry_after = state.retry_after.clone();
        return operation_answer(
            202,
            json!({ "operationId": operation_id, "status": "assigning" }),
            retry_after.as_deref(),
        );
    }
    let payload = op.payload.clone();
    let decided = if enrollment.enabled {
        let now = utc_now();
        let mut registration_state = json!({
            "registrationId": registration_id,
            "createdDateTimeUtc": now,
            "assignedHub": options.assigned_hub,
            "deviceId": registration_id,
            "status": "assigned",
            "substatus": "initialAssignment",
            "lastUpdatedDateTimeUtc": now,
            "etag": format!("\"{}\"", random_hex(8)),
        });
        if let Some(payload) = &payload {
            registration_state["payload"] = payload.clone();
        }
        json!({
            "operationId": operation_id,
            "status": "assigned",
            "registrationState": registration_state,
        })
    } else {
        json!({
            "operationId": operation_id,
            "status": "disabled",
            "registrationState": { "registrationId": registration_id, "status": "disabled" },
        })
    };
    op.decided = Some(decided.clone());
    if enrollment.enabled {
        state.assignments.push(DpsAssignment {
            registration_id: registration_id.to_string(),
            assigned_hub: options.assigned_hub.clone(),
            payload,
            spki_der: spki.to_vec(),
        });
    }
    operation_answer(200, decided, None)
}

fn factory(shared: &Shared, parts: &hyper::http::request::Parts, body: &[u8]) -> (Answer, String) {
    let text = |code: u16, message: &str| {
        (
            answer(code, "text/plain; charset=utf-8", message.to_string(), None),
            code.to_string(),
        )
    };
    if parts.method != Method::POST || parts.uri.path() != "/enrol" {
        return text(404, "not found");
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(Value::Object(request)) => Value::Object(request),
        _ => return text(400, "the body must be a JSON object"),
    };
    let (Some(id), Some(pem)) = (request["registrationId"].as_str(), request["csr"].as_str())
    else {
        return text(400, "registrationId and csr must be strings");
    };
    let valid_id = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._:".contains(c));
    if !valid_id {
        return text(400, &format!("{id:?} is not a DPS registration id"));
    }
    let csr = match csr::check_signed(pem) {
        Ok(csr) => csr,
        Err(why) => return text(400, &why),
    };
    if csr.common_names != [id] {
        return text(
            400,
            &format!(
                "CSR common name ({}) must be the registration id {id}",
                csr.common_names.join(",")
            ),
        );
    }
    if let Err(why) = csr.extensions {
        return text(400, &why);
    }

    let mut state = shared.state();
    if let Some(known) = state.issued.iter().find(|i| i.registration_id == id) {
        if known.spki_der != csr.spki_der {
            return text(409, &format!("registration id {id} is already enrolled"));
        }
    }
    let issued = SubjectPublicKeyInfo::from_der(&csr.spki_der)
        .map_err(anyhow::Error::from)
        .and_then(|key| {
            shared.pki.issue_client(
                &Subject {
                    uuid: id,
                    factory: &shared.options.factory,
                    production: false,
                },
                &key,
                Issuance::default(),
            )
        });
    let certificate = match issued {
        Ok(issued) => issued.chained,
        Err(e) => return text(500, &format!("cannot sign: {e:#}")),
    };
    state.issued.push(Issued {
        registration_id: id.to_string(),
        spki_der: csr.spki_der.clone(),
        certificate: certificate.clone(),
    });
    if shared.options.enroll_at_factory {
        let enabled = shared.options.enable_at_factory;
        state
            .enrollments
            .entry(id.to_string())
            .and_modify(|e| e.spki_der = Some(csr.spki_der.clone()))
            .or_insert(Enrollment {
                enabled,
                spki_der: Some(csr.spki_der),
            });
    }
    let body = json!({ "certificate": certificate }).to_string();
    (
        answer(201, "application/json", body, None),
        "201".to_string(),
    )
}
