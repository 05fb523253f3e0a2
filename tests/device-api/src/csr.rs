//! CSR checks: what the factory servers require before they sign.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256, OID_X509_BUSINESS_CATEGORY,
};
use x509_parser::pem::parse_x509_pem;
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

/// What the server learns from a CSR that passed every check.
#[derive(Debug)]
pub(crate) struct VerifiedCsr {
    pub factory: String,
    pub production: bool,
    pub spki_der: Vec<u8>,
}

/// A CSR whose form and signature check out, before anyone looked at its
/// subject.
#[derive(Debug)]
pub(crate) struct SignedCsr {
    pub common_names: Vec<String>,
    pub units: Vec<String>,
    pub production: bool,
    pub spki_der: Vec<u8>,
    /// Whether it requests the key usages a factory requires; the error is
    /// the plain-text body of the 400 answer.
    pub extensions: Result<(), String>,
}

/// Checks the PEM, the algorithms, the key and the signature. The error is
/// the plain-text body of the 400 answer.
pub(crate) fn check_signed(pem: &str) -> Result<SignedCsr, String> {
    let (_, pem) = parse_x509_pem(pem.as_bytes()).map_err(|e| format!("invalid CSR: {e}"))?;
    if !matches!(
        pem.label.as_str(),
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST"
    ) {
        return Err(format!(
            "invalid CSR: PEM label is '{}', not 'CERTIFICATE REQUEST'",
            pem.label
        ));
    }
    let (rest, csr) = X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| format!("invalid CSR: {e}"))?;
    if !rest.is_empty() {
        return Err("invalid CSR: trailing data after the request".into());
    }

    if csr.signature_algorithm.algorithm != OID_SIG_ECDSA_WITH_SHA256 {
        return Err(format!(
            "CSR must be signed with ECDSA-SHA256, not {}",
            csr.signature_algorithm.algorithm
        ));
    }
    let info = &csr.certification_request_info;
    let key_alg = &info.subject_pki.algorithm;
    let curve = key_alg.parameters.as_ref().and_then(|p| p.as_oid().ok());
    if key_alg.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        return Err("CSR key must be an EC P-256 key".into());
    }
    csr.verify_signature()
        .map_err(|e| format!("CSR signature does not verify: {e}"))?;

    let subject = &info.subject;
    Ok(SignedCsr {
        common_names: strings(subject.iter_common_name()),
        units: strings(subject.iter_organizational_unit()),
        production: is_production(subject),
        spki_der: info.subject_pki.raw.to_vec(),
        extensions: check_requested_extensions(&csr),
    })
}

/// Checks `pem` for a device `uuid` of `factory`. The error is the plain-text
/// body of the 400 answer.
pub(crate) fn verify(pem: &str, uuid: &str, factory: &str) -> Result<VerifiedCsr, String> {
    let csr = check_signed(pem)?;
    let cns = &csr.common_names;
    if cns.len() != 1 || cns[0] != uuid {
        return Err(format!(
            "CSR common name ({}) must be the device uuid {uuid}",
            cns.join(",")
        ));
    }
    let ou = csr.units.first().cloned().unwrap_or_default();
    if ou != factory {
        return Err(format!("Invalid factory({ou}) must be {factory}"));
    }
    csr.extensions?;

    Ok(VerifiedCsr {
        factory: ou,
        production: csr.production,
        spki_der: csr.spki_der,
    })
}

fn check_requested_extensions(csr: &X509CertificationRequest<'_>) -> Result<(), String> {
    let (mut key_usage, mut client_auth) = (false, false);
    let requested = csr
        .certification_request_info
        .iter_attributes()
        .filter_map(|attr| match attr.parsed_attribute() {
            ParsedCriAttribute::ExtensionRequest(req) => Some(&req.extensions),
            _ => None,
        })
        .flatten();
    for ext in requested {
        match ext.parsed_extension() {
            ParsedExtension::KeyUsage(ku) => {
                key_usage |= ext.critical && ku.digital_signature();
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                client_auth |= ext.critical && eku.client_auth;
            }
            _ => {}
        }
    }
    if !key_usage {
        return Err("CSR must request keyUsage digitalSignature, marked critical".into());
    }
    if !client_auth {
        return Err("CSR must request extendedKeyUsage clientAuth, marked critical".into());
    }
    Ok(())
}

fn is_production(subject: &X509Name<'_>) -> bool {
    strings(subject.iter_by_oid(&OID_X509_BUSINESS_CATEGORY))
        .iter()
        .any(|v| v == "production")
}

fn strings<'a>(
    attrs: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
) -> Vec<String> {
    attrs
        .map(|a| {
            a.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|_| String::from_utf8_lossy(a.as_slice()).into_owned())
        })
        .collect()
}
