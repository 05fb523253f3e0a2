//! The PKCS#11 checks: the module loads, the profile's token is there (or a
//! blank slot a registration would initialise), it offers the mechanisms
//! the profile needs, the user PIN, and the key pair a registration left.
//!
//! Only the login touches the token: at most one C_Login per run, as the
//! user, on a read-only session, and none when the token says a wrong PIN
//! was entered since the last good login, or that the next wrong one locks
//! it. The SO PIN is never used; nothing is initialised or created.

use super::Line;
use crate::config::Common;
use crate::keys::pkcs11::{Module, TokenSlot};
use crate::keys::{KeyAlgorithm, KeySpec};
use crate::profiles::{Backend, Profile};
use cryptoki::mechanism::MechanismType;
use cryptoki::slot::{Slot, TokenInfo};
use rcgen::PublicKeyData;

const AREA: &str = "token";

/// The token's lines, and the public key of the key pair in it, when one
/// was found and signs.
#[derive(Default)]
pub(super) struct Findings {
    pub lines: Vec<Line>,
    pub public_key: Option<Vec<u8>>,
}

pub(super) fn check(common: &Common, profile: &Profile) -> Findings {
    let mut found = Findings::default();
    let (Some(spec), Some(hsm)) = (profile.key_spec(), &common.hsm) else {
        return found;
    };
    let module = match Module::load(hsm) {
        Ok(module) => module,
        Err(e) => {
            found.lines.push(Line::fail(
                AREA,
                "module",
                e.to_string(),
                "fix HSM_MODULE (and the PINs' length) in /etc/sota/hsm or -m/-P/-S; a TPM's module also needs its environment (docs/tpm.md)",
            ));
            return found;
        }
    };
    found.lines.push(Line::pass(
        AREA,
        "module",
        format!("{} loads", hsm.module.display()),
    ));
    let label = spec.token.token_label;
    let (slot, info) = match module.locate_token(label) {
        Ok(TokenSlot::Found(slot, info)) => (slot, Some(info)),
        Ok(TokenSlot::Blank(slot)) => {
            found.lines.push(Line::pass(AREA, format!("token {label}"), format!("not there yet; a registration initialises the blank token in slot {} with the SO PIN", slot.id())));
            (slot, None)
        }
        Ok(TokenSlot::Missing) => {
            found.lines.push(Line::fail(
                AREA,
                format!("token {label}"),
                "no such token, and no blank token to initialise",
                "make the token (tpm2_ptool addtoken, softhsm2-util --init-token) or free a slot",
            ));
            return found;
        }
        Err(e) => {
            found.lines.push(Line::fail(
                AREA,
                format!("token {label}"),
                e.to_string(),
                "check the module's own configuration and environment",
            ));
            return found;
        }
    };
    found.lines.extend(mechanisms(&module, slot, &spec));
    if let Some(info) = info {
        found.lines.push(Line::pass(
            AREA,
            format!("token {label}"),
            format!("in slot {}", slot.id()),
        ));
        log_in(module, slot, &info, &spec, &mut found);
    }
    found
}

/// The mechanisms the profile's key needs, and those its consumers need.
fn mechanisms(module: &Module, slot: Slot, spec: &KeySpec) -> Vec<Line> {
    let offered = match module.mechanisms(slot) {
        Ok(list) => list,
        Err(e) => {
            return vec![Line::fail(
                AREA,
                "mechanisms",
                e.to_string(),
                "check the module",
            )]
        }
    };
    let needed: &[(MechanismType, &str)] = match spec.algorithm {
        KeyAlgorithm::EcP256 => &[
            (MechanismType::ECC_KEY_PAIR_GEN, "EC key generation"),
            (MechanismType::ECDSA, "ECDSA"),
        ],
        KeyAlgorithm::Rsa2048 => &[
            (MechanismType::RSA_PKCS_KEY_PAIR_GEN, "RSA key generation"),
            (MechanismType::RSA_PKCS, "RSA PKCS#1 signatures"),
        ],
    };
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(mechanism, _)| !offered.contains(mechanism))
        .map(|(_, name)| *name)
        .collect();
    let names: Vec<&str> = needed.iter().map(|(_, name)| *name).collect();
    let mut lines = vec![if missing.is_empty() {
        Line::pass(
            AREA,
            "mechanisms",
            format!(
                "{} for the {} key",
                names.join(", "),
                spec.algorithm.describe()
            ),
        )
    } else {
        Line::fail(
            AREA,
            "mechanisms",
            format!(
                "the token cannot do {} for the {} key",
                missing.join(", "),
                spec.algorithm.describe()
            ),
            "use a module and token that can, or keep the key in software (no HSM configured)",
        )
    }];
    if let Some(consumer) = spec.token.derive_needed_by {
        lines.push(if offered.contains(&MechanismType::ECDH1_DERIVE) {
            Line::pass(AREA, "ECDH", format!("the token derives (CKM_ECDH1_DERIVE), as {consumer} needs"))
        } else {
            Line::warn(AREA, "ECDH", format!("the token cannot derive (no CKM_ECDH1_DERIVE): {consumer} needs ECDH through the token and will fail with this key"), format!("use a module with CKM_ECDH1_DERIVE (tpm2-pkcs11 1.9 has none: docs/tpm.md), or accept that {consumer} cannot decrypt its configuration"))
        });
    }
    if spec.algorithm == KeyAlgorithm::Rsa2048 && !offered.contains(&MechanismType::RSA_PKCS_PSS) {
        lines.push(Line::warn(
            AREA,
            "RSA-PSS",
            "the token has no CKM_RSA_PKCS_PSS: mutual TLS with this key is limited to TLS 1.2",
            "make sure the fleet's servers accept TLS 1.2, or use a token with RSA-PSS",
        ));
    }
    lines
}

/// The one login of the run, unless the token's flags say not to; then the
/// key pair, if a registration made one.
fn log_in(module: Module, slot: Slot, info: &TokenInfo, spec: &KeySpec, found: &mut Findings) {
    let label = spec.token.token_label;
    let refuse = |detail: &str, hint: &str| Line::fail(AREA, "user PIN", detail, hint);
    let line = if info.user_pin_locked() {
        refuse(
            "the token has locked its user PIN after too many wrong attempts; not tried",
            "unlock or re-initialise the token with the SO PIN; registering cannot work until then",
        )
    } else if !info.user_pin_initialized() {
        Line::warn(
            AREA,
            "user PIN",
            "the token has no user PIN yet; a registration sets it with the SO PIN",
            "nothing to do, unless the SO PIN is wrong",
        )
    } else if info.user_pin_final_try() || info.user_pin_count_low() {
        let why = match info.user_pin_final_try() {
            true => "one more wrong user PIN locks the token",
            false => "the token has refused a user PIN since its last successful login",
        };
        refuse(&format!("{why}; not tried, so as not to bring it closer to locking"), "make sure HSM_PIN in /etc/sota/hsm is the token's user PIN; a registration with the right PIN clears this")
    } else {
        match module.log_in_read_only(slot, spec.token.clone()) {
            Err(e) => refuse(
                &e.to_string(),
                "correct HSM_PIN in /etc/sota/hsm (or -P); --check does not try it again",
            ),
            Ok(token) => {
                found.lines.push(Line::pass(
                    AREA,
                    "user PIN",
                    format!("token {label} accepted it (one login)"),
                ));
                match token.existing_key(spec.algorithm) {
                    Ok(Some(key)) => {
                        found.public_key = Some(key.der_bytes().to_vec());
                        Line::pass(
                            AREA,
                            "key",
                            format!(
                                "`{}` key pair present; it signs, and its halves match",
                                spec.token.key_label
                            ),
                        )
                    }
                    Ok(None) => Line::pass(
                        AREA,
                        "key",
                        format!(
                            "no `{}` key yet: a registration makes it",
                            spec.token.key_label
                        ),
                    ),
                    Err(e) => Line::fail(
                        AREA,
                        "key",
                        e.to_string(),
                        "register again with --force to replace the key",
                    ),
                }
            }
        }
    };
    found.lines.push(line);
}
