//! The DPS and factory doubles over real loopback TLS: they verify what the
//! agent relies on them to verify.

use std::net::TcpStream;
use std::sync::Arc;

use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{json, Value};

use crate::azure_dps::{AzureDps, DpsOptions, DpsReply};
use crate::tests::{exchange, Answer};

fn csr(cn: &str, key: &KeyPair) -> String {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    let mut ku = CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![3, 2, 7, 0x80]);
    ku.set_criticality(true);
    let eku_der = vec![
        0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02,
    ];
    let mut eku = CustomExtension::from_oid_content(&[2, 5, 29, 37], eku_der);
    eku.set_criticality(true);
    params.custom_extensions = vec![ku, eku];
    params.serialize_request(key).unwrap().pem().unwrap()
}

/// A TLS connection to `url`'s port, presenting `identity` if given.
fn https(
    dps: &AzureDps,
    url: &str,
    identity: Option<(&str, &KeyPair)>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(dps.server_ca_pem().as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => {
            let chain = CertificateDer::pem_slice_iter(chain.as_bytes())
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    let authority = url.split('/').nth(2).unwrap();
    let tcp = TcpStream::connect(authority).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

fn enrol(dps: &AzureDps, id: &str, csr: &str) -> Answer {
    let body = json!({"registrationId": id, "csr": csr}).to_string();
    exchange(
        https(dps, &dps.enrol_url(), None),
        "POST",
        "/enrol",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .unwrap()
}

fn put(dps: &AzureDps, id: &str, identity: (&str, &KeyPair)) -> std::io::Result<Answer> {
    let path = format!(
        "/{}/registrations/{id}/register?api-version=2021-10-01",
        dps.id_scope()
    );
    let body = json!({"registrationId": id}).to_string();
    exchange(
        https(dps, &dps.endpoint(), Some(identity)),
        "PUT",
        &path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

fn poll(dps: &AzureDps, id: &str, operation: &str, identity: (&str, &KeyPair)) -> Answer {
    let path = format!(
        "/{}/registrations/{id}/operations/{operation}?api-version=2021-10-01",
        dps.id_scope()
    );
    exchange(
        https(dps, &dps.endpoint(), Some(identity)),
        "GET",
        &path,
        &[],
        b"",
    )
    .unwrap()
}

#[test]
fn the_factory_signs_csrs_for_their_registration_id_only() {
    let dps = AzureDps::start(DpsOptions::default());
    let key = KeyPair::generate().unwrap();
    let answer = enrol(&dps, "dev-1", &csr("dev-1", &key));
    assert_eq!(answer.status, 201, "{}", answer.text());
    let chain = answer.json()["certificate"].as_str().unwrap().to_string();
    assert_eq!(CertificateDer::pem_slice_iter(chain.as_bytes()).count(), 2);
    assert_eq!(dps.enrollment("dev-1"), Some(false), "entered disabled");

    let answer = enrol(&dps, "dev-2", &csr("dev-1", &key));
    assert_eq!(answer.status, 400);
    assert!(answer.text().contains("must be the registration id dev-2"));
    let answer = enrol(&dps, "Dev-3", &csr("Dev-3", &key));
    assert_eq!(answer.status, 400);
    // The same id with another key is someone else.
    let other = KeyPair::generate().unwrap();
    assert_eq!(enrol(&dps, "dev-1", &csr("dev-1", &other)).status, 409);
    assert_eq!(enrol(&dps, "dev-1", &csr("dev-1", &key)).status, 201);
    assert_eq!(dps.issued().len(), 2);
}

#[test]
fn dps_requires_a_device_certificate_for_the_registration_id() {
    let dps = AzureDps::start(DpsOptions {
        polls_before_assigned: 0,
        ..DpsOptions::default()
    });
    let key = KeyPair::generate().unwrap();
    let chain = enrol(&dps, "dev-1", &csr("dev-1", &key)).json()["certificate"]
        .as_str()
        .unwrap()
        .to_string();
    let other_key = KeyPair::generate().unwrap();
    let other_chain = enrol(&dps, "dev-2", &csr("dev-2", &other_key)).json()["certificate"]
        .as_str()
        .unwrap()
        .to_string();

    // No client certificate, or one from another CA: no handshake.
    let path = format!("/{}/registrations/dev-1/register", dps.id_scope());
    assert!(exchange(https(&dps, &dps.endpoint(), None), "PUT", &path, &[], b"{}").is_err());
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "dev-1");
    let self_signed = params.self_signed(&key).unwrap().pem();
    assert!(put(&dps, "dev-1", (&self_signed, &key)).is_err());

    // Another device's certificate: 401 in DPS's words.
    let answer = put(&dps, "dev-1", (&other_chain, &other_key)).unwrap();
    assert_eq!(answer.status, 401);
    let body: Value = answer.json();
    assert_eq!(body["errorCode"], 401002);
    assert_eq!(body["message"], "Invalid certificate");
    assert!(body["trackingId"].is_string());

    // Its own: disabled, then enabled and assigned.
    let answer = put(&dps, "dev-1", (&chain, &key)).unwrap();
    assert_eq!(answer.status, 202);
    let operation = answer.json()["operationId"].as_str().unwrap().to_string();
    let decided = poll(&dps, "dev-1", &operation, (&chain, &key));
    assert_eq!(decided.json()["status"], "disabled");
    dps.set_enrollment("dev-1", true);
    let answer = put(&dps, "dev-1", (&chain, &key)).unwrap();
    let operation = answer.json()["operationId"].as_str().unwrap().to_string();
    let decided = poll(&dps, "dev-1", &operation, (&chain, &key)).json();
    assert_eq!(decided["status"], "assigned");
    assert_eq!(decided["registrationState"]["deviceId"], "dev-1");
    assert_eq!(
        decided["registrationState"]["assignedHub"],
        "test-hub.azure-devices.net"
    );
    assert_eq!(poll(&dps, "dev-1", "4.nope", (&chain, &key)).status, 404);

    // Scripted answers go to the requests they fit.
    dps.push_replies([
        DpsReply::Failed {
            error_code: 400209,
            message: "no hub".into(),
        },
        DpsReply::Status {
            code: 429,
            body: json!({"message": "slow down"}),
            retry_after: Some("3".into()),
        },
    ]);
    let answer = put(&dps, "dev-1", (&chain, &key)).unwrap();
    assert_eq!(answer.status, 202, "a failure only ends a poll");
    let operation = answer.json()["operationId"].as_str().unwrap().to_string();
    let failed = poll(&dps, "dev-1", &operation, (&chain, &key)).json();
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["registrationState"]["errorCode"], 400209);
    let answer = put(&dps, "dev-1", (&chain, &key)).unwrap();
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), Some("3"));
    assert_eq!(dps.assignments().len(), 1);
}

#[test]
fn dps_can_decide_at_the_put() {
    let dps = AzureDps::start(DpsOptions {
        polls_before_assigned: 0,
        enable_at_factory: true,
        decide_on_register: true,
        ..DpsOptions::default()
    });
    let key = KeyPair::generate().unwrap();
    let chain = enrol(&dps, "dev-1", &csr("dev-1", &key)).json()["certificate"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = put(&dps, "dev-1", (&chain, &key)).unwrap();
    assert_eq!(answer.status, 200);
    let decided = answer.json();
    assert_eq!(decided["status"], "assigned");
    assert_eq!(decided["registrationState"]["deviceId"], "dev-1");
    // The operation stays known, as after a poll that decided.
    let operation = decided["operationId"].as_str().unwrap().to_string();
    assert_eq!(
        poll(&dps, "dev-1", &operation, (&chain, &key)).json(),
        decided
    );
    assert_eq!(dps.assignments().len(), 1);
}
