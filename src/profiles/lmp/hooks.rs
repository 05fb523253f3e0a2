//! What happens around an LmP registration on the device: aktualizr-lite
//! must not be running while it is made; afterwards fioconfig's first
//! check-in runs and aktualizr-lite is started. Neither child gets a secret
//! on its command line; both are reported, and neither undoes a registration
//! that succeeded.

use super::config::Fioconfig;
use crate::error::{Error, ErrorKind, Result, ResultExt};
use crate::profiles::StepOutcome;
use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// aktualizr-lite holds an exclusive flock on its lock file while it runs;
/// a shared, non-blocking flock fails exactly then.
pub fn ensure_aklite_not_running(lock_path: &Path) -> Result<()> {
    let file = match File::open(lock_path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(e).with_kind_context(ErrorKind::Internal, || {
                format!("cannot open {}", lock_path.display())
            })
        }
    };
    // Released by closing the file: an explicit unlock could fail, and
    // nix's `Flock` panics when it does.
    match file.try_lock_shared() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::new(
            ErrorKind::Busy,
            format!(
                "aktualizr-lite is running (it holds {}); stop it before registering",
                lock_path.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::internal(format!(
            "cannot test {}: {e}",
            lock_path.display()
        ))),
    }
}

/// Output of a child that is worth a log line: the last non-empty lines.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

fn run(program: &str, args: &[&str], env: &[(&str, String)]) -> StepOutcome {
    let shown = format!("{program} {}", args.join(" "));
    tracing::info!("running {shown}");
    let outcome = match Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) if output.status.success() => StepOutcome::Done,
        Ok(output) => {
            let status = output.status.code().map_or_else(
                || "was killed by a signal".to_string(),
                |c| format!("exited with {c}"),
            );
            let detail = tail(&output.stderr);
            let detail = if detail.is_empty() {
                tail(&output.stdout)
            } else {
                detail
            };
            StepOutcome::Failed(format!("{shown} {status}: {detail}"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            StepOutcome::Failed(format!("{program} is not installed (not found on PATH)"))
        }
        Err(e) => StepOutcome::Failed(format!("cannot run {shown}: {e}")),
    };
    if outcome == StepOutcome::Done {
        tracing::info!("{shown} finished");
    }
    outcome
}

/// fioconfig fetches the device's initial configuration. It is told where
/// this run put the configuration (`SOTA_DIR`, its comma-separated list of
/// config paths) and where its secrets go (`SECRETS_DIR`, which it does not
/// create), so a run under `--root` or `-d` is checked in with what it wrote.
pub fn fioconfig_check_in(fioconfig: &Fioconfig) -> StepOutcome {
    let secrets_dir = &fioconfig.secrets_dir;
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(secrets_dir)
    {
        return StepOutcome::Failed(format!("cannot create {}: {e}", secrets_dir.display()));
    }
    let config_paths: Vec<String> = fioconfig
        .config_paths
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    run(
        "fioconfig",
        &["check-in"],
        &[
            ("SOTA_DIR", config_paths.join(",")),
            ("SECRETS_DIR", secrets_dir.display().to_string()),
        ],
    )
}

pub fn start_aktualizr_lite() -> StepOutcome {
    run("systemctl", &["start", "aktualizr-lite"], &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aklite_lock_held_exclusively_means_busy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aklite.lock");
        ensure_aklite_not_running(&path).unwrap();
        let held = File::create(&path).unwrap();
        held.try_lock().unwrap();
        assert_eq!(
            ensure_aklite_not_running(&path).unwrap_err().kind(),
            ErrorKind::Busy
        );
        drop(held);
        ensure_aklite_not_running(&path).unwrap();
    }
}
