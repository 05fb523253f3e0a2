//! Prints the agent's budget figures: binary size, shared libraries, start-up
//! time, and wall/CPU/peak RSS of whole registrations against the loopback
//! API. Numbers, not pass/fail: the machines are shared and noisy.
//!
//! `cargo bench --bench register` (add `-- --quick` for one round).

use device_api::{DeviceApi, Options};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_lmp-device-register");

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
    let child = cmd.spawn().expect("spawn agent");
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

fn device_root(dir: &Path) {
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    let token = dir.join("etc/lmp-device-register-token");
    std::fs::write(&token, "demo-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 1 } else { 10 };

    let size = std::fs::metadata(AGENT).unwrap().len();
    println!("binary: {AGENT}");
    println!("size: {:.2} MiB ({size} bytes)", size as f64 / 1048576.0);
    match Command::new("ldd").arg(AGENT).output() {
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

    let startup: Vec<Duration> = (0..rounds.max(5))
        .map(|_| {
            measure(
                Command::new(AGENT)
                    .arg("--version")
                    .stdout(std::process::Stdio::null()),
            )
            .wall
        })
        .collect();
    println!(
        "--version wall (median of {}): {:.2} ms",
        startup.len(),
        median(startup).as_secs_f64() * 1e3
    );

    let api = DeviceApi::start(Options::default());
    registrations(&api, rounds, "software-key registration", |_, _| {});

    const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
    if !Path::new(SOFTHSM).exists() {
        println!("SoftHSM2 registration: skipped, {SOFTHSM} is not installed");
        return;
    }
    // A first-boot registration: the agent initialises the token.
    registrations(
        &api,
        rounds,
        "SoftHSM2 registration incl. token init",
        |root, cmd| {
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
        },
    );
}

/// Runs `rounds` registrations, each in a fresh device root that `prepare`
/// may extend, and prints the median wall and CPU time and the peak RSS.
fn registrations(
    api: &DeviceApi,
    rounds: usize,
    what: &str,
    prepare: impl Fn(&Path, &mut Command),
) {
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    let mut peak_rss = 0;
    for _ in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        device_root(dir.path());
        let mut cmd = Command::new(AGENT);
        cmd.env_clear()
            .arg("--root")
            .arg(dir.path())
            .args(["--device-api", &api.url(), "-f", "demo-factory"])
            .args(["-t", "main", "-i", "bench", "--start-daemon", "0"])
            .stderr(std::process::Stdio::null());
        prepare(dir.path(), &mut cmd);
        let usage = measure(&mut cmd);
        assert_eq!(usage.code, 0, "{what} failed");
        walls.push(usage.wall);
        cpus.push(usage.cpu);
        peak_rss = peak_rss.max(usage.max_rss_kib);
    }
    println!(
        "{what} (median of {rounds}): wall {:.2} ms, CPU {:.2} ms, peak RSS {:.2} MiB",
        median(walls).as_secs_f64() * 1e3,
        median(cpus).as_secs_f64() * 1e3,
        peak_rss as f64 / 1024.0
    );
}
