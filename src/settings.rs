//! The one place where flags, environment, files and build defaults are
//! resolved into typed, validated settings. Nothing else in the agent reads
//! the environment or these configuration files.

use crate::cli::{parse_bool_word, Cli};
use crate::error::{Error, Result};
use crate::localfiles::{
    lookup, parse_shell_vars, parse_single_line, read_optional, read_secret_optional,
};
use crate::retry::RetryPolicy;
use crate::secret::Secret;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Build-time defaults, set by the Yocto recipe through the environment of
/// `cargo build` (see README.md, "Build-time defaults").
pub mod build {
    pub const HARDWARE_ID: Option<&str> = option_env!("HARDWARE_ID");
    pub const DEVICE_API: &str = match option_env!("DEVICE_API") {
        Some(url) => url,
        None => "https://api.foundries.io/ota/devices/",
    };
    pub const OAUTH_BASE: &str = match option_env!("OAUTH_BASE") {
        Some(url) => url,
        None => "https://app.foundries.io/oauth",
    };
    /// `PRODUCTION` at build time; parsed with the same words as at run time.
    pub const PRODUCTION: Option<&str> = option_env!("PRODUCTION");
}

pub const DEFAULT_TOKEN_HEADER: &str = "OSF-TOKEN";

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

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Environment(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// A set, non-empty variable.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// systemd connects stdout/stderr of a service to the journal and says so
    /// in `JOURNAL_STREAM`.
    pub fn under_journald(&self) -> bool {
        self.get("JOURNAL_STREAM").is_some()
    }
}

#[derive(Debug, Clone)]
pub struct HsmSettings {
    pub module: PathBuf,
    pub pin: Secret,
    pub so_pin: Secret,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub root: PathBuf,
    pub sota_dir: PathBuf,
    pub aklite_lock: PathBuf,
    /// Where fioconfig keeps decrypted secrets; it does not create it itself.
    pub fioconfig_secrets_dir: PathBuf,
    pub device_api: reqwest::Url,
    pub oauth_base: reqwest::Url,
    pub token: Option<Secret>,
    pub token_header: String,
    pub factory: String,
    pub tags: String,
    pub hardware_id: String,
    /// The UUID asked for on the command line; otherwise chosen later.
    pub uuid: Option<String>,
    pub name: Option<String>,
    pub group: Option<String>,
    pub production: bool,
    pub apps: Option<Vec<String>>,
    /// `Some(empty)` turns restorable apps on for every app.
    pub restorable_apps: Option<Vec<String>>,
    pub start_daemon: bool,
    pub use_ostree_server: bool,
    pub force: bool,
    pub json: bool,
    pub hsm: Option<HsmSettings>,
    /// First-boot mode (see `--boot`).
    pub boot: bool,
    pub retry: RetryPolicy,
    pub request_timeout: std::time::Duration,
    /// How long to wait for time sync before making a CSR.
    pub clock_wait: std::time::Duration,
    /// CA bundle trusted for HTTPS instead of the system roots.
    pub cacert: Option<PathBuf>,
    /// Where each setting came from, for the technician's log.
    pub origins: Vec<(&'static str, String)>,
    /// Things worth a warning (secrets on argv, ...), logged once logging is up.
    pub warnings: Vec<String>,
}

/// Paths of the device's own files, relative to `--root`.
mod paths {
    pub const SOTA_DIR: &str = "var/sota";
    pub const AKLITE_LOCK: &str = "var/lock/aklite.lock";
    pub const FIOCONFIG_SECRETS: &str = "run/secrets";
    pub const TOKEN_FILE: &str = "etc/lmp-device-register-token";
    pub const TAG_FILE: &str = "etc/sota/tag";
    pub const HSM_FILE: &str = "etc/sota/hsm";
    pub const OS_RELEASE: &str = "etc/os-release";
    pub const HOSTNAME: &str = "etc/hostname";
    pub const COMPOSE_APPS: &str = "var/sota/compose-apps";
    pub const RESET_APPS: &str = "var/sota/reset-apps";
}

fn parse_env_bool(env: &Environment, key: &str) -> Result<Option<bool>> {
    env.get(key)
        .map(|v| parse_bool_word(v).map_err(|e| Error::config(format!("{key}: {e}"))))
        .transpose()
}

fn parse_url(what: &str, value: &str) -> Result<reqwest::Url> {
    let url = reqwest::Url::parse(value)
        .map_err(|e| Error::config(format!("{what} {value:?} is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(Error::config(format!(
            "{what} {value:?} must be an http:// or https:// URL"
        )));
    }
    Ok(url)
}

/// A UUID in the 8-4-4-4-12 hex form the registration API expects.
pub fn is_canonical_uuid(value: &str) -> bool {
    value.len() == 36 && uuid::Uuid::try_parse(value).is_ok()
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn config_file_error(path: &Path, problem: impl std::fmt::Display) -> Error {
    Error::config(format!("{}: {problem}", path.display()))
}

fn secret_from_flag(
    value: Option<&String>,
    flag: &str,
    warnings: &mut Vec<String>,
) -> Option<Secret> {
    value.map(|v| {
        warnings.push(format!(
            "{flag} puts a secret on the command line, readable by every local user; use the configuration file instead"
        ));
        Secret::new(v.clone())
    })
}

impl Settings {
    pub fn resolve(cli: &Cli, env: &Environment) -> Result<Settings> {
        let root = cli.root.clone().unwrap_or_else(|| PathBuf::from("/"));
        let under_root = |rel: &str| root.join(rel);
        let mut origins: Vec<(&'static str, String)> = Vec::new();
        let mut warnings = Vec::new();

        let sota_dir = cli
            .sota_dir
            .clone()
            .unwrap_or_else(|| under_root(paths::SOTA_DIR));

        let os_release_path = under_root(paths::OS_RELEASE);
        let os_release = match read_optional(&os_release_path)? {
            Some(text) => {
                parse_shell_vars(&text).map_err(|e| config_file_error(&os_release_path, e))?
            }
            None => Vec::new(),
        };

        // Factory.
        let (factory, from) = if let Some(f) = &cli.factory {
            (f.clone(), "command line".to_string())
        } else if let Some(f) = env.get("DEVICE_FACTORY") {
            (f.to_string(), "environment DEVICE_FACTORY".to_string())
        } else if let Some(f) = lookup(&os_release, "LMP_FACTORY") {
            (f.to_string(), os_release_path.display().to_string())
        } else {
            (String::new(), String::new())
        };
        let factory = factory.trim().to_string();
        if factory.is_empty() || factory == "lmp" {
            return Err(Error::config(
                "missing factory: pass --factory, set DEVICE_FACTORY, or build the image with LMP_FACTORY in /etc/os-release (\"lmp\" is not a factory)",
            ));
        }
        origins.push(("factory", from));

        // Tags.
        let tag_path = under_root(paths::TAG_FILE);
        let (tags, from) = if let Some(t) = &cli.tags {
            (t.trim().to_string(), "command line".to_string())
        } else if let Some(text) = read_optional(&tag_path)? {
            let tag = parse_single_line(&text, "the tag file")
                .map_err(|e| config_file_error(&tag_path, e))?;
            (tag, tag_path.display().to_string())
        } else if let Some(t) = lookup(&os_release, "LMP_FACTORY_TAG") {
            (t.trim().to_string(), os_release_path.display().to_string())
        } else {
            (String::new(), String::new())
        };
        if tags.is_empty() {
            return Err(Error::config(
                "missing tag: pass --tags, or provide /etc/sota/tag or LMP_FACTORY_TAG in /etc/os-release",
            ));
        }
        if tags.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::config(format!(
                "tag {tags:?} ({from}) must not contain whitespace"
            )));
        }
        origins.push(("tags", from));

        // Hardware id.
        let (hardware_id, from) = match (&cli.hwid, build::HARDWARE_ID) {
            (Some(h), _) => (h.clone(), "command line"),
            (None, Some(h)) => (h.to_string(), "build default"),
            (None, None) => {
                return Err(Error::config(
                    "missing hardware id: pass --hwid (this build has no HARDWARE_ID default)",
                ))
            }
        };
        if hardware_id.trim().is_empty() {
            return Err(Error::config("hardware id must not be empty"));
        }
        origins.push(("hardware id", from.to_string()));

        // UUID.
        let validate_uuid = cli.validate_uuid.unwrap_or(true);
        if let Some(uuid) = &cli.uuid {
            if !is_canonical_uuid(uuid) {
                if validate_uuid {
                    return Err(Error::config(format!(
                        "invalid UUID {uuid:?}: expected the 8-4-4-4-12 hex form (pass --validate-uuid 0 to allow it anyway)"
                    )));
                }
                warnings.push(format!(
                    "UUID {uuid:?} is not in 8-4-4-4-12 hex form; using it because --validate-uuid 0"
                ));
            }
            if uuid.is_empty() || uuid.chars().any(|c| c.is_control() || c == '/') {
                return Err(Error::config("the UUID must be non-empty printable text"));
            }
        }

        // Name.
        let name = if let Some(n) = &cli.name {
            origins.push(("name", "command line".into()));
            Some(n.clone())
        } else if parse_env_bool(env, "USE_HOSTNAME")?.unwrap_or(false) {
            let path = under_root(paths::HOSTNAME);
            let text = read_optional(&path)?.ok_or_else(|| {
                config_file_error(&path, "USE_HOSTNAME is set but the file does not exist")
            })?;
            let host = parse_single_line(&text, "the hostname file")
                .map_err(|e| config_file_error(&path, e))?;
            origins.push(("name", path.display().to_string()));
            Some(host)
        } else {
            None
        };
        if name.as_deref().is_some_and(str::is_empty) {
            return Err(Error::config("the device name must not be empty"));
        }

        // Production: command line, then PRODUCTION, then the build default.
        let production = match cli.production {
            Some(p) => p,
            None => match parse_env_bool(env, "PRODUCTION")? {
                Some(p) => p,
                None => build::PRODUCTION
                    .map(parse_bool_word)
                    .transpose()
                    .map_err(|e| Error::config(format!("build-time PRODUCTION: {e}")))?
                    .unwrap_or(false),
            },
        };

        // Apps.
        let apps = if let Some(a) = &cli.apps {
            Some(split_list(a))
        } else if let Some(a) = env.get("APPS") {
            Some(split_list(a))
        } else {
            list_dir_names(&under_root(paths::COMPOSE_APPS))?
        };
        let restorable_apps = match &cli.restorable_apps {
            Some(list) => Some(split_list(list)),
            None if under_root(paths::RESET_APPS).exists() => Some(Vec::new()),
            None => None,
        };

        // Token: flag, token file (flag, TOKEN_FILE, default path if present).
        let token = if let Some(token) =
            secret_from_flag(cli.api_token.as_ref(), "--api-token", &mut warnings)
        {
            origins.push(("api token", "command line".into()));
            Some(token)
        } else {
            let (path, required) = match (&cli.api_token_file, env.get("TOKEN_FILE")) {
                (Some(p), _) => (p.clone(), true),
                (None, Some(p)) => (PathBuf::from(p), true),
                (None, None) => (under_root(paths::TOKEN_FILE), false),
            };
            match read_secret_optional(&path)?.map(zeroize::Zeroizing::new) {
                Some(text) => {
                    let token = parse_single_line(&text, "the token file")
                        .map_err(|e| config_file_error(&path, e))?;
                    warn_if_readable_by_others(&path, &mut warnings);
                    origins.push(("api token", path.display().to_string()));
                    Some(Secret::new(token))
                }
                None if required => {
                    return Err(config_file_error(&path, "token file does not exist"))
                }
                None => None,
            }
        };
        if token.as_ref().is_some_and(Secret::is_empty) {
            return Err(Error::config("the API token must not be empty"));
        }
        let token_header = cli
            .api_token_header
            .clone()
            .unwrap_or_else(|| DEFAULT_TOKEN_HEADER.to_string());
        if reqwest::header::HeaderName::from_bytes(token_header.as_bytes()).is_err() {
            return Err(Error::config(format!(
                "{token_header:?} is not a valid HTTP header name"
            )));
        }

        let device_api = match (&cli.device_api, env.get("DEVICE_API")) {
            (Some(u), _) => parse_url("--device-api", u)?,
            (None, Some(u)) => parse_url("DEVICE_API", u)?,
            (None, None) => parse_url("the built-in DEVICE_API", build::DEVICE_API)?,
        };
        let oauth_base = match (&cli.oauth_api, env.get("OAUTH_BASE")) {
            (Some(u), _) => parse_url("--oauth-api", u)?,
            (None, Some(u)) => parse_url("OAUTH_BASE", u)?,
            (None, None) => parse_url("the built-in OAUTH_BASE", build::OAUTH_BASE)?,
        };

        let hsm = resolve_hsm(
            cli,
            &under_root(paths::HSM_FILE),
            &mut warnings,
            &mut origins,
        )?;

        let mut retry = if cli.boot {
            RetryPolicy::boot()
        } else {
            RetryPolicy::interactive()
        };
        if let Some(seconds) = cli.retry_deadline {
            retry.deadline = std::time::Duration::from_secs(seconds);
        }

        if cli.mlock_all.is_some() {
            warnings.push("--mlock-all is accepted for compatibility and has no effect".into());
        }

        Ok(Settings {
            aklite_lock: under_root(paths::AKLITE_LOCK),
            fioconfig_secrets_dir: under_root(paths::FIOCONFIG_SECRETS),
            root,
            sota_dir,
            device_api,
            oauth_base,
            token,
            token_header,
            factory,
            tags,
            hardware_id,
            uuid: cli.uuid.clone(),
            name,
            group: cli.device_group.clone().filter(|g| !g.is_empty()),
            production,
            apps,
            restorable_apps,
            start_daemon: cli.start_daemon.unwrap_or(true),
            use_ostree_server: cli.use_ostree_server.unwrap_or(true),
            force: cli.force.unwrap_or(false),
            json: cli.json,
            hsm,
            boot: cli.boot,
            retry,
            request_timeout: std::time::Duration::from_secs(cli.request_timeout),
            clock_wait: std::time::Duration::from_secs(if cli.boot { 15 * 60 } else { 30 }),
            cacert: cli
                .cacert
                .clone()
                .or_else(|| env.get("DEVICE_API_CACERT").map(PathBuf::from)),
            origins,
            warnings,
        })
    }
}

fn warn_if_readable_by_others(path: &Path, warnings: &mut Vec<String>) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warnings.push(format!(
                "{} is readable by group or others (mode {mode:o}); it should be 0600",
                path.display()
            ));
        }
    }
}

/// Names in a directory, sorted; `None` when the directory does not exist.
fn list_dir_names(dir: &Path) -> Result<Option<Vec<String>>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(config_file_error(dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| config_file_error(dir, e))?;
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| config_file_error(dir, "holds an entry whose name is not UTF-8"))?;
        if !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(Some(names))
}

fn resolve_hsm(
    cli: &Cli,
    hsm_file: &Path,
    warnings: &mut Vec<String>,
    origins: &mut Vec<(&'static str, String)>,
) -> Result<Option<HsmSettings>> {
    let pin = secret_from_flag(cli.hsm_pin.as_ref(), "--hsm-pin", warnings);
    let so_pin = secret_from_flag(cli.hsm_so_pin.as_ref(), "--hsm-so-pin", warnings);

    if let Some(module) = &cli.hsm_module {
        let (pin, so_pin) = match (pin, so_pin) {
            (Some(pin), Some(so_pin)) => (pin, so_pin),
            (pin, so_pin) => {
                // The PINs may live in the hsm file while the module is given on
                // the command line.
                let from_file = read_hsm_file(hsm_file)?.unwrap_or_default();
                match (pin.or(from_file.pin), so_pin.or(from_file.so_pin)) {
                    (Some(pin), Some(so_pin)) => (pin, so_pin),
                    _ => {
                        return Err(Error::config(
                            "--hsm-module needs both a user PIN and an SO PIN (-P/-S or HSM_PIN/HSM_SOPIN in /etc/sota/hsm)",
                        ))
                    }
                }
            }
        };
        origins.push(("hsm", "command line".into()));
        return Ok(Some(HsmSettings {
            module: module.clone(),
            pin,
            so_pin,
        }));
    }
    if pin.is_some() || so_pin.is_some() {
        return Err(Error::config(
            "--hsm-pin/--hsm-so-pin given without --hsm-module",
        ));
    }
    // A missing file means no HSM; a present one that names nothing is as
    // broken as one that names only part of the configuration.
    let Some(from_file) = read_hsm_file(hsm_file)? else {
        return Ok(None);
    };
    match (from_file.module, from_file.pin, from_file.so_pin) {
        (Some(module), Some(pin), Some(so_pin)) => {
            origins.push(("hsm", hsm_file.display().to_string()));
            Ok(Some(HsmSettings {
                module,
                pin,
                so_pin,
            }))
        }
        (module, pin, so_pin) => {
            let missing: Vec<&str> = [
                ("HSM_MODULE", module.is_none()),
                ("HSM_PIN", pin.is_none()),
                ("HSM_SOPIN", so_pin.is_none()),
            ]
            .into_iter()
            .filter_map(|(name, absent)| absent.then_some(name))
            .collect();
            Err(config_file_error(
                hsm_file,
                format!(
                    "incomplete HSM configuration, missing {} (refusing to fall back to a software key)",
                    missing.join(", ")
                ),
            ))
        }
    }
}

/// What `/etc/sota/hsm` says; each part may be missing.
#[derive(Default, Debug)]
pub struct HsmFile {
    pub module: Option<PathBuf>,
    pub pin: Option<Secret>,
    pub so_pin: Option<Secret>,
}

/// Parses the text of `/etc/sota/hsm`. Unknown keys are ignored so that the
/// file can carry settings for other tools; empty values count as missing.
pub fn parse_hsm_file(text: &str) -> std::result::Result<HsmFile, String> {
    // Errors name only the line: echoing it could print a PIN.
    let vars = parse_shell_vars(text)?;
    let get = |key: &str| lookup(&vars, key).filter(|v| !v.is_empty());
    Ok(HsmFile {
        module: get("HSM_MODULE").map(PathBuf::from),
        pin: get("HSM_PIN").map(Secret::new),
        so_pin: get("HSM_SOPIN").map(Secret::new),
    })
}

/// `None` when the file does not exist.
fn read_hsm_file(path: &Path) -> Result<Option<HsmFile>> {
    let Some(text) = read_secret_optional(path)? else {
        return Ok(None);
    };
    let text = zeroize::Zeroizing::new(text);
    parse_hsm_file(&text)
        .map(Some)
        .map_err(|e| config_file_error(path, e))
}
