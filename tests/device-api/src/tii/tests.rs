//! The TII doubles check what they claim to: nats-server lets a device's
//! certificate use only its own subjects, refuses certificates it was not
//! told about and connections without one, and the provisioning double
//! refuses CSRs that break the contract.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair};
use serde_json::{json, Value};

use super::{FleetReply, TiiFleet, TiiOptions, CN_PREFIX, CN_SUFFIX};

/// `POST /api/devices/provision` over a plain socket: (status, body).
fn provision(fleet: &TiiFleet, body: &str, content_type: &str) -> (u16, Value) {
    let address = fleet.provisioning_url().replace("http://", "");
    assert!(!address.contains("https"), "plain http only here");
    let mut tcp = std::net::TcpStream::connect(&address).unwrap();
    write!(
        tcp,
        "POST /api/devices/provision HTTP/1.1\r\nHost: {address}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn csr(key: &KeyPair, common_name: &str, client_auth: bool) -> String {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    if client_auth {
        params.custom_extensions = vec![CustomExtension::from_oid_content(
            &[2, 5, 29, 37],
            vec![
                0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02,
            ],
        )];
    }
    params.serialize_request(key).unwrap().pem().unwrap()
}

/// A device the provisioning double signed: its key and answer.
struct Device {
    id: String,
    key: KeyPair,
    answer: Value,
}

fn provisioned_device(fleet: &TiiFleet, id: &str) -> Device {
    let key = KeyPair::generate().unwrap();
    let pem = csr(&key, &format!("{CN_PREFIX}{id}{CN_SUFFIX}"), true);
    let (status, answer) = provision(
        fleet,
        &json!({ "csr": pem }).to_string(),
        "application/json",
    );
    assert_eq!(status, 200, "{answer}");
    Device {
        id: id.into(),
        key,
        answer,
    }
}

fn tls_config(fleet: &TiiFleet, client: Option<(&KeyPair, &str)>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(fleet.fleet().pki.root_der()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    match client {
        None => builder.with_no_client_auth(),
        Some((key, chain_pem)) => {
            let chain = x509_parser::pem::Pem::iter_from_buffer(chain_pem.as_bytes())
                .map(|pem| rustls::pki_types::CertificateDer::from(pem.unwrap().contents))
                .collect();
            let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    }
}

async fn connect(
    fleet: &TiiFleet,
    tls: rustls::ClientConfig,
) -> Result<
    (
        async_nats::Client,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ),
    String,
> {
    let (errors_tx, errors) = tokio::sync::mpsc::unbounded_channel();
    async_nats::ConnectOptions::new()
        .require_tls(true)
        .tls_client_config(tls)
        .event_callback(move |event| {
            let errors_tx = errors_tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = errors_tx.send(e.to_string());
                }
            }
        })
        .connect(fleet.nats_url().replace("nats://", "tls://"))
        .await
        .map(|client| (client, errors))
        .map_err(|e| e.to_string())
}

fn registration(fleet: &TiiFleet, device: &Device) -> (async_nats::HeaderMap, Vec<u8>) {
    let leaf = device.answer["certificate"]
        .as_str()
        .unwrap()
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap()
        .to_string();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("ID", device.id.as_str());
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    headers.insert(
        "timestamp",
        now.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
            .as_str(),
    );
    let body = json!({
        "id": device.id,
        "deviceType": "drone",
        "architecture": "amd64",
        "buildVersion": "1",
        "certificate": leaf,
        "caCertificate": fleet.issuing_ca_pem(),
    });
    (headers, body.to_string().into_bytes())
}

#[test]
fn a_device_certificate_may_use_only_its_own_subjects() {
    if !super::nats_server_available() {
        return;
    }
    let fleet = TiiFleet::start(TiiOptions::default());
    let alice = provisioned_device(&fleet, "a11ce");
    let bob = provisioned_device(&fleet, "b0b");
    let chain = alice.answer["certificate"].as_str().unwrap().to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, mut errors) = connect(&fleet, tls_config(&fleet, Some((&alice.key, &chain))))
            .await
            .unwrap();

        // Alice may not listen to, or speak for, Bob.
        let _spy = client
            .subscribe(format!("device_results.{}.register", bob.id))
            .await
            .unwrap();
        let (headers, body) = registration(&fleet, &bob);
        client
            .publish_with_headers(
                format!("device_actions.{}.register", bob.id),
                headers,
                body.into(),
            )
            .await
            .unwrap();
        client.flush().await.unwrap();
        let mut refused = Vec::new();
        while refused.len() < 2 {
            let error = tokio::time::timeout(Duration::from_secs(5), errors.recv())
                .await
                .expect("the server reports the violations")
                .unwrap();
            refused.push(error);
        }
        assert!(
            refused.iter().any(|e| e.contains("Subscription"))
                && refused.iter().any(|e| e.contains("Publish")),
            "{refused:?}"
        );

        // Her own registration goes through and is answered.
        let mut results = client
            .subscribe(format!("device_results.{}.register", alice.id))
            .await
            .unwrap();
        client.flush().await.unwrap();
        let (headers, body) = registration(&fleet, &alice);
        client
            .publish_with_headers(
                format!("device_actions.{}.register", alice.id),
                headers,
                body.into(),
            )
            .await
            .unwrap();
        let result = tokio::time::timeout(Duration::from_secs(5), results.next())
            .await
            .expect("a result")
            .unwrap();
        let result: Value = serde_json::from_slice(&result.payload).unwrap();
        assert_eq!(result["status"], "success", "{result}");
    });
    let registrations = fleet.registrations();
    assert_eq!(registrations.len(), 1, "{registrations:?}");
    assert_eq!(registrations[0].id.as_deref(), Some("a11ce"));
    assert!(
        registrations[0].problems.is_empty(),
        "{:?}",
        registrations[0].problems
    );
    assert_eq!(registrations[0].reply, FleetReply::success());
}

#[test]
fn unknown_or_missing_client_certificates_are_refused() {
    if !super::nats_server_available() {
        return;
    }
    let fleet = TiiFleet::start(TiiOptions::default());
    // Signed by the fleet's CA, but never provisioned: no user.
    let key = KeyPair::generate().unwrap();
    let issued = fleet
        .fleet()
        .pki
        .issue_device(&format!("{CN_PREFIX}stranger{CN_SUFFIX}"), &key, false)
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let error = connect(&fleet, tls_config(&fleet, Some((&key, &issued.chain_pem))))
            .await
            .map(|_| ())
            .expect_err("an unprovisioned certificate is refused");
        assert!(error.contains("authorization violation"), "{error}");
        let error = connect(&fleet, tls_config(&fleet, None))
            .await
            .map(|_| ())
            .expect_err("a connection without a client certificate is refused");
        assert!(!error.is_empty());
    });
}

#[test]
fn the_provisioning_double_refuses_what_breaks_the_contract() {
    let fleet = TiiFleet::start(TiiOptions {
        start_nats: false,
        ..TiiOptions::default()
    });
    let key = KeyPair::generate().unwrap();
    let good = csr(&key, &format!("{CN_PREFIX}0123abcd{CN_SUFFIX}"), true);
    let cases = [
        (
            json!({ "csr": good }).to_string(),
            "text/plain",
            "Content-Type must be application/json",
        ),
        (
            json!({ "csr": good, "token": "x" }).to_string(),
            "application/json",
            "body must hold only csr",
        ),
        (
            json!({ "csr": csr(&key, "0123abcd", true) }).to_string(),
            "application/json",
            "is not /Finland~Solita/fleet/<device id>/registration_agent",
        ),
        (
            json!({ "csr": csr(&key, &format!("{CN_PREFIX}0123abcd{CN_SUFFIX}"), false) })
                .to_string(),
            "application/json",
            "clientAuth",
        ),
        (
            json!({ "csr": good.replace("MII", "MIJ") }).to_string(),
            "application/json",
            "CSR",
        ),
    ];
    for (body, content_type, expected) in cases {
        let (status, answer) = provision(&fleet, &body, content_type);
        assert_eq!(status, 400, "{answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(expected), "{error} / {expected}");
    }
    assert!(fleet.issued().is_empty());
    let (status, answer) = provision(
        &fleet,
        &json!({ "csr": good }).to_string(),
        "application/json",
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["caCertificate"], fleet.root_ca_pem());
    assert_eq!(fleet.issued()[0].id, "0123abcd");
}

#[test]
fn a_fleet_manager_that_answers_once_refuses_a_second_registration() {
    if !super::nats_server_available() {
        return;
    }
    let fleet = TiiFleet::start(TiiOptions {
        answer_once: true,
        ..TiiOptions::default()
    });
    let device = provisioned_device(&fleet, "0ce");
    let chain = device.answer["certificate"].as_str().unwrap().to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let statuses: Vec<Value> = runtime.block_on(async {
        let (client, _errors) = connect(&fleet, tls_config(&fleet, Some((&device.key, &chain))))
            .await
            .unwrap();
        let mut results = client
            .subscribe(format!("device_results.{}.register", device.id))
            .await
            .unwrap();
        client.flush().await.unwrap();
        let mut statuses = Vec::new();
        for _ in 0..2 {
            let (headers, body) = registration(&fleet, &device);
            client
                .publish_with_headers(
                    format!("device_actions.{}.register", device.id),
                    headers,
                    body.into(),
                )
                .await
                .unwrap();
            let result = tokio::time::timeout(Duration::from_secs(5), results.next())
                .await
                .expect("a result")
                .unwrap();
            statuses.push(serde_json::from_slice(&result.payload).unwrap());
        }
        statuses
    });
    assert_eq!(statuses[0]["status"], "success", "{statuses:?}");
    assert_eq!(
        statuses[1],
        json!({"status": "failure", "error": "device already registered"})
    );
    let replies: Vec<FleetReply> = fleet.registrations().into_iter().map(|r| r.reply).collect();
    assert_eq!(
        replies,
        [FleetReply::success(), FleetReply::AlreadyRegistered]
    );
}
