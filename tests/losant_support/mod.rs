//! A device for the Losant profile: a root in a temp dir with the
//! registration token the double issued and the network interfaces sysfs
//! would show, and a runner for the agent. Needs `mod common;` beside it.
#![allow(dead_code)]

use crate::common::{listing, write_file, Run};
use device_api::Losant;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The address of `eth0`, the first physical interface of a [`Board`].
pub const ETH0_MAC: &str = "aa:bb:cc:00:00:01";
pub const WLAN0_MAC: &str = "aa:bb:cc:00:00:02";

pub const TOKEN_FILE: &str = "etc/losant/registration-token";
pub const CONFIG_FILE: &str = "etc/lmp-device-register.toml";
pub const STATE_DIR: &str = "var/lib/losant";
pub const CREDENTIALS: &str = "var/lib/losant/credentials.json";

pub struct Board {
    pub root: tempfile::TempDir,
}

impl Board {
    /// A device with the double's token (0600) and, as sysfs shows them,
    /// `lo` and `docker0` (virtual), `eth0` and `wlan0` (physical).
    pub fn new(losant: &Losant) -> Board {
        let board = Board::bare();
        board.write_token(&losant.token());
        board.interface("lo", 1, "00:00:00:00:00:00", false);
        board.interface("docker0", 2, "02:42:ac:11:00:01", false);
        board.interface("eth0", 3, &ETH0_MAC.to_uppercase(), true);
        board.interface("wlan0", 4, WLAN0_MAC, true);
        board
    }

    /// A device with nothing on it.
    pub fn bare() -> Board {
        Board {
            root: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    pub fn write_token(&self, token: &str) {
        write_file(&self.path(TOKEN_FILE), &format!("{token}\n"), 0o600);
    }

    pub fn config(&self, text: &str) {
        write_file(&self.path(CONFIG_FILE), text, 0o644);
    }

    /// An interface as sysfs shows it; a physical one has a `device` link.
    pub fn interface(&self, name: &str, index: u32, address: &str, physical: bool) {
        let dir = self.path(&format!("sys/class/net/{name}"));
        write_file(&dir.join("address"), &format!("{address}\n"), 0o444);
        write_file(&dir.join("ifindex"), &format!("{index}\n"), 0o444);
        let kind = if name == "lo" { "772" } else { "1" };
        write_file(&dir.join("type"), &format!("{kind}\n"), 0o444);
        write_file(&dir.join("addr_assign_type"), "0\n", 0o444);
        if physical {
            let bus = self.path(&format!("sys/devices/pci0000:00/{name}"));
            std::fs::create_dir_all(&bus).unwrap();
            std::os::unix::fs::symlink(&bus, dir.join("device")).unwrap();
        }
    }

    /// The agent with a clean environment and this root; no profile chosen.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lmp-device-register"));
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .arg("--root")
            .arg(self.root.path())
            .stdin(std::process::Stdio::null());
        cmd
    }

    pub fn output(mut cmd: Command) -> Run {
        cmd.output().unwrap().into()
    }

    /// `--profile losant` and `args`.
    pub fn run(&self, args: &[&str]) -> Run {
        let mut cmd = self.command();
        cmd.args(["--profile", "losant"]).args(args);
        Board::output(cmd)
    }

    pub fn credentials(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.path(CREDENTIALS)).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Credentials as an earlier registration left them.
    pub fn registered(&self, device_id: &str, access_key: &str, access_secret: &str) {
        let credentials = serde_json::json!({
            "deviceId": device_id,
            "accessKey": access_key,
            "accessSecret": access_secret,
        });
        std::fs::create_dir_all(self.path(STATE_DIR)).unwrap();
        write_file(&self.path(CREDENTIALS), &credentials.to_string(), 0o600);
    }

    /// `name mode` of every entry of the state dir, sorted.
    pub fn state_listing(&self) -> Vec<String> {
        listing(&self.path(STATE_DIR))
    }
}

/// The JSON object of a `--json` run.
pub fn json_of(run: &Run) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_str(run.stdout.trim()) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => panic!("stdout is not one JSON object: {run:?}"),
    }
}

/// The sorted keys of a JSON object.
pub fn keys(map: &serde_json::Map<String, serde_json::Value>) -> Vec<&str> {
    let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
    keys.sort();
    keys
}

pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}
