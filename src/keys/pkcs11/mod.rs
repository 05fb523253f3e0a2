//! Keys in a PKCS#11 token (an NXP SE050 behind OP-TEE's `libckteec.so.0`
//! in production, SoftHSM2 in tests): loading the module, finding or
//! initialising the profile's token, the key pair and certificate objects in
//! it, and signing with the key for CSRs and for TLS handshakes.

mod der;
mod probe;
#[cfg(feature = "mutual-tls")]
mod signer;
mod token;

pub use probe::TokenSlot;
#[cfg(feature = "mutual-tls")]
pub use signer::TlsSigner;
pub use token::{Token, TokenKey};

use super::TokenLayout;
use crate::config::HsmSettings;
use crate::error::{Error, ErrorKind, Result, ResultExt};
use crate::secret::Secret;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::path::Path;
use std::sync::Arc;

/// PINs the SE050/OP-TEE module accepts.
const PIN_LENGTHS: std::ops::RangeInclusive<usize> = 4..=128;

/// A fully static musl binary has no dynamic loader, so it cannot load a
/// PKCS#11 module at all.
const STATIC_BUILD: bool = cfg!(all(target_env = "musl", target_feature = "crt-static"));

pub(crate) fn hsm_error(what: impl std::fmt::Display, e: P11Error) -> Error {
    let detail = match &e {
        P11Error::Pkcs11(rv, function) => format!("{function:?} returned {rv:?}"),
        other => other.to_string(),
    };
    Error::new(ErrorKind::Hsm, format!("{what}: {detail}"))
}

pub(crate) fn rv_of(e: &P11Error) -> Option<RvError> {
    match e {
        P11Error::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

fn check_pin(pin: &Secret, what: &str) -> Result<()> {
    let len = pin.expose().len();
    if PIN_LENGTHS.contains(&len) {
        Ok(())
    } else {
        Err(Error::config(format!(
            "the {what} must be {} to {} bytes long, it is {len}",
            PIN_LENGTHS.start(),
            PIN_LENGTHS.end()
        )))
    }
}

fn check_module_file(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).with_kind_context(ErrorKind::Config, || {
        format!("PKCS#11 module {}", path.display())
    })?;
    if !meta.is_file() {
        return Err(Error::config(format!(
            "PKCS#11 module {} is not a file",
            path.display()
        )));
    }
    nix::unistd::access(path, nix::unistd::AccessFlags::R_OK).map_err(|e| {
        Error::config(format!(
            "PKCS#11 module {} is not readable: {e}",
            path.display()
        ))
    })
}

fn auth_pin(pin: &Secret) -> AuthPin {
    AuthPin::from(pin.expose().to_string())
}

/// Logs in as the user, once: a second attempt with the same wrong PIN
/// only brings the token closer to locking itself.
fn login_user(session: &cryptoki::session::Session, pin: &Secret, label: &str) -> Result<()> {
    match session.login(UserType::User, Some(&auth_pin(pin))) {
        Ok(()) => Ok(()),
        Err(e) if rv_of(&e) == Some(RvError::UserAlreadyLoggedIn) => Ok(()),
        Err(e) if rv_of(&e) == Some(RvError::PinIncorrect) => Err(Error::new(
            ErrorKind::Hsm,
            format!("the HSM user PIN is wrong: token {label} refused it (not retrying, so as not to lock the token)"),
        )),
        Err(e) if rv_of(&e) == Some(RvError::PinLocked) => Err(Error::new(
            ErrorKind::Hsm,
            format!("the HSM user PIN of token {label} is locked after too many wrong attempts"),
        )),
        Err(e) => Err(hsm_error(format!("cannot log in to token {label}"), e)),
    }
}

/// A loaded and initialised PKCS#11 module; nothing on any token has been
/// touched yet.
pub struct Module {
    pub(crate) ctx: Pkcs11,
    pub(crate) settings: HsmSettings,
}

impl Module {
    /// Checks the configuration and loads the module. Runs before anything
    /// is created, so a wrong `HSM_MODULE` or PIN leaves no trace.
    pub fn load(settings: &HsmSettings) -> Result<Module> {
        let path = &settings.module;
        if STATIC_BUILD {
            return Err(Error::new(
                ErrorKind::Hsm,
                format!(
                    "this lmp-device-register is a fully static (musl) build, which cannot load the PKCS#11 module {}; use the glibc build (the one from the Yocto/LmP image) for keys in an HSM",
                    path.display()
                ),
            ));
        }
        check_pin(&settings.pin, "HSM user PIN")?;
        check_pin(&settings.so_pin, "HSM SO PIN")?;
        check_module_file(path)?;
        let ctx = Pkcs11::new(path).map_err(|e| match e {
            P11Error::LibraryLoading(e) => Error::config(format!(
                "cannot load the PKCS#11 module {}: {e}",
                path.display()
            )),
            P11Error::MissingSymbol(symbol) => Error::config(format!(
                "{} is not a PKCS#11 module (it has no {symbol})",
                path.display()
            )),
            other => hsm_error(
                format!("cannot load the PKCS#11 module {}", path.display()),
                other,
            ),
        })?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(|e| {
                hsm_error(
                    format!("the PKCS#11 module {} failed to start", path.display()),
                    e,
                )
            })?;
        tracing::debug!("loaded PKCS#11 module {}", path.display());
        Ok(Module {
            ctx,
            settings: settings.clone(),
        })
    }

    /// Finds the `aktualizr` token (initialising a blank one if there is
    /// none) and logs in as the user, exactly once.
    pub fn open_token(self, layout: TokenLayout) -> Result<Arc<Token>> {
        let label = layout.token_label;
        let slot = self.find_or_init_token(label)?;
        let session = self
            .ctx
            .open_rw_session(slot)
            .map_err(|e| hsm_error(format!("cannot open a session on token {label}"), e))?;
        login_user(&session, &self.settings.pin, label)?;
        tracing::info!("logged in to PKCS#11 token {label} (slot {})", slot.id());
        if let Some(warning) = self.derive_warning(slot, &layout) {
            tracing::warn!("{warning}; registering anyway");
        }
        Ok(Arc::new(Token::new(session, self, slot, layout)))
    }

    /// The mechanisms the token in `slot` offers.
    pub(crate) fn mechanisms(&self, slot: Slot) -> Result<Vec<MechanismType>> {
        self.ctx.get_mechanism_list(slot).map_err(|e| {
            hsm_error(
                format!("cannot list the mechanisms of slot {}", slot.id()),
                e,
            )
        })
    }

    /// What to say when a program that uses the key needs ECDH through the
    /// token (LmP's fioconfig) and the token cannot derive: tpm2-pkcs11 1.9
    /// is one such module. A token that cannot list its mechanisms is
    /// taken at its word that it has none.
    pub(crate) fn derive_warning(&self, slot: Slot, layout: &TokenLayout) -> Option<String> {
        let consumer = layout.derive_needed_by?;
        let derives = self
            .mechanisms(slot)
            .is_ok_and(|list| list.contains(&MechanismType::ECDH1_DERIVE));
        (!derives).then(|| {
            format!(
                "token {} cannot derive (CKM_ECDH1_DERIVE): {consumer} needs ECDH through the token and will fail with this key",
                layout.token_label
            )
        })
    }

    fn slots_with_token(&self) -> Result<Vec<(Slot, cryptoki::slot::TokenInfo)>> {
        let slots = self
            .ctx
            .get_slots_with_token()
            .map_err(|e| hsm_error("cannot list the PKCS#11 slots", e))?;
        slots
            .into_iter()
            .map(|slot| {
                self.ctx
                    .get_token_info(slot)
                    .map(|info| (slot, info))
                    .map_err(|e| {
                        hsm_error(format!("cannot read the token in slot {}", slot.id()), e)
                    })
            })
            .collect()
    }

    fn find_or_init_token(&self, label: &str) -> Result<Slot> {
        let slots = self.slots_with_token()?;
        if let Some((slot, info)) = slots
            .iter()
            .find(|(_, info)| info.token_initialized() && info.label() == label)
        {
            if !info.user_pin_initialized() {
                // An earlier run was cut off between C_InitToken and C_InitPIN.
                tracing::warn!("token {label} has no user PIN yet; setting it");
                self.init_user_pin(*slot, label)?;
            } else {
                tracing::debug!("found token {label} in slot {}", slot.id());
            }
            return Ok(*slot);
        }
        let Some((blank, _)) = slots.iter().find(|(_, info)| !info.token_initialized()) else {
            return Err(Error::new(
                ErrorKind::Hsm,
                format!("the PKCS#11 module has no token labelled {label} and no uninitialised token to create it in"),
            ));
        };
        tracing::info!("initialising token {label} in slot {}", blank.id());
        // C_InitToken fails with CKR_SESSION_EXISTS while any session is open
        // on the token: this process opens none before this point, so the
        // only cause left is another program using it.
        self.ctx
            .init_token(*blank, &auth_pin(&self.settings.so_pin), label)
            .map_err(|e| {
                if rv_of(&e) == Some(RvError::SessionExists) {
                    Error::new(
                        ErrorKind::Hsm,
                        format!("cannot initialise token {label}: another program has a session open on the blank token in slot {}", blank.id()),
                    )
                } else {
                    hsm_error(format!("cannot initialise token {label}"), e)
                }
            })?;
        // Initialising can change the slot list (SoftHSM2 adds a new blank
        // slot and later lists the token under an id derived from its
        // serial), so look the token up again by its label.
        let slot = self
            .slots_with_token()?
            .into_iter()
            .find(|(_, info)| info.token_initialized() && info.label() == label)
            .map(|(slot, _)| slot)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Hsm,
                    format!("token {label} cannot be found after initialising it"),
                )
            })?;
        self.init_user_pin(slot, label)?;
        tracing::info!("initialised token {label} and set its user PIN");
        Ok(slot)
    }

    fn init_user_pin(&self, slot: Slot, label: &str) -> Result<()> {
        let session = self
            .ctx
            .open_rw_session(slot)
            .map_err(|e| hsm_error(format!("cannot open a session on token {label}"), e))?;
        session
            .login(UserType::So, Some(&auth_pin(&self.settings.so_pin)))
            .map_err(|e| {
                if rv_of(&e) == Some(RvError::PinIncorrect) {
                    Error::new(
                        ErrorKind::Hsm,
                        format!("the HSM SO PIN is wrong: token {label} refused it (not retrying)"),
                    )
                } else {
                    hsm_error(
                        format!("cannot log in to token {label} as security officer"),
                        e,
                    )
                }
            })?;
        session
            .init_pin(&auth_pin(&self.settings.pin))
            .map_err(|e| hsm_error(format!("cannot set the user PIN of token {label}"), e))?;
        let _ = session.logout();
        session
            .close()
            .map_err(|e| hsm_error("cannot close the security officer session", e))
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if let Err(e) = self.ctx.clone().finalize() {
            tracing::debug!("C_Finalize: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_length_is_checked() {
        assert!(check_pin(&Secret::new("1234"), "PIN").is_ok());
        assert!(check_pin(&Secret::new("x".repeat(128)), "PIN").is_ok());
        let err = check_pin(&Secret::new("123"), "HSM user PIN").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(!err.to_string().contains("123\""));
        assert!(check_pin(&Secret::new("x".repeat(129)), "PIN").is_err());
    }
}
