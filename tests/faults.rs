//! I/O faults during a first-boot registration, above all after the server
//! said yes: an error (ENOSPC, EIO) is injected with strace at the k-th call
//! of one file-system syscall of the agent, then the agent runs again
//! normally (`--boot`). Whatever the fault, the agent must not die by a
//! signal or panic, the device must end up registered with a key and
//! certificate that match, and the server must have seen one identity.
//!
//! `cargo test --test faults` runs a bounded sample (CI).
//! `scripts/fault-sweep` runs every call of every kind, for both errors,
//! software key and SoftHSM2, with and without idempotent retries on the
//! server, and prints the table README "Reliability" quotes.
//!
//! The same for every profile (lmp, Losant, TII, azure-dps with both stages
//! in one boot and its first boot after the factory stage), against the
//! doubles of tests/fleet_support: one-shot faults at the state dir's calls
//! and a disk that stays full from each of them on (every call anywhere in
//! the full sweep). A service that answers once (Losant, TII's fleet
//! manager) may lose an answer to a disk that never recovers; then the
//! agent must name the device and say it is to be deleted. Last, the cases
//! of such a disk and of an unreadable factory certificate one by one.
//!
//! SoftHSM2 runs inside the agent, so its own file I/O gets faults too. Each
//! faulted run is traced with stacks (`strace -k`): a fault whose stack
//! passes through libsofthsm2.so hit SoftHSM2. When such a fault leaves the
//! token unusable or SoftHSM2 dies of it, that is counted and shown as
//! SoftHSM2's failure, not the agent's; every other outcome is held to the
//! same rules as the software key.

mod common;
mod fleet_support;
mod hsm_support;
mod losant_support;

use common::*;
use device_api::{DeviceApi, Options};
use fleet_support::Rig;
use powercut::Node;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const AGENT: &str = env!("CARGO_BIN_EXE_lmp-device-register");

/// Every syscall with which the agent (and SoftHSM2 in it) touches files,
/// the standard streams included. Kinds a run does not use are skipped.
const SYSCALLS: &[&str] = &[
    "openat",
    "read",
    "pread64",
    "write",
    "writev",
    "pwrite64",
    "fsync",
    "fdatasync",
    "rename",
    "renameat2",
    "mkdir",
    "unlink",
    "unlinkat",
    "fchmod",
    "ftruncate",
    "lseek",
    "fcntl",
    "flock",
    "close",
    "statx",
    "newfstatat",
    "access",
    "getdents64",
];

/// The kinds the bounded sample covers at every call for the software key:
/// everything that writes or names the state dir.
const SAMPLED_KINDS: &[&str] = &[
    "openat", "write", "fsync", "rename", "mkdir", "unlink", "fchmod", "close",
];

/// With SoftHSM2: the agent's own writes, with a few of SoftHSM2's.
const HSM_SAMPLED_KINDS: &[&str] = &["write", "fsync", "rename"];

const ERRNOS: [&str; 2] = ["ENOSPC", "EIO"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Software,
    SoftHsm,
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::Software => "software key",
            Key::SoftHsm => "SoftHSM2",
        }
    }
}

#[derive(Clone, Debug)]
struct Case {
    syscall: &'static str,
    k: usize,
    errno: &'static str,
    idempotent: bool,
}

/// A device root of its own, with SoftHSM2's token store when `key` asks.
struct Device {
    dir: tempfile::TempDir,
    key: Key,
}

impl Device {
    fn new(key: Key) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let device = Device { dir, key };
        write_file(
            &device.root().join("etc/lmp-device-register-token"),
            &format!("{TOKEN}\n"),
            0o600,
        );
        if key == Key::SoftHsm {
            let tokens = device.tokens();
            std::fs::create_dir_all(&tokens).unwrap();
            std::fs::write(
                device.softhsm_conf(),
                format!(
                    "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                    tokens.display()
                ),
            )
            .unwrap();
            write_file(
                &device.root().join("etc/sota/hsm"),
                &format!(
                    "HSM_MODULE={}\nHSM_PIN={PIN}\nHSM_SOPIN=12345678\n",
                    hsm_support::MODULE
                ),
                0o600,
            );
        }
        device
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn sota(&self) -> PathBuf {
        self.root().join("var/sota")
    }

    fn tokens(&self) -> PathBuf {
        self.dir.path().join("softhsm-tokens")
    }

    fn softhsm_conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    fn stderr(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    /// The arguments of a first-boot run against `api`.
    fn agent_args(&self, api: &DeviceApi) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec!["--root".into(), self.root().into()];
        for arg in [
            "--device-api",
            &api.url(),
            "-f",
            FACTORY,
            "-t",
            "main",
            "-i",
            HWID,
            "--start-daemon",
            "0",
            "--boot",
            // A fault on a socket write makes a network error; the retry
            // comes within seconds, not the half hour of a real first boot.
            "--retry-deadline",
            "20",
        ] {
            args.push(arg.into());
        }
        args
    }

    /// `program` (the agent, or strace running it) with a clean
    /// environment and the agent's log in a file, so that writes to stderr
    /// are file-system writes that can fail like any other. fioconfig is not
    /// on PATH: no child process shares the faults.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("SOFTHSM2_CONF", self.softhsm_conf())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.stderr()).unwrap());
        cmd
    }

    /// A normal run of the agent.
    fn run(&self, api: &DeviceApi) -> std::process::ExitStatus {
        self.command(AGENT)
            .args(self.agent_args(api))
            .status()
            .unwrap()
    }

    /// A run of the agent under strace with `options`.
    fn traced(&self, api: &DeviceApi, options: &[String]) -> std::process::ExitStatus {
        self.command("strace")
            .args(options)
            .arg(AGENT)
            .args(self.agent_args(api))
            .status()
            .expect("strace runs")
    }

    fn last_log_line(&self) -> String {
        std::fs::read_to_string(self.stderr())
            .unwrap_or_default()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    }
}

const PIN: &str = "87654321";

/// Where a registration stands when it is complete: the files, with
/// nothing left over (no journal, no temporary file), and a key that
/// matches the certificate.
fn registered(device: &Device) -> Result<(), String> {
    let listing = listing(&device.sota());
    let expected: Vec<&str> = match device.key {
        Key::Software => REGISTERED_SOFTWARE.to_vec(),
        Key::SoftHsm => vec![
            "client.chained 644",
            "client.pem 644",
            "root.crt 644",
            "sota.toml 600",
        ],
    };
    if listing != expected {
        return Err(format!("state dir holds {listing:?}"));
    }
    let client = std::fs::read_to_string(device.sota().join("client.pem")).unwrap();
    let cert_der = cert_of(&client);
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
    let certified = cert.public_key().subject_public_key.data.to_vec();
    let key = match device.key {
        Key::Software => {
            let pem = std::fs::read_to_string(device.sota().join("pkey.pem")).unwrap();
            rcgen::KeyPair::from_pem(&pem)
                .map_err(|e| format!("pkey.pem: {e}"))?
                .public_key_raw()
                .to_vec()
        }
        Key::SoftHsm => {
            let (point, cert) = token_key_and_certificate(device)?;
            if cert != cert_der {
                return Err("the token's certificate is not client.pem".into());
            }
            point
        }
    };
    if key != certified {
        return Err("the key does not match the certificate".into());
    }
    Ok(())
}

/// The EC point of the token's `tls` public key and the DER of its
/// `client` certificate, each of which must exist exactly once.
fn token_key_and_certificate(device: &Device) -> Result<(Vec<u8>, Vec<u8>), String> {
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let hsm = hsm_support::open_softhsm(&device.softhsm_conf());
    let ctx = hsm.ctx();
    fn fail(what: &'static str) -> impl Fn(cryptoki::error::Error) -> String {
        move |e| format!("token: {what}: {e}")
    }
    let slot = ctx
        .get_slots_with_initialized_token()
        .map_err(fail("slots"))?
        .into_iter()
        .find(|slot| {
            ctx.get_token_info(*slot)
                .is_ok_and(|info| info.label() == "aktualizr")
        })
        .ok_or("no token aktualizr")?;
    let session = ctx.open_ro_session(slot).map_err(fail("session"))?;
    session
        .login(UserType::User, Some(&AuthPin::from(PIN.to_string())))
        .map_err(fail("login"))?;
    let only = |class: ObjectClass, label: &str, wanted: AttributeType| {
        let found = session
            .find_objects(&[
                Attribute::Class(class),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(fail("find"))?;
        let [handle] = found[..] else {
            return Err(format!("{} {class} objects labelled {label}", found.len()));
        };
        match session
            .get_attributes(handle, &[wanted])
            .map_err(fail("read"))?[..]
        {
            [Attribute::EcPoint(ref v)] | [Attribute::Value(ref v)] => Ok(v.clone()),
            _ => Err(format!("{label} has no {wanted}")),
        }
    };
    let point = only(ObjectClass::PUBLIC_KEY, "tls", AttributeType::EcPoint)?;
    let cert = only(ObjectClass::CERTIFICATE, "client", AttributeType::Value)?;
    Ok((hsm_support::ec_point(&point), cert))
}

/// The identities the server saw: every registration request's uuid, and
/// how many devices it created.
fn identities(api: &DeviceApi) -> (std::collections::BTreeSet<String>, usize) {
    let uuids = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
        .filter_map(|v| v["uuid"].as_str().map(str::to_string))
        .collect();
    (uuids, api.registrations().len())
}

/// What strace reported about the injected call.
struct Injected {
    /// The file (or `anon_inode:[eventfd]`, `socket:[…]`) the call was about.
    target: String,
    /// The fault hit SoftHSM2's code (its stack passes through the module).
    in_softhsm: bool,
}

fn injected(trace: &Path) -> Option<Injected> {
    let text = std::fs::read_to_string(trace).ok()?;
    let mut lines = text.lines().skip_while(|l| !l.ends_with("(INJECTED)"));
    let call = lines.next()?;
    let stack: Vec<&str> = lines.take_while(|l| l.starts_with(" > ")).collect();
    Some(Injected {
        target: target_of(call),
        in_softhsm: stack.iter().any(|l| l.contains("libsofthsm2.so")),
    })
}

/// What a call of `strace -y` output is about: `write(4</path>, "data"…`:
/// the fd's path; `openat(AT_FDCWD</cwd>, "/path"…`, `mkdir("/path"…`: the
/// path.
fn target_of(call: &str) -> String {
    let arguments = call.split_once('(').map_or("", |(_, rest)| rest);
    let annotated = arguments
        .starts_with(|c: char| c.is_ascii_digit())
        .then(|| arguments.split_once('<')?.1.split_once('>'))
        .flatten()
        .map(|(path, _)| path.to_string());
    let quoted = arguments
        .split('"')
        .nth(1)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    annotated.or(quoted).unwrap_or_else(|| call.to_string())
}

/// SoftHSM2's configuration file. Faults on it are not injected: when a
/// read of it fails, SoftHSM2 takes the file for empty and falls back to its
/// built-in token directory, so the agent would make its key in the host's
/// `/var/lib/softhsm/tokens`. (That is SoftHSM2 reporting success for a
/// configuration it did not read, nothing the agent can see.)
const SOFTHSM_CONFIG: &str = "SoftHSM2 configuration";

/// Whether the k-th call (1-based) may be faulted: not one that the
/// baseline (or the baseline shifted by one call) saw on SoftHSM2's
/// configuration.
fn may_fault(areas: &[&str], k: usize) -> bool {
    !(k.saturating_sub(2)..=k).any(|i| areas.get(i) == Some(&SOFTHSM_CONFIG))
}

/// The part of the system a fault hit, for the report.
fn area(target: &str, device: &Device) -> &'static str {
    let under = |dir: PathBuf| target.starts_with(dir.to_str().unwrap());
    if under(device.sota()) {
        "state dir"
    } else if target == device.softhsm_conf().to_str().unwrap() {
        SOFTHSM_CONFIG
    } else if under(device.tokens()) {
        "token store"
    } else if target == device.stderr().to_str().unwrap() {
        "log (stderr)"
    } else if under(device.root()) {
        "device files"
    } else if target.contains("eventfd") {
        "runtime wake-up (eventfd)"
    } else if target.starts_with("socket:") {
        "network socket"
    } else {
        "system files"
    }
}

#[derive(Default)]
struct Tally {
    /// (key, errno, idempotent server) -> counts
    rows: BTreeMap<(Key, &'static str, bool), Row>,
    /// fault area -> count, over everything
    areas: BTreeMap<&'static str, usize>,
    /// exit code of the faulted run -> count
    exits: BTreeMap<i32, usize>,
    failures: Vec<String>,
    softhsm_own: Vec<String>,
}

#[derive(Default, Clone, Copy)]
struct Row {
    faults: usize,
    /// The faulted run failed after the server had accepted the device:
    /// the cases that used to orphan it, finished by the rerun.
    accepted_not_stored: usize,
    /// Faults on tokio's eventfd (outside the fault model, see run_case)
    /// and how many of them tokio answered with its panic.
    wakeups: usize,
    wakeup_panics: usize,
    crashes: usize,
    panics: usize,
    orphans: usize,
    unregistered: usize,
    softhsm_own: usize,
}

/// Runs one case: the faulted run, then the rerun, and records the outcome.
fn run_case(key: Key, case: &Case, tally: &mut Tally) {
    let api = DeviceApi::start(Options {
        idempotent_retries: case.idempotent,
        ..Options::default()
    });
    let device = Device::new(key);
    let trace = device.dir.path().join("strace.txt");
    let status = device.traced(
        &api,
        &[
            "-f".into(),
            "-qq".into(),
            "-k".into(),
            "-y".into(),
            "-o".into(),
            trace.display().to_string(),
            format!("--trace={}", case.syscall),
            format!(
                "--inject={}:error={}:when={}",
                case.syscall, case.errno, case.k
            ),
        ],
    );
    let Some(hit) = injected(&trace) else {
        // The run made fewer calls of this kind than the baseline.
        return;
    };
    let area = area(&hit.target, &device);
    if area == SOFTHSM_CONFIG {
        tally.failures.push(format!(
            "{} {}#{}: the fault hit SoftHSM2's configuration after all; SoftHSM2 may have used its default token directory",
            key.name(),
            case.syscall,
            case.k
        ));
        return;
    }
    let what = format!(
        "{} {}#{} {} ({}, {} server): {}",
        key.name(),
        case.syscall,
        case.k,
        case.errno,
        area,
        if case.idempotent {
            "idempotent"
        } else {
            "strict"
        },
        hit.target
    );
    let row = tally
        .rows
        .entry((key, case.errno, case.idempotent))
        .or_default();
    row.faults += 1;
    *tally.areas.entry(area).or_default() += 1;
    let faulted_log = device.last_log_line();
    if let Some(signal) = status.signal() {
        if hit.in_softhsm {
            row.softhsm_own += 1;
            tally
                .softhsm_own
                .push(format!("{what}: SoftHSM2 died of signal {signal}"));
            return;
        }
        row.crashes += 1;
        tally
            .failures
            .push(format!("{what}: killed by signal {signal}: {faulted_log}"));
        return;
    }
    let code = status.code().unwrap_or(-1);
    *tally.exits.entry(code).or_default() += 1;
    // tokio's wake-up of its own thread writes an eventfd, a write the kernel
    // never fails with ENOSPC or EIO; tokio treats a failure there as a
    // broken runtime and panics. Outside the fault model, reported as such.
    if area == "runtime wake-up (eventfd)" {
        row.wakeups += 1;
        row.wakeup_panics += usize::from(code == 101);
    } else if code == 101 {
        row.panics += 1;
        tally
            .failures
            .push(format!("{what}: panicked: {faulted_log}"));
    }
    if code != 0 && !api.registrations().is_empty() {
        row.accepted_not_stored += 1;
    }

    let rerun = device.run(&api);
    let state = if rerun.code() == Some(0) {
        registered(&device)
    } else {
        Err(format!(
            "the rerun exited with {rerun}: {}",
            device.last_log_line()
        ))
    };
    let (uuids, devices) = identities(&api);
    if uuids.len() > 1 || devices > 1 {
        row.orphans += 1;
        tally.failures.push(format!(
            "{what}: the server saw {} identities ({devices} devices) after: {faulted_log}",
            uuids.len()
        ));
    }
    if let Err(why) = state {
        if hit.in_softhsm {
            row.softhsm_own += 1;
            tally
                .softhsm_own
                .push(format!("{what}: {why} (faulted run: {faulted_log})"));
        } else {
            row.unregistered += 1;
            tally
                .failures
                .push(format!("{what}: {why} (faulted run: {faulted_log})"));
        }
    }
}

/// The calls of each kind one clean registration makes, in order, each as
/// the area it touches (the agent's own process; SoftHSM2 runs inside it).
/// Another run may make a few more or fewer (the runtime's wake-ups depend
/// on timing), so the k-th call of a faulted run is only usually this one.
fn baseline(key: Key) -> BTreeMap<&'static str, Vec<&'static str>> {
    let api = DeviceApi::start(Options::default());
    let device = Device::new(key);
    let trace = device.dir.path().join("baseline.txt");
    let status = device.traced(
        &api,
        &[
            "-qq".into(),
            "-y".into(),
            "-o".into(),
            trace.display().to_string(),
            format!("--trace={}", SYSCALLS.join(",")),
        ],
    );
    assert!(status.success(), "clean run: {}", device.last_log_line());
    registered(&device).unwrap();
    let text = std::fs::read_to_string(&trace).unwrap();
    SYSCALLS
        .iter()
        .map(|&syscall| {
            let prefix = format!("{syscall}(");
            let calls = text
                .lines()
                .filter(|l| l.starts_with(&prefix))
                .map(|l| area(&target_of(l), &device))
                .collect();
            (syscall, calls)
        })
        .filter(|(_, calls): &(_, Vec<_>)| !calls.is_empty())
        .collect()
}

fn report(title: &str, tally: &Tally, started: Instant) {
    println!("\n{title} ({:.0} s)", started.elapsed().as_secs_f64());
    println!("| key | error | server | faults | accepted, not stored | crashes | panics | orphaned | not registered | SoftHSM2's own | eventfd (tokio panics) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for ((key, errno, idempotent), row) in &tally.rows {
        println!(
            "| {} | {errno} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) |",
            key.name(),
            if *idempotent { "idempotent" } else { "strict" },
            row.faults,
            row.accepted_not_stored,
            row.crashes,
            row.panics,
            row.orphans,
            row.unregistered,
            row.softhsm_own,
            row.wakeups,
            row.wakeup_panics
        );
    }
    println!("faults by area: {:?}", tally.areas);
    println!("exit codes of the faulted runs: {:?}", tally.exits);
    for line in &tally.softhsm_own {
        println!("SoftHSM2's own: {line}");
    }
    for line in &tally.failures {
        println!("FAILED: {line}");
    }
}

/// Runs `cases` on `threads` threads and merges what they found.
fn sweep(key: Key, cases: Vec<Case>, threads: usize) -> Tally {
    let queue = std::sync::Mutex::new(cases.into_iter());
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut tally = Tally::default();
                    loop {
                        let next = queue.lock().unwrap().next();
                        let Some(case) = next else { break };
                        run_case(key, &case, &mut tally);
                    }
                    tally
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut all = Tally::default();
    for tally in tallies {
        for (at, row) in tally.rows {
            let sum = all.rows.entry(at).or_default();
            sum.faults += row.faults;
            sum.accepted_not_stored += row.accepted_not_stored;
            sum.wakeups += row.wakeups;
            sum.wakeup_panics += row.wakeup_panics;
            sum.crashes += row.crashes;
            sum.panics += row.panics;
            sum.orphans += row.orphans;
            sum.unregistered += row.unregistered;
            sum.softhsm_own += row.softhsm_own;
        }
        for (area, n) in tally.areas {
            *all.areas.entry(area).or_default() += n;
        }
        for (code, n) in tally.exits {
            *all.exits.entry(code).or_default() += n;
        }
        all.failures.extend(tally.failures);
        all.softhsm_own.extend(tally.softhsm_own);
    }
    all
}

/// Every call of every kind (one past the baseline's count, for runs that
/// make one more), both errors; the server with and without idempotent
/// retries. With SoftHSM2 the strict server only for the state dir's calls:
/// the token store's thousands of calls are SoftHSM2's own, and the
/// server's kind matters only once its answer is being stored.
fn every_case(key: Key, calls: &BTreeMap<&'static str, Vec<&'static str>>) -> Vec<Case> {
    let mut cases = Vec::new();
    for (&syscall, areas) in calls {
        for k in (1..=areas.len() + 1).filter(|k| may_fault(areas, *k)) {
            let near_the_state_dir =
                (k.saturating_sub(2)..=k).any(|i| areas.get(i).is_some_and(|a| *a == "state dir"));
            for errno in ERRNOS {
                for idempotent in [true, false] {
                    if !idempotent && key == Key::SoftHsm && !near_the_state_dir {
                        continue;
                    }
                    cases.push(Case {
                        syscall,
                        k,
                        errno,
                        idempotent,
                    });
                }
            }
        }
    }
    cases
}

/// The bounded sample of CI: the calls of `kinds` that touch the state dir
/// (the writes after the server's answer among them), plus every
/// `stride`-th other call; the error and the server's kind alternate from
/// one case to the next.
fn sampled_cases(
    calls: &BTreeMap<&'static str, Vec<&'static str>>,
    kinds: &[&str],
    stride: usize,
) -> Vec<Case> {
    let mut cases = Vec::new();
    for (&syscall, areas) in calls {
        if !kinds.contains(&syscall) {
            continue;
        }
        for (i, area) in areas.iter().enumerate() {
            let k = i + 1;
            if (*area != "state dir" && k % stride != 0) || !may_fault(areas, k) {
                continue;
            }
            let n = cases.len();
            cases.push(Case {
                syscall,
                k,
                errno: ERRNOS[n % 2],
                idempotent: (n / 2) % 2 == 0,
            });
        }
    }
    cases
}

fn full_sweep() -> bool {
    std::env::var("FAULT_SWEEP").is_ok_and(|v| v == "full")
}

fn threads() -> usize {
    std::env::var("FAULT_SWEEP_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

fn assert_clean(tally: &Tally) {
    assert!(
        tally.failures.is_empty(),
        "{} of the faults went wrong:\n{}",
        tally.failures.len(),
        tally.failures.join("\n")
    );
    let faults: usize = tally.rows.values().map(|r| r.faults).sum();
    assert!(faults > 0, "no fault was injected");
}

#[test]
fn faults_with_a_software_key() {
    if !strace_available() {
        return;
    }
    let started = Instant::now();
    let calls = baseline(Key::Software);
    let cases = if full_sweep() {
        every_case(Key::Software, &calls)
    } else {
        sampled_cases(&calls, SAMPLED_KINDS, 1)
    };
    let tally = sweep(
        Key::Software,
        cases,
        if full_sweep() { threads() } else { 1 },
    );
    report("Faults, software key", &tally, started);
    assert_clean(&tally);
    // The sample covers the writes after the server's answer: the journal
    // record, every file and the commit.
    let sota = tally.areas.get("state dir").copied().unwrap_or(0);
    assert!(sota >= 20, "only {sota} faults in the state dir");
}

#[test]
fn faults_with_softhsm2() {
    if !strace_available() || !hsm_support::softhsm_available() {
        return;
    }
    let started = Instant::now();
    let calls = baseline(Key::SoftHsm);
    let cases = if full_sweep() {
        every_case(Key::SoftHsm, &calls)
    } else {
        sampled_cases(&calls, HSM_SAMPLED_KINDS, 60)
    };
    let tally = sweep(
        Key::SoftHsm,
        cases,
        if full_sweep() { threads() } else { 1 },
    );
    report("Faults, SoftHSM2", &tally, started);
    assert_clean(&tally);
}

#[test]
fn the_fault_model_sees_where_a_fault_lands() {
    if !strace_available() {
        return;
    }
    // The journal's identity record is the first file written in the state
    // dir (before it, only the directory that holds the state dir is
    // synced, once the state dir is made): failing its fsync must stop the
    // run before any request.
    let api = DeviceApi::start(Options::default());
    let device = Device::new(Key::Software);
    let trace = device.dir.path().join("strace.txt");
    let journal = device.sota().join("..lmp-device-register.pending.tmp");
    let status = device.traced(
        &api,
        &[
            "-f".into(),
            "-qq".into(),
            "-y".into(),
            "-o".into(),
            trace.display().to_string(),
            "--trace=fsync".into(),
            format!("--trace-path={}", journal.display()),
            "--inject=fsync:error=EIO:when=1".into(),
        ],
    );
    let hit = injected(&trace).expect("the fault was injected");
    assert!(
        hit.target.ends_with("..lmp-device-register.pending.tmp"),
        "{}",
        hit.target
    );
    assert_eq!(area(&hit.target, &device), "state dir");
    assert_eq!(status.code(), Some(1), "{}", device.last_log_line());
    assert!(api.requests().is_empty());
    assert!(
        listing(&device.sota()).is_empty(),
        "{:?}",
        listing(&device.sota())
    );
}

// ---------------------------------------------------------------------------
// Every profile: lmp, Losant, TII, azure-dps (both stages in one boot, and
// the first boot after the factory stage), against the doubles of
// tests/fleet_support. One-shot faults at each call, and a disk that stays
// full from a call on.

/// The kinds a disk that stays full fails: new files and opens (strace
/// cannot tell an open for reading apart, so those fail too), data,
/// directory entries, and the fsync that allocates.
const FULL_DISK_KINDS: &[&str] = &["openat", "write", "mkdir", "rename", "fsync"];

/// The kinds whose state-dir calls the bounded sample faults one at a time.
const PROFILE_SAMPLED_KINDS: &[&str] = &["openat", "write", "fsync", "rename", "mkdir", "unlink"];

/// One fault of the profile sweep.
#[derive(Clone, Debug)]
struct ProfileCase {
    /// Each injection: the syscall and the first call (1-based) it fails.
    inject: Vec<(&'static str, usize)>,
    errno: &'static str,
    /// From that call on (a disk that stays full), or that call only.
    persistent: bool,
    /// Only calls on the state dir's paths count and fail (strace -P), or
    /// every call of the kind.
    state_dir_only: bool,
}

impl ProfileCase {
    fn strace_options(&self, trace: &Path, state_paths: &[String]) -> Vec<String> {
        let mut options: Vec<String> = vec!["-f", "-qq", "-y", "-o"]
            .into_iter()
            .map(String::from)
            .collect();
        options.push(trace.display().to_string());
        let kinds: Vec<&str> = self.inject.iter().map(|(kind, _)| *kind).collect();
        options.push(format!("--trace={}", kinds.join(",")));
        if self.state_dir_only {
            options.extend(state_paths.iter().map(|p| format!("--trace-path={p}")));
        }
        for (kind, first) in &self.inject {
            let when = match self.persistent {
                true => format!("{first}+"),
                false => first.to_string(),
            };
            options.push(format!("--inject={kind}:error={}:when={when}", self.errno));
        }
        options
    }

    fn describe(&self) -> String {
        let calls: Vec<String> = self
            .inject
            .iter()
            .map(|(kind, first)| format!("{kind}#{first}"))
            .collect();
        format!(
            "{} {} {}{}",
            if self.persistent {
                "full disk from"
            } else {
                "one-shot"
            },
            self.errno,
            calls.join(" "),
            if self.state_dir_only {
                " (state dir)"
            } else {
                ""
            }
        )
    }
}

/// What a clean registration of a profile does to its state dir.
struct ProfileBaseline {
    /// Every path in the state dir the agent touched, the dir itself first.
    state_paths: Vec<String>,
    /// The calls on those paths, in order (as strace -P counts them).
    state_calls: Vec<&'static str>,
    /// How many calls of each kind the agent makes in all.
    all_calls: BTreeMap<&'static str, usize>,
}

/// The strace command around a rig's agent command, with the agent's log in
/// `log`.
fn strace_around(agent: &Command, options: &[String], log: &Path) -> Command {
    let mut cmd = Command::new("strace");
    cmd.env_clear();
    for (key, value) in agent.get_envs() {
        if let Some(value) = value {
            cmd.env(key, value);
        }
    }
    cmd.args(options)
        .arg(agent.get_program())
        .args(agent.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    cmd
}

/// A new device of `rig` on the real file system: its root, with /var.
fn profile_device(rig: &dyn Rig) -> tempfile::TempDir {
    let (root, var) = rig.new_device();
    let at = root.path().join("var");
    std::fs::create_dir(&at).unwrap();
    var.write_to(&at).unwrap();
    root
}

fn rig_command(rig: &dyn Rig, root: &Path, deadline: &str) -> Command {
    let mut cmd = rig.command(root);
    cmd.args(["--retry-deadline", deadline]);
    cmd
}

/// The syscall of a `strace -f` line (which starts with the thread's id).
fn kind_of_line(line: &str) -> Option<&'static str> {
    let call = line.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ');
    SYSCALLS
        .iter()
        .find(|kind| call.starts_with(&format!("{kind}(")))
        .copied()
}

/// Every path a `strace -y` line names: quoted arguments and the paths of
/// its file descriptors.
fn paths_in(line: &str) -> Vec<String> {
    let quoted = line.split('"').skip(1).step_by(2).map(str::to_string);
    let annotated = line
        .split('<')
        .skip(1)
        .filter_map(|rest| rest.split_once('>').map(|(path, _)| path.to_string()));
    quoted.chain(annotated).collect()
}

fn profile_baseline(rig: &dyn Rig) -> ProfileBaseline {
    let root = profile_device(rig);
    let state_dir = root.path().join("var").join(rig.state_dir());
    let state_prefix = state_dir.display().to_string();
    let trace = root.path().join("baseline.txt");
    let log = root.path().join("stderr.log");
    let agent = rig_command(rig, root.path(), "20");
    let options = vec![
        "-f".to_string(),
        "-qq".into(),
        "-y".into(),
        "-o".into(),
        trace.display().to_string(),
        format!("--trace={}", SYSCALLS.join(",")),
    ];
    let status = strace_around(&agent, &options, &log).status().unwrap();
    let text = std::fs::read_to_string(&trace).unwrap();
    assert!(
        status.success(),
        "{}: a clean run: {}",
        rig.name(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let var = Node::read_dir(&root.path().join("var")).unwrap();
    rig.registered(&var)
        .unwrap_or_else(|why| panic!("{}: a clean run: {why}", rig.name()));
    let mut state_paths = vec![state_prefix.clone()];
    let mut all_calls = BTreeMap::new();
    for line in text.lines() {
        let Some(kind) = kind_of_line(line) else {
            continue;
        };
        *all_calls.entry(kind).or_insert(0) += 1;
        for path in paths_in(line) {
            if path.starts_with(&format!("{state_prefix}/")) && !state_paths.contains(&path) {
                state_paths.push(path);
            }
        }
    }

    // The same run with strace counting only the state dir's calls, as the
    // faulted runs will.
    let root = profile_device(rig);
    let state_paths: Vec<String> = state_paths
        .iter()
        .map(|p| {
            p.replacen(
                &state_prefix,
                &root
                    .path()
                    .join("var")
                    .join(rig.state_dir())
                    .display()
                    .to_string(),
                1,
            )
        })
        .collect();
    let trace = root.path().join("state.txt");
    let mut options = vec![
        "-f".to_string(),
        "-qq".into(),
        "-o".into(),
        trace.display().to_string(),
        format!("--trace={}", SYSCALLS.join(",")),
    ];
    options.extend(state_paths.iter().map(|p| format!("--trace-path={p}")));
    let agent = rig_command(rig, root.path(), "20");
    let status = strace_around(&agent, &options, &root.path().join("stderr.log"))
        .status()
        .unwrap();
    assert!(status.success(), "{}: a clean run, traced", rig.name());
    let state_calls = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter_map(kind_of_line)
        .collect();
    let relative: Vec<String> = state_paths
        .iter()
        .map(|p| {
            p.strip_prefix(&root.path().display().to_string())
                .unwrap_or(p)
                .to_string()
        })
        .collect();
    ProfileBaseline {
        state_paths: relative,
        state_calls,
        all_calls,
    }
}

/// The cases of a profile: in the bounded sample, each state-dir call of
/// the sampled kinds once (the error alternating), and a disk full from
/// every `full_stride`-th state-dir call on; in the full sweep, every call
/// of every kind anywhere with both errors, and a disk full from each
/// state-dir call on.
fn profile_cases(baseline: &ProfileBaseline, full: bool, full_stride: usize) -> Vec<ProfileCase> {
    let mut cases = Vec::new();
    if full {
        for (&kind, &count) in &baseline.all_calls {
            for k in 1..=count + 1 {
                for errno in ERRNOS {
                    cases.push(ProfileCase {
                        inject: vec![(kind, k)],
                        errno,
                        persistent: false,
                        state_dir_only: false,
                    });
                }
            }
        }
    } else {
        for &kind in PROFILE_SAMPLED_KINDS {
            let count = baseline.state_calls.iter().filter(|c| **c == kind).count();
            for k in 1..=count {
                cases.push(ProfileCase {
                    inject: vec![(kind, k)],
                    errno: ERRNOS[cases.len() % 2],
                    persistent: false,
                    state_dir_only: true,
                });
            }
        }
    }
    let stride = if full { 1 } else { full_stride };
    let points: Vec<usize> = (0..baseline.state_calls.len())
        .filter(|&i| FULL_DISK_KINDS.contains(&baseline.state_calls[i]))
        .collect();
    for (n, &i) in points.iter().enumerate() {
        if n % stride != 0 && n + 1 != points.len() {
            continue;
        }
        let before = &baseline.state_calls[..i];
        cases.push(ProfileCase {
            inject: FULL_DISK_KINDS
                .iter()
                .map(|&kind| (kind, 1 + before.iter().filter(|c| **c == kind).count()))
                .collect(),
            errno: "ENOSPC",
            persistent: true,
            state_dir_only: true,
        });
    }
    cases
}

#[derive(Default)]
struct ProfileTally {
    one_shot: usize,
    persistent: usize,
    /// The faulted run failed after the service answered.
    accepted_not_stored: usize,
    registered: usize,
    lost_reported: usize,
    /// Faults on tokio's eventfd (full sweep only), outside the fault model.
    wakeups: usize,
    crashes: usize,
    panics: usize,
    orphans: usize,
    stranded: usize,
    failures: Vec<String>,
}

/// The faulted run, the rerun once the fault is gone, and the verdict.
fn run_profile_case(
    rig: &dyn Rig,
    baseline: &ProfileBaseline,
    case: &ProfileCase,
    tally: &mut ProfileTally,
) {
    let root = profile_device(rig);
    let state_paths: Vec<String> = baseline
        .state_paths
        .iter()
        .map(|p| format!("{}{p}", root.path().display()))
        .collect();
    let trace = root.path().join("strace.txt");
    let log = root.path().join("faulted.log");
    let from = rig.mark();
    // Network faults (the full sweep) are retried after a backoff.
    let deadline = if case.state_dir_only { "4" } else { "20" };
    let status = strace_around(
        &rig_command(rig, root.path(), deadline),
        &case.strace_options(&trace, &state_paths),
        &log,
    )
    .status()
    .expect("strace runs");
    let text = std::fs::read_to_string(&trace).unwrap_or_default();
    let Some(hit) = text.lines().find(|l| l.ends_with("(INJECTED)")) else {
        return; // fewer calls than the baseline
    };
    let target = target_of(hit);
    let what = format!("{}: {}: {target}", rig.name(), case.describe());
    match case.persistent {
        true => tally.persistent += 1,
        false => tally.one_shot += 1,
    }
    let faulted_log = std::fs::read_to_string(&log).unwrap_or_default();
    let last = |log: &str| log.lines().last().unwrap_or_default().to_string();
    let wakeup = target.contains("eventfd");
    match (status.signal(), status.code()) {
        (Some(signal), _) => {
            tally.crashes += 1;
            tally.failures.push(format!(
                "{what}: killed by signal {signal}: {}",
                last(&faulted_log)
            ));
            return;
        }
        (_, Some(101)) if wakeup => tally.wakeups += 1,
        (_, Some(101)) => {
            tally.panics += 1;
            tally
                .failures
                .push(format!("{what}: panicked: {}", last(&faulted_log)));
        }
        (_, code) => {
            if wakeup {
                tally.wakeups += 1;
            }
            let answered = rig.activity(&from, &rig.mark()).answered;
            if code != Some(0) && answered {
                tally.accepted_not_stored += 1;
            }
        }
    }

    let rerun: Run = rig_command(rig, root.path(), "20").output().unwrap().into();
    let activity = rig.activity(&from, &rig.mark());
    let var = Node::read_dir(&root.path().join("var")).unwrap();
    let both = format!("{faulted_log}{}", rerun.stderr);
    let verdict = match rerun.code {
        0 => rig.registered(&var).map(Some),
        _ => {
            // A service that answers once, a disk that stayed full from the
            // answer on: the answer may be truly lost, and then it must be
            // said plainly.
            let named = activity.held.iter().any(|id| both.contains(id.as_str()));
            let lost = rig.answers_once()
                && case.persistent
                && activity.answered
                && named
                && both.contains("delete")
                && !both.contains("probably");
            match lost {
                true => Ok(None),
                false => Err(format!(
                    "the rerun exited {}: {} (faulted run: {})",
                    rerun.code,
                    last(&rerun.stderr),
                    last(&faulted_log)
                )),
            }
        }
    };
    match verdict {
        Ok(Some(id)) if activity.held.iter().all(|held| *held == id) => tally.registered += 1,
        Ok(Some(id)) => {
            tally.orphans += 1;
            tally.failures.push(format!(
                "{what}: registered as {id}, but the fleet holds {:?} (faulted run: {})",
                activity.held,
                last(&faulted_log)
            ));
        }
        Ok(None) => tally.lost_reported += 1,
        Err(why) => {
            tally.stranded += 1;
            tally.failures.push(format!("{what}: {why}"));
        }
    }
}

fn profile_sweep(rig: &dyn Rig, full_stride: usize) {
    if !strace_available() {
        return;
    }
    let started = Instant::now();
    let baseline = profile_baseline(rig);
    let cases = profile_cases(&baseline, full_sweep(), full_stride);
    let mut tally = ProfileTally::default();
    for case in &cases {
        run_profile_case(rig, &baseline, case, &mut tally);
    }
    println!(
        "\n| profile | one-shot faults | disk full from | failed after the answer | registered on the rerun | lost, reported | crashes | panics | orphaned | stranded | eventfd | time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} s |",
        rig.name(),
        tally.one_shot,
        tally.persistent,
        tally.accepted_not_stored,
        tally.registered,
        tally.lost_reported,
        tally.crashes,
        tally.panics,
        tally.orphans,
        tally.stranded,
        tally.wakeups,
        started.elapsed().as_secs_f64()
    );
    for failure in &tally.failures {
        println!("FAILED: {failure}");
    }
    assert!(
        tally.failures.is_empty(),
        "{}: {} faults went wrong:\n{}",
        rig.name(),
        tally.failures.len(),
        tally.failures.join("\n")
    );
    assert!(
        tally.one_shot > 0 && tally.persistent > 0,
        "no fault was injected"
    );
}

#[test]
fn faults_in_lmp_with_a_disk_that_stays_full() {
    profile_sweep(&fleet_support::Lmp::new(false), 2);
}

#[test]
#[cfg(feature = "losant")]
fn faults_in_losant() {
    profile_sweep(&fleet_support::LosantRig::new(), 1);
}

#[test]
#[cfg(feature = "tii")]
fn faults_in_tii() {
    if device_api::tii::nats_server_available() {
        profile_sweep(&fleet_support::Tii::new(), 1);
    }
}

#[test]
#[cfg(feature = "azure-dps")]
fn faults_in_azure_dps() {
    profile_sweep(&fleet_support::Azure::new(false), 2);
}

#[test]
#[cfg(feature = "azure-dps")]
fn faults_in_azure_dps_first_boots_after_the_factory_stage() {
    profile_sweep(&fleet_support::Azure::new(true), 1);
}

// ---------------------------------------------------------------------------
// The cases of a disk that fills up while the request is out, for the
// services that answer once, and of a factory certificate that cannot be
// read, each on its own.

/// A first boot of a new device of `rig` under strace, the given calls of
/// the given state-dir files failing (`inject`: `--inject` arguments), then
/// the services' activity since the boot started.
#[cfg(any(feature = "losant", feature = "tii", feature = "azure-dps"))]
fn boot_with_faults(
    rig: &dyn Rig,
    root: &Path,
    files: &[String],
    inject: &[String],
    deadline: &str,
) -> (Run, fleet_support::Activity) {
    let from = rig.mark();
    let log = root.join("faulted.log");
    let mut options: Vec<String> = vec!["-f".into(), "-qq".into(), "-o".into()];
    options.push(root.join("strace.txt").display().to_string());
    options.extend(
        files
            .iter()
            .map(|f| format!("--trace-path={}", root.join(f).display())),
    );
    options.extend(inject.iter().cloned());
    let status = strace_around(&rig_command(rig, root, deadline), &options, &log)
        .status()
        .expect("strace runs");
    let run = Run {
        code: status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr: std::fs::read_to_string(&log).unwrap_or_default(),
    };
    (run, rig.activity(&from, &rig.mark()))
}

/// What a clean registration of `rig` writes in its state dir apart from
/// the journal: the installed files and their temporary files, relative to
/// the device's root.
#[cfg(any(feature = "losant", feature = "tii"))]
fn installed_files(rig: &dyn Rig) -> Vec<String> {
    let baseline = profile_baseline(rig);
    let files: Vec<String> = baseline
        .state_paths
        .iter()
        .skip(1) // the state dir itself
        .filter(|p| !p.contains(fleet_support::JOURNAL))
        .map(|p| p.trim_start_matches('/').to_string())
        .collect();
    assert!(!files.is_empty(), "{}: no installed file", rig.name());
    files
}

/// The journal of `rig`'s device, relative to its root.
#[cfg(any(feature = "losant", feature = "tii"))]
fn journal_of(rig: &dyn Rig) -> String {
    format!("var/{}/{}", rig.state_dir(), fleet_support::JOURNAL)
}

/// The rigs of the services that answer an identity once (of the profiles
/// this build has).
#[cfg(any(feature = "losant", feature = "tii"))]
fn answering_once() -> Vec<Box<dyn Rig>> {
    let mut rigs: Vec<Box<dyn Rig>> = Vec::new();
    #[cfg(feature = "losant")]
    rigs.push(Box::new(fleet_support::LosantRig::new()));
    #[cfg(feature = "tii")]
    if device_api::tii::nats_server_available() {
        rigs.push(Box::new(fleet_support::Tii::new()));
    }
    rigs
}

/// The disk fills up while the request is out: the answer's record still
/// goes into the room the journal made before the request, but no file can
/// be written. The run says the next one finishes; the next one, with room
/// again, installs the recorded answer without asking the service (which
/// would refuse: it answers once).
#[test]
#[cfg(any(feature = "losant", feature = "tii"))]
fn a_disk_full_from_the_answer_on_keeps_the_answer_of_a_service_that_answers_once() {
    if !strace_available() {
        return;
    }
    for rig in answering_once() {
        let rig = rig.as_ref();
        let files = installed_files(rig);
        let root = profile_device(rig);
        let inject = ["--inject=write:error=ENOSPC:when=1+".to_string()];
        let (run, activity) = boot_with_faults(rig, root.path(), &files, &inject, "4");
        assert!(activity.answered, "{}: {}", rig.name(), run.stderr);
        let id = activity.held.iter().next().unwrap().clone();
        run.assert_code(1)
            .assert_says("No space left on device")
            .assert_says(&format!(
            "accepted device {id}: the next run finishes storing it without registering it again"
        ));

        let from = rig.mark();
        let rerun: Run = rig_command(rig, root.path(), "4").output().unwrap().into();
        rerun.assert_code(0);
        assert_eq!(
            rig.activity(&from, &rig.mark()).requests,
            0,
            "{}: asked again",
            rig.name()
        );
        let var = Node::read_dir(&root.path().join("var")).unwrap();
        assert_eq!(rig.registered(&var), Ok(id), "{}", rig.name());
    }
}

/// Neither the record nor any file can be written when the answer arrives
/// (`record_fails` of the journal's writes fail, and the first `files_fail`
/// writes of the files): the agent keeps trying, in `--boot` until its
/// deadline.
#[cfg(any(feature = "losant", feature = "tii"))]
fn unstorable_answer(
    rig: &dyn Rig,
    files_fail: &str,
    deadline: &str,
) -> (tempfile::TempDir, Run, fleet_support::Activity) {
    let mut files = installed_files(rig);
    files.push(journal_of(rig));
    let root = profile_device(rig);
    let inject = [
        "--inject=pwrite64:error=ENOSPC:when=1+".to_string(),
        format!("--inject=write:error=ENOSPC:when={files_fail}"),
    ];
    let (run, activity) = boot_with_faults(rig, root.path(), &files, &inject, deadline);
    assert!(activity.answered, "{}: {}", rig.name(), run.stderr);
    (root, run, activity)
}

#[test]
#[cfg(any(feature = "losant", feature = "tii"))]
fn an_answer_given_once_that_cannot_be_stored_yet_is_stored_once_there_is_room() {
    if !strace_available() {
        return;
    }
    for rig in answering_once() {
        let rig = rig.as_ref();
        // Room comes back after two attempts.
        let (root, run, activity) = unstorable_answer(rig, "1..2", "60");
        run.assert_code(0)
            .assert_says("answers only once: attempt 1 failed")
            .assert_says("retrying in");
        let var = Node::read_dir(&root.path().join("var")).unwrap();
        let id = rig
            .registered(&var)
            .unwrap_or_else(|why| panic!("{}: {why}", rig.name()));
        assert_eq!(activity.held, [id].into(), "{}", rig.name());
    }
}

#[test]
#[cfg(any(feature = "losant", feature = "tii"))]
fn an_answer_given_once_that_is_never_stored_names_the_lost_device() {
    if !strace_available() {
        return;
    }
    for rig in answering_once() {
        let rig = rig.as_ref();
        let (_root, run, activity) = unstorable_answer(rig, "1+", "3");
        let id = activity.held.iter().next().unwrap();
        run.assert_code(1)
            .assert_says(&format!("device {id} is registered with"))
            .assert_says(&format!(
                "its answer could not be stored and is lost: delete device {id} in"
            ));
        assert!(
            !run.stderr.contains("probably"),
            "{}: {}",
            rig.name(),
            run.stderr
        );
    }
}

/// The first boot after the factory stage cannot read the factory's
/// certificate (an I/O error opening or reading it): that is an error, not
/// "no certificate"; the factory's identity stays as it is, and no new one
/// is made or enrolled. The unit's next start registers the factory's.
#[test]
#[cfg(feature = "azure-dps")]
fn an_unreadable_factory_certificate_is_an_error_and_replaces_nothing() {
    if !strace_available() {
        return;
    }
    let rig = fleet_support::Azure::new(true);
    let factory_id = rig.factory_id().unwrap();
    for call in ["openat", "read"] {
        let root = profile_device(&rig);
        let dir = root.path().join("var/lib/azure-dps");
        let before = Node::read_dir(&dir).unwrap();
        let certificate = "var/lib/azure-dps/device.crt".to_string();
        let inject = [format!("--inject={call}:error=EIO")];
        let (run, activity) = boot_with_faults(&rig, root.path(), &[certificate], &inject, "4");
        run.assert_code(1)
            .assert_says("device.crt")
            .assert_says("Input/output error");
        assert_eq!(
            Node::read_dir(&dir).unwrap(),
            before,
            "{call}: the factory's files changed"
        );
        assert_eq!(activity.requests, 0, "{call}: {}", run.stderr);
        assert!(activity.held.is_empty(), "{call}: {:?}", activity.held);

        let rerun: Run = rig_command(&rig, root.path(), "20")
            .output()
            .unwrap()
            .into();
        rerun.assert_code(0);
        let var = Node::read_dir(&root.path().join("var")).unwrap();
        assert_eq!(rig.registered(&var), Ok(factory_id.clone()));
    }
}
