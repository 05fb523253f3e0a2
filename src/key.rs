//! The device key. Software keys live in process memory until they are
//! written to `pkey.pem`; token keys never leave the PKCS#11 token. Both
//! implement rcgen's `PublicKeyData` + `SigningKey`, so the CSR code and the
//! response validation do not care which one they hold.

use crate::error::{Error, ErrorKind, Result};
use crate::hsm::{Token, TokenKey};
use crate::secret::Secret;
use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm, SigningKey, PKCS_ECDSA_P256_SHA256};

pub struct SoftwareKey(KeyPair);

impl SoftwareKey {
    pub fn generate() -> Result<Self> {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map(SoftwareKey)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot generate a key: {e}")))
    }

    pub fn from_pem(pem: &Secret) -> Result<Self> {
        let pair = KeyPair::from_pem(pem.expose())
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot load the key: {e}")))?;
        if pair.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(Error::new(
                ErrorKind::Internal,
                "the stored key is not an EC P-256 key",
            ));
        }
        Ok(SoftwareKey(pair))
    }

    /// PKCS#8 PEM of the private key.
    pub fn private_pem(&self) -> Secret {
        Secret::new(self.0.serialize_pem())
    }
}

impl PublicKeyData for SoftwareKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.0.algorithm()
    }
}

impl SigningKey for SoftwareKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg)
    }
}

/// The key a registration uses: generated in software and written to
/// `pkey.pem`, or held by the PKCS#11 token.
// There is one per run, so the size of the software variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum DeviceKey<'t> {
    Software(SoftwareKey),
    Token(TokenKey<'t>),
}

impl<'t> DeviceKey<'t> {
    /// The token that holds the key, if it is not a software key.
    pub fn token(&self) -> Option<&'t Token> {
        match self {
            DeviceKey::Software(_) => None,
            DeviceKey::Token(key) => Some(key.token()),
        }
    }

    /// The PEM for `pkey.pem`; a token key has none.
    pub fn private_pem(&self) -> Option<Secret> {
        match self {
            DeviceKey::Software(key) => Some(key.private_pem()),
            DeviceKey::Token(_) => None,
        }
    }

    /// The `[p11]` section of `sota.toml` that points at a token key.
    pub fn p11_section(&self) -> Option<toml::Table> {
        self.token().map(Token::p11_section)
    }
}

impl PublicKeyData for DeviceKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        match self {
            DeviceKey::Software(key) => key.der_bytes(),
            DeviceKey::Token(key) => key.der_bytes(),
        }
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self {
            DeviceKey::Software(key) => key.algorithm(),
            DeviceKey::Token(key) => key.algorithm(),
        }
    }
}

impl SigningKey for DeviceKey<'_> {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        match self {
            DeviceKey::Software(key) => key.sign(msg),
            DeviceKey::Token(key) => key.sign(msg),
        }
    }
}
