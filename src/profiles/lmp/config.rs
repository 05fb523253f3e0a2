//! The LmP profile's settings: the C++ tool's flags and environment, the
//! `[lmp]` table of the config file, the device's own files, and the build
//! defaults, in that order.

use crate::cli::parse_bool_word;
use crate::config::{parse_single_line, parse_url, split_list, CaBundle, Reported, Resolver};
use crate::secret::Secret;
use serde::Deserialize;
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
    /// Whether the image runs compose apps (the `composeapp` PACKAGECONFIG,
    /// named after the C++ tool's build option): `0` means it has none, so
    /// the agent does not configure compose apps unless it is asked to.
    /// Unset (a stand-alone build) means it does.
    pub const DOCKER_COMPOSE_APP: Option<&str> = option_env!("DOCKER_COMPOSE_APP");
}

pub const DEFAULT_TOKEN_HEADER: &str = "OSF-TOKEN";

/// Paths of the device's own files, relative to `--root`.
mod paths {
    pub const SOTA_DIR: &str = "var/sota";
    pub const AKLITE_LOCK: &str = "var/lock/aklite.lock";
    pub const TOKEN_FILE: &str = "etc/lmp-device-register-token";
    pub const TAG_FILE: &str = "etc/sota/tag";
    pub const HOSTNAME: &str = "etc/hostname";
    pub const COMPOSE_APPS: &str = "var/sota/compose-apps";
    pub const RESET_APPS: &str = "var/sota/reset-apps";
    /// fioconfig's own defaults for its configuration and secrets.
    pub const FIOCONFIG_CONF_D: &str = "usr/lib/sota/conf.d";
    pub const FIOCONFIG_ETC_CONF_D: &str = "etc/sota/conf.d";
    pub const FIOCONFIG_SECRETS: &str = "run/secrets";
}

/// The `[lmp]` table of the config file.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct Table {
    device_api: Option<String>,
    oauth_api: Option<String>,
    factory: Option<String>,
    tags: Option<String>,
    hardware_id: Option<String>,
    name: Option<String>,
    group: Option<String>,
    production: Option<bool>,
    apps: Option<Vec<String>>,
    token_file: Option<PathBuf>,
    token_header: Option<String>,
    sota_dir: Option<PathBuf>,
    cacert: Option<PathBuf>,
    start_daemon: Option<bool>,
    use_ostree_server: Option<bool>,
}

/// Where fioconfig finds its configuration and puts its secrets: the same
/// places this run used, so a check-in under `--root` or `-d` reads what the
/// agent wrote, not the host's defaults.
#[derive(Debug, Clone)]
pub struct Fioconfig {
    /// `SOTA_DIR` for fioconfig: its config paths, in its own order.
    pub config_paths: Vec<PathBuf>,
    /// `SECRETS_DIR`; fioconfig does not create it.
    pub secrets_dir: PathBuf,
}

#[derive(Debug)]
pub struct LmpSettings {
    pub sota_dir: PathBuf,
    pub aklite_lock: PathBuf,
    pub fioconfig: Fioconfig,
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
    /// CA bundle trusted for HTTPS instead of the system roots.
    pub cacert: Option<CaBundle>,
}

/// A UUID in the 8-4-4-4-12 hex form the registration API expects.
pub fn is_canonical_uuid(value: &str) -> bool {
    value.len() == 36 && uuid::Uuid::try_parse(value).is_ok()
}

/// Characters a user PIN may hold: aktualizr-lite reads `sota.toml` with an
/// ini parser that drops every `"` and knows no escapes, so a PIN with a
/// quote, an apostrophe or a backslash (or spaces, which it trims) would be
/// read as another PIN than the one the token has.
fn pin_is_readable_by_aktualizr(pin: &str) -> bool {
    pin.bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'\\'))
}

/// Names in a directory, sorted; `None` when the directory does not exist.
fn list_dir_names(dir: &Path) -> Result<Option<Vec<String>>, String> {
    let problem = |e: &dyn std::fmt::Display| format!("{}: {e}", dir.display());
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(problem(&e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| problem(&e))?;
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| problem(&"holds an entry whose name is not UTF-8"))?;
        if !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(Some(names))
}

/// The compose apps to configure and the restorable apps, if any. Asked for
/// (flag, `APPS`, the config file) they are always configured; otherwise they
/// come from the image's preloaded apps, which an image built without compose
/// apps does not have: the C++ tool built without them sends no compose-app
/// settings at all, and neither does the agent then.
fn resolve_apps(
    r: &mut Resolver<'_>,
    table_apps: Option<&Vec<String>>,
    image_has_compose_apps: bool,
) -> (Option<Vec<String>>, Option<Vec<String>>) {
    let cli = r.cli;
    let apps = if let Some(a) = &cli.apps {
        Some(split_list(a))
    } else if let Some(a) = r.env("APPS") {
        Some(split_list(a))
    } else if let Some(a) = table_apps {
        Some(a.clone())
    } else if image_has_compose_apps {
        list_dir_names(&r.path(paths::COMPOSE_APPS)).unwrap_or_else(|e| {
            r.problem(e);
            None
        })
    } else {
        None
    };
    let restorable_apps = match &cli.restorable_apps {
        Some(list) => Some(split_list(list)),
        None if image_has_compose_apps && r.path(paths::RESET_APPS).exists() => Some(Vec::new()),
        None => None,
    };
    (apps, restorable_apps)
}

fn url(r: &mut Resolver<'_>, what: &str, value: &str) -> Option<reqwest::Url> {
    parse_url(what, value).map_err(|e| r.problem(e)).ok()
}

/// `-d`, else `sota_dir` of the `[lmp]` table, else `/var/sota`.
fn sota_dir(r: &Resolver<'_>, configured: Option<&PathBuf>) -> PathBuf {
    match (&r.cli.sota_dir, configured) {
        (Some(dir), _) | (None, Some(dir)) => dir.clone(),
        (None, None) => r.path(paths::SOTA_DIR),
    }
}

/// The sota dir alone, for `--status`, which needs no other setting.
pub fn locate(r: &mut Resolver<'_>) -> PathBuf {
    let table: Table = r.section("lmp");
    let configured = r
        .configured_path("lmp", "sota_dir", table.sota_dir)
        .unwrap_or_default();
    sota_dir(r, configured.as_ref())
}

pub fn resolve(r: &mut Resolver<'_>) -> Option<LmpSettings> {
    let cli = r.cli;
    let mut table: Table = r.section("lmp");
    let key = |r: &Resolver<'_>, name: &str| r.file_key("lmp", name);
    for (name, path) in [
        ("sota_dir", &mut table.sota_dir),
        ("cacert", &mut table.cacert),
    ] {
        *path = r
            .configured_path("lmp", name, path.take())
            .unwrap_or_default();
    }
    let token_file = r.configured_path("lmp", "token_file", table.token_file.take());
    let sota_dir = sota_dir(r, table.sota_dir.as_ref());

    // Factory.
    let factory = if let Some(f) = &cli.factory {
        Some((f.clone(), "command line".to_string()))
    } else if let Some(f) = r.env("DEVICE_FACTORY") {
        Some((f.to_string(), "environment DEVICE_FACTORY".to_string()))
    } else if let Some(f) = &table.factory {
        Some((f.clone(), key(r, "factory")))
    } else {
        r.os_release("LMP_FACTORY")
    };
    let factory = match factory {
        Some((f, from)) if !matches!(f.trim(), "" | "lmp") => {
            r.origin("factory", from);
            Some(f.trim().to_string())
        }
        _ => {
            r.problem(format!(
                "missing factory: pass --factory, set DEVICE_FACTORY or factory in [lmp] of the config file, or build the image with LMP_FACTORY in {} (\"lmp\" is not a factory)",
                r.path(crate::config::OS_RELEASE).display()
            ));
            None
        }
    };

    // Tags.
    let tag_path = r.path(paths::TAG_FILE);
    let mut tag_broken = false;
    let tags = if let Some(t) = &cli.tags {
        Some((t.trim().to_string(), "command line".to_string()))
    } else if let Some(t) = &table.tags {
        Some((t.trim().to_string(), key(r, "tags")))
    } else {
        match r.read_optional(&tag_path) {
            Ok(Some(text)) => match parse_single_line(&text, "the tag file") {
                Ok(tag) => Some((tag, tag_path.display().to_string())),
                Err(e) => {
                    r.problem(format!("{}: {e}", tag_path.display()));
                    tag_broken = true;
                    None
                }
            },
            Ok(None) => r
                .os_release("LMP_FACTORY_TAG")
                .map(|(t, from)| (t.trim().to_string(), from)),
            Err(Reported) => {
                tag_broken = true;
                None
            }
        }
    };
    let tags = match tags {
        Some((tags, from)) if !tags.is_empty() => {
            if tags.chars().any(|c| c.is_whitespace() || c.is_control()) {
                r.problem(format!("tag {tags:?} ({from}) must not contain whitespace"));
            }
            r.origin("tags", from);
            Some(tags)
        }
        Some(_) | None => {
            if !tag_broken {
                r.problem(format!(
                    "missing tag: pass --tags, set tags in [lmp] of the config file, or provide {} or LMP_FACTORY_TAG in {}",
                    tag_path.display(),
                    r.path(crate::config::OS_RELEASE).display()
                ));
            }
            None
        }
    };

    // Hardware id: the image's MACHINE, built in or from os-release.
    let hardware_id = if let Some(h) = &cli.hwid {
        Some((h.clone(), "command line".to_string()))
    } else if let Some(h) = &table.hardware_id {
        Some((h.clone(), key(r, "hardware_id")))
    } else if let Some(h) = build::HARDWARE_ID {
        Some((h.to_string(), "build default".to_string()))
    } else {
        r.os_release("LMP_MACHINE")
    };
    let hardware_id = match hardware_id {
        Some((h, from)) if !h.trim().is_empty() => {
            r.origin("hardware id", from);
            Some(h.trim().to_string())
        }
        _ => {
            r.problem(format!(
                "missing hardware id: pass --hwid or set hardware_id in [lmp] of the config file (this build has no HARDWARE_ID default and {} has no LMP_MACHINE)",
                r.path(crate::config::OS_RELEASE).display()
            ));
            None
        }
    };

    // UUID.
    if let Some(uuid) = &cli.uuid {
        if uuid.is_empty() || uuid.chars().any(|c| c.is_control() || c == '/') {
            r.problem("the UUID must be non-empty printable text");
        } else if !is_canonical_uuid(uuid) {
            if cli.validate_uuid.unwrap_or(true) {
                r.problem(format!(
                    "invalid UUID {uuid:?}: expected the 8-4-4-4-12 hex form (pass --validate-uuid 0 to allow it anyway)"
                ));
            } else {
                r.warn(format!(
                    "UUID {uuid:?} is not in 8-4-4-4-12 hex form; using it because --validate-uuid 0"
                ));
            }
        }
    }

    // Name.
    let name = if let Some(n) = &cli.name {
        r.origin("name", "command line");
        Some(n.clone())
    } else if let Some(n) = &table.name {
        r.origin("name", key(r, "name"));
        Some(n.clone())
    } else if r.env_bool("USE_HOSTNAME").unwrap_or(false) {
        let path = r.path(paths::HOSTNAME);
        match r.read_optional(&path) {
            Ok(Some(text)) => match parse_single_line(&text, "the hostname file") {
                Ok(host) => {
                    r.origin("name", path.display().to_string());
                    Some(host)
                }
                Err(e) => {
                    r.problem(format!("{}: {e}", path.display()));
                    None
                }
            },
            Ok(None) => {
                r.problem(format!(
                    "{}: USE_HOSTNAME is set but the file does not exist",
                    path.display()
                ));
                None
            }
            Err(Reported) => None,
        }
    } else {
        None
    };
    if name.as_deref().is_some_and(str::is_empty) {
        r.problem("the device name must not be empty");
    }

    // Production: command line, PRODUCTION, the config file, the build.
    let production = match cli.production {
        Some(p) => p,
        None => match r.env_bool("PRODUCTION").or(table.production) {
            Some(p) => p,
            None => match build::PRODUCTION.map(parse_bool_word).transpose() {
                Ok(p) => p.unwrap_or(false),
                Err(e) => {
                    r.problem(format!("build-time PRODUCTION: {e}"));
                    false
                }
            },
        },
    };

    let image_has_compose_apps = match build::DOCKER_COMPOSE_APP.map(parse_bool_word) {
        None => true,
        Some(Ok(on)) => on,
        Some(Err(e)) => {
            r.problem(format!("build-time DOCKER_COMPOSE_APP: {e}"));
            true
        }
    };
    let (apps, restorable_apps) = resolve_apps(r, table.apps.as_ref(), image_has_compose_apps);

    // Token: flag, then a token file (flag, TOKEN_FILE, config, default path
    // if present).
    let token = if let Some(token) = r.secret_flag(cli.api_token.as_ref(), "--api-token") {
        r.origin("api token", "command line");
        Some(token)
    } else {
        // Where a path that was asked for came from, to say so when it is missing.
        let (path, asked_by) = match (&cli.api_token_file, r.env("TOKEN_FILE"), &token_file) {
            (Some(p), _, _) => (p.clone(), Some("--api-token-file".to_string())),
            (None, Some(p), _) => (PathBuf::from(p), Some("environment TOKEN_FILE".to_string())),
            (None, None, Ok(Some(p))) => (p.clone(), Some(key(r, "token_file"))),
            (None, None, Ok(None) | Err(Reported)) => (r.path(paths::TOKEN_FILE), None),
        };
        let read = match (&asked_by, token_file) {
            // The configured file was refused already; the default is not
            // what was asked for.
            (None, Err(Reported)) => Err(Reported),
            _ => r.secret_line(&path, "the token file", "api token"),
        };
        match read {
            Ok(Some(token)) => Some(token),
            Ok(None) => {
                if let Some(origin) = asked_by {
                    r.problem(format!(
                        "{origin}: token file {} does not exist",
                        path.display()
                    ));
                }
                None
            }
            Err(Reported) => None,
        }
    };
    let token_header = cli
        .api_token_header
        .clone()
        .or_else(|| table.token_header.clone())
        .unwrap_or_else(|| DEFAULT_TOKEN_HEADER.to_string());
    if reqwest::header::HeaderName::from_bytes(token_header.as_bytes()).is_err() {
        r.problem(format!("{token_header:?} is not a valid HTTP header name"));
    }

    let device_api = match (&cli.device_api, r.env("DEVICE_API"), &table.device_api) {
        (Some(u), _, _) => url(r, "--device-api", u),
        (None, Some(u), _) => url(r, "DEVICE_API", u),
        (None, None, Some(u)) => {
            let what = key(r, "device_api");
            url(r, &what, u)
        }
        (None, None, None) => url(r, "the built-in DEVICE_API", build::DEVICE_API),
    };
    let oauth_base = match (&cli.oauth_api, r.env("OAUTH_BASE"), &table.oauth_api) {
        (Some(u), _, _) => url(r, "--oauth-api", u),
        (None, Some(u), _) => url(r, "OAUTH_BASE", u),
        (None, None, Some(u)) => {
            let what = key(r, "oauth_api");
            url(r, &what, u)
        }
        (None, None, None) => url(r, "the built-in OAUTH_BASE", build::OAUTH_BASE),
    };

    let cacert = match r.env("DEVICE_API_CACERT") {
        Some(p) if cli.cacert.is_none() => {
            r.ca_bundle(PathBuf::from(p), "environment DEVICE_API_CACERT")
        }
        _ => r.cacert("lmp", table.cacert.as_ref()),
    };

    if let Some(hsm) = r.hsm() {
        if !pin_is_readable_by_aktualizr(hsm.pin.expose()) {
            r.problem(
                "the HSM user PIN may only hold printable ASCII without spaces, quotes (\" ') or backslashes: aktualizr-lite reads sota.toml with a parser that would change such a PIN",
            );
        }
    }
    if cli.mlock_all.is_some() {
        r.warn("--mlock-all is accepted for compatibility and has no effect");
    }

    Some(LmpSettings {
        aklite_lock: r.path(paths::AKLITE_LOCK),
        fioconfig: Fioconfig {
            config_paths: vec![
                r.path(paths::FIOCONFIG_CONF_D),
                sota_dir.join("sota.toml"),
                r.path(paths::FIOCONFIG_ETC_CONF_D),
            ],
            secrets_dir: r.path(paths::FIOCONFIG_SECRETS),
        },
        sota_dir,
        device_api: device_api?,
        oauth_base: oauth_base?,
        token,
        token_header,
        factory: factory?,
        tags: tags?,
        hardware_id: hardware_id?,
        uuid: cli.uuid.clone(),
        name,
        group: cli
            .device_group
            .clone()
            .or(table.group)
            .filter(|g| !g.is_empty()),
        production,
        apps,
        restorable_apps,
        start_daemon: cli.start_daemon.or(table.start_daemon).unwrap_or(true),
        use_ostree_server: cli
            .use_ostree_server
            .or(table.use_ostree_server)
            .unwrap_or(true),
        cacert,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cli::Cli;
    use crate::config::Environment;

    /// Apps and restorable apps resolved under a root that has preloaded
    /// compose apps and the reset-apps marker.
    fn apps_under_preloaded_root(
        args: &[&str],
        env: &[(&str, &str)],
        image_has_compose_apps: bool,
    ) -> (Option<Vec<String>>, Option<Vec<String>>) {
        let root = tempfile::tempdir().unwrap();
        for app in ["shellhttpd", "nginx"] {
            std::fs::create_dir_all(root.path().join(paths::COMPOSE_APPS).join(app)).unwrap();
        }
        std::fs::write(root.path().join(paths::RESET_APPS), "").unwrap();
        let root_arg = root.path().to_str().unwrap();
        let argv = ["lmp-device-register", "--root", root_arg]
            .into_iter()
            .chain(args.iter().copied());
        let cli = <Cli as clap::Parser>::parse_from(argv);
        let env = Environment::from_pairs(env.iter().copied());
        let mut r = Resolver::new(&cli, Vec::new(), &env).unwrap();
        resolve_apps(&mut r, None, image_has_compose_apps)
    }

    #[test]
    fn preloaded_compose_apps_are_configured_only_in_an_image_with_compose_apps() {
        let apps = |list: &[&str]| Some(list.iter().map(|a| a.to_string()).collect());
        assert_eq!(
            apps_under_preloaded_root(&[], &[], true),
            (apps(&["nginx", "shellhttpd"]), apps(&[]))
        );
        assert_eq!(apps_under_preloaded_root(&[], &[], false), (None, None));
        // Asked for, they are configured either way.
        for image_has_compose_apps in [true, false] {
            assert_eq!(
                apps_under_preloaded_root(
                    &["--apps", "a,b", "--restorable-apps", "a"],
                    &[],
                    image_has_compose_apps
                ),
                (apps(&["a", "b"]), apps(&["a"]))
            );
            assert_eq!(
                apps_under_preloaded_root(&[], &[("APPS", "c")], image_has_compose_apps).0,
                apps(&["c"])
            );
        }
    }

    #[test]
    fn pins_aktualizr_lite_would_misread_are_refused() {
        for good in ["87654321", "a-b_c.d!#%&()*+,/:;<=>?@[]^{|}~$`"] {
            assert!(pin_is_readable_by_aktualizr(good), "{good}");
        }
        for bad in ["a\"b", "a'b", "a\\b", "a b", "pïn", "a\tb"] {
            assert!(!pin_is_readable_by_aktualizr(bad), "{bad}");
        }
    }
}
