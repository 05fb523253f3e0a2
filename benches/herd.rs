//! A production line powering on at once: N agents in first-boot mode
//! (`--boot`) start together against one small registration server that
//! serves a few registrations at a time and turns the rest away with 503 and
//! `Retry-After`. Prints how many got registered, the wall time against the
//! server-bound ideal (N × service time / capacity), requests per device,
//! the server's peak load, and identities per device.
//!
//! `cargo bench --bench herd` runs the factory-line scenario (4 at a time,
//! 0.2 s each, `Retry-After: 2`) for a line of 500 devices, then of 1000,
//! and prints both side by side; change it with
//! `-- --devices N --capacity C --service-ms MS --retry-after S` (one line
//! of N devices).

mod common;

use common::device_root;
use device_api::{Capacity, DeviceApi, Options};
use lmp_device_register::retry_model;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_lmp-device-register");

#[derive(Clone)]
struct Scenario {
    devices: usize,
    capacity: usize,
    service: Duration,
    retry_after: u64,
}

impl Scenario {
    /// The lines to run: the factory-line scenario for 500 and 1000
    /// devices, or what the arguments say.
    fn from_args() -> Vec<Scenario> {
        let mut scenario = Scenario {
            devices: 500,
            capacity: 4,
            service: Duration::from_millis(200),
            retry_after: 2,
        };
        let args: Vec<String> = std::env::args().collect();
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .map(|v| {
                    v.parse::<u64>()
                        .unwrap_or_else(|_| panic!("{flag} takes a number"))
                })
        };
        if let Some(n) = value("--capacity") {
            scenario.capacity = n as usize;
        }
        if let Some(ms) = value("--service-ms") {
            scenario.service = Duration::from_millis(ms);
        }
        if let Some(s) = value("--retry-after") {
            scenario.retry_after = s;
        }
        let sizes = match value("--devices") {
            Some(n) => vec![n as usize],
            None => vec![500, 1000],
        };
        sizes
            .into_iter()
            .map(|devices| Scenario {
                devices,
                ..scenario.clone()
            })
            .collect()
    }

    /// Whether this is the server of the line model: 4 at a time, 0.2 s
    /// each, `Retry-After: 2`.
    fn is_factory_line(&self) -> bool {
        self.capacity == 4 && self.service == Duration::from_millis(200) && self.retry_after == 2
    }

    /// The time the server needs anyway: every registration takes its
    /// service time, `capacity` at once.
    fn ideal(&self) -> Duration {
        self.service * self.devices as u32 / self.capacity as u32
    }
}

/// What one line came to.
struct Figures {
    devices: usize,
    registered: usize,
    per_device: f64,
    wall: Duration,
    ideal: Duration,
    most_identities: usize,
}

fn main() {
    let scenarios = Scenario::from_args();
    let lines: Vec<Figures> = scenarios.iter().map(run).collect();
    println!();
    println!("| devices | registered | requests per device (target 3) | wall / server-bound ideal (target 1.5x) | model: requests per device, ratio | identities per device |");
    println!("|---|---|---|---|---|---|");
    for (scenario, line) in scenarios.iter().zip(&lines) {
        // The model plays the factory-line server only.
        let model = if scenario.is_factory_line() {
            let (per_device, ratio) = retry_model::boot_line(line.devices);
            format!("{per_device:.2}, {ratio:.2}x")
        } else {
            "(other server)".to_string()
        };
        println!(
            "| {} | {}/{} | {:.2} | {:.1} s / {:.1} s: {:.2}x | {model} | {} |",
            line.devices,
            line.registered,
            line.devices,
            line.per_device,
            line.wall.as_secs_f64(),
            line.ideal.as_secs_f64(),
            line.wall.as_secs_f64() / line.ideal.as_secs_f64(),
            line.most_identities
        );
    }
}

/// Runs one line and prints what happened.
fn run(scenario: &Scenario) -> Figures {
    let api = DeviceApi::start(Options {
        capacity: Some(Capacity {
            concurrent: scenario.capacity,
            service_time: scenario.service,
            retry_after: scenario.retry_after.to_string(),
        }),
        ..Options::default()
    });
    let line = tempfile::tempdir().unwrap();
    let roots: Vec<_> = (0..scenario.devices)
        .map(|i| {
            let root = line.path().join(format!("device-{i:04}"));
            device_root(&root);
            root
        })
        .collect();
    println!(
        "{} agents in --boot against a server taking {} at a time, {} ms each, 503 + Retry-After: {} beyond",
        scenario.devices,
        scenario.capacity,
        scenario.service.as_millis(),
        scenario.retry_after
    );

    let started = Instant::now();
    let mut agents: Vec<_> = roots
        .iter()
        .enumerate()
        .map(|(i, root)| {
            let log = std::fs::File::create(root.join("agent.log")).unwrap();
            let child = Command::new(AGENT)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .arg("--root")
                .arg(root)
                .args(["--device-api", &api.url(), "-f", "demo-factory"])
                .args(["-t", "main", "-i", "herd", "--start-daemon", "0", "--boot"])
                .args(["-n", &format!("device-{i:04}")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn agent");
            (i, child)
        })
        .collect();
    let spawned = started.elapsed();

    let mut failed = Vec::new();
    for (i, child) in &mut agents {
        let status = child.wait().unwrap();
        if !status.success() {
            failed.push((*i, status));
        }
    }
    let all_exited = started.elapsed();

    let registrations = api.registrations();
    let requests = api.requests();
    let posts: Vec<_> = requests.iter().filter(|r| r.method == "POST").collect();
    let last_registration = posts
        .iter()
        .map(|r| r.at)
        .max()
        .map_or(Duration::ZERO, |at| at.duration_since(started));
    // The server's side of it, without the time this machine took to start
    // the agents one after the other.
    let first_request = posts
        .iter()
        .map(|r| r.at)
        .min()
        .map_or(Duration::ZERO, |at| at.duration_since(started));
    let registered = roots
        .iter()
        .filter(|root| root.join("var/sota/client.pem").exists())
        .count();
    // Identities each device showed the server: the UUIDs under its name.
    let mut identities: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for post in &posts {
        let body: serde_json::Value = serde_json::from_slice(&post.body).unwrap_or_default();
        if let (Some(name), Some(uuid)) = (body["name"].as_str(), body["uuid"].as_str()) {
            identities
                .entry(name.to_string())
                .or_default()
                .insert(uuid.to_string());
        }
    }
    let most_identities = identities.values().map(BTreeSet::len).max().unwrap_or(0);
    let load = api.load();
    let ideal = scenario.ideal();
    let per_device = posts.len() as f64 / scenario.devices as f64;

    println!("spawned all agents in {:.1} s", spawned.as_secs_f64());
    println!(
        "registered: {registered}/{} (server created {} devices; {} agents failed)",
        scenario.devices,
        registrations.len(),
        failed.len()
    );
    println!(
        "wall: {:.1} s until every agent exited (last request at {:.1} s), ideal {:.1} s: {:.2}x (target 1.5x)",
        all_exited.as_secs_f64(),
        last_registration.as_secs_f64(),
        ideal.as_secs_f64(),
        all_exited.as_secs_f64() / ideal.as_secs_f64()
    );
    let served = last_registration.saturating_sub(first_request) + scenario.service;
    println!(
        "from the first request to the end of the last registration: {:.1} s: {:.2}x",
        served.as_secs_f64(),
        served.as_secs_f64() / ideal.as_secs_f64()
    );
    println!(
        "requests per device: {per_device:.2} ({} registration requests; target 3)",
        posts.len()
    );
    println!(
        "peak in flight: {} requests at once, {} registrations in service (cap {}); {} turned away",
        load.peak_requests_in_flight,
        load.peak_in_service,
        scenario.capacity,
        load.refused_for_capacity
    );
    println!(
        "identities per device: at most {most_identities} (one each is right) over {} devices",
        identities.len()
    );
    for (i, status) in failed.iter().take(5) {
        let log = std::fs::read_to_string(roots[*i].join("agent.log")).unwrap_or_default();
        println!(
            "device-{i:04} {status}: {}",
            log.lines().last().unwrap_or_default()
        );
    }
    Figures {
        devices: scenario.devices,
        registered,
        per_device,
        wall: all_exited,
        ideal,
        most_identities,
    }
}
