//! `--check`: everything a registration would need, found out without
//! registering and without changing anything: the settings, the clock, file
//! modes, the PKCS#11 module and token, the state dir and what it holds,
//! and each service the profile talks to. One line per check, pass / warn /
//! fail, with a hint for what to do.
//!
//! It takes no lock, writes nothing, never initialises a token or logs in
//! as security officer, and logs in as the user at most once per run (see
//! `token.rs`), so that a wrong PIN costs one attempt of the token's small
//! retry counter, as a registration would.

mod endpoint;
mod local;
mod token;

use crate::cli::CommandLine;
use crate::config::Environment;
use crate::error::Result;
use crate::profiles::{Backend, Resolution};
use serde::Serialize;
use serde_json::{json, Value};
use std::time::SystemTime;

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Pass,
    /// A registration would go on, but something deserves attention.
    Warn,
    /// A registration would fail (or, for the clock, wait and then fail).
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Line {
    /// settings, clock, files, token, registration, network.
    pub area: &'static str,
    /// What was checked, e.g. "DEVICE_API dns".
    pub check: String,
    pub status: Status,
    pub detail: String,
    /// What to do; only on warn and fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Line {
    pub fn pass(area: &'static str, check: impl Into<String>, detail: impl Into<String>) -> Line {
        Line {
            area,
            check: check.into(),
            status: Status::Pass,
            detail: detail.into(),
            hint: None,
        }
    }

    pub fn warn(
        area: &'static str,
        check: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Line {
        Line {
            status: Status::Warn,
            hint: Some(hint.into()),
            ..Line::pass(area, check, detail)
        }
    }

    pub fn fail(
        area: &'static str,
        check: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Line {
        Line {
            status: Status::Fail,
            ..Line::warn(area, check, detail, hint)
        }
    }
}

/// The settings: every problem and warning on a line of its own.
fn settings_lines(resolution: &Resolution) -> Vec<Line> {
    let mut lines: Vec<Line> = resolution
        .problems
        .iter()
        .map(|problem| {
            Line::fail(
                "settings",
                "configuration",
                problem.as_str(),
                "fix the flag, environment variable, config-file key or device file it names (docs/configuration.md)",
            )
        })
        .collect();
    lines.extend(resolution.warnings.iter().map(|warning| {
        Line::warn(
            "settings",
            "configuration",
            warning.as_str(),
            "see the warning; a registration goes on despite it",
        )
    }));
    if resolution.problems.is_empty() {
        let origins = resolution
            .resolved
            .as_ref()
            .map_or(0, |(common, _)| common.origins.len());
        let detail = format!(
            "profile {}: complete ({origins} settings from the command line, environment, config file or device files; the rest built-in defaults)",
            resolution.profile
        );
        lines.insert(0, Line::pass("settings", "configuration", detail));
    }
    lines
}

/// Every check, in the order a registration meets them.
fn all_lines(command_line: &CommandLine, env: &Environment) -> Result<(&'static str, Vec<Line>)> {
    let now = SystemTime::now();
    let resolution = crate::profiles::resolve_for_check(command_line, env)?;
    let mut lines = settings_lines(&resolution);
    lines.push(local::clock(now, crate::clock::earliest_plausible_time()));
    let Some((common, profile)) = &resolution.resolved else {
        lines.push(Line::warn(
            "settings",
            "other checks",
            "the token, the state dir and the network were not checked",
            "fix the settings above, then run --check again",
        ));
        return Ok((resolution.profile, lines));
    };
    lines.extend(local::files(common, profile));
    lines.push(local::preflight(common, profile));
    let state = crate::status::read_state(
        profile.name(),
        &crate::profiles::StateLocation::new(profile.state_dir().to_path_buf(), &profile.markers()),
    );
    let token = token::check(common, profile);
    lines.extend(token.lines);
    lines.extend(local::registration(
        &state,
        profile,
        token.public_key.as_deref(),
        now,
    ));
    for endpoint in profile.endpoints() {
        lines.extend(endpoint::check(&endpoint, common.request_timeout, now));
    }
    Ok((resolution.profile, lines))
}

/// The `--json` report.
fn report(profile: &str, lines: &[Line]) -> Value {
    let count = |status| lines.iter().filter(|l| l.status == status).count();
    json!({
        "status": "check",
        "profile": profile,
        "passed": count(Status::Pass),
        "warnings": count(Status::Warn),
        "failed": count(Status::Fail),
        "checks": lines,
    })
}

/// The report for people: one line per check, its hint below it.
fn text(profile: &str, lines: &[Line]) -> String {
    let mut out = format!("lmp-device-register --check (profile {profile})\n");
    for line in lines {
        let status = match line.status {
            Status::Pass => "pass",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        out.push_str(&format!(
            "{status}  {:<12} {}: {}\n",
            line.area, line.check, line.detail
        ));
        if let Some(hint) = &line.hint {
            out.push_str(&format!("      {:<12} hint: {hint}\n", ""));
        }
    }
    let report = report(profile, lines);
    let warnings = report["warnings"].as_u64().unwrap_or_default();
    out.push_str(&format!(
        "{} passed, {warnings} warning{}, {} failed\n",
        report["passed"],
        if warnings == 1 { "" } else { "s" },
        report["failed"]
    ));
    out
}

/// `--check`: prints the report; exit 0 when nothing fails, 1 when
/// something does (2 when the settings cannot be read at all).
pub(crate) fn run(command_line: &CommandLine, env: &Environment) -> Result<u8> {
    let (profile, lines) = all_lines(command_line, env)?;
    let printed = if command_line.cli.json {
        format!("{}\n", report(profile, &lines))
    } else {
        text(profile, &lines)
    };
    let _ = std::io::Write::write_all(&mut std::io::stdout(), printed.as_bytes());
    let failed = lines.iter().any(|line| line.status == Status::Fail);
    Ok(u8::from(failed))
}
