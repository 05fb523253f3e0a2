//! Registers a pretend device with the loopback double of one profile's
//! server and shows what the agent wrote and what the device's own client
//! would use next: `cargo run --example demo [lmp|losant|azure-dps|tii]`
//! (`scripts/demo PROFILE` does the same after installing what it needs).
//!
//! The servers are the doubles the tests use, on 127.0.0.1: they verify what
//! they get (the CSR, the registration JWT, the client certificate) and sign
//! with throw-away test CAs. The device lives in `target/demo-device` (its
//! `/etc` and `/var`; the agent runs with `--root` there), so nothing on
//! this machine is touched and no root rights are needed.

use device_api::azure_dps::{AzureDps, DpsOptions};
use device_api::tii::{TiiFleet, TiiOptions};
use device_api::{DeviceApi, Losant, LosantOptions, Options};
use lmp_device_register::config::Environment;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const PROFILES: [&str; 4] = ["lmp", "losant", "azure-dps", "tii"];

fn write(path: &Path, contents: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn show_tree(dir: &Path, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        println!("  (nothing)");
        return;
    };
    let mut entries: Vec<_> = entries.map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let meta = entry.metadata().unwrap();
        let mode = meta.permissions().mode() & 0o777;
        let name = entry.file_name().to_string_lossy().into_owned();
        let suffix = if meta.is_dir() { "/" } else { "" };
        println!(
            "  {:indent$}{mode:04o}  {name}{suffix}",
            "",
            indent = depth * 2
        );
        if meta.is_dir() {
            show_tree(&entry.path(), depth + 1);
        }
    }
}

/// A JSON file as the device's client reads it, with the value of every key
/// that names a secret or a token replaced by its length: the demo shows
/// the shape, a terminal or a CI log is no place for the secret itself.
fn show_json(path: &Path) {
    fn mask(value: &mut serde_json::Value) {
        if let serde_json::Value::Object(map) = value {
            for (key, value) in map.iter_mut() {
                let lower = key.to_lowercase();
                if lower.contains("secret") || lower == "token" {
                    let chars = value.as_str().map_or(0, |s| s.chars().count());
                    *value = format!("<{chars} characters, not shown>").into();
                } else {
                    mask(value);
                }
            }
        }
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        println!("\n{}: not written", path.display());
        return;
    };
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    mask(&mut json);
    println!(
        "\n{}:\n{}",
        path.display(),
        serde_json::to_string_pretty(&json).unwrap()
    );
}

/// The agent, in this process, with `--root` and an empty environment (the
/// demo must not pick up DEVICE_API & co. from the shell it runs in).
fn register(root: &Path, args: &[&str]) -> u8 {
    let mut argv = vec!["lmp-device-register", "--root", root.to_str().unwrap()];
    argv.extend_from_slice(args);
    println!("$ {}\n", argv.join(" "));
    let code = lmp_device_register::run(argv.iter().map(Into::into), Environment::default());
    println!("\nexit code {code}");
    code
}

fn show_state(root: &Path, state: &str) {
    let dir = root.join(state);
    println!("\n{}:", dir.display());
    show_tree(&dir, 0);
}

fn lmp(root: &Path) -> u8 {
    write(
        &root.join("etc/os-release"),
        "ID=lmp\nLMP_FACTORY=\"demo-factory\"\n",
        0o644,
    );
    write(&root.join("etc/sota/tag"), "main\n", 0o644);
    write(
        &root.join("etc/lmp-device-register-token"),
        "demo-token\n",
        0o600,
    );
    // A stand-in for fioconfig: this machine has none, and the real one
    // would fetch the device's configuration from the factory.
    let stub_dir = root.join("usr/bin");
    let fioconfig_log = root.join("fioconfig.log");
    write(
        &stub_dir.join("fioconfig"),
        &format!(
            "#!/bin/sh\necho \"fioconfig $* with SOTA_DIR=$SOTA_DIR SECRETS_DIR=$SECRETS_DIR\" > '{}'\n",
            fioconfig_log.display()
        ),
        0o755,
    );
    // The agent starts fioconfig from this process's PATH. Set before any
    // other thread exists.
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::set_var("PATH", format!("{}:{path}", stub_dir.display()));

    let api = DeviceApi::start(Options::default());
    println!("LmP registration API (loopback double): {}", api.url());
    let code = register(
        root,
        &[
            "--device-api",
            &api.url(),
            "--hwid",
            "demo-board",
            "--name",
            "demo-device-1",
            "--start-daemon",
            "0",
        ],
    );
    show_state(root, "var/sota");
    if let Ok(sota) = std::fs::read_to_string(root.join("var/sota/sota.toml")) {
        println!("\nsota.toml (aktualizr-lite's configuration):\n{sota}");
    }
    if let Ok(ran) = std::fs::read_to_string(&fioconfig_log) {
        println!("The stub fioconfig in {} ran: {ran}", stub_dir.display());
    }
    for reg in api.registrations() {
        println!(
            "The API registered {} ({}) for factory {}",
            reg.uuid, reg.name, reg.factory
        );
    }
    println!("Next: fioconfig and aktualizr-lite connect with client.pem, pkey.pem and root.crt.");
    code
}

fn losant(root: &Path) -> u8 {
    let losant = Losant::start(LosantOptions::default());
    println!("Losant application (loopback double): {}", losant.url());
    // The application's registration JWT; its url claim names the double.
    write(
        &root.join("etc/losant/registration-token"),
        &format!("{}\n", losant.token()),
        0o600,
    );
    write(
        &root.join("etc/lmp-device-register.toml"),
        "profile = \"losant\"\n\n[losant]\nmanufacturer_id = \"demo-sn-000123\"\n",
        0o644,
    );
    let code = register(root, &["--boot"]);
    show_state(root, "var/lib/losant");
    show_json(&root.join("var/lib/losant/credentials.json"));
    for device in losant.devices() {
        println!(
            "\nThe application made device {} for manufacturer id {}",
            device.device_id, device.manufacturer_id
        );
    }
    println!(
        "Next: the device's Losant MQTT client connects with client id deviceId, \
         user name accessKey and password accessSecret from credentials.json."
    );
    code
}

fn azure_dps(root: &Path) -> u8 {
    let dps = AzureDps::start(DpsOptions {
        enable_at_factory: true,
        ..DpsOptions::default()
    });
    println!(
        "Factory enrolment (loopback double): {}\nDPS (loopback double): {}",
        dps.enrol_url(),
        dps.endpoint()
    );
    let etc = root.join("etc/azure-dps");
    write(&etc.join("dps-ca.pem"), &dps.server_ca_pem(), 0o644);
    write(&etc.join("factory-ca.pem"), &dps.device_root_pem(), 0o644);
    write(
        &root.join("etc/lmp-device-register.toml"),
        &format!(
            "profile = \"azure-dps\"\n\n[azure-dps]\nid_scope = \"{}\"\nendpoint = \"{}\"\n\
             enrol_url = \"{}\"\ncacert = \"{}\"\nfactory_ca = \"{}\"\n",
            dps.id_scope(),
            dps.endpoint(),
            dps.enrol_url(),
            etc.join("dps-ca.pem").display(),
            etc.join("factory-ca.pem").display(),
        ),
        0o644,
    );
    // One run does both steps: the factory's certificate, then DPS.
    let code = register(root, &[]);
    show_state(root, "var/lib/azure-dps");
    show_json(&root.join("var/lib/azure-dps/assignment.json"));
    println!(
        "\nNext: the device's IoT Hub client connects to assignedHub as deviceId, \
         over TLS with device.crt and device.key (X.509 authentication)."
    );
    code
}

fn tii(root: &Path) -> u8 {
    if !device_api::tii::nats_server_available() {
        eprintln!("the tii demo needs nats-server: scripts/demo tii installs it");
        return 2;
    }
    let fleet = TiiFleet::start(TiiOptions::default());
    println!(
        "Provisioning server (loopback double): {}\nFleet manager over NATS (nats-server and a double): {}",
        fleet.provisioning_url(),
        fleet.nats_url()
    );
    write(
        &root.join("etc/os-release"),
        "ID=debian\nVERSION_ID=\"12\"\n",
        0o644,
    );
    write(
        &root.join("etc/lmp-device-register.toml"),
        &format!(
            "profile = \"tii\"\n\n[tii]\nprovisioning_url = \"{}\"\ndevice_type = \"demo-drone\"\n",
            fleet.provisioning_url()
        ),
        0o644,
    );
    let code = register(root, &["--boot"]);
    show_state(root, "var/lib/fleet-registration");
    show_json(&root.join("var/lib/fleet-registration/registration.json"));
    for registration in fleet.registrations() {
        println!(
            "\nThe fleet manager registered {} ({})",
            registration.id.as_deref().unwrap_or("?"),
            registration.body["deviceType"]
        );
    }
    println!(
        "Next: the device's fleet services read registration.json and reach the \
         fleet over NATS with device.crt, device.key and ca.crt."
    );
    code
}

fn main() {
    let profile = std::env::args().nth(1).unwrap_or_else(|| "lmp".into());
    if !PROFILES.contains(&profile.as_str()) {
        eprintln!("usage: demo [{}]", PROFILES.join("|"));
        std::process::exit(2);
    }
    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/demo-device");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    println!("Profile {profile}; device root: {}\n", root.display());
    let code = match profile.as_str() {
        "lmp" => lmp(&root),
        "losant" => losant(&root),
        "azure-dps" => azure_dps(&root),
        _ => tii(&root),
    };
    std::process::exit(i32::from(code));
}
