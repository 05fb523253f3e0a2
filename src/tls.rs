//! The one TLS stack (rustls with ring): whom to trust, and who we are.
//!
//! Trust is built only when a connection needs it. Loading the system roots
//! means reading and parsing every file in `/etc/ssl/certs`, which would be
//! most of the work of a whole registration over plain http, so: no roots for
//! `http://`, only the configured CA when there is one, the system roots
//! otherwise.

use crate::config::CaBundle;
use crate::error::{Error, Result};
use rustls::pki_types::CertificateDer;
use rustls::sign::{CertifiedKey, SigningKey, SingleCertAndKey};
use rustls::{ClientConfig, RootCertStore};
use std::sync::Arc;

/// The certificate chain (leaf first) and key this device proves itself
/// with in mutual TLS.
#[derive(Clone)]
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<dyn SigningKey>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientIdentity({} certificates)", self.chain.len())
    }
}

/// The roots for a connection: the configured CA bundle, else the system's.
pub fn roots(cacert: Option<&CaBundle>) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match cacert {
        Some(bundle) => {
            for cert in &bundle.certificates {
                store.add(cert.clone()).map_err(|e| {
                    Error::config(format!(
                        "{}: a certificate cannot be used as a trust anchor: {e}",
                        bundle.path.display()
                    ))
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(Error::config(
                    "no system CA certificates found (install ca-certificates, or pass --cacert with the server's CA)",
                ));
            }
        }
    }
    Ok(store)
}

/// A rustls client configuration with ring as the one provider.
pub fn client_config(
    roots: RootCertStore,
    identity: Option<ClientIdentity>,
) -> Result<ClientConfig> {
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::internal(format!("cannot set up TLS: {e}")))?
            .with_root_certificates(roots);
    Ok(match identity {
        Some(identity) => builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(
            CertifiedKey::new(identity.chain, identity.key),
        ))),
        None => builder.with_no_client_auth(),
    })
}
