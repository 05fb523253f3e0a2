//! Every profile for the power-loss test and the fault sweep: its services
//! (the loopback doubles), a fresh device for it, the agent's command for a
//! first boot, and what the services and the device hold. Needs
//! `mod common;` and `mod losant_support;` beside it.
#![allow(dead_code)]

use crate::common::{self, FACTORY, HWID, TOKEN};
use crate::losant_support::Board;
use device_api::azure_dps::{AzureDps, DpsOptions};
use device_api::tii::{TiiFleet, TiiOptions, PAYLOAD_SECRETS};
use device_api::{DeviceApi, Losant, LosantOptions, Options};
use powercut::Node;
use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

pub const AGENT: &str = env!("CARGO_BIN_EXE_lmp-device-register");

/// The journal of a registration in progress, by its name in the state dir.
pub const JOURNAL: &str = ".lmp-device-register.pending";

/// The services' counters at one moment; what they did between two marks
/// is [`Rig::activity`].
pub type Mark = Vec<usize>;

/// What the services did between two marks.
#[derive(Default, Debug)]
pub struct Activity {
    /// Requests of any kind the services received.
    pub requests: usize,
    /// Identities the fleet came to hold (registered, enrolled, assigned).
    pub held: BTreeSet<String>,
    /// The service gave the answer that completes a registration (the one
    /// the journal records).
    pub answered: bool,
}

/// One profile's services and devices.
pub trait Rig {
    fn name(&self) -> String;
    /// The state dir, relative to /var.
    fn state_dir(&self) -> &'static str;
    /// A new device: its root (everything but /var, which is mounted on
    /// `var` in it) and its /var.
    fn new_device(&self) -> (tempfile::TempDir, Node);
    /// The agent's first-boot command for the device at `root`, without
    /// `--retry-deadline`.
    fn command(&self, root: &Path) -> Command;
    fn mark(&self) -> Mark;
    fn activity(&self, from: &Mark, to: &Mark) -> Activity;
    /// A string every answer of the service carries and nothing else the
    /// agent writes to its journal: a journal write that holds it is an
    /// answer record.
    fn answer_marker(&self) -> String;
    /// The id of the complete registration `var` holds, or what is wrong.
    fn registered(&self, var: &Node) -> Result<String, String>;
    /// Whether the service gives its answer for an identity only once (a
    /// rerun is refused), so that an answer lost before it was recorded is
    /// lost for good.
    fn answers_once(&self) -> bool;
    /// Identities the fleet holds for a new device before its first boot.
    fn held_before(&self) -> BTreeSet<String> {
        BTreeSet::new()
    }
}

/// The agent with a clean environment, for the device at `root`, with
/// `--boot`; fioconfig is not on PATH. The caller adds `--retry-deadline`.
fn agent(root: &Path) -> Command {
    let mut cmd = Command::new(AGENT);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .arg("--root")
        .arg(root)
        .arg("--boot")
        .stdin(std::process::Stdio::null());
    cmd
}

/// /var of a fresh device: `lib` and `lock` exist, the state dirs do not.
fn fresh_var() -> Node {
    let mut var = Node::dir(0o755);
    var.put("lib", Node::dir(0o755));
    var.put("lock", Node::dir(0o755));
    var
}

fn listing(var: &Node, dir: &str) -> Vec<String> {
    var.names(dir)
        .into_iter()
        .map(|name| {
            let mode = var.get(&format!("{dir}/{name}")).unwrap().mode();
            format!("{name} {mode:o}")
        })
        .collect()
}

fn text(var: &Node, path: &str) -> Result<String, String> {
    let bytes = var.file(path).ok_or_else(|| format!("no {path}"))?;
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{path} is not text"))
}

/// The files of a registration, exactly (no journal, no temporary file).
fn expect_files(var: &Node, dir: &str, expected: &[&str]) -> Result<(), String> {
    let found = listing(var, dir);
    if found != expected {
        return Err(format!("{dir} holds {found:?}"));
    }
    Ok(())
}

/// The first certificate of a PEM chain: its common name and SPKI.
fn leaf(pem: &str) -> Result<(String, Vec<u8>), String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&block.contents).map_err(|e| e.to_string())?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or("no common name")?
        .to_string();
    Ok((cn, cert.public_key().raw.to_vec()))
}

/// The SPKI of a PEM private key (EC or RSA).
fn spki_of_key(pem: &str) -> Result<Vec<u8>, String> {
    let key = rcgen::KeyPair::from_pem(pem).map_err(|e| format!("key: {e}"))?;
    Ok(rcgen::PublicKeyData::subject_public_key_info(&key))
}

/// A line of a certificate's base64 body: it appears verbatim in a JSON
/// record that holds the certificate.
fn cert_marker(pem: &str) -> Option<String> {
    pem.lines().nth(1).map(str::to_string)
}

/// The factory registration API of LmP; `strict`: a known uuid is refused
/// with 409, as the Foundries API does; otherwise the same key gets its
/// certificate again.
pub struct Lmp {
    api: DeviceApi,
    strict: bool,
}

impl Lmp {
    pub fn new(strict: bool) -> Lmp {
        Lmp {
            api: DeviceApi::start(Options {
                idempotent_retries: !strict,
                ..Options::default()
            }),
            strict,
        }
    }
}

impl Rig for Lmp {
    fn name(&self) -> String {
        match self.strict {
            true => "lmp (409 server)".into(),
            false => "lmp (idempotent server)".into(),
        }
    }

    fn state_dir(&self) -> &'static str {
        "sota"
    }

    fn new_device(&self) -> (tempfile::TempDir, Node) {
        let root = tempfile::tempdir().unwrap();
        common::write_file(
            &root.path().join("etc/lmp-device-register-token"),
            &format!("{TOKEN}\n"),
            0o600,
        );
        (root, fresh_var())
    }

    fn command(&self, root: &Path) -> Command {
        let mut cmd = agent(root);
        cmd.args(["--device-api", &self.api.url(), "-f", FACTORY, "-t", "main"])
            .args(["-i", HWID, "--start-daemon", "0"]);
        cmd
    }

    fn mark(&self) -> Mark {
        vec![self.api.requests().len(), self.api.registrations().len()]
    }

    fn activity(&self, from: &Mark, to: &Mark) -> Activity {
        let registrations = &self.api.registrations()[from[1]..to[1]];
        Activity {
            requests: to[0] - from[0],
            held: registrations.iter().map(|r| r.uuid.clone()).collect(),
            answered: !registrations.is_empty(),
        }
    }

    fn answer_marker(&self) -> String {
        // root.crt, in every answer.
        cert_marker(&self.api.root_ca_pem()).unwrap()
    }

    fn registered(&self, var: &Node) -> Result<String, String> {
        let names: Vec<&str> = common::REGISTERED_SOFTWARE.to_vec();
        expect_files(var, "sota", &names)?;
        let (uuid, certified) = leaf(&text(var, "sota/client.pem")?)?;
        if spki_of_key(&text(var, "sota/pkey.pem")?)? != certified {
            return Err("pkey.pem does not match client.pem".into());
        }
        Ok(uuid)
    }

    fn answers_once(&self) -> bool {
        self.strict
    }
}

/// Losant: credentials handed out once per manufacturer id.
pub struct LosantRig {
    losant: Losant,
    /// Each device gets an address of its own, so its manufacturer id is new.
    devices: Cell<u32>,
}

impl LosantRig {
    pub fn new() -> LosantRig {
        LosantRig {
            losant: Losant::start(LosantOptions::default()),
            devices: Cell::new(0),
        }
    }
}

impl Rig for LosantRig {
    fn name(&self) -> String {
        "losant".into()
    }

    fn state_dir(&self) -> &'static str {
        "lib/losant"
    }

    fn new_device(&self) -> (tempfile::TempDir, Node) {
        let n = self.devices.get() + 1;
        self.devices.set(n);
        let board = Board::bare();
        board.write_token(&self.losant.token());
        board.interface("lo", 1, "00:00:00:00:00:00", false);
        let mac = format!(
            "aa:bb:{:02x}:{:02x}:{:02x}:01",
            n >> 16,
            (n >> 8) & 0xff,
            n & 0xff
        );
        board.interface("eth0", 2, &mac, true);
        (board.root, fresh_var())
    }

    fn command(&self, root: &Path) -> Command {
        let mut cmd = agent(root);
        cmd.args(["--profile", "losant"]);
        cmd
    }

    fn mark(&self) -> Mark {
        vec![self.losant.requests().len(), self.losant.devices().len()]
    }

    fn activity(&self, from: &Mark, to: &Mark) -> Activity {
        let devices = &self.losant.devices()[from[1]..to[1]];
        Activity {
            requests: to[0] - from[0],
            held: devices.iter().map(|d| d.manufacturer_id.clone()).collect(),
            answered: !devices.is_empty(),
        }
    }

    fn answer_marker(&self) -> String {
        "accessSecret".into()
    }

    fn registered(&self, var: &Node) -> Result<String, String> {
        expect_files(var, "lib/losant", &["credentials.json 600"])?;
        let credentials: serde_json::Value =
            serde_json::from_str(&text(var, "lib/losant/credentials.json")?)
                .map_err(|e| format!("credentials.json: {e}"))?;
        let device = self
            .losant
            .devices()
            .into_iter()
            .find(|d| credentials["deviceId"] == d.device_id.as_str())
            .ok_or("credentials.json names no device Losant holds")?;
        if credentials["accessKey"] != device.access_key.as_str()
            || credentials["accessSecret"] != device.access_secret.as_str()
        {
            return Err("credentials.json does not hold the device's key and secret".into());
        }
        Ok(device.manufacturer_id)
    }

    fn answers_once(&self) -> bool {
        true
    }
}

/// TII: the provisioning server, nats-server and a fleet manager that
/// sends its result once.
pub struct Tii {
    fleet: TiiFleet,
}

impl Tii {
    pub fn new() -> Tii {
        Tii {
            fleet: TiiFleet::start(TiiOptions {
                answer_once: true,
                ..TiiOptions::default()
            }),
        }
    }
}

impl Rig for Tii {
    fn name(&self) -> String {
        "tii".into()
    }

    fn state_dir(&self) -> &'static str {
        "lib/fleet-registration"
    }

    fn new_device(&self) -> (tempfile::TempDir, Node) {
        let root = tempfile::tempdir().unwrap();
        common::write_file(
            &root.path().join("etc/lmp-device-register.toml"),
            &format!(
                "profile = \"tii\"\n[tii]\nprovisioning_url = \"{}\"\ndevice_type = \"drone\"\nresult_timeout = 3\n",
                self.fleet.provisioning_url()
            ),
            0o644,
        );
        common::write_file(
            &root.path().join("etc/os-release"),
            "ID=lmp\nVERSION_ID=4.0.20\n",
            0o644,
        );
        (root, fresh_var())
    }

    fn command(&self, root: &Path) -> Command {
        agent(root)
    }

    fn mark(&self) -> Mark {
        vec![
            self.fleet.provisions().len(),
            self.fleet.registrations().len(),
        ]
    }

    fn activity(&self, from: &Mark, to: &Mark) -> Activity {
        let registrations = &self.fleet.registrations()[from[1]..to[1]];
        let registered: BTreeSet<String> = registrations
            .iter()
            .filter(|r| r.problems.is_empty())
            .filter(|r| matches!(r.reply, device_api::tii::FleetReply::Success { .. }))
            .filter_map(|r| r.id.clone())
            .collect();
        Activity {
            requests: (to[0] - from[0]) + (to[1] - from[1]),
            answered: !registered.is_empty(),
            held: registered,
        }
    }

    fn answer_marker(&self) -> String {
        // In registration.json, the fleet manager's payload.
        PAYLOAD_SECRETS[0].into()
    }

    fn registered(&self, var: &Node) -> Result<String, String> {
        let dir = "lib/fleet-registration";
        expect_files(
            var,
            dir,
            &[
                "ca.crt 644",
                "device.crt 644",
                "device.key 600",
                "registration.json 600",
            ],
        )?;
        let (cn, certified) = leaf(&text(var, &format!("{dir}/device.crt"))?)?;
        if spki_of_key(&text(var, &format!("{dir}/device.key"))?)? != certified {
            return Err("device.key does not match device.crt".into());
        }
        let payload: serde_json::Value =
            serde_json::from_str(&text(var, &format!("{dir}/registration.json"))?)
                .map_err(|e| format!("registration.json: {e}"))?;
        if payload != device_api::tii::secret_payload() {
            return Err("registration.json is not the fleet manager's payload".into());
        }
        let id = cn
            .strip_prefix(device_api::tii::CN_PREFIX)
            .and_then(|rest| rest.strip_suffix(device_api::tii::CN_SUFFIX))
            .ok_or_else(|| format!("certificate name {cn}"))?;
        Ok(id.to_string())
    }

    fn answers_once(&self) -> bool {
        true
    }
}

/// Azure DPS and the factory enrolment endpoint. `after_factory`: every
/// device starts from the first stage a factory run stored (its key and
/// certificate), and the first boot registers with DPS; otherwise one boot
/// does both stages.
pub struct Azure {
    dps: AzureDps,
    after_factory: Option<Node>,
}

impl Azure {
    pub fn new(after_factory: bool) -> Azure {
        let dps = AzureDps::start(DpsOptions {
            enable_at_factory: true,
            polls_before_assigned: 0,
            // Polling is not what this test is about: no waits for it.
            decide_on_register: true,
            ..DpsOptions::default()
        });
        let mut rig = Azure {
            dps,
            after_factory: None,
        };
        if after_factory {
            rig.after_factory = Some(rig.factory_stage());
        }
        rig
    }

    fn configure(&self, root: &Path, endpoint: &str) {
        let etc = root.join("etc");
        common::write_file(
            &etc.join("dps-server-ca.pem"),
            &self.dps.server_ca_pem(),
            0o644,
        );
        common::write_file(
            &etc.join("factory-ca.pem"),
            &self.dps.device_root_pem(),
            0o644,
        );
        common::write_file(
            &etc.join("lmp-device-register.toml"),
            &format!(
                "profile = \"azure-dps\"\n\n[azure-dps]\nid_scope = \"{}\"\nendpoint = \"{endpoint}\"\nenrol_url = \"{}\"\ncacert = \"{}\"\nfactory_ca = \"{}\"\n",
                self.dps.id_scope(),
                self.dps.enrol_url(),
                etc.join("dps-server-ca.pem").display(),
                etc.join("factory-ca.pem").display(),
            ),
            0o644,
        );
    }

    /// A factory run on a plain directory, with DPS out of reach: the first
    /// stage alone.
    fn factory_stage(&self) -> Node {
        let root = tempfile::tempdir().unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let unreachable = format!("https://{}", closed.local_addr().unwrap());
        drop(closed);
        self.configure(root.path(), &unreachable);
        std::fs::create_dir_all(root.path().join("var/lib")).unwrap();
        let run = Command::new(AGENT)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .arg("--root")
            .arg(root.path())
            .args(["--retry-deadline", "1"])
            .output()
            .unwrap();
        assert_eq!(
            run.status.code(),
            Some(5),
            "factory stage: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let mut var = Node::read_dir(&root.path().join("var")).unwrap();
        var.put("lock", Node::dir(0o755));
        assert_eq!(
            listing(&var, "lib/azure-dps"),
            ["device.crt 644", "device.key 600"]
        );
        var
    }

    /// The registration id the factory issued for the first stage.
    pub fn factory_id(&self) -> Option<String> {
        let var = self.after_factory.as_ref()?;
        leaf(&text(var, "lib/azure-dps/device.crt").ok()?)
            .ok()
            .map(|(cn, _)| cn)
    }
}

impl Rig for Azure {
    fn name(&self) -> String {
        match self.after_factory {
            Some(_) => "azure-dps (first boot after the factory stage)".into(),
            None => "azure-dps (both stages in one boot)".into(),
        }
    }

    fn state_dir(&self) -> &'static str {
        "lib/azure-dps"
    }

    fn new_device(&self) -> (tempfile::TempDir, Node) {
        let root = tempfile::tempdir().unwrap();
        self.configure(root.path(), &self.dps.endpoint());
        (root, self.after_factory.clone().unwrap_or_else(fresh_var))
    }

    fn command(&self, root: &Path) -> Command {
        agent(root)
    }

    fn mark(&self) -> Mark {
        vec![
            self.dps.requests().len(),
            self.dps.issued().len(),
            self.dps.assignments().len(),
        ]
    }

    fn activity(&self, from: &Mark, to: &Mark) -> Activity {
        let requests = &self.dps.requests()[from[0]..to[0]];
        let issued = &self.dps.issued()[from[1]..to[1]];
        let assigned = &self.dps.assignments()[from[2]..to[2]];
        Activity {
            requests: requests.len(),
            held: issued
                .iter()
                .map(|i| i.registration_id.clone())
                .chain(assigned.iter().map(|a| a.registration_id.clone()))
                .collect(),
            answered: !assigned.is_empty(),
        }
    }

    fn answer_marker(&self) -> String {
        // In assignment.json.
        "assignedHub".into()
    }

    fn registered(&self, var: &Node) -> Result<String, String> {
        let dir = "lib/azure-dps";
        expect_files(
            var,
            dir,
            &["assignment.json 644", "device.crt 644", "device.key 600"],
        )?;
        let (id, certified) = leaf(&text(var, &format!("{dir}/device.crt"))?)?;
        if spki_of_key(&text(var, &format!("{dir}/device.key"))?)? != certified {
            return Err("device.key does not match device.crt".into());
        }
        let assignment: serde_json::Value =
            serde_json::from_str(&text(var, &format!("{dir}/assignment.json"))?)
                .map_err(|e| format!("assignment.json: {e}"))?;
        if assignment["deviceId"] != id.as_str() {
            return Err(format!("assignment.json is for {}", assignment["deviceId"]));
        }
        if let Some(factory) = &self.after_factory {
            for name in ["device.crt", "device.key"] {
                let path = format!("{dir}/{name}");
                if var.file(&path) != factory.file(&path) {
                    return Err(format!("{name} is not the factory's"));
                }
            }
        }
        Ok(id)
    }

    fn answers_once(&self) -> bool {
        false
    }

    fn held_before(&self) -> BTreeSet<String> {
        self.factory_id().into_iter().collect()
    }
}
