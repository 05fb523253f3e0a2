//! Registers a pretend device against a local registration API and shows the
//! resulting sota directory: `cargo run --example demo`.
//!
//! The API is the loopback double used by the tests: it verifies the CSR and
//! signs it with a throw-away test CA. The device lives in `target/demo-device`
//! (its `/etc` and `/var/sota`), so nothing on this machine is touched.
//! fioconfig, which a real device runs after registering, is a stub in
//! `target/demo-device/usr/bin` that only writes down how it was started.

use device_api::{DeviceApi, Options};
use lmp_device_register::config::Environment;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn show_tree(dir: &Path, depth: usize) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
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

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/demo-device");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("etc/sota")).unwrap();
    std::fs::write(
        root.join("etc/os-release"),
        "ID=lmp\nLMP_FACTORY=\"demo-factory\"\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/sota/tag"), "main\n").unwrap();
    let token = root.join("etc/lmp-device-register-token");
    std::fs::write(&token, "demo-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A stand-in for fioconfig: this machine has none, and the real one
    // would fetch the device's configuration from the factory.
    let stub_dir = root.join("usr/bin");
    let fioconfig_log = root.join("fioconfig.log");
    std::fs::create_dir_all(&stub_dir).unwrap();
    let stub = stub_dir.join("fioconfig");
    std::fs::write(
        &stub,
        format!(
            "#!/bin/sh\necho \"fioconfig $* with SOTA_DIR=$SOTA_DIR SECRETS_DIR=$SECRETS_DIR\" > '{}'\n",
            fioconfig_log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The agent starts fioconfig from this process's PATH. Set before any
    // other thread exists.
    let path = format!(
        "{}:{}",
        stub_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::env::set_var("PATH", &path);

    let api = DeviceApi::start(Options::default());

    println!("Registration API (loopback double): {}", api.url());
    println!("Device root: {}\n", root.display());
    let args = [
        "lmp-device-register",
        "--root",
        root.to_str().unwrap(),
        "--device-api",
        &api.url(),
        "--hwid",
        "demo-board",
        "--name",
        "demo-device-1",
        "--start-daemon",
        "0",
    ];
    // An empty environment for the settings: the demo must not pick up
    // DEVICE_API & co. from the shell it runs in.
    let code = lmp_device_register::run(args.iter().map(Into::into), Environment::default());

    println!("\nexit code {code}; {}:", root.join("var/sota").display());
    show_tree(&root.join("var/sota"), 0);
    if let Ok(sota) = std::fs::read_to_string(root.join("var/sota/sota.toml")) {
        println!("\nsota.toml:\n{sota}");
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
    std::process::exit(i32::from(code));
}
