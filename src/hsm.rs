//! The device key in a PKCS#11 token (an NXP SE050 behind OP-TEE's
//! `libckteec.so.0` in production, SoftHSM2 in tests).
//!
//! The objects follow what aktualizr-lite and fioconfig look for: token
//! `aktualizr`, an EC P-256 key pair labelled `tls` with CKA_ID 01 and a
//! certificate labelled `client` with CKA_ID 03. fioconfig finds the key
//! *pair* by CKA_ID and decrypts the device configuration with ECDH through
//! the token, so the public key object stays beside the private key and both
//! may derive.

use crate::error::{Error, ErrorKind, Result, ResultExt};
use crate::secret::Secret;
use crate::settings::HsmSettings;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{
    Attribute, AttributeType, CertificateType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey, PKCS_ECDSA_P256_SHA256};
use std::cell::{Cell, RefCell};
use std::path::Path;

pub const TOKEN_LABEL: &str = "aktualizr";
pub const KEY_LABEL: &str = "tls";
pub const CERT_LABEL: &str = "client";

/// CKA_ID of the key pair and of the certificate, as written in `[p11]`.
///
/// Readers of `[p11]` turn these strings into CKA_ID bytes in two ways that
/// agree for these values: fioconfig's `idToBytes` takes each character minus
/// `'0'` and strips leading zero bytes ("01" -> [0x01]); aktualizr builds a
/// PKCS#11 URI `id=%01`, i.e. hex ("01" -> [0x01]). They would disagree for an
/// id such as "10", which is why only single-digit ids are used (rotation by
/// fioconfig uses "07" and "09").
pub const KEY_ID: &str = "01";
pub const CERT_ID: &str = "03";

/// PINs the SE050/OP-TEE module accepts.
const PIN_LENGTHS: std::ops::RangeInclusive<usize> = 4..=128;

/// A fully static musl binary has no dynamic loader, so it cannot load a
/// PKCS#11 module at all.
const STATIC_BUILD: bool = cfg!(all(target_env = "musl", target_feature = "crt-static"));

/// The CKA_ID bytes for one of the `[p11]` id strings, parsed as fioconfig
/// parses them (see [`KEY_ID`]).
pub fn cka_id(id: &str) -> Vec<u8> {
    let digits: Vec<u8> = id.bytes().map(|c| c.wrapping_sub(b'0')).collect();
    let first = digits.iter().position(|&d| d != 0).unwrap_or(digits.len());
    digits[first..].to_vec()
}

/// The first canonical (8-4-4-4-12 hex) UUID inside a slot description, as
/// OP-TEE writes it: `OP-TEE PKCS11 TA - TEE UUID <uuid>`.
pub fn uuid_in_description(description: &str) -> Option<String> {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    let bytes = description.as_bytes();
    (0..bytes.len().saturating_sub(35)).find_map(|start| {
        let candidate = bytes.get(start..start + 36)?;
        let mut at = 0;
        for (i, len) in GROUPS.iter().enumerate() {
            if !candidate[at..at + len].iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            at += len;
            if i < GROUPS.len() - 1 {
                if candidate[at] != b'-' {
                    return None;
                }
                at += 1;
            }
        }
        let before_ok = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let after_ok = bytes
            .get(start + 36)
            .is_none_or(|b| !b.is_ascii_alphanumeric());
        (before_ok && after_ok).then(|| String::from_utf8_lossy(candidate).to_ascii_lowercase())
    })
}

/// DER of the named curve P-256 (prime256v1), for CKA_EC_PARAMS.
fn p256_params() -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_oid(&yasna::models::ObjectIdentifier::from_slice(&[
            1, 2, 840, 10045, 3, 1, 7,
        ]))
    })
}

/// CKM_ECDSA returns r||s; X.509 and TLS want DER ECDSA-Sig-Value.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    Some(yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_bigint_bytes(r, true);
            w.next().write_bigint_bytes(s, true);
        })
    }))
}

/// The uncompressed point from CKA_EC_POINT. PKCS#11 says it is a DER OCTET
/// STRING around the point; some modules return the bare point.
fn ec_point(value: &[u8]) -> Option<Vec<u8>> {
    let point = match yasna::parse_der(value, |r| r.read_bytes()) {
        Ok(inner) => inner,
        Err(_) => value.to_vec(),
    };
    (point.len() == 65 && point[0] == 0x04).then_some(point)
}

fn hsm_error(what: impl std::fmt::Display, e: P11Error) -> Error {
    let detail = match &e {
        P11Error::Pkcs11(rv, function) => format!("{function:?} returned {rv:?}"),
        other => other.to_string(),
    };
    Error::new(ErrorKind::Hsm, format!("{what}: {detail}"))
}

fn rv_of(e: &P11Error) -> Option<RvError> {
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

/// A loaded and initialised PKCS#11 module; nothing on any token has been
/// touched yet.
pub struct Module {
    ctx: Pkcs11,
    settings: HsmSettings,
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
    pub fn open_token(self) -> Result<Token> {
        let slot = self.find_or_init_token()?;
        let session = self
            .ctx
            .open_rw_session(slot)
            .map_err(|e| hsm_error(format!("cannot open a session on token {TOKEN_LABEL}"), e))?;
        // A second attempt with the same wrong PIN only brings the token
        // closer to locking itself.
        match session.login(UserType::User, Some(&auth_pin(&self.settings.pin))) {
            Ok(()) => {}
            Err(e) if rv_of(&e) == Some(RvError::UserAlreadyLoggedIn) => {}
            Err(e) if rv_of(&e) == Some(RvError::PinIncorrect) => {
                return Err(Error::new(
                    ErrorKind::Hsm,
                    format!("the HSM user PIN is wrong: token {TOKEN_LABEL} refused it (not retrying, so as not to lock the token)"),
                ))
            }
            Err(e) if rv_of(&e) == Some(RvError::PinLocked) => {
                return Err(Error::new(
                    ErrorKind::Hsm,
                    format!("the HSM user PIN of token {TOKEN_LABEL} is locked after too many wrong attempts"),
                ))
            }
            Err(e) => return Err(hsm_error(format!("cannot log in to token {TOKEN_LABEL}"), e)),
        }
        tracing::info!(
            "logged in to PKCS#11 token {TOKEN_LABEL} (slot {})",
            slot.id()
        );
        Ok(Token {
            session: Some(session),
            module: self,
            slot,
            created: RefCell::new(Vec::new()),
            keep: Cell::new(false),
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

    fn find_or_init_token(&self) -> Result<Slot> {
        let slots = self.slots_with_token()?;
        if let Some((slot, info)) = slots
            .iter()
            .find(|(_, info)| info.token_initialized() && info.label() == TOKEN_LABEL)
        {
            if !info.user_pin_initialized() {
                // An earlier run was cut off between C_InitToken and C_InitPIN.
                tracing::warn!("token {TOKEN_LABEL} has no user PIN yet; setting it");
                self.init_user_pin(*slot)?;
            } else {
                tracing::debug!("found token {TOKEN_LABEL} in slot {}", slot.id());
            }
            return Ok(*slot);
        }
        let Some((blank, _)) = slots.iter().find(|(_, info)| !info.token_initialized()) else {
            return Err(Error::new(
                ErrorKind::Hsm,
                format!("the PKCS#11 module has no token labelled {TOKEN_LABEL} and no uninitialised token to create it in"),
            ));
        };
        tracing::info!("initialising token {TOKEN_LABEL} in slot {}", blank.id());
        // C_InitToken fails with CKR_SESSION_EXISTS while any session is open
        // on the token: this process opens none before this point, so the
        // only cause left is another program using it.
        self.ctx
            .init_token(*blank, &auth_pin(&self.settings.so_pin), TOKEN_LABEL)
            .map_err(|e| {
                if rv_of(&e) == Some(RvError::SessionExists) {
                    Error::new(
                        ErrorKind::Hsm,
                        format!("cannot initialise token {TOKEN_LABEL}: another program has a session open on the blank token in slot {}", blank.id()),
                    )
                } else {
                    hsm_error(format!("cannot initialise token {TOKEN_LABEL}"), e)
                }
            })?;
        // Initialising can change the slot list (SoftHSM2 adds a new blank
        // slot and later lists the token under an id derived from its
        // serial), so look the token up again by its label.
        let slot = self
            .slots_with_token()?
            .into_iter()
            .find(|(_, info)| info.token_initialized() && info.label() == TOKEN_LABEL)
            .map(|(slot, _)| slot)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Hsm,
                    format!("token {TOKEN_LABEL} cannot be found after initialising it"),
                )
            })?;
        self.init_user_pin(slot)?;
        tracing::info!("initialised token {TOKEN_LABEL} and set its user PIN");
        Ok(slot)
    }

    fn init_user_pin(&self, slot: Slot) -> Result<()> {
        let session = self
            .ctx
            .open_rw_session(slot)
            .map_err(|e| hsm_error(format!("cannot open a session on token {TOKEN_LABEL}"), e))?;
        session
            .login(UserType::So, Some(&auth_pin(&self.settings.so_pin)))
            .map_err(|e| {
                if rv_of(&e) == Some(RvError::PinIncorrect) {
                    Error::new(
                        ErrorKind::Hsm,
                        format!("the HSM SO PIN is wrong: token {TOKEN_LABEL} refused it (not retrying)"),
                    )
                } else {
                    hsm_error(format!("cannot log in to token {TOKEN_LABEL} as security officer"), e)
                }
            })?;
        session
            .init_pin(&auth_pin(&self.settings.pin))
            .map_err(|e| hsm_error(format!("cannot set the user PIN of token {TOKEN_LABEL}"), e))?;
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

/// One logged-in session on the `aktualizr` token. Objects created through
/// it are removed again when it is dropped, unless [`Token::keep_created`]
/// was called: a failed registration leaves the token as it found it.
pub struct Token {
    session: Option<Session>,
    module: Module,
    slot: Slot,
    created: RefCell<Vec<(ObjectHandle, &'static str)>>,
    keep: Cell<bool>,
}

impl Token {
    fn session(&self) -> &Session {
        self.session
            .as_ref()
            .expect("the session lives as long as the token")
    }

    /// The device UUID that the platform publishes in a slot description
    /// (OP-TEE's TEE UUID), if any.
    pub fn slot_uuid(&self) -> Option<String> {
        let slots = match self.module.ctx.get_all_slots() {
            Ok(slots) => slots,
            Err(e) => {
                tracing::debug!("cannot list slots for a UUID: {e}");
                return None;
            }
        };
        slots.into_iter().find_map(|slot| {
            let info = self.module.ctx.get_slot_info(slot).ok()?;
            uuid_in_description(info.slot_description())
        })
    }

    /// What `[p11]` in `sota.toml` must say for aktualizr-lite and fioconfig
    /// to find this token's key and certificate.
    pub fn p11_section(&self) -> toml::Table {
        let mut p11 = toml::Table::new();
        let mut set = |key: &str, value: &str| {
            p11.insert(key.to_string(), toml::Value::String(value.to_string()));
        };
        // fioconfig and aktualizr-lite run from another directory; symlinks
        // stay as given so that a library upgrade does not break the path.
        let module = &self.module.settings.module;
        let module = std::path::absolute(module).unwrap_or_else(|_| module.clone());
        set("module", &module.to_string_lossy());
        set("pass", self.module.settings.pin.expose());
        set("label", TOKEN_LABEL);
        set("tls_pkey_id", KEY_ID);
        set("tls_clientcert_id", CERT_ID);
        p11
    }

    fn find(&self, template: &[Attribute]) -> Result<Vec<ObjectHandle>> {
        self.session()
            .find_objects(template)
            .map_err(|e| hsm_error(format!("cannot search token {TOKEN_LABEL}"), e))
    }

    /// The `tls` key pair already in the token, if there is a complete one.
    pub fn existing_key(&self) -> Result<Option<TokenKey<'_>>> {
        let key_id = cka_id(KEY_ID);
        let pair = |class| {
            self.find(&[
                Attribute::Class(class),
                Attribute::KeyType(KeyType::EC),
                Attribute::Label(KEY_LABEL.into()),
                Attribute::Id(key_id.clone()),
            ])
        };
        let (private, public) = (
            pair(ObjectClass::PRIVATE_KEY)?,
            pair(ObjectClass::PUBLIC_KEY)?,
        );
        match (private.as_slice(), public.as_slice()) {
            ([private], [public]) => self.key_from(*private, *public).map(Some),
            ([], []) => Ok(None),
            _ => Err(Error::new(
                ErrorKind::Hsm,
                format!(
                    "token {TOKEN_LABEL} holds {} private and {} public `{KEY_LABEL}` keys instead of one pair",
                    private.len(),
                    public.len()
                ),
            )),
        }
    }

    fn key_from(&self, private: ObjectHandle, public: ObjectHandle) -> Result<TokenKey<'_>> {
        let attributes = self
            .session()
            .get_attributes(public, &[AttributeType::EcPoint])
            .map_err(|e| hsm_error(format!("cannot read the public `{KEY_LABEL}` key"), e))?;
        let point = attributes
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(value) => ec_point(&value),
                _ => None,
            })
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Hsm,
                    format!("the public `{KEY_LABEL}` key has no uncompressed P-256 CKA_EC_POINT"),
                )
            })?;
        let key = TokenKey {
            token: self,
            private,
            public_raw: point,
        };
        key.self_test()?;
        Ok(key)
    }

    /// Objects from an earlier registration that a new key would clash
    /// with: `tls` keys, `client` certificates, and anything else holding
    /// their CKA_IDs (fioconfig looks objects up by id alone).
    fn conflicting_objects(&self) -> Result<Vec<(ObjectHandle, &'static str)>> {
        let mut found: Vec<(ObjectHandle, &'static str)> = Vec::new();
        let searches: [(&'static str, Vec<Attribute>); 6] = [
            (
                "private key",
                vec![
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Label(KEY_LABEL.into()),
                ],
            ),
            (
                "public key",
                vec![
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::Label(KEY_LABEL.into()),
                ],
            ),
            (
                "private key",
                vec![
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Id(cka_id(KEY_ID)),
                ],
            ),
            (
                "public key",
                vec![
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::Id(cka_id(KEY_ID)),
                ],
            ),
            (
                "certificate",
                vec![
                    Attribute::Class(ObjectClass::CERTIFICATE),
                    Attribute::Label(CERT_LABEL.into()),
                ],
            ),
            (
                "certificate",
                vec![
                    Attribute::Class(ObjectClass::CERTIFICATE),
                    Attribute::Id(cka_id(CERT_ID)),
                ],
            ),
        ];
        for (what, template) in searches {
            for handle in self.find(&template)? {
                if !found.iter().any(|(h, _)| *h == handle) {
                    found.push((handle, what));
                }
            }
        }
        Ok(found)
    }

    /// Generates the `tls` key pair in the token. Objects of an earlier
    /// registration are an error, or are removed first with `force`.
    pub fn create_key(&self, force: bool) -> Result<TokenKey<'_>> {
        let conflicts = self.conflicting_objects()?;
        if !conflicts.is_empty() {
            let mut kinds: Vec<&str> = conflicts.iter().map(|(_, what)| *what).collect();
            kinds.dedup();
            if !force {
                return Err(Error::new(
                    ErrorKind::Hsm,
                    format!(
                        "token {TOKEN_LABEL} already holds a `{KEY_LABEL}` key or `{CERT_LABEL}` certificate from an earlier registration ({}); pass --force to replace them",
                        kinds.join(", ")
                    ),
                ));
            }
            for (handle, what) in &conflicts {
                self.session().destroy_object(*handle).map_err(|e| {
                    hsm_error(
                        format!("--force: cannot remove the old {what} from token {TOKEN_LABEL}"),
                        e,
                    )
                })?;
            }
            tracing::warn!(
                "--force: removed {} object(s) of an earlier registration from token {TOKEN_LABEL} ({})",
                conflicts.len(),
                kinds.join(", ")
            );
        }

        let label: Vec<u8> = KEY_LABEL.into();
        let id = cka_id(KEY_ID);
        let public_template = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::KeyType(KeyType::EC),
            Attribute::EcParams(p256_params()),
            Attribute::Verify(true),
            Attribute::Derive(true),
            Attribute::Label(label.clone()),
            Attribute::Id(id.clone()),
        ];
        let private_template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::KeyType(KeyType::EC),
            Attribute::Sign(true),
            Attribute::Derive(true),
            Attribute::Label(label),
            Attribute::Id(id),
        ];
        let (public, private) = self
            .session()
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &public_template,
                &private_template,
            )
            .map_err(|e| {
                hsm_error(
                    format!("cannot generate the `{KEY_LABEL}` key pair in token {TOKEN_LABEL}"),
                    e,
                )
            })?;
        {
            let mut created = self.created.borrow_mut();
            created.push((private, "private key"));
            created.push((public, "public key"));
        }
        let key = self.key_from(private, public)?;
        tracing::info!("generated EC P-256 key pair `{KEY_LABEL}` in token {TOKEN_LABEL}");
        Ok(key)
    }

    /// Stores the client certificate as the `client` certificate object.
    pub fn import_certificate(&self, pem_text: &str) -> Result<()> {
        use x509_parser::prelude::*;
        let bad = |why: String| {
            Error::new(
                ErrorKind::BadResponse,
                format!("cannot import the client certificate: {why}"),
            )
        };
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
            .map_err(|e| bad(format!("not PEM: {e}")))?;
        let (_, cert) = X509Certificate::from_der(&pem.contents)
            .map_err(|e| bad(format!("not a certificate: {e}")))?;
        let raw_serial = cert.tbs_certificate.raw_serial();
        let serial = yasna::construct_der(|w| {
            w.write_bigint_bytes(raw_serial, raw_serial.first().is_none_or(|b| b & 0x80 == 0))
        });
        let template = [
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(CERT_LABEL.into()),
            Attribute::Id(cka_id(CERT_ID)),
            Attribute::Subject(cert.subject().as_raw().to_vec()),
            Attribute::Issuer(cert.issuer().as_raw().to_vec()),
            Attribute::SerialNumber(serial),
            Attribute::Value(pem.contents.clone()),
        ];
        let handle = self.session().create_object(&template).map_err(|e| {
            hsm_error(
                format!("cannot store the `{CERT_LABEL}` certificate in token {TOKEN_LABEL}"),
                e,
            )
        })?;
        self.created.borrow_mut().push((handle, "certificate"));
        tracing::info!("stored the client certificate as `{CERT_LABEL}` in token {TOKEN_LABEL}");
        Ok(())
    }

    /// What this run created stays: the registration is complete, or the
    /// key now belongs to a pending identity that the next run resumes.
    pub fn keep_created(&self) {
        self.keep.set(true);
    }

    /// Removes the `tls` key pair and the `client` certificate, whichever run
    /// created them: the identity they belong to has been abandoned.
    pub fn remove_registration_objects(&self) -> Result<()> {
        for (handle, what) in self.conflicting_objects()? {
            self.session().destroy_object(handle).map_err(|e| {
                hsm_error(
                    format!("cannot remove the {what} from token {TOKEN_LABEL}"),
                    e,
                )
            })?;
            tracing::info!("removed the abandoned {what} from token {TOKEN_LABEL}");
        }
        self.created.borrow_mut().clear();
        Ok(())
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        let created = std::mem::take(self.created.get_mut());
        if !self.keep.get() && !created.is_empty() {
            for (handle, what) in created.iter().rev() {
                match self.session().destroy_object(*handle) {
                    Ok(()) => tracing::info!("removed the {what} this run created from token {TOKEN_LABEL}"),
                    Err(e) => tracing::error!(
                        "could not remove the {what} this run created from token {TOKEN_LABEL}: {e}; run again with --force"
                    ),
                }
            }
        }
        if let Some(session) = self.session.take() {
            let _ = session.logout();
            if let Err(e) = session.close() {
                tracing::debug!("closing the session on slot {}: {e}", self.slot.id());
            }
        }
        // `module` is dropped next, which finalises the library.
    }
}

/// The `tls` private key, used through the token; the public point is kept
/// for the CSR and for checking the issued certificate.
pub struct TokenKey<'t> {
    token: &'t Token,
    private: ObjectHandle,
    public_raw: Vec<u8>,
}

impl<'t> TokenKey<'t> {
    pub fn token(&self) -> &'t Token {
        self.token
    }

    /// ECDSA-SHA256 over `msg`, DER encoded; the digest is computed here
    /// because SE050 modules offer CKM_ECDSA but not always CKM_ECDSA_SHA256.
    pub fn sign_sha256(&self, msg: &[u8]) -> Result<Vec<u8>> {
        let digest = ring::digest::digest(&ring::digest::SHA256, msg);
        let raw = self
            .token
            .session()
            .sign(&Mechanism::Ecdsa, self.private, digest.as_ref())
            .map_err(|e| {
                hsm_error(
                    format!("the token could not sign with the `{KEY_LABEL}` key"),
                    e,
                )
            })?;
        ecdsa_raw_to_der(&raw).ok_or_else(|| {
            Error::new(
                ErrorKind::Hsm,
                format!("the token returned a {}-byte ECDSA signature", raw.len()),
            )
        })
    }

    /// A private and a public object that do not belong together would make
    /// a CSR the server rejects; better to find out here.
    fn self_test(&self) -> Result<()> {
        let msg = b"lmp-device-register key check";
        let signature = self.sign_sha256(msg)?;
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &self.public_raw,
        )
        .verify(msg, &signature)
        .map_err(|_| {
            Error::new(
                ErrorKind::Hsm,
                format!(
                    "the private and public `{KEY_LABEL}` keys in token {TOKEN_LABEL} do not match"
                ),
            )
        })
    }
}

impl PublicKeyData for TokenKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.public_raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for TokenKey<'_> {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        self.sign_sha256(msg).map_err(|e| {
            // rcgen's error has no room for the reason.
            tracing::error!("{e}");
            rcgen::Error::RemoteKeyError
        })
    }
}

/// `sota.toml` as the server sent it plus the `[p11]` section; it holds the
/// user PIN, so it is a secret.
pub fn sota_toml_with_p11(server: &toml::Table, p11: toml::Table) -> Result<Secret> {
    let mut config = server.clone();
    match config.get_mut("p11") {
        Some(toml::Value::Table(existing)) => existing.extend(p11),
        _ => {
            config.insert("p11".into(), toml::Value::Table(p11));
        }
    }
    toml::to_string(&config)
        .map(Secret::new)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot write sota.toml: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_parsed_like_fioconfig_does() {
        assert_eq!(cka_id(KEY_ID), [0x01]);
        assert_eq!(cka_id(CERT_ID), [0x03]);
        assert_eq!(cka_id("07"), [0x07]);
        assert_eq!(cka_id("0"), Vec::<u8>::new());
    }

    #[test]
    fn uuid_is_found_in_an_op_tee_slot_description() {
        assert_eq!(
            uuid_in_description("OP-TEE PKCS11 TA - TEE UUID 94e9ab89-4c43-56ea-8b35-45dc07226830")
                .as_deref(),
            Some("94e9ab89-4c43-56ea-8b35-45dc07226830")
        );
        assert_eq!(
            uuid_in_description("TEE UUID 94E9AB89-4C43-56EA-8B35-45DC07226830   ").as_deref(),
            Some("94e9ab89-4c43-56ea-8b35-45dc07226830")
        );
        for none in [
            "SoftHSM slot ID 0x0",
            "",
            "94e9ab89-4c43-56ea-8b35-45dc0722683",
            "x94e9ab89-4c43-56ea-8b35-45dc07226830",
            "94e9ab89-4c43-56ea-8b35-45dc072268301",
            "94e9ab89_4c43-56ea-8b35-45dc07226830",
        ] {
            assert_eq!(uuid_in_description(none), None, "{none}");
        }
    }

    #[test]
    fn raw_signature_becomes_der() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r needs a leading zero byte in DER
        raw[63] = 0x01; // s is 1
        let der = ecdsa_raw_to_der(&raw).unwrap();
        let (r, s) = yasna::parse_der(&der, |reader| {
            reader.read_sequence(|seq| {
                let r = seq.next().read_bigint_bytes()?;
                let s = seq.next().read_bigint_bytes()?;
                Ok((r, s))
            })
        })
        .unwrap();
        // Two's complement: a leading zero keeps r positive.
        let mut expected_r = vec![0];
        expected_r.extend(&raw[..32]);
        assert_eq!(r, (expected_r, true));
        assert_eq!(s, (vec![1], true));
        assert_eq!(&der[2..5], &[0x02, 33, 0x00]);
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_none());
    }

    #[test]
    fn ec_point_is_unwrapped() {
        let mut point = vec![0x04];
        point.extend([7u8; 64]);
        let wrapped = yasna::construct_der(|w| w.write_bytes(&point));
        assert_eq!(ec_point(&wrapped), Some(point.clone()));
        assert_eq!(ec_point(&point), Some(point));
        assert_eq!(ec_point(&[0x04, 1, 2]), None);
    }

    #[test]
    fn p256_params_are_the_named_curve_oid() {
        assert_eq!(
            p256_params(),
            [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
        );
    }

    #[test]
    fn pin_length_is_checked() {
        assert!(check_pin(&Secret::new("1234"), "PIN").is_ok());
        assert!(check_pin(&Secret::new("x".repeat(128)), "PIN").is_ok());
        let err = check_pin(&Secret::new("123"), "HSM user PIN").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(!err.to_string().contains("123\""));
        assert!(check_pin(&Secret::new("x".repeat(129)), "PIN").is_err());
    }

    #[test]
    fn p11_section_is_merged_and_quotes_survive() {
        let server: toml::Table = "[tls]\nserver = \"https://x\"\n[p11]\nlabel = \"old\"\n"
            .parse()
            .unwrap();
        let mut p11 = toml::Table::new();
        p11.insert("pass".into(), toml::Value::String("a\"b\\c'".into()));
        p11.insert("label".into(), toml::Value::String(TOKEN_LABEL.into()));
        let text = sota_toml_with_p11(&server, p11).unwrap();
        let parsed: toml::Table = text.expose().parse().unwrap();
        assert_eq!(parsed["p11"]["pass"].as_str(), Some("a\"b\\c'"));
        assert_eq!(parsed["p11"]["label"].as_str(), Some(TOKEN_LABEL));
        assert_eq!(parsed["tls"]["server"].as_str(), Some("https://x"));
    }
}
