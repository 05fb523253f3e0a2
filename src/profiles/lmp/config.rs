//! The LmP profile's settings: the C++ tool's flags and environment, the
//! `[lmp]` table of the config file, the device's own files, and the build
//! defaults, in that order.

use crate::config::{
    ca_bundle, flag, long, parse_url, CaBundle, Declarations, Found, Kind, Raw, Reported, Resolver,
    Setting, Source, CACERT_FLAG,
};
use crate::secret::Secret;
use std::path::{Path, PathBuf};
use Source::{Build, Default, Env, Key, OsRelease, UnderRoot};

/// Build-time defaults, set by the Yocto recipe through the environment of
/// `cargo build` (see README.md, "Build-time defaults").
pub mod build {
    pub const HARDWARE_ID: Option<&str> = option_env!("HARDWARE_ID");
    pub const DEVICE_API: Option<&str> = option_env!("DEVICE_API");
    pub const OAUTH_BASE: Option<&str> = option_env!("OAUTH_BASE");
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

const API_TOKEN: Setting<Secret> = Setting::new(
    "api token",
    "API token (visible to every local user in the process list; prefer --api-token-file)",
    &[flag("api-token", 'T', "TOKEN")],
)
.secret();

const TOKEN_FILE: Setting<PathBuf> = Setting::new(
    "token file",
    "File holding the API token",
    &[
        long("api-token-file", "PATH"),
        Env("TOKEN_FILE"),
        Key("token_file"),
        UnderRoot(paths::TOKEN_FILE),
    ],
)
.otherwise("the OAuth device flow (on a terminal) when that file does not exist");

const TOKEN_HEADER: Setting<String> = Setting::new(
    "token header",
    "HTTP header that carries the API token",
    &[
        flag("api-token-header", 'H', "HEADER"),
        Key("token_header"),
        Default(DEFAULT_TOKEN_HEADER),
    ],
)
.check(header_name);

const FACTORY: Setting<String> = Setting::new(
    "factory",
    "Factory name (\"lmp\", what an image without one says, is refused)",
    &[
        flag("factory", 'f', "FACTORY"),
        Env("DEVICE_FACTORY"),
        Key("factory"),
        OsRelease("LMP_FACTORY"),
    ],
)
.required()
.check(factory_name);

const TAGS: Setting<String> = Setting::new(
    "tags",
    "Only apply updates from Targets with these tags",
    &[
        flag("tags", 't', "TAGS"),
        Key("tags"),
        Source::Line {
            path: paths::TAG_FILE,
            what: "the tag file",
        },
        OsRelease("LMP_FACTORY_TAG"),
    ],
)
.required()
.check(tags);

const HARDWARE_ID: Setting<String> = Setting::new(
    "hardware id",
    "Hardware id of the device type (the Yocto MACHINE)",
    &[
        flag("hwid", 'i', "HWID"),
        Key("hardware_id"),
        Build {
            var: "HARDWARE_ID",
            value: build::HARDWARE_ID,
        },
        OsRelease("LMP_MACHINE"),
    ],
)
.required()
.check(hardware_id);

const UUID: Setting<String> = Setting::new(
    "UUID",
    "Device UUID, in 8-4-4-4-12 hex form unless --validate-uuid 0",
    &[flag("uuid", 'u', "UUID")],
)
.otherwise("from the PKCS#11 slot description, else a random v4 UUID")
.check(printable_uuid);

const VALIDATE_UUID: Setting<bool> = Setting::new(
    "validate UUID",
    "Refuse a UUID that is not in 8-4-4-4-12 hex form",
    &[flag("validate-uuid", 'v', "BOOL"), Default("true")],
);

const NAME: Setting<String> = Setting::new(
    "name",
    "Device name shown in the dashboard",
    &[
        flag("name", 'n', "NAME"),
        Key("name"),
        Source::Device {
            doc: "`/etc/hostname`, when `USE_HOSTNAME` is on",
            read: hostname,
        },
    ],
)
.otherwise("the UUID")
.check(device_name);

const USE_HOSTNAME: Setting<bool> = Setting::new(
    "use hostname",
    "Name the device after /etc/hostname",
    &[Env("USE_HOSTNAME"), Default("false")],
);

const GROUP: Setting<String, Option<String>> = Setting::new(
    "group",
    "Put the device into this device group",
    &[flag("device-group", 'g', "DEVICE_GROUP"), Key("group")],
)
.otherwise("none")
.check(unless_empty);

const PRODUCTION: Setting<bool> = Setting::new(
    "production",
    "Mark the device as a production device",
    &[
        flag("production", 'p', "BOOL"),
        Env("PRODUCTION"),
        Key("production"),
        Build {
            var: "PRODUCTION",
            value: build::PRODUCTION,
        },
        Default("false"),
    ],
);

const SOTA_DIR: Setting<PathBuf> = Setting::new(
    "sota dir",
    "Directory for keys and configuration",
    &[
        flag("sota-dir", 'd', "DIR"),
        Key("sota_dir"),
        UnderRoot(paths::SOTA_DIR),
    ],
);

const APPS: Setting<Vec<String>> = Setting::new(
    "apps",
    "Comma-separated compose apps to run",
    &[
        flag("apps", 'a', "APPS"),
        Env("APPS"),
        Key("apps"),
        Source::Device {
            doc: "the entries of `/var/sota/compose-apps/` (in an image with compose apps)",
            read: preloaded_apps,
        },
    ],
)
.otherwise("not sent");

const RESTORABLE_APPS: Setting<Vec<String>> = Setting::new(
    "restorable apps",
    "Comma-separated restorable apps",
    &[
        flag("restorable-apps", 'A', "RESTORABLE_APPS"),
        Source::Device {
            doc: "all apps, when `/var/sota/reset-apps` exists (in an image with compose apps)",
            read: reset_apps,
        },
    ],
)
.otherwise("not sent");

const IMAGE_HAS_COMPOSE_APPS: Setting<bool> = Setting::new(
    "image has compose apps",
    "The image runs compose apps (the composeapp PACKAGECONFIG)",
    &[
        Build {
            var: "DOCKER_COMPOSE_APP",
            value: build::DOCKER_COMPOSE_APP,
        },
        Default("true"),
    ],
);

const START_DAEMON: Setting<bool> = Setting::new(
    "start aktualizr-lite",
    "Start aktualizr-lite after registering",
    &[
        long("start-daemon", "BOOL"),
        Key("start_daemon"),
        Default("true"),
    ],
);

const USE_OSTREE_SERVER: Setting<bool> = Setting::new(
    "OSTree proxy",
    "Pull ostree content through the OSTree proxy server",
    &[
        long("use-ostree-server", "BOOL"),
        Key("use_ostree_server"),
        Default("true"),
    ],
);

const MLOCK_ALL: Setting<bool> = Setting::new(
    "mlock all",
    "Accepted for compatibility; the agent keeps no secret in swappable buffers for long",
    &[flag("mlock-all", 'l', "BOOL")],
);

const DEVICE_API: Setting<String, reqwest::Url> = Setting::new(
    "API URL",
    "Registration API endpoint",
    &[
        long("device-api", "URL"),
        Env("DEVICE_API"),
        Key("device_api"),
        Build {
            var: "DEVICE_API",
            value: build::DEVICE_API,
        },
        Default("https://api.foundries.io/ota/devices/"),
    ],
)
.check(url);

const OAUTH_BASE: Setting<String, reqwest::Url> = Setting::new(
    "OAuth URL",
    "OAuth2 base URL for interactive authorisation",
    &[
        long("oauth-api", "URL"),
        Env("OAUTH_BASE"),
        Key("oauth_api"),
        Build {
            var: "OAUTH_BASE",
            value: build::OAUTH_BASE,
        },
        Default("https://app.foundries.io/oauth"),
    ],
)
.check(url);

const CACERT: Setting<PathBuf, CaBundle> = Setting::new(
    "factory CA",
    "Trust only the CA certificates in this PEM file for HTTPS, instead of the system roots",
    &[CACERT_FLAG, Env("DEVICE_API_CACERT"), Key("cacert")],
)
.otherwise("the system roots")
.check(ca_bundle);

/// In the order of the C++ tool's flags, which `--help` keeps.
pub(super) const SETTINGS: Declarations = &[
    &API_TOKEN,
    &TOKEN_FILE,
    &TOKEN_HEADER,
    &FACTORY,
    &TAGS,
    &HARDWARE_ID,
    &UUID,
    &VALIDATE_UUID,
    &NAME,
    &USE_HOSTNAME,
    &GROUP,
    &PRODUCTION,
    &SOTA_DIR,
    &APPS,
    &RESTORABLE_APPS,
    &IMAGE_HAS_COMPOSE_APPS,
    &START_DAEMON,
    &USE_OSTREE_SERVER,
    &MLOCK_ALL,
    &DEVICE_API,
    &OAUTH_BASE,
    &CACERT,
];

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

fn header_name(header: String, what: &str) -> Result<String, String> {
    match reqwest::header::HeaderName::from_bytes(header.as_bytes()) {
        Ok(_) => Ok(header),
        Err(_) => Err(format!(
            "{what}: {header:?} is not a valid HTTP header name"
        )),
    }
}

/// "lmp" is what an image built without a factory says.
fn factory_name(factory: String, what: &str) -> Result<String, String> {
    match factory.trim() {
        "" => Err(format!("missing factory: {what} is empty")),
        "lmp" => Err(format!(
            "missing factory: {what} says \"lmp\", which is not a factory"
        )),
        name => Ok(name.to_string()),
    }
}

fn tags(tags: String, what: &str) -> Result<String, String> {
    let tags = tags.trim();
    if tags.is_empty() {
        return Err(format!("missing tag: {what} is empty"));
    }
    if tags.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("tag {tags:?} ({what}) must not contain whitespace"));
    }
    Ok(tags.to_string())
}

fn hardware_id(id: String, what: &str) -> Result<String, String> {
    match id.trim() {
        "" => Err(format!("missing hardware id: {what} is empty")),
        id => Ok(id.to_string()),
    }
}

fn printable_uuid(uuid: String, _what: &str) -> Result<String, String> {
    if uuid.is_empty() || uuid.chars().any(|c| c.is_control() || c == '/') {
        return Err("the UUID must be non-empty printable text".into());
    }
    Ok(uuid)
}

fn device_name(name: String, _what: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("the device name must not be empty".into());
    }
    Ok(name)
}

/// An empty value means "none".
fn unless_empty(value: String, _what: &str) -> Result<Option<String>, String> {
    Ok(Some(value).filter(|v| !v.is_empty()))
}

fn url(value: String, what: &str) -> Result<reqwest::Url, String> {
    parse_url(what, &value)
}

/// `/etc/hostname`, when `USE_HOSTNAME` asks for it.
fn hostname(r: &mut Resolver<'_>) -> Result<Option<Found<Raw>>, Reported> {
    if !r.get(&USE_HOSTNAME).unwrap_or(false) {
        return Ok(None);
    }
    let path = r.path(paths::HOSTNAME);
    match r.read_optional(&path)? {
        Some(text) => match crate::config::parse_single_line(&text, "the hostname file") {
            Ok(host) => Ok(Some(Found::device(
                Raw::text(host),
                path.display().to_string(),
            ))),
            Err(e) => {
                r.problem(format!("{}: {e}", path.display()));
                Err(Reported)
            }
        },
        None => {
            r.problem(format!(
                "{}: USE_HOSTNAME is set but the file does not exist",
                path.display()
            ));
            Err(Reported)
        }
    }
}

/// The image's preloaded compose apps. An image built without compose apps
/// has none: the C++ tool built without them sends no compose-app settings
/// at all, and neither does the agent then (unless it is asked to).
fn preloaded_apps(r: &mut Resolver<'_>) -> Result<Option<Found<Raw>>, Reported> {
    let image_has_compose_apps = r.get(&IMAGE_HAS_COMPOSE_APPS).unwrap_or(true);
    preloaded_apps_in(r, image_has_compose_apps)
}

fn preloaded_apps_in(
    r: &mut Resolver<'_>,
    image_has_compose_apps: bool,
) -> Result<Option<Found<Raw>>, Reported> {
    if !image_has_compose_apps {
        return Ok(None);
    }
    let dir = r.path(paths::COMPOSE_APPS);
    match list_dir_names(&dir) {
        Ok(names) => Ok(names.map(|names| {
            let names = names.into_iter().map(toml::Value::String).collect();
            Found::device(
                Raw::Toml(toml::Value::Array(names)),
                dir.display().to_string(),
            )
        })),
        Err(e) => {
            r.problem(e);
            Err(Reported)
        }
    }
}

/// Restorable apps on, for all apps, when the image asks for it.
fn reset_apps(r: &mut Resolver<'_>) -> Result<Option<Found<Raw>>, Reported> {
    let image_has_compose_apps = r.get(&IMAGE_HAS_COMPOSE_APPS).unwrap_or(true);
    Ok(reset_apps_in(r, image_has_compose_apps))
}

fn reset_apps_in(r: &Resolver<'_>, image_has_compose_apps: bool) -> Option<Found<Raw>> {
    let marker = r.path(paths::RESET_APPS);
    let on = image_has_compose_apps && marker.exists();
    on.then(|| Found::device(Raw::text(""), marker.display().to_string()))
}

/// The API token: `-T`, else the token file. A token file someone named
/// must exist; the default one need not (the OAuth device flow is asked
/// for then).
fn token(r: &mut Resolver<'_>) -> Option<Secret> {
    if let Some(token) = r.get(&API_TOKEN) {
        return Some(token);
    }
    let file = r.found(&TOKEN_FILE)?;
    match r.secret_line(&file.value, "the token file", "api token") {
        Ok(Some(token)) => Some(token),
        Ok(None) if file.kind != Kind::Default => {
            let path = file.value.display();
            r.problem(format!("{}: token file {path} does not exist", file.from));
            None
        }
        Ok(None) | Err(Reported) => None,
    }
}

/// A UUID not in the form the API expects is refused unless `-v 0`.
fn check_uuid_form(r: &mut Resolver<'_>, uuid: Option<&str>) {
    let Some(uuid) = uuid.filter(|uuid| !is_canonical_uuid(uuid)) else {
        return;
    };
    if r.get(&VALIDATE_UUID).unwrap_or(true) {
        r.problem(format!(
            "invalid UUID {uuid:?}: expected the 8-4-4-4-12 hex form (pass --validate-uuid 0 to allow it anyway)"
        ));
    } else {
        r.warn(format!(
            "UUID {uuid:?} is not in 8-4-4-4-12 hex form; using it because --validate-uuid 0"
        ));
    }
}

fn check_pin(r: &mut Resolver<'_>) {
    if r.hsm()
        .is_some_and(|hsm| !pin_is_readable_by_aktualizr(hsm.pin.expose()))
    {
        r.problem(
            "the HSM user PIN may only hold printable ASCII without spaces, quotes (\" ') or backslashes: aktualizr-lite reads sota.toml with a parser that would change such a PIN",
        );
    }
}

pub fn resolve(r: &mut Resolver<'_>) -> Option<LmpSettings> {
    let sota_dir = r.get(&SOTA_DIR);
    let factory = r.get(&FACTORY);
    let tags = r.get(&TAGS);
    let hardware_id = r.get(&HARDWARE_ID);
    let uuid = r.get(&UUID);
    check_uuid_form(r, uuid.as_deref());
    let name = r.get(&NAME);
    let production = r.get(&PRODUCTION).unwrap_or(false);
    r.get(&IMAGE_HAS_COMPOSE_APPS);
    let apps = r.get(&APPS);
    let restorable_apps = r.get(&RESTORABLE_APPS);
    let token = token(r);
    let token_header = r.get(&TOKEN_HEADER);
    let device_api = r.get(&DEVICE_API);
    let oauth_base = r.get(&OAUTH_BASE);
    let cacert = r.get(&CACERT);
    check_pin(r);
    if r.get(&MLOCK_ALL).is_some() {
        r.warn("--mlock-all is accepted for compatibility and has no effect");
    }
    let sota_dir = sota_dir?;
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
        token_header: token_header?,
        factory: factory?,
        tags: tags?,
        hardware_id: hardware_id?,
        uuid,
        name,
        group: r.get(&GROUP).flatten(),
        production,
        apps,
        restorable_apps,
        start_daemon: r.get(&START_DAEMON).unwrap_or(true),
        use_ostree_server: r.get(&USE_OSTREE_SERVER).unwrap_or(true),
        cacert,
    })
}

/// The sota dir alone (for `--status`).
pub(crate) fn sota_dir(r: &mut Resolver<'_>) -> Option<PathBuf> {
    r.get(&SOTA_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cli::CommandLine;
    use crate::config::{Environment, Value};

    type Apps = (Option<Vec<String>>, Option<Vec<String>>);

    /// A root with preloaded compose apps and the reset-apps marker.
    fn preloaded_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for app in ["shellhttpd", "nginx"] {
            std::fs::create_dir_all(root.path().join(paths::COMPOSE_APPS).join(app)).unwrap();
        }
        std::fs::write(root.path().join(paths::RESET_APPS), "").unwrap();
        root
    }

    /// Runs `resolve` on a resolver for `args` and `env` under `root`.
    fn with_resolver<T>(
        root: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        resolve: impl FnOnce(&mut Resolver<'_>) -> T,
    ) -> T {
        let argv = ["lmp-device-register", "--root", root.to_str().unwrap()]
            .into_iter()
            .chain(args.iter().copied());
        let command_line = CommandLine::try_parse_from(argv).unwrap();
        let env = Environment::from_pairs(env.iter().copied());
        let mut r = Resolver::new(&command_line, &env, &["lmp"]).unwrap();
        r.enter_table("lmp", SETTINGS);
        resolve(&mut r)
    }

    /// Apps and restorable apps as the resolver has them.
    fn resolved(args: &[&str], env: &[(&str, &str)]) -> Apps {
        let root = preloaded_root();
        with_resolver(root.path(), args, env, |r| {
            (r.get(&APPS), r.get(&RESTORABLE_APPS))
        })
    }

    /// Apps and restorable apps from the image, with or without compose apps.
    fn preloaded(image_has_compose_apps: bool) -> Apps {
        let root = preloaded_root();
        let list = |found: Option<Found<Raw>>| {
            found.map(|f| Vec::<String>::from_raw(f.value, &f.from).unwrap())
        };
        with_resolver(root.path(), &[], &[], |r| {
            let apps = preloaded_apps_in(r, image_has_compose_apps).unwrap();
            (list(apps), list(reset_apps_in(r, image_has_compose_apps)))
        })
    }

    #[test]
    fn preloaded_compose_apps_are_configured_only_in_an_image_with_compose_apps() {
        let apps = |list: &[&str]| Some(list.iter().map(|a| a.to_string()).collect());
        assert_eq!(preloaded(true), (apps(&["nginx", "shellhttpd"]), apps(&[])));
        assert_eq!(preloaded(false), (None, None));
        // Asked for, they are configured whatever the image has: the flags
        // and the environment come before the image's own apps.
        assert_eq!(
            resolved(&["--apps", "a,b", "--restorable-apps", "a"], &[]),
            (apps(&["a", "b"]), apps(&["a"]))
        );
        assert_eq!(resolved(&[], &[("APPS", "c")]).0, apps(&["c"]));
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
