//! Prints the agent's budget figures: binary sizes, shared libraries,
//! start-up time, wall/CPU/peak RSS, instructions and fsyncs of whole
//! registrations against the loopback API (http, https with `--cacert`,
//! https with the system roots, SoftHSM2), and, when
//! `LMP_DEVICE_REGISTER_CXX` names a build of the C++ `lmp-device-register`,
//! the same figures for it side by side. Numbers, not pass/fail: the machines
//! are shared and noisy (instructions are the stable figure).
//!
//! `cargo bench --bench register` (20 rounds), `-- --quick` (5 rounds, as CI
//! runs it).
//!
//! It measures the binary `cargo build --release` ships: `cargo bench`
//! builds `target/release/lmp-device-register` with the dev-dependencies'
//! features, so this benchmark builds the shipped one itself (and, for its
//! size only, the LmP-only one with `--no-default-features`).

mod common;

use common::{device_root, under};
use device_api::{DeviceApi, Options};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: f64 = 1024.0 * 1024.0;
const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The LmP-only build's budget.
const LMP_ONLY_BUDGET: u64 = 4 * 1024 * 1024;

struct Usage {
    wall: Duration,
    cpu: Duration,
    max_rss_kib: i64,
    code: i32,
}

/// Runs `cmd` and reads its own resource usage with wait4 (not the sum over
/// all children of this process).
// The child is reaped by wait4, which std's wait() cannot replace: it also
// returns the child's own rusage.
#[allow(clippy::zombie_processes)]
fn measure(cmd: &mut Command) -> Usage {
    let started = Instant::now();
    let child = cmd.spawn().expect("spawn");
    let mut status = 0;
    // SAFETY: plain syscall on our own child, with valid out-pointers.
    let mut usage: nix::libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { nix::libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4 failed");
    let wall = started.elapsed();
    let tv = |t: nix::libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Usage {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss,
        code: if nix::libc::WIFEXITED(status) {
            nix::libc::WEXITSTATUS(status)
        } else {
            -1
        },
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Builds the agent as `cargo build --release` does (plus `extra`) and
/// returns a copy of the binary that a later build cannot overwrite.
fn build_release(extra: &[&str], copy_as: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--release", "--locked", "--quiet"])
        .args(["--bin", "lmp-device-register", "--message-format=json"])
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    assert!(
        output.status.success(),
        "cargo build --release {extra:?} failed"
    );
    let executable = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .expect("cargo names the executable");
    let copy = executable.with_file_name(copy_as);
    std::fs::copy(&executable, &copy).expect("copy the binary");
    copy
}

fn size_line(what: &str, binary: &Path, budget: Option<u64>) {
    let size = std::fs::metadata(binary).unwrap().len();
    let verdict = match budget {
        Some(budget) if size > budget => {
            format!(" OVER the budget of {:.0} MiB", budget as f64 / MIB)
        }
        Some(budget) => format!(" (budget {:.0} MiB)", budget as f64 / MIB),
        None => String::new(),
    };
    println!(
        "{what}: {:.2} MiB ({size} bytes){verdict}",
        size as f64 / MIB
    );
}

/// How a registration is run: which binary, and what it needs around it.
type Prepare<'a> = &'a dyn Fn(&Path, &mut Command);

/// A command that registers a fresh device rooted at `dir` with our agent.
fn ours<'a>(
    agent: &'a Path,
    api: &'a DeviceApi,
    prepare: Prepare<'a>,
) -> impl Fn(&Path) -> Command + 'a {
    move |dir: &Path| {
        device_root(dir);
        let mut cmd = Command::new(agent);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .arg("--root")
            .arg(dir)
            .args(["--device-api", &api.url(), "-f", "demo-factory"])
            .args(["-t", "main", "-i", "bench", "--start-daemon", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        prepare(dir, &mut cmd);
        cmd
    }
}

/// The same registration with the C++ tool (token on its command line: it
/// has no other way; this is a benchmark with a throw-away token).
fn theirs<'a>(tool: &'a Path, api: &'a DeviceApi) -> impl Fn(&Path) -> Command + 'a {
    move |dir: &Path| {
        let sota = dir.join("var/sota");
        std::fs::create_dir_all(&sota).unwrap();
        let mut cmd = Command::new(tool);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("DEVICE_API", api.url())
            .args(["-T", "demo-token", "-f", "demo-factory", "-t", "main"])
            .args(["-i", "bench", "--start-daemon", "0", "-d"])
            .arg(&sota)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }
}

#[derive(Default)]
struct Figures {
    wall: Duration,
    cpu: Duration,
    peak_rss_kib: i64,
    instructions: Option<u64>,
    fsyncs: Option<usize>,
}

/// `rounds` registrations, each in a fresh device root, then one under
/// callgrind (instructions) and one under strace (fsyncs).
fn registrations(rounds: usize, what: &str, command: &dyn Fn(&Path) -> Command) -> Figures {
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    let mut figures = Figures::default();
    for _ in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let usage = measure(&mut command(dir.path()));
        assert_eq!(usage.code, 0, "{what} failed");
        walls.push(usage.wall);
        cpus.push(usage.cpu);
        figures.peak_rss_kib = figures.peak_rss_kib.max(usage.max_rss_kib);
    }
    figures.wall = median(walls);
    figures.cpu = median(cpus);
    figures.instructions = instructions(command);
    figures.fsyncs = fsyncs(command);
    println!(
        "{what} (median of {rounds}): wall {:.2} ms, CPU {:.2} ms, peak RSS {:.2} MiB, {}, {}",
        ms(figures.wall),
        ms(figures.cpu),
        figures.peak_rss_kib as f64 / 1024.0,
        figures
            .instructions
            .map_or("instructions: valgrind not installed".into(), |n| format!(
                "{:.2} M instructions",
                n as f64 / 1e6
            )),
        figures
            .fsyncs
            .map_or("fsyncs: strace not installed".into(), |n| format!(
                "{n} fsyncs"
            )),
    );
    figures
}

fn tool_installed(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Instructions of one registration (the process itself, dynamic loading
/// and every library included), counted by callgrind: the one figure a
/// shared, noisy machine reproduces.
fn instructions(command: &dyn Fn(&Path) -> Command) -> Option<u64> {
    if !tool_installed("valgrind") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("valgrind.log");
    let log_file = format!("--log-file={}", log.display());
    let mut cmd = under(
        "valgrind",
        &[
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            &log_file,
        ],
        &command(dir.path()),
    );
    let status = cmd.status().ok()?;
    assert!(status.success(), "registration under callgrind failed");
    let text = std::fs::read_to_string(&log).ok()?;
    text.lines()
        .find_map(|l| l.split("Collected : ").nth(1))
        .and_then(|n| n.trim().parse().ok())
}

/// fsync-like calls of one registration, counted by strace.
fn fsyncs(command: &dyn Fn(&Path) -> Command) -> Option<usize> {
    if !tool_installed("strace") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("strace.txt");
    let mut cmd = under(
        "strace",
        &[
            "-f",
            "-qq",
            "-o",
            trace.to_str().unwrap(),
            "--trace=fsync,fdatasync,syncfs,sync,sync_file_range,msync",
        ],
        &command(dir.path()),
    );
    let status = cmd.status().ok()?;
    assert!(status.success(), "registration under strace failed");
    let text = std::fs::read_to_string(&trace).ok()?;
    Some(text.lines().filter(|l| l.contains("sync")).count())
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 5 } else { 20 };

    let lmp_only = build_release(&["--no-default-features"], "lmp-device-register.lmp-only");
    let agent = build_release(&[], "lmp-device-register.shipped");
    println!(
        "binary: {} (as `cargo build --release` builds it)",
        agent.display()
    );
    size_line("size, default features, stripped", &agent, None);
    size_line(
        "size, LmP only (--no-default-features), stripped",
        &lmp_only,
        Some(LMP_ONLY_BUDGET),
    );
    match Command::new("ldd").arg(&agent).output() {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let libs: Vec<&str> = text
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|l| !l.starts_with("linux-vdso"))
                .collect();
            println!("shared libraries: {}", libs.join(" "));
        }
        Err(e) => println!("shared libraries: ldd unavailable ({e})"),
    }

    let startup: Vec<Duration> = (0..rounds)
        .map(|_| measure(Command::new(&agent).arg("--version").stdout(Stdio::null())).wall)
        .collect();
    println!(
        "--version wall (median of {rounds}): {:.2} ms",
        ms(median(startup))
    );

    let api = DeviceApi::start(Options {
        accept_string_booleans: true,
        ..Options::default()
    });
    let nothing: Prepare = &|_, _| {};
    let http = registrations(
        rounds,
        "software-key registration, http",
        &ours(&agent, &api, nothing),
    );

    let tls_api = DeviceApi::start(Options {
        tls: true,
        ..Options::default()
    });
    let certs = tempfile::tempdir().unwrap();
    let server_ca = certs.path().join("server-ca.pem");
    std::fs::write(&server_ca, tls_api.server_ca_pem()).unwrap();
    let with_cacert: Prepare = &|_, cmd| {
        cmd.arg("--cacert").arg(&server_ca);
    };
    let cacert = registrations(
        rounds,
        "software-key registration, https with --cacert",
        &ours(&agent, &tls_api, with_cacert),
    );
    // The system's roots plus the test CA, read the way the system roots
    // are (rustls-native-certs honours SSL_CERT_FILE).
    let bundle = certs.path().join("system-roots-and-test-ca.pem");
    let system = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    std::fs::write(&bundle, format!("{system}{}", tls_api.server_ca_pem())).unwrap();
    let system_roots: Prepare = &|_, cmd| {
        cmd.env("SSL_CERT_FILE", &bundle);
    };
    let roots = registrations(
        rounds,
        &format!(
            "software-key registration, https with the system roots ({} certificates)",
            system.matches("BEGIN CERTIFICATE").count() + 1
        ),
        &ours(&agent, &tls_api, system_roots),
    );
    if let (Some(http), Some(cacert), Some(roots)) =
        (http.instructions, cacert.instructions, roots.instructions)
    {
        println!(
            "instructions, https with --cacert / http: {:.2}x (target 1.5x); system roots / http: {:.2}x",
            cacert as f64 / http as f64,
            roots as f64 / http as f64
        );
    }

    if Path::new(SOFTHSM).exists() {
        // A first-boot registration: the agent initialises the token.
        let softhsm: Prepare = &|root, cmd| {
            let tokens = root.join("tokens");
            std::fs::create_dir(&tokens).unwrap();
            let conf = root.join("softhsm2.conf");
            let conf_text = format!(
                "directories.tokendir = {}\nlog.level = ERROR\n",
                tokens.display()
            );
            std::fs::write(&conf, conf_text).unwrap();
            let hsm = root.join("etc/sota/hsm");
            std::fs::create_dir_all(hsm.parent().unwrap()).unwrap();
            let hsm_text = format!("HSM_MODULE={SOFTHSM}\nHSM_PIN=87654321\nHSM_SOPIN=12345678\n");
            std::fs::write(&hsm, hsm_text).unwrap();
            std::fs::set_permissions(&hsm, std::fs::Permissions::from_mode(0o600)).unwrap();
            cmd.env("SOFTHSM2_CONF", conf);
        };
        registrations(
            rounds,
            "SoftHSM2 registration incl. token init (SoftHSM2's own work included)",
            &ours(&agent, &api, softhsm),
        );
    } else {
        println!("SoftHSM2 registration: skipped, {SOFTHSM} is not installed");
    }

    side_by_side(&agent, &api, rounds);
}

/// Ours against the C++ tool, alternating, each registering a fresh device
/// over plain http.
fn side_by_side(agent: &Path, api: &DeviceApi, rounds: usize) {
    let Some(tool) = std::env::var_os("LMP_DEVICE_REGISTER_CXX") else {
        println!("C++ lmp-device-register: set LMP_DEVICE_REGISTER_CXX=/path/to/it for the side-by-side figures (README \"Numbers\")");
        return;
    };
    let tool = PathBuf::from(tool);
    let nothing: Prepare = &|_, _| {};
    let ours = ours(agent, api, nothing);
    let theirs = theirs(&tool, api);
    let (mut our_cpu, mut their_cpu) = (Vec::new(), Vec::new());
    let (mut our_rss, mut their_rss) = (0, 0);
    for _ in 0..rounds {
        for (command, cpu, rss) in [
            (
                &ours as &dyn Fn(&Path) -> Command,
                &mut our_cpu,
                &mut our_rss,
            ),
            (&theirs, &mut their_cpu, &mut their_rss),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let usage = measure(&mut command(dir.path()));
            assert_eq!(usage.code, 0, "a registration of the side-by-side failed");
            cpu.push(usage.cpu);
            *rss = (*rss).max(usage.max_rss_kib);
        }
    }
    let (ours_cpu, theirs_cpu) = (median(our_cpu), median(their_cpu));
    println!(
        "side by side with {} ({rounds} rounds each, alternating, http):",
        tool.display()
    );
    println!(
        "  CPU: ours {:.2} ms, C++ {:.2} ms: {:.2}x (target 0.5x)",
        ms(ours_cpu),
        ms(theirs_cpu),
        ours_cpu.as_secs_f64() / theirs_cpu.as_secs_f64()
    );
    println!(
        "  peak RSS: ours {:.2} MiB, C++ {:.2} MiB: {:.2}x",
        our_rss as f64 / 1024.0,
        their_rss as f64 / 1024.0,
        our_rss as f64 / their_rss as f64
    );
    if let (Some(a), Some(b)) = (instructions(&ours), instructions(&theirs)) {
        println!(
            "  instructions: ours {:.2} M, C++ {:.2} M: {:.2}x",
            a as f64 / 1e6,
            b as f64 / 1e6,
            a as f64 / b as f64
        );
    }
    if let (Some(a), Some(b)) = (fsyncs(&ours), fsyncs(&theirs)) {
        println!("  fsyncs: ours {a}, C++ {b}");
    }
}
