//! The command line. Names and short flags match the C++ `lmp-device-register`
//! so existing scripts and documentation keep working.

use clap::{ArgAction, Parser, ValueEnum};
use std::path::PathBuf;

/// The fleet backends the agent can register with.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ProfileName {
    /// Linux microPlatform: the factory registration API, then fioconfig.
    #[default]
    Lmp,
    /// Losant dynamic registration: a registration JWT and a manufacturer id.
    #[cfg(feature = "losant")]
    Losant,
    /// TII fleet management: a provisioning server signs the CSR, then NATS registration over mutual TLS.
    #[cfg(feature = "tii")]
    Tii,
    /// Azure IoT Hub Device Provisioning Service: a certificate from the factory, then DPS with it.
    #[cfg(feature = "azure-dps")]
    AzureDps,
}

impl ProfileName {
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileName::Lmp => "lmp",
            #[cfg(feature = "losant")]
            ProfileName::Losant => "losant",
            #[cfg(feature = "tii")]
            ProfileName::Tii => "tii",
            #[cfg(feature = "azure-dps")]
            ProfileName::AzureDps => "azure-dps",
        }
    }

    /// Every profile name, including those a smaller build leaves out, so
    /// that a config file written for a full build still reads.
    pub const ALL_NAMES: &'static [&'static str] = &["lmp", "losant", "tii", "azure-dps"];

    /// The profile called `name`, or why there is none.
    pub fn parse(name: &str) -> Result<ProfileName, String> {
        if let Ok(profile) = ProfileName::from_str(name, false) {
            return Ok(profile);
        }
        if Self::ALL_NAMES.contains(&name) {
            Err(format!(
                "this build has no {name} profile (it was built without the cargo feature {name})"
            ))
        } else {
            Err(format!(
                "unknown profile {name:?} (known: {})",
                Self::ALL_NAMES.join(", ")
            ))
        }
    }
}

/// The profile a flag belongs to; `None` for flags every profile takes.
/// Flags are named by their clap id (the field name).
pub(crate) fn profile_of_flag(id: &str) -> Option<ProfileName> {
    const LMP: &[&str] = &[
        "api_token",
        "api_token_file",
        "api_token_header",
        "factory",
        "tags",
        "hwid",
        "uuid",
        "validate_uuid",
        "name",
        "device_group",
        "production",
        "sota_dir",
        "apps",
        "restorable_apps",
        "start_daemon",
        "use_ostree_server",
        "mlock_all",
        "device_api",
        "oauth_api",
    ];
    #[cfg(feature = "losant")]
    if id == "manufacturer_id" {
        return Some(ProfileName::Losant);
    }
    LMP.contains(&id).then_some(ProfileName::Lmp)
}

/// Parses the boolean words that scripts pass to the old tool's flags.
pub(crate) fn parse_bool_word(word: &str) -> Result<bool, String> {
    match word.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "expected 1/true/yes/on or 0/false/no/off, got {word:?}"
        )),
    }
}

/// Register this device with its factory (software key or PKCS#11 token).
#[derive(Parser, Debug, Default, Clone)]
#[command(name = "lmp-device-register", version, about, long_about = None, args_override_self = true)]
pub struct Cli {
    /// API token (visible to every local user in the process list; prefer --api-token-file).
    #[arg(short = 'T', long, value_name = "TOKEN")]
    pub api_token: Option<String>,

    /// File holding the API token [env: TOKEN_FILE] [default: /etc/lmp-device-register-token when it exists].
    #[arg(long, value_name = "PATH")]
    pub api_token_file: Option<PathBuf>,

    /// HTTP header that carries the API token.
    #[arg(short = 'H', long, value_name = "HEADER")]
    pub api_token_header: Option<String>,

    /// Factory name [env: DEVICE_FACTORY] [default: LMP_FACTORY of /etc/os-release].
    #[arg(short = 'f', long)]
    pub factory: Option<String>,

    /// Only apply updates from Targets with these tags [default: /etc/sota/tag, then LMP_FACTORY_TAG].
    #[arg(short = 't', long)]
    pub tags: Option<String>,

    /// Hardware id of the device type [default: the MACHINE the agent was built for].
    #[arg(short = 'i', long)]
    pub hwid: Option<String>,

    /// Device UUID [default: from the PKCS#11 slot, else random].
    #[arg(short = 'u', long)]
    pub uuid: Option<String>,

    /// Refuse a UUID that is not in 8-4-4-4-12 hex form.
    #[arg(short = 'v', long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool_word, action = ArgAction::Set)]
    pub validate_uuid: Option<bool>,

    /// Device name shown in the dashboard [default: the UUID, or /etc/hostname with USE_HOSTNAME].
    #[arg(short = 'n', long)]
    pub name: Option<String>,

    /// Put the device into this device group.
    #[arg(short = 'g', long)]
    pub device_group: Option<String>,

    /// Mark the device as a production device [env: PRODUCTION].
    #[arg(short = 'p', long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool_word, action = ArgAction::Set)]
    pub production: Option<bool>,

    /// Directory for keys and configuration [default: /var/sota].
    #[arg(short = 'd', long, value_name = "DIR")]
    pub sota_dir: Option<PathBuf>,

    /// Comma-separated compose apps to run [env: APPS] [default: the entries of /var/sota/compose-apps].
    #[arg(short = 'a', long)]
    pub apps: Option<String>,

    /// Comma-separated restorable apps [default: on, for all apps, when /var/sota/reset-apps exists].
    #[arg(short = 'A', long)]
    pub restorable_apps: Option<String>,

    /// Start aktualizr-lite after registering [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool_word, action = ArgAction::Set)]
    pub start_daemon: Option<bool>,

    /// Pull ostree content through the OSTree proxy server [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool_word, action = ArgAction::Set)]
    pub use_ostree_server: Option<bool>,

    /// Replace an existing registration.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool_word, action = ArgAction::Set)]
    pub force: Option<bool>,

    /// Accepted for compatibility; the agent keeps no secret in swappable buffers for long.
    #[arg(short = 'l', long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool_word, action = ArgAction::Set)]
    pub mlock_all: Option<bool>,

    /// PKCS#11 module (.so) of the HSM [default: HSM_MODULE of /etc/sota/hsm].
    #[arg(short = 'm', long, value_name = "PATH")]
    pub hsm_module: Option<PathBuf>,

    /// PKCS#11 user PIN (visible in the process list; prefer /etc/sota/hsm).
    #[arg(short = 'P', long, value_name = "PIN")]
    pub hsm_pin: Option<String>,

    /// PKCS#11 security officer PIN (visible in the process list; prefer /etc/sota/hsm).
    #[arg(short = 'S', long, value_name = "PIN")]
    pub hsm_so_pin: Option<String>,

    /// Losant: the device's manufacturer id [default: manufacturer_id in [losant] of the config file, else the MAC address of the first physical network interface].
    #[cfg(feature = "losant")]
    #[arg(long, value_name = "ID")]
    pub manufacturer_id: Option<String>,

    /// Registration API endpoint [env: DEVICE_API].
    #[arg(long, value_name = "URL")]
    pub device_api: Option<String>,

    /// OAuth2 base URL for interactive authorisation [env: OAUTH_BASE].
    #[arg(long, value_name = "URL")]
    pub oauth_api: Option<String>,

    /// Trust only the CA certificates in this PEM file for HTTPS, instead of the system roots [env: DEVICE_API_CACERT].
    #[arg(long, value_name = "PATH")]
    pub cacert: Option<PathBuf>,

    /// Resolve every default path (/etc, /var/sota, /var/lock) under this directory, which must exist.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Registration profile (fleet backend) [env: REGISTER_PROFILE] [default: `profile` of the config file, else lmp].
    #[arg(long, value_name = "PROFILE", value_parser = |s: &str| ProfileName::parse(s))]
    pub profile: Option<ProfileName>,

    /// Config file with one table per profile [default: /etc/lmp-device-register.toml when it exists].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Also log debug lines (or set RUST_LOG=debug; -v is --validate-uuid, as in the C++ tool).
    #[arg(long)]
    pub verbose: bool,

    /// Print one JSON object with the result on stdout.
    #[arg(long)]
    pub json: bool,

    /// Show what this device is registered as, for every profile with a state dir, and exit; reads only.
    #[arg(long)]
    pub status: bool,

    /// First-boot mode for the systemd unit: an existing registration is success, and network failures are retried until the deadline.
    #[arg(long)]
    pub boot: bool,

    /// Stop retrying network failures after this many seconds [default: 60, or 1800 with --boot].
    #[arg(long, value_name = "SECONDS")]
    pub retry_deadline: Option<u64>,

    /// Give up on one HTTP request after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout: u64,
}
