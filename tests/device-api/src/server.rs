//! Transport and routing: the accept loop, optional TLS, hyper, and the
//! request handlers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;

use crate::listen::{self, HangUp};
use crate::oauth::OAuth;
use crate::pki::Pki;
use crate::{csr, registration, sota_toml, Capacity, Load, Options, Recorded, Registration, Reply};

/// A production line connects all at once; the herd benchmark starts
/// hundreds of agents together.
pub(crate) const LISTEN_BACKLOG: u32 = 1024;

/// Requests larger than this get 413; the agent never sends anything close.
const MAX_REQUEST_BODY: usize = 1 << 20;

type Answer = Response<Full<Bytes>>;

/// Everything the handlers share with the [`crate::DeviceApi`] handle.
pub(crate) struct Shared {
    pub pki: Pki,
    /// `http://127.0.0.1:PORT` or `https://…`.
    pub origin: String,
    factory: String,
    token: String,
    reject_group: bool,
    idempotent_retries: bool,
    default_reply: Reply,
    oauth_pending_polls: u32,
    capacity: Option<Capacity>,
    accept_string_booleans: bool,
    state: Mutex<State>,
}

#[derive(Default)]
pub(crate) struct State {
    pub requests: Vec<Recorded>,
    pub registrations: Vec<Registration>,
    pub replies: VecDeque<Reply>,
    oauth: OAuth,
    pub load: LoadState,
}

#[derive(Default)]
pub(crate) struct LoadState {
    in_flight: usize,
    in_service: usize,
    pub peak: Load,
}

impl Shared {
    pub(crate) fn new(opts: &Options, origin: String) -> Shared {
        Shared {
            pki: Pki::new(&opts.factory).expect("device-api: test PKI"),
            origin,
            factory: opts.factory.clone(),
            token: opts.token.clone(),
            reject_group: opts.reject_group,
            idempotent_retries: opts.idempotent_retries,
            default_reply: opts.default_reply.clone(),
            oauth_pending_polls: opts.oauth_pending_polls,
            capacity: opts.capacity.clone(),
            accept_string_booleans: opts.accept_string_booleans,
            state: Mutex::default(),
        }
    }

    /// Poison-tolerant: a panicking test thread must not hide what was recorded.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) enum Listener {
    Now(TcpListener),
    /// A bound socket that starts listening after the delay: until then the
    /// kernel refuses connections to its port.
    Later(TcpSocket, Duration),
}

/// Serves for as long as the future runs.
pub(crate) async fn run(listener: Listener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let listener = match listener {
        Listener::Now(listener) => listener,
        Listener::Later(socket, delay) => {
            tokio::time::sleep(delay).await;
            socket.listen(LISTEN_BACKLOG).expect("device-api: listen")
        }
    };
    listen::accept(listener, tls, move |connection| {
        serve_connection(connection.stream, shared.clone())
    })
    .await;
}

async fn serve_connection<IO>(io: IO, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
    // Errors here are the client's business (reset, bad request line, our own Hang).
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Counts a request (or an admitted registration) while it is handled,
/// also when hyper drops the handler because the client went away.
struct Occupied<'a> {
    shared: &'a Shared,
    slot: fn(&mut LoadState) -> &mut usize,
}

impl<'a> Occupied<'a> {
    /// Takes a place in `slot` unless `limit` places are taken already.
    fn take(
        shared: &'a Shared,
        slot: fn(&mut LoadState) -> &mut usize,
        peak: fn(&mut Load) -> &mut usize,
        limit: usize,
    ) -> Option<Self> {
        let mut state = shared.state();
        let load = &mut state.load;
        if *slot(load) >= limit {
            return None;
        }
        *slot(load) += 1;
        let now = *slot(load);
        let highest = peak(&mut load.peak);
        *highest = (*highest).max(now);
        Some(Occupied { shared, slot })
    }
}

impl Drop for Occupied<'_> {
    fn drop(&mut self) {
        *(self.slot)(&mut self.shared.state().load) -= 1;
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Answer, HangUp> {
    let _in_flight = Occupied::take(
        &shared,
        |load| &mut load.in_flight,
        |peak| &mut peak.peak_requests_in_flight,
        usize::MAX,
    );
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            shared.record(&parts, Bytes::new());
            return Ok(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
            ));
        }
    };
    shared.record(&parts, body.clone());

    let path = parts.uri.path().trim_end_matches('/');
    match (&parts.method, path) {
        (&Method::HEAD, _) => Ok(empty(StatusCode::OK)),
        (&Method::POST, "/oauth/authorization/device") => {
            let verification_uri = format!("{}/oauth/verify", shared.origin);
            let (code, answer) = shared.state().oauth.authorize_device(
                &body,
                &shared.factory,
                shared.oauth_pending_polls,
                &verification_uri,
            );
            Ok(json(code, &answer))
        }
        (&Method::POST, "/oauth/token") => {
            let (code, answer) = shared.state().oauth.token(&body);
            Ok(json(code, &answer))
        }
        (&Method::POST, _) => match &shared.capacity {
            Some(capacity) => shared.register_within(capacity, &parts, &body).await,
            None => shared.register(&parts, &body).await,
        },
        _ => Ok(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")),
    }
}

impl Shared {
    fn record(&self, parts: &Parts, body: Bytes) {
        self.state().requests.push(Recorded::new(parts, &body));
    }

    /// A registration at a server that serves `capacity.concurrent` at a
    /// time and turns the others away at once.
    async fn register_within(
        &self,
        capacity: &Capacity,
        parts: &Parts,
        body: &[u8],
    ) -> Result<Answer, HangUp> {
        let admitted = Occupied::take(
            self,
            |load| &mut load.in_service,
            |peak| &mut peak.peak_in_service,
            capacity.concurrent,
        );
        let Some(_in_service) = admitted else {
            self.state().load.peak.refused_for_capacity += 1;
            let mut answer = text(StatusCode::SERVICE_UNAVAILABLE, "busy");
            let value = HeaderValue::from_str(&capacity.retry_after)
                .expect("device-api: Retry-After header value");
            answer.headers_mut().insert(RETRY_AFTER, value);
            return Ok(answer);
        };
        tokio::time::sleep(capacity.service_time).await;
        self.register(parts, body).await
    }

    async fn register(&self, parts: &Parts, body: &[u8]) -> Result<Answer, HangUp> {
        let mut reply = {
            let mut state = self.state();
            state
                .replies
                .pop_front()
                .unwrap_or_else(|| self.default_reply.clone())
        };
        loop {
            reply = match reply {
                Reply::Delay(delay, inner) => {
                    tokio::time::sleep(delay).await;
                    *inner
                }
                Reply::Hang(delay) => {
                    tokio::time::sleep(delay).await;
                    return Err(HangUp);
                }
                Reply::Status {
                    code,
                    body,
                    content_type,
                    retry_after,
                } => {
                    let status = StatusCode::from_u16(code).expect("device-api: HTTP status code");
                    let mut answer = with_body(status, content_type, body);
                    if let Some(retry_after) = retry_after {
                        let value = HeaderValue::from_str(&retry_after)
                            .expect("device-api: Retry-After header value");
                        answer.headers_mut().insert(RETRY_AFTER, value);
                    }
                    return Ok(answer);
                }
                Reply::Redirect(location) => {
                    let mut answer = empty(StatusCode::TEMPORARY_REDIRECT);
                    let value = HeaderValue::from_str(&location)
                        .expect("device-api: Location header value");
                    answer.headers_mut().insert(LOCATION, value);
                    return Ok(answer);
                }
                Reply::SignThenDrop => {
                    let _ = self.sign(parts, body, &Reply::Sign);
                    return Err(HangUp);
                }
                Reply::Garbage => {
                    let garbage = "<html><body>502 Bad Gateway</body></html> {\"root.crt\":";
                    return Ok(with_body(StatusCode::CREATED, "application/json", garbage));
                }
                signing => return Ok(self.sign(parts, body, &signing)),
            };
        }
    }

    /// Validates a registration like the real API, then answers per `reply`
    /// (one of the signing variants).
    fn sign(&self, parts: &Parts, body: &[u8], reply: &Reply) -> Answer {
        if !self.authorized(parts) {
            return text(StatusCode::UNAUTHORIZED, "invalid token");
        }
        if !listen::is_json(&parts.headers) {
            return text(
                StatusCode::BAD_REQUEST,
                "Content-Type must be application/json",
            );
        }
        let req = match registration::parse(body, self.accept_string_booleans) {
            Ok(req) => req,
            Err(msg) => return text(StatusCode::BAD_REQUEST, &msg),
        };
        if self.reject_group && req.group.is_some() {
            return text(StatusCode::BAD_REQUEST, "group not supported");
        }
        let csr = match csr::verify(&req.csr, &req.uuid, &self.factory) {
            Ok(csr) => csr,
            Err(msg) => return text(StatusCode::BAD_REQUEST, &msg),
        };
        let sota_toml = match sota_toml::render(
            &req.sota_config_dir,
            &req.hardware_id,
            &self.origin,
            &req.overrides,
        ) {
            Ok(toml) => toml,
            Err(msg) => return text(StatusCode::BAD_REQUEST, &msg),
        };
        let (files, client_pem) =
            match registration::signed_files(&self.pki, &req, &csr, sota_toml, reply) {
                Ok(signed) => signed,
                Err(e) => {
                    let msg = format!("cannot sign: {e:#}");
                    return text(StatusCode::INTERNAL_SERVER_ERROR, &msg);
                }
            };
        let response = Value::Object(files);

        let mut state = self.state();
        if let Some(known) = state.registrations.iter_mut().find(|r| r.uuid == req.uuid) {
            // The same device asking again with the same key is a client that
            // never saw our earlier answer: give it a certificate again. It is
            // a fresh one (new serial), and the one the device keeps, so the
            // record follows it.
            if self.idempotent_retries && known.public_key_spki_der == csr.spki_der {
                known.client_pem = client_pem;
                known.response = response.clone();
                return json(201, &response);
            }
            let msg = format!("device with uuid {} already exists", req.uuid);
            return text(StatusCode::CONFLICT, &msg);
        }
        let answer = json(201, &response);
        state.registrations.push(Registration {
            uuid: req.uuid,
            name: req.name,
            factory: csr.factory,
            production: csr.production,
            hardware_id: req.hardware_id,
            group: req.group,
            overrides: req.overrides_raw,
            use_ostree_server: req.use_ostree_server,
            sota_config_dir: req.sota_config_dir,
            public_key_spki_der: csr.spki_der,
            client_pem,
            response,
        });
        answer
    }

    /// The token in any header, verbatim; or `Authorization: Bearer X` where
    /// X is base64(token), an OAuth access token, or base64 of one.
    fn authorized(&self, parts: &Parts) -> bool {
        parts.headers.iter().any(|(name, value)| {
            let Ok(value) = value.to_str() else {
                return false;
            };
            if *name != AUTHORIZATION {
                return value == self.token;
            }
            let Some(bearer) = value.strip_prefix("Bearer ") else {
                return false;
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(bearer)
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            let oauth = &self.state().oauth;
            decoded.as_deref() == Some(self.token.as_str())
                || oauth.is_access_token(bearer)
                || decoded.is_some_and(|t| oauth.is_access_token(&t))
        })
    }
}

fn with_body(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Answer {
    let mut answer = Response::new(Full::new(body.into()));
    *answer.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(content_type) {
        answer.headers_mut().insert(CONTENT_TYPE, value);
    }
    answer
}

fn empty(status: StatusCode) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::new()));
    *answer.status_mut() = status;
    answer
}

fn text(status: StatusCode, body: &str) -> Answer {
    with_body(status, "text/plain; charset=utf-8", body.to_owned())
}

fn json(code: u16, value: &Value) -> Answer {
    let status = StatusCode::from_u16(code).expect("device-api: HTTP status code");
    with_body(status, "application/json", value.to_string())
}
