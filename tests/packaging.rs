//! Checks of what ships around the binary: the generated man page and shell
//! completions, the example device files and the first-boot systemd unit.
//! (The Yocto recipe: tests/yocto.rs.)
//!
//! Refresh the generated files with `UPDATE_GENERATED=1 cargo test --test
//! packaging`.
//!
//! Runs `systemd-analyze` (Debian package `systemd`) when it is installed and
//! says so when it is not.

use clap::CommandFactory;
use lmp_device_register::cli::{Cli, CommandLine};
use lmp_device_register::config::parse_hsm_file;
use lmp_device_register::config::parse_single_line;
use lmp_device_register::error::ErrorKind;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = "lmp-device-register";
const UNIT: &str = "systemd/lmp-device-register.service";
const TMPFILES: &str = "systemd/lmp-device-register.tmpfiles";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// Generated documentation: man page and completions
// ---------------------------------------------------------------------------

/// What the man page says beyond the options, in roff. Exit codes come from
/// `ErrorKind` so that the page cannot disagree with the program.
fn man_extra_sections() -> String {
    fn describe(kind: ErrorKind) -> &'static str {
        // Exhaustive on purpose: a new kind must be documented here.
        match kind {
            ErrorKind::Internal => "an unexpected local failure (I/O error or a bug)",
            ErrorKind::Config => "bad flags, environment or configuration files",
            ErrorKind::AlreadyRegistered => {
                "the device is already registered and \\-\\-force was not given (\\-\\-boot reports success instead)"
            }
            ErrorKind::Rejected => "the registration API refused the request (HTTP 4xx)",
            ErrorKind::Unavailable => {
                "the API could not be reached, or kept failing until the retry deadline"
            }
            ErrorKind::BadResponse => "the API accepted the device but its answer cannot be used",
            ErrorKind::Hsm => "the PKCS#11 module or token failed",
            ErrorKind::Busy => "another registration or aktualizr\\-lite holds the device",
            ErrorKind::Interrupted => "SIGINT or SIGTERM stopped the run cleanly",
        }
    }
    let mut roff = String::from(".SH \"EXIT STATUS\"\n.TP\n0\nthe device is registered\n");
    for kind in ErrorKind::ALL {
        roff.push_str(&format!(
            ".TP\n{}\n{} ({})\n",
            kind.exit_code(),
            describe(kind),
            kind.as_str().replace('-', "\\-")
        ));
    }
    // The environment variables come from the settings' declarations.
    roff.push_str(
        ".SH ENVIRONMENT\nFlags take precedence over the environment, the environment over files, files over the defaults built in.\n",
    );
    for (variable, meaning) in lmp_device_register::profiles::environment_variables() {
        roff.push_str(&format!(
            ".TP\n{variable}\n{}\n",
            meaning.replace('-', "\\-")
        ));
    }
    roff.push_str(
        r#".SH FILES
.TP
/etc/lmp\-device\-register\-token
API token, one line (mode 0600)
.TP
/etc/sota/tag
tag to follow, one line
.TP
/etc/sota/hsm
HSM_MODULE, HSM_PIN and HSM_SOPIN of a PKCS#11 token (mode 0600)
.TP
/etc/os\-release
LMP_FACTORY and LMP_FACTORY_TAG
.TP
/var/sota
keys, certificates and sota.toml written by a registration (the directory is made at boot by /usr/lib/tmpfiles.d/lmp\-device\-register.conf)
.TP
/var/sota/compose\-apps
the compose apps preloaded in the image
.TP
/usr/lib/systemd/system/lmp\-device\-register.service
first\-boot registration (journalctl \-u lmp\-device\-register; the outcome of every run: journalctl MESSAGE_ID=a6b0462edfb34591aeeb05d885a78cfb, with the fields REGISTRATION_RESULT, DEVICE_UUID, FACTORY, PROFILE, ERROR_KIND and EXIT_CODE)
.SH "SEE ALSO"
\fBsystemctl\fR(1), \fBjournalctl\fR(1)
"#,
    );
    roff
}

fn man_page() -> Vec<u8> {
    let man = clap_mangen::Man::new(Cli::command()).section("8");
    let mut page = Vec::new();
    man.render(&mut page).expect("rendering to memory");
    let page = String::from_utf8(page).expect("the man page is UTF-8");
    // The extra sections go before VERSION, where man pages keep them.
    let at = page
        .find(".SH VERSION")
        .expect("clap_mangen renders a VERSION section");
    format!("{}{}{}", &page[..at], man_extra_sections(), &page[at..]).into_bytes()
}

fn completion(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), BIN, &mut out);
    out
}

fn generated_files() -> Vec<(&'static str, Vec<u8>)> {
    use clap_complete::Shell;
    vec![
        ("docs/lmp-device-register.8", man_page()),
        (
            "docs/completions/lmp-device-register.bash",
            completion(Shell::Bash),
        ),
        (
            "docs/completions/_lmp-device-register",
            completion(Shell::Zsh),
        ),
        (
            "docs/completions/lmp-device-register.fish",
            completion(Shell::Fish),
        ),
    ]
}

#[test]
fn generated_docs_match_the_command_line() {
    let update = std::env::var_os("UPDATE_GENERATED").is_some_and(|v| !v.is_empty());
    let mut stale = Vec::new();
    for (relative, content) in generated_files() {
        let path = repo().join(relative);
        let current = std::fs::read(&path).unwrap_or_default();
        if current == content {
            continue;
        }
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &content).unwrap();
            println!("rewrote {relative}");
        } else {
            stale.push(relative);
        }
    }
    assert!(
        stale.is_empty(),
        "generated files are stale: {stale:?}\nrefresh them with: UPDATE_GENERATED=1 cargo test --test packaging"
    );
}

#[test]
fn man_page_documents_every_long_option_and_the_files() {
    let page = String::from_utf8(man_page()).unwrap();
    for arg in Cli::command().get_arguments() {
        if let Some(long) = arg.get_long() {
            let escaped = format!("\\-\\-{}", long.replace('-', "\\-"));
            assert!(
                page.contains(&escaped),
                "--{long} missing from the man page"
            );
        }
    }
    for needle in [
        ".SH \"EXIT STATUS\"",
        ".SH FILES",
        "/etc/sota/hsm",
        ".TH lmp-device-register 8",
    ] {
        assert!(
            page.contains(needle),
            "{needle:?} missing from the man page"
        );
    }
}

// ---------------------------------------------------------------------------
// Example device files
// ---------------------------------------------------------------------------

fn check_single_line(relative: &str, what: &str) -> String {
    parse_single_line(&read(relative), what).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn check_hsm(relative: &str, module: &str) {
    let hsm = parse_hsm_file(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"));
    assert_eq!(hsm.module.as_deref(), Some(Path::new(module)), "{relative}");
    for (name, pin) in [("HSM_PIN", &hsm.pin), ("HSM_SOPIN", &hsm.so_pin)] {
        let pin = pin
            .as_ref()
            .unwrap_or_else(|| panic!("{relative}: no {name}"));
        // PKCS#11 PINs of OP-TEE and SoftHSM2 are 4 to 128 bytes.
        assert!(
            (4..=128).contains(&pin.expose().len()),
            "{relative}: {name} length"
        );
    }
}

#[test]
fn etc_sota_examples_parse_with_the_agents_parsers() {
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(repo().join("etc-sota-examples")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let relative = format!("etc-sota-examples/{name}");
        match name.as_str() {
            "README.md" => {}
            "tag" => {
                check_single_line(&relative, "the tag file");
            }
            "lmp-device-register-token" => {
                check_single_line(&relative, "the token file");
            }
            "hsm.se050" => check_hsm(&relative, "/usr/lib/libckteec.so.0"),
            "hsm.softhsm" => check_hsm(&relative, "/usr/lib/softhsm/libsofthsm2.so"),
            other => panic!("etc-sota-examples/{other} has no check here"),
        }
        seen.insert(name);
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
}

// ---------------------------------------------------------------------------
// The first-boot unit
// ---------------------------------------------------------------------------

/// `[Section]` → key → values, in order (systemd allows repeated keys).
fn parse_unit(text: &str) -> Vec<(String, String, String)> {
    let mut entries = Vec::new();
    let mut section = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let mut line = line.trim().to_string();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        while line.ends_with('\\') {
            line.pop();
            line.push(' ');
            line.push_str(lines.next().expect("continuation").trim());
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        assert!(!section.is_empty(), "{key} outside a section");
        entries.push((
            section.clone(),
            key.trim().to_string(),
            value.trim().to_string(),
        ));
    }
    entries
}

fn unit_values(entries: &[(String, String, String)], section: &str, key: &str) -> Vec<String> {
    entries
        .iter()
        .filter(|(s, k, _)| s == section && k == key)
        .flat_map(|(_, _, v)| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

fn unit_value(entries: &[(String, String, String)], section: &str, key: &str) -> Option<String> {
    entries
        .iter()
        .rev()
        .find(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.clone())
}

fn is_yes(value: Option<String>) -> bool {
    matches!(value.as_deref(), Some("yes" | "true" | "1" | "on"))
}

#[test]
fn unit_runs_boot_mode_once_without_secrets_on_its_command_line() {
    let entries = parse_unit(&read(UNIT));
    let get = |section: &str, key: &str| unit_value(&entries, section, key);
    let list = |section: &str, key: &str| unit_values(&entries, section, key);

    // The boot goes on while the agent retries (a oneshot would hold
    // multi-user.target for up to 45 minutes); a success stays "active".
    assert_eq!(get("Service", "Type").as_deref(), Some("exec"));
    assert!(is_yes(get("Service", "RemainAfterExit")));
    assert_eq!(
        get("Unit", "ConditionPathExists").as_deref(),
        Some("!/var/sota/sql.db")
    );
    // Waiting for network-online.target would hold the boot for as long as
    // the wait-online service allows; the agent retries on its own.
    for key in ["After", "Wants", "Requires"] {
        assert!(
            !list("Unit", key).contains(&"network-online.target".to_string()),
            "{key}=network-online.target holds the boot while the network is down"
        );
    }
    assert!(list("Unit", "After").contains(&"network.target".to_string()));
    for key in ["Requires", "Wants", "Requisite", "BindsTo"] {
        assert!(
            !list("Unit", key).contains(&"systemd-time-wait-sync.service".to_string()),
            "{key}=systemd-time-wait-sync.service can hang forever without NTP"
        );
    }
    // Ordering against the units that need the registration would only wait
    // for the agent to start, not for it to finish.
    for unit in ["aktualizr-lite.service", "fioconfig.service"] {
        assert!(!list("Unit", "Before").contains(&unit.to_string()));
    }
    for key in ["RuntimeMaxSec", "TimeoutStopSec"] {
        let limit = get("Service", key).unwrap_or_else(|| panic!("a finite {key}"));
        assert!(!matches!(limit.as_str(), "infinity" | "0"), "{key}={limit}");
    }
    assert_eq!(list("Install", "WantedBy"), ["multi-user.target"]);

    // Restarted after failures that may pass; never when the same request
    // would get the same answer.
    assert_eq!(get("Service", "Restart").as_deref(), Some("on-failure"));
    let mut final_codes: Vec<u8> = [
        ErrorKind::Config,
        ErrorKind::AlreadyRegistered,
        ErrorKind::Rejected,
        ErrorKind::BadResponse,
    ]
    .map(ErrorKind::exit_code)
    .to_vec();
    final_codes.sort();
    let mut prevented: Vec<u8> = list("Service", "RestartPreventExitStatus")
        .iter()
        .map(|c| c.parse().expect("numeric exit codes"))
        .collect();
    prevented.sort();
    assert_eq!(prevented, final_codes);
    let pause = get("Service", "RestartSec").expect("RestartSec");
    assert!(
        pause.ends_with("min") && pause.trim_end_matches("min").parse::<u32>().unwrap() >= 5,
        "RestartSec={pause}: a fleet must not retry a down server every few seconds"
    );

    // Hardening that would lock out /dev/tee0 (SE050 through OP-TEE).
    assert!(!is_yes(get("Service", "PrivateDevices")));
    assert!(!is_yes(get("Service", "ProtectClock")));
    assert!(get("Service", "DevicePolicy").is_none());
    let writable = list("Service", "ReadWritePaths");
    for path in ["/var/sota", "/run", "/etc"] {
        assert!(
            writable.contains(&path.to_string()) || writable.contains(&format!("-{path}")),
            "ReadWritePaths lacks {path}"
        );
    }
    assert_eq!(get("Service", "ProtectSystem").as_deref(), Some("strict"));
    // The other profiles' default state dirs (under /var/lib, read-only
    // with ProtectSystem=strict): made private and writable by systemd.
    let state_dirs = list("Service", "StateDirectory");
    for dir in ["losant", "fleet-registration", "azure-dps"] {
        assert!(
            state_dirs.contains(&dir.to_string()),
            "StateDirectory lacks {dir}"
        );
    }
    assert_eq!(
        get("Service", "StateDirectoryMode").as_deref(),
        Some("0700")
    );

    // ExecStart: the agent in boot mode, nothing secret, and flags the agent
    // itself accepts.
    let exec = get("Service", "ExecStart").expect("ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(argv[0], format!("/usr/bin/{BIN}"));
    for arg in &argv[1..] {
        let flag = arg.split('=').next().unwrap();
        assert!(
            !matches!(
                flag,
                "-T" | "-P" | "-S" | "--api-token" | "--hsm-pin" | "--hsm-so-pin"
            ) && !arg.starts_with("-T")
                && !arg.starts_with("-P")
                && !arg.starts_with("-S"),
            "secret on ExecStart: {arg}"
        );
    }
    let command_line = CommandLine::try_parse_from(argv.iter().copied()).expect("ExecStart parses");
    assert!(command_line.cli.boot, "ExecStart must use --boot");
    for secret in ["api-token", "hsm-pin", "hsm-so-pin"] {
        assert!(
            command_line.value(secret).is_none(),
            "--{secret} on ExecStart"
        );
    }
}

/// With ProtectSystem=strict the agent cannot make /var/sota itself (and
/// systemd cannot bind a missing one): tmpfiles.d makes it at boot.
#[test]
fn tmpfiles_makes_the_sota_dir_private() {
    let text = read(TMPFILES);
    let entries: Vec<Vec<&str>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(entries, [["d", "/var/sota", "0700", "root", "root", "-"]]);
    if Command::new("systemd-tmpfiles")
        .arg("--version")
        .output()
        .is_err()
    {
        println!(
            "NOTICE: systemd-tmpfiles not installed (Debian package: systemd); not applying it"
        );
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("var")).unwrap();
    let output = Command::new("systemd-tmpfiles")
        .arg("--create")
        .arg(format!("--root={}", root.path().display()))
        .arg(repo().join(TMPFILES))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "systemd-tmpfiles: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let sota = std::fs::metadata(root.path().join("var/sota")).unwrap();
    assert!(sota.is_dir());
    assert_eq!(sota.permissions().mode() & 0o7777, 0o700);
}

/// A root for `systemd-analyze --root`: the host's unit files (for
/// multi-user.target and friends), this unit, and a stand-in binary so that
/// the ExecStart check passes.
fn analyze_root() -> Option<tempfile::TempDir> {
    let host_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("multi-user.target").exists())?;
    let root = tempfile::tempdir().unwrap();
    let units = root.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", host_units.display()))
        .arg(&units)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::copy(repo().join(UNIT), units.join("lmp-device-register.service")).unwrap();
    let bin = root.path().join("usr/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join(BIN), "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join(BIN), std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(root)
}

fn systemd_analyze_available() -> bool {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        println!("NOTICE: systemd-analyze not installed (Debian package: systemd); skipping");
    }
    found
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    if !systemd_analyze_available() {
        return;
    }
    let Some(root) = analyze_root() else {
        println!("NOTICE: no systemd unit directory on this host; skipping verify");
        return;
    };
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.path().display()))
        .arg("lmp-device-register.service")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("lmp-device-register"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify warns:\n{}",
        ours.join("\n")
    );
}

#[test]
fn unit_exposure_stays_ok() {
    if !systemd_analyze_available() {
        return;
    }
    let Some(root) = analyze_root() else {
        println!("NOTICE: no systemd unit directory on this host; skipping security");
        return;
    };
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--root={}", root.path().display()))
        .arg("lmp-device-register.service")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // Before systemd 250 "security" needs a running manager.
        println!(
            "NOTICE: systemd-analyze security --offline did not run: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        return;
    }
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .expect("an overall exposure line");
    println!("{}", line.trim());
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a numeric exposure level");
    // 3.7 with systemd 252; anything from 5.0 up is "MEDIUM" or worse.
    assert!(score < 5.0, "exposure rose to {score}:\n{stdout}");
}
