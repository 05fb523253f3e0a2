//! The profile's token: its key pair (EC P-256, private key sensitive and
//! non-extractable, with CKA_SIGN and CKA_DERIVE, the public key kept beside
//! it; or RSA-2048 with CKA_SIGN) and its certificate object, named by the
//! profile's [`TokenLayout`].
//!
//! For LmP these are what aktualizr-lite and fioconfig look for: token
//! `aktualizr`, key pair `tls` with CKA_ID 01, certificate `client` with
//! CKA_ID 03. fioconfig finds the key *pair* by CKA_ID and decrypts the
//! device configuration with ECDH through the token, so the public key object
//! stays and both may derive.

use super::der::{
    cka_id, ec_point, ecdsa_raw_to_der, p256_params, rsa_public_key, sha256_digest_info,
};
use super::{hsm_error, Module};
use crate::config::HsmSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::keys::{rsa_modulus_bits, KeyAlgorithm, TokenLayout};
#[cfg(feature = "mutual-tls")]
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::Mechanism;
#[cfg(feature = "mutual-tls")]
use cryptoki::mechanism::MechanismType;
use cryptoki::object::{
    Attribute, AttributeType, CertificateType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The first canonical (8-4-4-4-12 hex) UUID inside a slot description, as
/// OP-TEE writes it: `OP-TEE PKCS11 TA - TEE UUID <uuid>`.
pub fn uuid_in_description(description: &str) -> Option<String> {
    const LEN: usize = 36;
    let bytes = description.as_bytes();
    (0..=bytes.len().saturating_sub(LEN)).find_map(|start| {
        // Of the forms uuid parses, only the hyphenated one is 36 bytes long.
        let uuid = uuid::Uuid::try_parse_ascii(bytes.get(start..start + LEN)?).ok()?;
        let before_ok = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let after_ok = bytes
            .get(start + LEN)
            .is_none_or(|b| !b.is_ascii_alphanumeric());
        (before_ok && after_ok).then(|| uuid.hyphenated().to_string())
    })
}

/// One logged-in session on the profile's token. Objects created through
/// it are removed again when it is dropped, unless [`Token::keep_created`]
/// was called: a failed registration leaves the token as it found it.
///
/// Shared (`Arc`) between the registration and the TLS signer; the session
/// sits behind a mutex because a PKCS#11 session must not be used from two
/// threads at once. Dropping the last reference logs out, closes the session
/// and finalises the module, which the flow does before it runs programs
/// that open the token themselves (OP-TEE allows few sessions).
pub struct Token {
    session: Mutex<Option<Session>>,
    module: Module,
    slot: Slot,
    layout: TokenLayout,
    created: Mutex<Vec<(ObjectHandle, &'static str)>>,
    keep: AtomicBool,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves nothing half-done in these
    // plain lists and handles, so the data is still good.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Token {
    pub(super) fn new(session: Session, module: Module, slot: Slot, layout: TokenLayout) -> Token {
        Token {
            session: Mutex::new(Some(session)),
            module,
            slot,
            layout,
            created: Mutex::new(Vec::new()),
            keep: AtomicBool::new(false),
        }
    }

    /// Runs `op` on the session.
    fn with_session<T>(
        &self,
        op: impl FnOnce(&Session) -> cryptoki::error::Result<T>,
        what: impl FnOnce() -> String,
    ) -> Result<T> {
        match locked(&self.session).as_ref() {
            Some(session) => op(session).map_err(|e| hsm_error(what(), e)),
            None => Err(Error::new(
                ErrorKind::Hsm,
                format!("{}: the PKCS#11 session is closed", what()),
            )),
        }
    }

    pub fn layout(&self) -> &TokenLayout {
        &self.layout
    }

    /// The module path and PINs this token was opened with.
    pub fn settings(&self) -> &HsmSettings {
        &self.module.settings
    }

    fn label(&self) -> &'static str {
        self.layout.token_label
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

    fn find(&self, template: &[Attribute]) -> Result<Vec<ObjectHandle>> {
        self.with_session(
            |s| s.find_objects(template),
            || format!("cannot search token {}", self.label()),
        )
    }

    fn destroy(&self, handle: ObjectHandle, what: impl FnOnce() -> String) -> Result<()> {
        self.with_session(|s| s.destroy_object(handle), what)
    }

    /// The key pair already in the token, if there is a complete one; it
    /// must be of the kind the profile asks for.
    pub fn existing_key(self: &Arc<Self>, algorithm: KeyAlgorithm) -> Result<Option<TokenKey>> {
        let key_id = cka_id(self.layout.key_id);
        let key_label = self.layout.key_label;
        let pair = |class| {
            self.find(&[
                Attribute::Class(class),
                Attribute::Label(key_label.into()),
                Attribute::Id(key_id.clone()),
            ])
        };
        let (private, public) = (
            pair(ObjectClass::PRIVATE_KEY)?,
            pair(ObjectClass::PUBLIC_KEY)?,
        );
        match (private.as_slice(), public.as_slice()) {
            ([private], [public]) => {
                let found = self.stored_key_type(*public)?;
                if found != Some(pkcs11_key_type(algorithm)) {
                    return Err(Error::new(
                        ErrorKind::Hsm,
                        format!(
                            "token {} holds a `{key_label}` key that is not {}, which the configuration asks for; restore the key type or run with --force to replace the key",
                            self.label(),
                            algorithm.describe()
                        ),
                    ));
                }
                self.key_from(algorithm, *private, *public).map(Some)
            }
            ([], []) => Ok(None),
            _ => Err(Error::new(
                ErrorKind::Hsm,
                format!(
                    "token {} holds {} private and {} public `{key_label}` keys instead of one pair",
                    self.label(),
                    private.len(),
                    public.len()
                ),
            )),
        }
    }

    fn stored_key_type(&self, handle: ObjectHandle) -> Result<Option<KeyType>> {
        let attributes = self.with_session(
            |s| s.get_attributes(handle, &[AttributeType::KeyType]),
            || {
                format!(
                    "cannot read the type of the `{}` key",
                    self.layout.key_label
                )
            },
        )?;
        Ok(attributes.into_iter().find_map(|a| match a {
            Attribute::KeyType(t) => Some(t),
            _ => None,
        }))
    }

    /// Whether the token offers a mechanism (a module that cannot say is
    /// taken at its word that it does not).
    #[cfg(feature = "mutual-tls")]
    fn supports(&self, mechanism: MechanismType) -> bool {
        self.module
            .ctx
            .get_mechanism_list(self.slot)
            .is_ok_and(|list| list.contains(&mechanism))
    }

    fn key_from(
        self: &Arc<Self>,
        algorithm: KeyAlgorithm,
        private: ObjectHandle,
        public: ObjectHandle,
    ) -> Result<TokenKey> {
        let key_label = self.layout.key_label;
        let public_raw = match algorithm {
            KeyAlgorithm::EcP256 => {
                let attributes = self.with_session(
                    |s| s.get_attributes(public, &[AttributeType::EcPoint]),
                    || format!("cannot read the public `{key_label}` key"),
                )?;
                attributes
                    .into_iter()
                    .find_map(|a| match a {
                        Attribute::EcPoint(value) => ec_point(&value),
                        _ => None,
                    })
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::Hsm,
                            format!(
                                "the public `{key_label}` key has no uncompressed P-256 CKA_EC_POINT"
                            ),
                        )
                    })?
            }
            KeyAlgorithm::Rsa2048 => {
                let attributes = self.with_session(
                    |s| {
                        s.get_attributes(
                            public,
                            &[AttributeType::Modulus, AttributeType::PublicExponent],
                        )
                    },
                    || format!("cannot read the public `{key_label}` key"),
                )?;
                let (mut modulus, mut exponent) = (None, None);
                for attribute in attributes {
                    match attribute {
                        Attribute::Modulus(m) => modulus = Some(m),
                        Attribute::PublicExponent(e) => exponent = Some(e),
                        _ => {}
                    }
                }
                let der = modulus
                    .zip(exponent)
                    .map(|(m, e)| rsa_public_key(&m, &e))
                    .filter(|der| rsa_modulus_bits(der) == Some(2048))
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::Hsm,
                            format!("the public `{key_label}` key is not a 2048-bit RSA key"),
                        )
                    })?;
                der
            }
        };
        let key = TokenKey {
            token: Arc::clone(self),
            private,
            public_raw,
            algorithm,
            #[cfg(feature = "mutual-tls")]
            pss: algorithm == KeyAlgorithm::Rsa2048 && self.supports(MechanismType::RSA_PKCS_PSS),
        };
        key.self_test()?;
        Ok(key)
    }

    /// Objects from an earlier registration that a new key would clash
    /// with: keys with the key label, certificates with the certificate
    /// label, and anything else holding their CKA_IDs (fioconfig looks
    /// objects up by id alone).
    fn conflicting_objects(&self) -> Result<Vec<(ObjectHandle, &'static str)>> {
        let layout = &self.layout;
        let mut found: Vec<(ObjectHandle, &'static str)> = Vec::new();
        let searches: [(&'static str, ObjectClass, Attribute); 6] = [
            (
                "private key",
                ObjectClass::PRIVATE_KEY,
                Attribute::Label(layout.key_label.into()),
            ),
            (
                "public key",
                ObjectClass::PUBLIC_KEY,
                Attribute::Label(layout.key_label.into()),
            ),
            (
                "private key",
                ObjectClass::PRIVATE_KEY,
                Attribute::Id(cka_id(layout.key_id)),
            ),
            (
                "public key",
                ObjectClass::PUBLIC_KEY,
                Attribute::Id(cka_id(layout.key_id)),
            ),
            (
                "certificate",
                ObjectClass::CERTIFICATE,
                Attribute::Label(layout.cert_label.into()),
            ),
            (
                "certificate",
                ObjectClass::CERTIFICATE,
                Attribute::Id(cka_id(layout.cert_id)),
            ),
        ];
        for (what, class, attribute) in searches {
            for handle in self.find(&[Attribute::Class(class), attribute])? {
                if !found.iter().any(|(h, _)| *h == handle) {
                    found.push((handle, what));
                }
            }
        }
        Ok(found)
    }

    /// Generates the key pair in the token. Objects of an earlier
    /// registration are an error, or are removed first with `force`.
    pub fn create_key(self: &Arc<Self>, algorithm: KeyAlgorithm, force: bool) -> Result<TokenKey> {
        let TokenLayout {
            token_label,
            key_label,
            ..
        } = self.layout;
        self.clear_earlier_registration(force)?;
        let (mechanism, public_template, private_template) =
            key_pair_templates(algorithm, &self.layout);
        let (public, private) = self.with_session(
            |s| s.generate_key_pair(&mechanism, &public_template, &private_template),
            || format!("cannot generate the `{key_label}` key pair in token {token_label}"),
        )?;
        {
            let mut created = locked(&self.created);
            created.push((private, "private key"));
            created.push((public, "public key"));
        }
        let key = self.key_from(algorithm, private, public)?;
        tracing::info!(
            "generated {} key pair `{key_label}` in token {token_label}",
            algorithm.describe()
        );
        Ok(key)
    }

    /// Objects of an earlier registration stand in the way of a new key:
    /// an error, or with `force` they are removed.
    fn clear_earlier_registration(&self, force: bool) -> Result<()> {
        let TokenLayout {
            token_label,
            key_label,
            cert_label,
            ..
        } = self.layout;
        let conflicts = self.conflicting_objects()?;
        if conflicts.is_empty() {
            return Ok(());
        }
        let mut kinds: Vec<&str> = conflicts.iter().map(|(_, what)| *what).collect();
        kinds.dedup();
        if !force {
            return Err(Error::new(
                ErrorKind::Hsm,
                format!(
                    "token {token_label} already holds a `{key_label}` key or `{cert_label}` certificate from an earlier registration ({}); pass --force to replace them",
                    kinds.join(", ")
                ),
            ));
        }
        for (handle, what) in &conflicts {
            self.destroy(*handle, || {
                format!("--force: cannot remove the old {what} from token {token_label}")
            })?;
        }
        tracing::warn!(
            "--force: removed {} object(s) of an earlier registration from token {token_label} ({})",
            conflicts.len(),
            kinds.join(", ")
        );
        Ok(())
    }

    /// Stores the device certificate as the certificate object. A run that
    /// stopped after an earlier import finds it there: the same certificate
    /// is kept, any other one under the label or id is replaced.
    pub fn import_certificate(&self, pem_text: &str) -> Result<()> {
        use x509_parser::prelude::*;
        let TokenLayout {
            token_label,
            cert_label,
            cert_id,
            ..
        } = self.layout;
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

        let mut existing = self.find(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::Label(cert_label.into()),
        ])?;
        for handle in self.find(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::Id(cka_id(cert_id)),
        ])? {
            if !existing.contains(&handle) {
                existing.push(handle);
            }
        }
        if let [handle] = existing.as_slice() {
            let value = self.with_session(
                |s| s.get_attributes(*handle, &[AttributeType::Value]),
                || format!("cannot read the `{cert_label}` certificate"),
            )?;
            if value
                .iter()
                .any(|a| matches!(a, Attribute::Value(v) if *v == pem.contents))
            {
                tracing::info!(
                    "the certificate is already stored as `{cert_label}` in token {token_label}"
                );
                return Ok(());
            }
        }
        for handle in existing {
            self.destroy(handle, || {
                format!("cannot replace the `{cert_label}` certificate in token {token_label}")
            })?;
        }

        let raw_serial = cert.tbs_certificate.raw_serial();
        let serial = yasna::construct_der(|w| {
            w.write_bigint_bytes(raw_serial, raw_serial.first().is_none_or(|b| b & 0x80 == 0))
        });
        let template = [
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(cert_label.into()),
            Attribute::Id(cka_id(cert_id)),
            Attribute::Subject(cert.subject().as_raw().to_vec()),
            Attribute::Issuer(cert.issuer().as_raw().to_vec()),
            Attribute::SerialNumber(serial),
            Attribute::Value(pem.contents.clone()),
        ];
        let handle = self.with_session(
            |s| s.create_object(&template),
            || format!("cannot store the `{cert_label}` certificate in token {token_label}"),
        )?;
        locked(&self.created).push((handle, "certificate"));
        tracing::info!("stored the client certificate as `{cert_label}` in token {token_label}");
        Ok(())
    }

    /// What this run created stays: the registration is complete, or the
    /// key now belongs to a pending identity that the next run resumes.
    pub fn keep_created(&self) {
        self.keep.store(true, Ordering::SeqCst);
    }

    /// Removes the key pair and the certificate, whichever run created them:
    /// the identity they belong to has been abandoned.
    pub fn remove_registration_objects(&self) -> Result<()> {
        let token_label = self.label();
        for (handle, what) in self.conflicting_objects()? {
            self.destroy(handle, || {
                format!("cannot remove the {what} from token {token_label}")
            })?;
            tracing::info!("removed the abandoned {what} from token {token_label}");
        }
        locked(&self.created).clear();
        Ok(())
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        let token_label = self.label();
        let created = std::mem::take(&mut *locked(&self.created));
        if !self.keep.load(Ordering::SeqCst) && !created.is_empty() {
            for (handle, what) in created.iter().rev() {
                match self.destroy(*handle, || format!("removing the {what}")) {
                    Ok(()) => tracing::info!(
                        "removed the {what} this run created from token {token_label}"
                    ),
                    Err(e) => tracing::error!(
                        "could not remove the {what} this run created from token {token_label}: {e}; run again with --force"
                    ),
                }
            }
        }
        if let Some(session) = locked(&self.session).take() {
            let _ = session.logout();
            if let Err(e) = session.close() {
                tracing::debug!("closing the session on slot {}: {e}", self.slot.id());
            }
        }
        // `module` is dropped next, which finalises the library.
    }
}

/// The mechanism and the public and private templates of a new key pair:
/// the private key sensitive and non-extractable; an EC pair may derive
/// (fioconfig's ECDH), and its public key stays beside it.
fn key_pair_templates(
    algorithm: KeyAlgorithm,
    layout: &TokenLayout,
) -> (Mechanism<'static>, Vec<Attribute>, Vec<Attribute>) {
    let label: Vec<u8> = layout.key_label.into();
    let id = cka_id(layout.key_id);
    let common = |private: bool| {
        vec![
            Attribute::Token(true),
            Attribute::Private(private),
            Attribute::KeyType(pkcs11_key_type(algorithm)),
            Attribute::Label(label.clone()),
            Attribute::Id(id.clone()),
        ]
    };
    let (mut public, mut private) = (common(false), common(true));
    private.extend([
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ]);
    public.push(Attribute::Verify(true));
    let mechanism = match algorithm {
        KeyAlgorithm::EcP256 => {
            public.extend([Attribute::EcParams(p256_params()), Attribute::Derive(true)]);
            private.push(Attribute::Derive(true));
            Mechanism::EccKeyPairGen
        }
        KeyAlgorithm::Rsa2048 => {
            public.extend([
                Attribute::ModulusBits(2048.into()),
                Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
            ]);
            Mechanism::RsaPkcsKeyPairGen
        }
    };
    (mechanism, public, private)
}

fn pkcs11_key_type(algorithm: KeyAlgorithm) -> KeyType {
    match algorithm {
        KeyAlgorithm::EcP256 => KeyType::EC,
        KeyAlgorithm::Rsa2048 => KeyType::RSA,
    }
}

/// How a token key signs: the digest is always computed here, because
/// SE050 modules offer the bare mechanisms (CKM_ECDSA, CKM_RSA_PKCS) but not
/// always the hashing ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// ECDSA-SHA256 (EC keys).
    Ecdsa,
    /// RSASSA-PKCS1-v1_5 with SHA-256: CSRs, and TLS 1.2.
    RsaPkcs1,
    /// RSASSA-PSS with SHA-256, MGF1-SHA256 and a 32-byte salt: TLS 1.3.
    #[cfg(feature = "mutual-tls")]
    RsaPss,
}

/// The private key, used through the token; the public key (EC point, or
/// PKCS#1 RSAPublicKey) is kept for the CSR and for checking the issued
/// certificate.
#[derive(Clone)]
pub struct TokenKey {
    token: Arc<Token>,
    private: ObjectHandle,
    public_raw: Vec<u8>,
    algorithm: KeyAlgorithm,
    /// The token offers CKM_RSA_PKCS_PSS (TLS 1.3 needs it for RSA keys).
    #[cfg(feature = "mutual-tls")]
    pss: bool,
}

impl TokenKey {
    pub fn token(&self) -> &Arc<Token> {
        &self.token
    }

    #[cfg(feature = "mutual-tls")]
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// Whether the key can make RSA-PSS signatures.
    #[cfg(feature = "mutual-tls")]
    pub fn can_pss(&self) -> bool {
        self.pss
    }

    /// The padding of CSRs and certificate signatures for this key.
    fn default_padding(&self) -> Padding {
        match self.algorithm {
            KeyAlgorithm::EcP256 => Padding::Ecdsa,
            KeyAlgorithm::Rsa2048 => Padding::RsaPkcs1,
        }
    }

    /// A SHA-256 signature over `msg` in the key's default form: ECDSA (DER
    /// encoded) or RSASSA-PKCS1-v1_5.
    pub fn sign_sha256(&self, msg: &[u8]) -> Result<Vec<u8>> {
        self.sign_sha256_with(self.default_padding(), msg)
    }

    pub fn sign_sha256_with(&self, padding: Padding, msg: &[u8]) -> Result<Vec<u8>> {
        let digest = ring::digest::digest(&ring::digest::SHA256, msg);
        let key_label = self.token.layout.key_label;
        let (mechanism, input) = match padding {
            Padding::Ecdsa => (Mechanism::Ecdsa, digest.as_ref().to_vec()),
            Padding::RsaPkcs1 => (Mechanism::RsaPkcs, sha256_digest_info(digest.as_ref())),
            #[cfg(feature = "mutual-tls")]
            Padding::RsaPss => (
                Mechanism::RsaPkcsPss(PkcsPssParams {
                    hash_alg: MechanismType::SHA256,
                    mgf: PkcsMgfType::MGF1_SHA256,
                    s_len: 32.into(),
                }),
                digest.as_ref().to_vec(),
            ),
        };
        let signature = self.token.with_session(
            |s| s.sign(&mechanism, self.private, &input),
            || format!("the token could not sign with the `{key_label}` key"),
        )?;
        if padding != Padding::Ecdsa {
            return Ok(signature);
        }
        ecdsa_raw_to_der(&signature).ok_or_else(|| {
            Error::new(
                ErrorKind::Hsm,
                format!(
                    "the token returned a {}-byte ECDSA signature",
                    signature.len()
                ),
            )
        })
    }

    /// A private and a public object that do not belong together would make
    /// a CSR the server rejects; better to find out here.
    fn self_test(&self) -> Result<()> {
        let msg = b"lmp-device-register key check";
        let verify = |padding, algorithm: &'static dyn ring::signature::VerificationAlgorithm| {
            let signature = self.sign_sha256_with(padding, msg)?;
            Ok::<bool, Error>(
                ring::signature::UnparsedPublicKey::new(algorithm, &self.public_raw)
                    .verify(msg, &signature)
                    .is_ok(),
            )
        };
        let matches = match self.algorithm {
            KeyAlgorithm::EcP256 => {
                verify(Padding::Ecdsa, &ring::signature::ECDSA_P256_SHA256_ASN1)?
            }
            KeyAlgorithm::Rsa2048 => verify(
                Padding::RsaPkcs1,
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            )?,
        };
        matches.then_some(()).ok_or_else(|| {
            Error::new(
                ErrorKind::Hsm,
                format!(
                    "the private and public `{}` keys in token {} do not match",
                    self.token.layout.key_label,
                    self.token.label()
                ),
            )
        })
    }
}

impl PublicKeyData for TokenKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm.signature_algorithm()
    }
}

impl SigningKey for TokenKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        self.sign_sha256(msg).map_err(|e| {
            // rcgen's error has no room for the reason.
            tracing::error!("{e}");
            rcgen::Error::RemoteKeyError
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
