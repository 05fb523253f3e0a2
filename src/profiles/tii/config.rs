//! The tii profile's settings: the `[tii]` table of the config file, the
//! shared `--cacert`, `/etc/os-release` and the machine, in that order.

use crate::config::{parse_url, CaBundle, Resolver};
use crate::keys::KeyAlgorithm;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The state dir under `--root`.
const STATE_DIR: &str = "var/lib/fleet-registration";
/// TII's device identity format; `{id}` is the device id.
pub const DEFAULT_CN_TEMPLATE: &str = "/Finland~Solita/fleet/{id}/registration_agent";
const DEFAULT_RESULT_TIMEOUT: Duration = Duration::from_secs(60);
/// An hour is longer than any fleet manager should need; more is a typo.
const MAX_RESULT_TIMEOUT_SECS: u64 = 3600;
pub const DEFAULT_NATS_PORT: u16 = 4222;

/// The `[tii]` table of the config file.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct Table {
    provisioning_url: Option<String>,
    device_type: Option<String>,
    architecture: Option<String>,
    build_version: Option<String>,
    current_owner: Option<String>,
    tailscale_id: Option<String>,
    alias: Option<String>,
    device_id: Option<String>,
    cn_template: Option<String>,
    key_type: Option<String>,
    nats_url: Option<String>,
    result_timeout: Option<u64>,
    state_dir: Option<PathBuf>,
    cacert: Option<PathBuf>,
}

#[derive(Debug)]
pub struct TiiSettings {
    pub state_dir: PathBuf,
    pub provisioning_url: reqwest::Url,
    pub device_type: String,
    pub architecture: String,
    pub build_version: String,
    pub current_owner: Option<String>,
    pub tailscale_id: Option<String>,
    pub alias: Option<String>,
    pub device_id: Option<String>,
    pub cn_template: CnTemplate,
    pub key_type: KeyAlgorithm,
    /// Overrides the provisioning answer's `fleetManagementNatsUrl`.
    pub nats_url: Option<NatsUrl>,
    pub result_timeout: Duration,
    /// CA bundle trusted for an https provisioning server.
    pub cacert: Option<CaBundle>,
}

/// The certificate's common name around the device id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CnTemplate {
    prefix: String,
    suffix: String,
}

impl CnTemplate {
    /// A template holds `{id}` exactly once and no other braces.
    pub fn parse(template: &str) -> Result<CnTemplate, String> {
        let Some((prefix, suffix)) = template.split_once("{id}") else {
            return Err(format!("{template:?} has no {{id}}"));
        };
        if [prefix, suffix]
            .iter()
            .any(|part| part.contains(['{', '}']))
        {
            return Err(format!(
                "{template:?} may hold {{id}} once and no other braces"
            ));
        }
        if template.chars().any(char::is_control) {
            return Err(format!("{template:?} holds control characters"));
        }
        Ok(CnTemplate {
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
        })
    }

    pub fn common_name(&self, id: &str) -> String {
        format!("{}{id}{}", self.prefix, self.suffix)
    }

    /// The device id inside a common name made from this template.
    pub fn id_in<'a>(&self, common_name: &'a str) -> Option<&'a str> {
        common_name
            .strip_prefix(self.prefix.as_str())?
            .strip_suffix(self.suffix.as_str())
            .filter(|id| !id.is_empty())
    }
}

/// Where the fleet manager's NATS server is: always reached over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUrl {
    pub host: String,
    pub port: u16,
}

impl NatsUrl {
    /// `nats://host:port`, `tls://host:port`, or `host[:port]`; the port
    /// defaults to 4222. Credentials, paths and other schemes are refused.
    pub fn parse(text: &str) -> Result<NatsUrl, String> {
        let trimmed = text.trim();
        let with_scheme = if trimmed.contains("://") {
            trimmed.to_string()
        } else {
            format!("nats://{trimmed}")
        };
        let url = reqwest::Url::parse(&with_scheme)
            .map_err(|e| format!("{text:?} is not a NATS URL: {e}"))?;
        if !matches!(url.scheme(), "nats" | "tls") {
            return Err(format!(
                "{text:?} must be a nats:// or tls:// URL, or host:port"
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "{text:?} holds credentials; the device proves itself with its certificate"
            ));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{text:?} must be only a host and a port"));
        }
        // IPv6 addresses keep their brackets, as a URL needs them.
        let host = match url.host_str() {
            Some(host) if !host.is_empty() => host.to_string(),
            _ => return Err(format!("{text:?} names no host")),
        };
        Ok(NatsUrl {
            host,
            port: url.port().unwrap_or(DEFAULT_NATS_PORT),
        })
    }

    /// The address as async-nats takes it; `tls://` makes it insist on TLS.
    pub fn client_url(&self) -> String {
        format!("tls://{}:{}", self.host, self.port)
    }
}

impl std::fmt::Display for NatsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "nats://{}:{}", self.host, self.port)
    }
}

/// The `key_type` names.
const KEY_TYPES: &[(&str, KeyAlgorithm)] = &[
    ("ec-p256", KeyAlgorithm::EcP256),
    ("rsa-2048", KeyAlgorithm::Rsa2048),
];

fn key_type(name: &str) -> Option<KeyAlgorithm> {
    KEY_TYPES
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, algorithm)| *algorithm)
}

/// A device id goes into NATS subjects (`device_actions.<id>.register`),
/// where `.`, `*`, `>` and white space have meanings, and into a file name
/// of the journal: keep it to letters, digits, `-` and `_`.
pub fn check_device_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("must be 1 to 128 characters long".into());
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "{id:?} may hold only letters, digits, '-' and '_' (it is part of NATS subjects)"
        ));
    }
    Ok(())
}

/// The fleet's name for the machine's architecture (Go's GOARCH names):
/// `aarch64` is `arm64`, `x86_64` is `amd64`.
pub fn fleet_architecture(machine: &str) -> String {
    match machine {
        "aarch64" | "arm64" | "aarch64_be" => "arm64".into(),
        "x86_64" | "amd64" => "amd64".into(),
        "i386" | "i486" | "i586" | "i686" => "386".into(),
        m if m.starts_with("armv") || m == "arm" => "arm".into(),
        "riscv64" => "riscv64".into(),
        "ppc64le" => "ppc64le".into(),
        other => other.to_string(),
    }
}

fn machine() -> Option<String> {
    let uts = nix::sys::utsname::uname().ok()?;
    uts.machine().to_str().map(str::to_string)
}

/// A required, non-empty string setting.
fn required(r: &mut Resolver<'_>, value: Option<String>, key: &str, hint: &str) -> Option<String> {
    match value.map(|v| v.trim().to_string()) {
        Some(v) if !v.is_empty() => {
            let from = r.file_key("tii", key);
            r.origin(key.replace('_', " "), from);
            Some(v)
        }
        _ => {
            let what = r.file_key("tii", key);
            r.problem(format!("missing {key}: set {what}{hint}"));
            None
        }
    }
}

/// An optional string setting; empty means unset.
fn optional(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn state_dir(r: &Resolver<'_>, configured: Option<PathBuf>) -> PathBuf {
    configured.unwrap_or_else(|| r.path(STATE_DIR))
}

/// The state dir alone, for `--status`, which needs no other setting.
pub fn locate(r: &mut Resolver<'_>) -> PathBuf {
    let table: Table = r.section("tii");
    let configured = r
        .configured_path("tii", "state_dir", table.state_dir)
        .unwrap_or_default();
    state_dir(r, configured)
}

pub fn resolve(r: &mut Resolver<'_>) -> Option<TiiSettings> {
    let mut table: Table = r.section("tii");
    let key = |r: &Resolver<'_>, name: &str| r.file_key("tii", name);
    for (name, path) in [
        ("state_dir", &mut table.state_dir),
        ("cacert", &mut table.cacert),
    ] {
        *path = r
            .configured_path("tii", name, path.take())
            .unwrap_or_default();
    }

    if table.state_dir.is_some() {
        let from = key(r, "state_dir");
        r.origin("state dir", from);
    }
    let state_dir = state_dir(r, table.state_dir.clone());

    let provisioning_url =
        required(r, table.provisioning_url, "provisioning_url", "").and_then(|url| {
            let what = key(r, "provisioning_url");
            parse_url(&what, &url).map_err(|e| r.problem(e)).ok()
        });
    let device_type = required(r, table.device_type, "device_type", "");

    let architecture = match optional(table.architecture) {
        Some(arch) => {
            let from = key(r, "architecture");
            r.origin("architecture", from);
            Some(arch)
        }
        None => match machine() {
            Some(m) => {
                r.origin("architecture", format!("the machine ({m})"));
                Some(fleet_architecture(&m))
            }
            None => {
                let what = key(r, "architecture");
                r.problem(format!(
                    "missing architecture: the machine type is unknown; set {what}"
                ));
                None
            }
        },
    };

    let build_version = match optional(table.build_version) {
        Some(version) => {
            let from = key(r, "build_version");
            r.origin("build version", from);
            Some(version)
        }
        None => match r.os_release("VERSION_ID") {
            Some((version, from)) if !version.trim().is_empty() => {
                r.origin("build version", format!("{from} VERSION_ID"));
                Some(version.trim().to_string())
            }
            _ => {
                let what = key(r, "build_version");
                r.problem(format!(
                    "missing build_version: set {what}, or VERSION_ID in {}",
                    r.path(crate::config::OS_RELEASE).display()
                ));
                None
            }
        },
    };

    let device_id = optional(table.device_id);
    if let Some(id) = &device_id {
        let what = key(r, "device_id");
        match check_device_id(id) {
            Ok(()) => r.origin("device id", what),
            Err(e) => r.problem(format!("{what}: {e}")),
        }
    }

    let cn_template = match &table.cn_template {
        Some(template) => {
            let what = key(r, "cn_template");
            match CnTemplate::parse(template) {
                Ok(t) => {
                    r.origin("certificate name template", what);
                    Some(t)
                }
                Err(e) => {
                    r.problem(format!("{what}: {e}"));
                    None
                }
            }
        }
        None => CnTemplate::parse(DEFAULT_CN_TEMPLATE).ok(),
    };

    let key_type = match &table.key_type {
        Some(name) => match key_type(name) {
            Some(algorithm) => {
                let from = key(r, "key_type");
                r.origin("key type", from);
                Some(algorithm)
            }
            None => {
                let what = key(r, "key_type");
                r.problem(format!(
                    "{what}: unknown key type {name:?} (known: {})",
                    KEY_TYPES
                        .iter()
                        .map(|(known, _)| *known)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                None
            }
        },
        None => Some(KeyAlgorithm::EcP256),
    };

    let nats_url = match &table.nats_url {
        Some(url) => {
            let what = key(r, "nats_url");
            match NatsUrl::parse(url) {
                Ok(url) => {
                    r.origin("NATS URL", what);
                    Some(Some(url))
                }
                Err(e) => {
                    r.problem(format!("{what}: {e}"));
                    None
                }
            }
        }
        None => Some(None),
    };

    let result_timeout = match table.result_timeout {
        None => Some(DEFAULT_RESULT_TIMEOUT),
        Some(seconds) if (1..=MAX_RESULT_TIMEOUT_SECS).contains(&seconds) => {
            Some(Duration::from_secs(seconds))
        }
        Some(seconds) => {
            let what = key(r, "result_timeout");
            r.problem(format!(
                "{what}: {seconds} is not between 1 and {MAX_RESULT_TIMEOUT_SECS} seconds"
            ));
            None
        }
    };

    let cacert = r.cacert("tii", table.cacert.as_ref());

    Some(TiiSettings {
        state_dir,
        provisioning_url: provisioning_url?,
        device_type: device_type?,
        architecture: architecture?,
        build_version: build_version?,
        current_owner: optional(table.current_owner),
        tailscale_id: optional(table.tailscale_id),
        alias: optional(table.alias),
        device_id,
        cn_template: cn_template?,
        key_type: key_type?,
        nats_url: nats_url?,
        result_timeout: result_timeout?,
        cacert,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_template_makes_tii_names() {
        let template = CnTemplate::parse(DEFAULT_CN_TEMPLATE).unwrap();
        let id = "0b3c9c7e8f6a4d1e9a432f5a1c0d9e77";
        let cn = template.common_name(id);
        assert_eq!(
            cn,
            "/Finland~Solita/fleet/0b3c9c7e8f6a4d1e9a432f5a1c0d9e77/registration_agent"
        );
        assert_eq!(cn.len(), 73);
        assert_eq!(template.id_in(&cn), Some(id));
        assert_eq!(
            template.id_in("/Finland~Solita/fleet//registration_agent"),
            None
        );
        assert_eq!(template.id_in(id), None);
        let short = CnTemplate::parse("{id}/registration_agent").unwrap();
        assert_eq!(short.common_name("x"), "x/registration_agent");
        for bad in ["no id", "{id}{id}", "{id}/{other}", "a{id}}", "a\n{id}"] {
            assert!(CnTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nats_urls_default_to_port_4222_and_refuse_what_is_not_a_server() {
        let parse = |s| NatsUrl::parse(s).map(|u| u.client_url());
        assert_eq!(
            parse("nats://fleet.local:4223").unwrap(),
            "tls://fleet.local:4223"
        );
        assert_eq!(parse("tls://10.0.0.5").unwrap(), "tls://10.0.0.5:4222");
        assert_eq!(parse("127.0.0.1:4333").unwrap(), "tls://127.0.0.1:4333");
        assert_eq!(parse("fleet").unwrap(), "tls://fleet:4222");
        assert_eq!(parse("[::1]:5000").unwrap(), "tls://[::1]:5000");
        for bad in [
            "http://fleet:4222",
            "nats://user:pass@fleet:4222",
            "nats://fleet:4222/path",
            "nats://:4222",
            "",
            "nats://fleet:99999",
        ] {
            assert!(NatsUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn device_ids_stay_inside_one_subject_token() {
        assert!(check_device_id("0b3c9c7e8f6a4d1e9a432f5a1c0d9e77").is_ok());
        assert!(check_device_id("serial_42-A").is_ok());
        for bad in ["", "a.b", "a*", ">", "a b", "a/b", &"x".repeat(129)] {
            assert!(check_device_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_type_names_parse() {
        assert_eq!(key_type("ec-p256"), Some(KeyAlgorithm::EcP256));
        assert_eq!(key_type("rsa-2048"), Some(KeyAlgorithm::Rsa2048));
        assert_eq!(key_type("rsa-4096"), None);
        assert_eq!(key_type("EC-P256"), None);
    }

    #[test]
    fn machines_get_the_fleet_architecture_names() {
        assert_eq!(fleet_architecture("aarch64"), "arm64");
        assert_eq!(fleet_architecture("x86_64"), "amd64");
        assert_eq!(fleet_architecture("armv7l"), "arm");
        assert_eq!(fleet_architecture("i686"), "386");
        assert_eq!(fleet_architecture("riscv64"), "riscv64");
        assert_eq!(fleet_architecture("mips"), "mips");
    }
}
