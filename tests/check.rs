//! `--check` through the built binary against loopback doubles, SoftHSM2
//! and swtpm: a device ready to register, then one broken setup per check
//! (settings, the token file, its mode, a wrong PIN, a module without ECDH,
//! the clock, DNS, TLS with the wrong CA, an expired certificate). Each
//! reports the right line and hint, in text and `--json`, and changes
//! nothing on disk or in the token.

mod common;
mod hsm_support;

use hsm_support::{softhsm_available, Fixture, MODULE};
use serde_json::Value;
use std::path::Path;
use std::time::Instant;

const PIN: &str = "3141-check-user";
const SO_PIN: &str = "2718-check-officer";
const SPY: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so";
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// A check run: its exit code, its text, and its `--json` report.
struct Checked {
    code: i32,
    text: String,
    report: Value,
}

impl Checked {
    /// The line of `area` whose check starts with `check`.
    #[track_caller]
    fn line(&self, area: &str, check: &str) -> &Value {
        self.report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["area"] == area && l["check"].as_str().unwrap().starts_with(check))
            .unwrap_or_else(|| panic!("no {area}/{check} line in\n{}", self.text))
    }

    /// The line is there with this status, and its detail says `says`.
    #[track_caller]
    fn expect(&self, area: &str, check: &str, status: &str, says: &str) -> &Value {
        let line = self.line(area, check);
        assert_eq!(line["status"], status, "{line}\n{}", self.text);
        let detail = line["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{detail:?} should say {says:?}");
        if status != "pass" {
            assert!(!line["hint"].as_str().unwrap().is_empty(), "{line}");
        }
        // The text has the line too, with the same status.
        let word = if status == "pass" {
            "pass".to_string()
        } else {
            status.to_uppercase()
        };
        let check = line["check"].as_str().unwrap();
        let start = format!("{word}  {area:<12} {check}: ");
        assert!(self.text.contains(&start), "no {start:?} in\n{}", self.text);
        line
    }
}

/// Runs `--check` and `--check --json` with `args` (the fixture's
/// registration settings when `registration` is true) and proves that
/// nothing under `unchanged` changed.
fn check_in(fixture: &Fixture, args: &[&str], registration: bool, unchanged: &Path) -> Checked {
    let before = common::snapshot(unchanged);
    let run = |extra: &[&str]| {
        let all = [args, extra].concat();
        match registration {
            true => fixture.run(&all),
            false => fixture.run_bare(&all),
        }
    };
    let started = Instant::now();
    let text = run(&["--check"]);
    eprintln!("--check took {:?}", started.elapsed());
    let json = run(&["--check", "--json"]);
    assert_eq!(text.code, json.code, "{text:?}\n{json:?}");
    assert_eq!(
        common::snapshot(unchanged),
        before,
        "--check changed {unchanged:?}"
    );
    let report: Value =
        serde_json::from_str(json.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {json:?}"));
    assert_eq!(report["status"], "check");
    let failed = report["failed"].as_u64().unwrap();
    assert_eq!(text.code, i32::from(failed > 0), "{text:?}");
    assert!(
        text.stdout.ends_with(&format!("{failed} failed\n")),
        "{}",
        text.stdout
    );
    Checked {
        code: text.code,
        text: text.stdout,
        report,
    }
}

/// [`check_in`] with the fixture's settings, proving its whole directory
/// (device root, SoftHSM2 tokens) unchanged.
fn check(fixture: &Fixture, args: &[&str]) -> Checked {
    check_in(fixture, args, true, fixture.dir.path())
}

#[test]
fn a_device_ready_to_register_passes_and_nothing_is_created() {
    if !softhsm_available() {
        return;
    }
    let mut fixture = Fixture::new();
    fixture.write_hsm_file(Some(MODULE), Some(PIN), Some(SO_PIN));
    let checked = check(&fixture, &[]);
    assert_eq!(checked.code, 0, "{}", checked.text);
    assert_eq!(checked.report["profile"], "lmp");
    assert_eq!(checked.report["failed"], 0);
    checked.expect("settings", "configuration", "pass", "profile lmp: complete");
    checked.expect("clock", "system time", "pass", "GMT");
    checked.expect(
        "files",
        "state dir",
        "pass",
        "absent: a registration creates it",
    );
    checked.expect("files", "HSM file", "pass", "mode 0600");
    checked.expect("token", "module", "pass", MODULE);
    checked.expect(
        "token",
        "token aktualizr",
        "pass",
        "initialises the blank token",
    );
    checked.expect("token", "mechanisms", "pass", "EC key generation, ECDSA");
    checked.expect("token", "ECDH", "pass", "fioconfig");
    checked.expect("registration", "state", "pass", "not registered");
    checked.expect("network", "DEVICE_API dns", "pass", "127.0.0.1");
    checked.expect("network", "DEVICE_API tcp", "pass", "connected");
    checked.expect(
        "network",
        "DEVICE_API tls",
        "pass",
        "plain http on this machine",
    );
    assert!(
        !fixture.sota_dir().exists(),
        "--check created the state dir"
    );
    assert!(
        fixture.api.requests().is_empty(),
        "--check sent a request to the server"
    );
    assert!(
        fixture.open_softhsm().token_labels().is_empty(),
        "--check initialised a token"
    );
}

#[test]
fn every_settings_problem_is_a_line_and_the_rest_waits_for_them() {
    let fixture = Fixture::new();
    common::write_file(
        &fixture.root.join("etc/lmp-device-register.toml"),
        "[lmp]\nno_such_key = 1\n",
        0o644,
    );
    let checked = check(&fixture, &["--device-api", "not a url", "--profile", "lmp"]);
    assert_eq!(checked.code, 1);
    let problems: Vec<&str> = checked.report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["area"] == "settings" && l["status"] == "fail")
        .map(|l| l["detail"].as_str().unwrap())
        .collect();
    assert!(problems.len() >= 2, "{problems:?}");
    assert!(
        problems.iter().any(|p| p.contains("no_such_key")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("not a valid URL")),
        "{problems:?}"
    );
    checked.expect("clock", "system time", "pass", "GMT");
    checked.expect("settings", "other checks", "warn", "not checked");
}

#[test]
fn a_missing_token_file_fails_the_pre_flight() {
    let fixture = Fixture::new();
    let api = fixture.api.url();
    let checked = check_in(
        &fixture,
        &["--device-api", &api, "-f", "f", "-t", "main", "-i", "hw"],
        false,
        fixture.dir.path(),
    );
    assert_eq!(checked.code, 1);
    checked.expect("settings", "pre-flight", "fail", "no API token");
}

#[test]
fn a_token_file_others_can_read_is_a_warning_with_its_chmod() {
    let fixture = Fixture::new();
    let token_file = fixture.root.join("etc/lmp-device-register-token");
    common::write_file(&token_file, "demo-token\n", 0o644);
    let api = fixture.api.url();
    let checked = check_in(
        &fixture,
        &["--device-api", &api, "-f", "f", "-t", "main", "-i", "hw"],
        false,
        fixture.dir.path(),
    );
    assert_eq!(checked.code, 0, "{}", checked.text);
    let line = checked.expect("files", "secret file", "warn", "mode 0644");
    assert_eq!(
        line["hint"],
        format!("chmod 600 {}", token_file.display()).as_str()
    );
    assert!(!checked.text.contains("demo-token"));
}

/// C_Login calls the PKCS#11 spy logged.
fn logins(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("C_Login")
        .count()
}

/// The objects in the `aktualizr` token, read with the right PIN.
fn token_objects(fixture: &Fixture) -> Vec<hsm_support::ObjectView> {
    let module = fixture.open_softhsm();
    let session = module.login(PIN);
    hsm_support::objects(&session)
}

#[test]
fn a_registered_token_key_matches_and_a_wrong_pin_is_tried_once_only() {
    if !softhsm_available() || !Path::new(SPY).exists() {
        assert!(std::env::var_os("CI").is_none(), "{SPY} is not installed");
        return;
    }
    let mut fixture = Fixture::new();
    fixture.write_hsm_file(Some(MODULE), Some(PIN), Some(SO_PIN));
    fixture.run(&[]).assert_code(0);
    // The PKCS#11 spy between the agent and SoftHSM2 logs every call.
    let log = fixture.dir.path().join("spy.log");
    fixture.module_env = vec![
        ("PKCS11SPY".into(), MODULE.into()),
        ("PKCS11SPY_OUTPUT".into(), log.display().to_string()),
    ];
    fixture.write_hsm_file(Some(SPY), Some(PIN), Some(SO_PIN));
    // A login is recorded by the token itself (SoftHSM2 rewrites its login
    // flags): the device root, and the token's objects, must not change.
    let before = token_objects(&fixture);
    let root = fixture.root.clone();
    let checked = check_in(&fixture, &[], true, &root);
    assert_eq!(checked.code, 0, "{}", checked.text);
    checked.expect("token", "user PIN", "pass", "one login");
    checked.expect("token", "key", "pass", "present");
    checked.expect("registration", "state", "pass", "registered as");
    checked.expect(
        "registration",
        "certificate and key",
        "pass",
        "the device's key",
    );
    assert_eq!(logins(&log), 2, "one login per run (text and --json)");
    assert_eq!(
        token_objects(&fixture),
        before,
        "the token's objects changed"
    );

    fixture.write_hsm_file(Some(SPY), Some("9999-wrong-pin"), Some(SO_PIN));
    std::fs::remove_file(&log).unwrap();
    let wrong = check_in(&fixture, &[], true, &root);
    assert_eq!(wrong.code, 1);
    // The text run tried the PIN once; the --json run after it, seeing
    // that the token has refused a PIN, did not try it again.
    assert!(
        wrong.text.contains("user PIN: the HSM user PIN is wrong"),
        "{}",
        wrong.text
    );
    wrong.expect("token", "user PIN", "fail", "not tried");
    wrong.expect(
        "registration",
        "certificate and key",
        "warn",
        "not compared",
    );
    assert_eq!(
        logins(&log),
        1,
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let again = check_in(&fixture, &[], true, &root);
    let line = again.expect("token", "user PIN", "fail", "not tried");
    assert!(line["hint"].as_str().unwrap().contains("HSM_PIN"));
    assert_eq!(logins(&log), 1, "a PIN that failed is never tried again");
    assert_eq!(
        token_objects(&fixture),
        before,
        "the token's objects changed"
    );
}

#[test]
fn a_module_without_ecdh_is_a_warning_for_lmp() {
    if !hsm_support::swtpm_available() {
        return;
    }
    let mut fixture = Fixture::new();
    let tpm = hsm_support::Swtpm::start(fixture.dir.path());
    fixture.module_env = tpm.module_env();
    fixture.write_hsm_file(Some(hsm_support::TPM_MODULE), Some(PIN), Some(SO_PIN));
    // tpm2-pkcs11 keeps its own store (it may set it up when loaded):
    // the device root is what must not change.
    let root = fixture.root.clone();
    let checked = check_in(&fixture, &[], true, &root);
    assert_eq!(checked.code, 0, "{}", checked.text);
    let line = checked.expect("token", "ECDH", "warn", "no CKM_ECDH1_DERIVE");
    assert!(line["detail"].as_str().unwrap().contains("fioconfig"));
    assert!(line["hint"].as_str().unwrap().contains("docs/tpm.md"));
    checked.expect("token", "mechanisms", "pass", "EC key generation, ECDSA");
}

#[test]
fn a_clock_in_1970_fails_with_how_to_set_it() {
    if !Path::new(FAKETIME).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{FAKETIME} is not installed"
        );
        eprintln!("libfaketime is not installed: skipping (apt-get install libfaketime)");
        return;
    }
    let mut fixture = Fixture::new();
    fixture.module_env = vec![
        ("LD_PRELOAD".into(), FAKETIME.into()),
        ("FAKETIME".into(), "@1970-01-02 00:00:00".into()),
    ];
    let checked = check(&fixture, &[]);
    assert_eq!(checked.code, 1);
    let line = checked.expect("clock", "system time", "fail", "1970");
    assert!(line["hint"].as_str().unwrap().contains("NTP"));
}

#[test]
fn a_name_that_does_not_resolve_fails_at_dns() {
    let fixture = Fixture::new();
    let checked = check(
        &fixture,
        &["--device-api", "https://no-such-host.invalid/ota/devices/"],
    );
    assert_eq!(checked.code, 1);
    checked.expect(
        "network",
        "DEVICE_API dns",
        "fail",
        "cannot resolve no-such-host.invalid",
    );
    assert!(checked.report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["check"] != "DEVICE_API tcp"));
}

#[test]
fn a_handshake_the_configured_ca_refuses_fails_and_names_the_server() {
    let api = device_api::DeviceApi::start(device_api::Options {
        tls: true,
        ..Default::default()
    });
    let fixture = Fixture::new();
    let wrong = fixture.dir.path().join("wrong-ca.pem");
    common::write_file(&wrong, &api.root_ca_pem(), 0o644);
    let right = fixture.dir.path().join("server-ca.pem");
    common::write_file(&right, &api.server_ca_pem(), 0o644);
    let url = api.url();
    let args = |ca: &Path| {
        vec![
            "--device-api".to_string(),
            url.clone(),
            "--cacert".to_string(),
            ca.display().to_string(),
        ]
    };
    let wrong_args = args(&wrong);
    let refs: Vec<&str> = wrong_args.iter().map(String::as_str).collect();
    let checked = check(&fixture, &refs);
    assert_eq!(checked.code, 1);
    checked.expect(
        "network",
        "DEVICE_API tls",
        "fail",
        "handshake with 127.0.0.1 failed",
    );
    checked.expect(
        "network",
        "DEVICE_API server certificate",
        "pass",
        "days left",
    );

    let right_args = args(&right);
    let refs: Vec<&str> = right_args.iter().map(String::as_str).collect();
    let checked = check(&fixture, &refs);
    assert_eq!(checked.code, 0, "{}", checked.text);
    checked.expect(
        "network",
        "DEVICE_API tls",
        "pass",
        "handshake with 127.0.0.1",
    );
    assert!(api.requests().is_empty(), "--check sent a request");
}

/// A registration in the sota dir whose certificate (for `key`) ended
/// `days_ago` days ago, or has that many days left when negative.
fn registered_with(fixture: &Fixture, key: &rcgen::KeyPair, days_ago: i64) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "3f1c55a2-7d0e-4c36-9f1e-2a4b6c8d0e1f",
    );
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(400);
    params.not_after = now - time::Duration::days(days_ago);
    let certificate = params.self_signed(key).unwrap();
    let sota = fixture.sota_dir();
    common::write_file(&sota.join("client.pem"), &certificate.pem(), 0o644);
    common::write_file(&sota.join("sota.toml"), "[tls]\nserver = \"x\"\n", 0o644);
    std::fs::set_permissions(&sota, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
}

#[test]
fn an_expired_certificate_or_a_key_it_is_not_for_fails() {
    let fixture = Fixture::new();
    let key = rcgen::KeyPair::generate().unwrap();
    registered_with(&fixture, &key, 3);
    let key_file = fixture.sota_dir().join("pkey.pem");
    common::write_file(&key_file, &key.serialize_pem(), 0o600);
    let checked = check(&fixture, &[]);
    assert_eq!(checked.code, 1);
    let line = checked.expect("registration", "certificate", "fail", "3 days ago");
    assert!(line["hint"].as_str().unwrap().contains("--force"));
    checked.expect(
        "registration",
        "certificate and key",
        "pass",
        "the device's key",
    );
    checked.expect("files", "key file", "pass", "mode 0600");

    registered_with(&fixture, &key, -10);
    let other = rcgen::KeyPair::generate().unwrap();
    common::write_file(&key_file, &other.serialize_pem(), 0o600);
    let checked = check(&fixture, &[]);
    checked.expect("registration", "certificate", "warn", "in 9 days");
    checked.expect(
        "registration",
        "certificate and key",
        "fail",
        "not for the device's key",
    );
    assert!(!checked.text.contains("PRIVATE KEY"));
}
