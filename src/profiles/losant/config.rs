//! The Losant profile's settings: `--manufacturer-id`, `--cacert`, the
//! `[losant]` table of the config file, the registration token and the
//! network interfaces of the device, in that order.

use super::{jwt, mac};
use crate::config::{parse_url, CaBundle, Reported, Resolver};
use crate::secret::Secret;
use serde::Deserialize;
use std::path::{Component, Path, PathBuf};

/// Paths of the device's own files, relative to `--root`.
mod paths {
    pub const TOKEN_FILE: &str = "etc/losant/registration-token";
    pub const CREDENTIALS: &str = "var/lib/losant/credentials.json";
    pub const NET: &str = "sys/class/net";
}

/// Longer ids are not something a person or a MAC address produces.
const MAX_MANUFACTURER_ID_CHARS: usize = 256;

/// The `[losant]` table of the config file.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct Table {
    url: Option<String>,
    allow_http: Option<bool>,
    token_file: Option<PathBuf>,
    manufacturer_id: Option<String>,
    interface: Option<String>,
    credentials: Option<PathBuf>,
    cacert: Option<PathBuf>,
}

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

fn credentials_location(path: &Path, what: &str) -> Result<(PathBuf, String), String> {
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

fn check_manufacturer_id(id: &str, from: &str) -> Result<String, String> {
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

/// The credentials file, and its directory (the state dir) and name when
/// it is usable there.
fn credentials(
    r: &mut Resolver<'_>,
    configured: Option<&PathBuf>,
) -> (PathBuf, Option<(PathBuf, String)>) {
    let (credentials, from) = match configured {
        Some(path) => (path.clone(), r.file_key("losant", "credentials")),
        None => (
            r.path(paths::CREDENTIALS),
            "the default credentials file".into(),
        ),
    };
    // The default is relative when --root is: only a configured path must
    // be absolute (a relative one would depend on the working directory).
    let location = match r.configured_path("losant", "credentials", configured.cloned()) {
        Err(Reported) => None,
        Ok(_) => credentials_location(&credentials, &from)
            .map_err(|e| r.problem(e))
            .ok(),
    };
    (credentials, location)
}

/// The state dir and the credentials file's name alone, for `--status`,
/// which needs no other setting.
pub fn locate(r: &mut Resolver<'_>) -> Option<(PathBuf, String)> {
    let table: Table = r.section("losant");
    credentials(r, table.credentials.as_ref()).1
}

pub fn resolve(r: &mut Resolver<'_>) -> Option<LosantSettings> {
    let cli = r.cli;
    let table: Table = r.section("losant");
    let key = |r: &Resolver<'_>, name: &str| r.file_key("losant", name);

    // Credentials: where they go decides what "registered" means, which
    // the token check below needs.
    let (credentials, location) = credentials(r, table.credentials.as_ref());
    let registered = credentials.symlink_metadata().is_ok() && !r.cli.force.unwrap_or(false);

    // The registration token: a file only, never a flag.
    let token_file = match &table.token_file {
        Some(path) => path.clone(),
        None => r.path(paths::TOKEN_FILE),
    };
    let token_read = match r.configured_path("losant", "token_file", table.token_file.clone()) {
        Err(Reported) => Err(Reported),
        Ok(_) => r.secret_line(
            &token_file,
            "the registration token file",
            "registration token",
        ),
    };
    let token = match token_read {
        Ok(Some(token)) => Some(token),
        Ok(None) => {
            // A registered device needs no token: `--boot` must succeed on it
            // even after the image dropped the file.
            if !registered {
                r.problem(format!(
                    "{}: the Losant registration token file does not exist (set token_file in [losant] of the config file to read it from elsewhere)",
                    token_file.display()
                ));
            }
            None
        }
        Err(Reported) => None,
    };
    let claims = token.as_ref().and_then(|token| {
        jwt::unverified_claims(token.expose())
            .map_err(|e| r.problem(format!("{}: {e}", token_file.display())))
            .ok()
    });

    // The registration URL: the config file, else the token's url claim.
    let allow_http = table.allow_http.unwrap_or(false);
    let claimed_url = claims.as_ref().and_then(|c| c.url.as_deref());
    let url = match (&table.url, claimed_url) {
        (Some(url), claimed) => {
            let what = key(r, "url");
            let from = match claimed {
                Some(claimed) if claimed != url => {
                    format!("{what} (instead of the token's url claim {claimed})")
                }
                _ => what.clone(),
            };
            registration_url(&what, url, allow_http)
                .map_err(|e| r.problem(e))
                .ok()
                .inspect(|_| r.origin("Losant registration URL", from))
        }
        (None, Some(claimed)) => {
            let what = format!("the url claim of the token in {}", token_file.display());
            registration_url(&what, claimed, allow_http)
                .map_err(|e| r.problem(e))
                .ok()
                .inspect(|_| r.origin("Losant registration URL", what.clone()))
        }
        (None, None) => {
            if claims.is_some() {
                r.problem(format!(
                    "the token in {} has no url claim: set url in [losant] of the config file",
                    token_file.display()
                ));
            }
            None
        }
    };
    if allow_http
        && url
            .as_ref()
            .is_some_and(|u| u.scheme() == "http" && !is_loopback(u))
    {
        r.warn(format!(
            "{} is plain http (allow_http): the registration token and the access secret cross the network unencrypted",
            url.as_ref().map(|u| u.to_string()).unwrap_or_default()
        ));
    }

    // The manufacturer id: the flag, the config file, else a MAC address.
    let explicit = match (&cli.manufacturer_id, &table.manufacturer_id) {
        (Some(id), _) => Some((id.clone(), "--manufacturer-id".to_string())),
        (None, Some(id)) => Some((id.clone(), key(r, "manufacturer_id"))),
        (None, None) => None,
    };
    if explicit.is_some() && table.interface.is_some() {
        r.warn(format!(
            "{} is not used: the manufacturer id is given",
            key(r, "interface")
        ));
    }
    let manufacturer_id = match &explicit {
        Some((id, from)) => check_manufacturer_id(id, from)
            .map(|id| (id, from.clone()))
            .map_err(|e| r.problem(e))
            .ok(),
        None => {
            let net = r.path(paths::NET);
            let interface = match &table.interface {
                Some(name) => Ok(name.clone()),
                None => mac::default_interface(&net),
            };
            match interface.and_then(|name| mac::interface_address(&net, &name)) {
                Ok(address) => {
                    if let Some(warning) = address.warning {
                        r.warn(warning);
                    }
                    Some((
                        address.mac,
                        format!("the MAC address of {}", address.interface),
                    ))
                }
                Err(e) => {
                    r.problem(format!(
                        "no manufacturer id: {e}; pass --manufacturer-id, or set manufacturer_id (or interface) in [losant] of the config file"
                    ));
                    None
                }
            }
        }
    };
    if let Some((_, from)) = &manufacturer_id {
        r.origin("manufacturer id", from.clone());
    }

    let cacert = match r.configured_path("losant", "cacert", table.cacert.clone()) {
        Err(Reported) => None,
        Ok(configured) => r.cacert("losant", configured.as_ref()),
    };

    let (state_dir, credentials_name) = location?;
    let (manufacturer_id, manufacturer_id_source) = manufacturer_id?;
    if token.is_some() && url.is_none() {
        // Already reported above.
        return None;
    }
    Some(LosantSettings {
        url,
        token,
        token_file,
        issuer: claims.and_then(|c| c.iss),
        manufacturer_id,
        manufacturer_id_source,
        manufacturer_id_configured: explicit.is_some(),
        state_dir,
        credentials_name,
        cacert,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, ProfileName};
    use crate::config::Environment;

    const EXAMPLE: &str = include_str!("../../../examples/config-losant.toml");

    /// The `[losant]` table of a config file, read by the agent's resolver.
    fn read_table(text: &str) -> Table {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lmp-device-register.toml");
        std::fs::write(&path, text).unwrap();
        let cli = Cli {
            config: Some(path),
            root: Some(dir.path().to_path_buf()),
            ..Cli::default()
        };
        let env = Environment::default();
        let mut r = Resolver::new(&cli, Vec::new(), &env).unwrap();
        assert_eq!(r.profile(), ProfileName::Losant);
        let table: Table = r.section("losant");
        r.finish(ProfileName::Losant, false).unwrap();
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
            assert!(table.url.is_some(), "{block}");
        }
    }

    #[test]
    fn the_example_config_is_valid_with_every_documented_key() {
        let table = read_table(EXAMPLE);
        assert_eq!(
            table.url.as_deref(),
            Some("https://my-application.onlosant.com/api/register-device")
        );
        assert_eq!(table.interface.as_deref(), Some("eth0"));
        assert!(table.manufacturer_id.is_none());

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
        assert_eq!(table.allow_http, Some(false));
        assert_eq!(
            table.token_file.as_deref(),
            Some(Path::new("/etc/losant/registration-token"))
        );
        assert_eq!(table.manufacturer_id.as_deref(), Some("SN-000123"));
        assert_eq!(
            table.credentials.as_deref(),
            Some(Path::new("/var/lib/losant/credentials.json"))
        );
        assert_eq!(
            table.cacert.as_deref(),
            Some(Path::new("/etc/losant/ca.pem"))
        );
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
            credentials_location(Path::new("/var/lib/losant/credentials.json"), "c").unwrap();
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
            let err = credentials_location(Path::new(bad), "c").unwrap_err();
            assert!(err.contains(expected), "{bad}: {err}");
        }
    }

    #[test]
    fn manufacturer_ids_are_printable_and_bounded() {
        assert_eq!(check_manufacturer_id(" sn-0042 ", "f").unwrap(), "sn-0042");
        assert!(check_manufacturer_id("  ", "f")
            .unwrap_err()
            .contains("empty"));
        assert!(check_manufacturer_id("a\nb", "f")
            .unwrap_err()
            .contains("control"));
        assert!(check_manufacturer_id(&"x".repeat(257), "f")
            .unwrap_err()
            .contains("longer"));
    }
}
