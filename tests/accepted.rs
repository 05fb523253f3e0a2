//! After the server said yes: an answer lost on the way, a server that will
//! not sign the same device twice, and an answer that could not be stored.
//! The device must never be presented as a second identity, and when the
//! agent cannot finish it says exactly why and what to do, in the log and
//! in `--json`.

mod common;

use common::*;
use device_api::{DeviceApi, Options, Reply};

const PENDING: &str = ".lmp-device-register.pending 600";

fn strict_server() -> DeviceApi {
    DeviceApi::start(Options {
        idempotent_retries: false,
        ..Options::default()
    })
}

fn json_of(run: &Run) -> serde_json::Value {
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

/// What the agent must say when the server holds the device and will not
/// hand out its certificate again.
fn assert_explains_the_stuck_device(text: &str, uuid: &str) {
    for part in [
        format!("the server already holds device {uuid}"),
        "registered by an attempt that did not finish".to_string(),
        "will not issue its certificate again".to_string(),
        format!("delete device {uuid} in the factory and run again"),
        "run with --force to register a new identity".to_string(),
    ] {
        assert!(text.contains(&part), "missing {part:?} in:\n{text}");
    }
}

#[test]
fn an_answer_lost_at_a_strict_server_is_explained() {
    let api = strict_server();
    api.push_replies([Reply::SignThenDrop]);
    let device = Device::new();
    let run = device.run(&api, &["--json"]);
    run.assert_code(3);
    let uuids = api.posted_uuids();
    assert_eq!(uuids.len(), 2, "{run:?}");
    assert_eq!(uuids[0], uuids[1], "the retry is the same device");
    assert_explains_the_stuck_device(&run.stderr, &uuids[0]);
    let report = json_of(&run);
    assert_eq!(report["status"], "error");
    assert_eq!(report["kind"], "already-registered");
    assert_eq!(report["exit_code"], 3);
    assert_explains_the_stuck_device(report["message"].as_str().unwrap(), &uuids[0]);
    // The identity is kept: once the device is deleted in the factory, the
    // next run registers it under the same UUID.
    assert_eq!(device.sota_listing(), [PENDING]);
    assert_eq!(api.registrations().len(), 1);
}

#[test]
fn a_resumed_identity_at_a_strict_server_is_explained() {
    let api = strict_server();
    api.push_replies([Reply::SignThenDrop]);
    let device = Device::new();
    // No time to retry: the first run ends not knowing what the server did.
    device
        .run(&api, &["--retry-deadline", "0"])
        .assert_code(5)
        .assert_says("kept the identity");
    assert_eq!(device.sota_listing(), [PENDING]);

    let run = device.run(&api, &["--boot", "--json"]);
    run.assert_code(3)
        .assert_says("resuming the unfinished registration");
    let uuids = api.posted_uuids();
    assert_eq!(uuids.len(), 2);
    assert_eq!(uuids[0], uuids[1]);
    assert_explains_the_stuck_device(&run.stderr, &uuids[0]);
    let report = json_of(&run);
    assert_eq!(report["kind"], "already-registered");
    assert_explains_the_stuck_device(report["message"].as_str().unwrap(), &uuids[0]);
    assert_eq!(device.sota_listing(), [PENDING]);

    // What the message offers: --force registers a new identity.
    device
        .run(&api, &["--force"])
        .assert_code(0)
        .assert_says("--force: discarding the unfinished registration");
    assert_eq!(device.sota_listing(), REGISTERED_SOFTWARE);
    let registrations = api.registrations();
    assert_eq!(registrations.len(), 2);
    assert_ne!(registrations[1].uuid, uuids[0]);
}

#[test]
fn a_plain_409_for_a_new_identity_is_not_blamed_on_a_lost_answer() {
    let api = DeviceApi::start(Options::default());
    api.push_replies([Reply::Status {
        code: 409,
        body: "device with uuid x already exists".into(),
        content_type: "text/plain",
        retry_after: None,
    }]);
    let device = Device::new();
    let run = device.run(&api, &[]);
    run.assert_code(3);
    let run = run.output();
    assert!(
        run.contains("the server already knows this device"),
        "{run}"
    );
    assert!(!run.contains("did not finish"), "{run}");
    assert!(
        device.sota_listing().is_empty(),
        "{:?}",
        device.sota_listing()
    );
}

#[test]
fn an_answer_lost_at_an_idempotent_server_is_asked_for_again() {
    let api = DeviceApi::start(Options::default());
    api.push_replies([Reply::SignThenDrop]);
    let device = Device::new();
    device.run(&api, &["--boot"]).assert_code(0);
    assert_eq!(device.sota_listing(), REGISTERED_SOFTWARE);
    let uuids = api.posted_uuids();
    assert_eq!(uuids.len(), 2);
    assert_eq!(uuids[0], uuids[1]);
    assert_eq!(api.registrations().len(), 1);
    // The server signed the same key again: a new certificate, same device.
    let client = std::fs::read_to_string(device.sota().join("client.pem")).unwrap();
    let der = cert_of(&client);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(
        cert.public_key().raw,
        api.registrations()[0].public_key_spki_der.as_slice()
    );
}

/// An installation that fails after the answer was recorded is finished by
/// the next run from the record, without asking the server (which here
/// would refuse everything).
#[test]
fn an_answer_that_could_not_be_stored_is_stored_by_the_next_run() {
    let api = strict_server();
    let device = Device::new();
    // A directory where the agent puts client.pem's temporary file.
    let blocker = device.sota().join(".client.pem.tmp");
    std::fs::create_dir_all(&blocker).unwrap();
    let run = device.run(&api, &["--boot"]);
    run.assert_code(1)
        .assert_says("cannot write")
        .assert_says("the next run finishes storing it without registering it again");
    let listing = device.sota_listing();
    assert!(listing.contains(&PENDING.to_string()), "{listing:?}");
    assert!(
        !listing.iter().any(|f| f.starts_with("sota.toml")),
        "{listing:?}"
    );
    std::fs::remove_dir(&blocker).unwrap();

    api.push_replies([Reply::Status {
        code: 500,
        body: "must not be asked".into(),
        content_type: "text/plain",
        retry_after: None,
    }]);
    device
        .run(&api, &["--boot"])
        .assert_code(0)
        .assert_says("finishing the registration of");
    assert_eq!(device.sota_listing(), REGISTERED_SOFTWARE);
    assert_eq!(api.posted_uuids().len(), 1, "the server was asked once");
    assert_eq!(api.registrations().len(), 1);
    let client = std::fs::read_to_string(device.sota().join("client.pem")).unwrap();
    assert_eq!(
        cert_of(&client),
        cert_of(&api.registrations()[0].client_pem)
    );
}
