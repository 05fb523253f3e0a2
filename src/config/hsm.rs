//! The HSM configuration: `-m/-P/-S` and `/etc/sota/hsm`, for the profiles
//! that keep their key in a PKCS#11 token.

use super::devicefiles::{lookup, parse_shell_vars};
use super::setting::{flag, Declarations, Found, Kind, Setting, Source};
use super::{Reported, Resolver, HSM_FILE};
use crate::secret::Secret;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

const MODULE: Setting<PathBuf> = Setting::new(
    "HSM module",
    "PKCS#11 module (.so) of the HSM",
    &[
        flag("hsm-module", 'm', "PATH"),
        Source::Device {
            doc: "`HSM_MODULE` in `/etc/sota/hsm`",
            read: |r| r.hsm_file("HSM_MODULE"),
        },
    ],
)
.otherwise("a software key");

const PIN: Setting<Secret> = Setting::new(
    "HSM user PIN",
    "PKCS#11 user PIN (visible in the process list; prefer /etc/sota/hsm)",
    &[
        flag("hsm-pin", 'P', "PIN"),
        Source::Device {
            doc: "`HSM_PIN` in `/etc/sota/hsm`",
            read: |r| r.hsm_file("HSM_PIN"),
        },
    ],
)
.secret();

const SO_PIN: Setting<Secret> = Setting::new(
    "HSM security officer PIN",
    "PKCS#11 security officer PIN (visible in the process list; prefer /etc/sota/hsm)",
    &[
        flag("hsm-so-pin", 'S', "PIN"),
        Source::Device {
            doc: "`HSM_SOPIN` in `/etc/sota/hsm`",
            read: |r| r.hsm_file("HSM_SOPIN"),
        },
    ],
)
.secret();

/// The settings of a key in a token, shared by the profiles that keep one.
pub(crate) const SETTINGS: Declarations = &[&MODULE, &PIN, &SO_PIN];

#[derive(Debug, Clone)]
pub struct HsmSettings {
    pub module: PathBuf,
    pub pin: Secret,
    pub so_pin: Secret,
}

impl HsmSettings {
    /// The module's path as programs that run from another directory need
    /// it in their configuration: absolute, with symlinks kept as given so
    /// that a library upgrade does not break it.
    pub fn absolute_module(&self) -> PathBuf {
        std::path::absolute(&self.module).unwrap_or_else(|_| self.module.clone())
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

impl HsmFile {
    /// The value of one of its variables.
    pub(super) fn get(&self, var: &str) -> Option<OsString> {
        match var {
            "HSM_MODULE" => self.module.clone().map(PathBuf::into_os_string),
            "HSM_PIN" => self.pin.as_ref().map(|pin| pin.expose().into()),
            "HSM_SOPIN" => self.so_pin.as_ref().map(|pin| pin.expose().into()),
            _ => None,
        }
    }
}

/// `Ok(None)` when the file does not exist; `Err` when it cannot be read
/// or parsed (recorded as a problem).
pub(super) fn read_hsm_file(
    r: &mut Resolver<'_>,
    path: &Path,
) -> Result<Option<HsmFile>, Reported> {
    let Some(text) = r.read_secret(path)? else {
        return Ok(None);
    };
    match parse_hsm_file(&text) {
        Ok(file) => Ok(Some(file)),
        Err(e) => {
            r.problem(format!("{}: {e}", path.display()));
            Err(Reported)
        }
    }
}

fn on_command_line<T>(found: &Option<Found<T>>) -> bool {
    matches!(
        found,
        Some(Found {
            kind: Kind::CommandLine,
            ..
        })
    )
}

/// The three settings together: all from the command line and the file,
/// or none at all. A module on the command line may take its PINs from the
/// file; PINs on the command line need the module there too; a file that
/// names only part of it is broken, not a reason to fall back to a software
/// key.
pub(super) fn resolve(r: &mut Resolver<'_>) -> Option<HsmSettings> {
    let hsm_file = r.path(HSM_FILE);
    let module = r.found(&MODULE);
    let pin = r.found(&PIN);
    let so_pin = r.found(&SO_PIN);
    let module_given = on_command_line(&module);
    if !module_given && (on_command_line(&pin) || on_command_line(&so_pin)) {
        r.problem("--hsm-pin/--hsm-so-pin given without --hsm-module");
        return None;
    }
    match (module, pin, so_pin) {
        (Some(module), Some(pin), Some(so_pin)) => Some(HsmSettings {
            module: module.value,
            pin: pin.value,
            so_pin: so_pin.value,
        }),
        _ if module_given => {
            r.problem(format!(
                "--hsm-module needs both a user PIN and an SO PIN (-P/-S or HSM_PIN/HSM_SOPIN in {})",
                hsm_file.display()
            ));
            None
        }
        (module, pin, so_pin) if r.hsm_file_exists() => {
            let missing: Vec<&str> = [
                ("HSM_MODULE", module.is_none()),
                ("HSM_PIN", pin.is_none()),
                ("HSM_SOPIN", so_pin.is_none()),
            ]
            .into_iter()
            .filter_map(|(name, absent)| absent.then_some(name))
            .collect();
            r.problem(format!(
                "{}: incomplete HSM configuration, missing {} (refusing to fall back to a software key)",
                hsm_file.display(),
                missing.join(", ")
            ));
            None
        }
        // No file (or a broken one, reported already) and no flags.
        _ => None,
    }
}
