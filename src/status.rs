//! `--status`: what each profile's state dir says about this device:
//! registered (as what, until when, with the key where), a registration in
//! progress, or not registered. It takes no lock and writes nothing: every
//! file it reads is replaced atomically by a registration, so each read sees
//! a whole file, and a registration running beside it is never held up.

use crate::cli::CommandLine;
use crate::config::{read_optional, Environment};
use crate::error::Result;
use crate::identity;
use crate::profiles::StateLocation;
use serde_json::{json, Map, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Where a registered device's key is.
#[derive(Debug, Clone)]
pub(crate) enum KeyLocation {
    File(PathBuf),
    Token {
        /// The module, where the registration wrote it down.
        module: Option<String>,
        token: String,
        label: String,
        id: String,
    },
}

/// A registration as its state dir records it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Registration {
    pub id: Option<String>,
    pub name: Option<String>,
    pub factory: Option<String>,
    pub hub: Option<String>,
    pub certificate: Option<PathBuf>,
    /// `None` for a profile that keeps no key (losant).
    pub key: Option<KeyLocation>,
}

#[derive(Debug)]
pub(crate) enum State {
    NotRegistered,
    /// A pending identity (the journal), or a first stage stored.
    InProgress {
        id: String,
        answer_recorded: bool,
        stage: &'static str,
    },
    Registered(Registration),
}

/// One profile whose state dir exists on this device.
pub(crate) struct ProfileState {
    pub profile: &'static str,
    pub dir: PathBuf,
    /// `Err` when the state dir cannot be read (permissions, a damaged
    /// journal): the reason.
    pub state: std::result::Result<State, String>,
}

/// Every profile of this build whose state dir exists.
pub(crate) fn profiles(command_line: &CommandLine, env: &Environment) -> Result<Vec<ProfileState>> {
    let locations = crate::profiles::state_locations(command_line, env)?;
    Ok(locations
        .into_iter()
        .filter(|(_, location)| location.dir.is_dir())
        .map(|(profile, location)| ProfileState {
            profile,
            state: read_state(profile, &location),
            dir: location.dir,
        })
        .collect())
}

/// The state of one profile's dir: its markers, then its journal (read by
/// the journal's own loader), then a stored first stage.
pub(crate) fn read_state(
    profile: &str,
    location: &StateLocation,
) -> std::result::Result<State, String> {
    let dir = &location.dir;
    let registered = location
        .markers
        .iter()
        .any(|marker| dir.join(marker).symlink_metadata().is_ok());
    if registered {
        return Ok(State::Registered(read_registration(profile, location)));
    }
    if let Some(pending) = identity::load(dir).map_err(|e| e.to_string())? {
        return Ok(State::InProgress {
            id: pending.id,
            answer_recorded: pending.answer.is_some(),
            stage: "pending identity",
        });
    }
    let partway = crate::profiles::REGISTERED
        .iter()
        .find(|p| p.name == profile)
        .and_then(|p| (p.partway)(dir));
    if let Some((id, stage)) = partway {
        return Ok(State::InProgress {
            id,
            answer_recorded: false,
            stage,
        });
    }
    Ok(State::NotRegistered)
}

/// What the profile's files say about a registration; what cannot be read
/// stays unknown.
pub(crate) fn read_registration(profile: &str, location: &StateLocation) -> Registration {
    crate::profiles::REGISTERED
        .iter()
        .find(|p| p.name == profile)
        .map(|p| (p.registration)(location))
        .unwrap_or_default()
}

/// A registration whose id, factory and key come from its certificate.
pub(crate) fn from_certificate(certificate: PathBuf, key: KeyLocation) -> Registration {
    let summary = certificate_summary(&certificate).ok();
    Registration {
        id: summary.as_ref().and_then(|s| s.common_name.clone()),
        name: None,
        factory: summary.and_then(|s| s.organizational_unit),
        hub: None,
        certificate: Some(certificate),
        key: Some(key),
    }
}

/// The first certificate of a PEM file.
pub(crate) fn certificate_summary(
    path: &Path,
) -> std::result::Result<crate::x509::Summary, String> {
    let pem = read_optional(path)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} does not exist", path.display()))?;
    let chain =
        crate::x509::require_certificates(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
    crate::x509::summary(&chain[0]).map_err(|e| format!("{}: {e}", path.display()))
}

/// Whole days from now to `until`; negative once it has passed.
pub(crate) fn days_until(until: SystemTime, now: SystemTime) -> i64 {
    let seconds = match until.duration_since(now) {
        Ok(ahead) => ahead.as_secs() as i64,
        Err(behind) => -(behind.duration().as_secs() as i64),
    };
    seconds.div_euclid(86_400)
}

fn certificate_json(path: &Path, now: SystemTime) -> Value {
    match certificate_summary(path) {
        Ok(summary) => json!({
            "file": path.display().to_string(),
            "subject": summary.subject,
            "issuer": summary.issuer,
            "not_after": httpdate::fmt_http_date(summary.not_after),
            "days_left": days_until(summary.not_after, now),
        }),
        Err(error) => json!({ "file": path.display().to_string(), "error": error }),
    }
}

fn key_json(key: &KeyLocation) -> Value {
    match key {
        KeyLocation::File(path) => match std::fs::symlink_metadata(path) {
            Ok(meta) => json!({
                "file": path.display().to_string(),
                "mode": format!("{:04o}", meta.permissions().mode() & 0o7777),
            }),
            Err(e) => json!({ "file": path.display().to_string(), "error": e.to_string() }),
        },
        KeyLocation::Token {
            module,
            token,
            label,
            id,
        } => json!({ "token": token, "label": label, "id": id, "module": module }),
    }
}

fn profile_json(entry: &ProfileState, now: SystemTime) -> Value {
    let mut fields = Map::new();
    fields.insert("profile".into(), entry.profile.into());
    fields.insert("state_dir".into(), entry.dir.display().to_string().into());
    let (state, details) = match &entry.state {
        Err(error) => ("unreadable", json!({ "error": error })),
        Ok(State::NotRegistered) => ("not-registered", json!({})),
        Ok(State::InProgress {
            id,
            answer_recorded,
            stage,
        }) => (
            "in-progress",
            json!({ "pending": { "id": id, "answer_recorded": answer_recorded, "stage": stage } }),
        ),
        Ok(State::Registered(r)) => (
            "registered",
            json!({
                "id": r.id, "name": r.name, "factory": r.factory, "hub": r.hub,
                "certificate": r.certificate.as_deref().map(|p| certificate_json(p, now)),
                "key": r.key.as_ref().map(key_json),
            }),
        ),
    };
    fields.insert("state".into(), state.into());
    if let Value::Object(details) = details {
        fields.extend(details);
    }
    Value::Object(fields)
}

/// The `--json` report: one object.
pub(crate) fn report(profiles: &[ProfileState], now: SystemTime) -> Value {
    let entries: Vec<Value> = profiles.iter().map(|p| profile_json(p, now)).collect();
    json!({ "status": "status", "profiles": entries })
}

/// The report for people, one block per profile.
pub(crate) fn text(report: &Value) -> String {
    let entries = report["profiles"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        return "not registered: no profile has a state dir on this device\n".into();
    }
    entries.iter().map(profile_text).collect()
}

fn profile_text(entry: &Value) -> String {
    let get = |key: &str| entry[key].as_str().unwrap_or_default();
    let mut lines = vec![format!(
        "{}: {} ({})",
        get("profile"),
        get("state").replace('-', " "),
        get("state_dir")
    )];
    let mut line = |label: &str, value: &str| lines.push(format!("  {label:<12} {value}"));
    if let Some(error) = entry["error"].as_str() {
        line("error", error);
    }
    pending_text(&entry["pending"], &mut line);
    for (key, label) in [
        ("id", "device id"),
        ("name", "name"),
        ("factory", "factory"),
        ("hub", "hub"),
    ] {
        if let Some(value) = entry[key].as_str() {
            line(label, value);
        }
    }
    certificate_text(&entry["certificate"], &mut line);
    if let Some(key) = key_text(&entry["key"]) {
        line("key", &key);
    }
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn pending_text(pending: &Value, line: &mut impl FnMut(&str, &str)) {
    let Some(id) = pending["id"].as_str() else {
        return;
    };
    line("identity", id);
    line("stage", pending["stage"].as_str().unwrap_or_default());
    line(
        "answer",
        match pending["answer_recorded"].as_bool() {
            Some(true) => "recorded: the next run stores it without asking the server again",
            _ => "not recorded: the next run asks the server again, as the same device",
        },
    );
}

fn certificate_text(certificate: &Value, line: &mut impl FnMut(&str, &str)) {
    let text = |key: &str| certificate[key].as_str().unwrap_or_default();
    let Some(file) = certificate["file"].as_str() else {
        return;
    };
    line("certificate", file);
    if let Some(error) = certificate["error"].as_str() {
        line("", error);
        return;
    }
    line("subject", text("subject"));
    line("issuer", text("issuer"));
    let days = certificate["days_left"].as_i64().unwrap_or_default();
    let left = if days < 0 {
        format!("expired {} days ago", -days)
    } else {
        format!("{days} days left")
    };
    line("not after", &format!("{} ({left})", text("not_after")));
}

fn key_text(key: &Value) -> Option<String> {
    let text = |field: &str| key[field].as_str().unwrap_or_default();
    if let Some(file) = key["file"].as_str() {
        let detail = match (key["mode"].as_str(), key["error"].as_str()) {
            (Some(mode), _) => format!("mode {mode}"),
            (None, error) => error.unwrap_or_default().to_string(),
        };
        return Some(format!("file {file} ({detail})"));
    }
    let token = key["token"].as_str()?;
    let module = key["module"]
        .as_str()
        .map(|m| format!(", module {m}"))
        .unwrap_or_default();
    Some(format!(
        "token {token}, key `{}` (CKA_ID {}){module}",
        text("label"),
        text("id")
    ))
}

/// `--status`: resolves only the state dirs (the rest of the settings may
/// be incomplete on a device that registered long ago) and prints the
/// report.
pub(crate) fn run(command_line: &CommandLine, env: &Environment) -> Result<u8> {
    let profiles = profiles(command_line, env)?;
    let report = report(&profiles, SystemTime::now());
    let printed = if command_line.cli.json {
        format!("{report}\n")
    } else {
        text(&report)
    };
    let _ = std::io::Write::write_all(&mut std::io::stdout(), printed.as_bytes());
    Ok(0)
}
