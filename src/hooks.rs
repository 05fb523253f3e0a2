//! What happens after the files are in place: fioconfig's first check-in and
//! starting aktualizr-lite. Neither gets a secret on its command line; both
//! are reported, and neither undoes a registration that succeeded.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepOutcome {
    Done,
    Skipped,
    Failed(String),
}

/// Output of a child that is worth a log line: the last non-empty lines.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

fn run(program: &str, args: &[&str]) -> StepOutcome {
    let shown = format!("{program} {}", args.join(" "));
    tracing::info!("running {shown}");
    match Command::new(program)
        .args(args)
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
    }
}

/// fioconfig fetches the device's initial configuration; it does not create
/// the directory it decrypts secrets into.
pub fn fioconfig_check_in(secrets_dir: &Path) -> StepOutcome {
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(secrets_dir)
    {
        return StepOutcome::Failed(format!("cannot create {}: {e}", secrets_dir.display()));
    }
    run("fioconfig", &["check-in"])
}

pub fn start_aktualizr_lite() -> StepOutcome {
    run("systemctl", &["start", "aktualizr-lite"])
}
