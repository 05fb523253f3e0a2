//! What the agent tells its caller: one `--json` object on stdout whatever
//! happens, debug lines only when asked for, no "registering with" before
//! the pre-flight has passed, and fioconfig started with the configuration
//! this run wrote.

mod common;

use common::*;
use device_api::{DeviceApi, Options, Reply};
use serde_json::Value;

fn api() -> DeviceApi {
    DeviceApi::start(Options::default())
}

/// stdout must be exactly one JSON object on one line; for an error, its
/// `exit_code` is the process's.
#[track_caller]
fn the_json_object(run: &Run) -> serde_json::Map<String, Value> {
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stdout: {run:?}");
    let Ok(Value::Object(object)) = serde_json::from_str(lines[0]) else {
        panic!("stdout is not a JSON object: {run:?}");
    };
    if object["status"] == "error" {
        assert_eq!(object["exit_code"], run.code, "{run:?}");
        assert!(object["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    object
}

#[test]
fn json_reports_a_wrong_flag_as_one_error_object() {
    let device = Device::new();
    let api = api();
    for (flags, says) in [
        (
            &["--no-such-flag"][..],
            "unexpected argument '--no-such-flag'",
        ),
        (&["--production", "maybe"][..], "invalid value 'maybe'"),
        (&["--request-timeout", "0"][..], "invalid value '0'"),
    ] {
        let mut cmd = device.command(&api, flags);
        cmd.arg("--json");
        let run = Device::output(cmd);
        run.assert_code(2);
        let object = the_json_object(&run);
        assert_eq!(object["status"], "error");
        assert_eq!(object["kind"], "config");
        assert_eq!(object["exit_code"], 2);
        let message = object["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
        assert!(!message.starts_with("error:"), "{message}");
        // clap's own explanation still goes to stderr.
        run.assert_says("--help");
    }
    assert!(!device.sota().exists());
    assert!(api.requests().is_empty());
}

#[test]
fn json_reports_every_failure_as_one_error_object() {
    // A configuration error.
    let api = api();
    let device = Device::new();
    let run = device.run(&api, &["--json", "-f", "lmp"]);
    let object = the_json_object(&run);
    assert_eq!((object["kind"].as_str(), run.code), (Some("config"), 2));

    // The server refuses.
    let run = device.run(&api, &["--json", "-f", "other-factory"]);
    let object = the_json_object(&run);
    assert_eq!((object["kind"].as_str(), run.code), (Some("rejected"), 4));
    assert!(object["message"]
        .as_str()
        .unwrap()
        .contains("Invalid factory(other-factory)"));

    // The server answers 201 with something unusable.
    api.push_replies([Reply::WrongKeyCert]);
    let run = device.run(&api, &["--json"]);
    let object = the_json_object(&run);
    assert_eq!(
        (object["kind"].as_str(), run.code),
        (Some("bad-response"), 6)
    );

    // Nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = format!("http://127.0.0.1:{port}/ota/devices/");
    let run = device.run(
        &api,
        &[
            "--json",
            "--device-api",
            &unreachable,
            "--retry-deadline",
            "1",
        ],
    );
    let object = the_json_object(&run);
    assert_eq!(
        (object["kind"].as_str(), run.code),
        (Some("unavailable"), 5)
    );

    // aktualizr-lite holds its lock.
    let lock_path = device.path("var/lock/aklite.lock");
    std::fs::create_dir_all(lock_path.parent().unwrap()).unwrap();
    let held = nix::fcntl::Flock::lock(
        std::fs::File::create(&lock_path).unwrap(),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .unwrap();
    let run = device.run(&api, &["--json"]);
    let object = the_json_object(&run);
    assert_eq!((object["kind"].as_str(), run.code), (Some("busy"), 8));
    drop(held);

    // A success is one object too, and the secret is in none of them.
    let run = device.run(&api, &["--json"]);
    let object = the_json_object(&run);
    assert_eq!(
        (object["status"].as_str(), run.code),
        (Some("registered"), 0)
    );
    assert!(!run.output().contains(TOKEN));
}

#[test]
fn json_already_registered_reads_the_uuid_from_the_certificate() {
    let api = api();
    let device = Device::new();
    device.run(&api, &["-n", "bench-07"]).assert_code(0);
    let uuid = api.registrations()[0].uuid.clone();

    // First boot: success, with the device's UUID and the configured name.
    let run = device.run(&api, &["--boot", "--json", "-n", "bench-07"]);
    run.assert_code(0);
    let object = the_json_object(&run);
    assert_eq!(object["status"], "already-registered");
    assert_eq!(object["profile"], "lmp");
    assert_eq!(object["uuid"], uuid.as_str());
    assert_eq!(object["name"], "bench-07");
    assert_eq!(object["factory"], FACTORY);
    assert_eq!(object["sota_dir"], device.sota().display().to_string());
    assert_eq!(object["files"], serde_json::json!([]));
    assert_eq!(object["fioconfig"], "skipped");
    assert_eq!(object["aktualizr_lite"], "skipped");

    // Without a name the device is called by its UUID, as when it registered.
    let object = the_json_object(&device.run(&api, &["--boot", "--json"]));
    assert_eq!(object["name"], uuid.as_str());

    // fioconfig rotated the certificate: sota.toml points at the new file.
    let sota = device.sota();
    std::fs::rename(sota.join("client.pem"), sota.join("client-rotated.pem")).unwrap();
    let toml_path = sota.join("sota.toml");
    let mut config: toml::Table = std::fs::read_to_string(&toml_path)
        .unwrap()
        .parse()
        .unwrap();
    config["import"]["tls_clientcert_path"] =
        toml::Value::String(sota.join("client-rotated.pem").display().to_string());
    std::fs::write(&toml_path, toml::to_string(&config).unwrap()).unwrap();
    std::fs::write(sota.join("sql.db"), b"aktualizr-lite's").unwrap();
    let object = the_json_object(&device.run(&api, &["--boot", "--json"]));
    assert_eq!(object["uuid"], uuid.as_str());

    // A technician's run: an error, exit 3, still one object.
    let run = device.run(&api, &["--json"]);
    let object = the_json_object(&run);
    assert_eq!(
        (object["kind"].as_str(), run.code),
        (Some("already-registered"), 3)
    );
    assert_eq!(api.registrations().len(), 1);
}

#[test]
fn debug_lines_show_only_when_asked_for() {
    let debug_lines = |run: &Run| {
        run.stderr
            .lines()
            .filter(|l| l.trim_start().starts_with("DEBUG"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let api = api();

    // The default, and -v (which is --validate-uuid, as in the C++ tool).
    for flags in [&[][..], &["-v"][..]] {
        let run = Device::new().run(&api, flags);
        run.assert_code(0);
        assert!(debug_lines(&run).is_empty(), "{flags:?}: {run:?}");
    }
    let device = Device::new();
    let mut quiet = device.command(&api, &[]);
    quiet.env("RUST_LOG", "info");
    let run = Device::output(quiet);
    run.assert_code(0);
    assert!(debug_lines(&run).is_empty(), "{run:?}");

    let verbose = Device::new().run(&api, &["--verbose"]);
    let device = Device::new();
    let mut rust_log = device.command(&api, &[]);
    rust_log.env("RUST_LOG", "lmp_device_register=debug");
    for run in [verbose, Device::output(rust_log)] {
        run.assert_code(0);
        let lines = debug_lines(&run);
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&api.url()) && l.contains("answered HTTP 201")),
            "{run:?}"
        );
        assert!(!run.output().contains(TOKEN), "{run:?}");
    }
}

#[test]
fn nothing_is_announced_before_the_pre_flight_has_passed() {
    const ANNOUNCED: &str = "registering with factory";
    let api = api();

    // aktualizr-lite is running: busy.
    let device = Device::new();
    let lock_path = device.path("var/lock/aklite.lock");
    std::fs::create_dir_all(lock_path.parent().unwrap()).unwrap();
    let held = nix::fcntl::Flock::lock(
        std::fs::File::create(&lock_path).unwrap(),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .unwrap();
    let run = device.run(&api, &[]);
    run.assert_code(8).assert_says("aktualizr-lite is running");
    assert!(!run.stderr.contains(ANNOUNCED), "{run:?}");
    drop(held);

    // No token and nobody to approve the OAuth flow.
    let device = Device::new();
    std::fs::remove_file(device.path("etc/lmp-device-register-token")).unwrap();
    let run = device.run(&api, &[]);
    run.assert_code(2).assert_says("no API token");
    assert!(!run.stderr.contains(ANNOUNCED), "{run:?}");

    // Registered already: by hand (exit 3) and at first boot (exit 0).
    let device = Device::new();
    device.run(&api, &[]).assert_code(0).assert_says(ANNOUNCED);
    let run = device.run(&api, &[]);
    run.assert_code(3);
    assert!(!run.stderr.contains(ANNOUNCED), "{run:?}");
    let run = device.run(&api, &["--boot"]);
    run.assert_code(0).assert_says("nothing to do");
    assert!(!run.stderr.contains(ANNOUNCED), "{run:?}");
    assert_eq!(api.registrations().len(), 1);
}

/// A fioconfig that records the environment it was started with and what
/// it could see of the files named there.
fn record_fioconfig_environment(device: &Device) -> std::path::PathBuf {
    let record = device.path("fioconfig.env");
    write_file(
        &device.stubs.join("fioconfig"),
        &format!(
            r#"#!/bin/sh
out='{}'
echo "args=$*" > "$out"
echo "SOTA_DIR=$SOTA_DIR" >> "$out"
echo "SECRETS_DIR=$SECRETS_DIR" >> "$out"
[ -d "$SECRETS_DIR" ] && echo "secrets_dir_mode=$(stat -c %a "$SECRETS_DIR")" >> "$out"
IFS=,
for path in $SOTA_DIR; do
    case "$path" in *.toml) [ -f "$path" ] && echo "read=$path" >> "$out";; esac
done
"#,
            record.display()
        ),
        0o755,
    );
    record
}

fn recorded(record: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(record)
        .unwrap_or_else(|e| panic!("fioconfig did not run ({e})"))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn fioconfig_checks_in_with_what_this_run_wrote() {
    let api = api();

    // --root: fioconfig's own defaults, under the root.
    let device = Device::new();
    let record = record_fioconfig_environment(&device);
    let root = device.root.path().display().to_string();
    device.run(&api, &[]).assert_code(0);
    let sota_toml = format!("{root}/var/sota/sota.toml");
    assert_eq!(
        recorded(&record),
        [
            ("args".into(), "check-in".into()),
            (
                "SOTA_DIR".into(),
                format!("{root}/usr/lib/sota/conf.d,{sota_toml},{root}/etc/sota/conf.d"),
            ),
            ("SECRETS_DIR".into(), format!("{root}/run/secrets")),
            ("secrets_dir_mode".into(), "700".into()),
            ("read".into(), sota_toml),
        ]
    );

    // -d: the sota.toml written there, the rest still under the root.
    let device = Device::new();
    let record = record_fioconfig_environment(&device);
    let root = device.root.path().display().to_string();
    let sota_dir = device.path("data/sota");
    device
        .run(&api, &["-d", sota_dir.to_str().unwrap()])
        .assert_code(0);
    let sota_toml = format!("{}/sota.toml", sota_dir.display());
    let env = recorded(&record);
    assert_eq!(
        env[1].1,
        format!("{root}/usr/lib/sota/conf.d,{sota_toml},{root}/etc/sota/conf.d")
    );
    assert_eq!(env[2].1, format!("{root}/run/secrets"));
    assert!(env.contains(&("read".into(), sota_toml)), "{env:?}");
    assert!(
        !device.sota().exists(),
        "nothing under the default sota dir"
    );
}
