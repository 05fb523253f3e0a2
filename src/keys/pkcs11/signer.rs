//! The token key as rustls signs with it: mutual TLS where the private key
//! never leaves the token.

use super::token::Padding;
use super::TokenKey;
use crate::keys::KeyAlgorithm;
use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};

/// A rustls signing key backed by the token's key.
#[derive(Clone)]
pub struct TlsSigner(TokenKey);

/// One handshake's signature, in the scheme chosen for it.
struct SchemeSigner {
    key: TokenKey,
    scheme: SignatureScheme,
    padding: Padding,
}

impl TlsSigner {
    pub fn new(key: TokenKey) -> Self {
        TlsSigner(key)
    }

    /// The schemes this key can sign, best first. TLS 1.3 allows only PSS
    /// for RSA keys (rustls offers a TLS 1.3 key only those); PKCS#1 v1.5
    /// serves TLS 1.2 and tokens without CKM_RSA_PKCS_PSS.
    fn schemes(&self) -> Vec<(SignatureScheme, Padding)> {
        match self.0.key_algorithm() {
            KeyAlgorithm::EcP256 => vec![(SignatureScheme::ECDSA_NISTP256_SHA256, Padding::Ecdsa)],
            KeyAlgorithm::Rsa2048 => {
                let mut schemes = Vec::new();
                if self.0.can_pss() {
                    schemes.push((SignatureScheme::RSA_PSS_SHA256, Padding::RsaPss));
                }
                schemes.push((SignatureScheme::RSA_PKCS1_SHA256, Padding::RsaPkcs1));
                schemes
            }
        }
    }
}

impl std::fmt::Debug for TlsSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TlsSigner(token {})",
            self.0.token().layout().token_label
        )
    }
}

impl std::fmt::Debug for SchemeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SchemeSigner({:?})", self.scheme)
    }
}

impl SigningKey for TlsSigner {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let (scheme, padding) = self
            .schemes()
            .into_iter()
            .find(|(scheme, _)| offered.contains(scheme))?;
        Some(Box::new(SchemeSigner {
            key: self.0.clone(),
            scheme,
            padding,
        }))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        match self.0.key_algorithm() {
            KeyAlgorithm::EcP256 => SignatureAlgorithm::ECDSA,
            KeyAlgorithm::Rsa2048 => SignatureAlgorithm::RSA,
        }
    }
}

impl Signer for SchemeSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.key
            .sign_sha256_with(self.padding, message)
            .map_err(|e| {
                tracing::error!("{e}");
                rustls::Error::General(format!("the PKCS#11 token could not sign: {e}"))
            })
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}
