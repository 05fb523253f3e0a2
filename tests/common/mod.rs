//! Shared harness for the integration tests: a device root in a temp dir,
//! stub `fioconfig`/`systemctl` that record how they were called, and a
//! runner for the built agent binary with a clean environment.
#![allow(dead_code)]

use device_api::DeviceApi;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const FACTORY: &str = "demo-factory";
pub const TOKEN: &str = "demo-token";
pub const HWID: &str = "intel-corei7-64";

pub struct Device {
    pub root: tempfile::TempDir,
    pub stubs: PathBuf,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn assert_says(&self, text: &str) -> &Self {
        assert!(
            self.stderr.contains(text),
            "stderr should contain {text:?}:\n{}",
            self.stderr
        );
        self
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

pub fn write_file(path: &Path, contents: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl Device {
    /// A device root with a token file and stub tools that log their argv.
    pub fn new() -> Device {
        let root = tempfile::tempdir().unwrap();
        let stubs = root.path().join("stub-bin");
        std::fs::create_dir(&stubs).unwrap();
        let device = Device { root, stubs };
        for tool in ["fioconfig", "systemctl"] {
            device.stub(tool, 0);
        }
        write_file(
            &device.path("etc/lmp-device-register-token"),
            &format!("{TOKEN}\n"),
            0o600,
        );
        device
    }

    /// (Re)writes a stub that records its arguments and exits with `code`.
    pub fn stub(&self, tool: &str, code: i32) {
        let log = self.root.path().join("calls.log");
        write_file(
            &self.stubs.join(tool),
            &format!(
                "#!/bin/sh\necho \"{tool} $*\" >> '{}'\necho '{tool} says hello'\nexit {code}\n",
                log.display()
            ),
            0o755,
        );
    }

    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.root.path().join("calls.log"))
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    pub fn sota(&self) -> PathBuf {
        self.path("var/sota")
    }

    /// `name mode` for every entry of the sota dir, sorted.
    pub fn sota_listing(&self) -> Vec<String> {
        listing(&self.sota())
    }

    /// The agent with a clean environment, the stubs first on PATH, this
    /// root, and nothing else: for tests that want settings from files or
    /// the environment.
    pub fn bare_command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lmp-device-register"));
        cmd.env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", self.stubs.display()))
            .arg("--root")
            .arg(self.root.path())
            .args(["--start-daemon", "0"])
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// [`Device::bare_command`] with the flags most tests need; `extra` comes
    /// last and may override them.
    pub fn command(&self, api: &DeviceApi, extra: &[&str]) -> Command {
        let mut cmd = self.bare_command();
        cmd.args([
            "--device-api",
            &api.url(),
            "-f",
            FACTORY,
            "-t",
            "main",
            "-i",
            HWID,
        ])
        .args(extra);
        cmd
    }

    /// Runs a command and collects its exit code and output.
    pub fn output(mut cmd: Command) -> Run {
        cmd.output().unwrap().into()
    }

    pub fn run(&self, api: &DeviceApi, extra: &[&str]) -> Run {
        Device::output(self.command(api, extra))
    }
}

pub fn listing(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| {
            let e = e.unwrap();
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            format!("{} {:o}", e.file_name().to_string_lossy(), mode)
        })
        .collect();
    names.sort();
    names
}

/// The files a software-key registration leaves, with their modes.
pub const REGISTERED_SOFTWARE: [&str; 5] = [
    "client.chained 644",
    "client.pem 644",
    "pkey.pem 600",
    "root.crt 644",
    "sota.toml 644",
];

pub fn cert_of(pem_text: &str) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).unwrap();
    pem.contents
}

/// Whether strace is there for the tests that watch or fault the agent's
/// system calls.
pub fn strace_available() -> bool {
    let found = Command::new("strace")
        .arg("-V")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        // CI installs strace (.ci/run): there a missing strace is a failure.
        assert!(std::env::var_os("CI").is_none(), "strace is not installed");
        eprintln!("strace is not installed: skipping (apt-get install strace)");
    }
    found
}

/// Every entry under `dir`, recursively: its path, mode, size, modification
/// time and the SHA-256 of its contents, for proving that a run changed
/// nothing on disk.
pub fn snapshot(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut entries = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let digest = if meta.is_file() {
            let contents = std::fs::read(&path).unwrap();
            let digest = ring::digest::digest(&ring::digest::SHA256, &contents);
            digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
        } else {
            String::new()
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
        }
        entries.push(format!(
            "{} {:o} {} {}.{} {digest}",
            path.strip_prefix(dir).unwrap().display(),
            meta.mode(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec()
        ));
    }
    entries.sort();
    entries
}
