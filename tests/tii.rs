//! The `tii` profile against loopback doubles of TII's fleet management
//! (tests/device-api/src/tii): a provisioning server that checks and signs
//! the CSR, a real nats-server that requires client certificates and lets a
//! device's certificate publish only its own registration subject, and a
//! fleet manager double that checks each registration and answers as
//! scripted. Keys in software and in SoftHSM2, EC and RSA.

#![cfg(feature = "tii")]

mod common;
mod hsm_support;

use common::{listing, write_file, Run};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use device_api::tii::{
    nats_server_available, secret_payload, FleetReply, KeyKind, ProvisionReply, TiiFleet,
    TiiOptions, CN_PREFIX, CN_SUFFIX, PAYLOAD_SECRETS,
};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PIN: &str = "tii-user-pin-4821";
const SO_PIN: &str = "tii-so-pin-9375";
const STATE_DIR: &str = "var/lib/fleet-registration";

/// A device root with a `[tii]` config for `fleet`, and the secrets that no
/// output of the agent may ever contain.
struct TiiDevice {
    root: tempfile::TempDir,
    softhsm_conf: Option<PathBuf>,
    secrets: Vec<String>,
}

impl TiiDevice {
    fn new(fleet: &TiiFleet, extra_config: &str) -> TiiDevice {
        let root = tempfile::tempdir().unwrap();
        let device = TiiDevice {
            root,
            softhsm_conf: None,
            secrets: PAYLOAD_SECRETS.iter().map(|s| s.to_string()).collect(),
        };
        let result_timeout = if extra_config.contains("result_timeout") {
            ""
        } else {
            "result_timeout = 3\n"
        };
        device.write_config(&format!(
            "profile = \"tii\"\n[tii]\nprovisioning_url = \"{}\"\ndevice_type = \"drone\"\n{result_timeout}{extra_config}",
            fleet.provisioning_url()
        ));
        write_file(
            &device.path("etc/os-release"),
            "ID=lmp\nVERSION_ID=4.0.20\n",
            0o644,
        );
        device
    }

    fn write_config(&self, text: &str) {
        write_file(&self.path("etc/lmp-device-register.toml"), text, 0o644);
    }

    /// Keys in a private SoftHSM2 token store, configured by /etc/sota/hsm.
    fn with_softhsm(mut self) -> TiiDevice {
        let tokens = self.path("softhsm-tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = self.path("softhsm2.conf");
        write_file(
            &conf,
            &format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
            0o644,
        );
        write_file(
            &self.path("etc/sota/hsm"),
            &format!(
                "HSM_MODULE={}\nHSM_PIN={PIN}\nHSM_SOPIN={SO_PIN}\n",
                hsm_support::MODULE
            ),
            0o600,
        );
        self.softhsm_conf = Some(conf);
        self.secrets.push(PIN.into());
        self.secrets.push(SO_PIN.into());
        self
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    fn state(&self, name: &str) -> PathBuf {
        self.path(STATE_DIR).join(name)
    }

    fn read_state(&self, name: &str) -> String {
        std::fs::read_to_string(self.state(name)).unwrap()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lmp-device-register"));
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .arg("--root")
            .arg(self.root.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(conf) = &self.softhsm_conf {
            cmd.env("SOFTHSM2_CONF", conf);
        }
        cmd
    }

    /// Runs the agent and checks that it printed none of the secrets, nor
    /// the key or the registration data it stored.
    fn run(&self, args: &[&str]) -> Run {
        let run: Run = self.command(args).output().unwrap().into();
        self.assert_no_secrets(&run);
        run
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.command(args).spawn().unwrap()
    }

    fn finish(&self, child: Child) -> Run {
        let run: Run = child.wait_with_output().unwrap().into();
        self.assert_no_secrets(&run);
        run
    }

    fn assert_no_secrets(&self, run: &Run) {
        let printed = run.output();
        let mut secrets = self.secrets.clone();
        // The stored key and registration data, line by line.
        for name in ["device.key", "registration.json"] {
            if let Ok(text) = std::fs::read_to_string(self.state(name)) {
                secrets.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| l.len() >= 16 && !l.starts_with("-----"))
                        .map(str::to_string),
                );
            }
        }
        for secret in secrets {
            assert!(
                !printed.contains(&secret),
                "the agent printed the secret {secret:?}:\n{run:?}"
            );
        }
    }

    fn state_listing(&self) -> Vec<String> {
        listing(&self.path(STATE_DIR))
            .into_iter()
            .filter(|entry| !entry.starts_with(".lmp-device-register.lock"))
            .collect()
    }
}

/// The JSON object `--json` printed.
fn json_of(run: &Run) -> serde_json::Value {
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

fn skip() -> bool {
    !nats_server_available()
}

/// What a registered device must look like on disk and at the fleet.
fn assert_registered(device: &TiiDevice, fleet: &TiiFleet, run: &Run, kind: KeyKind) -> String {
    run.assert_code(0);
    let issued = fleet.issued();
    let last = issued.last().expect("a certificate was issued");
    assert_eq!(last.key, kind);
    let id = last.id.clone();
    assert_eq!(id.len(), 32, "{id}");
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(last.common_name, format!("{CN_PREFIX}{id}{CN_SUFFIX}"));
    assert_eq!(last.common_name.len(), 73);

    let registrations = fleet.registrations();
    let registration = registrations.last().expect("the fleet manager got it");
    assert!(
        registration.problems.is_empty(),
        "{:?}",
        registration.problems
    );
    assert_eq!(registration.id.as_deref(), Some(id.as_str()));
    assert_eq!(registration.body["deviceType"], "drone");
    assert_eq!(registration.body["buildVersion"], "4.0.20");
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    assert_eq!(registration.body["architecture"], architecture);

    assert_eq!(
        device.read_state("device.crt"),
        format!("{}{}", last.leaf_pem, fleet.issuing_ca_pem())
    );
    assert_eq!(device.read_state("ca.crt"), fleet.root_ca_pem());
    let stored: serde_json::Value =
        serde_json::from_str(&device.read_state("registration.json")).unwrap();
    assert_eq!(stored, secret_payload());
    assert!(!device
        .path(STATE_DIR)
        .join(".lmp-device-register.pending")
        .exists());
    id
}

#[test]
fn a_software_ec_key_registers_over_mutual_tls() {
    if skip() {
        return;
    }
    let fleet = TiiFleet::start(TiiOptions::default());
    let device = TiiDevice::new(&fleet, "current_owner = \"ops\"\nalias = \"my-drone\"\n");
    let run = device.run(&["--json"]);
    let id = assert_registered(&device, &fleet, &run, KeyKind::EcP256);
    run.assert_says(&format!("registered device {id} (drone-7)"));
    assert!(
        run.stderr.contains("is plain http"),
        "plain http must be warned about:\n{run:?}"
    );

    assert_eq!(
        device.state_listing(),
        [
            "ca.crt 644",
            "device.crt 644",
            "device.key 600",
            "registration.json 600"
        ]
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(device.path(STATE_DIR))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(device
        .read_state("device.key")
        .starts_with("-----BEGIN PRIVATE KEY-----"));

    let registration = fleet.registrations().pop().unwrap();
    assert_eq!(registration.body["currentOwner"], "ops");
    assert_eq!(registration.body["alias"], "my-drone");
    assert!(registration.body.get("tailscaleID").is_none());
    assert_eq!(
        registration.subject,
        format!("device_actions.{id}.register")
    );

    let provision = &fleet.provisions()[0];
    assert_eq!(provision.path, "/api/devices/provision");
    assert_eq!(provision.header("content-type"), Some("application/json"));
    assert_eq!(provision.header("authorization"), None);

    let json = json_of(&run);
    assert_eq!(json["status"], "registered");
    assert_eq!(json["profile"], "tii");
    assert_eq!(json["id"], id.as_str());
    assert_eq!(json["alias"], "drone-7");
    assert_eq!(json["nats_url"], fleet.nats_url());
    assert!(json.get("payload").is_none());
}

#[test]
fn a_software_rsa_key_registers_over_mutual_tls() {
    if skip() {
        return;
    }
    // The short name TII's Android client sends, and the older spelling.
    let fleet = TiiFleet::start(TiiOptions {
        cn_prefix: String::new(),
        ..TiiOptions::default()
    });
    fleet.push_provision_replies([ProvisionReply::SnakeCase]);
    let device = TiiDevice::new(
        &fleet,
        "key_type = \"rsa-2048\"\ncn_template = \"{id}/registration_agent\"\ntailscale_id = \"ts-1\"\n",
    );
    let run = device.run(&[]);
    run.assert_code(0);
    let issued = fleet.issued();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].key, KeyKind::Rsa2048);
    assert_eq!(
        issued[0].common_name,
        format!("{}/registration_agent", issued[0].id)
    );
    let registration = fleet.registrations().pop().unwrap();
    assert!(
        registration.problems.is_empty(),
        "{:?}",
        registration.problems
    );
    assert_eq!(registration.body["tailscaleID"], "ts-1");
    // The stored key is the RSA key the certificate is for.
    let key = device.read_state("device.key");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    let der = common::cert_of(&issued[0].leaf_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(
        cert.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION
    );
}

/// The objects the agent left in the `fleet-registration` token.
struct TokenView {
    key_types: Vec<KeyType>,
    private_sensitive: bool,
    certificate: Vec<u8>,
}

fn token_view(device: &TiiDevice) -> TokenView {
    let hsm = hsm_support::open_softhsm(device.softhsm_conf.as_ref().unwrap());
    let session = hsm.login_to("fleet-registration", PIN);
    let find = |class, id: u8| {
        session
            .find_objects(&[
                Attribute::Class(class),
                Attribute::Label(b"device".to_vec()),
                Attribute::Id(vec![id]),
            ])
            .unwrap()
    };
    let private = find(ObjectClass::PRIVATE_KEY, 1);
    let public = find(ObjectClass::PUBLIC_KEY, 1);
    let certificate = find(ObjectClass::CERTIFICATE, 3);
    assert_eq!((private.len(), public.len(), certificate.len()), (1, 1, 1));
    let mut key_types = Vec::new();
    for handle in [private[0], public[0]] {
        for attribute in session
            .get_attributes(handle, &[AttributeType::KeyType])
            .unwrap()
        {
            if let Attribute::KeyType(t) = attribute {
                key_types.push(t);
            }
        }
    }
    let private_sensitive = session
        .get_attributes(
            private[0],
            &[AttributeType::Sensitive, AttributeType::Extractable],
        )
        .unwrap()
        .iter()
        .all(|a| {
            matches!(
                a,
                Attribute::Sensitive(true) | Attribute::Extractable(false)
            )
        });
    let certificate = session
        .get_attributes(certificate[0], &[AttributeType::Value])
        .unwrap()
        .into_iter()
        .find_map(|a| match a {
            Attribute::Value(v) => Some(v),
            _ => None,
        })
        .unwrap();
    drop(session);
    TokenView {
        key_types,
        private_sensitive,
        certificate,
    }
}

/// With `resume`, a first run gets no result and the second one resumes
/// with the key already in the token.
fn token_registration(key_type: &str, kind: KeyKind, pkcs11_type: KeyType, resume: bool) {
    if skip() || !hsm_support::softhsm_available() {
        return;
    }
    let fleet = TiiFleet::start(TiiOptions::default());
    let device = TiiDevice::new(
        &fleet,
        &format!("key_type = \"{key_type}\"\nresult_timeout = 1\n"),
    )
    .with_softhsm();
    if resume {
        fleet.push_fleet_replies(std::iter::repeat_n(FleetReply::Silence, 3));
        device
            .run(&["--retry-deadline", "1"])
            .assert_code(5)
            .assert_says("the outcome is unknown");
    }
    let run = device.run(&["--verbose"]);
    let id = assert_registered(&device, &fleet, &run, kind);
    if resume {
        run.assert_says("resuming the unfinished registration");
        assert!(fleet.issued().iter().all(|issued| issued.id == id));
    }
    assert_eq!(
        device.state_listing(),
        ["ca.crt 644", "device.crt 644", "registration.json 600"]
    );
    let token = token_view(&device);
    assert_eq!(token.key_types, [pkcs11_type, pkcs11_type]);
    assert!(token.private_sensitive);
    let leaf = fleet.issued().pop().unwrap().leaf_pem;
    assert_eq!(token.certificate, common::cert_of(&leaf));
}

#[test]
fn an_ec_key_in_the_token_signs_the_tls_handshake() {
    token_registration("ec-p256", KeyKind::EcP256, KeyType::EC, false);
}

#[test]
fn an_rsa_key_in_the_token_signs_the_tls_handshake_and_survives_a_lost_result() {
    token_registration("rsa-2048", KeyKind::Rsa2048, KeyType::RSA, true);
}

#[test]
fn every_missing_setting_is_reported_at_once_and_nothing_is_created() {
    let root = tempfile::tempdir().unwrap();
    const VALID: &str =
        "provisioning_url = \"http://127.0.0.1:9\"\ndevice_type = \"x\"\nbuild_version = \"1\"\n";
    // (the [tii] table, extra flags, what the refusal says)
    let cases: [(String, &[&str], &[&str]); 3] = [
        (
            "key_type = \"dsa\"\n".into(),
            &[],
            &[
                "missing provisioning_url",
                "missing device_type",
                "missing build_version",
                "unknown key type \"dsa\"",
                "4 configuration problems",
            ],
        ),
        // An unknown key and an LmP flag.
        (
            format!("{VALID}nats_port = 4222\n"),
            &["--factory", "acme"],
            &["nats_port", "--factory belongs to the lmp profile"],
        ),
        // Relative paths would depend on the working directory.
        (
            format!("{VALID}state_dir = \"fleet\"\ncacert = \"ca.pem\"\n"),
            &[],
            &[
                "[tii] state_dir fleet: must be an absolute path",
                "[tii] cacert ca.pem: must be an absolute path",
                "2 configuration problems",
            ],
        ),
    ];
    for (table, flags, expected) in cases {
        write_file(
            &root.path().join("etc/lmp-device-register.toml"),
            &format!("profile = \"tii\"\n[tii]\n{table}"),
            0o644,
        );
        let run: Run = Command::new(env!("CARGO_BIN_EXE_lmp-device-register"))
            .env_clear()
            .arg("--root")
            .arg(root.path())
            .args(flags)
            .output()
            .unwrap()
            .into();
        run.assert_code(2);
        for text in expected {
            run.assert_says(text);
        }
        assert!(!root.path().join(STATE_DIR).exists(), "{table}");
    }
    assert!(!std::path::Path::new("fleet").exists());
}

#[test]
fn a_provisioning_server_error_is_retried() {
    if skip() {
        return;
    }
    let fleet = TiiFleet::start(TiiOptions::default());
    fleet.push_provision_replies([
        ProvisionReply::Status {
            code: 503,
            body: "{\"error\": \"signing service starting\"}".into(),
        },
        ProvisionReply::HostPortUrl,
    ]);
    let device = TiiDevice::new(&fleet, "");
    let run = device.run(&[]);
    assert_registered(&device, &fleet, &run, KeyKind::EcP256);
    run.assert_says("signing service starting");
    let provisions = fleet.provisions();
    assert_eq!(provisions.len(), 2);
    // The same CSR both times: one identity.
    assert_eq!(provisions[0].body, provisions[1].body);
}

#[test]
fn a_chain_that_does_not_verify_stores_nothing() {
    if skip() {
        return;
    }
    let fleet = TiiFleet::start(TiiOptions::default());
    fleet.push_provision_replies([ProvisionReply::ForeignChain]);
    let device = TiiDevice::new(&fleet, "");
    let run = device.run(&["--json"]);
    run.assert_code(6);
    run.assert_says("does not lead to caCertificate");
    assert_eq!(json_of(&run)["kind"], "bad-response");
    assert!(
        device.state_listing().is_empty(),
        "{:?}",
        device.state_listing()
    );
    assert!(fleet.registrations().is_empty());
}

#[test]
fn a_nats_server_that_comes_up_late_is_waited_for_with_one_identity() {
    if skip() {
        return;
    }
    let fleet = TiiFleet::start(TiiOptions {
        start_nats: false,
        ..TiiOptions::default()
    });
    let device = TiiDevice::new(&fleet, "");
    let child = device.spawn(&["--retry-deadline", "60"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet.issued().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the agent never asked for a certificate"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let at least one connection attempt be refused.
    std::thread::sleep(Duration::from_millis(300));
    fleet.start_nats();
    let run = device.finish(child);
    let id = assert_registered(&device, &fleet, &run, KeyKind::EcP256);
    assert!(
        run.stderr.contains("cannot reach the NATS server"),
        "{run:?}"
    );
    assert_eq!(fleet.issued().len(), 1);
    assert_eq!(fleet.registrations().len(), 1);
    assert_eq!(fleet.registrations()[0].id.as_deref(), Some(id.as_str()));
}

#[test]
fn a_missing_result_is_retried_with_the_same_identity() {
    if skip() {
        return;
    }
    let fleet = TiiFleet::start(TiiOptions::default());
    fleet.push_fleet_replies([FleetReply::Silence]);
    let device = TiiDevice::new(&fleet, "result_timeout = 1\n");
    let run = device.run(&[]);
    let id = assert_registered(&device, &fleet, &run, KeyKind::EcP256);
    run.assert_says("no result from the fleet manager within 1s");
    let registrations = fleet.registrations();
    assert_eq!(registrations.len(), 2);
    assert_eq!(registrations[0].body, registrations[1].body);
    assert_eq!(registrations[0].id.as_deref(), Some(id.as_str()));
    assert_eq!(fleet.provisions().len(), 1);
}

#[test]
fn no_result_at_all_keeps_the_identity_for_the_next_run() {
    if skip() {
        return;
    }
    let fleet = TiiFleet::start(TiiOptions::default());
    fleet.push_fleet_replies(std::iter::repeat_n(FleetReply::Silence, 3));
    let device = TiiDevice::new(&fleet, "result_timeout = 1\n");
    let run = device.run(&["--retry-deadline", "2", "--json"]);
    run.assert_code(5);
    run.assert_says("the outcome is unknown");
    assert_eq!(json_of(&run)["kind"], "unavailable");
    assert!(!device.state("registration.json").exists());
    assert!(device
        .path(STATE_DIR)
        .join(".lmp-device-register.pending")
        .exists());
    let first_id = fleet.issued()[0].id.clone();

    let run = device.run(&[]);
    run.assert_says("resuming the unfinished registration");
    let id = assert_registered(&device, &fleet, &run, KeyKind::EcP256);
    assert_eq!(id, first_id);
    assert!(fleet.issued().iter().all(|issued| issued.id == first_id));
    assert!(fleet
        .registrations()
        .iter()
        .all(|r| r.id.as_deref() == Some(first_id.as_str())));
}

#[test]
fn a_failure_result_is_a_refusal_and_stores_nothing() {
    if skip() {
        return;
    }
    let fleet = TiiFleet::start(TiiOptions::default());
    fleet.push_fleet_replies([FleetReply::Failure("unknown device type drone".into())]);
    let device = TiiDevice::new(&fleet, "");
    let run = device.run(&[]);
    run.assert_code(4);
    run.assert_says("unknown device type drone");
    assert!(
        device.state_listing().is_empty(),
        "{:?}",
        device.state_listing()
    );
    assert_eq!(fleet.registrations().len(), 1);
}

#[test]
fn an_already_registered_result_is_exit_3() {
    if skip() {
        return;
    }
    let fleet = TiiFleet::start(TiiOptions::default());
    fleet.push_fleet_replies([FleetReply::AlreadyRegistered]);
    let device = TiiDevice::new(&fleet, "device_id = \"serial-0042\"\n");
    let run = device.run(&[]);
    run.assert_code(3);
    run.assert_says("device already registered");
    assert_eq!(fleet.issued()[0].id, "serial-0042");
    assert!(!device.state("registration.json").exists());
}

#[test]
fn boot_on_a_registered_device_does_nothing() {
    if skip() {
        return;
    }
    let fleet = TiiFleet::start(TiiOptions::default());
    let device = TiiDevice::new(&fleet, "");
    let run = device.run(&[]);
    let id = assert_registered(&device, &fleet, &run, KeyKind::EcP256);
    let before = device.read_state("registration.json");

    let run = device.run(&["--boot", "--json"]);
    run.assert_code(0);
    run.assert_says("already registered");
    let json = json_of(&run);
    assert_eq!(json["status"], "already-registered");
    assert_eq!(json["id"], id.as_str());
    assert_eq!(device.read_state("registration.json"), before);

    let run = device.run(&[]);
    run.assert_code(3);
    assert_eq!(fleet.provisions().len(), 1);
    assert_eq!(fleet.registrations().len(), 1);
}

#[test]
fn an_https_provisioning_server_is_trusted_through_cacert() {
    if skip() {
        return;
    }
    let fleet = TiiFleet::start(TiiOptions {
        provisioning_tls: true,
        ..TiiOptions::default()
    });
    assert!(fleet.provisioning_url().starts_with("https://"));
    let device = TiiDevice::new(&fleet, "");
    // The system roots do not know the fleet's CA: a TLS failure, not retried.
    let run = device.run(&[]);
    run.assert_code(2);
    run.assert_says("--cacert");
    assert!(fleet.provisions().is_empty());

    let ca = device.path("etc/fleet-ca.pem");
    write_file(&ca, &fleet.root_ca_pem(), 0o644);
    let run = device.run(&["--cacert", ca.to_str().unwrap()]);
    assert_registered(&device, &fleet, &run, KeyKind::EcP256);
    assert!(!run.stderr.contains("plain http"), "{run:?}");
}

/// The example in examples/ is what the README points to: the agent reads it.
#[test]
fn the_example_config_file_is_read_by_the_agent() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config-tii.toml");
    let root = tempfile::tempdir().unwrap();
    write_file(
        &root.path().join("etc/os-release"),
        "VERSION_ID=4.0.20\n",
        0o644,
    );
    write_file(
        &root.path().join(STATE_DIR).join("registration.json"),
        "{}\n",
        0o600,
    );
    let run: Run = Command::new(env!("CARGO_BIN_EXE_lmp-device-register"))
        .env_clear()
        .arg("--root")
        .arg(root.path())
        .args(["--config", example, "--boot", "--json"])
        .output()
        .unwrap()
        .into();
    run.assert_code(0)
        .assert_says(&format!("profile read from {example} profile"))
        .assert_says(&format!(
            "provisioning url read from {example} [tii] provisioning_url"
        ))
        .assert_says("already registered");
    let json = json_of(&run);
    assert_eq!(json["profile"], "tii");
    assert_eq!(json["status"], "already-registered");
}
