//! End-to-end registrations with a software key: the built binary against the
//! loopback registration API, asserting exit code, message and the exact
//! state of the sota dir after every run.

mod common;

use common::*;
use device_api::{DeviceApi, Options, Reply};
use std::time::Duration;
use x509_parser::prelude::*;

fn api() -> DeviceApi {
    DeviceApi::start(Options::default())
}

fn status(code: u16, body: &str) -> Reply {
    Reply::Status {
        code,
        body: body.into(),
        content_type: "text/plain",
        retry_after: None,
    }
}

#[test]
fn registers_and_writes_a_valid_sota_dir() {
    let api = api();
    let device = Device::new();
    let run = device.run(&api, &["-n", "bench-07", "--json"]);
    run.assert_code(0).assert_says("registered device");

    assert_eq!(device.sota_listing(), REGISTERED_SOFTWARE);
    let sota_mode = std::fs::metadata(device.sota()).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&sota_mode.permissions()) & 0o777,
        0o700
    );

    let registrations = api.registrations();
    assert_eq!(registrations.len(), 1);
    let reg = &registrations[0];
    assert_eq!(reg.name, "bench-07");
    assert_eq!(reg.factory, FACTORY);
    assert_eq!(reg.hardware_id, HWID);
    assert!(!reg.production);
    assert!(reg.use_ostree_server);
    assert_eq!(reg.sota_config_dir, device.sota().display().to_string());
    assert_eq!(reg.overrides["pacman"]["tags"], "\"main\"");

    // The certificate on disk is the one the server issued, for the key on disk.
    let client_pem = std::fs::read_to_string(device.sota().join("client.pem")).unwrap();
    assert_eq!(client_pem, reg.client_pem);
    let key_pem = std::fs::read_to_string(device.sota().join("pkey.pem")).unwrap();
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let der = cert_of(&client_pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(cn, reg.uuid);

    let sota: toml::Table = std::fs::read_to_string(device.sota().join("sota.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(sota["pacman"]["tags"].as_str(), Some("main"));

    let result: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(result["status"], "registered");
    assert_eq!(result["uuid"], reg.uuid.as_str());
    assert_eq!(result["name"], "bench-07");
    assert_eq!(result["fioconfig"], "done");
    assert_eq!(result["aktualizr_lite"], "skipped");

    // fioconfig ran; aktualizr-lite was not started (--start-daemon 0).
    assert_eq!(device.calls(), ["fioconfig check-in"]);
    assert!(device.path("run/secrets").is_dir());
}

#[test]
fn https_with_a_pinned_factory_ca() {
    let api = DeviceApi::start(Options {
        tls: true,
        ..Options::default()
    });
    let device = Device::new();
    write_file(&device.path("ca.pem"), &api.server_ca_pem(), 0o644);

    // The system roots do not know the factory CA: a clear, final error.
    let run = device.run(&api, &[]);
    run.assert_code(2).assert_says("--cacert");
    assert!(
        api.requests().len() <= 1,
        "a TLS failure must not be retried"
    );
    assert!(
        device.sota_listing().is_empty(),
        "{:?}",
        device.sota_listing()
    );

    let ca = device.path("ca.pem");
    device
        .run(&api, &["--cacert", ca.to_str().unwrap()])
        .assert_code(0);
    assert_eq!(device.sota_listing(), REGISTERED_SOFTWARE);
    assert_eq!(api.registrations().len(), 1);
}

#[test]
fn starts_aktualizr_lite_by_default_and_reports_a_failed_check_in() {
    let api = api();
    let device = Device::new();
    device.stub("fioconfig", 1);
    let run = device.run(&api, &["--start-daemon", "--json"]);
    // The end of each step is logged, whatever its outcome.
    run.assert_code(0)
        .assert_says("check-in failed")
        .assert_says("systemctl start aktualizr-lite finished");
    // The journal's fields stay out of a technician's terminal.
    for field in ["message_id", "registration_result", "device_uuid"] {
        assert!(!run.stderr.contains(field), "{}", run.stderr);
    }
    assert_eq!(
        device.calls(),
        ["fioconfig check-in", "systemctl start aktualizr-lite"]
    );
    let result: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert!(result["fioconfig"]["failed"]
        .as_str()
        .unwrap()
        .contains("exited with 1"));
    assert_eq!(result["aktualizr_lite"], "done");
    assert_eq!(device.sota_listing(), REGISTERED_SOFTWARE);
}

#[test]
fn old_style_boolean_flags_and_production() {
    let api = api();
    let device = Device::new();
    device
        .run(
            &api,
            &[
                "--production",
                "true",
                "--use-ostree-server",
                "0",
                "--force",
                "1",
                "-g",
                "lab",
            ],
        )
        .assert_code(0);
    let reg = &api.registrations()[0];
    assert!(reg.production);
    assert!(!reg.use_ostree_server);
    assert_eq!(reg.group.as_deref(), Some("lab"));
}

#[test]
fn settings_come_from_the_device_files() {
    let api = api();
    let device = Device::new();
    write_file(
        &device.path("etc/os-release"),
        "ID=lmp\nLMP_FACTORY=\"demo-factory\"\nLMP_FACTORY_TAG='devel'\n",
        0o644,
    );
    write_file(&device.path("etc/sota/tag"), "  production-line\n", 0o644);
    write_file(&device.path("etc/hostname"), "gateway-12\n", 0o644);
    std::fs::create_dir_all(device.path("var/sota/compose-apps/shellhttpd")).unwrap();
    std::fs::create_dir_all(device.path("var/sota/compose-apps/agent")).unwrap();

    let mut cmd = device.bare_command();
    cmd.env("DEVICE_API", api.url())
        .env("USE_HOSTNAME", "1")
        .env("PRODUCTION", "yes")
        .args(["-i", HWID]);
    let run = Device::output(cmd);
    run.assert_code(0)
        .assert_says("tags read from")
        .assert_says("etc/sota/tag");
    let reg = &api.registrations()[0];
    assert_eq!(reg.name, "gateway-12");
    assert_eq!(reg.factory, FACTORY);
    assert!(reg.production);
    assert_eq!(reg.overrides["pacman"]["tags"], "\"production-line\"");
    assert_eq!(
        reg.overrides["pacman"]["compose_apps"],
        "\"agent,shellhttpd\""
    );
    assert_eq!(reg.overrides["pacman"]["type"], "\"ostree+compose_apps\"");
    assert!(reg.overrides["pacman"].get("reset_apps").is_none());
}

#[test]
fn configuration_errors_write_nothing() {
    let api = api();
    // (flags, a device file to write, what the error must say)
    type Case<'a> = (Vec<&'a str>, Option<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["-f", "lmp"], None, "missing factory"),
        (vec!["-f", ""], None, "missing factory"),
        (vec!["-t", ""], None, "missing tag"),
        (vec!["-u", "not-a-uuid"], None, "invalid UUID"),
        (vec!["-P", "12345678"], None, "without --hsm-module"),
        (vec!["-S", "12345678"], None, "without --hsm-module"),
        (
            vec!["--production", "maybe"],
            None,
            "expected 1/true/yes/on",
        ),
        (
            vec!["--device-api", "ftp://x/"],
            None,
            "http:// or https://",
        ),
        (
            vec![],
            Some((
                "etc/sota/hsm",
                "HSM_MODULE=/usr/lib/libckteec.so.0\nHSM_PIN=1234\n",
            )),
            "missing HSM_SOPIN",
        ),
        (
            vec![],
            Some(("etc/lmp-device-register-token", "")),
            "token file is empty",
        ),
        (
            vec![],
            Some(("etc/lmp-device-register-token", "a\nb\n")),
            "single line",
        ),
    ];
    for (args, file, expected) in cases {
        let device = Device::new();
        if let Some((rel, contents)) = file {
            write_file(&device.path(rel), contents, 0o600);
        }
        let run = device.run(&api, &args);
        run.assert_code(2).assert_says(expected);
        assert!(
            !device.sota().exists(),
            "{args:?}: {:?}",
            device.sota_listing()
        );
    }
    assert!(api.registrations().is_empty());
}

#[test]
fn secrets_in_configuration_errors_are_not_echoed() {
    let api = api();
    let device = Device::new();
    write_file(
        &device.path("etc/sota/hsm"),
        "HSM_MODULE=/usr/lib/libckteec.so.0\nHSM_PIN=\"s3cr3t-pin unterminated\nHSM_SOPIN=87654321\n",
        0o600,
    );
    let run = device.run(&api, &[]);
    run.assert_code(2).assert_says("etc/sota/hsm");
    assert!(!run.output().contains("s3cr3t"), "{}", run.output());
}

#[test]
fn empty_tag_file_is_a_clear_error() {
    let api = api();
    let device = Device::new();
    write_file(&device.path("etc/sota/tag"), " \n", 0o644);
    // Without the harness's "-t main", so that the tag file is read.
    let run_without_tag_flag = || {
        let mut cmd = device.bare_command();
        cmd.args(["--device-api", &api.url(), "-f", FACTORY, "-i", HWID]);
        Device::output(cmd)
    };
    run_without_tag_flag()
        .assert_code(2)
        .assert_says("the tag file is empty");
    write_file(&device.path("etc/sota/tag"), "main\ndevel\n", 0o644);
    run_without_tag_flag()
        .assert_code(2)
        .assert_says("single line");
    assert!(!device.sota().exists());
}

#[test]
fn server_refusals_leave_nothing_behind() {
    let cases: Vec<(Reply, i32, &str)> = vec![
        (
            status(400, "csr: bad request"),
            4,
            "HTTP 400: csr: bad request",
        ),
        (
            Reply::Status {
                code: 400,
                body: r#"{"errors": {"name": "too long"}}"#.into(),
                content_type: "application/json",
                retry_after: None,
            },
            4,
            "HTTP 400: name: too long",
        ),
        (status(401, "invalid token"), 4, "HTTP 401: invalid token"),
        (
            status(409, "device with uuid x already exists"),
            3,
            "HTTP 409",
        ),
        (
            Reply::Redirect("http://127.0.0.1:9/x".into()),
            4,
            "redirects are not followed",
        ),
        (Reply::Garbage, 6, "not the expected JSON"),
        (Reply::WrongKeyCert, 6, "certifies a different key"),
        (Reply::NonStringValue, 6, "is not a string"),
        (Reply::ExpiredCert, 6, "expired"),
        (Reply::ForeignChain, 6, "does not lead to root.crt"),
        (Reply::BadToml, 6, "sota.toml is not valid TOML"),
        (Reply::Oversized(2 * 1024 * 1024), 6, "larger than"),
        (
            Reply::ExtraFile {
                name: "../evil".into(),
                content: "x".into(),
            },
            6,
            "not a plain file name",
        ),
        (
            Reply::ExtraFile {
                name: "/etc/passwd".into(),
                content: "x".into(),
            },
            6,
            "not a plain file name",
        ),
        (
            Reply::ExtraFile {
                name: ".hidden".into(),
                content: "x".into(),
            },
            6,
            "not a plain file name",
        ),
        (
            Reply::ExtraFile {
                name: "a\0b".into(),
                content: "x".into(),
            },
            6,
            "not a plain file name",
        ),
    ];
    for (reply, code, expected) in cases {
        let api = api();
        api.push_replies([reply.clone()]);
        let device = Device::new();
        let run = device.run(&api, &[]);
        assert_eq!(run.code, code, "{reply:?}: {}", run.stderr);
        assert!(run.stderr.contains(expected), "{reply:?}: {}", run.stderr);
        assert!(
            device.sota_listing().is_empty(),
            "{reply:?}: {:?}",
            device.sota_listing()
        );
        assert!(
            device.calls().is_empty(),
            "{reply:?}: nothing runs after a failure"
        );
        assert!(!device.path("evil").exists() && !device.path("var/evil").exists());
    }
}

#[test]
fn wrong_factory_is_refused_by_the_server() {
    let api = api();
    let device = Device::new();
    device
        .run(&api, &["-f", "other-factory"])
        .assert_code(4)
        .assert_says("Invalid factory(other-factory) must be demo-factory");
    assert!(device.sota_listing().is_empty());
}

#[test]
fn a_server_that_keeps_failing_is_retried_as_one_device_then_forgotten() {
    let api = DeviceApi::start(Options {
        default_reply: status(500, "database on fire"),
        ..Options::default()
    });
    let device = Device::new();
    let run = device.run(&api, &["--retry-deadline", "2"]);
    run.assert_code(5).assert_says("HTTP 500: database on fire");
    // The server answered every time: it has no device, so nothing is kept.
    assert!(
        device.sota_listing().is_empty(),
        "{:?}",
        device.sota_listing()
    );
    let posts: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert!(posts.len() >= 2, "5xx is retried");
    let first: serde_json::Value = serde_json::from_slice(&posts[0].body).unwrap();
    let last: serde_json::Value = serde_json::from_slice(&posts.last().unwrap().body).unwrap();
    assert_eq!(first["uuid"], last["uuid"]);
    assert_eq!(first["csr"], last["csr"]);
}

#[test]
fn an_unanswered_request_keeps_the_identity_for_the_next_run() {
    let api = DeviceApi::start(Options {
        default_reply: Reply::Hang(Duration::from_secs(30)),
        ..Options::default()
    });
    let device = Device::new();
    let run = device.run(&api, &["--retry-deadline", "1", "--request-timeout", "1"]);
    run.assert_code(5)
        .assert_says("timed out")
        .assert_says("kept the identity");
    // The server may have acted on it: only the private pending identity remains.
    assert_eq!(device.sota_listing(), [".lmp-device-register.pending 600"]);
    let first_uuid = {
        let posts: Vec<_> = api
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect();
        let body: serde_json::Value = serde_json::from_slice(&posts[0].body).unwrap();
        body["uuid"].as_str().unwrap().to_string()
    };
    drop(api);

    let api = DeviceApi::start(Options::default());
    device.run(&api, &[]).assert_code(0).assert_says("resuming");
    assert_eq!(device.sota_listing(), REGISTERED_SOFTWARE);
    assert_eq!(api.registrations()[0].uuid, first_uuid);
}

#[test]
fn already_registered_unless_forced() {
    let api = api();
    let device = Device::new();
    device.run(&api, &[]).assert_code(0);
    std::fs::write(device.sota().join("sql.db"), b"aklite state").unwrap();
    let first_uuid = api.registrations()[0].uuid.clone();

    device
        .run(&api, &[])
        .assert_code(3)
        .assert_says("already registered");
    // First-boot mode: the same situation is success, with one line.
    let boot = device.run(&api, &["--boot", "--json"]);
    boot.assert_code(0).assert_says("nothing to do");
    assert!(boot.stdout.contains("\"already-registered\""));
    assert_eq!(api.registrations().len(), 1);

    device.run(&api, &["--force"]).assert_code(0);
    assert_eq!(
        device.sota_listing(),
        REGISTERED_SOFTWARE,
        "sql.db of the old identity is gone"
    );
    let regs = api.registrations();
    assert_eq!(regs.len(), 2);
    assert_ne!(regs[1].uuid, first_uuid);
}

#[test]
fn a_running_aktualizr_lite_blocks_registration() {
    let api = api();
    let device = Device::new();
    let lock_path = device.path("var/lock/aklite.lock");
    std::fs::create_dir_all(lock_path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(&lock_path).unwrap();
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    device
        .run(&api, &[])
        .assert_code(8)
        .assert_says("aktualizr-lite is running");
    assert!(device.sota_listing().is_empty());
    drop(held);
    device.run(&api, &[]).assert_code(0);
}

#[test]
fn an_unreachable_server_is_reported_before_any_key_is_made() {
    // Bind and drop a port so nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let device = Device::new();
    let api = api();
    let run = device.run(
        &api,
        &[
            "--device-api",
            &format!("http://127.0.0.1:{port}/ota/devices/"),
            "--retry-deadline",
            "1",
        ],
    );
    run.assert_code(5).assert_says("cannot reach");
    assert!(device.sota_listing().is_empty());
}

#[test]
fn no_token_without_a_terminal_is_a_clear_error() {
    let api = api();
    let device = Device::new();
    std::fs::remove_file(device.path("etc/lmp-device-register-token")).unwrap();
    device
        .run(&api, &[])
        .assert_code(2)
        .assert_says("no API token");
    assert!(device.sota_listing().is_empty());
}

#[test]
fn token_on_the_command_line_works_with_a_warning() {
    let api = api();
    let device = Device::new();
    std::fs::remove_file(device.path("etc/lmp-device-register-token")).unwrap();
    device
        .run(&api, &["-T", TOKEN])
        .assert_code(0)
        .assert_says("readable by every local user");
}

#[test]
fn a_world_readable_token_file_is_warned_about() {
    let api = api();
    let device = Device::new();
    let token = device.path("etc/lmp-device-register-token");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    device
        .run(&api, &[])
        .assert_code(0)
        .assert_says("readable by group or others");
}
