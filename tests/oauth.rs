//! OAuth device authorisation for a technician without an API token: the
//! flow itself against the loopback API, and the whole interactive run on a
//! pseudo-terminal.

mod common;

use common::*;
use device_api::{DeviceApi, Options};
use lmp_device_register::error::ErrorKind;
use lmp_device_register::profiles::lmp::oauth::device_flow;
use std::time::Duration;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_device_flow_waits_for_approval_and_returns_the_token() {
    let api = DeviceApi::start(Options::default());
    let base = reqwest::Url::parse(&api.oauth_base()).unwrap();
    let mut shown = Vec::new();
    let token = runtime()
        .block_on(device_flow(
            &reqwest::Client::new(),
            &base,
            "0b3c9c7e-8f6a-4d1e-9a43-2f5a1c0d9e77",
            FACTORY,
            &mut |text| shown.push(text.to_string()),
        ))
        .unwrap();
    assert!(token.expose().starts_with("at-"));
    assert_eq!(shown.len(), 1);
    assert!(shown[0].contains("ABCD-1234"), "{shown:?}");
    assert!(shown[0].contains("/oauth/verify"), "{shown:?}");
    // Two "authorization_pending" answers, then the token: polled at the
    // server's `interval` (1 s), give or take 5 % and the round trip.
    let polls: Vec<std::time::Instant> = api
        .requests()
        .into_iter()
        .filter(|r| r.path == "/oauth/token/")
        .map(|r| r.at)
        .collect();
    assert_eq!(polls.len(), 3);
    for pair in polls.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            (Duration::from_millis(1000)..=Duration::from_millis(1100)).contains(&gap),
            "{gap:?}"
        );
    }
}

#[test]
fn a_refused_scope_is_a_clear_error() {
    let api = DeviceApi::start(Options::default());
    let base = reqwest::Url::parse(&format!("{}/", api.oauth_base())).unwrap();
    let err = runtime()
        .block_on(device_flow(
            &reqwest::Client::new(),
            &base,
            "id",
            "",
            &mut |_| {},
        ))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert!(
        err.to_string()
            .contains("OAuth device authorisation: HTTP 400"),
        "{err}"
    );
}

/// The whole interactive path: no token, stdin a terminal (a pty made by
/// `script`), the code shown, and the registration sent with the token.
#[test]
fn an_interactive_run_without_a_token_uses_the_device_flow() {
    let api = DeviceApi::start(Options::default());
    let device = Device::new();
    std::fs::remove_file(device.path("etc/lmp-device-register-token")).unwrap();
    let agent = env!("CARGO_BIN_EXE_lmp-device-register");
    let command = format!(
        "'{agent}' --root '{}' --device-api '{}' --oauth-api '{}' -f {FACTORY} -t main -i {HWID} --start-daemon 0",
        device.root.path().display(),
        api.url(),
        api.oauth_base()
    );
    let run: Run = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", device.stubs.display()))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
        .into();
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    // `script` merges the agent's stderr into its stdout.
    assert!(
        run.stdout.contains("enter the code ABCD-1234"),
        "{}",
        run.stdout
    );
    assert_eq!(device.sota_listing(), REGISTERED_SOFTWARE);
    let post = api
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path == "/ota/devices/")
        .unwrap();
    assert!(post.header("authorization").unwrap().starts_with("Bearer "));
    assert_eq!(api.registrations().len(), 1);
}
