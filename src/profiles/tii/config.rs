//! The tii profile's settings: the `[tii]` table of the config file, the
//! shared `--cacert`, `/etc/os-release` and the machine, in that order.

use crate::config::{
    parse_url, CaBundle, Declarations, Found, Raw, Reported, Resolver, Setting, Source, CACERT,
};
use crate::keys::KeyAlgorithm;
use std::path::PathBuf;
use std::time::Duration;
use Source::{Default, Key, OsRelease, UnderRoot};

/// The state dir under `--root`.
const STATE_DIR: &str = "var/lib/fleet-registration";
/// TII's device identity format; `{id}` is the device id.
pub const DEFAULT_CN_TEMPLATE: &str = "/Finland~Solita/fleet/{id}/registration_agent";
/// An hour is longer than any fleet manager should need; more is a typo.
const MAX_RESULT_TIMEOUT_SECS: u64 = 3600;
pub const DEFAULT_NATS_PORT: u16 = 4222;

const PROVISIONING_URL: Setting<String, reqwest::Url> = Setting::new(
    "provisioning url",
    "The provisioning server that signs the device's CSR",
    &[Key("provisioning_url")],
)
.required()
.skip_empty()
.check(url);

const DEVICE_TYPE: Setting<String> = Setting::new(
    "device type",
    "The device's type, as the fleet manager knows it",
    &[Key("device_type")],
)
.required()
.skip_empty()
.check(trimmed);

const ARCHITECTURE: Setting<String> = Setting::new(
    "architecture",
    "The device's architecture, in Go's names (aarch64 is arm64, x86_64 amd64, armv7l arm, i686 386)",
    &[
        Key("architecture"),
        Source::Device {
            doc: "the machine (`uname -m`)",
            read: machine_architecture,
        },
    ],
)
.required()
.skip_empty()
.check(trimmed);

const BUILD_VERSION: Setting<String> = Setting::new(
    "build version",
    "The version of the device's software",
    &[Key("build_version"), OsRelease("VERSION_ID")],
)
.required()
.skip_empty()
.check(trimmed);

const CURRENT_OWNER: Setting<String, Option<String>> = Setting::new(
    "current owner",
    "Sent with the registration",
    &[Key("current_owner")],
)
.otherwise("not sent")
.check(optional);

const TAILSCALE_ID: Setting<String, Option<String>> = Setting::new(
    "tailscale id",
    "Sent with the registration",
    &[Key("tailscale_id")],
)
.otherwise("not sent")
.check(optional);

const ALIAS: Setting<String, Option<String>> = Setting::new(
    "alias",
    "The device's name in the fleet manager",
    &[Key("alias")],
)
.otherwise("not sent")
.check(optional);

const DEVICE_ID: Setting<String, Option<String>> = Setting::new(
    "device id",
    "The device's id: letters, digits, - and _, at most 128 (it is part of NATS subjects)",
    &[Key("device_id")],
)
.otherwise("a random UUIDv4 without dashes")
.check(device_id);

const CN_TEMPLATE: Setting<String, CnTemplate> = Setting::new(
    "certificate name template",
    "The certificate's common name: {id} once, for the device id",
    &[Key("cn_template"), Default(DEFAULT_CN_TEMPLATE)],
)
.check(cn_template);

const KEY_TYPE: Setting<String, KeyAlgorithm> = Setting::new(
    "key type",
    "The device key: ec-p256 or rsa-2048 (in software, or in the token of /etc/sota/hsm)",
    &[Key("key_type"), Default("ec-p256")],
)
.check(key_algorithm);

const NATS_URL: Setting<String, NatsUrl> = Setting::new(
    "NATS URL",
    "The fleet manager's NATS server, always over TLS",
    &[Key("nats_url")],
)
.otherwise("the provisioning answer's `fleetManagementNatsUrl`")
.check(nats_url);

const RESULT_TIMEOUT: Setting<u64, Duration> = Setting::new(
    "result timeout",
    "Seconds to wait for the registration's result (1 to 3600)",
    &[Key("result_timeout"), Default("60")],
)
.check(result_timeout);

const STATE_DIR_SETTING: Setting<PathBuf> = Setting::new(
    "state dir",
    "Where the key, the certificates and registration.json go (made 0700)",
    &[Key("state_dir"), UnderRoot(STATE_DIR)],
);

pub(super) const SETTINGS: Declarations = &[
    &PROVISIONING_URL,
    &DEVICE_TYPE,
    &ARCHITECTURE,
    &BUILD_VERSION,
    &CURRENT_OWNER,
    &TAILSCALE_ID,
    &ALIAS,
    &DEVICE_ID,
    &CN_TEMPLATE,
    &KEY_TYPE,
    &NATS_URL,
    &RESULT_TIMEOUT,
    &STATE_DIR_SETTING,
    &CACERT,
];

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

fn url(value: String, what: &str) -> Result<reqwest::Url, String> {
    parse_url(what, value.trim())
}

fn trimmed(value: String, _what: &str) -> Result<String, String> {
    Ok(value.trim().to_string())
}

/// An optional string setting; empty means unset.
fn optional(value: String, _what: &str) -> Result<Option<String>, String> {
    Ok(Some(value.trim().to_string()).filter(|v| !v.is_empty()))
}

fn device_id(id: String, what: &str) -> Result<Option<String>, String> {
    let Some(id) = optional(id, what)? else {
        return Ok(None);
    };
    check_device_id(&id).map_err(|e| format!("{what}: {e}"))?;
    Ok(Some(id))
}

fn cn_template(template: String, what: &str) -> Result<CnTemplate, String> {
    CnTemplate::parse(&template).map_err(|e| format!("{what}: {e}"))
}

fn key_algorithm(name: String, what: &str) -> Result<KeyAlgorithm, String> {
    key_type(&name).ok_or_else(|| {
        let known: Vec<&str> = KEY_TYPES.iter().map(|(known, _)| *known).collect();
        format!(
            "{what}: unknown key type {name:?} (known: {})",
            known.join(", ")
        )
    })
}

fn nats_url(url: String, what: &str) -> Result<NatsUrl, String> {
    NatsUrl::parse(&url).map_err(|e| format!("{what}: {e}"))
}

fn result_timeout(seconds: u64, what: &str) -> Result<Duration, String> {
    if (1..=MAX_RESULT_TIMEOUT_SECS).contains(&seconds) {
        Ok(Duration::from_secs(seconds))
    } else {
        Err(format!(
            "{what}: {seconds} is not between 1 and {MAX_RESULT_TIMEOUT_SECS} seconds"
        ))
    }
}

fn machine_architecture(_r: &mut Resolver<'_>) -> Result<Option<Found<Raw>>, Reported> {
    Ok(machine().map(|machine| {
        let from = format!("the machine ({machine})");
        Found::device(Raw::text(fleet_architecture(&machine)), from)
    }))
}

pub fn resolve(r: &mut Resolver<'_>) -> Option<TiiSettings> {
    let state_dir = r.get(&STATE_DIR_SETTING);
    let provisioning_url = r.get(&PROVISIONING_URL);
    let device_type = r.get(&DEVICE_TYPE);
    let architecture = r.get(&ARCHITECTURE);
    let build_version = r.get(&BUILD_VERSION);
    let current_owner = r.get(&CURRENT_OWNER);
    let tailscale_id = r.get(&TAILSCALE_ID);
    let alias = r.get(&ALIAS);
    let device_id = r.get(&DEVICE_ID);
    let cn_template = r.get(&CN_TEMPLATE);
    let key_type = r.get(&KEY_TYPE);
    let nats_url = r.get(&NATS_URL);
    let result_timeout = r.get(&RESULT_TIMEOUT);
    let cacert = r.get(&CACERT);
    Some(TiiSettings {
        state_dir: state_dir?,
        provisioning_url: provisioning_url?,
        device_type: device_type?,
        architecture: architecture?,
        build_version: build_version?,
        current_owner: current_owner.flatten(),
        tailscale_id: tailscale_id.flatten(),
        alias: alias.flatten(),
        device_id: device_id.flatten(),
        cn_template: cn_template?,
        key_type: key_type?,
        nats_url,
        result_timeout: result_timeout?,
        cacert,
    })
}

/// The state dir alone (for `--status`).
pub(crate) fn state_dir(r: &mut Resolver<'_>) -> Option<PathBuf> {
    r.get(&STATE_DIR_SETTING)
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
