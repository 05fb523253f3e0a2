//! Real first boots: the agent and systemd/lmp-device-register.service under
//! a real systemd with journald, in a Debian tree booted by systemd-nspawn,
//! against the registration API double in a network namespace of the
//! test's own. Each scenario boots its own copy of the tree.
//!
//! The tests need root, debootstrap and systemd-nspawn and boot containers,
//! so plain `cargo test` leaves them out (`#[ignore]`). Run them with
//!
//! ```sh
//! sudo cargo test --test firstboot -- --ignored
//! ```
//!
//! `.ci/run` does, with the release build (`LMP_BOOT_TEST_AGENT`). The first
//! run makes the Debian tree (about 1.5 min, cached under target/tmp/).

mod common;
mod firstboot_support;
mod hsm_support;

use device_api::{Options, Registration, Reply};
use firstboot_support::image::{self, Image, Layout};
use firstboot_support::machine::{
    by_boot, persisted_journal, persisted_journal_export, Entry, Machine, UNIT,
};
use firstboot_support::net::Net;
use firstboot_support::wait_for;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The MESSAGE_ID of the agent's result line (documented in the unit and
/// the README; fleet tooling filters on it).
const RESULT_ID: &str = "a6b0462edfb34591aeeb05d885a78cfb";
const RESULT_MATCH: &str = "MESSAGE_ID=a6b0462edfb34591aeeb05d885a78cfb";
const REFUSAL: &str = "devices of this model are not allowed in boot-factory";

/// Whether this machine can boot containers; says why not when it cannot.
fn setup() -> bool {
    match firstboot_support::can_boot() {
        Ok(()) => {
            firstboot_support::sweep_dead_runs();
            true
        }
        Err(why) => {
            println!("NOTICE: not booting any container: {why}");
            false
        }
    }
}

fn api_options() -> Options {
    Options {
        factory: image::FACTORY.into(),
        token: image::TOKEN.into(),
        ..Options::default()
    }
}

fn lmp_image(scenario: &str) -> Image {
    Image::new(scenario, &Layout::lmp(&Net::device_api_url()))
}

fn dump(entries: &[Entry]) -> String {
    entries.iter().map(|e| format!("{e}\n")).collect::<String>()
}

fn agent_lines(entries: &[Entry]) -> Vec<Entry> {
    entries.iter().filter(|e| e.is_agents()).cloned().collect()
}

#[track_caller]
fn line_saying<'a>(entries: &'a [Entry], text: &str) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.message().contains(text))
        .unwrap_or_else(|| panic!("no journal line says {text:?}:\n{}", dump(entries)))
}

/// The agent's "attempt N failed …; retrying" lines.
fn retry_lines(entries: &[Entry]) -> Vec<Entry> {
    entries
        .iter()
        .filter(|e| e.is_agents() && e.message().contains("registering: attempt"))
        .cloned()
        .collect()
}

/// The one result line of a run, found by its MESSAGE_ID.
#[track_caller]
fn the_result(entries: &[Entry]) -> Entry {
    let results: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.get("MESSAGE_ID") == Some(RESULT_ID))
        .collect();
    assert_eq!(results.len(), 1, "result lines:\n{}", dump(entries));
    let result = results[0].clone();
    assert!(result.is_agents(), "{result}");
    // Every field once: the run's context is recorded once.
    for field in ["DEVICE_UUID", "FACTORY", "PROFILE", "REGISTRATION_RESULT"] {
        assert!(result.count(field) <= 1, "{field} repeats: {:?}", result.0);
    }
    result
}

/// The unit properties worth showing when an assertion fails.
fn brief(unit: &BTreeMap<String, String>) -> String {
    [
        "ActiveState",
        "SubState",
        "Result",
        "ExecMainStatus",
        "NRestarts",
    ]
    .iter()
    .map(|k| format!("{k}={} ", unit.get(*k).map(String::as_str).unwrap_or("?")))
    .collect()
}

#[track_caller]
fn assert_finished(unit: &BTreeMap<String, String>, result: &str, status: &str) {
    let get = |k: &str| unit.get(k).map(String::as_str).unwrap_or_default();
    assert_eq!(
        (get("Result"), get("ExecMainStatus")),
        (result, status),
        "{}",
        brief(unit)
    );
}

fn micros(props: &BTreeMap<String, String>, key: &str) -> u64 {
    props
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {props:?}"))
}

/// How long after `since_us` (CLOCK_MONOTONIC) the result line came.
#[track_caller]
fn registered_after(result: &Entry, since_us: u64) -> Duration {
    assert_eq!(
        result.get("REGISTRATION_RESULT"),
        Some("registered"),
        "{result}"
    );
    let at = result.monotonic();
    assert!(
        at > since_us,
        "registered before the network was there: {result}"
    );
    Duration::from_micros(at - since_us)
}

#[track_caller]
fn wait_until_booted(machine: &Machine) -> String {
    wait_for(Duration::from_secs(60), "the boot to finish", || {
        let state = machine.system_state();
        matches!(state.as_str(), "running" | "degraded").then_some(state)
    })
}

#[test]
#[ignore = "boots containers as root: cargo test --test firstboot -- --ignored"]
fn network_up_registers_and_a_reboot_is_already_registered() {
    if !setup() {
        return;
    }
    let net = Net::new(true);
    let api = net.start_api(api_options());
    let image = lmp_image("network-up");
    let mut first = Machine::boot(&image, &net, "boot1");
    let unit = first.wait_for_agent(Duration::from_secs(90));
    assert_finished(&unit, "success", "0");
    assert_eq!(
        (unit["ActiveState"].as_str(), unit["SubState"].as_str()),
        ("active", "exited")
    );
    let registrations = api.registrations();
    assert_eq!(registrations.len(), 1);
    let device: &Registration = &registrations[0];
    assert_eq!(device.hardware_id, image::MACHINE);
    assert_eq!(device.factory, image::FACTORY);

    // The agent's lines: its own identifier, its unit, syslog priorities.
    let journal = first.journal(&[]);
    let agent = agent_lines(&journal);
    for line in &agent {
        assert_eq!(line.get("_SYSTEMD_UNIT"), Some(UNIT), "{line}");
        assert!(matches!(line.priority(), 4 | 6), "{line}");
    }
    assert_eq!(
        line_saying(&agent, "registering with factory").priority(),
        6
    );
    assert_eq!(line_saying(&agent, "is plain http").priority(), 4);
    // The end of each step after the commit is logged, not only its start.
    line_saying(&agent, "fioconfig check-in finished");
    line_saying(&agent, "systemctl start aktualizr-lite finished");

    // The result as fields, found by its MESSAGE_ID.
    let result = the_result(&first.journal(&[RESULT_MATCH]));
    assert_eq!(result.priority(), 6);
    assert_eq!(result.get("REGISTRATION_RESULT"), Some("registered"));
    assert_eq!(result.get("DEVICE_UUID"), Some(device.uuid.as_str()));
    assert_eq!(result.get("FACTORY"), Some(image::FACTORY));
    assert_eq!(result.get("PROFILE"), Some("lmp"));
    assert!(
        result
            .message()
            .starts_with(&format!("registered device {}", device.uuid)),
        "{result}"
    );
    println!(
        "{}",
        first.journal_text(&[RESULT_MATCH, "--output=verbose"])
    );
    // The announcement already carries the context known by then.
    let announce = line_saying(&agent, "registering with factory");
    assert_eq!(announce.get("FACTORY"), Some(image::FACTORY));
    assert_eq!(announce.get("PROFILE"), Some("lmp"));

    // What waits for the registration runs now, and the boot is complete.
    assert_eq!(
        first.show("aktualizr-lite.service")["ActiveState"],
        "active"
    );
    assert_eq!(first.show("fioconfig.service")["ActiveState"], "active");
    assert_eq!(wait_until_booted(&first), "running");
    let requests = api.requests().len();
    let halt = first.stop();
    println!("first boot: registered; halt took {halt:?}");

    // Reboot: already registered, nothing asked of the server, no delay.
    let mut second = Machine::boot(&image, &net, "boot2");
    let unit = second.wait_for_agent(Duration::from_secs(60));
    assert_finished(&unit, "success", "0");
    let result = the_result(&second.journal(&[RESULT_MATCH]));
    assert_eq!(
        result.get("REGISTRATION_RESULT"),
        Some("already-registered")
    );
    assert_eq!(result.get("DEVICE_UUID"), Some(device.uuid.as_str()));
    assert_eq!(result.get("FACTORY"), Some(image::FACTORY));
    let ran = micros(&unit, "ExecMainExitTimestampMonotonic")
        - micros(&unit, "ExecMainStartTimestampMonotonic");
    println!("second boot: already registered in {} ms", ran / 1000);
    assert!(
        ran < 2_000_000,
        "the agent took {ran} µs on a registered device"
    );
    assert_eq!(wait_until_booted(&second), "running");
    assert_eq!(api.requests().len(), requests, "a request on reboot");
    second.stop();

    // Neither boot's journal holds the token, in any field.
    let boots = by_boot(&persisted_journal(&image, &[]));
    assert_eq!(boots.len(), 2);
    let export = persisted_journal_export(&image);
    assert!(export.contains(&device.uuid), "the export holds the runs");
    assert!(
        !export.contains(image::TOKEN),
        "the API token is in the journal"
    );
}

#[test]
#[ignore = "boots containers as root: cargo test --test firstboot -- --ignored"]
fn network_down_at_boot_registers_once_the_link_is_up() {
    if !setup() {
        return;
    }
    let net = Net::new(false);
    let api = net.start_api(api_options());
    let image = lmp_image("network-down");
    let machine = Machine::boot(&image, &net, "boot1");

    // No carrier: the boot completes while the agent keeps trying.
    assert_eq!(wait_until_booted(&machine), "running");
    let unit = machine.show(UNIT);
    assert_eq!(
        (unit["ActiveState"].as_str(), unit["SubState"].as_str()),
        ("active", "running"),
        "{}",
        brief(&unit)
    );
    let link_up_at = machine.booted_at + Duration::from_secs(20);
    std::thread::sleep(link_up_at.saturating_duration_since(Instant::now()));
    let retries = retry_lines(&machine.journal(&[]));
    assert!(!retries.is_empty(), "no retry while the link was down");
    assert!(api.requests().is_empty());

    let plugged = firstboot_support::monotonic_us();
    net.plug(true);
    let unit = machine.wait_for_agent(Duration::from_secs(150));
    assert_finished(&unit, "success", "0");
    let journal = machine.journal(&[]);
    let took = registered_after(&the_result(&journal), plugged);
    let woken = line_saying(&journal, "the network changed; trying again now");
    // The rest of `took` is the registration itself (its request and
    // stored files), which a loaded machine stretches.
    let woken_after = Duration::from_micros(woken.monotonic().saturating_sub(plugged));
    println!(
        "link down at boot: registered {:.2} s after the link came up (target 1 s; the attempt started after {:.2} s), after {} failed attempts",
        took.as_secs_f64(),
        woken_after.as_secs_f64(),
        retry_lines(&journal).len()
    );
    assert!(took <= Duration::from_secs(5), "{took:?}");

    println!("{}", machine.journal_text(&["--unit", UNIT]));
    let registrations = api.registrations();
    assert_eq!(registrations.len(), 1, "one identity at the server");
    assert!(api
        .posted_uuids()
        .iter()
        .all(|uuid| *uuid == registrations[0].uuid));
    let journal = machine.journal(&[]);
    let result = the_result(&journal);
    assert_eq!(result.get("REGISTRATION_RESULT"), Some("registered"));
    for retry in retry_lines(&journal) {
        assert_eq!(retry.priority(), 4, "{retry}");
        assert!(retry.message().contains("; retrying in "), "{retry}");
        assert!(retry.monotonic() < result.monotonic());
    }
}

#[test]
#[ignore = "boots containers as root: cargo test --test firstboot -- --ignored"]
fn a_refusal_fails_the_unit_once_and_the_boot_completes() {
    if !setup() {
        return;
    }
    let net = Net::new(true);
    let api = net.start_api(Options {
        default_reply: Reply::Status {
            code: 403,
            body: REFUSAL.into(),
            content_type: "text/plain",
            retry_after: None,
        },
        ..api_options()
    });
    // Restarts one second apart instead of ten minutes, so that a restart
    // that must not happen would happen within the test.
    let image = Image::new(
        "refused",
        &Layout {
            drop_in: Some("[Service]\nRestartSec=1s\n".into()),
            ..Layout::lmp(&Net::device_api_url())
        },
    );
    let machine = Machine::boot(&image, &net, "boot1");
    let unit = machine.wait_for_agent(Duration::from_secs(60));
    assert_finished(&unit, "exit-code", "4");
    std::thread::sleep(Duration::from_secs(4));
    let unit = machine.show(UNIT);
    assert_eq!(unit["ActiveState"], "failed");
    assert_eq!(unit["NRestarts"], "0", "a refusal is not retried");
    assert_eq!(api.posted_uuids().len(), 1);

    let result = the_result(&machine.journal(&[RESULT_MATCH]));
    assert_eq!(result.priority(), 3);
    assert!(result.message().contains(REFUSAL), "{result}");
    assert_eq!(result.get("REGISTRATION_RESULT"), Some("error"));
    assert_eq!(result.get("ERROR_KIND"), Some("rejected"));
    assert_eq!(result.get("EXIT_CODE"), Some("4"));
    assert_eq!(
        result.get("DEVICE_UUID"),
        Some(api.posted_uuids()[0].as_str())
    );
    assert_eq!(result.get("FACTORY"), Some(image::FACTORY));

    // The system is up; only this unit failed.
    assert_eq!(wait_until_booted(&machine), "degraded");
    assert_eq!(machine.show("multi-user.target")["ActiveState"], "active");
    let failed = machine.exec(&[
        "systemctl",
        "list-units",
        "--failed",
        "--plain",
        "--no-legend",
    ]);
    let failed = String::from_utf8_lossy(&failed.stdout);
    let names: Vec<&str> = failed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, [UNIT]);
}

#[test]
#[ignore = "boots containers as root: cargo test --test firstboot -- --ignored"]
fn shutdown_during_registration_stops_cleanly_and_the_next_boot_keeps_the_identity() {
    if !setup() {
        return;
    }
    let net = Net::new(true);
    let api = net.start_api(api_options());
    // The first answer would come long after the device is switched off.
    api.push_replies([Reply::Delay(
        Duration::from_secs(300),
        Box::new(Reply::Sign),
    )]);
    let image = lmp_image("shutdown");
    let mut first = Machine::boot(&image, &net, "boot1");
    let uuid = wait_for(Duration::from_secs(60), "the first request", || {
        api.posted_uuids().first().cloned()
    });
    let halt = first.stop();
    println!("halted {halt:?} after the request went out");
    assert!(halt < Duration::from_secs(20), "the halt took {halt:?}");
    assert!(
        image.path("var/sota/.lmp-device-register.pending").exists(),
        "the pending identity is kept"
    );

    let boots = by_boot(&persisted_journal(&image, &[]));
    let first_boot = &boots[0];
    let result = the_result(first_boot);
    assert_eq!(result.priority(), 3);
    assert_eq!(result.get("ERROR_KIND"), Some("interrupted"));
    assert_eq!(result.get("EXIT_CODE"), Some("9"));
    assert_eq!(result.get("DEVICE_UUID"), Some(uuid.as_str()));
    assert!(result.message().contains("stopped by SIGTERM"), "{result}");
    // systemd's own lines about the unit: stopped at once, nothing killed.
    let about_unit: Vec<Entry> = first_boot
        .iter()
        .filter(|e| e.get("UNIT") == Some(UNIT))
        .cloned()
        .collect();
    let stopping = line_saying(&about_unit, "Stopping");
    let stopped = about_unit
        .iter()
        .find(|e| e.monotonic() > stopping.monotonic() && e.message().contains("Stopped"))
        .unwrap_or_else(|| panic!("no end of the stop:\n{}", dump(&about_unit)));
    println!("{}", dump(&about_unit));
    let stop_took = stopped.monotonic() - stopping.monotonic();
    println!("the unit stopped in {} ms", stop_took / 1000);
    assert!(stop_took < 5_000_000, "{}", dump(&about_unit));
    assert!(
        !about_unit
            .iter()
            .any(|e| e.message().contains("SIGKILL") || e.message().contains("timed out")),
        "{}",
        dump(&about_unit)
    );

    // The next boot registers the same device.
    let second = Machine::boot(&image, &net, "boot2");
    let unit = second.wait_for_agent(Duration::from_secs(90));
    assert_finished(&unit, "success", "0");
    line_saying(
        &second.journal(&[]),
        &format!("resuming the unfinished registration of {uuid}"),
    );
    let result = the_result(&second.journal(&[RESULT_MATCH]));
    assert_eq!(result.get("DEVICE_UUID"), Some(uuid.as_str()));
    assert!(api.posted_uuids().iter().all(|posted| *posted == uuid));
    let registrations = api.registrations();
    assert!(!registrations.is_empty());
    assert!(registrations.iter().all(|r| r.uuid == uuid));
}

#[test]
#[ignore = "boots containers as root: cargo test --test firstboot -- --ignored"]
fn hsm_registration_keeps_the_key_in_the_token() {
    use cryptoki::object::{AttributeType, ObjectClass};
    if !setup() {
        return;
    }
    let net = Net::new(true);
    let api = net.start_api(api_options());
    let image = Image::new(
        "hsm",
        &Layout {
            hsm: true,
            ..Layout::lmp(&Net::device_api_url())
        },
    );
    let mut machine = Machine::boot(&image, &net, "boot1");
    let unit = machine.wait_for_agent(Duration::from_secs(90));
    assert_finished(&unit, "success", "0");
    machine.stop();
    let registrations = api.registrations();
    assert_eq!(registrations.len(), 1);
    let device = &registrations[0];
    assert!(
        !image.path("var/sota/pkey.pem").exists(),
        "a key file beside the token"
    );
    let sota_toml = std::fs::read_to_string(image.path("var/sota/sota.toml")).unwrap();
    assert!(sota_toml.contains("[p11]"), "{sota_toml}");
    let journal = persisted_journal_export(&image);
    for secret in [image::TOKEN, image::HSM_PIN, image::HSM_SO_PIN] {
        assert!(!journal.contains(secret), "a secret is in the journal");
    }

    // The device's token, read from the host.
    let conf = image.root.parent().unwrap().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            image.path("var/lib/softhsm/tokens").display()
        ),
    )
    .unwrap();
    let softhsm = hsm_support::open_softhsm(&conf);
    let session = softhsm.login(image::HSM_PIN);
    let objects = hsm_support::objects(&session);
    let key = objects
        .iter()
        .find(|o| o.class == ObjectClass::PRIVATE_KEY)
        .expect("the private key is in the token");
    assert_eq!((key.label.as_str(), key.id.as_slice()), ("tls", &[1u8][..]));
    assert_eq!(key.bool(AttributeType::Sensitive), Some(true));
    assert_eq!(key.bool(AttributeType::Extractable), Some(false));
    let cert = objects
        .iter()
        .find(|o| o.class == ObjectClass::CERTIFICATE)
        .expect("the certificate is in the token");
    assert_eq!(
        (cert.label.as_str(), cert.id.as_slice()),
        ("client", &[3u8][..])
    );
    let issued = hsm_support::pem_certs(&device.client_pem).remove(0);
    assert_eq!(cert.bytes(AttributeType::Value), Some(issued.clone()));
    // The key in the token is the one the server certified.
    let (_, parsed) = x509_parser::parse_x509_certificate(&issued).unwrap();
    let public_key = parsed.public_key().subject_public_key.data.to_vec();
    let handle = hsm_support::tls_private_key(&session);
    let message = b"first boot";
    let signature = hsm_support::sign_with_token(&session, handle, message);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, public_key)
        .verify(message, &signature)
        .expect("the token's key signs for the certified public key");
}

#[test]
#[ignore = "boots containers as root: cargo test --test firstboot -- --ignored"]
fn a_bare_image_registers_with_the_machine_from_os_release() {
    if !setup() {
        return;
    }
    let net = Net::new(true);
    let api = net.start_api(api_options());
    let image = Image::new(
        "bare",
        &Layout {
            with_sota_dir: false,
            ..Layout::lmp(&Net::device_api_url())
        },
    );
    assert!(!image.path("var/sota").exists());
    let machine = Machine::boot(&image, &net, "boot1");
    let unit = machine.wait_for_agent(Duration::from_secs(90));
    assert_finished(&unit, "success", "0");
    let registrations = api.registrations();
    assert_eq!(registrations.len(), 1);
    // The binary has no HARDWARE_ID built in: the machine comes from the image.
    assert_eq!(registrations[0].hardware_id, image::MACHINE);
    line_saying(
        &machine.journal(&[]),
        "hardware id read from /etc/os-release",
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(image.path("var/sota"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o700, "/var/sota as tmpfiles.d makes it");
}

/// The API beyond a router the device has no route to yet: the boot
/// completes, aktualizr-lite and fioconfig wait, and the registration comes
/// as soon as the route does.
#[test]
#[ignore = "boots containers as root: cargo test --test firstboot -- --ignored"]
fn the_boot_completes_while_the_api_is_unreachable_and_aktualizr_lite_waits() {
    if !setup() {
        return;
    }
    let net = Net::new(true);
    let api = net.start_far_api(api_options());
    let image = Image::new("unreachable", &Layout::lmp(&Net::far_device_api_url()));
    // The route comes from outside networkd's configuration; networkd must
    // not take it for a stale one of its own and remove it.
    image.write(
        "etc/systemd/networkd.conf.d/foreign-routes.conf",
        "[Network]\nManageForeignRoutes=no\n",
        0o644,
    );
    let machine = Machine::boot(&image, &net, "boot1");

    assert_eq!(wait_until_booted(&machine), "running");
    let booted = Instant::now();
    let unit = machine.show(UNIT);
    assert_eq!(
        (unit["ActiveState"].as_str(), unit["SubState"].as_str()),
        ("active", "running"),
        "the agent is still trying: {}",
        brief(&unit)
    );
    assert_eq!(machine.show("multi-user.target")["ActiveState"], "active");
    let aklite = machine.show("aktualizr-lite.service");
    assert_eq!(aklite["ActiveState"], "inactive");
    assert_eq!(aklite["ConditionResult"], "no");
    assert_eq!(machine.show("fioconfig.service")["ActiveState"], "inactive");
    println!(
        "booted {:.1} s after start while the API was unreachable",
        (booted - machine.booted_at).as_secs_f64()
    );
    let route_at = machine.booted_at + Duration::from_secs(10);
    std::thread::sleep(route_at.saturating_duration_since(Instant::now()));
    let journal = machine.journal(&[]);
    let unreachable = line_saying(&journal, "registering: attempt 1 failed");
    assert!(
        unreachable.message().contains("Network is unreachable"),
        "{unreachable}"
    );
    assert!(api.requests().is_empty());

    let routed = firstboot_support::monotonic_us();
    net.route_to_the_far_api();
    let unit = machine.wait_for_agent(Duration::from_secs(150));
    assert_finished(&unit, "success", "0");
    let journal = machine.journal(&[]);
    let result = the_result(&journal);
    let took = registered_after(&result, routed);
    println!(
        "no route at boot: registered {:.2} s after the route came (target 1 s)",
        took.as_secs_f64()
    );
    assert!(took <= Duration::from_secs(5), "{took:?}");
    let last_retry = retry_lines(&journal)
        .last()
        .cloned()
        .expect("attempts while the API was unreachable");
    let aklite = machine.show("aktualizr-lite.service");
    assert_eq!(aklite["ActiveState"], "active");
    assert!(micros(&aklite, "ExecMainStartTimestampMonotonic") > result.monotonic());
    let fioconfig = machine.show("fioconfig.service");
    assert_eq!(fioconfig["ActiveState"], "active");
    assert!(micros(&fioconfig, "ExecMainStartTimestampMonotonic") > last_retry.monotonic());
    assert_eq!(api.registrations().len(), 1);
}

#[test]
#[ignore = "boots containers as root: cargo test --test firstboot -- --ignored"]
fn after_its_deadline_the_agent_is_started_again() {
    if !setup() {
        return;
    }
    let net = Net::new(true);
    let api = net.start_api(Options {
        refuse_connections_for: Some(Duration::from_secs(12)),
        ..api_options()
    });
    // The unit's restart policy with test-sized times: a 3 s deadline, a
    // 2 s pause and an 8 s backstop instead of 30 min, 10 min and 2 h.
    let image = Image::new(
        "deadline",
        &Layout {
            drop_in: Some(
                "[Service]\nExecStart=\nExecStart=/usr/bin/lmp-device-register --boot --retry-deadline 3\nRestartSec=2s\nRuntimeMaxSec=8s\n"
                    .into(),
            ),
            ..Layout::lmp(&Net::device_api_url())
        },
    );
    let machine = Machine::boot(&image, &net, "boot1");
    let unit = wait_for(Duration::from_secs(90), "a registration", || {
        let unit = machine.show(UNIT);
        (unit["SubState"] == "exited").then_some(unit)
    });
    assert_finished(&unit, "success", "0");
    let restarts: u32 = unit["NRestarts"].parse().unwrap();
    assert!(restarts >= 1, "{}", brief(&unit));
    let results: Vec<Entry> = machine.journal(&[RESULT_MATCH]);
    let (gave_up, registered) = results.split_at(results.len() - 1);
    assert_eq!(gave_up.len() as u32, restarts, "{}", dump(&results));
    for run in gave_up {
        assert_eq!(run.get("ERROR_KIND"), Some("unavailable"), "{run}");
        assert_eq!(run.get("EXIT_CODE"), Some("5"));
    }
    assert_eq!(registered[0].get("REGISTRATION_RESULT"), Some("registered"));
    assert_eq!(api.registrations().len(), 1);

    // The backstop bounds a run, not the "active (exited)" state after it.
    std::thread::sleep(Duration::from_secs(10));
    let unit = machine.show(UNIT);
    assert_eq!(
        (unit["ActiveState"].as_str(), unit["SubState"].as_str()),
        ("active", "exited")
    );
    assert_finished(&unit, "success", "0");
}
