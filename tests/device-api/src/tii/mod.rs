//! Loopback doubles of TII's fleet management, for the agent's `tii`
//! profile (the contract is in the agent's docs/tii.md):
//!
//! * a **provisioning server** (`POST /api/devices/provision`, on 127.0.0.1,
//!   plain http or https) that checks the CSR and signs it with the fleet's
//!   issuing CA;
//! * a real **nats-server** on 127.0.0.1 with TLS, client certificates
//!   required and mapped to users (`verify_and_map`): a device's
//!   certificate may publish only its own `device_actions.<id>.register` and
//!   subscribe only its own `device_results.<id>.register`;
//! * a **fleet manager** double, a NATS client over mutual TLS subscribed to
//!   `device_actions.*.register`, that checks each registration and answers
//!   as scripted.
//!
//! ```no_run
//! use device_api::tii::{FleetReply, TiiFleet, TiiOptions};
//!
//! let fleet = TiiFleet::start(TiiOptions::default());
//! fleet.push_fleet_replies([FleetReply::Silence]);
//! // run the agent with provisioning_url = fleet.provisioning_url() ...
//! assert_eq!(fleet.registrations().len(), 2);
//! ```

mod fleet_manager;
mod nats_server;
mod pki;
mod provisioning;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};

pub use nats_server::available as nats_server_available;

/// TII's default common name around the device id.
pub const CN_PREFIX: &str = "/Finland~Solita/fleet/";
pub const CN_SUFFIX: &str = "/registration_agent";

/// Secrets in the default success payload; the agent must never print them.
pub const PAYLOAD_SECRETS: [&str; 3] = [
    "tii-token-5ecret-7f3a91",
    "utm-client-5ecret-c40d2e",
    "rabbit-mq-5ecret-9b18f5",
];

/// The payload of the default success result (older fleet managers put
/// secrets in it).
pub fn secret_payload() -> Value {
    json!({
        "token": PAYLOAD_SECRETS[0],
        "utmClientSecret": PAYLOAD_SECRETS[1],
        "rabbitMqSecret": PAYLOAD_SECRETS[2],
        "configuration": {"broker": "amqps://fleet.example:5671"},
    })
}

#[derive(Clone, Debug)]
pub struct TiiOptions {
    /// The common name the CSR must carry: prefix, device id, suffix.
    pub cn_prefix: String,
    pub cn_suffix: String,
    /// Start nats-server at once; when false, [`TiiFleet::start_nats`]
    /// starts it (on the port the provisioning answers name already).
    pub start_nats: bool,
    /// Serve the provisioning API over HTTPS, with a certificate for
    /// 127.0.0.1 issued by the fleet's root ([`TiiFleet::root_ca_pem`]).
    pub provisioning_tls: bool,
    /// Answer a registration of an id that was registered successfully
    /// before with "device already registered", as TII's fleet manager
    /// does: its result (and the payload in it) is sent once.
    pub answer_once: bool,
}

impl Default for TiiOptions {
    fn default() -> Self {
        TiiOptions {
            cn_prefix: CN_PREFIX.into(),
            cn_suffix: CN_SUFFIX.into(),
            start_nats: true,
            provisioning_tls: false,
            answer_once: false,
        }
    }
}

/// One scripted answer of the provisioning server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProvisionReply {
    /// Check the CSR, sign it, answer 200.
    Sign,
    /// Answer `code` with `body`, without looking at the request.
    Status { code: u16, body: String },
    /// Sign with a CA that `caCertificate` does not vouch for.
    ForeignChain,
    /// Sign, and spell the root `ca_certificate` as older servers did.
    SnakeCase,
    /// Sign, and name the NATS server as `127.0.0.1:PORT`.
    HostPortUrl,
}

/// One scripted answer of the fleet manager to a registration.
#[derive(Clone, Debug, PartialEq)]
pub enum FleetReply {
    Success {
        payload: Value,
        alias: Option<String>,
    },
    Failure(String),
    /// `{"status": "failure", "error": "device already registered"}`.
    AlreadyRegistered,
    /// A result that is not JSON.
    Garbage,
    /// No result at all.
    Silence,
}

impl FleetReply {
    /// Success with [`secret_payload`] and an alias.
    pub fn success() -> FleetReply {
        FleetReply::Success {
            payload: secret_payload(),
            alias: Some("drone-7".into()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    EcP256,
    Rsa2048,
}

/// A certificate the provisioning double issued.
#[derive(Clone, Debug)]
pub struct Issued {
    pub id: String,
    pub common_name: String,
    pub key: KeyKind,
    pub leaf_pem: String,
}

/// A request the provisioning double saw.
#[derive(Clone, Debug)]
pub struct Provision {
    pub path: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// What was issued, or why not.
    pub outcome: Result<Issued, String>,
}

impl Provision {
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::listen::find_header(&self.headers, name)
    }
}

/// A registration the fleet manager double received.
#[derive(Clone, Debug)]
pub struct Registration {
    pub subject: String,
    /// The id in the subject.
    pub id: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    /// What the double found wrong (answered with a failure result).
    pub problems: Vec<String>,
    pub reply: FleetReply,
}

#[derive(Default)]
struct State {
    provisions: Vec<Provision>,
    registrations: Vec<Registration>,
    provision_replies: VecDeque<ProvisionReply>,
    fleet_replies: VecDeque<FleetReply>,
}

struct NatsState {
    config: nats_server::NatsConfig,
    process: Option<nats_server::NatsProcess>,
}

/// What the doubles share.
pub(crate) struct Fleet {
    pki: pki::FleetPki,
    cn_template: (String, String),
    answer_once: bool,
    nats_port: u16,
    monitor_port: u16,
    nats: Mutex<NatsState>,
    state: Mutex<State>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fleet {
    fn state(&self) -> MutexGuard<'_, State> {
        locked(&self.state)
    }

    fn next_provision_reply(&self) -> ProvisionReply {
        self.state()
            .provision_replies
            .pop_front()
            .unwrap_or(ProvisionReply::Sign)
    }

    /// The scripted reply to a registration of `id`; with
    /// [`TiiOptions::answer_once`], "already registered" for an id that
    /// succeeded before.
    fn next_fleet_reply(&self, id: Option<&str>) -> FleetReply {
        let mut state = self.state();
        let registered = state.registrations.iter().any(|r| {
            r.id.as_deref() == id
                && r.problems.is_empty()
                && matches!(r.reply, FleetReply::Success { .. })
        });
        if self.answer_once && registered {
            return FleetReply::AlreadyRegistered;
        }
        state
            .fleet_replies
            .pop_front()
            .unwrap_or_else(FleetReply::success)
    }

    /// The device certificate issued last for `id`.
    fn issued_for(&self, id: &str) -> Option<String> {
        self.state()
            .provisions
            .iter()
            .rev()
            .filter_map(|p| p.outcome.as_ref().ok())
            .find(|issued| issued.id == id)
            .map(|issued| issued.leaf_pem.clone())
    }

    /// Lets the certificate subject `CN=<common_name>` in, for `id` only.
    async fn allow_device(&self, common_name: &str, id: &str) {
        tokio::task::block_in_place(|| {
            let mut nats = locked(&self.nats);
            let subject = format!("CN={common_name}");
            if !nats.config.devices.iter().any(|(s, _)| *s == subject) {
                nats.config.devices.push((subject, id.to_string()));
                nats.config.write();
                if let Some(process) = nats.process.as_mut() {
                    process.reload();
                }
            }
        });
    }
}

/// The running doubles. Dropping it stops them (and nats-server).
pub struct TiiFleet {
    fleet: Arc<Fleet>,
    runtime: Option<tokio::runtime::Runtime>,
    provisioning: SocketAddr,
    scheme: &'static str,
    _dir: tempfile::TempDir,
}

/// A port on 127.0.0.1 that nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("tii double: free port")
        .port()
}

impl TiiFleet {
    pub fn start(options: TiiOptions) -> TiiFleet {
        let dir = tempfile::tempdir().expect("tii double: temp dir");
        let pki = pki::FleetPki::new().expect("tii double: PKI");
        let nats_port = free_port();
        let monitor_port = free_port();
        let config =
            nats_server::NatsConfig::new(dir.path().join("nats"), nats_port, monitor_port, &pki);
        let fleet = Arc::new(Fleet {
            pki,
            cn_template: (options.cn_prefix, options.cn_suffix),
            answer_once: options.answer_once,
            nats_port,
            monitor_port,
            nats: Mutex::new(NatsState {
                config,
                process: None,
            }),
            state: Mutex::default(),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tii-double")
            .enable_all()
            .build()
            .expect("tii double: runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .expect("tii double: bind");
        let provisioning = listener.local_addr().expect("tii double: address");
        let tls = options.provisioning_tls.then(|| fleet.pki.tls_acceptor());
        runtime.spawn(provisioning::serve(listener, tls, fleet.clone()));
        let doubles = TiiFleet {
            fleet,
            runtime: Some(runtime),
            provisioning,
            scheme: if options.provisioning_tls {
                "https"
            } else {
                "http"
            },
            _dir: dir,
        };
        if options.start_nats {
            doubles.start_nats();
        }
        doubles
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("tii double: runtime")
    }

    /// Starts nats-server and connects the fleet manager double; returns
    /// once it is subscribed.
    pub fn start_nats(&self) {
        {
            let mut nats = locked(&self.fleet.nats);
            assert!(nats.process.is_none(), "nats-server runs already");
            let process = nats_server::NatsProcess::start(&nats.config);
            nats.process = Some(process);
        }
        let fleet = self.fleet.clone();
        let client = self.runtime().block_on(fleet_manager::connect(&fleet));
        let (subscribed, ready) = tokio::sync::oneshot::channel();
        self.runtime()
            .spawn(fleet_manager::serve(fleet, client, subscribed));
        self.runtime()
            .block_on(ready)
            .expect("the fleet manager double subscribes");
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS), the agent's
    /// `provisioning_url`.
    pub fn provisioning_url(&self) -> String {
        format!("{}://{}", self.scheme, self.provisioning)
    }

    /// `nats://127.0.0.1:PORT`, as the provisioning answers name it.
    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.fleet.nats_port)
    }

    /// The fleet's root (`caCertificate`).
    pub fn root_ca_pem(&self) -> String {
        self.fleet.pki.root_pem()
    }

    /// The CA that signs device certificates.
    pub fn issuing_ca_pem(&self) -> String {
        self.fleet.pki.issuing_pem()
    }

    pub fn push_provision_replies(&self, replies: impl IntoIterator<Item = ProvisionReply>) {
        self.fleet.state().provision_replies.extend(replies);
    }

    pub fn push_fleet_replies(&self, replies: impl IntoIterator<Item = FleetReply>) {
        self.fleet.state().fleet_replies.extend(replies);
    }

    /// Every request the provisioning double saw, in order.
    pub fn provisions(&self) -> Vec<Provision> {
        self.fleet.state().provisions.clone()
    }

    /// The certificates it issued, in order.
    pub fn issued(&self) -> Vec<Issued> {
        self.provisions()
            .into_iter()
            .filter_map(|p| p.outcome.ok())
            .collect()
    }

    /// Every registration the fleet manager double received, in order.
    pub fn registrations(&self) -> Vec<Registration> {
        self.fleet.state().registrations.clone()
    }

    /// The nats-server log, for failure messages.
    pub fn nats_log(&self) -> String {
        let nats = locked(&self.fleet.nats);
        std::fs::read_to_string(nats.config.log()).unwrap_or_default()
    }

    /// The shared state, for tests of the doubles themselves.
    #[cfg(test)]
    pub(crate) fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }
}

impl Drop for TiiFleet {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        locked(&self.fleet.nats).process.take();
    }
}
