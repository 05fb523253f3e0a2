//! Secrets never leak: a full registration (and failing ones) printed and
//! logged nothing that contains the API token or the private key, child
//! processes got neither on their command line, and no file readable by
//! others holds them.

mod common;

use common::*;
use device_api::{DeviceApi, Options, Reply};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const UNIQUE_TOKEN: &str = "tok-7f3a9c1e5b2d4680aa11";

/// The base64 body lines of a PEM key, each long enough to be unmistakable.
fn key_material(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect()
}

fn world_or_group_readable_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.path().symlink_metadata().unwrap();
        if meta.is_dir() {
            world_or_group_readable_files(&entry.path(), out);
        } else if meta.is_file() && meta.permissions().mode() & 0o044 != 0 {
            out.push(entry.path());
        }
    }
}

#[test]
fn a_full_run_leaks_neither_token_nor_key() {
    let api = DeviceApi::start(Options {
        token: UNIQUE_TOKEN.into(),
        ..Options::default()
    });
    // One retried failure and a fioconfig failure make the run log more.
    api.push_replies([Reply::Status {
        code: 503,
        body: "later".into(),
        content_type: "text/plain",
        retry_after: Some("0".into()),
    }]);
    let device = Device::new();
    device.stub("fioconfig", 1);
    write_file(
        &device.path("etc/lmp-device-register-token"),
        UNIQUE_TOKEN,
        0o600,
    );
    let run = device.run(&api, &["--json", "--start-daemon", "1", "-v", "1"]);
    run.assert_code(0);

    let key_pem = std::fs::read_to_string(device.sota().join("pkey.pem")).unwrap();
    let material = key_material(&key_pem);
    assert!(!material.is_empty());
    let mut printed = run.output();
    printed.push_str(&device.calls().join("\n"));
    assert!(!printed.contains(UNIQUE_TOKEN), "token leaked:\n{printed}");
    for line in &material {
        assert!(!printed.contains(line.as_str()), "key leaked:\n{printed}");
    }

    let mut readable = Vec::new();
    world_or_group_readable_files(device.root.path(), &mut readable);
    for path in readable {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        assert!(
            !text.contains(UNIQUE_TOKEN),
            "{} holds the token",
            path.display()
        );
        for line in &material {
            assert!(
                !text.contains(line.as_str()),
                "{} holds the key",
                path.display()
            );
        }
    }
}

#[test]
fn failing_runs_do_not_print_the_token() {
    let api = DeviceApi::start(Options::default());
    let device = Device::new();
    // The server refuses this token; the refusal must not quote it back.
    write_file(
        &device.path("etc/lmp-device-register-token"),
        UNIQUE_TOKEN,
        0o600,
    );
    let run = device.run(&api, &["--json"]);
    run.assert_code(4).assert_says("HTTP 401");
    assert!(!run.output().contains(UNIQUE_TOKEN), "{}", run.output());

    // A token that is not a valid header value is refused without echoing it.
    write_file(
        &device.path("etc/lmp-device-register-token"),
        "tok\u{7f}en-secret-99",
        0o600,
    );
    let run = device.run(&api, &["--json"]);
    assert_ne!(run.code, 0);
    assert!(!run.output().contains("secret-99"), "{}", run.output());
}

#[test]
fn a_token_file_that_is_a_symlink_is_refused() {
    let api = DeviceApi::start(Options::default());
    let device = Device::new();
    let token = device.path("etc/lmp-device-register-token");
    let elsewhere = device.path("elsewhere-token");
    std::fs::rename(&token, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &token).unwrap();
    device
        .run(&api, &[])
        .assert_code(2)
        .assert_says("is a symbolic link");
    assert!(!device.sota().exists());
}
