//! The Losant profile end to end: the built agent against the loopback
//! Losant double, which verifies the registration JWT and refuses a
//! manufacturer id it has seen. Every run's exit code, message, requests and
//! the exact state of the credentials directory are checked.
#![cfg(feature = "losant")]

mod common;
mod losant_support;

use common::{write_file, Run};
use device_api::{Losant, LosantOptions, LosantReply};
use losant_support::*;
use serde_json::json;
use std::time::Duration;

fn losant() -> Losant {
    Losant::start(LosantOptions::default())
}

fn status(code: u16, error: &str) -> LosantReply {
    LosantReply::Status {
        code,
        body: json!({ "error": error }).to_string(),
        retry_after: Some("0".into()),
    }
}

/// The state dir holds exactly the credentials Losant issued, 0600.
#[track_caller]
fn assert_registered_as(board: &Board, losant: &Losant, manufacturer_id: &str) {
    let devices = losant.devices();
    let device = devices
        .iter()
        .find(|d| d.manufacturer_id == manufacturer_id)
        .unwrap_or_else(|| panic!("Losant holds no device {manufacturer_id}: {devices:?}"));
    assert_eq!(board.state_listing(), ["credentials.json 600"]);
    assert_eq!(mode_of(&board.path(STATE_DIR)), 0o700);
    assert_eq!(
        board.credentials(),
        json!({
            "deviceId": device.device_id,
            "accessKey": device.access_key,
            "accessSecret": device.access_secret,
        })
    );
}

/// Nothing was stored, and no directory was left behind.
#[track_caller]
fn assert_nothing_stored(board: &Board) {
    assert!(
        board.state_listing().is_empty(),
        "{:?}",
        board.state_listing()
    );
    assert!(!board.path(CREDENTIALS).exists());
}

#[test]
fn registers_at_the_url_of_the_token_with_the_mac_of_eth0() {
    let losant = losant();
    let board = Board::new(&losant);
    let run = board.run(&["--json"]);
    run.assert_code(0)
        .assert_says("Losant registration URL read from the url claim of the token in")
        .assert_says("manufacturer id read from the MAC address of eth0")
        .assert_says(&format!("with Losant at {}", losant.url()))
        .assert_says(&format!("token issued by {}", losant.issuer()));

    // One request, exactly as the template expects it, and nothing else.
    let requests = losant.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, device_api::losant::REGISTER_PATH);
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("authorization"), None);
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        body,
        json!({"token": losant.token(), "manufacturerId": ETH0_MAC})
    );

    assert_registered_as(&board, &losant, ETH0_MAC);
    let device = &losant.devices()[0];
    let result = json_of(&run);
    assert_eq!(
        keys(&result),
        [
            "accessKey",
            "credentials",
            "deviceId",
            "files",
            "manufacturerId",
            "profile",
            "status"
        ]
    );
    assert_eq!(result["status"], "registered");
    assert_eq!(result["profile"], "losant");
    assert_eq!(result["deviceId"], device.device_id.as_str());
    assert_eq!(result["accessKey"], device.access_key.as_str());
    assert_eq!(result["manufacturerId"], ETH0_MAC);
    assert_eq!(
        result["credentials"],
        board.path(CREDENTIALS).display().to_string()
    );
    assert_eq!(result["files"], json!(["credentials.json"]));
}

#[test]
fn the_config_url_overrides_the_tokens() {
    let losant = losant();
    let board = Board::new(&losant);
    // Nothing listens on the discard port: only the config's URL can work.
    let elsewhere = "http://127.0.0.1:9/api/register-device";
    board.write_token(&losant.token_for(elsewhere));
    board.config(&format!("[losant]\nurl = \"{}\"\n", losant.url()));
    board.run(&[]).assert_code(0).assert_says(&format!(
        "[losant] url (instead of the token's url claim {elsewhere})"
    ));
    assert_eq!(losant.requests().len(), 1);
    assert_registered_as(&board, &losant, ETH0_MAC);
}

#[test]
fn the_interface_setting_picks_whose_mac_is_the_id() {
    let losant = losant();
    let board = Board::new(&losant);
    board.config("[losant]\ninterface = \"wlan0\"\n");
    board
        .run(&[])
        .assert_code(0)
        .assert_says("manufacturer id read from the MAC address of wlan0");
    assert_eq!(losant.requested_ids(), [WLAN0_MAC]);
    assert_registered_as(&board, &losant, WLAN0_MAC);
}

#[test]
fn no_usable_mac_address_is_a_config_error_before_anything_happens() {
    let losant = losant();
    let board = Board::bare();
    board.write_token(&losant.token());
    board.interface("lo", 1, "00:00:00:00:00:00", false);
    board.interface("br0", 2, "02:00:00:00:00:01", false);
    board
        .run(&[])
        .assert_code(2)
        .assert_says("no physical network interface")
        .assert_says("pass --manufacturer-id");
    board.interface("eth0", 3, "aa:bb:cc:00:00:09", true);
    write_file(
        &board.path("sys/class/net/eth0/addr_assign_type"),
        "1\n",
        0o644,
    );
    board
        .run(&[])
        .assert_code(2)
        .assert_says("the address of eth0 is random");
    assert!(losant.requests().is_empty());
    assert!(!board.path(STATE_DIR).exists());
}

#[test]
fn an_explicit_manufacturer_id_wins_over_the_mac() {
    let losant = losant();
    let board = Board::new(&losant);
    board.config("[losant]\nmanufacturer_id = \"SN-0002\"\n");
    board
        .run(&["--manufacturer-id", "SN-0001"])
        .assert_code(0)
        .assert_says("manufacturer id read from --manufacturer-id");
    assert_registered_as(&board, &losant, "SN-0001");

    let second = Board::new(&losant);
    second.config("[losant]\nmanufacturer_id = \"SN-0002\"\n");
    second
        .run(&[])
        .assert_code(0)
        .assert_says("[losant] manufacturer_id");
    assert_registered_as(&second, &losant, "SN-0002");
    assert_eq!(losant.requested_ids(), ["SN-0001", "SN-0002"]);
}

#[test]
fn a_manufacturer_id_losant_already_holds_is_exit_3_with_what_to_do() {
    let losant = losant();
    losant.add_device(ETH0_MAC);
    let board = Board::new(&losant);
    let run = board.run(&["--json"]);
    run.assert_code(3)
        .assert_says(&format!(
            "Losant already has a device with manufacturer id {ETH0_MAC}"
        ))
        .assert_says("delete that device in the Losant application");
    let result = json_of(&run);
    assert_eq!(
        keys(&result),
        ["exit_code", "kind", "message", "status"],
        "{result:?}"
    );
    assert_eq!(result["status"], "error");
    assert_eq!(result["kind"], "already-registered");
    assert_eq!(result["exit_code"], 3);
    assert_nothing_stored(&board);
    assert_eq!(losant.devices().len(), 1);
}

#[test]
fn credentials_lost_on_the_way_are_explained() {
    let losant = losant();
    losant.push_replies([LosantReply::RegisterThenHangUp]);
    let board = Board::new(&losant);
    board
        .run(&[])
        .assert_code(3)
        .assert_says("attempt 1 failed")
        .assert_says(
            "an earlier attempt of this run sent the request, and its answer was lost on the way",
        );
    assert_eq!(losant.requested_ids(), [ETH0_MAC, ETH0_MAC]);
    assert!(!board.path(CREDENTIALS).exists());
}

#[test]
fn a_run_that_lost_its_answer_is_resumed_with_the_same_id_and_explained() {
    let losant = losant();
    losant.push_replies([LosantReply::RegisterThenHangUp]);
    let board = Board::new(&losant);
    board
        .run(&["--retry-deadline", "0"])
        .assert_code(5)
        .assert_says(&format!("kept the identity of {ETH0_MAC}"));
    assert_eq!(board.state_listing(), [".lmp-device-register.pending 600"]);

    // The interface changed in between: the pending id still wins.
    board.config("[losant]\ninterface = \"wlan0\"\n");
    board
        .run(&[])
        .assert_code(3)
        .assert_says(&format!(
            "resuming the unfinished registration of {ETH0_MAC}"
        ))
        .assert_says("an earlier run of this device sent the request and never stored the answer");
    assert_eq!(losant.requested_ids(), [ETH0_MAC, ETH0_MAC]);
    assert_nothing_stored(&board);
}

#[test]
fn a_token_of_another_application_is_refused_with_exit_4() {
    let losant = losant();
    let board = Board::new(&losant);
    let claims = json!({"iss": losant.issuer(), "url": losant.url()});
    board.write_token(&losant.token_with(&claims, "not-the-application-secret"));
    board
        .run(&[])
        .assert_code(4)
        .assert_says("HTTP 403: Invalid registration token");
    assert_nothing_stored(&board);

    let claims = json!({"iss": "another-application", "url": losant.url()});
    board.write_token(&losant.token_with(&claims, &LosantOptions::default().secret));
    board
        .run(&[])
        .assert_code(4)
        .assert_says("Invalid registration token");
    assert_nothing_stored(&board);
    assert!(losant.devices().is_empty());
    assert_eq!(losant.requests().len(), 2, "a 403 is not retried");
}

#[test]
fn other_refusals_carry_the_servers_message() {
    let losant = losant();
    losant.push_replies([status(403, "Missing manufacturerId field.")]);
    let board = Board::new(&losant);
    board
        .run(&[])
        .assert_code(4)
        .assert_says("HTTP 403: Missing manufacturerId field.");
    assert_nothing_stored(&board);
}

#[test]
fn a_missing_or_malformed_token_is_a_config_error_that_creates_nothing() {
    let losant = losant();
    let board = Board::new(&losant);
    std::fs::remove_file(board.path(TOKEN_FILE)).unwrap();
    board.run(&[]).assert_code(2).assert_says(&format!(
        "{}: the Losant registration token file does not exist",
        board.path(TOKEN_FILE).display()
    ));
    board.write_token("definitely-not-a-jwt-7c1e");
    let run = board.run(&["--json"]);
    run.assert_code(2).assert_says("not a JWT");
    assert!(!run.output().contains("definitely-not-a-jwt"), "{run:?}");
    let claims = json!({"iss": losant.issuer()});
    board.write_token(&losant.token_with(&claims, &LosantOptions::default().secret));
    board
        .run(&[])
        .assert_code(2)
        .assert_says("has no url claim: set url in [losant]");
    assert!(losant.requests().is_empty());
    assert!(!board.path(STATE_DIR).exists());
}

#[test]
fn plain_http_to_another_machine_is_refused() {
    let losant = losant();
    let board = Board::new(&losant);
    // TEST-NET-1: refused before any connection is tried.
    board.write_token(&losant.token_for("http://192.0.2.1/api/register-device"));
    board
        .run(&[])
        .assert_code(2)
        .assert_says("is plain http")
        .assert_says("allow_http = true");
    assert!(!board.path(STATE_DIR).exists());
}

#[test]
fn unusable_answers_are_exit_6_and_store_nothing() {
    let losant = losant();
    let leaked_secret = "9d1e0f2c3b4a59687766554433221100ffeeddccbbaa99887766554433221100";
    let cases = [
        (LosantReply::Garbage, "the answer is not JSON"),
        (
            LosantReply::Json(json!({"deviceId": "d1", "accessKey": "k1"})),
            "accessSecret is missing",
        ),
        (
            LosantReply::Json(
                json!({"deviceId": 7, "accessKey": "k", "accessSecret": leaked_secret}),
            ),
            "deviceId is not a string",
        ),
        (
            LosantReply::Json(json!([{"accessSecret": leaked_secret}])),
            "not a JSON object",
        ),
        (
            LosantReply::Oversized(2 * 1024 * 1024),
            "larger than 1048576 bytes",
        ),
    ];
    for (reply, expected) in cases {
        losant.push_replies([reply]);
        let board = Board::new(&losant);
        let run = board.run(&["--json"]);
        run.assert_code(6)
            .assert_says(expected)
            .assert_says(&format!(
                "if it lists manufacturer id {ETH0_MAC}, delete it there"
            ));
        assert_eq!(json_of(&run)["kind"], "bad-response");
        assert!(!run.output().contains(leaked_secret), "{run:?}");
        assert_nothing_stored(&board);
    }
}

#[test]
fn server_errors_are_retried_with_the_same_manufacturer_id() {
    let losant = losant();
    losant.push_replies([
        status(503, "maintenance"),
        LosantReply::Status {
            code: 429,
            body: String::new(),
            retry_after: Some("1".into()),
        },
        status(502, "bad gateway"),
    ]);
    let board = Board::new(&losant);
    let run = board.run(&["--boot"]);
    run.assert_code(0)
        .assert_says("registering with Losant: attempt 1 failed: HTTP 503: maintenance")
        .assert_says("attempt 2 failed: HTTP 429; retrying in ")
        .assert_says("attempt 3 failed: HTTP 502");
    // Retry-After is a floor, with jitter on top (up to 8 s after a second
    // refusal in boot mode), so that refused devices do not return together.
    let after_429: f64 = run
        .stderr
        .split("HTTP 429; retrying in ")
        .nth(1)
        .and_then(|rest| rest.split('s').next())
        .and_then(|seconds| seconds.parse().ok())
        .unwrap();
    assert!((1.0..=9.0).contains(&after_429), "{after_429}");
    assert_eq!(losant.requested_ids(), [ETH0_MAC; 4]);
    assert_registered_as(&board, &losant, ETH0_MAC);
}

#[test]
fn a_server_that_stays_down_is_exit_5() {
    let losant = Losant::start(LosantOptions {
        default_reply: status(503, "down"),
        ..LosantOptions::default()
    });
    let board = Board::new(&losant);
    board
        .run(&["--retry-deadline", "3"])
        .assert_code(5)
        .assert_says("giving up");
    assert!(!board.path(CREDENTIALS).exists());
}

#[test]
fn existing_credentials_are_success_at_boot_and_exit_3_otherwise() {
    let losant = losant();
    let board = Board::new(&losant);
    board.registered("64f1c2a0b3d4e5f607182930", "key-9", "secret-9f8e7d6c5b4a");
    let run = board.run(&["--boot", "--json"]);
    run.assert_code(0).assert_says("already registered");
    let result = json_of(&run);
    assert_eq!(result["status"], "already-registered");
    assert_eq!(result["profile"], "losant");
    assert_eq!(result["deviceId"], "64f1c2a0b3d4e5f607182930");
    assert_eq!(result["accessKey"], "key-9");
    assert!(!run.output().contains("secret-9f8e7d6c5b4a"), "{run:?}");

    board
        .run(&[])
        .assert_code(3)
        .assert_says("credentials.json present")
        .assert_says("--force");

    // A registered device needs no token any more.
    std::fs::remove_file(board.path(TOKEN_FILE)).unwrap();
    board.run(&["--boot"]).assert_code(0);
    assert!(losant.requests().is_empty());
    assert_eq!(board.credentials()["accessSecret"], "secret-9f8e7d6c5b4a");
}

#[test]
fn force_replaces_credentials_once_losant_has_a_new_device() {
    let losant = losant();
    let board = Board::new(&losant);
    board.registered("old-device", "old-key", "old-secret");
    board.run(&["--force"]).assert_code(0);
    assert_registered_as(&board, &losant, ETH0_MAC);

    // Losant still holds that device: the old credentials stay.
    let before = board.credentials();
    board
        .run(&["--force"])
        .assert_code(3)
        .assert_says("delete that device in the Losant application");
    assert_eq!(board.credentials(), before);
}

#[test]
fn credentials_that_cannot_be_stored_are_finished_by_the_next_run() {
    let losant = losant();
    let board = Board::new(&losant);
    // A directory where the atomic write wants its temporary file.
    let obstacle = board.path(&format!("{STATE_DIR}/.credentials.json.tmp"));
    std::fs::create_dir_all(obstacle.join("x")).unwrap();
    board
        .run(&[])
        .assert_code(1)
        .assert_says("the next run finishes storing it without registering it again");
    assert!(!board.path(CREDENTIALS).exists());
    assert_eq!(
        board.state_listing(),
        [
            ".credentials.json.tmp 755",
            ".lmp-device-register.pending 600"
        ]
    );

    std::fs::remove_dir_all(&obstacle).unwrap();
    board
        .run(&[])
        .assert_code(0)
        .assert_says("finishing the registration of");
    assert_eq!(losant.requests().len(), 1, "Losant was asked once");
    assert_registered_as(&board, &losant, ETH0_MAC);
}

#[test]
fn https_with_the_ca_from_the_flag_or_the_config_file() {
    let losant = Losant::start(LosantOptions {
        tls: true,
        ..LosantOptions::default()
    });
    let board = Board::new(&losant);
    let ca = board.path("etc/losant/ca.pem");
    write_file(&ca, &losant.server_ca_pem(), 0o644);
    board.run(&[]).assert_code(2).assert_says("--cacert");
    assert!(!board.path(CREDENTIALS).exists());

    board
        .run(&["--cacert", ca.to_str().unwrap()])
        .assert_code(0);
    assert_registered_as(&board, &losant, ETH0_MAC);

    let second = Board::new(&losant);
    let ca = second.path("etc/losant/ca.pem");
    write_file(&ca, &losant.server_ca_pem(), 0o644);
    second.config(&format!(
        "[losant]\ncacert = \"{}\"\nmanufacturer_id = \"SN-TLS\"\n",
        ca.display()
    ));
    second
        .run(&[])
        .assert_code(0)
        .assert_says("[losant] cacert");
    assert_registered_as(&second, &losant, "SN-TLS");
}

#[test]
fn the_token_and_the_credentials_go_where_the_config_file_says() {
    let losant = losant();
    let board = Board::new(&losant);
    std::fs::remove_file(board.path(TOKEN_FILE)).unwrap();
    let token = board.path("factory/losant.jwt");
    write_file(&token, &losant.token(), 0o600);
    let credentials = board.path("data/losant/device.json");
    board.config(&format!(
        "[losant]\ntoken_file = \"{}\"\ncredentials = \"{}\"\n",
        token.display(),
        credentials.display()
    ));
    board
        .run(&[])
        .assert_code(0)
        .assert_says(&format!("registration token read from {}", token.display()));
    assert_eq!(
        common::listing(&board.path("data/losant")),
        ["device.json 600"]
    );
    assert!(!board.path(STATE_DIR).exists());
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&credentials).unwrap()).unwrap();
    assert_eq!(stored["deviceId"], losant.devices()[0].device_id.as_str());
    board
        .run(&["--boot"])
        .assert_code(0)
        .assert_says("device.json present");
}

#[test]
fn a_token_file_others_can_read_draws_a_warning() {
    let losant = losant();
    let board = Board::new(&losant);
    std::fs::set_permissions(
        board.path(TOKEN_FILE),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    board
        .run(&[])
        .assert_code(0)
        .assert_says("is readable by group or others (mode 644); it should be 0600");
}

#[test]
fn settings_from_the_config_file_are_checked_by_name() {
    let losant = losant();
    let board = Board::new(&losant);
    let file = board.path(CONFIG_FILE).display().to_string();
    board.config("[losant]\nmanufacturer_idd = \"x\"\n");
    board.run(&[]).assert_code(2).assert_says(&format!(
        "{file} [losant]: unknown field `manufacturer_idd`"
    ));
    board.config("[losant]\nallow_http = \"yes\"\n");
    board
        .run(&[])
        .assert_code(2)
        .assert_says(&format!("{file} [losant] allow_http: invalid type"));
    board.config("[losant]\ncredentials = \"/etc/credentials.json\"\n");
    board
        .run(&[])
        .assert_code(2)
        .assert_says("use a directory of its own");
    board.config("[losant]\ncredentials = \"losant/credentials.json\"\n");
    board
        .run(&[])
        .assert_code(2)
        .assert_says("[losant] credentials losant/credentials.json: must be an absolute path");
    board.config("[losant]\ntoken_file = \"registration-token\"\n");
    board
        .run(&[])
        .assert_code(2)
        .assert_says("[losant] token_file registration-token: must be an absolute path");
    assert!(losant.requests().is_empty());
}

/// Every byte the agent printed in good and bad runs, and every file
/// readable by others, is free of the JWT and of any access secret.
#[test]
fn neither_the_token_nor_an_access_secret_is_ever_shown() {
    let losant = losant();
    losant.push_replies([status(503, "later")]);
    let board = Board::new(&losant);
    let mut runs: Vec<Run> = Vec::new();
    runs.push(board.run(&["--json", "--verbose"]));
    runs[0].assert_code(0);
    runs.push(board.run(&["--json", "--verbose", "--boot"]));
    runs.push(board.run(&["--json", "--verbose"]));

    // Refused: Losant holds the id; a token of another application.
    let again = Board::new(&losant);
    runs.push(again.run(&["--json", "--verbose"]));
    let forged = losant.token_with(
        &json!({"iss": losant.issuer(), "url": losant.url()}),
        "forged-secret",
    );
    let forged_board = Board::new(&losant);
    forged_board.write_token(&forged);
    runs.push(forged_board.run(&["--json", "--verbose", "--manufacturer-id", "SN-F"]));
    // An answer that cannot be used, holding a secret.
    losant.push_replies([LosantReply::Json(
        json!({"deviceId": "d", "accessKey": ["k"], "accessSecret": "answer-secret-0b1c2d3e"}),
    )]);
    runs.push(again.run(&["--json", "--verbose", "--manufacturer-id", "SN-G"]));

    let secrets: Vec<String> = losant
        .devices()
        .iter()
        .map(|d| d.access_secret.clone())
        .chain([losant.token(), forged, "answer-secret-0b1c2d3e".into()])
        .collect();
    // A JWT's signature alone is enough to forge nothing, but it is the
    // token's unique part: it must not show up either.
    let mut needles = secrets.clone();
    needles.extend(
        secrets
            .iter()
            .filter_map(|s| s.rsplit_once('.'))
            .map(|(_, sig)| sig.to_string()),
    );
    for run in &runs {
        for needle in &needles {
            assert!(
                !run.output().contains(needle.as_str()),
                "{needle} leaked:\n{run:?}"
            );
        }
    }
    for root in [&board, &again, &forged_board] {
        for path in world_or_group_readable_files(root.root.path()) {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for secret in &secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "{} holds a secret",
                    path.display()
                );
            }
        }
    }
    assert_eq!(mode_of(&board.path(CREDENTIALS)), 0o600);
}

fn world_or_group_readable_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = path.symlink_metadata().unwrap();
        if meta.is_dir() {
            found.extend(world_or_group_readable_files(&path));
        } else if meta.is_file() && meta.permissions().mode() & 0o044 != 0 {
            found.push(path);
        }
    }
    found
}

#[test]
fn an_unreachable_losant_is_retried_then_exit_5() {
    let losant = losant();
    let board = Board::new(&losant);
    // A port nobody listens on any more.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/api/register-device", dead.local_addr().unwrap());
    drop(dead);
    board.write_token(&losant.token_for(&dead_url));
    let started = std::time::Instant::now();
    board
        .run(&["--retry-deadline", "2"])
        .assert_code(5)
        .assert_says("attempt 1 failed")
        .assert_says("Connection refused");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!board.path(CREDENTIALS).exists());
}
