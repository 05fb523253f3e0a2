//! The pending-identity journal across power cuts and full disks, with the
//! built agent and the registration API double:
//!
//! - the sequence that once stranded a device: the answer's record torn by
//!   a power cut, a rerun that asks again, a second cut after the first file
//!   is installed, then a run with the API unreachable, which must install
//!   the recorded answer without a request;
//! - an answer that can be neither recorded nor installed: the agent keeps
//!   trying until it is stored, or names the lost device.

mod common;

use common::*;
use device_api::{DeviceApi, Options, Reply};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const JOURNAL: &str = ".lmp-device-register.pending";

fn journal(device: &Device) -> PathBuf {
    device.sota().join(JOURNAL)
}

/// A directory where the agent puts `name`'s temporary file: installing
/// `name` fails (EISDIR) until it is removed.
fn block(device: &Device, name: &str) -> PathBuf {
    let blocker = device.sota().join(format!(".{name}.tmp"));
    std::fs::create_dir_all(&blocker).unwrap();
    blocker
}

/// An address on loopback where nothing listens.
fn unreachable_api() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/ota/devices/")
}

fn run_without_network(device: &Device) -> Run {
    let mut cmd = device.bare_command();
    cmd.args(["--device-api", &unreachable_api()])
        .args(["-f", FACTORY, "-t", "main", "-i", HWID, "--boot"])
        .args(["--retry-deadline", "2"]);
    Device::output(cmd)
}

/// Where the journal's answer record starts and ends (the bytes after the
/// identity line that are not the zeros of its room).
fn answer_record(bytes: &[u8]) -> (usize, usize) {
    let start = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    assert!(end > start, "no answer recorded");
    (start, end)
}

/// Power lost while the answer was being written: only `kept` bytes of its
/// record reached the disk; the rest of the file is gone (`zeros` false) or
/// still the zeros of the room the agent allocated for it.
fn tear_answer(path: &Path, kept: usize, zeros: bool) {
    let mut bytes = std::fs::read(path).unwrap();
    let (start, end) = answer_record(&bytes);
    assert!(kept < end - start);
    if zeros {
        bytes[start + kept..end].fill(0);
    } else {
        bytes.truncate(start + kept);
    }
    std::fs::write(path, bytes).unwrap();
}

/// The cut comes before anything of the answer is installed.
fn remove_installed(device: &Device) {
    for name in [
        "pkey.pem",
        "root.crt",
        "client.chained",
        "client.pem",
        "sota.toml",
    ] {
        let _ = std::fs::remove_file(device.sota().join(name));
    }
}

/// Boot 1 gets the answer and records it whole (installing fails on
/// purpose), then the record is torn as a power cut would have left it.
fn boot_1_torn(device: &Device, api: &DeviceApi, kept: impl Fn(usize) -> usize, zeros: bool) {
    let blocker = block(device, "client.pem");
    device.run(api, &["--boot"]).assert_code(1);
    std::fs::remove_dir(blocker).unwrap();
    remove_installed(device);
    let bytes = std::fs::read(journal(device)).unwrap();
    let (start, end) = answer_record(&bytes);
    tear_answer(&journal(device), kept(end - start), zeros);
}

#[test]
fn a_torn_answer_then_a_cut_after_the_first_file_ends_installed_without_a_request() {
    // Bytes of the record (a newline, the 64-digit checksum, a space, the
    // JSON, a newline) that reached the disk.
    type KeptBytes = fn(usize) -> usize;
    let cuts: [(&str, KeptBytes); 5] = [
        ("its first newline", |_| 1),
        ("inside the checksum", |_| 30),
        ("after the checksum", |_| 66),
        ("half", |len| len / 2),
        ("all but the JSON's last byte", |len| len - 2),
    ];
    for (i, (what, kept)) in cuts.iter().enumerate() {
        let zeros = i % 2 == 0;
        let context = format!(
            "cut at {what}, rest {}",
            if zeros { "zeros" } else { "gone" }
        );
        let api = DeviceApi::start(Options::default());
        let device = Device::new();
        boot_1_torn(&device, &api, kept, zeros);
        let boot_1_certificate = cert_of(&api.registrations()[0].client_pem);

        // Boot 2: the same identity asks again, its answer is recorded,
        // power is lost after pkey.pem is installed.
        let blocker = block(&device, "root.crt");
        let run = device.run(&api, &["--boot"]);
        if i > 0 {
            // (A lone newline is no fragment: nothing to warn about.)
            run.assert_says("the recorded answer was cut short; asking the server again");
        }
        run.assert_code(1)
            .assert_says("resuming the unfinished registration")
            .assert_says("the next run finishes storing it without registering it again");
        assert!(
            device.sota().join("pkey.pem").exists(),
            "{context}: {run:?}"
        );
        std::fs::remove_dir(blocker).unwrap();

        // Boot 3, the network down: the recorded answer is installed.
        let run = run_without_network(&device);
        assert_eq!(run.code, 0, "{context}: {run:?}");
        run.assert_says("finishing the registration of");
        assert_eq!(device.sota_listing(), REGISTERED_SOFTWARE, "{context}");
        let uuids = api.posted_uuids();
        assert_eq!(
            uuids.len(),
            2,
            "{context}: boots 1 and 2 asked, boot 3 did not"
        );
        assert_eq!(uuids[0], uuids[1], "{context}: one identity");
        // The idempotent double signs the same key again for boot 2 and
        // records that certificate: the installed one is boot 2's, not the
        // torn boot 1's, for the same key.
        let registrations = api.registrations();
        assert_eq!(registrations.len(), 1, "{context}");
        let client = std::fs::read_to_string(device.sota().join("client.pem")).unwrap();
        let der = cert_of(&client);
        assert_ne!(der, boot_1_certificate, "{context}");
        assert_eq!(der, cert_of(&registrations[0].client_pem), "{context}");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(
            cert.public_key().raw,
            registrations[0].public_key_spki_der.as_slice(),
            "{context}"
        );
    }
}

/// A record that lacks only its final newline holds all of its checked
/// text: it is whole, and the next run installs it without a request.
#[test]
fn a_record_missing_only_its_newline_is_whole() {
    let api = DeviceApi::start(Options::default());
    let device = Device::new();
    boot_1_torn(&device, &api, |len| len - 1, false);
    let run = run_without_network(&device);
    run.assert_code(0)
        .assert_says("finishing the registration of");
    assert_eq!(device.sota_listing(), REGISTERED_SOFTWARE);
    assert_eq!(api.posted_uuids().len(), 1);
}

/// Until the server's request arrives, then `during` while it waits.
fn while_the_server_answers(api: &DeviceApi, during: impl FnOnce()) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.requests().is_empty() {
        assert!(Instant::now() < deadline, "the request never came");
        std::thread::sleep(Duration::from_millis(20));
    }
    during();
}

/// Neither the record nor the installation can be written when the answer
/// arrives (the journal has become a directory, and so has a temporary
/// file's name): the device answers once, so the agent keeps trying.
fn unstorable_answer(device: &Device, api: &DeviceApi) -> (PathBuf, PathBuf) {
    api.push_replies([Reply::Delay(Duration::from_secs(2), Box::new(Reply::Sign))]);
    let blocker = device.sota().join(".client.pem.tmp");
    let journal = journal(device);
    (blocker, journal)
}

fn make_unstorable(blocker: &Path, journal: &Path) {
    std::fs::remove_file(journal).unwrap();
    std::fs::create_dir(journal).unwrap();
    std::fs::create_dir(blocker).unwrap();
}

#[test]
fn an_answer_that_cannot_be_stored_yet_is_stored_once_it_can() {
    let api = DeviceApi::start(Options::default());
    let device = Device::new();
    let (blocker, journal) = unstorable_answer(&device, &api);
    let child = device
        .command(&api, &["--boot", "--retry-deadline", "60"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while_the_server_answers(&api, || make_unstorable(&blocker, &journal));
    // Space comes back a few attempts later.
    std::thread::sleep(Duration::from_secs(6));
    std::fs::remove_dir(&blocker).unwrap();
    std::fs::remove_dir(&journal).unwrap();
    let run: Run = child.wait_with_output().unwrap().into();
    run.assert_code(0)
        .assert_says("which the factory answers only once: attempt 1 failed")
        .assert_says("retrying in");
    assert_eq!(device.sota_listing(), REGISTERED_SOFTWARE);
    assert_eq!(api.posted_uuids().len(), 1);
}

#[test]
fn an_answer_that_is_never_stored_names_the_lost_device() {
    let api = DeviceApi::start(Options::default());
    let device = Device::new();
    let (blocker, journal) = unstorable_answer(&device, &api);
    let child = device
        .command(&api, &["--boot", "--retry-deadline", "4", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while_the_server_answers(&api, || make_unstorable(&blocker, &journal));
    let run: Run = child.wait_with_output().unwrap().into();
    let uuid = &api.posted_uuids()[0];
    run.assert_code(1).assert_says(&format!(
        "device {uuid} is registered with the factory, but its answer could not be stored and is lost: delete device {uuid} in the factory, then run again"
    ));
    assert!(!run.output().contains("probably"), "{run:?}");
    let report: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report["exit_code"], 1);
    assert!(report["message"].as_str().unwrap().contains("is lost"));
}
