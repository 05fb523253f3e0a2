//! The Losant profile's settings: `--manufacturer-id`, `--cacert`, the
//! `[losant]` table of the config file, the registration token and the
//! network interfaces of the device, in that order.

use super::{jwt, mac};
use crate::config::{
    long, parse_url, CaBundle, Declarations, Found, Kind, Raw, Reported, Resolver, Setting, Source,
    CACERT,
};
use crate::secret::Secret;
use std::path::{Component, Path, PathBuf};
use Source::{Default, Key, UnderRoot};

/// Paths of the device's own files, relative to `--root`.
mod paths {
    pub const TOKEN_FILE: &str = "etc/losant/registration-token";
    pub const CREDENTIALS: &str = "var/lib/losant/credentials.json";
    pub const NET: &str = "sys/class/net";
}

/// Longer ids are not something a person or a MAC address produces.
const MAX_MANUFACTURER_ID_CHARS: usize = 256;

const CREDENTIALS: Setting<PathBuf, (PathBuf, String)> = Setting::new(
    "credentials file",
    "Where the device's Losant credentials go (its directory becomes the profile's state directory)",
    &[Key("credentials"), UnderRoot(paths::CREDENTIALS)],
)
.check(credentials_location);

const TOKEN_FILE: Setting<PathBuf> = Setting::new(
    "registration token file",
    "File holding the application's registration token (an HS256 JWT; never a flag)",
    &[Key("token_file"), UnderRoot(paths::TOKEN_FILE)],
);

const URL: Setting<String> = Setting::new(
    "Losant registration URL",
    "The application's registration endpoint: https://, or http:// to this machine or with allow_http",
    &[
        Key("url"),
        Source::Given("the `url` claim of the registration token"),
    ],
);

const ALLOW_HTTP: Setting<bool> = Setting::new(
    "allow http",
    "Allow a plain http URL to another machine (an isolated network)",
    &[Key("allow_http"), Default("false")],
);

const MANUFACTURER_ID: Setting<String> = Setting::new(
    "manufacturer id",
    "Losant: the device's manufacturer id",
    &[
        long("manufacturer-id", "ID"),
        Key("manufacturer_id"),
        Source::Device {
            doc: "the MAC address of the network card `interface` names, else of the first one",
            read: mac_address,
        },
    ],
)
.check(check_manufacturer_id);

const INTERFACE: Setting<String> = Setting::new(
    "network interface",
    "The network interface whose MAC address is the manufacturer id",
    &[Key("interface")],
)
.otherwise("the first network card (lowest ifindex; not the loopback, not virtual)");

pub(super) const SETTINGS: Declarations = &[
    &URL,
    &ALLOW_HTTP,
    &TOKEN_FILE,
    &MANUFACTURER_ID,
    &INTERFACE,
    &CREDENTIALS,
    &CACERT,
];

#[derive(Debug)]
pub struct LosantSettings {
    /// The registration endpoint; `None` only when the device is registered
    /// and its token is gone (nothing will be sent then).
    pub url: Option<reqwest::Url>,
    pub token: Option<Secret>,
    pub token_file: PathBuf,
    /// The application that issued the token (its `iss` claim).
    pub issuer: Option<String>,
    pub manufacturer_id: String,
    /// Where the manufacturer id came from, for the log.
    pub manufacturer_id_source: String,
    /// The id was asked for (flag or config file), not derived.
    pub manufacturer_id_configured: bool,
    /// The directory of the credentials file: the profile's state dir.
    pub state_dir: PathBuf,
    /// The credentials file's name in it: the one marker of a registration.
    pub credentials_name: String,
    pub cacert: Option<CaBundle>,
}

impl LosantSettings {
    pub fn credentials_name(&self) -> &str {
        &self.credentials_name
    }

    pub fn credentials_path(&self) -> PathBuf {
        self.state_dir.join(self.credentials_name())
    }
}

/// Directories shared with the rest of the system. The credentials file's
/// directory becomes the profile's state dir, which the agent makes 0700 and
/// keeps its journal in, so it must be a directory of its own.
const SHARED_DIRS: &[&str] = &[
    "/", "/etc", "/var", "/var/lib", "/usr", "/tmp", "/run", "/home", "/root", "/opt", "/srv",
];

/// Whether a URL names this machine: plain http to it never crosses a network.
pub fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// The registration URL, refused when it is plain http to another machine
/// (the token and the access secret would cross the network unencrypted)
/// unless `allow_http` says the network is trusted.
pub fn registration_url(what: &str, value: &str, allow_http: bool) -> Result<reqwest::Url, String> {
    let url = parse_url(what, value)?;
    if url.scheme() == "http" && !allow_http && !is_loopback(&url) {
        return Err(format!(
            "{what} {value:?} is plain http: the registration token and the device's access secret would cross the network unencrypted; use https, or set allow_http = true in [losant] for an isolated network"
        ));
    }
    Ok(url)
}

fn credentials_location(path: PathBuf, what: &str) -> Result<(PathBuf, String), String> {
    let problem = |why: &str| format!("{what} {}: {why}", path.display());
    let name = match path.components().next_back() {
        Some(Component::Normal(name)) => name
            .to_str()
            .filter(|n| !n.starts_with('.'))
            .ok_or_else(|| problem("must end in a plain file name"))?,
        _ => return Err(problem("must end in a plain file name")),
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    if dir.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(problem("must not contain .."));
    }
    if SHARED_DIRS.iter().any(|shared| dir == Path::new(shared)) {
        return Err(problem(
            "its directory becomes the profile's private state directory (mode 0700): use a directory of its own, such as /var/lib/losant",
        ));
    }
    Ok((dir.to_path_buf(), name.to_string()))
}

fn check_manufacturer_id(id: String, from: &str) -> Result<String, String> {
    let id = id.trim();
    if id.is_empty() {
        return Err(format!("the manufacturer id ({from}) is empty"));
    }
    if id.chars().any(char::is_control) {
        return Err(format!(
            "the manufacturer id ({from}) contains control characters"
        ));
    }
    if id.chars().count() > MAX_MANUFACTURER_ID_CHARS {
        return Err(format!(
            "the manufacturer id ({from}) is longer than {MAX_MANUFACTURER_ID_CHARS} characters"
        ));
    }
    Ok(id.to_string())
}

/// The MAC address of the interface the config file names, else of the
/// first network card.
fn mac_address(r: &mut Resolver<'_>) -> Result<Option<Found<Raw>>, Reported> {
    let net = r.path(paths::NET);
    let interface = match r.get(&INTERFACE) {
        Some(name) => Ok(name),
        None => mac::default_interface(&net),
    };
    match interface.and_then(|name| mac::interface_address(&net, &name)) {
        Ok(address) => {
            if let Some(warning) = address.warning {
                r.warn(warning);
            }
            let from = format!("the MAC address of {}", address.interface);
            Ok(Some(Found::device(Raw::text(address.mac), from)))
        }
        Err(e) => {
            r.problem(format!(
                "no manufacturer id: {e}; pass --manufacturer-id, or set manufacturer_id (or interface) in [losant] of the config file"
            ));
            Err(Reported)
        }
    }
}

/// The registration token. A registered device needs none: `--boot` must
/// succeed on it even after the image dropped the file.
fn registration_token(r: &mut Resolver<'_>, path: &Path, registered: bool) -> Option<Secret> {
    match r.secret_line(path, "the registration token file", "registration token") {
        Ok(Some(token)) => Some(token),
        Ok(None) => {
            if !registered {
                r.problem(format!(
                    "{}: the Losant registration token file does not exist (set token_file in [losant] of the config file to read it from elsewhere)",
                    path.display()
                ));
            }
            None
        }
        Err(Reported) => None,
    }
}

/// The registration URL: the config file, else the token's `url` claim.
fn url(
    r: &mut Resolver<'_>,
    claims: Option<&jwt::Claims>,
    token_file: &Path,
) -> Option<reqwest::Url> {
    let claimed = claims.and_then(|c| c.url.clone());
    let from_claim = claimed.clone().map(|url| {
        let from = format!("the url claim of the token in {}", token_file.display());
        Found::device(Raw::text(url), from)
    });
    let allow_http = r.get(&ALLOW_HTTP).unwrap_or(false);
    let Some(found) = r.found_with(&URL, from_claim) else {
        if claims.is_some() {
            r.problem(format!(
                "the token in {} has no url claim: set url in [losant] of the config file",
                token_file.display()
            ));
        }
        return None;
    };
    if let Some(claimed) = claimed.filter(|c| found.kind == Kind::ConfigFile && *c != found.value) {
        let note = format!(
            "{} (instead of the token's url claim {claimed})",
            found.from
        );
        r.amend_origin(URL.name, &found.from, note);
    }
    let url = registration_url(&found.from, &found.value, allow_http)
        .map_err(|e| r.problem(e))
        .ok()?;
    if allow_http && url.scheme() == "http" && !is_loopback(&url) {
        r.warn(format!(
            "{url} is plain http (allow_http): the registration token and the access secret cross the network unencrypted"
        ));
    }
    Some(url)
}

pub fn resolve(r: &mut Resolver<'_>) -> Option<LosantSettings> {
    // Where the credentials go decides what "registered" means, which the
    // token needs.
    let location = r.get(&CREDENTIALS);
    let registered = location
        .as_ref()
        .is_some_and(|(dir, name)| dir.join(name).symlink_metadata().is_ok())
        && !r.cli().force.unwrap_or(false);
    let token_file = r.get(&TOKEN_FILE);
    let token = token_file
        .as_ref()
        .and_then(|path| registration_token(r, path, registered));
    let claims = token
        .as_ref()
        .zip(token_file.as_ref())
        .and_then(|(token, path)| {
            jwt::unverified_claims(token.expose())
                .map_err(|e| r.problem(format!("{}: {e}", path.display())))
                .ok()
        });
    let url = url(
        r,
        claims.as_ref(),
        token_file.as_deref().unwrap_or(Path::new("")),
    );
    let manufacturer_id = r.found(&MANUFACTURER_ID);
    let configured = manufacturer_id
        .as_ref()
        .is_some_and(|id| id.kind != Kind::Device);
    if configured && r.key_is_set("interface") {
        let what = r.file_key("interface");
        r.warn(format!("{what} is not used: the manufacturer id is given"));
    }
    let cacert = r.get(&CACERT);
    let ((state_dir, credentials_name), manufacturer_id) = (location?, manufacturer_id?);
    if token.is_some() && url.is_none() {
        // Reported above.
        return None;
    }
    Some(LosantSettings {
        url,
        token,
        token_file: token_file?,
        issuer: claims.and_then(|c| c.iss),
        manufacturer_id: manufacturer_id.value,
        manufacturer_id_source: manufacturer_id.from,
        manufacturer_id_configured: configured,
        state_dir,
        credentials_name,
        cacert,
    })
}

/// The credentials file's directory (the state dir) and name alone (for
/// `--status`).
pub(crate) fn credentials(r: &mut Resolver<'_>) -> Option<(PathBuf, String)> {
    r.get(&CREDENTIALS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/config-losant.toml");

    /// The `[losant]` table of a config file that chooses the profile,
    /// checked against the declarations as the resolver checks it.
    fn read_table(text: &str) -> toml::Table {
        let mut file: toml::Table = text.parse().unwrap();
        assert_eq!(file.remove("profile"), Some("losant".into()), "{text}");
        let Some(toml::Value::Table(table)) = file.remove("losant") else {
            panic!("no [losant] table in {text}");
        };
        let problems = crate::config::table_problems(SETTINGS, &table);
        assert!(problems.is_empty(), "{problems:?} in {text}");
        table
    }

    #[test]
    fn the_readme_example_is_valid() {
        let readme = include_str!("../../../README.md");
        let blocks: Vec<&str> = readme
            .split("```toml\n")
            .skip(1)
            .filter_map(|rest| rest.split_once("```").map(|(block, _)| block))
            .filter(|block| block.contains("[losant]"))
            .collect();
        assert!(!blocks.is_empty(), "README.md shows no [losant] example");
        for block in blocks {
            let table = read_table(block);
            assert!(table.contains_key("url"), "{block}");
        }
    }

    #[test]
    fn the_example_config_is_valid_with_every_documented_key() {
        let table = read_table(EXAMPLE);
        let text = |table: &toml::Table, key| {
            table
                .get(key)
                .and_then(toml::Value::as_str)
                .map(str::to_string)
        };
        assert_eq!(
            text(&table, "url").as_deref(),
            Some("https://my-application.onlosant.com/api/register-device")
        );
        assert_eq!(text(&table, "interface").as_deref(), Some("eth0"));
        assert!(!table.contains_key("manufacturer_id"));

        // The commented keys are real keys, with values of the right type.
        let uncommented: String = EXAMPLE
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    }) =>
                {
                    rest
                }
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let table = read_table(&uncommented);
        assert_eq!(
            table.get("allow_http").and_then(toml::Value::as_bool),
            Some(false)
        );
        for (key, value) in [
            ("token_file", "/etc/losant/registration-token"),
            ("manufacturer_id", "SN-000123"),
            ("credentials", "/var/lib/losant/credentials.json"),
            ("cacert", "/etc/losant/ca.pem"),
        ] {
            assert_eq!(text(&table, key).as_deref(), Some(value), "{key}");
        }
    }

    #[test]
    fn plain_http_only_to_this_machine_unless_allowed() {
        for url in [
            "https://app.onlosant.com/api/register-device",
            "http://127.0.0.1:8080/register",
            "http://127.7.0.1/register",
            "http://[::1]:9/register",
            "http://localhost/register",
        ] {
            assert!(registration_url("url", url, false).is_ok(), "{url}");
        }
        for url in ["http://192.0.2.7/register", "http://app.onlosant.com/x"] {
            let err = registration_url("url", url, false).unwrap_err();
            assert!(err.contains("plain http"), "{err}");
            assert!(registration_url("url", url, true).is_ok(), "{url}");
        }
        let err = registration_url("url", "ftp://x/y", true).unwrap_err();
        assert!(err.contains("http:// or https://"), "{err}");
    }

    #[test]
    fn credentials_need_a_directory_of_their_own() {
        let (dir, name) =
            credentials_location("/var/lib/losant/credentials.json".into(), "c").unwrap();
        assert_eq!(dir, Path::new("/var/lib/losant"));
        assert_eq!(name, "credentials.json");
        for (bad, expected) in [
            ("/etc/credentials.json", "directory of its own"),
            ("/var/lib/creds.json", "directory of its own"),
            ("/", "plain file name"),
            ("/var/lib/losant/.hidden", "plain file name"),
            ("/var/lib/losant/..", "plain file name"),
            ("/var/../x/creds.json", "must not contain .."),
        ] {
            let err = credentials_location(bad.into(), "c").unwrap_err();
            assert!(err.contains(expected), "{bad}: {err}");
        }
    }

    #[test]
    fn manufacturer_ids_are_printable_and_bounded() {
        assert_eq!(
            check_manufacturer_id(" sn-0042 ".into(), "f").unwrap(),
            "sn-0042"
        );
        assert!(check_manufacturer_id("  ".into(), "f")
            .unwrap_err()
            .contains("empty"));
        assert!(check_manufacturer_id("a\nb".into(), "f")
            .unwrap_err()
            .contains("control"));
        assert!(check_manufacturer_id("x".repeat(257), "f")
            .unwrap_err()
            .contains("longer"));
    }
}
