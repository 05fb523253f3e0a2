//! One boot of an image: systemd-nspawn in a cgroup of its own, joined to
//! the device's network namespace. The container's systemd and journal are
//! read with nsenter while it runs, and its journal files after it stopped.

use super::image::Image;
use super::net::Net;
use super::{alive, run, wait_for};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The agent's unit.
pub const UNIT: &str = "lmp-device-register.service";
/// How long an orderly stop of the whole container may take.
const STOP_LIMIT: Duration = Duration::from_secs(60);

pub struct Machine {
    nspawn: Child,
    /// The container's PID 1, as the host sees it.
    pub leader: i32,
    cgroups: Vec<PathBuf>,
    pub name: String,
    pub booted_at: Instant,
    stopped: bool,
}

/// The cgroup directories this process is in, in each hierarchy nspawn
/// uses: the unified one and, on a hybrid host, name=systemd.
fn own_cgroups() -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut dirs = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let mount = match controllers {
            "" => ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
                .into_iter()
                .map(Path::new)
                .find(|m| m.join("cgroup.controllers").exists()),
            "name=systemd" => Some(Path::new("/sys/fs/cgroup/systemd")).filter(|m| m.is_dir()),
            _ => None,
        };
        if let Some(mount) = mount {
            dirs.push(mount.join(path.trim_start_matches('/')));
        }
    }
    dirs
}

/// Kills every process in a cgroup tree and removes it, leaves first.
fn remove_cgroup(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir.exists() && Instant::now() < deadline {
        let mut dirs = vec![dir.to_path_buf()];
        let mut i = 0;
        while i < dirs.len() {
            if let Ok(entries) = std::fs::read_dir(&dirs[i]) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        dirs.push(entry.path());
                    }
                }
            }
            i += 1;
        }
        for d in &dirs {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|p| p.parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        for d in dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        if dir.exists() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Containers of dead runs, found by their cgroups.
pub(super) fn sweep(dead: &dyn Fn(&str) -> bool) {
    for parent in own_cgroups() {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if dead(&name) {
                remove_cgroup(&entry.path());
            }
        }
    }
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …"; comm may hold spaces and parentheses.
    stat[stat.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()
}

fn child_named(parent: i32, comm: &str) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|&pid| {
            parent_of(pid) == Some(parent)
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == comm)
        })
}

impl Machine {
    /// Boots `image` on the device's side of `net` and waits until its
    /// systemd answers (not until the boot is finished).
    pub fn boot(image: &Image, net: &Net, boot: &str) -> Machine {
        let name = format!("{}-{boot}", image.name);
        let console = std::fs::File::create(
            image
                .root
                .parent()
                .unwrap()
                .join(format!("console-{boot}.log")),
        )
        .unwrap();
        let cgroups: Vec<PathBuf> = own_cgroups().iter().map(|p| p.join(&name)).collect();
        assert!(!cgroups.is_empty(), "no cgroup hierarchy found");
        let mut script = String::new();
        for cgroup in &cgroups {
            std::fs::create_dir_all(cgroup).unwrap();
            script.push_str(&format!("echo 0 > '{}/cgroup.procs' && ", cgroup.display()));
        }
        // The container halts when this test dies before it could stop it.
        script.push_str("exec setpriv --pdeathsig TERM systemd-nspawn \"$@\"");
        let nspawn = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args([
                "--quiet",
                &format!("--directory={}", image.root.display()),
                &format!("--machine={name}"),
                "--boot",
                // PID 1 of this machine is not systemd: no machined, no scope.
                "--register=no",
                "--keep-unit",
                &format!(
                    "--network-namespace-path={}",
                    net.device_ns_path().display()
                ),
                // networkd configures the device's end of the cable.
                "--capability=CAP_NET_ADMIN",
                "--console=passive",
                "--link-journal=no",
                "--resolv-conf=off",
                "--timezone=off",
            ])
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .spawn()
            .expect("starting systemd-nspawn");
        let booted_at = Instant::now();
        let nspawn_pid = nspawn.id() as i32;
        let mut machine = Machine {
            nspawn,
            leader: 0,
            cgroups,
            name,
            booted_at,
            stopped: false,
        };
        machine.leader = wait_for(Duration::from_secs(30), "the container's PID 1", || {
            if let Ok(Some(status)) = machine.nspawn.try_wait() {
                panic!("systemd-nspawn exited at once ({status}); see its console log");
            }
            child_named(nspawn_pid, "systemd")
        });
        wait_for(Duration::from_secs(60), "the container's systemd", || {
            let state = machine.system_state();
            (!state.is_empty() && state != "offline").then_some(())
        });
        machine
    }

    /// Runs a command inside the container.
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        let leader = self.leader.to_string();
        let mut all = vec!["-t", &leader, "-a", "--"];
        all.extend_from_slice(args);
        run(Duration::from_secs(60), "nsenter", &all)
    }

    fn exec_stdout(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.exec(args).stdout).into_owned()
    }

    /// `systemctl is-system-running`: starting, running, degraded, …
    pub fn system_state(&self) -> String {
        self.exec_stdout(&["systemctl", "is-system-running"])
            .trim()
            .to_string()
    }

    /// Properties of a unit, as `systemctl show` gives them.
    pub fn show(&self, unit: &str) -> BTreeMap<String, String> {
        self.exec_stdout(&["systemctl", "show", "--no-pager", unit])
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Waits until the agent's run is over: exited successfully (the unit
    /// stays "active (exited)"), failed, or waiting to be restarted.
    pub fn wait_for_agent(&self, limit: Duration) -> BTreeMap<String, String> {
        wait_for(limit, "the agent's unit to finish", || {
            let props = self.show(UNIT);
            let active = props.get("ActiveState").map(String::as_str);
            let sub = props.get("SubState").map(String::as_str);
            matches!(
                (active, sub),
                (Some("active"), Some("exited")) | (Some("failed"), _) | (_, Some("auto-restart"))
            )
            .then_some(props)
        })
    }

    /// This boot's journal, filtered by `matches` (e.g. `MESSAGE_ID=…`).
    pub fn journal(&self, matches: &[&str]) -> Vec<Entry> {
        let mut args = vec!["journalctl", "--boot", "--output=json", "--no-pager"];
        args.extend_from_slice(matches);
        parse_journal(&self.exec_stdout(&args))
    }

    /// This boot's journal as journalctl prints it, e.g. for the test log.
    pub fn journal_text(&self, args: &[&str]) -> String {
        let mut all = vec!["journalctl", "--boot", "--no-pager", "--no-hostname"];
        all.extend_from_slice(args);
        self.exec_stdout(&all)
    }

    /// Stops the container the way a power button does (nspawn asks its
    /// systemd to halt) and returns how long the halt took.
    pub fn stop(&mut self) -> Duration {
        if self.stopped {
            return Duration::ZERO;
        }
        self.stopped = true;
        let started = Instant::now();
        let nspawn = Pid::from_raw(self.nspawn.id() as i32);
        let _ = kill(nspawn, Signal::SIGTERM);
        while started.elapsed() < STOP_LIMIT {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let took = started.elapsed();
        if !matches!(self.nspawn.try_wait(), Ok(Some(_))) {
            if self.leader > 0 && alive(self.leader) {
                let _ = kill(Pid::from_raw(self.leader), Signal::SIGKILL);
            }
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
        for cgroup in &self.cgroups {
            remove_cgroup(cgroup);
        }
        took
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One journal entry, as `journalctl -o json` gives it.
#[derive(Clone, Debug)]
pub struct Entry(pub Map<String, Value>);

impl Entry {
    /// A field's value; the first one when the field repeats.
    pub fn get(&self, field: &str) -> Option<&str> {
        match self.0.get(field)? {
            Value::String(s) => Some(s),
            Value::Array(values) => values.first()?.as_str(),
            _ => None,
        }
    }

    /// How many values the field has.
    pub fn count(&self, field: &str) -> usize {
        match self.0.get(field) {
            None => 0,
            Some(Value::Array(values)) if values.iter().all(Value::is_string) => values.len(),
            Some(_) => 1,
        }
    }

    pub fn message(&self) -> &str {
        self.get("MESSAGE").unwrap_or_default()
    }

    pub fn priority(&self) -> u8 {
        self.get("PRIORITY")
            .and_then(|p| p.parse().ok())
            .unwrap_or(255)
    }

    pub fn monotonic(&self) -> u64 {
        self.get("__MONOTONIC_TIMESTAMP")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0)
    }

    pub fn boot_id(&self) -> &str {
        self.get("_BOOT_ID").unwrap_or_default()
    }

    /// Logged by the agent itself (not by systemd about the agent).
    pub fn is_agents(&self) -> bool {
        self.get("SYSLOG_IDENTIFIER") == Some("lmp-device-register")
    }
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "<{}> {}: {}",
            self.priority(),
            self.get("SYSLOG_IDENTIFIER").unwrap_or("?"),
            self.message()
        )
    }
}

fn parse_journal(text: &str) -> Vec<Entry> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match serde_json::from_str(l) {
            Ok(Value::Object(map)) => Entry(map),
            other => panic!("journalctl gave {other:?} for {l}"),
        })
        .collect()
}

/// The whole journal an image kept, every boot, read from its files.
pub fn persisted_journal(image: &Image, matches: &[&str]) -> Vec<Entry> {
    let dir = image.path("var/log/journal");
    let dir = format!("--directory={}", dir.display());
    let mut args = vec![dir.as_str(), "--output=json", "--no-pager"];
    args.extend_from_slice(matches);
    let output = run(Duration::from_secs(60), "journalctl", &args);
    parse_journal(&String::from_utf8_lossy(&output.stdout))
}

/// Everything the journal of an image holds, every field of every entry, as
/// text: what must never contain a secret.
pub fn persisted_journal_export(image: &Image) -> String {
    let dir = format!("--directory={}", image.path("var/log/journal").display());
    let output = run(
        Duration::from_secs(60),
        "journalctl",
        &[&dir, "--output=export", "--no-pager"],
    );
    assert!(output.status.success(), "journalctl --output=export failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Entries grouped by boot, in the order the boots happened.
pub fn by_boot(entries: &[Entry]) -> Vec<Vec<Entry>> {
    let mut boots: Vec<(String, Vec<Entry>)> = Vec::new();
    for entry in entries {
        match boots.iter_mut().find(|(id, _)| id == entry.boot_id()) {
            Some((_, list)) => list.push(entry.clone()),
            None => boots.push((entry.boot_id().to_string(), vec![entry.clone()])),
        }
    }
    boots.into_iter().map(|(_, list)| list).collect()
}
