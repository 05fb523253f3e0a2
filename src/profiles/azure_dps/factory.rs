//! The factory step: the device's CSR goes to the factory's enrolment
//! endpoint, which answers with the certificate DPS will know the device by
//! (docs/azure-dps.md). The key never leaves the device.

use crate::config::CaBundle;
use crate::error::{Error, ErrorKind, Result};
use crate::http::{self, HttpError};
use crate::x509;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use x509_parser::time::ASN1Time;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EnrolRequest<'a> {
    pub registration_id: &'a str,
    pub csr: &'a str,
}

#[derive(Deserialize)]
struct EnrolAnswer {
    certificate: String,
}

/// POSTs the enrolment; on 201 returns the raw body.
pub(crate) async fn enrol(
    client: &http::Client,
    url: &reqwest::Url,
    request: &EnrolRequest<'_>,
) -> std::result::Result<Vec<u8>, HttpError> {
    let response = http::send(client.reqwest().post(url.clone()).json(request)).await?;
    if response.status == 201 {
        Ok(response.body)
    } else {
        Err(response.into_error())
    }
}

/// A certificate chain (leaf first) the device can use.
pub(crate) struct DeviceCertificate {
    /// As stored in `device.crt`.
    pub pem: String,
    pub chain: Vec<CertificateDer<'static>>,
}

impl DeviceCertificate {
    /// The leaf's PEM block (for the token's certificate object).
    pub fn leaf_pem(&self) -> String {
        x509::to_pem(&self.chain[..1])
    }
}

/// Checks a chain for this device: PEM certificates only, the leaf for
/// `public_key` with common name `id`, valid at `now`, each certificate
/// signed by the next, and the last by `factory_ca` when one is configured.
pub(crate) fn check_chain(
    pem: &str,
    public_key: &[u8],
    id: &str,
    factory_ca: Option<&CaBundle>,
    now: ASN1Time,
) -> std::result::Result<DeviceCertificate, String> {
    let chain = x509::require_certificates(pem)?;
    let leaf = &chain[0];
    if !x509::certifies_key(leaf, public_key) {
        return Err(format!(
            "the certificate ({}) is not for this device's key",
            x509::subject(leaf)
        ));
    }
    match x509::common_name(leaf) {
        Some(cn) if cn == id => {}
        other => {
            return Err(format!(
                "the certificate's common name is {:?}, not the registration id {id}",
                other.unwrap_or_default()
            ))
        }
    }
    x509::check_validity(leaf, now).map_err(|e| format!("the certificate {e}"))?;
    match factory_ca {
        Some(ca) => x509::verify_chain(&chain, &ca.certificates)
            .map_err(|e| format!("{e} (factory_ca {})", ca.path.display()))?,
        // Without a factory CA, at least the chain must hang together.
        None => x509::verify_chain(&chain, &chain[chain.len() - 1..])?,
    }
    let mut pem = pem.trim_end().to_string();
    pem.push('\n');
    Ok(DeviceCertificate { pem, chain })
}

/// Checks the factory's 201 body (certificates valid at `now`).
pub(crate) fn validate(
    body: &[u8],
    public_key: &[u8],
    id: &str,
    factory_ca: Option<&CaBundle>,
    now: ASN1Time,
) -> Result<DeviceCertificate> {
    let bad = |why: String| {
        Error::new(
            ErrorKind::BadResponse,
            format!("the factory's answer cannot be used: {why}"),
        )
    };
    let answer: EnrolAnswer = serde_json::from_slice(body)
        .map_err(|e| bad(format!("it is not {{\"certificate\": \"<PEM>\"}}: {e}")))?;
    check_chain(&answer.certificate, public_key, id, factory_ca, now).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, Issuer, KeyPair, PublicKeyData};

    struct Ca {
        pem: String,
        der: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(cn: &str, key: &KeyPair, ca: &Ca) -> String {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        format!(
            "{}{}",
            params.signed_by(key, &ca.issuer).unwrap().pem(),
            ca.pem
        )
    }

    fn bundle(ca: &Ca) -> CaBundle {
        CaBundle {
            path: "/etc/factory-ca.pem".into(),
            certificates: vec![ca.der.clone()],
        }
    }

    #[test]
    fn a_good_chain_is_accepted_and_its_leaf_kept() {
        let factory = ca("factory");
        let key = KeyPair::generate().unwrap();
        let pem = leaf("dev-1", &key, &factory);
        let body = serde_json::json!({ "certificate": pem }).to_string();
        let cert = validate(
            body.as_bytes(),
            key.der_bytes(),
            "dev-1",
            Some(&bundle(&factory)),
            ASN1Time::now(),
        )
        .unwrap();
        assert_eq!(cert.chain.len(), 2);
        assert_eq!(
            x509::require_certificates(&cert.leaf_pem()).unwrap(),
            cert.chain[..1]
        );
        validate(
            body.as_bytes(),
            key.der_bytes(),
            "dev-1",
            None,
            ASN1Time::now(),
        )
        .unwrap();
    }

    #[test]
    fn wrong_key_name_ca_or_shape_is_a_bad_response() {
        let factory = ca("factory");
        let other_ca = ca("other");
        let key = KeyPair::generate().unwrap();
        let other_key = KeyPair::generate().unwrap();
        let cases = [
            (
                leaf("dev-1", &other_key, &factory),
                Some(&factory),
                "not for this device's key",
            ),
            (
                leaf("dev-2", &key, &factory),
                Some(&factory),
                "common name is \"dev-2\"",
            ),
            (
                leaf("dev-1", &key, &other_ca),
                Some(&factory),
                "not signed by a trusted CA",
            ),
            (String::new(), None, "holds no certificate"),
            (key.serialize_pem(), None, "not a certificate"),
        ];
        for (pem, ca, expected) in cases {
            let body = serde_json::json!({ "certificate": pem }).to_string();
            let err = validate(
                body.as_bytes(),
                key.der_bytes(),
                "dev-1",
                ca.map(bundle).as_ref(),
                ASN1Time::now(),
            )
            .err()
            .unwrap();
            assert_eq!(err.kind(), ErrorKind::BadResponse);
            assert!(
                err.to_string().contains(expected),
                "{err} should say {expected}"
            );
        }
        let err = validate(b"[]", key.der_bytes(), "dev-1", None, ASN1Time::now())
            .err()
            .unwrap();
        assert!(err.to_string().contains("certificate"), "{err}");
    }
}
