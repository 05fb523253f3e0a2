//! The checks on the device itself: the clock, the modes of the files that
//! hold secrets and of the state dir, the profile's pre-flight, and what
//! the state dir holds (a registration's certificate: its validity, and
//! that it is for the device's key).

use super::Line;
use crate::config::{Common, HSM_FILE};
use crate::profiles::{Backend, Profile};
use crate::status::{KeyLocation, State};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A certificate with fewer days left than this draws a warning.
const EXPIRY_WARNING_DAYS: i64 = 30;

pub(super) fn clock(now: SystemTime, earliest: SystemTime) -> Line {
    let shown = httpdate::fmt_http_date(now);
    if now >= earliest {
        return Line::pass("clock", "system time", shown);
    }
    Line::fail(
        "clock",
        "system time",
        format!(
            "{shown} is earlier than this build ({}): a registration would wait for time sync, and certificates would look not yet valid",
            httpdate::fmt_http_date(earliest)
        ),
        "set the time: enable NTP (timedatectl set-ntp true; systemctl status systemd-timesyncd) or timedatectl set-time",
    )
}

/// The mode of `path` without its file type.
fn mode(path: &Path) -> std::io::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o7777)
}

/// A file holding a secret must not be readable by group or others.
fn secret_file(path: &Path, what: &str) -> Line {
    let check = format!("{what} {}", path.display());
    match mode(path) {
        Ok(mode) if mode & 0o077 == 0 => Line::pass("files", check, format!("mode {mode:04o}")),
        Ok(mode) => Line::warn(
            "files",
            check,
            format!("mode {mode:04o}: group or others can read the secret in it"),
            format!("chmod 600 {}", path.display()),
        ),
        Err(e) => Line::fail(
            "files",
            check,
            format!("cannot be inspected: {e}"),
            "run as root, or fix the path in the settings",
        ),
    }
}

/// The files that secrets came from: the origins of secret settings that
/// are files (the API token file, `/etc/sota/hsm`), and the profile's own.
fn secret_files(common: &Common, profile: &Profile) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = common
        .origins
        .iter()
        .filter(|(what, _)| crate::profiles::is_secret_setting(what))
        .map(|(_, from)| PathBuf::from(from))
        .chain(profile.secret_files())
        .filter(|path| path.is_absolute() && path.is_file())
        .collect();
    files.sort();
    files.dedup();
    files
}

/// The state dir: private, writable, or creatable.
fn state_dir(dir: &Path) -> Line {
    let check = format!("state dir {}", dir.display());
    let writable = |path: &Path| {
        nix::unistd::access(
            path,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
    };
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir.ancestors().skip(1).find(|p| p.exists());
            return match parent.map(writable) {
                Some(Ok(())) => {
                    Line::pass("files", check, "absent: a registration creates it (0700)")
                }
                _ => Line::fail(
                    "files",
                    check,
                    "absent, and cannot be created here",
                    "run as root, or choose another state dir in the settings",
                ),
            };
        }
        Err(e) => {
            return Line::fail(
                "files",
                check,
                format!("cannot be inspected: {e}"),
                "run as root",
            )
        }
    };
    let mode = meta.permissions().mode() & 0o7777;
    if !meta.is_dir() {
        return Line::fail(
            "files",
            check,
            "exists and is not a directory",
            "move it away, or choose another state dir in the settings",
        );
    }
    if let Err(e) = writable(dir) {
        return Line::fail("files", check, format!("not writable: {e}"), "run as root");
    }
    if mode & 0o077 != 0 {
        return Line::warn(
            "files",
            check,
            format!("mode {mode:04o}: others can look in"),
            format!(
                "a registration tightens it to 0700; or chmod 700 {}",
                dir.display()
            ),
        );
    }
    Line::pass("files", check, format!("mode {mode:04o}, writable"))
}

/// The state dir and every file a secret comes from.
pub(super) fn files(common: &Common, profile: &Profile) -> Vec<Line> {
    let mut lines = vec![state_dir(profile.state_dir())];
    let hsm_file = common
        .hsm
        .as_ref()
        .and_then(|_| {
            common
                .origins
                .iter()
                .find(|(_, from)| from.ends_with(HSM_FILE))
        })
        .map(|(_, from)| PathBuf::from(from));
    for path in secret_files(common, profile) {
        let what = if Some(&path) == hsm_file.as_ref() {
            "HSM file"
        } else {
            "secret file"
        };
        lines.push(secret_file(&path, what));
    }
    lines
}

/// The profile's own checks before a registration (credentials that can be
/// had, aktualizr-lite not running, a certificate or where to get one).
pub(super) fn preflight(common: &Common, profile: &Profile) -> Line {
    match profile.preflight(common) {
        Ok(()) => Line::pass(
            "settings",
            "pre-flight",
            "the profile has what it needs to start",
        ),
        Err(e) => Line::fail(
            "settings",
            "pre-flight",
            e.to_string(),
            "see the message: it names what is missing",
        ),
    }
}

/// What the state dir holds, and for a registration its certificate and key.
pub(super) fn registration(
    state: &Result<State, String>,
    profile: &Profile,
    token_key: Option<&[u8]>,
    now: SystemTime,
) -> Vec<Line> {
    let area = "registration";
    let registration = match state {
        Err(e) => {
            return vec![Line::fail(
                area,
                "state",
                format!("unreadable: {e}"),
                "run as root; a damaged journal is named in the message",
            )]
        }
        Ok(State::NotRegistered) => {
            return vec![Line::pass(
                area,
                "state",
                "not registered: a registration starts afresh",
            )]
        }
        Ok(State::InProgress {
            id,
            answer_recorded,
            stage,
        }) => {
            let next = if *answer_recorded {
                "the next run stores the server's recorded answer without asking again"
            } else {
                "the next run continues with the same identity"
            };
            return vec![Line::pass(
                area,
                "state",
                format!("in progress ({stage}): {id}; {next}"),
            )];
        }
        Ok(State::Registered(registration)) => registration,
    };
    let id = registration.id.as_deref().unwrap_or("(unknown id)");
    let mut lines = vec![Line::pass(
        area,
        "state",
        format!("registered as {id}: a registration stops here unless --force (which makes a new identity)"),
    )];
    let Some(certificate) = &registration.certificate else {
        return lines;
    };
    let leaf = match leaf_certificate(certificate) {
        Ok(leaf) => leaf,
        Err(e) => {
            lines.push(Line::fail(
                area,
                "certificate",
                e,
                "register again with --force",
            ));
            return lines;
        }
    };
    lines.push(validity(certificate, &leaf, now));
    if let Some(key) = &registration.key {
        if let KeyLocation::File(path) = key {
            lines.push(secret_file(path, "key file"));
        }
        lines.push(key_match(key, &leaf, profile, token_key));
    }
    lines
}

fn leaf_certificate(path: &Path) -> Result<Vec<u8>, String> {
    let pem = crate::config::read_optional(path)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} does not exist", path.display()))?;
    let chain =
        crate::x509::require_certificates(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(chain[0].to_vec())
}

/// Valid now, and for how long.
fn validity(path: &Path, der: &[u8], now: SystemTime) -> Line {
    let check = format!("certificate {}", path.display());
    let summary = match crate::x509::summary(der) {
        Ok(summary) => summary,
        Err(e) => return Line::fail("registration", check, e, "register again with --force"),
    };
    let not_after = httpdate::fmt_http_date(summary.not_after);
    let days = crate::status::days_until(summary.not_after, now);
    let seconds = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let at = x509_parser::time::ASN1Time::from_timestamp(seconds as i64)
        .unwrap_or_else(|_| x509_parser::time::ASN1Time::now());
    let subject = &summary.subject;
    match crate::x509::check_validity(der, at) {
        Err(e) if days >= 0 => Line::fail("registration", check, format!("{subject} {e}"), "check the clock (see the clock line)"),
        Err(_) => Line::fail(
            "registration",
            check,
            format!("{subject} expired on {not_after}, {} days ago", -days),
            "the fleet no longer accepts this device: renew its certificate (LmP: fioconfig's certificate rotation) or register again with --force",
        ),
        Ok(()) if days < EXPIRY_WARNING_DAYS => Line::warn(
            "registration",
            check,
            format!("{subject} expires on {not_after}, in {days} days"),
            "renew the certificate before it expires (LmP: fioconfig's certificate rotation)",
        ),
        Ok(()) => Line::pass("registration", check, format!("{subject}, valid until {not_after} ({days} days left)")),
    }
}

/// The certificate is for the device's key: the key file's, or the
/// token's (read through the one login of this run).
fn key_match(key: &KeyLocation, leaf: &[u8], profile: &Profile, token_key: Option<&[u8]>) -> Line {
    let check = "certificate and key";
    let public = match key {
        KeyLocation::File(path) => match software_public_key(path, profile) {
            Ok(public) => public,
            Err(e) => return Line::fail("registration", check, e, "restore the key file, or register again with --force"),
        },
        KeyLocation::Token { token, label, .. } => match token_key {
            Some(public) => public.to_vec(),
            None => {
                return Line::warn(
                    "registration",
                    check,
                    format!("not compared: the `{label}` key in token {token} was not read (see the token lines)"),
                    "fix what the token lines say, then run --check again",
                )
            }
        },
    };
    if crate::x509::certifies_key(leaf, &public) {
        Line::pass(
            "registration",
            check,
            "the certificate is for the device's key",
        )
    } else {
        Line::fail(
            "registration",
            check,
            "the certificate is not for the device's key: the server would refuse the device",
            "restore the matching key or certificate, or register again with --force",
        )
    }
}

/// The public key of a software key file (checking its mode on the way).
fn software_public_key(path: &Path, profile: &Profile) -> Result<Vec<u8>, String> {
    use rcgen::PublicKeyData;
    let algorithm = profile
        .key_spec()
        .map(|spec| spec.algorithm)
        .unwrap_or_default();
    let pem = crate::config::read_secret_optional(path)
        .map_err(|e| e.to_string())?
        .map(zeroize::Zeroizing::new)
        .ok_or_else(|| format!("the key file {} does not exist", path.display()))?;
    let key =
        crate::keys::SoftwareKey::from_pem(&crate::secret::Secret::new(pem.to_string()), algorithm)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(key.der_bytes().to_vec())
}
