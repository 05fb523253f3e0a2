//! Where settings come from and how a wrong one is reported: `--root`, every
//! problem in one run, the CA bundle's origin, paths named under `--root`,
//! and the config file (`[lmp]`, precedence, mistakes). Each case runs the
//! built binary and checks that a refused run created nothing.

mod common;

use common::*;
use device_api::{DeviceApi, Options};
use std::path::Path;

fn api() -> DeviceApi {
    DeviceApi::start(Options::default())
}

/// Every line of a numbered problem list ("  3. ...") in the error.
fn listed_problems(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|line| {
            let (number, rest) = line.trim_start().split_once(". ")?;
            number.parse::<u32>().ok().map(|_| rest.to_string())
        })
        .collect()
}

#[test]
fn a_root_that_does_not_exist_is_refused_and_not_created() {
    let api = api();
    let scratch = tempfile::tempdir().unwrap();
    let missing = scratch.path().join("typo/x");
    let mut cmd = Device::new().command(&api, &[]);
    // The last --root wins: the device's own is overridden by the typo.
    cmd.arg("--root").arg(&missing);
    let run = Device::output(cmd);
    run.assert_code(2)
        .assert_says(&format!("--root {}: no such directory", missing.display()));
    assert!(
        !scratch.path().join("typo").exists(),
        "nothing may be created for a wrong --root"
    );
    assert!(api.requests().is_empty());
}

#[test]
fn every_problem_is_reported_in_one_run() {
    let api = api();
    let device = Device::new();
    // An image without LMP_FACTORY, LMP_FACTORY_TAG and LMP_MACHINE, no tag
    // file, and (this test build has no HARDWARE_ID) no hardware id at all.
    write_file(&device.path("etc/os-release"), "ID=lmp\n", 0o644);
    let missing_token = device.path("nowhere/token");
    let mut cmd = device.bare_command();
    cmd.env("DEVICE_API", api.url())
        .env("TOKEN_FILE", &missing_token)
        .env("PRODUCTION", "maybe")
        .args(["--cacert", "/nonexistent/factory-ca.pem"]);
    let run = Device::output(cmd);
    run.assert_code(2).assert_says("6 configuration problems:");

    let problems = listed_problems(&run.stderr);
    let os_release = device.path("etc/os-release").display().to_string();
    let expected: [&[&str]; 6] = [
        &[
            "missing factory",
            "--factory",
            "DEVICE_FACTORY",
            &os_release,
        ],
        &[
            "missing tag",
            "--tags",
            &device.path("etc/sota/tag").display().to_string(),
        ],
        &["missing hardware id", "--hwid", &os_release, "LMP_MACHINE"],
        &["environment PRODUCTION", "\"maybe\""],
        &[
            "environment TOKEN_FILE",
            &missing_token.display().to_string(),
            "does not exist",
        ],
        &["--cacert", "/nonexistent/factory-ca.pem", "does not exist"],
    ];
    assert_eq!(problems.len(), expected.len(), "{run:?}");
    for words in expected {
        assert!(
            problems
                .iter()
                .any(|problem| words.iter().all(|w| problem.contains(w))),
            "no problem says all of {words:?}:\n{problems:#?}"
        );
    }
    assert!(!device.sota().exists(), "{:?}", device.sota_listing());
    assert!(api.requests().is_empty());
}

#[test]
fn a_missing_ca_bundle_names_the_setting_and_its_origin() {
    let api = api();
    let device = Device::new();
    let config = device.path("etc/lmp-device-register.toml");
    write_file(
        &config,
        "[lmp]\ncacert = \"/nonexistent/from-file.pem\"\n",
        0o644,
    );
    let empty = device.path("empty.pem");
    write_file(&empty, "no certificate here\n", 0o644);

    // (extra flags, environment, what the message must say)
    let cases: [(Vec<&str>, Option<&str>, Vec<String>); 4] = [
        (
            vec!["--cacert", "/nonexistent/flag.pem"],
            None,
            vec!["--cacert: CA file /nonexistent/flag.pem does not exist".into()],
        ),
        (
            vec![],
            Some("/nonexistent/env.pem"),
            vec![
                "environment DEVICE_API_CACERT: CA file /nonexistent/env.pem does not exist".into(),
            ],
        ),
        (
            vec![],
            None,
            vec![format!(
                "{} [lmp] cacert: CA file /nonexistent/from-file.pem does not exist",
                config.display()
            )],
        ),
        (
            vec!["--cacert", empty.to_str().unwrap()],
            None,
            vec![format!(
                "--cacert: {} holds no certificate",
                empty.display()
            )],
        ),
    ];
    for (flags, env, expected) in cases {
        let mut cmd = device.command(&api, &flags);
        if let Some(path) = env {
            cmd.env("DEVICE_API_CACERT", path);
        }
        let run = Device::output(cmd);
        run.assert_code(2);
        for text in &expected {
            run.assert_says(text);
        }
        assert!(!device.sota().exists(), "{flags:?}");
    }
    assert!(api.requests().is_empty());
}

/// Occurrences of `/etc/os-release` that are not `<root>/etc/os-release`.
fn host_os_release_mentions(text: &str, root: &Path) -> usize {
    let under_root = format!("{}/etc/os-release", root.display());
    text.matches("/etc/os-release").count() - text.matches(&under_root).count()
}

#[test]
fn messages_under_root_name_the_files_under_root() {
    let api = api();
    let device = Device::new();
    let root = device.root.path();

    // Read from the root's os-release: the origin names that file.
    write_file(
        &device.path("etc/os-release"),
        "ID=lmp\nLMP_FACTORY=demo-factory\nLMP_FACTORY_TAG=main\nLMP_MACHINE=imx8mm-lpddr4-evk\n",
        0o644,
    );
    let mut cmd = device.bare_command();
    cmd.env("DEVICE_API", api.url());
    let run = Device::output(cmd);
    run.assert_code(0)
        .assert_says(&format!(
            "factory read from {}/etc/os-release",
            root.display()
        ))
        .assert_says(&format!(
            "hardware id read from {}/etc/os-release",
            root.display()
        ));
    assert_eq!(api.registrations()[0].hardware_id, "imx8mm-lpddr4-evk");
    assert_eq!(host_os_release_mentions(&run.stderr, root), 0, "{run:?}");

    // A broken one and a missing one: the problems name the root's file.
    for contents in [Some("ID=lmp\nLMP_FACTORY=\"open\n"), None] {
        let device = Device::new();
        let root = device.root.path();
        if let Some(text) = contents {
            write_file(&device.path("etc/os-release"), text, 0o644);
        }
        let run = Device::output(device.bare_command());
        run.assert_code(2)
            .assert_says(&format!("{}/etc/os-release", root.display()));
        assert_eq!(host_os_release_mentions(&run.stderr, root), 0, "{run:?}");
        assert!(!device.sota().exists());
    }
}

#[test]
fn the_config_file_supplies_settings_and_flags_and_environment_still_win() {
    let api = api();
    let device = Device::new();
    let token = device.path("secrets/token");
    write_file(&token, &format!("{TOKEN}\n"), 0o600);
    std::fs::remove_file(device.path("etc/lmp-device-register-token")).unwrap();
    let config = device.path("etc/lmp-device-register.toml");
    write_file(
        &config,
        &format!(
            "profile = \"lmp\"\n\n[lmp]\ndevice_api = \"{}\"\nfactory = \"{FACTORY}\"\ntags = \"from-file\"\nhardware_id = \"file-board\"\nname = \"file-name\"\ngroup = \"lab\"\nproduction = true\napps = [\"shellhttpd\"]\ntoken_file = \"{}\"\nuse_ostree_server = false\n",
            api.url(),
            token.display()
        ),
        0o644,
    );

    // The default config file of the root, on its own.
    let run = Device::output(device.bare_command());
    run.assert_code(0)
        .assert_says(&format!("config file read from {}", config.display()))
        .assert_says(&format!(
            "factory read from {} [lmp] factory",
            config.display()
        ));
    let reg = &api.registrations()[0];
    assert_eq!(reg.name, "file-name");
    assert_eq!(reg.hardware_id, "file-board");
    assert_eq!(reg.group.as_deref(), Some("lab"));
    assert!(reg.production);
    assert!(!reg.use_ostree_server);
    assert_eq!(reg.overrides["pacman"]["tags"], "\"from-file\"");
    assert_eq!(reg.overrides["pacman"]["compose_apps"], "\"shellhttpd\"");

    // Flags and the environment come first; the same file, named with --config.
    let moved = device.path("elsewhere.toml");
    std::fs::rename(&config, &moved).unwrap();
    let mut cmd = device.bare_command();
    cmd.arg("--config")
        .arg(&moved)
        .env("PRODUCTION", "0")
        .env("APPS", "agent")
        .args([
            "--force",
            "-n",
            "flag-name",
            "-t",
            "flag-tag",
            "-i",
            "flag-board",
        ]);
    let run = Device::output(cmd);
    run.assert_code(0)
        .assert_says(&format!("config file read from {}", moved.display()));
    let reg = &api.registrations()[1];
    assert_eq!(reg.name, "flag-name");
    assert_eq!(reg.hardware_id, "flag-board");
    assert!(!reg.production);
    assert_eq!(reg.overrides["pacman"]["tags"], "\"flag-tag\"");
    assert_eq!(reg.overrides["pacman"]["compose_apps"], "\"agent\"");
}

#[test]
fn mistakes_in_the_config_file_name_the_file_and_the_key() {
    let api = api();
    // (contents, what the message must say after the file's path)
    let cases = [
        (
            "[lmp]\nfactori = \"x\"\n",
            " [lmp]: unknown field `factori`",
        ),
        (
            "[lmp]\nproduction = \"yes\"\n",
            " [lmp] production: invalid type: string \"yes\", expected a boolean",
        ),
        ("[lmp]\napps = \"a,b\"\n", " [lmp] apps: invalid type"),
        ("[lpm]\nfactory = \"x\"\n", ": unknown key \"lpm\""),
        ("profile = 1\n", ": profile must be a string"),
        (
            "profile = \"fleet\"\n",
            " profile: unknown profile \"fleet\"",
        ),
        ("[lmp]\nfactory = \"x\n", ": not valid TOML at line 2"),
    ];
    for (contents, expected) in cases {
        let device = Device::new();
        let config = device.path("etc/lmp-device-register.toml");
        write_file(&config, contents, 0o644);
        let run = device.run(&api, &[]);
        run.assert_code(2)
            .assert_says(&format!("{}{expected}", config.display()));
        assert!(!device.sota().exists(), "{contents:?}");
    }
    assert!(api.requests().is_empty());
}

#[test]
fn a_config_path_that_does_not_exist_is_an_error() {
    let api = api();
    let device = Device::new();
    let missing = device.path("etc/typo.toml");
    let run = device.run(&api, &["--config", missing.to_str().unwrap()]);
    run.assert_code(2)
        .assert_says(&format!("--config {}: no such file", missing.display()));
    assert!(!device.sota().exists());
    assert!(api.requests().is_empty());
}

#[test]
fn relative_paths_in_the_config_file_are_refused_together() {
    let api = api();
    let device = Device::new();
    let config = device.path("etc/lmp-device-register.toml");
    write_file(
        &config,
        "[lmp]\nsota_dir = \"var/sota\"\ncacert = \"ca.pem\"\ntoken_file = \"token\"\n",
        0o644,
    );
    let run = device.run(&api, &[]);
    run.assert_code(2);
    let problems = listed_problems(&run.stderr);
    for key in ["sota_dir var/sota", "cacert ca.pem", "token_file token"] {
        let expected = format!("{} [lmp] {key}: must be an absolute path", config.display());
        assert!(problems.contains(&expected), "{expected} in {problems:#?}");
    }
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(!device.sota().exists());
    assert!(api.requests().is_empty());
}
