//! Makes `seeds/` and `fixtures/` from the loopback doubles' real answers:
//! a device key, CSRs for it sent to each double over HTTP(S), and the
//! bodies the doubles send back, as they are. `scripts/fuzz seeds` runs it
//! (`LMP_FUZZ_WRITE_SEEDS=1 cargo test -p lmp-device-register-fuzz --test
//! seeds`; `=journal`: only the journals, which need no key); without the
//! variable it does nothing. Hand-made seeds (names
//! starting `hand-`) and regressions (`regression-`) are left alone.

use device_api::azure_dps::{AzureDps, DpsOptions};
use device_api::tii::{ProvisionReply, TiiFleet, TiiOptions, CN_PREFIX, CN_SUFFIX};
use device_api::{DeviceApi, Losant, LosantOptions, Options, Reply};
use lmp_device_register_fuzz::{DPS_ID, LMP_UUID, TII_ID};
use rcgen::PublicKeyData;
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn write(path: &str, contents: &[u8]) {
    let path = fuzz_dir().join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, contents).unwrap();
    eprintln!("wrote {} ({} bytes)", path.display(), contents.len());
}

/// A CSR as the agent makes it: CN, optional OU, critical keyUsage
/// digitalSignature and critical extendedKeyUsage clientAuth.
fn csr(key: &KeyPair, common_name: &str, ou: Option<&str>) -> String {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(ou) = ou {
        dn.push(DnType::OrganizationalUnitName, ou);
    }
    params.distinguished_name = dn;
    let mut ku = CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![3, 2, 7, 0x80]);
    ku.set_criticality(true);
    let client_auth = vec![
        0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02,
    ];
    let mut eku = CustomExtension::from_oid_content(&[2, 5, 29, 37], client_auth);
    eku.set_criticality(true);
    params.custom_extensions = vec![ku, eku];
    params.serialize_request(key).unwrap().pem().unwrap()
}

/// TLS for one request: the server's CA, and a client identity if any.
struct Tls<'a> {
    server_ca: &'a str,
    client: Option<(Vec<CertificateDer<'static>>, &'a KeyPair)>,
}

/// One HTTP/1.1 exchange (`Connection: close`): the status and the body.
fn exchange(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    tls: Option<Tls>,
) -> (u16, Vec<u8>) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let tcp = TcpStream::connect(authority).unwrap();
    let mut answer = Vec::new();
    if scheme == "https" {
        let tls = tls.expect("TLS settings for an https URL");
        let mut roots = rustls::RootCertStore::empty();
        for pem in pem_blocks(tls.server_ca) {
            roots.add(pem).unwrap();
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = match tls.client {
            Some((chain, key)) => {
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        stream.write_all(request.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        // The doubles close without close_notify now and then: keep what came.
        let _ = stream.read_to_end(&mut answer);
    } else {
        let mut tcp = tcp;
        tcp.write_all(request.as_bytes()).unwrap();
        tcp.write_all(body).unwrap();
        tcp.read_to_end(&mut answer).unwrap();
    }
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer")
        + 4;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    (status, answer[split..].to_vec())
}

fn pem_blocks(text: &str) -> Vec<CertificateDer<'static>> {
    lmp_device_register::fuzzing::pem_certificates(text).unwrap()
}

fn lmp(key: &KeyPair) {
    let api = DeviceApi::start(Options::default());
    let replies = [
        ("double-201", Reply::Sign),
        (
            "double-extra-file",
            Reply::ExtraFile {
                name: "extra.txt".into(),
                content: "x".into(),
            },
        ),
        ("double-expired", Reply::ExpiredCert),
        ("double-foreign-chain", Reply::ForeignChain),
        ("double-wrong-key", Reply::WrongKeyCert),
        ("double-bad-toml", Reply::BadToml),
        ("double-non-string", Reply::NonStringValue),
    ];
    for (index, (name, reply)) in replies.into_iter().enumerate() {
        api.push_replies([reply]);
        let uuid = if index == 0 {
            LMP_UUID.to_string()
        } else {
            format!("{LMP_UUID}-{index}")
        };
        let body = json!({
            "name": "fuzz-01",
            "uuid": uuid,
            "csr": csr(key, &uuid, Some("demo-factory")),
            "hardware-id": "intel-corei7-64",
            "sota-config-dir": "/var/sota",
            "use-ostree-server": true,
            "overrides": {"pacman": {"tags": "\"main\""}},
        });
        let (status, answer) = exchange(
            &api.url(),
            "POST",
            &[("OSF-TOKEN", "demo-token")],
            body.to_string().as_bytes(),
            None,
        );
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
        write(&format!("seeds/lmp_answer/{name}.json"), &answer);
    }
    // Its refusals, as server_message sees them.
    let body = json!({"uuid": LMP_UUID});
    let (status, answer) = exchange(
        &api.url(),
        "POST",
        &[("OSF-TOKEN", "demo-token")],
        body.to_string().as_bytes(),
        None,
    );
    assert_eq!(status, 400);
    write("seeds/server_message/double-400.txt", &answer);
}

fn losant() {
    let losant = Losant::start(LosantOptions::default());
    let token = losant.token();
    let body = json!({"token": token, "manufacturerId": "aa:bb:cc:dd:ee:ff"});
    let (status, answer) = exchange(
        &losant.url(),
        "POST",
        &[],
        body.to_string().as_bytes(),
        None,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    write("seeds/losant_credentials/double-200.json", &answer);
    // The same answer with the access secret marked for the secret check.
    let mut marked: Value = serde_json::from_slice(&answer).unwrap();
    let secret = marked["accessSecret"].as_str().unwrap().to_string();
    marked["accessSecret"] = Value::String(format!("$S{secret}"));
    write(
        "seeds/losant_credentials/double-200-marked.json",
        marked.to_string().as_bytes(),
    );
    let (status, refusal) = exchange(
        &losant.url(),
        "POST",
        &[],
        body.to_string().as_bytes(),
        None,
    );
    assert_eq!(status, 403);
    write("seeds/server_message/losant-403.json", &refusal);

    let mut raw = vec![0u8];
    raw.extend_from_slice(token.as_bytes());
    write("seeds/losant_jwt/double-token", &raw);
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = token.split('.').collect();
    let mut decoded = vec![1u8];
    decoded.extend(engine.decode(parts[0]).unwrap());
    decoded.push(0xff);
    let payload = String::from_utf8(engine.decode(parts[1]).unwrap()).unwrap();
    decoded.extend(
        payload
            .replacen("\"iss\":\"", "\"iss\":\"$S", 1)
            .into_bytes(),
    );
    decoded.push(0xff);
    decoded.extend(parts[2].as_bytes());
    write("seeds/losant_jwt/double-token-decoded", &decoded);
}

fn tii(key: &KeyPair) {
    let fleet = TiiFleet::start(TiiOptions {
        start_nats: false,
        ..Default::default()
    });
    let url = format!("{}/api/devices/provision", fleet.provisioning_url());
    let cn = format!("{CN_PREFIX}{TII_ID}{CN_SUFFIX}");
    let body = json!({"csr": csr(key, &cn, None)}).to_string();
    let replies = [
        ("double-200", ProvisionReply::Sign),
        ("double-snake-case", ProvisionReply::SnakeCase),
        ("double-host-port-url", ProvisionReply::HostPortUrl),
        ("double-foreign-chain", ProvisionReply::ForeignChain),
    ];
    for (name, reply) in replies {
        fleet.push_provision_replies([reply]);
        let (status, answer) = exchange(&url, "POST", &[], body.as_bytes(), None);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
        write(&format!("seeds/tii_provision/{name}.json"), &answer);
    }
    // The fleet manager's results, in the double's shapes.
    let payload = device_api::tii::secret_payload();
    let results = [
        (
            "double-success",
            json!({"status": "success", "payload": payload, "alias": "drone-7"}),
        ),
        (
            "double-success-marked",
            json!({"status": "success", "payload": {"token": "$S"}}),
        ),
        (
            "double-failure",
            json!({"status": "failure", "error": "unknown device type"}),
        ),
        (
            "double-already",
            json!({"status": "failure", "error": "device already registered"}),
        ),
    ];
    for (name, result) in results {
        write(
            &format!("seeds/tii_nats/{name}.json"),
            result.to_string().as_bytes(),
        );
    }
}

fn dps(key: &KeyPair) {
    let dps = AzureDps::start(DpsOptions {
        enable_at_factory: true,
        ..Default::default()
    });
    write(
        "fixtures/dps-factory-ca.pem",
        dps.device_root_pem().as_bytes(),
    );
    let server_ca = dps.server_ca_pem();
    let tls = || Tls {
        server_ca: &server_ca,
        client: None,
    };
    let body = json!({"registrationId": DPS_ID, "csr": csr(key, DPS_ID, None)}).to_string();
    let (status, answer) = exchange(&dps.enrol_url(), "POST", &[], body.as_bytes(), Some(tls()));
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
    write("seeds/dps_factory/double-201.json", &answer);
    let certificate: Value = serde_json::from_slice(&answer).unwrap();
    let chain = pem_blocks(certificate["certificate"].as_str().unwrap());

    let base = format!(
        "{}/{}/registrations/{DPS_ID}",
        dps.endpoint(),
        dps.id_scope()
    );
    let mutual = || Tls {
        server_ca: &server_ca,
        client: Some((chain.clone(), key)),
    };
    let register = json!({"registrationId": DPS_ID}).to_string();
    let (status, answer) = exchange(
        &format!("{base}/register?api-version=2021-10-01"),
        "PUT",
        &[],
        register.as_bytes(),
        Some(mutual()),
    );
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&answer));
    write("seeds/dps_status/double-202-assigning.json", &answer);
    let operation: Value = serde_json::from_slice(&answer).unwrap();
    let poll = format!(
        "{base}/operations/{}?api-version=2021-10-01",
        operation["operationId"].as_str().unwrap()
    );
    for round in 0..5 {
        let (status, answer) = exchange(&poll, "GET", &[], b"{}", Some(mutual()));
        let decided: Value = serde_json::from_slice(&answer).unwrap();
        if decided["status"] == "assigned" {
            write("seeds/dps_status/double-200-assigned.json", &answer);
            return;
        }
        assert_eq!(status, 202, "round {round}: {decided}");
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    panic!("the DPS double never assigned the device");
}

/// Journals as a registration writes them (identity with a marked key,
/// then the LmP double's answer as the LmP profile stores it), raw (the
/// room's zeros cut to a few) and as the target's checksummed records.
fn journals() {
    use lmp_device_register::fuzzing::{journal_round_trip, Journal, Secret, PENDING_FILE};
    let answer: Value = serde_json::from_slice(
        &std::fs::read(fuzz_dir().join("seeds/lmp_answer/double-201.json")).unwrap(),
    )
    .unwrap();
    let files: Vec<Value> = ["root.crt", "client.chained", "client.pem", "sota.toml"]
        .iter()
        .map(|name| json!({"name": name, "mode": 0o644, "contents": answer[name]}))
        .collect();
    let recorded = json!({
        "files": files,
        "obsolete": ["sql.db"],
        "token_certificate": null,
        "summary": format!("registered device {LMP_UUID} (fuzz-01)"),
        "report": {"uuid": LMP_UUID},
    });
    let key = "-----BEGIN PRIVATE KEY-----\n$SMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n-----END PRIVATE KEY-----\n";
    for (name, answer) in [("identity", None), ("answer", Some(recorded))] {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal {
            id: LMP_UUID.into(),
            // Raw journals keep their checksums: no $S in them.
            software_key: Some(Secret::new(key.replace("$S", ""))),
            answer: answer.clone(),
            skipped: 0,
        };
        journal_round_trip(dir.path(), &journal).unwrap();
        let mut bytes = std::fs::read(dir.path().join(PENDING_FILE)).unwrap();
        let end = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
        bytes.truncate(end + 16);
        let mut raw = vec![0u8];
        raw.extend(bytes);
        write(&format!("seeds/journal/agent-{name}"), &raw);
        let mut records = vec![1u8];
        records.extend(
            json!({"id": LMP_UUID, "software_key_pem": key})
                .to_string()
                .into_bytes(),
        );
        if let Some(answer) = answer {
            records.push(b'\n');
            records.extend(answer.to_string().into_bytes());
        }
        write(&format!("seeds/journal/agent-{name}-records"), &records);
    }
}

#[test]
fn seeds_from_the_doubles() {
    let Some(which) = std::env::var_os("LMP_FUZZ_WRITE_SEEDS") else {
        eprintln!("LMP_FUZZ_WRITE_SEEDS is not set: seeds/ left as it is");
        return;
    };
    // The journals need no key: they can be remade alone.
    if which == "journal" {
        return journals();
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = KeyPair::generate().unwrap();
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    write("fixtures/device-key.pub", key.der_bytes());
    let made = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    write("fixtures/clock", format!("{}\n", made.as_secs()).as_bytes());
    lmp(&key);
    losant();
    tii(&key);
    dps(&key);
    journals();
}
