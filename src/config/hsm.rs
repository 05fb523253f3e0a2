//! The HSM configuration: `-m/-P/-S` and `/etc/sota/hsm`.

use super::devicefiles::{lookup, parse_shell_vars};
use super::{Resolver, HSM_FILE};
use crate::secret::Secret;
use std::path::PathBuf;

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

/// `None` when the file does not exist (or could not be read, which is
/// recorded as a problem).
fn read_hsm_file(r: &mut Resolver<'_>) -> Option<HsmFile> {
    let path = r.path(HSM_FILE);
    let text = r.read_secret(&path).ok().flatten()?;
    match parse_hsm_file(&text) {
        Ok(file) => Some(file),
        Err(e) => {
            r.problem(format!("{}: {e}", path.display()));
            None
        }
    }
}

pub(super) fn resolve(r: &mut Resolver<'_>) -> Option<HsmSettings> {
    let cli = r.cli;
    let pin = r.secret_flag(cli.hsm_pin.as_ref(), "--hsm-pin");
    let so_pin = r.secret_flag(cli.hsm_so_pin.as_ref(), "--hsm-so-pin");
    let hsm_file = r.path(HSM_FILE);

    if let Some(module) = &cli.hsm_module {
        let (pin, so_pin) = match (pin, so_pin) {
            (Some(pin), Some(so_pin)) => (pin, so_pin),
            (pin, so_pin) => {
                // The PINs may live in the hsm file while the module is given on
                // the command line.
                let from_file = read_hsm_file(r).unwrap_or_default();
                match (pin.or(from_file.pin), so_pin.or(from_file.so_pin)) {
                    (Some(pin), Some(so_pin)) => (pin, so_pin),
                    _ => {
                        r.problem(format!(
                            "--hsm-module needs both a user PIN and an SO PIN (-P/-S or HSM_PIN/HSM_SOPIN in {})",
                            hsm_file.display()
                        ));
                        return None;
                    }
                }
            }
        };
        r.origin("hsm", "command line");
        return Some(HsmSettings {
            module: module.clone(),
            pin,
            so_pin,
        });
    }
    if pin.is_some() || so_pin.is_some() {
        r.problem("--hsm-pin/--hsm-so-pin given without --hsm-module");
        return None;
    }
    // A missing file means no HSM; a present one that names nothing is as
    // broken as one that names only part of the configuration.
    let from_file = read_hsm_file(r)?;
    match (from_file.module, from_file.pin, from_file.so_pin) {
        (Some(module), Some(pin), Some(so_pin)) => {
            r.origin("hsm", hsm_file.display().to_string());
            Some(HsmSettings {
                module,
                pin,
                so_pin,
            })
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
            r.problem(format!(
                "{}: incomplete HSM configuration, missing {} (refusing to fall back to a software key)",
                hsm_file.display(),
                missing.join(", ")
            ));
            None
        }
    }
}
