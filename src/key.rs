//! The device key. Software keys live in process memory until they are
//! written to `pkey.pem`; token keys never leave the PKCS#11 token. Both
//! implement rcgen's `PublicKeyData` + `SigningKey`, so the CSR code and the
//! response validation do not care which one they hold.

use crate::error::{Error, ErrorKind, Result};
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
