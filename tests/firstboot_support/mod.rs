//! Real first boots for tests/firstboot.rs: a small Debian tree (debootstrap,
//! cached under target/) booted by systemd-nspawn with the agent, its unit
//! and stand-ins for what an LmP image has around it, on a network of
//! namespaces the test makes itself, against the registration API double.
//!
//! * `image`: the cached base tree and one overlay per scenario, with the
//!   files an LmP image would carry.
//! * `net`: two network namespaces joined by a veth pair: the device's (the
//!   container's) and the API's, where the double listens. The API end of
//!   the pair is the "cable": while it is down the device has no carrier.
//! * `machine`: one boot of an image, the container's own systemd and
//!   journal read through nsenter, and an orderly stop.
//!
//! Everything is torn down by `Drop` (containers stopped, overlays
//! unmounted, namespaces and cgroups removed), and a run that was killed
//! before it could clean up is swept by the next one.

#![allow(dead_code)]

pub mod image;
pub mod machine;
pub mod net;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Names of everything a run creates start with this and the test's pid, so
/// that a later run can tell what a dead one left behind.
pub const PREFIX: &str = "lmpdr";

/// What the boots need from the host.
const TOOLS: &[&str] = &[
    "debootstrap",
    "systemd-nspawn",
    "systemctl",
    "journalctl",
    "nsenter",
    "setpriv",
    "ip",
    "mount",
    "umount",
    "timeout",
];

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false)
}

/// Whether this machine can boot containers; `Err` says why not. Tools that
/// `.ci/run` installs are a failure in CI when missing, not a reason to skip.
pub fn can_boot() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("booting a container needs root".into());
    }
    if !Path::new("/sys/fs/cgroup").is_dir() {
        return Err("no /sys/fs/cgroup".into());
    }
    let missing: Vec<&str> = TOOLS.iter().copied().filter(|t| !on_path(t)).collect();
    if !missing.is_empty() {
        let why = format!(
            "missing {} (Debian packages debootstrap, systemd-container, iproute2)",
            missing.join(", ")
        );
        assert!(std::env::var_os("CI").is_none(), "{why}");
        return Err(why);
    }
    Ok(())
}

/// The agent to install: `LMP_BOOT_TEST_AGENT` (CI sets the release build),
/// else the binary cargo built for this test.
pub fn agent_binary() -> PathBuf {
    std::env::var_os("LMP_BOOT_TEST_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lmp-device-register")))
}

/// The repository, for the unit and tmpfiles files under test.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the base tree and the scenario overlays live.
pub fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("firstboot")
}

/// Runs `program` with a time limit (coreutils `timeout`, which kills it).
pub fn run(limit: Duration, program: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("--kill-after=5")
        .arg(limit.as_secs().max(1).to_string())
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Like [`run`], and fails the test unless it succeeds.
#[track_caller]
pub fn run_ok(limit: Duration, program: &str, args: &[&str]) -> String {
    let output = run(limit, program, args);
    assert!(
        output.status.success(),
        "{program} {} failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Polls `probe` until it gives a value; fails the test after `limit`.
#[track_caller]
pub fn wait_for<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// CLOCK_MONOTONIC in microseconds: the clock of the journal's
/// `__MONOTONIC_TIMESTAMP`, the same inside the containers as here.
pub fn monotonic_us() -> u64 {
    let now =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1000
}

/// Whether process `pid` is alive.
pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid in a name `PREFIX-<pid>-…`, when it is one of ours.
fn owner_pid(name: &str) -> Option<i32> {
    name.strip_prefix(PREFIX)?
        .strip_prefix('-')?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Removes what runs that died without cleaning up left behind: their
/// containers, overlays, network namespaces and cgroups.
pub fn sweep_dead_runs() {
    let dead = |name: &str| owner_pid(name).is_some_and(|pid| !alive(pid));
    machine::sweep(&dead);
    image::sweep(&dead);
    net::sweep(&dead);
}
