//! The device key: generated in software (and stored by the profile), or
//! held by a PKCS#11 token. Both implement rcgen's `PublicKeyData` +
//! `SigningKey`, so the CSR code and the validation of issued certificates do
//! not care which one they hold, and both can sign TLS handshakes (mutual
//! TLS) through rustls.

pub mod pkcs11;

use crate::error::{Error, Result};
use crate::secret::Secret;
use pkcs11::{Token, TokenKey};
use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm, SigningKey, PKCS_ECDSA_P256_SHA256};
use std::sync::Arc;

/// Where a profile keeps its objects in a PKCS#11 token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLayout {
    pub token_label: &'static str,
    pub key_label: &'static str,
    /// CKA_ID of the key pair, as the `[p11]`-style id string ("01").
    pub key_id: &'static str,
    pub cert_label: &'static str,
    pub cert_id: &'static str,
}

/// What kind of key a profile needs and where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// The file a software key is stored in, in the profile's state dir.
    pub file: &'static str,
    pub token: TokenLayout,
}

pub struct SoftwareKey(KeyPair);

impl SoftwareKey {
    pub fn generate() -> Result<Self> {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map(SoftwareKey)
            .map_err(|e| Error::internal(format!("cannot generate a key: {e}")))
    }

    pub fn from_pem(pem: &Secret) -> Result<Self> {
        let pair = KeyPair::from_pem(pem.expose())
            .map_err(|e| Error::internal(format!("cannot load the key: {e}")))?;
        if pair.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(Error::internal("the stored key is not an EC P-256 key"));
        }
        Ok(SoftwareKey(pair))
    }

    /// PKCS#8 PEM of the private key.
    pub fn private_pem(&self) -> Secret {
        Secret::new(self.0.serialize_pem())
    }

    fn tls_signing_key(&self) -> Result<Arc<dyn rustls::sign::SigningKey>> {
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from(self.0.serialize_der());
        rustls::crypto::ring::sign::any_ecdsa_type(&der.into())
            .map_err(|e| Error::internal(format!("the key cannot sign TLS handshakes: {e}")))
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

/// The key a registration uses.
// There is one per run, so the size of the software variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum DeviceKey {
    Software(SoftwareKey),
    Token(TokenKey),
}

impl DeviceKey {
    /// The token that holds the key, if it is not a software key.
    pub fn token(&self) -> Option<&Arc<Token>> {
        match self {
            DeviceKey::Software(_) => None,
            DeviceKey::Token(key) => Some(key.token()),
        }
    }

    /// The PEM to store; a token key has none.
    pub fn private_pem(&self) -> Option<Secret> {
        match self {
            DeviceKey::Software(key) => Some(key.private_pem()),
            DeviceKey::Token(_) => None,
        }
    }

    /// The key as rustls signs with it, for mutual TLS.
    // The profiles that prove themselves with mutual TLS (tii, azure-dps)
    // are being added; until then nothing calls it.
    #[allow(dead_code)]
    pub fn tls_signing_key(&self) -> Result<Arc<dyn rustls::sign::SigningKey>> {
        match self {
            DeviceKey::Software(key) => key.tls_signing_key(),
            DeviceKey::Token(key) => Ok(Arc::new(pkcs11::TlsSigner::new(key.clone()))),
        }
    }
}

impl PublicKeyData for DeviceKey {
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

impl SigningKey for DeviceKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        match self {
            DeviceKey::Software(key) => key.sign(msg),
            DeviceKey::Token(key) => key.sign(msg),
        }
    }
}
