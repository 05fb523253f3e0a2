//! Choosing the profile: `--profile`, `REGISTER_PROFILE`, `profile` in the
//! config file, in that order, else lmp; flags of another profile refused;
//! `--boot` (the unit's command line) taking the profile from the config
//! file; and the example config file read by the agent itself.

mod common;
mod losant_support;

use losant_support::*;

#[cfg(feature = "losant")]
use device_api::{Losant, LosantOptions};

/// A device registered with both profiles, so that `--boot --json` says,
/// without any network, which profile the agent chose.
#[cfg(feature = "losant")]
fn registered_with_both(profile_in_file: Option<&str>) -> Board {
    let board = Board::bare();
    board.interface("eth0", 2, ETH0_MAC, true);
    board.registered("losant-device-1", "losant-key-1", "losant-secret-1");
    common::write_file(&board.path("var/sota/sql.db"), "", 0o600);
    let profile = profile_in_file
        .map(|p| format!("profile = \"{p}\"\n"))
        .unwrap_or_default();
    board.config(&format!(
        "{profile}[lmp]\nfactory = \"demo-factory\"\ntags = \"main\"\nhardware_id = \"intel-corei7-64\"\n"
    ));
    board
}

#[cfg(feature = "losant")]
#[test]
fn the_profile_comes_from_the_flag_then_the_environment_then_the_config_file() {
    let file = losant_support::CONFIG_FILE;
    for (flag, env, in_file, expected, origin) in [
        (None, None, None, "lmp", None),
        (
            None,
            None,
            Some("losant"),
            "losant",
            Some(format!("{file} profile")),
        ),
        (
            None,
            Some("losant"),
            None,
            "losant",
            Some("environment REGISTER_PROFILE".into()),
        ),
        (
            None,
            Some("lmp"),
            Some("losant"),
            "lmp",
            Some("environment REGISTER_PROFILE".into()),
        ),
        (
            None,
            Some("losant"),
            Some("lmp"),
            "losant",
            Some("environment REGISTER_PROFILE".into()),
        ),
        (
            Some("lmp"),
            Some("losant"),
            Some("losant"),
            "lmp",
            Some("--profile".into()),
        ),
        (
            Some("losant"),
            Some("lmp"),
            Some("lmp"),
            "losant",
            Some("--profile".into()),
        ),
    ] {
        let board = registered_with_both(in_file);
        let mut cmd = board.command();
        cmd.args(["--boot", "--json"]);
        if let Some(flag) = flag {
            cmd.args(["--profile", flag]);
        }
        if let Some(env) = env {
            cmd.env("REGISTER_PROFILE", env);
        }
        let run = Board::output(cmd);
        let case = format!("flag {flag:?}, env {env:?}, file {in_file:?}");
        assert_eq!(run.code, 0, "{case}: {run:?}");
        let result = json_of(&run);
        assert_eq!(result["status"], "already-registered", "{case}");
        assert_eq!(result["profile"], expected, "{case}");
        match origin {
            Some(origin) => assert!(
                run.stderr.contains(&format!("profile read from {origin}"))
                    || run.stderr.contains(&format!(
                        "profile read from {}",
                        board.path(&origin).display()
                    )),
                "{case}: {run:?}"
            ),
            None => assert!(!run.stderr.contains("profile read from"), "{case}"),
        }
        if expected == "losant" {
            assert_eq!(result["deviceId"], "losant-device-1", "{case}");
            assert_eq!(result["manufacturerId"], ETH0_MAC, "{case}");
        } else {
            assert_eq!(result["factory"], "demo-factory", "{case}");
        }
    }
}

#[cfg(feature = "losant")]
#[test]
fn boot_registers_with_the_profile_of_the_config_file() {
    let losant = Losant::start(LosantOptions::default());
    let board = Board::new(&losant);
    board.config("profile = \"losant\"\n\n[losant]\ninterface = \"wlan0\"\n");
    let mut cmd = board.command();
    cmd.arg("--boot");
    Board::output(cmd)
        .assert_code(0)
        .assert_says("registered Losant device");
    assert_eq!(losant.requested_ids(), [WLAN0_MAC]);
    assert_eq!(board.state_listing(), ["credentials.json 600"]);

    let mut cmd = board.command();
    cmd.args(["--boot", "--json"]);
    let run = Board::output(cmd);
    run.assert_code(0);
    assert_eq!(json_of(&run)["status"], "already-registered");
    assert_eq!(losant.requests().len(), 1);
}

#[cfg(feature = "losant")]
#[test]
fn lmp_flags_are_refused_with_losant_naming_their_profile() {
    let losant = Losant::start(LosantOptions::default());
    let board = Board::new(&losant);
    let run = board.run(&[
        "--start-daemon",
        "1",
        "-t",
        "main",
        "-H",
        "X-Token",
        "--json",
    ]);
    run.assert_code(2)
        .assert_says("3 configuration problems")
        .assert_says("--start-daemon belongs to the lmp profile, not losant")
        .assert_says("--tags belongs to the lmp profile, not losant")
        .assert_says("--api-token-header belongs to the lmp profile, not losant");
    let result = json_of(&run);
    assert_eq!(keys(&result), ["exit_code", "kind", "message", "status"]);
    assert_eq!(result["kind"], "config");
    assert_eq!(result["exit_code"], 2);
    assert!(losant.requests().is_empty());
    assert!(!board.path(STATE_DIR).exists());

    // And the other way round.
    let mut cmd = board.command();
    cmd.args([
        "--profile",
        "lmp",
        "--manufacturer-id",
        "SN-1",
        "-f",
        "demo-factory",
        "-t",
        "main",
        "-i",
        "intel-corei7-64",
    ]);
    Board::output(cmd)
        .assert_code(2)
        .assert_says("--manufacturer-id belongs to the losant profile, not lmp");
    assert!(!board.path("var/sota").exists());
}

#[cfg(feature = "losant")]
#[test]
fn losant_keeps_no_key_so_hsm_settings_are_refused_and_not_read() {
    let losant = Losant::start(LosantOptions::default());
    let board = Board::new(&losant);
    board
        .run(&[
            "-m",
            "/usr/lib/softhsm/libsofthsm2.so",
            "-P",
            "1234",
            "-S",
            "5678",
        ])
        .assert_code(2)
        .assert_says("--hsm-module is not used by the losant profile, which keeps no key")
        .assert_says("--hsm-pin is not used by the losant profile")
        .assert_says("--hsm-so-pin is not used by the losant profile");
    assert!(losant.requests().is_empty());

    // A half-written /etc/sota/hsm stops lmp, and is none of losant's business.
    common::write_file(&board.path("etc/sota/hsm"), "HSM_MODULE=/nope.so\n", 0o600);
    let mut cmd = board.command();
    cmd.args([
        "--profile",
        "lmp",
        "-f",
        "demo-factory",
        "-t",
        "main",
        "-i",
        "x86",
    ]);
    Board::output(cmd).assert_code(2).assert_says("hsm");
    board.run(&[]).assert_code(0);
    assert_eq!(board.state_listing(), ["credentials.json 600"]);
}

#[test]
fn an_unknown_profile_is_a_config_error_wherever_it_is_named() {
    let board = Board::bare();
    let known = "(known: lmp, losant, tii, azure-dps)";

    let mut cmd = board.command();
    cmd.args(["--profile", "nope", "--json"]);
    let run = Board::output(cmd);
    run.assert_code(2)
        .assert_says(&format!("unknown profile \"nope\" {known}"));
    assert_eq!(json_of(&run)["kind"], "config");

    let mut cmd = board.command();
    cmd.env("REGISTER_PROFILE", "fleetmgr");
    Board::output(cmd).assert_code(2).assert_says(&format!(
        "environment REGISTER_PROFILE: unknown profile \"fleetmgr\" {known}"
    ));

    board.config("profile = \"Losant\"\n");
    Board::output(board.command())
        .assert_code(2)
        .assert_says(&format!(
            "{} profile: unknown profile \"Losant\" {known}",
            board.path(CONFIG_FILE).display()
        ));

    board.config("profile = \"losant\"\n[lossant]\nurl = \"https://x\"\n");
    Board::output(board.command())
        .assert_code(2)
        .assert_says("unknown key \"lossant\"");
    assert_eq!(
        common::listing(board.root.path()),
        ["etc 755"],
        "nothing created"
    );
}

#[cfg(not(feature = "losant"))]
#[test]
fn a_build_without_losant_says_so() {
    let board = Board::bare();
    let mut cmd = board.command();
    cmd.args(["--profile", "losant"]);
    Board::output(cmd).assert_code(2).assert_says(
        "this build has no losant profile (it was built without the cargo feature losant)",
    );
    board.config("profile = \"losant\"\n");
    Board::output(board.command())
        .assert_code(2)
        .assert_says("this build has no losant profile");
}

#[cfg(not(feature = "tii"))]
#[test]
fn a_build_without_tii_says_so() {
    let board = Board::bare();
    let mut cmd = board.command();
    cmd.args(["--profile", "tii"]);
    Board::output(cmd)
        .assert_code(2)
        .assert_says("this build has no tii profile (it was built without the cargo feature tii)");
}

/// The example in examples/ is what the README shows: the agent reads it.
#[cfg(feature = "losant")]
#[test]
fn the_example_config_file_is_read_by_the_agent() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config-losant.toml");
    let board = Board::bare();
    board.interface("eth0", 2, ETH0_MAC, true);
    board.interface("eth1", 3, "aa:bb:cc:00:00:99", true);
    board.registered("d-1", "k-1", "s-1");
    let mut cmd = board.command();
    cmd.args(["--config", example, "--boot", "--json"]);
    let run = Board::output(cmd);
    run.assert_code(0)
        .assert_says(&format!("profile read from {example} profile"))
        .assert_says(&format!(
            "Losant registration URL read from {example} [losant] url"
        ))
        .assert_says("manufacturer id read from the MAC address of eth0");
    let result = json_of(&run);
    assert_eq!(result["profile"], "losant");
    assert_eq!(result["manufacturerId"], ETH0_MAC);
}
