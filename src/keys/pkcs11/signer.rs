//! The token key as rustls signs with it: mutual TLS where the private key
//! never leaves the token.

use super::TokenKey;
use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};

/// A rustls signing key backed by the token's EC P-256 key.
#[derive(Clone)]
pub struct TlsSigner(TokenKey);

impl TlsSigner {
    pub fn new(key: TokenKey) -> Self {
        TlsSigner(key)
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

impl SigningKey for TlsSigner {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(self.clone()) as Box<dyn Signer>)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

impl Signer for TlsSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.0.sign_sha256(message).map_err(|e| {
            tracing::error!("{e}");
            rustls::Error::General(format!("the PKCS#11 token could not sign: {e}"))
        })
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}
