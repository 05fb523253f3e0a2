//! TLS trust is built only when a request needs it: nothing for a plain
//! http DEVICE_API, only the `--cacert` CA when one is given, the system
//! roots only for https without it. Reading every certificate of the system
//! store was most of a registration's work. The system store is pointed at
//! a bundle with `SSL_CERT_FILE`, and strace shows whether it is opened.

mod common;

use common::*;
use device_api::{DeviceApi, Options};
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs a registration under strace and returns the run and the files it
/// opened.
fn opened_files(device: &Device, cmd: Command) -> (Run, Vec<String>) {
    let trace = device.path("openat.txt");
    let mut traced = Command::new("strace");
    traced
        .args(["-f", "-qq", "--trace=openat,open", "-o"])
        .arg(&trace)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    traced.env_clear();
    for (name, value) in cmd.get_envs() {
        if let Some(value) = value {
            traced.env(name, value);
        }
    }
    let run: Run = traced
        .stdin(Stdio::null())
        .output()
        .expect("strace runs")
        .into();
    let opened = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter_map(|l| l.split('"').nth(1).map(str::to_string))
        .collect();
    (run, opened)
}

/// The system's default certificate locations were not opened either.
fn assert_no_default_store(opened: &[String]) {
    assert!(
        !opened
            .iter()
            .any(|f| f.starts_with("/etc/ssl") || f.starts_with("/usr/lib/ssl")),
        "{opened:?}"
    );
}

/// A stand-in for the system store: the double's server CA among two
/// unrelated ones, so that trusting "the system roots" works.
fn system_store(dir: &Path, api: &DeviceApi) -> std::path::PathBuf {
    let other = DeviceApi::start(Options::default());
    let bundle = dir.join("system-roots.pem");
    std::fs::write(
        &bundle,
        format!(
            "{}{}{}",
            other.root_ca_pem(),
            api.server_ca_pem(),
            other.intermediate_ca_pem()
        ),
    )
    .unwrap();
    bundle
}

#[test]
fn plain_http_reads_no_certificate_store() {
    if !strace_available() {
        return;
    }
    let api = DeviceApi::start(Options::default());
    let device = Device::new();
    let store = system_store(device.root.path(), &api);
    let mut cmd = device.command(&api, &[]);
    cmd.env("SSL_CERT_FILE", &store);
    let (run, opened) = opened_files(&device, cmd);
    run.assert_code(0);
    let store = store.display().to_string();
    assert!(!opened.contains(&store), "{opened:?}");
    assert_no_default_store(&opened);
}

#[test]
fn https_with_cacert_reads_only_that_ca() {
    if !strace_available() {
        return;
    }
    let api = DeviceApi::start(Options {
        tls: true,
        ..Options::default()
    });
    let device = Device::new();
    let store = system_store(device.root.path(), &api);
    let cacert = device.path("server-ca.pem");
    std::fs::write(&cacert, api.server_ca_pem()).unwrap();
    let mut cmd = device.command(&api, &["--cacert", cacert.to_str().unwrap()]);
    cmd.env("SSL_CERT_FILE", &store);
    let (run, opened) = opened_files(&device, cmd);
    run.assert_code(0);
    assert!(opened.contains(&cacert.display().to_string()), "{opened:?}");
    assert!(!opened.contains(&store.display().to_string()), "{opened:?}");
    assert_no_default_store(&opened);
}

#[test]
fn https_without_cacert_trusts_the_system_roots() {
    if !strace_available() {
        return;
    }
    let api = DeviceApi::start(Options {
        tls: true,
        ..Options::default()
    });
    let device = Device::new();
    let store = system_store(device.root.path(), &api);
    let mut cmd = device.command(&api, &[]);
    cmd.env("SSL_CERT_FILE", &store);
    let (run, opened) = opened_files(&device, cmd);
    run.assert_code(0);
    assert!(opened.contains(&store.display().to_string()), "{opened:?}");
    assert_eq!(device.sota_listing(), REGISTERED_SOFTWARE);

    // Without the server's CA in the store, the same server is refused.
    let device = Device::new();
    let other = DeviceApi::start(Options::default());
    let store = device.path("unrelated-roots.pem");
    std::fs::write(&store, other.root_ca_pem()).unwrap();
    let mut cmd = device.command(&api, &[]);
    cmd.env("SSL_CERT_FILE", &store);
    let run = Device::output(cmd);
    run.assert_code(2).assert_says("--cacert");
    assert!(
        device.sota_listing().is_empty(),
        "{:?}",
        device.sota_listing()
    );
}
