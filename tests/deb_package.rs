//! The Debian package, as a user gets it: its contents and lintian, and per
//! profile an install into the Debian tree of the boot test
//! (tests/firstboot_support), a boot under systemd with the package's unit,
//! a registration against that profile's double, and a purge that keeps the
//! device's identity.
//!
//! The package under test is `LMP_DEB_PACKAGE`, else the one `cargo deb`
//! leaves in target/debian/ (scripts/release builds both architectures).
//! The boots need root, debootstrap and systemd-nspawn, like
//! tests/firstboot.rs, so plain `cargo test` leaves these tests out:
//!
//! ```sh
//! cargo deb --strip && sudo cargo test --test deb_package -- --ignored
//! ```
//!
//! The doubles listen on 127.0.0.1 of the device's own network namespace,
//! which the container joins: the agent inside reaches them on its
//! loopback, where their test certificates are valid.

mod common;
mod firstboot_support;

use device_api::azure_dps::{AzureDps, DpsOptions};
use device_api::tii::{TiiFleet, TiiOptions};
use device_api::{DeviceApi, Losant, LosantOptions, Options};
use firstboot_support::image::Image;
use firstboot_support::machine::{Machine, UNIT};
use firstboot_support::net::Net;
use firstboot_support::{run, run_ok, wait_for};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PACKAGE: &str = "lmp-device-register";
/// Where the package is bound into the tree to be installed.
const INSIDE: &str = "/tmp/lmp-device-register.deb";
const TOKEN: &str = "deb-token-8d1f2c7a";
const WANTS: &str = "etc/systemd/system/multi-user.target.wants/lmp-device-register.service";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// The package under test, or `None` with a note (a failure under CI).
fn package() -> Option<PathBuf> {
    let path = std::env::var_os("LMP_DEB_PACKAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            repo().join(format!("target/debian/{PACKAGE}_{}-1_amd64.deb", version()))
        });
    if path.is_file() {
        return Some(path);
    }
    let why = format!(
        "no package at {} (cargo deb --strip, or scripts/release and LMP_DEB_PACKAGE)",
        path.display()
    );
    assert!(std::env::var_os("CI").is_none(), "{why}");
    println!("NOTICE: {why}; skipping");
    None
}

fn control_field(deb: &Path, field: &str) -> String {
    run_ok(
        Duration::from_secs(30),
        "dpkg-deb",
        &["--field", deb.to_str().unwrap(), field],
    )
    .trim()
    .to_string()
}

/// Path (without the leading `.`) -> mode, of every regular file.
fn contents(deb: &Path) -> BTreeMap<String, String> {
    run_ok(
        Duration::from_secs(30),
        "dpkg-deb",
        &["--contents", deb.to_str().unwrap()],
    )
    .lines()
    .filter(|l| l.starts_with('-'))
    .map(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        (
            fields[5].trim_start_matches('.').to_string(),
            fields[0].to_string(),
        )
    })
    .collect()
}

fn file_in(deb: &Path, path: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        Duration::from_secs(30),
        "dpkg-deb",
        &[
            "--extract",
            deb.to_str().unwrap(),
            dir.path().to_str().unwrap(),
        ],
    );
    std::fs::read(dir.path().join(path.trim_start_matches('/'))).unwrap()
}

/// The lmp example the package ships under /usr/share/doc is one the agent
/// reads and registers with (the other profiles' examples: tests/profiles.rs,
/// tests/tii.rs, tests/azure_dps.rs).
#[test]
fn the_lmp_example_config_file_registers_a_device() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config-lmp.toml");
    let api = DeviceApi::start(Options {
        factory: "acme".into(),
        token: common::TOKEN.into(),
        ..Options::default()
    });
    let device = common::Device::new();
    let mut cmd = device.bare_command();
    cmd.args(["--config", example, "--device-api", &api.url(), "--json"]);
    common::Device::output(cmd)
        .assert_code(0)
        .assert_says(&format!("profile read from {example}"));
    let registrations = api.registrations();
    assert_eq!(registrations.len(), 1);
    assert_eq!(registrations[0].factory, "acme");
    assert_eq!(registrations[0].hardware_id, "raspberrypi4-64");
    assert!(device.sota().join("sota.toml").is_file());
}

#[test]
#[ignore = "needs the built package: cargo test --test deb_package -- --ignored"]
fn the_package_installs_what_the_docs_say_from_this_tree() {
    let Some(deb) = package() else {
        return;
    };
    assert_eq!(control_field(&deb, "Package"), PACKAGE);
    assert_eq!(control_field(&deb, "Version"), format!("{}-1", version()));
    let depends = control_field(&deb, "Depends");
    assert!(depends.starts_with("libc6 (>= "), "Depends: {depends}");

    let files = contents(&deb);
    let doc = format!("/usr/share/doc/{PACKAGE}");
    let mut expected: BTreeMap<String, Option<&str>> = BTreeMap::from([
        (format!("/usr/bin/{PACKAGE}"), None),
        (
            format!("/usr/lib/systemd/system/{UNIT}"),
            Some("systemd/lmp-device-register.service"),
        ),
        (
            "/usr/lib/tmpfiles.d/lmp-device-register.conf".into(),
            Some("systemd/lmp-device-register.tmpfiles"),
        ),
        ("/usr/share/man/man8/lmp-device-register.8.gz".into(), None),
        (
            "/usr/share/bash-completion/completions/lmp-device-register".into(),
            Some("docs/completions/lmp-device-register.bash"),
        ),
        (
            "/usr/share/zsh/vendor-completions/_lmp-device-register".into(),
            Some("docs/completions/_lmp-device-register"),
        ),
        (
            "/usr/share/fish/vendor_completions.d/lmp-device-register.fish".into(),
            Some("docs/completions/lmp-device-register.fish"),
        ),
        (
            format!("/usr/share/lintian/overrides/{PACKAGE}"),
            Some("packaging/deb/lintian-overrides"),
        ),
        (format!("{doc}/README.md"), Some("README.md")),
        (format!("{doc}/copyright"), None),
        (format!("{doc}/changelog.Debian.gz"), None),
    ]);
    let mut sources = Vec::new();
    for dir in ["examples", "docs"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let wanted = match dir {
                "examples" => name.starts_with("config-") && name.ends_with(".toml"),
                _ => name.ends_with(".md"),
            };
            if wanted {
                sources.push((format!("{dir}/{name}"), format!("{doc}/{dir}/{name}")));
            }
        }
    }
    for (source, path) in &sources {
        expected.insert(path.clone(), Some(source.as_str()));
    }
    assert_eq!(
        files.keys().cloned().collect::<BTreeSet<_>>(),
        expected.keys().cloned().collect::<BTreeSet<_>>(),
        "the package's files"
    );
    for (path, mode) in &files {
        let want = if path.starts_with("/usr/bin/") {
            "-rwxr-xr-x"
        } else {
            "-rw-r--r--"
        };
        assert_eq!(mode, want, "{path}");
        if let Some(Some(source)) = expected.get(path) {
            assert!(
                file_in(&deb, path) == std::fs::read(repo().join(source)).unwrap(),
                "{path} is not {source} (a package built from an older tree?)"
            );
        }
    }

    // No conffile: the config file's presence means "this device is
    // configured" (docs/debian.md), so the package ships none.
    let control = tempfile::tempdir().unwrap();
    run_ok(
        Duration::from_secs(30),
        "dpkg-deb",
        &[
            "--control",
            deb.to_str().unwrap(),
            control.path().to_str().unwrap(),
        ],
    );
    assert!(!control.path().join("conffiles").exists());
    // Enabled only when configured, never started by the package.
    let postinst = std::fs::read_to_string(control.path().join("postinst")).unwrap();
    assert!(
        postinst.contains("[ -e /etc/lmp-device-register.toml ]"),
        "{postinst}"
    );
    assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");
    assert!(!postinst.contains("systemctl start"), "{postinst}");
}

#[test]
#[ignore = "needs the built package and lintian: cargo test --test deb_package -- --ignored"]
fn lintian_is_clean_but_for_the_explained_overrides() {
    let Some(deb) = package() else {
        return;
    };
    let output = run(
        Duration::from_secs(300),
        "lintian",
        &[
            "--info",
            "--pedantic",
            "--show-overrides",
            deb.to_str().unwrap(),
        ],
    );
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}");
    // Errors and warnings fail, unless overridden (O:). lintian's --fail-on
    // would count the overridden ones too once --show-overrides is given.
    let problems: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect();
    assert!(
        output.status.success() && problems.is_empty(),
        "lintian:\n{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every override is explained in docs/debian.md.
    let docs = std::fs::read_to_string(repo().join("docs/debian.md")).unwrap();
    let overrides =
        std::fs::read_to_string(repo().join("packaging/deb/lintian-overrides")).unwrap();
    for line in overrides.lines().filter(|l| l.starts_with(PACKAGE)) {
        let tag = line.split_whitespace().nth(1).unwrap();
        assert!(docs.contains(tag), "docs/debian.md does not explain {tag}");
    }
}

// ---------------------------------------------------------------------------
// Install, boot, register, purge
// ---------------------------------------------------------------------------

/// The package under test and a machine that can boot containers, or `None`
/// with a note.
fn boot_setup() -> Option<PathBuf> {
    let deb = package()?;
    if let Err(why) = firstboot_support::can_boot() {
        println!("NOTICE: not booting any container: {why}");
        return None;
    }
    firstboot_support::sweep_dead_runs();
    Some(deb)
}

/// Runs `body` on a thread in the device's network namespace: the doubles
/// it starts (their threads, nats-server) listen on the loopback the
/// container will share.
fn in_device_ns<T: Send>(net: &Net, body: impl FnOnce() -> T + Send) -> T {
    run_ok(
        Duration::from_secs(30),
        "ip",
        &["-n", &net.device_ns, "link", "set", "lo", "up"],
    );
    let path = net.device_ns_path();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let ns = std::fs::File::open(&path).expect("the device's namespace");
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("entering the device's namespace");
                body()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `apt-get install ./package.deb` in the tree, as an image builder does in
/// a chroot (no systemd running, no network: every dependency is there).
fn install(image: &Image, deb: &Path) -> Duration {
    let started = Instant::now();
    run_ok(
        Duration::from_secs(300),
        "systemd-nspawn",
        &[
            "--quiet",
            // No systemd on the host side to register with or make a scope.
            "--register=no",
            "--keep-unit",
            "--private-network",
            &format!("--directory={}", image.root.display()),
            &format!("--bind-ro={}:{INSIDE}", deb.display()),
            "--setenv=DEBIAN_FRONTEND=noninteractive",
            "apt-get",
            "install",
            "--yes",
            "--no-install-recommends",
            INSIDE,
        ],
    );
    started.elapsed()
}

fn enabled(image: &Image) -> bool {
    image.path(WANTS).symlink_metadata().is_ok()
}

/// The figures of one profile's run, printed for the report.
struct Figures {
    profile: &'static str,
    install: Duration,
    booted_at: Instant,
}

impl Figures {
    fn print(&self, machine: &Machine, unit: &BTreeMap<String, String>) {
        let micros = |key: &str| -> u64 { unit[key].parse().unwrap() };
        let ran =
            micros("ExecMainExitTimestampMonotonic") - micros("ExecMainStartTimestampMonotonic");
        println!(
            "deb {}: install {:.1} s, boot to registered {:.1} s, agent ran {:.2} s",
            self.profile,
            self.install.as_secs_f64(),
            self.booted_at.elapsed().as_secs_f64(),
            ran as f64 / 1e6,
        );
        println!("{}", machine.journal_text(&["--unit", UNIT]));
    }
}

#[track_caller]
fn assert_registered(unit: &BTreeMap<String, String>) {
    let get = |k: &str| unit.get(k).map(String::as_str).unwrap_or_default();
    assert_eq!(
        (
            get("Result"),
            get("ExecMainStatus"),
            get("ActiveState"),
            get("SubState")
        ),
        ("success", "0", "active", "exited"),
        "{unit:?}"
    );
    // The package's unit (Debian 12 is merged-/usr: systemd names it by
    // /lib, a link to /usr/lib), not one an image put in /etc.
    let fragment = get("FragmentPath");
    assert!(
        [
            format!("/usr/lib/systemd/system/{UNIT}"),
            format!("/lib/systemd/system/{UNIT}")
        ]
        .contains(&fragment.to_string()),
        "{fragment}"
    );
}

/// `dpkg --purge` on the running device: what the package installed goes,
/// the state dir with the device's identity stays, with `kept` in it.
fn purge_keeps_identity(machine: &Machine, image: &Image, deb: &Path, state: &str, kept: &[&str]) {
    let output = machine.exec(&["dpkg", "--purge", PACKAGE]);
    assert!(output.status.success(), "dpkg --purge: {output:?}");
    for path in contents(deb).keys() {
        assert!(
            image
                .path(path.trim_start_matches('/'))
                .symlink_metadata()
                .is_err(),
            "{path} is still there after the purge"
        );
    }
    assert!(!enabled(image), "the unit is still enabled after the purge");
    assert!(image
        .path("etc/systemd/system/lmp-device-auto-register.service")
        .symlink_metadata()
        .is_err());
    for name in kept {
        let path = image.path(&format!("{state}/{name}"));
        assert!(path.is_file(), "{} went with the purge", path.display());
    }
}

#[test]
#[ignore = "boots containers as root: cargo test --test deb_package -- --ignored"]
fn lmp_configured_before_install_registers_on_first_boot() {
    let Some(deb) = boot_setup() else {
        return;
    };
    let net = Net::new(true);
    let api = in_device_ns(&net, || {
        DeviceApi::start(Options {
            factory: "deb-factory".into(),
            token: TOKEN.into(),
            ..Options::default()
        })
    });
    let image = Image::bare("deb-lmp");
    // An image builder drops the device's settings, then installs.
    image.write("etc/lmp-device-register.toml",
        &format!(
            "[lmp]\nfactory = \"deb-factory\"\ntags = \"main\"\nhardware_id = \"deb-machine\"\ndevice_api = \"{}\"\n",
            api.url()
        ),
        0o644,
    );
    image.write(
        "etc/lmp-device-register-token",
        &format!("{TOKEN}\n"),
        0o600,
    );
    let install = install(&image, &deb);
    assert!(
        enabled(&image),
        "configured, so the package enabled the unit"
    );

    let machine = Machine::boot(&image, &net, "boot1");
    let figures = Figures {
        profile: "lmp",
        install,
        booted_at: machine.booted_at,
    };
    let unit = machine.wait_for_agent(Duration::from_secs(90));
    figures.print(&machine, &unit);
    assert_registered(&unit);
    let registrations = api.registrations();
    assert_eq!(registrations.len(), 1);
    assert_eq!(registrations[0].hardware_id, "deb-machine");
    for file in ["pkey.pem", "client.pem", "root.crt", "sota.toml"] {
        assert!(image.path(&format!("var/sota/{file}")).is_file(), "{file}");
    }
    let sota = std::fs::metadata(image.path("var/sota")).unwrap();
    assert_eq!(
        sota.permissions().mode() & 0o777,
        0o700,
        "made by the package's tmpfiles entry"
    );
    purge_keeps_identity(
        &machine,
        &image,
        &deb,
        "var/sota",
        &["pkey.pem", "client.pem", "sota.toml"],
    );
}

#[test]
#[ignore = "boots containers as root: cargo test --test deb_package -- --ignored"]
fn losant_installed_unconfigured_waits_then_registers_once_enabled() {
    let Some(deb) = boot_setup() else {
        return;
    };
    let net = Net::new(true);
    let losant = in_device_ns(&net, || Losant::start(LosantOptions::default()));
    let image = Image::bare("deb-losant");
    let install = install(&image, &deb);
    assert!(
        !enabled(&image),
        "nothing configured, yet the unit was enabled"
    );

    // Booted unconfigured: nothing runs, nothing is asked.
    let machine = Machine::boot(&image, &net, "boot1");
    wait_for(Duration::from_secs(60), "the boot to finish", || {
        matches!(machine.system_state().as_str(), "running" | "degraded").then_some(())
    });
    let unit = machine.show(UNIT);
    assert_eq!(unit["ActiveState"], "inactive", "{unit:?}");
    assert_eq!(
        unit["ExecMainStartTimestampMonotonic"], "0",
        "the agent ran"
    );
    assert!(losant.requests().is_empty());

    // The user configures the device and turns the unit on.
    image.write(
        "etc/lmp-device-register.toml",
        "profile = \"losant\"\n\n[losant]\nmanufacturer_id = \"deb-sn-000123\"\n",
        0o644,
    );
    image.write(
        "etc/losant/registration-token",
        &format!("{}\n", losant.token()),
        0o600,
    );
    let enabled_at = Instant::now();
    let output = machine.exec(&["systemctl", "enable", "--now", UNIT]);
    assert!(
        output.status.success(),
        "systemctl enable --now: {output:?}"
    );
    let figures = Figures {
        profile: "losant",
        install,
        booted_at: enabled_at,
    };
    let unit = machine.wait_for_agent(Duration::from_secs(90));
    figures.print(&machine, &unit);
    assert_registered(&unit);
    assert!(enabled(&image));
    let devices = losant.devices();
    assert_eq!(devices.len(), 1);
    let credentials = image.path("var/lib/losant/credentials.json");
    let text = std::fs::read_to_string(&credentials).unwrap();
    let stored: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(stored["deviceId"], devices[0].device_id.as_str());
    assert_eq!(
        std::fs::metadata(&credentials)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    purge_keeps_identity(
        &machine,
        &image,
        &deb,
        "var/lib/losant",
        &["credentials.json"],
    );
}

#[test]
#[ignore = "boots containers as root: cargo test --test deb_package -- --ignored"]
fn azure_dps_configured_before_install_registers_on_first_boot() {
    let Some(deb) = boot_setup() else {
        return;
    };
    let net = Net::new(true);
    let dps = in_device_ns(&net, || {
        AzureDps::start(DpsOptions {
            enable_at_factory: true,
            ..DpsOptions::default()
        })
    });
    let image = Image::bare("deb-azure-dps");
    image.write("etc/azure-dps/dps-ca.pem", &dps.server_ca_pem(), 0o644);
    image.write(
        "etc/azure-dps/factory-ca.pem",
        &dps.device_root_pem(),
        0o644,
    );
    image.write("etc/lmp-device-register.toml",
        &format!(
            "profile = \"azure-dps\"\n\n[azure-dps]\nid_scope = \"{}\"\nendpoint = \"{}\"\nenrol_url = \"{}\"\ncacert = \"/etc/azure-dps/dps-ca.pem\"\nfactory_ca = \"/etc/azure-dps/factory-ca.pem\"\n",
            dps.id_scope(),
            dps.endpoint(),
            dps.enrol_url()
        ),
        0o644,
    );
    let install = install(&image, &deb);
    assert!(enabled(&image));

    let machine = Machine::boot(&image, &net, "boot1");
    let figures = Figures {
        profile: "azure-dps",
        install,
        booted_at: machine.booted_at,
    };
    let unit = machine.wait_for_agent(Duration::from_secs(90));
    figures.print(&machine, &unit);
    assert_registered(&unit);
    let assignments = dps.assignments();
    assert_eq!(assignments.len(), 1);
    let text = std::fs::read_to_string(image.path("var/lib/azure-dps/assignment.json")).unwrap();
    let stored: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(stored["assignedHub"], assignments[0].assigned_hub.as_str());
    assert_eq!(stored["deviceId"], assignments[0].registration_id.as_str());
    purge_keeps_identity(
        &machine,
        &image,
        &deb,
        "var/lib/azure-dps",
        &["device.key", "device.crt", "assignment.json"],
    );
}

#[test]
#[ignore = "boots containers as root: cargo test --test deb_package -- --ignored"]
fn tii_configured_before_install_registers_over_nats_on_first_boot() {
    let Some(deb) = boot_setup() else {
        return;
    };
    if !device_api::tii::nats_server_available() {
        return;
    }
    let net = Net::new(true);
    let fleet = in_device_ns(&net, || TiiFleet::start(TiiOptions::default()));
    let image = Image::bare("deb-tii");
    image.write(
        "etc/lmp-device-register.toml",
        &format!(
            "profile = \"tii\"\n\n[tii]\nprovisioning_url = \"{}\"\ndevice_type = \"gateway\"\n",
            fleet.provisioning_url()
        ),
        0o644,
    );
    let install = install(&image, &deb);
    assert!(enabled(&image));

    let machine = Machine::boot(&image, &net, "boot1");
    let figures = Figures {
        profile: "tii",
        install,
        booted_at: machine.booted_at,
    };
    let unit = machine.wait_for_agent(Duration::from_secs(120));
    figures.print(&machine, &unit);
    assert_registered(&unit);
    let registrations = fleet.registrations();
    assert_eq!(registrations.len(), 1, "{}", fleet.nats_log());
    assert!(
        registrations[0].problems.is_empty(),
        "{:?}",
        registrations[0].problems
    );
    assert!(image
        .path("var/lib/fleet-registration/registration.json")
        .is_file());
    purge_keeps_identity(
        &machine,
        &image,
        &deb,
        "var/lib/fleet-registration",
        &["device.key", "device.crt", "ca.crt", "registration.json"],
    );
}
