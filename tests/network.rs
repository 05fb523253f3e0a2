//! The agent waiting for the network wakes when the kernel says the network
//! changed, and a flapping link does not turn that into a request storm.
//! The agent runs (without booting anything) in a network namespace the
//! test makes, joined by a veth pair to the API's namespace; the API's end
//! of the pair is the cable (tests/firstboot_support/net.rs).
//!
//! Needs root and iproute2 (`ip`); elsewhere the tests say so and pass,
//! except under CI, where they fail.

mod common;
mod firstboot_support;

use common::{Device, FACTORY, HWID};
use device_api::Options;
use firstboot_support::net::Net;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The line the agent logs when a change of the network ends its wait.
const WOKEN: &str = "the network changed; trying again now";

fn can_make_namespaces() -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        "network namespaces need root"
    } else if std::process::Command::new("ip").arg("-V").output().is_err() {
        "no ip (Debian package iproute2)"
    } else {
        firstboot_support::sweep_dead_runs();
        return true;
    };
    assert!(std::env::var_os("CI").is_none(), "{why}");
    println!("NOTICE: not testing: {why}");
    false
}

/// The agent in `--boot` on the device's side of `net`, its stderr read as
/// it comes, each line with the moment it came.
struct Agent {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    fn start(device: &Device, net: &Net) -> Agent {
        let mut command = device.bare_command();
        command
            .args(["--device-api", &Net::device_api_url(), "-f", FACTORY])
            .args(["-t", "main", "-i", HWID, "--boot"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = net.in_device_ns(move || command.spawn().expect("starting the agent"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        Agent {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// When the agent said `text`, in order.
    fn said(&self, text: &str) -> Vec<Instant> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|(_, line)| line.contains(text))
            .map(|(at, _)| *at)
            .collect()
    }

    #[track_caller]
    fn wait_until_it_says(&self, text: &str, limit: Duration) -> Instant {
        firstboot_support::wait_for(limit, text, || self.said(text).first().copied())
    }

    /// Waits for the agent to exit (or stops it) and returns its stderr.
    fn finish(mut self, limit: Duration) -> (Option<i32>, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > limit {
                let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                break self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.reader.take().unwrap().join().unwrap();
        let lines = self.lines.lock().unwrap();
        let text = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
        (status.code(), text)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Cable out at start: the agent fails, waits out nothing of its backoff
/// once the cable is in, and registers.
#[test]
fn plugging_the_cable_in_ends_the_wait_for_the_network() {
    if !can_make_namespaces() {
        return;
    }
    let net = Net::new(false);
    net.configure_device_end();
    let api = net.start_api(Options::default());
    let device = Device::new();
    let agent = Agent::start(&device, &net);
    agent.wait_until_it_says("attempt 1 failed", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    assert!(api.requests().is_empty());

    let plugged = Instant::now();
    net.plug(true);
    let (code, stderr) = agent.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stderr}");
    let posted = api.requests()[0].at;
    let took = posted - plugged;
    println!("the registration request came {took:?} after the cable was plugged in");
    assert!(stderr.contains(WOKEN), "{stderr}");
    assert!(took < Duration::from_secs(5), "{took:?}\n{stderr}");
    assert_eq!(api.registrations().len(), 1);
}

/// Ten times out and in within a second, with nothing listening behind the
/// cable: the early attempts the changes bring are at most two, each at
/// least half a second after the attempt before began.
#[test]
fn a_flapping_link_brings_at_most_a_couple_of_extra_attempts() {
    if !can_make_namespaces() {
        return;
    }
    let net = Net::new(true);
    net.configure_device_end();
    let device = Device::new();
    let agent = Agent::start(&device, &net);
    agent.wait_until_it_says("attempt 1 failed", Duration::from_secs(30));

    let flapping = Instant::now();
    for _ in 0..10 {
        net.plug(false);
        std::thread::sleep(Duration::from_millis(40));
        net.plug(true);
        std::thread::sleep(Duration::from_millis(40));
    }
    let flapped = flapping.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let window_end = Instant::now();
    let attempts = agent.said(" failed: ");
    let woken = agent.said(WOKEN);
    let (_, stderr) = agent.finish(Duration::ZERO);

    let in_window = |at: &&Instant| **at >= flapping && **at <= window_end;
    let woken_in_window = woken.iter().filter(in_window).count();
    let attempts_in_window = attempts.iter().filter(in_window).count();
    println!(
        "flapped 10 times in {flapped:?}: {woken_in_window} attempts woken by the network, {attempts_in_window} attempts in all until 2 s after"
    );
    assert!((1..=2).contains(&woken_in_window), "{stderr}");
    // The others can only be the backoff running out once.
    assert!(attempts_in_window <= woken_in_window + 1, "{stderr}");
    // The floor runs from the start of the attempt before: a woken attempt
    // starts at its wake, and may fail only when the link is back (a SYN
    // lost to a pulled cable is sent again a second later); the first
    // attempt, before the flapping, failed at once.
    let mut previous_start = attempts[0];
    for wake in &woken {
        assert!(
            *wake - previous_start >= Duration::from_millis(500),
            "{stderr}"
        );
        previous_start = *wake;
    }
}
