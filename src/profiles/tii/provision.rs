//! Step 1: the provisioning server on the factory network signs the CSR
//! (`POST <provisioning_url>/api/devices/provision`, see docs/tii.md).

use super::config::NatsUrl;
use crate::error::{Error, ErrorKind, Result};
use crate::http::{self, HttpError};
use crate::x509;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use x509_parser::time::ASN1Time;

#[derive(Serialize)]
struct ProvisionRequest<'a> {
    csr: &'a str,
}

/// The answer as the server sends it; fields the agent does not use are
/// ignored. Older servers spell `ca_certificate`.
#[derive(Deserialize)]
struct ProvisionAnswer {
    certificate: String,
    #[serde(rename = "caCertificate", alias = "ca_certificate")]
    ca_certificate: String,
    #[serde(rename = "fleetManagementNatsUrl", default)]
    nats_url: Option<String>,
}

/// A certificate the server issued, checked.
pub struct Provisioned {
    /// The device certificate, then the chain the server sent with it.
    pub chain: Vec<CertificateDer<'static>>,
    /// `caCertificate`: the root the chain leads to, and the trust anchor
    /// for the fleet manager's NATS server.
    pub roots: Vec<CertificateDer<'static>>,
    /// `fleetManagementNatsUrl`, when the server sent one.
    pub nats_url: Option<NatsUrl>,
}

impl Provisioned {
    pub fn leaf_pem(&self) -> String {
        x509::to_pem(&self.chain[..1])
    }

    /// The device certificate and its chain (`device.crt`).
    pub fn chain_pem(&self) -> String {
        x509::to_pem(&self.chain)
    }

    /// The CA that issued the device certificate: the last certificate of
    /// the chain, or the root when the server sent the leaf alone.
    pub fn issuing_ca_pem(&self) -> String {
        match self.chain.as_slice() {
            [_, .., last] => x509::to_pem(std::slice::from_ref(last)),
            _ => x509::to_pem(&self.roots[..1]),
        }
    }

    /// `caCertificate` (`ca.crt`).
    pub fn ca_pem(&self) -> String {
        x509::to_pem(&self.roots)
    }
}

/// `<base>/api/devices/provision`, whether or not the base ends in `/`.
pub fn endpoint(base: &reqwest::Url) -> reqwest::Url {
    let mut url = base.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments
            .pop_if_empty()
            .extend(["api", "devices", "provision"]);
    }
    url
}

/// One attempt: the answer's body when the server signed (2xx).
pub async fn request(
    client: &http::Client,
    endpoint: &reqwest::Url,
    csr: &str,
) -> std::result::Result<Vec<u8>, HttpError> {
    let request = client
        .reqwest()
        .post(endpoint.clone())
        .json(&ProvisionRequest { csr });
    let response = http::send(request).await?;
    if !(200..300).contains(&response.status) {
        return Err(response.into_error());
    }
    Ok(response.body)
}

fn bad(why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::BadResponse,
        format!("the provisioning server's answer cannot be used: {why}"),
    )
}

/// Checks the answer: the device certificate is for our key, names the
/// device, is valid now, and its chain leads to `caCertificate`.
pub fn validate(
    body: &[u8],
    our_public_key: &[u8],
    id: &str,
    now: ASN1Time,
) -> Result<Provisioned> {
    let answer: ProvisionAnswer = serde_json::from_slice(body)
        .map_err(|e| bad(format!("it is not the expected JSON: {e}")))?;
    let chain = x509::require_certificates(&answer.certificate)
        .map_err(|e| bad(format!("certificate {e}")))?;
    let roots = x509::require_certificates(&answer.ca_certificate)
        .map_err(|e| bad(format!("caCertificate {e}")))?;
    let leaf = &chain[0];
    if !x509::certifies_key(leaf, our_public_key) {
        return Err(bad(format!(
            "the certificate is for another key than this device's ({})",
            x509::subject(leaf)
        )));
    }
    match x509::common_name(leaf) {
        Some(cn) if cn.contains(id) => {}
        other => {
            return Err(bad(format!(
                "the certificate's common name {:?} does not hold the device id {id}",
                other.unwrap_or_default()
            )))
        }
    }
    x509::check_validity(leaf, now).map_err(|e| bad(format!("the certificate {e}")))?;
    x509::verify_chain(&chain, &roots).map_err(|e| {
        bad(format!(
            "the certificate does not lead to caCertificate: {e}"
        ))
    })?;
    let nats_url = answer
        .nats_url
        .filter(|url| !url.trim().is_empty())
        .map(|url| NatsUrl::parse(&url).map_err(|e| bad(format!("fleetManagementNatsUrl {e}"))))
        .transpose()?;
    Ok(Provisioned {
        chain,
        roots,
        nats_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, PublicKeyData};

    const ID: &str = "0b3c9c7e8f6a4d1e9a432f5a1c0d9e77";

    struct Pki {
        root_pem: String,
        intermediate_pem: String,
        intermediate: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
    }

    fn pki() -> Pki {
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca("root");
        let root_pem = root_params.self_signed(&root_key).unwrap().pem();
        let root = Issuer::new(root_params, root_key);
        let key = KeyPair::generate().unwrap();
        let params = ca("issuing");
        let intermediate_pem = params.signed_by(&key, &root).unwrap().pem();
        Pki {
            root_pem,
            intermediate_pem,
            intermediate: Issuer::new(params, key),
        }
    }

    fn leaf(pki: &Pki, key: &KeyPair, cn: &str) -> String {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.signed_by(key, &pki.intermediate).unwrap().pem()
    }

    fn answer(certificate: &str, ca_field: &str, ca: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "certificate": certificate,
            ca_field: ca,
            "fleetManagementNatsUrl": "nats://127.0.0.1:4222",
        }))
        .unwrap()
    }

    #[test]
    fn a_good_answer_in_either_spelling_is_taken_apart() {
        let pki = pki();
        let key = KeyPair::generate().unwrap();
        let cn = format!("/Finland~Solita/fleet/{ID}/registration_agent");
        let certificate = format!("{}{}", leaf(&pki, &key, &cn), pki.intermediate_pem);
        for field in ["caCertificate", "ca_certificate"] {
            let provisioned = validate(
                &answer(&certificate, field, &pki.root_pem),
                key.der_bytes(),
                ID,
                ASN1Time::now(),
            )
            .unwrap();
            assert_eq!(provisioned.chain.len(), 2);
            assert_eq!(provisioned.chain_pem(), certificate);
            assert_eq!(provisioned.issuing_ca_pem(), pki.intermediate_pem);
            assert_eq!(provisioned.ca_pem(), pki.root_pem);
            assert_eq!(
                provisioned.nats_url.unwrap().client_url(),
                "tls://127.0.0.1:4222"
            );
        }
    }

    #[test]
    fn answers_that_cannot_be_trusted_are_bad_responses() {
        let pki = pki();
        let other = self::pki();
        let key = KeyPair::generate().unwrap();
        let cn = format!("{ID}/registration_agent");
        let good = format!("{}{}", leaf(&pki, &key, &cn), pki.intermediate_pem);
        let stranger = KeyPair::generate().unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{}".to_vec(), "not the expected JSON"),
            (b"<html>".to_vec(), "not the expected JSON"),
            (
                answer("", "caCertificate", &pki.root_pem),
                "certificate holds no certificate",
            ),
            (
                answer(&good, "caCertificate", "junk"),
                "caCertificate holds no certificate",
            ),
            (
                answer(&leaf(&pki, &stranger, &cn), "caCertificate", &pki.root_pem),
                "another key",
            ),
            (
                answer(
                    &format!(
                        "{}{}",
                        leaf(&pki, &key, "someone-else"),
                        pki.intermediate_pem
                    ),
                    "caCertificate",
                    &pki.root_pem,
                ),
                "does not hold the device id",
            ),
            (
                answer(&good, "caCertificate", &other.root_pem),
                "does not lead to caCertificate",
            ),
            (
                answer(
                    &format!("{}{}", leaf(&pki, &key, &cn), other.intermediate_pem),
                    "caCertificate",
                    &pki.root_pem,
                ),
                "does not lead to caCertificate",
            ),
        ];
        for (body, expected) in cases {
            let err = validate(&body, key.der_bytes(), ID, ASN1Time::now())
                .err()
                .unwrap();
            assert_eq!(err.kind(), ErrorKind::BadResponse);
            assert!(err.to_string().contains(expected), "{err} / {expected}");
        }
    }

    #[test]
    fn the_endpoint_is_under_the_configured_url() {
        for (base, expected) in [
            (
                "http://10.0.0.1:8080",
                "http://10.0.0.1:8080/api/devices/provision",
            ),
            ("http://10.0.0.1/", "http://10.0.0.1/api/devices/provision"),
            ("https://h/prov", "https://h/prov/api/devices/provision"),
            ("https://h/prov/", "https://h/prov/api/devices/provision"),
        ] {
            assert_eq!(
                endpoint(&reqwest::Url::parse(base).unwrap()).as_str(),
                expected
            );
        }
    }
}
