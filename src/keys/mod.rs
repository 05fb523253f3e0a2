//! The device key: generated in software (and stored by the profile), or
//! held by a PKCS#11 token. Both implement rcgen's `PublicKeyData` +
//! `SigningKey`, so the CSR code and the validation of issued certificates do
//! not care which one they hold, and both can sign TLS handshakes (mutual
//! TLS) through rustls.
//!
//! Keys are EC P-256 unless a profile asks for RSA-2048 (some fleets' CAs
//! sign nothing else). Every signature, software or token, is SHA-256 based.

pub mod pkcs11;

use crate::error::{Error, Result};
use crate::secret::Secret;
use pkcs11::{Token, TokenKey};
use rcgen::{
    KeyPair, PublicKeyData, SignatureAlgorithm, SigningKey, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
};
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
    /// The program that derives (ECDH) with the key through the token, if
    /// any: a token without CKM_ECDH1_DERIVE registers, but that program
    /// then fails, which is said at registration and by `--check`.
    pub derive_needed_by: Option<&'static str>,
}

/// The kind of key pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    #[default]
    EcP256,
    Rsa2048,
}

impl KeyAlgorithm {
    /// For people: "EC P-256", "RSA-2048".
    pub fn describe(self) -> &'static str {
        match self {
            KeyAlgorithm::EcP256 => "EC P-256",
            KeyAlgorithm::Rsa2048 => "RSA-2048",
        }
    }

    /// How CSRs are signed with such a key: ECDSA-SHA256, or
    /// sha256WithRSAEncryption (PKCS#1 v1.5).
    pub fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcP256 => &PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::Rsa2048 => &PKCS_RSA_SHA256,
        }
    }

    fn of(algorithm: &SignatureAlgorithm) -> Option<KeyAlgorithm> {
        [KeyAlgorithm::EcP256, KeyAlgorithm::Rsa2048]
            .into_iter()
            .find(|a| a.signature_algorithm() == algorithm)
    }
}

/// What kind of key a profile needs and where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// The file a software key is stored in, in the profile's state dir.
    pub file: &'static str,
    pub algorithm: KeyAlgorithm,
    pub token: TokenLayout,
}

pub struct SoftwareKey(KeyPair);

impl SoftwareKey {
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self> {
        let pair = match algorithm {
            KeyAlgorithm::EcP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
            KeyAlgorithm::Rsa2048 => {
                let pkcs8 = generate_rsa_pkcs8(2048)?;
                KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.as_slice().into(), &PKCS_RSA_SHA256)
            }
        };
        pair.map(SoftwareKey)
            .map_err(|e| Error::internal(format!("cannot generate a key: {e}")))
    }

    /// The key of an unfinished registration; it must be of the kind the
    /// profile asks for now.
    pub fn from_pem(pem: &Secret, algorithm: KeyAlgorithm) -> Result<Self> {
        // rcgen guesses the algorithm from the key itself; RSA keys get
        // sha256WithRSAEncryption, the one this agent signs with.
        let pair = KeyPair::from_pem(pem.expose())
            .map_err(|e| Error::internal(format!("cannot load the key: {e}")))?;
        if pair.algorithm() != algorithm.signature_algorithm() {
            return Err(Error::config(format!(
                "the key of the unfinished registration is {}, but the configuration asks for {}; restore the key type or run with --force to start over",
                KeyAlgorithm::of(pair.algorithm()).map_or("another kind", KeyAlgorithm::describe),
                algorithm.describe()
            )));
        }
        if algorithm == KeyAlgorithm::Rsa2048 && rsa_modulus_bits(pair.der_bytes()) != Some(2048) {
            return Err(Error::config(
                "the key of the unfinished registration is RSA, but not 2048 bits; run with --force to start over",
            ));
        }
        Ok(SoftwareKey(pair))
    }

    /// PKCS#8 PEM of the private key.
    pub fn private_pem(&self) -> Secret {
        Secret::new(self.0.serialize_pem())
    }

    #[cfg(feature = "mutual-tls")]
    fn tls_signing_key(&self) -> Result<Arc<dyn rustls::sign::SigningKey>> {
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from(self.0.serialize_der());
        // ring's RSA key offers RSA-PSS (TLS 1.3) and PKCS#1 (TLS 1.2) with SHA-256/384/512.
        rustls::crypto::ring::sign::any_supported_type(&der.into())
            .map_err(|e| Error::internal(format!("the key cannot sign TLS handshakes: {e}")))
    }
}

/// A new RSA key as PKCS#8 DER. ring cannot generate RSA keys, so the `rsa`
/// crate does only this; every signature is then made by ring, whose RSA
/// private-key operations are constant-time. That also keeps the agent clear
/// of the timing side channel once reported for the `rsa` crate's own
/// private-key operations (RUSTSEC-2023-0071): it never signs or decrypts
/// with it.
#[cfg(feature = "software-rsa")]
fn generate_rsa_pkcs8(bits: usize) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::PrivateKey::new(&mut getrandom::SysRng, bits)
        .map_err(|e| Error::internal(format!("cannot generate an RSA key: {e}")))?;
    let der = key
        .to_pkcs8_der()
        .map_err(|e| Error::internal(format!("cannot encode the RSA key: {e}")))?;
    Ok(zeroize::Zeroizing::new(der.as_bytes().to_vec()))
}

#[cfg(not(feature = "software-rsa"))]
fn generate_rsa_pkcs8(_bits: usize) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    Err(Error::config(
        "this build cannot generate RSA keys in software (it was built without the cargo feature software-rsa); keep the key in a PKCS#11 token or use an EC P-256 key",
    ))
}

/// The modulus size of a PKCS#1 RSAPublicKey (as rcgen's `der_bytes` gives
/// it for RSA keys).
pub fn rsa_modulus_bits(pkcs1: &[u8]) -> Option<usize> {
    let modulus = yasna::parse_der(pkcs1, |r| {
        r.read_sequence(|seq| {
            let (modulus, _) = seq.next().read_bigint_bytes()?;
            seq.next().read_bigint_bytes()?;
            Ok(modulus)
        })
    })
    .ok()?;
    let first = modulus.iter().position(|&b| b != 0)?;
    let significant = &modulus[first..];
    Some(significant.len() * 8 - significant[0].leading_zeros() as usize)
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
    #[cfg(feature = "mutual-tls")]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_keys_of_each_kind_round_trip_through_pem_and_sign() {
        for algorithm in [KeyAlgorithm::EcP256, KeyAlgorithm::Rsa2048] {
            let key = SoftwareKey::generate(algorithm).unwrap();
            assert_eq!(key.algorithm(), algorithm.signature_algorithm());
            let pem = key.private_pem();
            let again = SoftwareKey::from_pem(&pem, algorithm).unwrap();
            assert_eq!(again.der_bytes(), key.der_bytes());
            let signature = again.sign(b"message").unwrap();
            let verification: &dyn ring::signature::VerificationAlgorithm = match algorithm {
                KeyAlgorithm::EcP256 => &ring::signature::ECDSA_P256_SHA256_ASN1,
                KeyAlgorithm::Rsa2048 => {
                    assert_eq!(rsa_modulus_bits(key.der_bytes()), Some(2048));
                    &ring::signature::RSA_PKCS1_2048_8192_SHA256
                }
            };
            ring::signature::UnparsedPublicKey::new(verification, key.der_bytes())
                .verify(b"message", &signature)
                .unwrap();
            #[cfg(feature = "mutual-tls")]
            key.tls_signing_key().unwrap();
        }
    }

    #[test]
    fn a_pending_key_of_another_kind_is_refused() {
        let ec = SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
        let err = SoftwareKey::from_pem(&ec.private_pem(), KeyAlgorithm::Rsa2048)
            .err()
            .unwrap();
        assert!(err.to_string().contains("RSA-2048"), "{err}");
        let rsa = SoftwareKey::generate(KeyAlgorithm::Rsa2048).unwrap();
        let err = SoftwareKey::from_pem(&rsa.private_pem(), KeyAlgorithm::EcP256)
            .err()
            .unwrap();
        assert!(err.to_string().contains("EC P-256"), "{err}");
    }
}
