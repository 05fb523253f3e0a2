//! Pieces both benchmarks use.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// A device root with the API token the loopback API accepts.
pub fn device_root(dir: &Path) {
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    let token = dir.join("etc/lmp-device-register-token");
    std::fs::write(&token, "demo-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// `plain` run under `tool` with `tool_args`, with `plain`'s environment and
/// nothing of this process's, quietly.
pub fn under(tool: &str, tool_args: &[&str], plain: &Command) -> Command {
    let mut cmd = Command::new(tool);
    cmd.args(tool_args)
        .arg(plain.get_program())
        .args(plain.get_args())
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (name, value) in plain.get_envs() {
        if let Some(value) = value {
            cmd.env(name, value);
        }
    }
    cmd
}
