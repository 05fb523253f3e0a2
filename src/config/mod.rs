//! The one place where flags, environment, the config file, device files and
//! build defaults are resolved into typed, validated settings (in that order
//! of precedence). Nothing else in the agent reads the environment or these
//! files.
//!
//! Each setting is declared once, as data ([`Setting`], in `setting.rs`): its
//! sources in order of precedence, its check, whether it is a secret, its
//! help. The [`Resolver`] walks the declarations, records where each value
//! came from, and collects every problem it finds, so that a technician
//! learns everything that is missing or wrong from one run. The settings
//! shared by all profiles are declared here; each profile declares its own
//! beside its code (`profiles/*/config.rs`). `--help`, the man page and the
//! tables of `docs/configuration.md` are made from the same declarations.

mod devicefiles;
pub(crate) mod docs;
mod file;
mod hsm;
mod resolver;
mod setting;

pub use devicefiles::parse_single_line;
pub(crate) use devicefiles::{parse_shell_vars, read_optional, read_secret_optional};
pub(crate) use docs::help_text;
pub use hsm::parse_hsm_file;
pub(crate) use hsm::HsmSettings;
// The settings API is public: it is how a profile declares and resolves its
// settings, whichever profiles a build has.
pub use resolver::Resolver;
#[cfg(test)]
pub(crate) use setting::table_problems;
pub use setting::{
    flag, long, Declarations, Describe, DeviceRead, Flag, Found, Kind, Raw, Setting, Source, Value,
};

use crate::retry::RetryPolicy;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A snapshot of the process environment, taken once by `main`.
#[derive(Debug, Default, Clone)]
pub struct Environment(HashMap<String, String>);

impl Environment {
    pub fn capture() -> Self {
        Environment(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        )
    }

    #[cfg(test)]
    pub(crate) fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Environment(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// A set, non-empty variable.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// systemd connects stdout/stderr of a service to the journal and says so
    /// in `JOURNAL_STREAM`.
    pub(crate) fn under_journald(&self) -> bool {
        self.get("JOURNAL_STREAM").is_some()
    }

    /// `RUST_LOG` asks for debug lines: a directive (`debug`,
    /// `lmp_device_register=debug`, ...) names the debug or trace level.
    /// Only the level counts; the agent's lines are not split by target.
    pub(crate) fn wants_debug(&self) -> bool {
        self.get("RUST_LOG").is_some_and(|value| {
            value.split(',').any(|directive| {
                let level = directive.rsplit('=').next().unwrap_or_default();
                matches!(
                    level.trim().to_ascii_lowercase().as_str(),
                    "debug" | "trace"
                )
            })
        })
    }
}

/// Default paths of the device's own files, relative to `--root`.
pub(crate) const CONFIG_FILE: &str = "etc/lmp-device-register.toml";
pub(crate) const HSM_FILE: &str = "etc/sota/hsm";
pub(crate) const OS_RELEASE: &str = "etc/os-release";

/// CA certificates to trust for HTTPS instead of the system roots.
#[derive(Debug, Clone)]
pub struct CaBundle {
    pub path: PathBuf,
    pub certificates: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// A PEM file of CA certificates, read and checked while the settings are
/// resolved, so that a wrong path is reported with the setting that named it.
pub fn ca_bundle(path: PathBuf, what: &str) -> std::result::Result<CaBundle, String> {
    let pem = match read_optional(&path) {
        Ok(Some(pem)) => pem,
        Ok(None) => return Err(format!("{what}: CA file {} does not exist", path.display())),
        Err(e) => return Err(format!("{what}: {e}")),
    };
    match crate::x509::pem_certificates(&pem) {
        Ok(certificates) if !certificates.is_empty() => Ok(CaBundle { path, certificates }),
        Ok(_) => Err(format!("{what}: {} holds no certificate", path.display())),
        Err(e) => Err(format!("{what}: {}: {e}", path.display())),
    }
}

/// `--cacert`, which every profile takes.
pub const CACERT_FLAG: Source = long("cacert", "PATH");

/// The CA bundle of a profile that takes it from `--cacert` or `cacert` in
/// its table.
pub const CACERT: Setting<PathBuf, CaBundle> = Setting::new(
    "CA certificates",
    "Trust only the CA certificates in this PEM file for HTTPS, instead of the system roots",
    &[CACERT_FLAG, Source::Key("cacert")],
)
.otherwise("the system roots")
.check(ca_bundle);

/// The settings of a key in a token, shared by the profiles that keep one.
pub(crate) const HSM_SETTINGS: Declarations = hsm::SETTINGS;

/// Settings every profile shares.
#[derive(Debug)]
pub(crate) struct Common {
    /// First-boot mode (see `--boot`).
    pub boot: bool,
    pub force: bool,
    pub hsm: Option<HsmSettings>,
    pub retry: RetryPolicy,
    pub request_timeout: Duration,
    /// How long to wait for time sync before making a CSR.
    pub clock_wait: Duration,
    /// Where each setting came from, for the technician's log.
    pub origins: Vec<(String, String)>,
    /// Things worth a warning (secrets on argv, ...), logged once logging is up.
    pub warnings: Vec<String>,
}

/// A problem that has been recorded already; the caller need not report it.
#[derive(Debug)]
pub struct Reported;

/// One problem as it is; several as a numbered list on one line each.
fn problem_report(problems: &[String]) -> String {
    match problems {
        [one] => one.clone(),
        many => {
            let mut report = format!("{} configuration problems:", many.len());
            for (i, problem) in many.iter().enumerate() {
                report.push_str(&format!("\n  {}. {problem}", i + 1));
            }
            report
        }
    }
}

/// A mode that lets group or others read a secret file draws a warning.
fn readable_by_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// Splits a comma-separated list, dropping empty entries.
pub fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// An http(s) URL with a host.
pub fn parse_url(what: &str, value: &str) -> std::result::Result<reqwest::Url, String> {
    // A value refused for any reason may still carry a password before an
    // `@`; such a value is not echoed.
    let shown = if value.contains('@') {
        "(not shown: it may carry a password)".to_string()
    } else {
        format!("{value:?}")
    };
    let url = reqwest::Url::parse(value)
        .map_err(|e| format!("{what} {shown} is not a valid URL: {e}"))?;
    // URLs are logged; credentials in one would be too.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{what} must not carry a user name or password (URLs are logged; credentials come from the token file)"
        ));
    }
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("{what} {shown} must be an http:// or https:// URL"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_asks_for_debug_lines_by_level() {
        for (value, debug) in [
            ("debug", true),
            ("TRACE", true),
            ("lmp_device_register=debug", true),
            ("warn,lmp_device_register=debug", true),
            ("info", false),
            ("lmp_device_register=info", false),
            ("", false),
        ] {
            let env = Environment::from_pairs([("RUST_LOG", value)]);
            assert_eq!(env.wants_debug(), debug, "RUST_LOG={value}");
        }
    }

    #[test]
    fn urls_with_credentials_are_refused_without_echoing_them() {
        assert!(parse_url("DEVICE_API", "https://api.example/ota/devices/").is_ok());
        for url in [
            "https://user:hunter2@api.example/",
            "http://hunter2@api.example/",
        ] {
            let err = parse_url("DEVICE_API", url).unwrap_err();
            assert!(err.contains("user name or password"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        // Refused for another reason, they must not be echoed either.
        for url in [
            "ftp://user:hunter2@api.example/",
            "https://user:hunter2@[::1/",
        ] {
            let err = parse_url("DEVICE_API", url).unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn problems_are_listed_one_per_line() {
        assert_eq!(problem_report(&["a".into()]), "a");
        assert_eq!(
            problem_report(&["a".into(), "b".into()]),
            "2 configuration problems:\n  1. a\n  2. b"
        );
    }
}
