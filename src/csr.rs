//! The certificate signing request, shared by software and PKCS#11 keys:
//! anything that implements rcgen's `SigningKey` can sign it.

use crate::error::{Error, ErrorKind, Result};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, SigningKey};

/// businessCategory (X.520).
const OID_BUSINESS_CATEGORY: &[u64] = &[2, 5, 4, 15];
const OID_KEY_USAGE: &[u64] = &[2, 5, 29, 15];
const OID_EXT_KEY_USAGE: &[u64] = &[2, 5, 29, 37];
/// BIT STRING with only digitalSignature (bit 0) set.
const KEY_USAGE_DIGITAL_SIGNATURE: &[u8] = &[0x03, 0x02, 0x07, 0x80];
/// SEQUENCE { id-kp-clientAuth (1.3.6.1.5.5.7.3.2) }.
const EXT_KEY_USAGE_CLIENT_AUTH: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02,
];

/// The subject a profile asks for. Every CSR requests keyUsage
/// digitalSignature and extendedKeyUsage clientAuth: a device certificate
/// authenticates the device to its fleet, nothing else.
pub struct CsrSubject<'a> {
    pub common_name: &'a str,
    pub organizational_unit: Option<&'a str>,
    /// businessCategory=production, which the LmP factory uses to mark
    /// production devices.
    pub production: bool,
}

/// Builds and signs the CSR; returns it as PEM.
///
/// rcgen marks extendedKeyUsage non-critical, but the factory's CA expects
/// both usages critical (as the C++ tool's openssl config requested), so both
/// are written as explicit extensions.
pub fn build_csr_pem(key: &impl SigningKey, subject: &CsrSubject<'_>) -> Result<String> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, subject.common_name);
    if let Some(unit) = subject.organizational_unit {
        name.push(DnType::OrganizationalUnitName, unit);
    }
    if subject.production {
        name.push(
            DnType::CustomDnType(OID_BUSINESS_CATEGORY.to_vec()),
            "production",
        );
    }
    params.distinguished_name = name;
    let mut key_usage =
        CustomExtension::from_oid_content(OID_KEY_USAGE, KEY_USAGE_DIGITAL_SIGNATURE.to_vec());
    key_usage.set_criticality(true);
    let mut ext_key_usage =
        CustomExtension::from_oid_content(OID_EXT_KEY_USAGE, EXT_KEY_USAGE_CLIENT_AUTH.to_vec());
    ext_key_usage.set_criticality(true);
    params.custom_extensions = vec![key_usage, ext_key_usage];

    let csr = params.serialize_request(key).map_err(|e| {
        let kind = if matches!(e, rcgen::Error::RemoteKeyError) {
            ErrorKind::Hsm
        } else {
            ErrorKind::Internal
        };
        Error::new(kind, format!("cannot sign the certificate request: {e}"))
    })?;
    csr.pem()
        .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot encode the CSR: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn parse(pem_text: &str) -> Vec<u8> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).unwrap();
        assert_eq!(pem.label, "CERTIFICATE REQUEST");
        pem.contents
    }

    #[test]
    fn csr_has_the_subject_extensions_and_signature_the_factory_expects() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let uuid = "0b3c9c7e-8f6a-4d1e-9a43-2f5a1c0d9e77";
        let pem = build_csr_pem(
            &key,
            &CsrSubject {
                common_name: uuid,
                organizational_unit: Some("acme"),
                production: true,
            },
        )
        .unwrap();
        let der = parse(&pem);
        let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
        csr.verify_signature().unwrap();
        assert_eq!(
            csr.signature_algorithm.algorithm,
            x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256
        );
        let info = &csr.certification_request_info;
        let cn: Vec<_> = info
            .subject
            .iter_common_name()
            .map(|a| a.as_str().unwrap())
            .collect();
        let ou: Vec<_> = info
            .subject
            .iter_organizational_unit()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(cn, [uuid]);
        assert_eq!(ou, ["acme"]);
        let business: Vec<_> = info
            .subject
            .iter_by_oid(&x509_parser::oid_registry::Oid::from(&[2, 5, 4, 15]).unwrap())
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(business, ["production"]);
        assert_eq!(
            info.subject_pki.subject_public_key.data.as_ref(),
            key.public_key_raw()
        );

        let extensions: Vec<_> = csr.requested_extensions().unwrap().collect();
        let mut seen = 0;
        for ext in csr
            .certification_request_info
            .iter_attributes()
            .filter_map(|a| match a.parsed_attribute() {
                ParsedCriAttribute::ExtensionRequest(req) => Some(req),
                _ => None,
            })
            .flat_map(|req| req.extensions.iter())
        {
            assert!(ext.critical, "extension {} must be critical", ext.oid);
            match ext.parsed_extension() {
                ParsedExtension::KeyUsage(ku) => {
                    assert!(ku.digital_signature());
                    assert_eq!(ku.flags, 1);
                    seen += 1;
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    assert!(eku.client_auth && !eku.server_auth);
                    seen += 1;
                }
                other => panic!("unexpected extension {other:?}"),
            }
        }
        assert_eq!(seen, 2);
        assert_eq!(extensions.len(), 2);
    }

    #[test]
    fn non_production_csr_has_no_business_category() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = build_csr_pem(
            &key,
            &CsrSubject {
                common_name: "u",
                organizational_unit: None,
                production: false,
            },
        )
        .unwrap();
        let der = parse(&pem);
        let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
        let oid = x509_parser::oid_registry::Oid::from(&[2, 5, 4, 15]).unwrap();
        assert_eq!(
            csr.certification_request_info
                .subject
                .iter_by_oid(&oid)
                .count(),
            0
        );
    }

    /// TII's device names are longer than RFC 5280's upper bound for a
    /// common name (64); rcgen writes them as they are (UTF8String), and the
    /// request must still parse and verify, for EC and RSA keys alike.
    #[test]
    fn a_common_name_longer_than_64_characters_is_written_as_it_is() {
        let cn = "/Finland~Solita/fleet/0b3c9c7e8f6a4d1e9a432f5a1c0d9e77/registration_agent";
        assert_eq!(cn.len(), 73);
        for algorithm in [
            crate::keys::KeyAlgorithm::EcP256,
            crate::keys::KeyAlgorithm::Rsa2048,
        ] {
            let key = crate::keys::SoftwareKey::generate(algorithm).unwrap();
            let pem = build_csr_pem(
                &key,
                &CsrSubject {
                    common_name: cn,
                    organizational_unit: None,
                    production: false,
                },
            )
            .unwrap();
            let der = parse(&pem);
            let (rest, csr) = X509CertificationRequest::from_der(&der).unwrap();
            assert!(rest.is_empty());
            csr.verify_signature().unwrap();
            let expected = match algorithm {
                crate::keys::KeyAlgorithm::EcP256 => {
                    x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256
                }
                crate::keys::KeyAlgorithm::Rsa2048 => {
                    x509_parser::oid_registry::OID_PKCS1_SHA256WITHRSA
                }
            };
            assert_eq!(csr.signature_algorithm.algorithm, expected);
            let names: Vec<_> = csr
                .certification_request_info
                .subject
                .iter_common_name()
                .collect();
            assert_eq!(names.len(), 1);
            assert_eq!(names[0].as_str().unwrap(), cn);
            assert_eq!(
                names[0].attr_value().tag(),
                x509_parser::der_parser::asn1_rs::Tag::Utf8String
            );
        }
    }
}
