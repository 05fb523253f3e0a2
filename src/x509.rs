//! Certificates: PEM parsing, the questions every profile asks of an issued
//! certificate (whose key, which name, valid now), and chain verification.
//! Errors are plain reasons; callers decide what kind of failure they are.

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::*;

/// The certificates in a PEM text (every block must be a certificate that
/// parses), as DER.
pub fn pem_certificates(text: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut ders = Vec::new();
    for pem in Pem::iter_from_buffer(text.as_bytes()) {
        let pem = pem.map_err(|e| format!("not valid PEM: {e}"))?;
        if pem.label != "CERTIFICATE" {
            return Err(format!("holds a {:?} block, not a certificate", pem.label));
        }
        X509Certificate::from_der(&pem.contents)
            .map_err(|e| format!("holds an unparsable certificate: {e}"))?;
        ders.push(CertificateDer::from(pem.contents));
    }
    Ok(ders)
}

/// Certificates as PEM text, one block after the other (LF line ends), for
/// the profiles that store certificates re-encoded.
#[cfg(feature = "mutual-tls")]
pub fn to_pem(ders: &[CertificateDer<'_>]) -> String {
    let config = ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF);
    ders.iter()
        .map(|der| ::pem::encode_config(&::pem::Pem::new("CERTIFICATE", der.as_ref()), config))
        .collect()
}

/// Like [`pem_certificates`], but at least one is required.
pub fn require_certificates(text: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let ders = pem_certificates(text)?;
    if ders.is_empty() {
        return Err("holds no certificate".into());
    }
    Ok(ders)
}

/// A parsed certificate; every DER handed here came out of
/// [`pem_certificates`], so parsing cannot fail in practice.
pub fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| format!("unparsable certificate: {e}"))
}

pub fn subject(der: &[u8]) -> String {
    parse(der).map_or_else(|e| e, |c| c.subject().to_string())
}

/// What a person asks of a certificate: who, issued by whom, valid until.
#[derive(Debug, Clone)]
pub struct Summary {
    pub subject: String,
    pub issuer: String,
    /// The first organisational unit of the subject (LmP's factory).
    pub organizational_unit: Option<String>,
    pub common_name: Option<String>,
    pub not_after: std::time::SystemTime,
}

pub fn summary(der: &[u8]) -> Result<Summary, String> {
    let cert = parse(der)?;
    fn first<'a>(
        mut values: impl Iterator<Item = &'a AttributeTypeAndValue<'a>>,
    ) -> Option<String> {
        Some(values.next()?.as_str().ok()?.to_string())
    }
    let not_after = cert.validity().not_after.timestamp();
    Ok(Summary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        organizational_unit: first(cert.subject().iter_organizational_unit()),
        common_name: first(cert.subject().iter_common_name()),
        not_after: std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(u64::try_from(not_after).unwrap_or(0)),
    })
}

/// The first common name of the subject.
pub fn common_name(der: &[u8]) -> Option<String> {
    let cert = parse(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

/// Whether the certificate is for this public key (the subjectPublicKey bits:
/// the EC point, or the PKCS#1 RSA key, as rcgen's `PublicKeyData` gives them).
pub fn certifies_key(der: &[u8], public_key: &[u8]) -> bool {
    parse(der).is_ok_and(|c| c.public_key().subject_public_key.data.as_ref() == public_key)
}

/// Valid at `now` (not before its start, not after its end).
pub fn check_validity(der: &[u8], now: ASN1Time) -> Result<(), String> {
    let cert = parse(der)?;
    let validity = cert.validity();
    if now < validity.not_before {
        return Err(format!("is not valid before {}", validity.not_before));
    }
    if now > validity.not_after {
        return Err(format!("expired on {}", validity.not_after));
    }
    Ok(())
}

/// Each certificate of `chain` must be signed by the next, and the last by
/// one of `roots` (or be one of them).
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
) -> Result<(), String> {
    for pair in chain.windows(2) {
        let (child, parent) = (parse(&pair[0])?, parse(&pair[1])?);
        child
            .verify_signature(Some(parent.public_key()))
            .map_err(|_| format!("{} is not signed by {}", child.subject(), parent.subject()))?;
    }
    let Some(last_der) = chain.last() else {
        return Err("the chain is empty".into());
    };
    if roots.iter().any(|root| root == last_der) {
        return Ok(());
    }
    let last = parse(last_der)?;
    let anchored = roots.iter().any(|root| {
        parse(root).is_ok_and(|root| last.verify_signature(Some(root.public_key())).is_ok())
    });
    if anchored {
        Ok(())
    } else {
        Err(format!(
            "{} is not signed by a trusted CA certificate",
            last.subject()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, Issuer, KeyPair, PublicKeyData};

    fn ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (cert, Issuer::new(params, key))
    }

    #[test]
    fn chains_names_keys_and_pem_round_trip() {
        let (root, root_issuer) = ca("root");
        let (_, other_issuer) = ca("other");
        let leaf_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "device-1");
        let leaf = params.signed_by(&leaf_key, &root_issuer).unwrap();
        let foreign = params.signed_by(&leaf_key, &other_issuer).unwrap();

        let text = format!("{}{}", leaf.pem(), root.pem());
        let ders = require_certificates(&text).unwrap();
        assert_eq!(ders.len(), 2);
        #[cfg(feature = "mutual-tls")]
        assert_eq!(to_pem(&ders), text);
        assert_eq!(common_name(&ders[0]).as_deref(), Some("device-1"));
        assert!(certifies_key(&ders[0], leaf_key.der_bytes()));
        assert!(!certifies_key(&ders[1], leaf_key.der_bytes()));
        let roots = [root.der().clone()];
        verify_chain(&ders, &roots).unwrap();
        verify_chain(&ders[..1], &roots).unwrap();
        let err = verify_chain(&[foreign.der().clone()], &roots).unwrap_err();
        assert!(err.contains("not signed by a trusted CA"), "{err}");
        check_validity(&ders[0], ASN1Time::now()).unwrap();
    }

    #[test]
    fn non_certificates_are_refused() {
        assert_eq!(
            require_certificates("").unwrap_err(),
            "holds no certificate"
        );
        let key = KeyPair::generate().unwrap();
        let err = pem_certificates(&key.serialize_pem()).unwrap_err();
        assert!(err.contains("not a certificate"), "{err}");
    }
}
