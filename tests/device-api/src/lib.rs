//! A loopback double of the factory registration API (`DEVICE_API`).
//!
//! It speaks the wire contract documented in the repository's
//! `docs/device-api.md` for real: it verifies the CSR (signature, algorithm,
//! subject, requested extensions), signs a client certificate with a test CA
//! (root → intermediate → leaf), builds `sota.toml` from a base plus the
//! request's overrides, and runs the OAuth device flow. Tests can script
//! misbehaviour with [`Reply`].
//!
//! [`azure_dps`] holds the doubles of Azure IoT Hub DPS and of the factory
//! endpoint that issues its device certificates.
//!
//! The server runs its own tokio runtime on a background thread, so plain
//! synchronous tests (that spawn the agent with `std::process::Command`) can
//! use it. Dropping the [`DeviceApi`] stops it and closes every connection.
//!
//! # Answers
//!
//! * `HEAD` anything → 200, empty body. Other non-`POST` methods → 405.
//! * `POST <oauth_base>/authorization/device/` and `POST <oauth_base>/token/`
//!   → the OAuth device flow; JSON answers, errors as 400 `{"error": "..."}`
//!   (`invalid_request`, `invalid_scope`, `unsupported_grant_type`,
//!   `invalid_grant`, `authorization_pending`).
//! * `POST` anywhere else is a registration, answered per the next [`Reply`].
//!   The checks of the signing replies, in order, with their plain-text bodies:
//!   - 401 `invalid token`: the token must be the whole value of some header
//!     other than `Authorization`, or `Authorization: Bearer X` with X =
//!     base64(token), an OAuth access token, or base64(access token);
//!   - 400 `Content-Type must be application/json`;
//!   - 400 `missing field '<f>'`, `field '<f>' must be a string`,
//!     `field 'use-ostree-server' must be a JSON boolean`,
//!     `field 'overrides.<s>.<k>' must be a string holding a TOML value`;
//!   - 400 `group not supported` (only with [`Options::reject_group`]);
//!   - 400 `invalid CSR: …`, `CSR must be signed with ECDSA-SHA256, …`,
//!     `CSR key must be an EC P-256 key`, `CSR signature does not verify: …`,
//!     `CSR common name (<cn>) must be the device uuid <uuid>`,
//!     `Invalid factory(<ou>) must be <factory>`,
//!     `CSR must request keyUsage digitalSignature, marked critical`,
//!     `CSR must request extendedKeyUsage clientAuth, marked critical`;
//!   - 400 `overrides: <s>.<k> is not a TOML value: <literal>`;
//!   - 409 `device with uuid <uuid> already exists` (unless it is the same
//!     key again and [`Options::idempotent_retries`] is on);
//!   - 201 `application/json` `{"root.crt", "client.pem", "client.chained", "sota.toml"}`.
//! * With [`Options::capacity`], a registration beyond the cap is answered
//!   at once with 503 `busy` and `Retry-After`; the others wait the service
//!   time first, then go through the checks above.
//!
//! ```no_run
//! use device_api::{DeviceApi, Options, Reply};
//!
//! let api = DeviceApi::start(Options::default());
//! api.push_replies([Reply::Status {
//!     code: 503,
//!     body: "try later".into(),
//!     content_type: "text/plain",
//!     retry_after: Some("1".into()),
//! }]);
//! // run the agent with DEVICE_API=api.url() ...
//! assert_eq!(api.registrations().len(), 1);
//! ```

pub mod azure_dps;
#[cfg(test)]
mod azure_dps_tests;
mod csr;
mod listen;
pub mod losant;
mod oauth;
mod pki;
mod registration;
mod server;
mod sota_toml;
#[cfg(test)]
mod tests;
pub mod tii;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

pub use losant::{Losant, LosantDevice, LosantOptions, LosantReply};

/// How the double behaves. Build with `Options { tls: true, ..Default::default() }`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Expected OU in the CSR subject.
    pub factory: String,
    /// Expected API token.
    pub token: String,
    /// Serve HTTPS with a certificate for `127.0.0.1` and `localhost` issued
    /// by a separate test "server CA" (see [`DeviceApi::server_ca_pem`]).
    pub tls: bool,
    /// Answer a registration that carries `group` with 400 "group not
    /// supported", as the reference server does. When false, accept and record it.
    pub reject_group: bool,
    /// A repeated registration with the same uuid *and* the same public key
    /// (a client retrying after a lost answer) gets a fresh 201 instead of
    /// 409, without creating a second device. When false, every repeat is 409.
    pub idempotent_retries: bool,
    /// What to do once the scripted queue is empty.
    pub default_reply: Reply,
    /// Reserve the port but only start listening after this long: until then
    /// connections are refused (the socket is bound but not listening).
    pub refuse_connections_for: Option<Duration>,
    /// How many polls of the OAuth token endpoint answer
    /// `authorization_pending` before the access token is issued.
    pub oauth_pending_polls: u32,
    /// Where to listen: `127.0.0.1` and an ephemeral port by default. The
    /// first-boot test listens on a veth address inside a network namespace
    /// of its own (the address may be on a link that is still down).
    pub listen: SocketAddr,
    /// A small server under a production line: at most this many
    /// registrations at a time, each taking a while; every registration
    /// beyond that is answered at once with 503 and `Retry-After`. `None`:
    /// no limit, no service time.
    pub capacity: Option<Capacity>,
    /// Accept `"true"`/`"false"` strings for `use-ostree-server`: the C++
    /// `lmp-device-register` sends every JSON value as a string, and the
    /// reference server takes that. Only for comparing with it.
    pub accept_string_booleans: bool,
}

/// See [`Options::capacity`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Registrations served at once.
    pub concurrent: usize,
    /// How long each one takes before it is answered.
    pub service_time: Duration,
    /// The `Retry-After` of the 503 beyond the cap, verbatim.
    pub retry_after: String,
}

/// How loaded the double was (see [`DeviceApi::load`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Most requests being handled at the same moment (of any kind).
    pub peak_requests_in_flight: usize,
    /// Most registrations in service at the same moment (at most
    /// [`Capacity::concurrent`]).
    pub peak_in_service: usize,
    /// Registrations refused with 503 for lack of capacity.
    pub refused_for_capacity: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            factory: "demo-factory".into(),
            token: "demo-token".into(),
            tls: false,
            reject_group: false,
            idempotent_retries: true,
            default_reply: Reply::Sign,
            refuse_connections_for: None,
            oauth_pending_polls: 2,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            capacity: None,
            accept_string_booleans: false,
        }
    }
}

/// One scripted answer to a `POST` registration request.
///
/// Variants that answer 201 with certificates (`Sign`, `WrongKeyCert`,
/// `ExtraFile`, `NonStringValue`, `ExpiredCert`, `ForeignChain`, `BadToml`,
/// `Oversized`) first validate the request exactly like `Sign` (auth, body,
/// CSR, duplicate uuid) and record the registration, since the real API has
/// created the device by the time it answers. The others (`Status`,
/// `Garbage`, `Redirect`, `Hang`) answer without looking at the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Verify the request, sign the CSR and answer 201 with the four files.
    Sign,
    /// Answer `code` with `body` and `content_type`; `retry_after` sets the
    /// `Retry-After` header verbatim (seconds or an HTTP-date).
    Status {
        code: u16,
        body: String,
        content_type: &'static str,
        retry_after: Option<String>,
    },
    /// 201 with a body that is not JSON (although labelled application/json).
    Garbage,
    /// 201, but `client.pem` (and `client.chained`) certify a freshly
    /// generated key instead of the CSR's.
    WrongKeyCert,
    /// 201 signed normally plus one more entry `name` → `content`.
    ExtraFile { name: String, content: String },
    /// 201 signed normally, except that `root.crt` is the JSON number 12345.
    NonStringValue,
    /// 201 with a client certificate whose validity ended yesterday.
    ExpiredCert,
    /// 201 whose `client.pem` / `client.chained` come from a CA that
    /// `root.crt` does not vouch for.
    ForeignChain,
    /// 201 with a `sota.toml` that does not parse.
    BadToml,
    /// 201 signed normally, with `sota.toml` padded by TOML comments so the
    /// JSON body is about this many bytes.
    Oversized(usize),
    /// 307 to the given `Location`.
    Redirect(String),
    /// Read the request, then say nothing for this long, then drop the connection.
    Hang(Duration),
    /// Verify, sign and record the registration like `Sign`, then drop the
    /// connection without answering: the device exists, and the client
    /// never learns it (a lost answer).
    SignThenDrop,
    /// Wait, then do the inner reply.
    Delay(Duration, Box<Reply>),
}

/// A request as the double saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// The URI path, without the query.
    pub path: String,
    /// Header names are lower case; values are decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Recorded {
    pub(crate) fn new(parts: &hyper::http::request::Parts, body: &[u8]) -> Recorded {
        Recorded {
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            headers: listen::header_pairs(&parts.headers),
            body: body.to_vec(),
            at: Instant::now(),
        }
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        listen::find_header(&self.headers, name)
    }
}

/// A registration that the double answered with a 201 and certificates.
#[derive(Clone, Debug)]
pub struct Registration {
    pub uuid: String,
    pub name: String,
    /// The CSR's OU.
    pub factory: String,
    /// The CSR carried `businessCategory=production`.
    pub production: bool,
    pub hardware_id: String,
    pub group: Option<String>,
    /// The request's `overrides`, as sent (`Value::Null` when absent).
    pub overrides: serde_json::Value,
    pub use_ostree_server: bool,
    pub sota_config_dir: String,
    /// The CSR's SubjectPublicKeyInfo, DER.
    pub public_key_spki_der: Vec<u8>,
    /// The `client.pem` last sent back (an idempotent retry gets a new one).
    pub client_pem: String,
    /// The whole JSON object last sent back.
    pub response: serde_json::Value,
}

/// A running double. Stops when dropped.
pub struct DeviceApi {
    shared: Arc<server::Shared>,
    addr: SocketAddr,
    _server: listen::Background,
}

impl DeviceApi {
    /// Starts the double on [`Options::listen`] (`127.0.0.1` and an
    /// ephemeral port unless told otherwise).
    ///
    /// Panics if the runtime, the socket or the test PKI cannot be set up:
    /// this is test tooling, and there is nothing sensible to recover.
    pub fn start(opts: Options) -> DeviceApi {
        let runtime = listen::runtime("device-api");
        let socket = if opts.listen.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .expect("device-api: socket");
        socket
            .bind(opts.listen)
            .unwrap_or_else(|e| panic!("device-api: bind {}: {e}", opts.listen));
        let addr = socket.local_addr().expect("device-api: local_addr");

        let scheme = if opts.tls { "https" } else { "http" };
        let shared = Arc::new(server::Shared::new(&opts, format!("{scheme}://{addr}")));
        let tls = opts.tls.then(|| shared.pki.tls_acceptor());

        // Listen before returning, so a test can connect at once; unless
        // asked to refuse connections for a while.
        let listener = match opts.refuse_connections_for {
            Some(delay) => server::Listener::Later(socket, delay),
            None => {
                let _runtime = runtime.enter();
                server::Listener::Now(
                    socket
                        .listen(server::LISTEN_BACKLOG)
                        .expect("device-api: listen"),
                )
            }
        };

        let server = server::run(listener, tls, shared.clone());
        DeviceApi {
            shared,
            addr,
            _server: listen::Background::run("device-api", runtime, server),
        }
    }

    /// The socket address the double listens on (or will listen on).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn origin(&self) -> String {
        self.shared.origin.clone()
    }

    /// The registration endpoint, e.g. `http://127.0.0.1:PORT/ota/devices/`.
    pub fn url(&self) -> String {
        format!("{}/ota/devices/", self.shared.origin)
    }

    /// The OAuth base, e.g. `http://127.0.0.1:PORT/oauth`.
    pub fn oauth_base(&self) -> String {
        format!("{}/oauth", self.shared.origin)
    }

    /// Root of the device-certificate CA: what is sent back as `root.crt`.
    pub fn root_ca_pem(&self) -> String {
        self.shared.pki.root_pem()
    }

    /// The intermediate CA that signs client certificates.
    pub fn intermediate_ca_pem(&self) -> String {
        self.shared.pki.intermediate_pem()
    }

    /// The CA that issued the HTTPS server certificate (the agent's `--cacert`).
    pub fn server_ca_pem(&self) -> String {
        self.shared.pki.server_ca_pem()
    }

    /// Queues scripted replies: each `POST` registration request consumes
    /// one; once the queue is empty, `Options::default_reply` applies.
    pub fn push_replies(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state().replies.extend(replies);
    }

    /// Scripted replies not consumed yet.
    pub fn pending_replies(&self) -> usize {
        self.state().replies.len()
    }

    /// Every request seen, in order, including `HEAD` and OAuth requests.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    /// Registrations answered with a 201 and certificates, in order.
    pub fn registrations(&self) -> Vec<Registration> {
        self.state().registrations.clone()
    }

    /// The `uuid` of every registration request received, in order (also
    /// of those refused or not answered).
    pub fn posted_uuids(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .filter_map(|body| body["uuid"].as_str().map(str::to_string))
            .collect()
    }

    /// Peak load so far (see [`Options::capacity`]).
    pub fn load(&self) -> Load {
        self.state().load.peak
    }

    fn state(&self) -> MutexGuard<'_, server::State> {
        self.shared.state()
    }
}
