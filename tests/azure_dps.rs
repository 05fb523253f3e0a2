//! The azure-dps profile through the built binary: the factory enrolment
//! double signs the device's CSR, the DPS double (HTTPS that requires a
//! client certificate from the device CA) assigns the device to a hub.
//! Software keys and SoftHSM2, one run and two, disabled enrollments,
//! Retry-After, failures and refusals, settings, secrets.
#![cfg(feature = "azure-dps")]

mod common;
mod hsm_support;

use common::{listing, Run};
use cryptoki::object::{AttributeType, ObjectClass};
use device_api::azure_dps::{AzureDps, DpsOptions, DpsReply, Service};
use hsm_support::{softhsm_available, Fixture, MODULE};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STATE_DIR: &str = "var/lib/azure-dps";
const PIN: &str = "2468-dps-user";
const SO_PIN: &str = "1357-dps-officer";

/// A device root (from the SoftHSM2 fixture, which the HSM tests need) with
/// the DPS doubles' CAs and a config file for the azure-dps profile.
struct Device {
    fixture: Fixture,
    endpoint: String,
    enrol_url: String,
    id_scope: String,
}

impl Device {
    fn new(dps: &AzureDps) -> Device {
        let fixture = Fixture::new();
        let etc = fixture.root.join("etc");
        common::write_file(&etc.join("dps-server-ca.pem"), &dps.server_ca_pem(), 0o644);
        common::write_file(&etc.join("factory-ca.pem"), &dps.device_root_pem(), 0o644);
        let device = Device {
            fixture,
            endpoint: dps.endpoint(),
            enrol_url: dps.enrol_url(),
            id_scope: dps.id_scope().to_string(),
        };
        device.configure("");
        device
    }

    /// Writes the config file: the doubles' endpoints and CAs (unless
    /// `extra` sets them), then `extra` lines of the `[azure-dps]` table.
    fn configure(&self, extra: &str) {
        let etc = self.fixture.root.join("etc");
        let defaults = [
            ("id_scope", self.id_scope.clone()),
            ("endpoint", self.endpoint.clone()),
            ("enrol_url", self.enrol_url.clone()),
            (
                "cacert",
                etc.join("dps-server-ca.pem").display().to_string(),
            ),
            (
                "factory_ca",
                etc.join("factory-ca.pem").display().to_string(),
            ),
        ];
        let mut text = String::from("profile = \"azure-dps\"\n\n[azure-dps]\n");
        for (key, value) in defaults {
            if !extra.contains(&format!("{key} =")) {
                text.push_str(&format!("{key} = \"{value}\"\n"));
            }
        }
        text.push_str(extra);
        common::write_file(&etc.join("lmp-device-register.toml"), &text, 0o644);
    }

    fn with_hsm(mut self) -> Device {
        self.fixture
            .write_hsm_file(Some(MODULE), Some(PIN), Some(SO_PIN));
        self
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lmp-device-register"));
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("SOFTHSM2_CONF", &self.fixture.softhsm_conf)
            .arg("--root")
            .arg(&self.fixture.root)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        let run: Run = self.command(args).output().unwrap().into();
        for secret in &self.fixture.secrets {
            assert!(
                !run.output().contains(secret.as_str()),
                "the agent printed the secret {secret:?}:\n{run:?}"
            );
        }
        run
    }

    fn state(&self) -> PathBuf {
        self.fixture.root.join(STATE_DIR)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.state().join(name)).unwrap()
    }

    fn assignment(&self) -> Value {
        serde_json::from_str(&self.read("assignment.json")).unwrap()
    }

    fn listing(&self) -> Vec<String> {
        listing(&self.state())
    }
}

fn start(options: DpsOptions) -> AzureDps {
    AzureDps::start(options)
}

fn enabled_at_factory() -> DpsOptions {
    DpsOptions {
        enable_at_factory: true,
        ..DpsOptions::default()
    }
}

/// DPS decides at the first poll. Every wait for a decision is DPS's
/// `Retry-After` (1 s here): the tests about something other than polling
/// skip the polls that only add such waits. Polling and its pace have tests
/// of their own.
fn decided_at_once(options: DpsOptions) -> DpsOptions {
    DpsOptions {
        polls_before_assigned: 0,
        ..options
    }
}

/// Outcomes of the DPS requests, e.g. `PUT 202 assigning`.
fn dps_outcomes(dps: &AzureDps) -> Vec<String> {
    dps.dps_requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.outcome))
        .collect()
}

fn factory_requests(dps: &AzureDps) -> usize {
    dps.requests()
        .iter()
        .filter(|r| r.service == Service::Factory)
        .count()
}

fn certificate_ders(pem: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .map(|p| p.unwrap().contents)
        .collect()
}

fn common_name(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let cn = cert.subject().iter_common_name().next().unwrap();
    cn.as_str().unwrap().to_string()
}

fn spki(der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.public_key().raw.to_vec()
}

const REGISTERED_SOFTWARE: [&str; 3] = ["assignment.json 644", "device.crt 644", "device.key 600"];
const FIRST_STAGE_SOFTWARE: [&str; 2] = ["device.crt 644", "device.key 600"];

#[test]
fn factory_step_and_first_boot_in_one_run_with_a_software_key() {
    let dps = start(enabled_at_factory());
    let device = Device::new(&dps);
    device.configure("payload = '{\"model\": \"x-1\", \"line\": 3}'\n");
    let run = device.run(&["--json"]);
    run.assert_code(0)
        .assert_says("asking the factory at")
        .assert_says("registered");

    assert_eq!(device.listing(), REGISTERED_SOFTWARE);
    let mode = std::fs::metadata(device.state())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);

    // The certificate is the one the factory issued, for the key on disk,
    // with the registration id (a lower-case UUID) as its common name.
    let crt = device.read("device.crt");
    let issued = dps.issued();
    assert_eq!(issued.len(), 1);
    assert_eq!(crt.trim(), issued[0].certificate.trim());
    let chain = certificate_ders(&crt);
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    let id = common_name(&chain[0]);
    assert_eq!(id.len(), 36);
    assert_eq!(id, id.to_lowercase());
    assert_eq!(id, issued[0].registration_id);
    let key = rcgen::KeyPair::from_pem(&device.read("device.key")).unwrap();
    assert_eq!(
        spki(&chain[0]),
        rcgen::PublicKeyData::subject_public_key_info(&key)
    );

    // What an application needs to reach its hub.
    let assignment = device.assignment();
    assert_eq!(assignment["assignedHub"], "test-hub.azure-devices.net");
    assert_eq!(assignment["deviceId"], id.as_str());
    assert_eq!(assignment["registrationId"], id.as_str());
    assert_eq!(assignment["substatus"], "initialAssignment");
    assert_eq!(assignment["payload"], json!({"model": "x-1", "line": 3}));
    assert!(assignment["createdDateTimeUtc"].is_string());
    assert_eq!(
        assignment["keyFile"],
        device.state().join("device.key").display().to_string()
    );
    assert_eq!(
        assignment["certificateFile"],
        device.state().join("device.crt").display().to_string()
    );
    assert!(assignment.get("pkcs11").is_none());

    // DPS saw: PUT register with the body and api-version, then the polls,
    // all with the device's certificate.
    let requests = dps.dps_requests();
    assert_eq!(
        dps_outcomes(&dps),
        ["PUT 202 assigning", "GET 202 assigning", "GET 200 assigned"]
    );
    let put = &requests[0];
    assert_eq!(
        put.path,
        format!("/{}/registrations/{id}/register", dps.id_scope())
    );
    assert_eq!(put.query, "api-version=2021-10-01");
    let body: Value = serde_json::from_slice(&put.body).unwrap();
    assert_eq!(
        body,
        json!({"registrationId": id, "payload": {"model": "x-1", "line": 3}})
    );
    assert!(
        requests[1].path.contains("/operations/4."),
        "{}",
        requests[1].path
    );
    for request in &requests {
        assert_eq!(request.client_cn.as_deref(), Some(id.as_str()));
    }
    // Retry-After: 1 on every "assigning" answer is a floor.
    for pair in requests.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(950), "{gap:?}");
    }
    let assignments = dps.assignments();
    assert_eq!(assignments.len(), 1);
    assert_eq!(assignments[0].spki_der, spki(&chain[0]));

    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report["status"], "registered");
    assert_eq!(report["profile"], "azure-dps");
    assert_eq!(report["registration_id"], id.as_str());
    assert_eq!(report["assigned_hub"], "test-hub.azure-devices.net");
    assert_eq!(report["device_id"], id.as_str());
    assert_eq!(
        report["files"],
        json!(["device.key", "device.crt", "assignment.json"])
    );
}

#[test]
fn factory_step_then_first_boot_in_two_runs_keeps_the_certificate_in_between() {
    // The factory enters the device disabled; the machine maker enables it
    // later.
    let dps = start(DpsOptions::default());
    let device = Device::new(&dps);
    let run = device.run(&[]);
    run.assert_code(4)
        .assert_says("is disabled in DPS")
        .assert_says("keeps its key and certificate");
    assert_eq!(
        device.listing(),
        FIRST_STAGE_SOFTWARE,
        "no journal, no assignment"
    );
    let crt = device.read("device.crt");
    let key = device.read("device.key");
    let id = dps.issued()[0].registration_id.clone();
    assert_eq!(dps.enrollment(&id), Some(false));
    assert_eq!(
        dps_outcomes(&dps),
        ["PUT 202 assigning", "GET 202 assigning", "GET 200 disabled"]
    );

    dps.set_enrollment(&id, true);
    let run = device.run(&["--boot"]);
    run.assert_code(0)
        .assert_says(&format!("continuing with the identity {id}"));
    assert_eq!(device.listing(), REGISTERED_SOFTWARE);
    assert_eq!(device.read("device.crt"), crt);
    assert_eq!(device.read("device.key"), key);
    assert_eq!(factory_requests(&dps), 1, "the factory was asked once");
    assert_eq!(device.assignment()["deviceId"], id.as_str());

    // Registered: first boot is content, a technician is told.
    let seen = dps.requests().len();
    device
        .run(&["--boot", "--json"])
        .assert_code(0)
        .assert_says("already registered");
    device
        .run(&[])
        .assert_code(3)
        .assert_says("assignment.json present");
    assert_eq!(dps.requests().len(), seen, "no request when registered");
}

#[test]
fn a_factory_without_dps_keeps_the_certificate_for_the_first_boot() {
    let dps = start(decided_at_once(enabled_at_factory()));
    let device = Device::new(&dps);
    // The factory network reaches the enrolment endpoint, not DPS.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable = format!("https://{}", closed.local_addr().unwrap());
    drop(closed);
    device.configure(&format!("endpoint = \"{unreachable}\"\n"));
    device
        .run(&["--retry-deadline", "3"])
        .assert_code(5)
        .assert_says("cannot reach the server")
        .assert_says("keeps its key and certificate");
    assert_eq!(device.listing(), FIRST_STAGE_SOFTWARE);
    assert!(dps.dps_requests().is_empty());

    device.configure("");
    device.run(&["--boot"]).assert_code(0);
    assert_eq!(device.listing(), REGISTERED_SOFTWARE);
    assert_eq!(factory_requests(&dps), 1);
}

#[test]
fn a_boot_run_waits_for_a_disabled_enrollment_to_be_enabled() {
    let dps = start(decided_at_once(DpsOptions::default()));
    let device = Device::new(&dps);
    let child = device
        .command(&["--boot", "--retry-deadline", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dps_outcomes(&dps).iter().any(|o| o == "GET 200 disabled") {
        assert!(Instant::now() < deadline, "{:?}", dps_outcomes(&dps));
        std::thread::sleep(Duration::from_millis(50));
    }
    let id = dps.issued()[0].registration_id.clone();
    dps.set_enrollment(&id, true);
    let run: Run = child.wait_with_output().unwrap().into();
    run.assert_code(0)
        .assert_says("the enrollment is disabled in DPS; retrying in");
    assert_eq!(device.listing(), REGISTERED_SOFTWARE);
    let outcomes = dps_outcomes(&dps);
    assert_eq!(outcomes.last().unwrap(), "GET 200 assigned", "{outcomes:?}");
    assert_eq!(
        outcomes.iter().filter(|o| o.starts_with("PUT")).count(),
        2,
        "registered again once enabled: {outcomes:?}"
    );
    assert_eq!(factory_requests(&dps), 1);
}

#[test]
fn a_boot_run_gives_up_on_a_disabled_enrollment_at_its_deadline_with_exit_5() {
    let dps = start(decided_at_once(DpsOptions::default()));
    let device = Device::new(&dps);
    let started = Instant::now();
    // The first poll, which finds the enrollment disabled, comes when the
    // "assigning" answer to the register said (Retry-After: 1).
    let run = device.run(&["--boot", "--retry-deadline", "8"]);
    run.assert_code(5)
        .assert_says("was still disabled in DPS after")
        .assert_says("the next boot asks again");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(device.listing(), FIRST_STAGE_SOFTWARE);
}

#[test]
fn retry_after_is_a_floor_for_429_5xx_and_assigning() {
    let dps = start(DpsOptions {
        polls_before_assigned: 2,
        ..enabled_at_factory()
    });
    dps.push_replies([
        DpsReply::Status {
            code: 429,
            body: json!({"errorCode": 429001, "trackingId": "t-429", "message": "Too many requests"}),
            retry_after: Some("2".into()),
        },
        DpsReply::Status {
            code: 503,
            body: json!({"errorCode": 503000, "message": "Service unavailable"}),
            retry_after: Some("1".into()),
        },
    ]);
    let device = Device::new(&dps);
    let run = device.run(&[]);
    run.assert_code(0)
        .assert_says("HTTP 429: Too many requests (errorCode 429001, trackingId t-429)")
        .assert_says("HTTP 503: Service unavailable");
    assert_eq!(
        dps_outcomes(&dps),
        [
            "PUT 429",
            "PUT 503",
            "PUT 202 assigning",
            "GET 202 assigning",
            "GET 202 assigning",
            "GET 200 assigned"
        ]
    );
    let times: Vec<Instant> = dps.dps_requests().iter().map(|r| r.at).collect();
    let floors = [2000, 1000, 1000, 1000, 1000];
    for (i, floor) in floors.iter().enumerate() {
        let gap = times[i + 1] - times[i];
        assert!(
            gap >= Duration::from_millis(floor - 50),
            "request {} came {gap:?} after the one before, floor {floor} ms",
            i + 1
        );
    }
    assert_eq!(dps.assignments().len(), 1);
}

/// "Assigning" is progress, not load shedding: the polls come when DPS
/// said (at most +5 % jitter, plus the round trip), and the wait does not
/// grow from one poll to the next.
#[test]
fn assigning_is_polled_at_the_pace_dps_sets() {
    let dps = start(DpsOptions {
        polls_before_assigned: 2,
        ..enabled_at_factory()
    });
    let device = Device::new(&dps);
    device.run(&["--boot"]).assert_code(0);
    assert_eq!(
        dps_outcomes(&dps),
        [
            "PUT 202 assigning",
            "GET 202 assigning",
            "GET 202 assigning",
            "GET 200 assigned"
        ]
    );
    let times: Vec<Instant> = dps.dps_requests().iter().map(|r| r.at).collect();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    println!("polls after Retry-After: 1 came {gaps:?} apart");
    for gap in &gaps {
        assert!(
            (Duration::from_millis(1000)..=Duration::from_millis(1100)).contains(gap),
            "{gaps:?}"
        );
    }
}

#[test]
fn a_poll_for_an_unknown_operation_starts_again_from_the_put() {
    let dps = start(decided_at_once(enabled_at_factory()));
    dps.push_replies([DpsReply::UnknownOperation]);
    let device = Device::new(&dps);
    device
        .run(&[])
        .assert_code(0)
        .assert_says("registering again");
    assert_eq!(
        dps_outcomes(&dps),
        [
            "PUT 202 assigning",
            "GET 404",
            "PUT 202 assigning",
            "GET 200 assigned"
        ]
    );
}

#[test]
fn a_failed_registration_exits_4_with_the_error_and_the_next_run_succeeds() {
    let dps = start(decided_at_once(enabled_at_factory()));
    dps.push_replies([DpsReply::Failed {
        error_code: 400209,
        message: "Custom allocation failed".into(),
    }]);
    let device = Device::new(&dps);
    device
        .run(&[])
        .assert_code(4)
        .assert_says("DPS failed the registration of")
        .assert_says("Custom allocation failed (errorCode 400209)");
    assert_eq!(device.listing(), FIRST_STAGE_SOFTWARE);
    let crt = device.read("device.crt");

    device.run(&[]).assert_code(0);
    assert_eq!(device.read("device.crt"), crt);
    assert_eq!(factory_requests(&dps), 1);
    assert_eq!(device.listing(), REGISTERED_SOFTWARE);
}

#[test]
fn refusals_are_final_and_show_the_message() {
    // The factory issues certificates but enters nobody in DPS.
    let dps = start(DpsOptions {
        enroll_at_factory: false,
        ..DpsOptions::default()
    });
    let device = Device::new(&dps);
    device
        .run(&["--boot"])
        .assert_code(4)
        .assert_says("HTTP 401: Unauthorized (errorCode 401002");
    assert_eq!(dps_outcomes(&dps), ["PUT 401"], "not retried");
    assert_eq!(device.listing(), FIRST_STAGE_SOFTWARE);

    // A wrong ID scope is not retried forever either.
    device.configure("id_scope = \"0ne99999999\"\n");
    device
        .run(&["--boot"])
        .assert_code(4)
        .assert_says("HTTP 404: ID scope not found (errorCode 404001");
    assert_eq!(dps_outcomes(&dps), ["PUT 401", "PUT 404"]);
    assert_eq!(factory_requests(&dps), 1);
}

#[test]
fn settings_problems_are_reported_together_before_anything_is_made() {
    let dps = start(DpsOptions::default());
    let device = Device::new(&dps);
    let config = device.fixture.root.join("etc/lmp-device-register.toml");
    common::write_file(
        &config,
        "profile = \"azure-dps\"\n[azure-dps]\nregistration_id = \"Line-3/Device\"\npayload = \"{not json\"\nendpoint = \"http://127.0.0.1:9\"\nstate_dir = \"var/lib/dps\"\n",
        0o644,
    );
    let run = device.run(&[]);
    run.assert_code(2)
        .assert_says("5 configuration problems")
        .assert_says("missing")
        .assert_says("[azure-dps] id_scope")
        .assert_says("cannot be a registration id: it contains 'L'")
        .assert_says("[azure-dps] payload is not JSON")
        .assert_says("must be https")
        .assert_says("[azure-dps] state_dir var/lib/dps: must be an absolute path");
    assert!(!device.state().exists());

    common::write_file(
        &config,
        "profile = \"azure-dps\"\n[azure-dps]\nid_scope = \"0ne00000A0A\"\nenrol_uri = \"https://x\"\n",
        0o644,
    );
    device
        .run(&[])
        .assert_code(2)
        .assert_says("[azure-dps]")
        .assert_says("enrol_uri");

    // Without a certificate and without a factory to ask: nothing to do.
    common::write_file(
        &config,
        &format!(
            "profile = \"azure-dps\"\n[azure-dps]\nid_scope = \"0ne00000A0A\"\nendpoint = \"{}\"\n",
            dps.endpoint()
        ),
        0o644,
    );
    device
        .run(&[])
        .assert_code(2)
        .assert_says("no enrol_url is configured");
    assert!(device.listing().is_empty(), "{:?}", device.listing());

    // LmP's flags belong to LmP.
    device.configure("");
    device
        .run(&["--factory", "acme"])
        .assert_code(2)
        .assert_says("belongs to the lmp profile");
    assert!(dps.requests().is_empty());
}

#[test]
fn force_replaces_a_registration_with_a_new_identity() {
    let dps = start(decided_at_once(enabled_at_factory()));
    let device = Device::new(&dps);
    device.run(&[]).assert_code(0);
    let first = device.assignment()["registrationId"].clone();
    device
        .run(&["--force"])
        .assert_code(0)
        .assert_says("is replaced by the new identity");
    let second = device.assignment()["registrationId"].clone();
    assert_ne!(first, second);
    assert_eq!(device.listing(), REGISTERED_SOFTWARE);
    let crt = device.read("device.crt");
    assert_eq!(
        common_name(&certificate_ders(&crt)[0]),
        second.as_str().unwrap()
    );
    assert_eq!(dps.assignments().len(), 2);
}

#[test]
fn sigterm_while_waiting_for_dps_keeps_the_identity_for_the_next_run() {
    let dps = start(DpsOptions {
        retry_after: Some("30".into()),
        ..enabled_at_factory()
    });
    let device = Device::new(&dps);
    let child = device.command(&[]).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while dps.dps_requests().is_empty() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let run: Run = child.wait_with_output().unwrap().into();
    run.assert_code(9);
    assert_eq!(device.listing(), FIRST_STAGE_SOFTWARE);

    // The next run continues with the stored identity.
    dps.set_retry_after(Some("1"));
    device
        .run(&[])
        .assert_code(0)
        .assert_says("continuing with the identity");
    assert_eq!(factory_requests(&dps), 1);
    assert_eq!(device.listing(), REGISTERED_SOFTWARE);
}

/// The key material of a PEM key: its base64 lines.
fn key_material(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect()
}

fn readable_by_others(dir: &std::path::Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = path.symlink_metadata().unwrap();
        if meta.is_dir() {
            readable_by_others(&path, found);
        } else if meta.is_file() && meta.permissions().mode() & 0o044 != 0 {
            found.push(path);
        }
    }
}

#[test]
fn neither_the_key_nor_a_pin_leaks() {
    let dps = start(enabled_at_factory());
    dps.push_replies([DpsReply::Status {
        code: 503,
        body: json!({"message": "busy"}),
        retry_after: Some("0".into()),
    }]);
    let device = Device::new(&dps);
    let run = device.run(&["--json", "--verbose"]);
    run.assert_code(0);
    let material = key_material(&device.read("device.key"));
    assert!(!material.is_empty());
    let printed = run.output();
    let mut readable = Vec::new();
    readable_by_others(&device.fixture.root, &mut readable);
    for line in &material {
        assert!(!printed.contains(line.as_str()), "key leaked:\n{printed}");
        for path in &readable {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            assert!(
                !text.contains(line.as_str()),
                "{} holds the key",
                path.display()
            );
        }
    }
}

fn token_objects(device: &Device) -> Vec<hsm_support::ObjectView> {
    let hsm = device.fixture.open_softhsm();
    let session = hsm.login_to("azure-dps", PIN);
    let objects = hsm_support::objects(&session);
    drop(session);
    objects
}

#[test]
fn a_token_key_registers_over_mutual_tls_in_two_runs() {
    if !softhsm_available() {
        return;
    }
    let dps = start(decided_at_once(DpsOptions::default()));
    let device = Device::new(&dps).with_hsm();
    device
        .run(&[])
        .assert_code(4)
        .assert_says("is disabled in DPS");
    assert_eq!(
        device.listing(),
        ["device.crt 644"],
        "the key is in the token"
    );
    let objects = token_objects(&device);
    let classes: Vec<ObjectClass> = objects.iter().map(|o| o.class).collect();
    assert_eq!(classes.len(), 2, "{objects:?}");
    assert!(classes.contains(&ObjectClass::PRIVATE_KEY));
    assert!(classes.contains(&ObjectClass::PUBLIC_KEY));

    let id = dps.issued()[0].registration_id.clone();
    dps.set_enrollment(&id, true);
    device.run(&["--boot"]).assert_code(0);
    assert_eq!(device.listing(), ["assignment.json 644", "device.crt 644"]);
    let assignment = device.assignment();
    assert_eq!(assignment["deviceId"], id.as_str());
    assert!(assignment.get("keyFile").is_none());
    assert_eq!(
        assignment["pkcs11"],
        json!({
            "module": MODULE,
            "tokenLabel": "azure-dps",
            "keyLabel": "device",
            "keyId": "01",
            "certificateLabel": "device",
            "certificateId": "02",
        })
    );
    assert!(!device.read("assignment.json").contains(PIN));

    // DPS completed the handshake with the certificate for the token's key,
    // and the token now holds that certificate beside the key.
    let crt = certificate_ders(&device.read("device.crt"));
    let objects = token_objects(&device);
    let public = objects
        .iter()
        .find(|o| o.class == ObjectClass::PUBLIC_KEY)
        .unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&crt[0]).unwrap();
    assert_eq!(
        hsm_support::ec_point(&public.bytes(AttributeType::EcPoint).unwrap()),
        leaf.public_key().subject_public_key.data.as_ref()
    );
    assert_eq!(dps.assignments()[0].spki_der, spki(&crt[0]));
    let certificate = objects
        .iter()
        .find(|o| o.class == ObjectClass::CERTIFICATE)
        .expect("certificate object");
    assert_eq!(
        (certificate.label.as_str(), certificate.id.as_slice()),
        ("device", &[2u8][..])
    );
    assert_eq!(certificate.bytes(AttributeType::Value).unwrap(), crt[0]);
    assert_eq!(factory_requests(&dps), 1);
}

/// The example in examples/ is what the README points at: the agent reads it.
#[test]
fn the_example_config_file_is_read_by_the_agent() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/config-azure-dps.toml"
    );
    let dps = start(DpsOptions::default());
    let device = Device::new(&dps);
    common::write_file(
        &device.state().join("assignment.json"),
        "{\"registrationId\": \"gw-1\", \"assignedHub\": \"h.azure-devices.net\", \"deviceId\": \"gw-1\"}\n",
        0o644,
    );
    let run = device.run(&["--config", example, "--boot", "--json"]);
    run.assert_code(0)
        .assert_says(&format!("profile read from {example} profile"))
        .assert_says(&format!(
            "DPS ID scope read from {example} [azure-dps] id_scope"
        ))
        .assert_says(&format!(
            "factory enrolment read from {example} [azure-dps] enrol_url"
        ));
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report["status"], "already-registered");
    assert_eq!(report["profile"], "azure-dps");
    assert_eq!(report["registration_id"], "gw-1");
    assert_eq!(report["assigned_hub"], "h.azure-devices.net");
    assert_eq!(report["files"], json!([]));
    assert!(dps.requests().is_empty());
}
