//! The one place where flags, environment, the config file, device files and
//! build defaults are resolved into typed, validated settings (in that order
//! of precedence). Nothing else in the agent reads the environment or these
//! files.
//!
//! The [`Resolver`] holds every source and collects every problem it finds,
//! so that a technician learns everything that is missing or wrong from one
//! run. The settings shared by all profiles are resolved here; each profile
//! resolves its own table through the same `Resolver` (see `profiles/`).

mod devicefiles;
mod file;
mod hsm;

pub(crate) use devicefiles::parse_shell_vars;
pub use devicefiles::parse_single_line;
pub(crate) use devicefiles::{lookup, read_optional, read_secret_optional};
pub use hsm::parse_hsm_file;
pub(crate) use hsm::HsmSettings;

use crate::cli::{parse_bool_word, Cli, ProfileName};
use crate::error::{Error, Result};
use crate::retry::RetryPolicy;
use crate::secret::Secret;
use file::ConfigFile;
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
pub(crate) struct CaBundle {
    pub path: PathBuf,
    pub certificates: Vec<rustls::pki_types::CertificateDer<'static>>,
}

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
pub(crate) struct Reported;

/// The sources of every setting, and the problems found so far.
pub(crate) struct Resolver<'a> {
    pub(crate) cli: &'a Cli,
    env: &'a Environment,
    root: PathBuf,
    /// Flags given on the command line, by clap id.
    given: Vec<String>,
    file: Option<ConfigFile>,
    os_release: Option<(PathBuf, Vec<(String, String)>)>,
    hsm: Option<Option<HsmSettings>>,
    origins: Vec<(String, String)>,
    warnings: Vec<String>,
    problems: Vec<String>,
}

impl<'a> Resolver<'a> {
    /// Sets up the sources. Only a `--root` that does not exist, or a config
    /// file that cannot be read, stop here: nothing else can be resolved
    /// without them.
    pub fn new(cli: &'a Cli, given: Vec<String>, env: &'a Environment) -> Result<Self> {
        let root = cli.root.clone().unwrap_or_else(|| PathBuf::from("/"));
        if !root.is_dir() {
            return Err(Error::config(format!(
                "--root {}: no such directory (nothing was created)",
                root.display()
            )));
        }
        let mut resolver = Resolver {
            cli,
            env,
            root,
            given,
            file: None,
            os_release: None,
            hsm: None,
            origins: Vec::new(),
            warnings: Vec::new(),
            problems: Vec::new(),
        };
        resolver.file = match &cli.config {
            Some(path) => Some(ConfigFile::load(path)?.ok_or_else(|| {
                Error::config(format!("--config {}: no such file", path.display()))
            })?),
            None => ConfigFile::load(&resolver.path(CONFIG_FILE))?,
        };
        if let Some(file) = &resolver.file {
            resolver
                .origins
                .push(("config file".into(), file.path.display().to_string()));
        }
        resolver.load_os_release();
        Ok(resolver)
    }

    /// A device path (`etc/...`, `var/...`) under `--root`.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// A set, non-empty environment variable.
    pub fn env(&self, key: &str) -> Option<&'a str> {
        self.env.get(key)
    }

    /// A boolean environment variable (`1/true/yes/on`, `0/false/no/off`).
    pub fn env_bool(&mut self, key: &str) -> Option<bool> {
        let value = self.env(key)?;
        match parse_bool_word(value) {
            Ok(b) => Some(b),
            Err(e) => {
                self.problem(format!("environment {key}: {e}"));
                None
            }
        }
    }

    /// The profile's table of the config file, deserialised into `T`
    /// (unknown keys and wrong types are problems naming the file and key).
    pub fn section<T: serde::de::DeserializeOwned + Default>(&mut self, name: &str) -> T {
        let Some(file) = &self.file else {
            return T::default();
        };
        match file.section(name) {
            Ok(section) => section,
            Err(e) => {
                self.problem(e);
                T::default()
            }
        }
    }

    /// How a key of the profile's table is named in messages and origins.
    pub fn file_key(&self, section: &str, key: &str) -> String {
        match &self.file {
            Some(file) => format!("{} [{section}] {key}", file.path.display()),
            None => format!("[{section}] {key} of {}", self.path(CONFIG_FILE).display()),
        }
    }

    /// A variable of `/etc/os-release` (under `--root`) and the path it was
    /// read from.
    pub fn os_release(&self, key: &str) -> Option<(String, String)> {
        let (path, vars) = self.os_release.as_ref()?;
        lookup(vars, key).map(|v| (v.to_string(), path.display().to_string()))
    }

    /// os-release is read whether or not a setting needs it: a broken one
    /// is a problem on any image.
    fn load_os_release(&mut self) {
        let path = self.path(OS_RELEASE);
        let vars = match self.read_optional(&path) {
            Ok(Some(text)) => parse_shell_vars(&text).unwrap_or_else(|e| {
                self.problem(format!("{}: {e}", path.display()));
                Vec::new()
            }),
            Ok(None) | Err(Reported) => Vec::new(),
        };
        self.os_release = Some((path, vars));
    }

    /// A small device file; `Ok(None)` when it does not exist, `Err` when
    /// it cannot be used (recorded as a problem already).
    pub fn read_optional(&mut self, path: &Path) -> std::result::Result<Option<String>, Reported> {
        read_optional(path).map_err(|e| {
            self.problem(e.to_string());
            Reported
        })
    }

    /// Like [`Resolver::read_optional`] for a file that holds a secret.
    pub fn read_secret(
        &mut self,
        path: &Path,
    ) -> std::result::Result<Option<zeroize::Zeroizing<String>>, Reported> {
        match read_secret_optional(path) {
            Ok(text) => Ok(text.map(zeroize::Zeroizing::new)),
            Err(e) => {
                self.problem(e.to_string());
                Err(Reported)
            }
        }
    }

    /// A secret given on the command line: used, with a warning.
    pub fn secret_flag(&mut self, value: Option<&String>, flag: &str) -> Option<Secret> {
        value.map(|v| {
            self.warn(format!(
                "{flag} puts a secret on the command line, readable by every local user; use a file instead"
            ));
            Secret::new(v.clone())
        })
    }

    /// A PEM file of CA certificates, read and checked now so that a wrong
    /// path is reported with the setting that named it.
    pub fn ca_bundle(&mut self, path: PathBuf, origin: &str) -> Option<CaBundle> {
        let pem = match read_optional(&path) {
            Ok(Some(pem)) => pem,
            Ok(None) => {
                self.problem(format!(
                    "{origin}: CA file {} does not exist",
                    path.display()
                ));
                return None;
            }
            Err(e) => {
                self.problem(format!("{origin}: {e}"));
                return None;
            }
        };
        match crate::x509::pem_certificates(&pem) {
            Ok(certificates) if !certificates.is_empty() => {
                self.origin("CA certificates", format!("{} ({origin})", path.display()));
                Some(CaBundle { path, certificates })
            }
            Ok(_) => {
                self.problem(format!("{origin}: {} holds no certificate", path.display()));
                None
            }
            Err(e) => {
                self.problem(format!("{origin}: {}: {e}", path.display()));
                None
            }
        }
    }

    pub fn origin(&mut self, what: impl Into<String>, from: impl Into<String>) {
        self.origins.push((what.into(), from.into()));
    }

    pub fn warn(&mut self, warning: impl Into<String>) {
        self.warnings.push(warning.into());
    }

    /// Records a problem; resolution goes on so that all are reported.
    pub fn problem(&mut self, problem: impl Into<String>) {
        self.problems.push(problem.into());
    }

    /// The HSM configuration, for profiles that keep their key in a token:
    /// `-m/-P/-S` and `/etc/sota/hsm`. Read once.
    pub fn hsm(&mut self) -> Option<&HsmSettings> {
        if self.hsm.is_none() {
            let hsm = hsm::resolve(self);
            self.hsm = Some(hsm);
        }
        self.hsm.as_ref().and_then(Option::as_ref)
    }

    /// Flags given on the command line that belong to another profile.
    fn foreign_flags(&self, profile: ProfileName, uses_key: bool) -> Vec<String> {
        use clap::CommandFactory;
        // Built only to name a foreign flag, which a normal run has none of.
        let command = std::cell::LazyCell::new(Cli::command);
        let long_name = |id: &str| {
            command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_long())
                .map_or_else(|| id.to_string(), |l| format!("--{l}"))
        };
        let mut foreign = Vec::new();
        for id in &self.given {
            match crate::cli::profile_of_flag(id) {
                Some(owner) if owner != profile => foreign.push(format!(
                    "{} belongs to the {} profile, not {}",
                    long_name(id),
                    owner.as_str(),
                    profile.as_str()
                )),
                None if !uses_key
                    && matches!(id.as_str(), "hsm_module" | "hsm_pin" | "hsm_so_pin") =>
                {
                    foreign.push(format!(
                        "{} is not used by the {} profile, which keeps no key",
                        long_name(id),
                        profile.as_str()
                    ))
                }
                _ => {}
            }
        }
        foreign
    }

    /// The profile to run: `--profile`, `REGISTER_PROFILE`, the config
    /// file's `profile`, else `lmp`.
    pub fn profile(&mut self) -> ProfileName {
        if let Some(profile) = self.cli.profile {
            self.origin("profile", "command line");
            return profile;
        }
        let (name, origin) = if let Some(name) = self.env("REGISTER_PROFILE") {
            (name.to_string(), "environment REGISTER_PROFILE".to_string())
        } else if let Some(file) = &self.file {
            match &file.profile {
                Some(name) => (name.clone(), format!("{} profile", file.path.display())),
                None => return ProfileName::default(),
            }
        } else {
            return ProfileName::default();
        };
        match ProfileName::parse(&name) {
            Ok(profile) => {
                self.origin("profile", origin);
                profile
            }
            Err(e) => {
                self.problem(format!("{origin}: {e}"));
                ProfileName::default()
            }
        }
    }

    /// The shared settings and the end of resolution: every problem found
    /// (here or by the profile) is reported at once.
    pub fn finish(mut self, profile: ProfileName, uses_key: bool) -> Result<Common> {
        for foreign in self.foreign_flags(profile, uses_key) {
            self.problem(foreign);
        }
        let cli = self.cli;
        let hsm = if uses_key { self.hsm().cloned() } else { None };
        let mut retry = if cli.boot {
            RetryPolicy::boot()
        } else {
            RetryPolicy::interactive()
        };
        if let Some(seconds) = cli.retry_deadline {
            retry.deadline = Duration::from_secs(seconds);
        }
        if !self.problems.is_empty() {
            return Err(Error::config(problem_report(&self.problems)));
        }
        Ok(Common {
            boot: cli.boot,
            force: cli.force.unwrap_or(false),
            hsm,
            retry,
            request_timeout: Duration::from_secs(cli.request_timeout),
            clock_wait: Duration::from_secs(if cli.boot { 15 * 60 } else { 30 }),
            origins: self.origins,
            warnings: self.warnings,
        })
    }
}

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
pub(crate) fn readable_by_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// Splits a comma-separated list, dropping empty entries.
pub(crate) fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// An http(s) URL with a host.
pub(crate) fn parse_url(what: &str, value: &str) -> std::result::Result<reqwest::Url, String> {
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
