//! Drives the double over real loopback sockets with a tiny HTTP/1.1 client.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair, PublicKeyData,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{DeviceApi, Options, Reply};

const UUID: &str = "8f0c3a52-2b6e-4d7e-9f63-0d4f3c1a9b21";

// ---- a tiny HTTP client -------------------------------------------------

#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        crate::listen::find_header(&self.headers, name)
    }
}

fn connect(api: &DeviceApi) -> io::Result<TcpStream> {
    let tcp = TcpStream::connect(api.addr())?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    Ok(tcp)
}

fn request(
    api: &DeviceApi,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Answer> {
    exchange(connect(api)?, method, path, headers, body)
}

pub(crate) fn exchange(
    mut stream: impl Read + Write,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Answer> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    read_answer(&mut stream, method == "HEAD")
}

/// Reads one response framed by Content-Length, so it does not depend on how
/// the server closes the connection.
fn read_answer(stream: &mut impl Read, head_request: bool) -> io::Result<Answer> {
    let mut buf = Vec::new();
    let mut chunk = [0; 16 * 1024];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().expect("content-length"));
    let length = if head_request { 0 } else { length };
    let mut body = buf[header_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Answer {
        status,
        headers,
        body,
    })
}

// ---- devices ------------------------------------------------------------

struct Csr {
    uuid: String,
    ou: String,
    production: bool,
    critical_eku: bool,
}

impl Csr {
    fn new(uuid: &str) -> Csr {
        Csr {
            uuid: uuid.into(),
            ou: "demo-factory".into(),
            production: false,
            critical_eku: true,
        }
    }

    /// The CSR the agent builds: P-256, CN=uuid, OU=factory, requested
    /// critical KU digitalSignature and critical EKU clientAuth.
    fn pem(&self, key: &KeyPair) -> String {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, self.uuid.as_str());
        dn.push(DnType::OrganizationalUnitName, self.ou.as_str());
        if self.production {
            dn.push(DnType::CustomDnType(vec![2, 5, 4, 15]), "production");
        }
        params.distinguished_name = dn;
        let mut ku = CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![3, 2, 7, 0x80]);
        ku.set_criticality(true);
        let eku_der = vec![
            0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02,
        ];
        let mut eku = CustomExtension::from_oid_content(&[2, 5, 29, 37], eku_der);
        eku.set_criticality(self.critical_eku);
        params.custom_extensions = vec![ku, eku];
        params.serialize_request(key).unwrap().pem().unwrap()
    }
}

fn body(uuid: &str, csr: &str) -> Value {
    json!({
        "name": "bench-01",
        "uuid": uuid,
        "csr": csr,
        "hardware-id": "intel-corei7-64",
        "sota-config-dir": "/var/sota",
        "use-ostree-server": true,
        "overrides": {
            "pacman": {"tags": "\"main\"", "compose_apps": "\"app1,app2\""},
            "storage": {"tls_pkey_path": ""},
        },
    })
}

fn register_with(api: &DeviceApi, headers: &[(&str, &str)], body: &Value) -> Answer {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    request(
        api,
        "POST",
        "/ota/devices/",
        &all,
        body.to_string().as_bytes(),
    )
    .unwrap()
}

fn register(api: &DeviceApi, body: &Value) -> Answer {
    register_with(api, &[("OSF-TOKEN", "demo-token")], body)
}

fn register_new_device(api: &DeviceApi) -> (KeyPair, Answer) {
    let key = KeyPair::generate().unwrap();
    let uuid = crate::pki::random_uuid();
    let answer = register(api, &body(&uuid, &Csr::new(&uuid).pem(&key)));
    (key, answer)
}

fn certs(pem: &str) -> Vec<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap().to_vec())
        .collect()
}

fn parse_cert(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der).unwrap().1
}

// ---- tests --------------------------------------------------------------

#[test]
fn signs_a_valid_csr() {
    let api = DeviceApi::start(Options::default());
    let key = KeyPair::generate().unwrap();
    let csr = Csr {
        production: true,
        ..Csr::new(UUID)
    };
    let answer = register(&api, &body(UUID, &csr.pem(&key)));
    assert_eq!(answer.status, 201, "{}", answer.text());
    assert_eq!(answer.header("content-type"), Some("application/json"));

    let files = answer.json();
    let files = files.as_object().unwrap();
    let mut names: Vec<_> = files.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["client.chained", "client.pem", "root.crt", "sota.toml"]
    );
    assert_eq!(files["root.crt"], api.root_ca_pem());

    // root → intermediate → leaf, and the leaf certifies the CSR's key.
    let root_der = &certs(&api.root_ca_pem())[0];
    let chained = certs(files["client.chained"].as_str().unwrap());
    assert_eq!(chained.len(), 2);
    assert_eq!(chained[0], certs(files["client.pem"].as_str().unwrap())[0]);
    let (root, inter, leaf) = (
        parse_cert(root_der),
        parse_cert(&chained[1]),
        parse_cert(&chained[0]),
    );
    assert_eq!(
        inter.subject().to_string(),
        "CN=Test Device Intermediate, OU=demo-factory"
    );
    inter.verify_signature(Some(root.public_key())).unwrap();
    leaf.verify_signature(Some(inter.public_key())).unwrap();
    assert_eq!(
        leaf.public_key().raw,
        key.subject_public_key_info().as_slice()
    );
    let cn: Vec<_> = leaf
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(cn, [UUID]);
    assert!(leaf.validity().is_valid());
    let ku = leaf.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.digital_signature());
    let eku = leaf.extended_key_usage().unwrap().unwrap();
    assert!(eku.critical && eku.value.client_auth);

    let toml: toml::Table = files["sota.toml"].as_str().unwrap().parse().unwrap();
    assert_eq!(toml["pacman"]["tags"].as_str(), Some("main"));
    assert_eq!(toml["pacman"]["compose_apps"].as_str(), Some("app1,app2"));
    assert!(toml["storage"].get("tls_pkey_path").is_none());
    assert_eq!(toml["storage"]["path"].as_str(), Some("/var/sota"));
    assert_eq!(
        toml["import"]["tls_clientcert_path"].as_str(),
        Some("/var/sota/client.pem")
    );

    let regs = api.registrations();
    assert_eq!(regs.len(), 1);
    let reg = &regs[0];
    assert_eq!(reg.uuid, UUID);
    assert_eq!(reg.name, "bench-01");
    assert_eq!(reg.factory, "demo-factory");
    assert!(reg.production);
    assert_eq!(reg.hardware_id, "intel-corei7-64");
    assert_eq!(reg.group, None);
    assert!(reg.use_ostree_server);
    assert_eq!(reg.overrides["pacman"]["tags"], "\"main\"");
    assert_eq!(reg.public_key_spki_der, key.subject_public_key_info());
    assert_eq!(reg.client_pem, files["client.pem"]);
    assert_eq!(&reg.response, &Value::Object(files.clone()));

    let seen = api.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/ota/devices/")
    );
    assert_eq!(seen[0].header("osf-token"), Some("demo-token"));
}

#[test]
fn wrong_factory_is_400() {
    let api = DeviceApi::start(Options::default());
    let key = KeyPair::generate().unwrap();
    let csr = Csr {
        ou: "other-factory".into(),
        ..Csr::new(UUID)
    };
    let answer = register(&api, &body(UUID, &csr.pem(&key)));
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.text(),
        "Invalid factory(other-factory) must be demo-factory"
    );
    assert!(api.registrations().is_empty());
}

#[test]
fn wrong_or_missing_token_is_401() {
    let api = DeviceApi::start(Options::default());
    let key = KeyPair::generate().unwrap();
    let req = body(UUID, &Csr::new(UUID).pem(&key));
    for headers in [
        &[("OSF-TOKEN", "wrong-token")][..],
        &[][..],
        // The bare token is not enough in Authorization.
        &[("Authorization", "demo-token")][..],
        &[("Authorization", "Bearer demo-token")][..],
    ] {
        let answer = register_with(&api, headers, &req);
        assert_eq!(answer.status, 401, "{headers:?}");
        assert_eq!(answer.text(), "invalid token");
    }
    assert!(api.registrations().is_empty());
}

#[test]
fn token_is_accepted_in_any_header_or_as_base64_bearer() {
    let api = DeviceApi::start(Options::default());
    let bearer = format!(
        "Bearer {}",
        base64::engine::general_purpose::STANDARD.encode("demo-token")
    );
    for header in [
        ("X-Custom-Token", "demo-token"),
        ("Authorization", bearer.as_str()),
    ] {
        let key = KeyPair::generate().unwrap();
        let uuid = crate::pki::random_uuid();
        let answer = register_with(&api, &[header], &body(&uuid, &Csr::new(&uuid).pem(&key)));
        assert_eq!(answer.status, 201, "{header:?}: {}", answer.text());
    }
}

#[test]
fn scripted_replies_are_consumed_in_order_then_the_default() {
    let api = DeviceApi::start(Options::default());
    api.push_replies([
        Reply::Status {
            code: 503,
            body: "maintenance".into(),
            content_type: "text/plain",
            retry_after: Some("7".into()),
        },
        Reply::Delay(
            Duration::from_millis(200),
            Box::new(Reply::Status {
                code: 429,
                body: r#"{"error":"slow down"}"#.into(),
                content_type: "application/json",
                retry_after: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
            }),
        ),
        Reply::Redirect("http://127.0.0.1:9/elsewhere".into()),
        Reply::Garbage,
    ]);
    assert_eq!(api.pending_replies(), 4);
    let key = KeyPair::generate().unwrap();
    let req = body(UUID, &Csr::new(UUID).pem(&key));

    let first = register(&api, &req);
    assert_eq!((first.status, first.text().as_str()), (503, "maintenance"));
    assert_eq!(first.header("retry-after"), Some("7"));

    let started = Instant::now();
    let second = register(&api, &req);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(second.status, 429);
    assert_eq!(second.header("content-type"), Some("application/json"));
    assert_eq!(
        second.header("retry-after"),
        Some("Wed, 21 Oct 2015 07:28:00 GMT")
    );

    let third = register(&api, &req);
    assert_eq!(third.status, 307);
    assert_eq!(
        third.header("location"),
        Some("http://127.0.0.1:9/elsewhere")
    );

    let fourth = register(&api, &req);
    assert_eq!(fourth.status, 201);
    assert!(serde_json::from_slice::<Value>(&fourth.body).is_err());
    assert!(api.registrations().is_empty());

    assert_eq!(api.pending_replies(), 0);
    let fifth = register(&api, &req);
    assert_eq!(fifth.status, 201, "{}", fifth.text());
    assert_eq!(api.registrations().len(), 1);

    let same_key_again = register(&api, &req);
    assert_eq!(same_key_again.status, 201, "{}", same_key_again.text());
    assert_eq!(api.registrations().len(), 1);

    let other_key = KeyPair::generate().unwrap();
    let again = register(&api, &body(UUID, &Csr::new(UUID).pem(&other_key)));
    assert_eq!(again.status, 409);
    assert_eq!(
        again.text(),
        format!("device with uuid {UUID} already exists")
    );
    assert_eq!(api.requests().len(), 7);
}

#[test]
fn default_reply_applies_when_the_queue_is_empty() {
    let api = DeviceApi::start(Options {
        default_reply: Reply::Status {
            code: 500,
            body: "boom".into(),
            content_type: "text/plain",
            retry_after: None,
        },
        ..Options::default()
    });
    api.push_replies([Reply::Sign]);
    assert_eq!(register_new_device(&api).1.status, 201);
    let answer = register_new_device(&api).1;
    assert_eq!((answer.status, answer.text().as_str()), (500, "boom"));
    assert_eq!(answer.header("retry-after"), None);
}

#[test]
fn hang_drops_the_connection_without_an_answer() {
    let api = DeviceApi::start(Options::default());
    api.push_replies([Reply::Hang(Duration::from_millis(300))]);
    let started = Instant::now();
    let err = register_new_device_raw(&api).unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
        ),
        "{err}"
    );
    assert_eq!(api.requests().len(), 1);
    // The next request gets the default.
    assert_eq!(register_new_device(&api).1.status, 201);
}

fn register_new_device_raw(api: &DeviceApi) -> io::Result<Answer> {
    let key = KeyPair::generate().unwrap();
    let body = body(UUID, &Csr::new(UUID).pem(&key)).to_string();
    let headers = [
        ("Content-Type", "application/json"),
        ("OSF-TOKEN", "demo-token"),
    ];
    request(api, "POST", "/ota/devices/", &headers, body.as_bytes())
}

#[test]
fn head_is_200_with_an_empty_body() {
    let api = DeviceApi::start(Options::default());
    let answer = request(&api, "HEAD", "/ota/devices/", &[], b"").unwrap();
    assert_eq!(answer.status, 200);
    let get = request(&api, "GET", "/ota/devices/", &[], b"").unwrap();
    assert_eq!(get.status, 405);
    let seen = api.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method, "HEAD");
}

#[test]
fn oauth_device_flow_issues_a_usable_token() {
    let api = DeviceApi::start(Options::default());
    assert!(api.oauth_base().ends_with("/oauth"));
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let post =
        |path: &str, body: String| request(&api, "POST", path, &form, body.as_bytes()).unwrap();

    let bad_scope = post(
        "/oauth/authorization/device/",
        format!("client_id={UUID}&scope=other:devices:create"),
    );
    assert_eq!(
        (bad_scope.status, bad_scope.json()["error"].clone()),
        (400, json!("invalid_scope"))
    );

    let auth = post(
        "/oauth/authorization/device/",
        format!("client_id={UUID}&scope=demo-factory%3Adevices%3Acreate"),
    );
    assert_eq!(auth.status, 200);
    let auth = auth.json();
    assert_eq!(auth["user_code"], "ABCD-1234");
    assert_eq!(
        (auth["expires_in"].as_u64(), auth["interval"].as_u64()),
        (Some(60), Some(1))
    );
    let device_code = auth["device_code"].as_str().unwrap();
    assert!(device_code.starts_with("dc-"));

    let poll = |code: &str| {
        post(
            "/oauth/token/",
            format!(
                "grant_type=urn:ietf:params:oauth:grant-type:device_code&device_code={code}\
                 &client_id={UUID}&scope=demo-factory:devices:create"
            ),
        )
    };
    for _ in 0..2 {
        let pending = poll(device_code);
        assert_eq!(pending.status, 400);
        assert_eq!(pending.json(), json!({"error": "authorization_pending"}));
    }
    let granted = poll(device_code);
    assert_eq!(granted.status, 200);
    let token = granted.json()["access_token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("at-"));
    assert_eq!(granted.json()["token_type"], "bearer");
    assert_eq!(poll(device_code).json(), json!({"error": "invalid_grant"}));
    assert_eq!(poll("dc-unknown").json(), json!({"error": "invalid_grant"}));

    // Bearer <access token>, and Bearer base64(access token) as the C++ tool sends it.
    let b64 = base64::engine::general_purpose::STANDARD.encode(&token);
    for bearer in [format!("Bearer {token}"), format!("Bearer {b64}")] {
        let key = KeyPair::generate().unwrap();
        let uuid = crate::pki::random_uuid();
        let answer = register_with(
            &api,
            &[("Authorization", bearer.as_str())],
            &body(&uuid, &Csr::new(&uuid).pem(&key)),
        );
        assert_eq!(answer.status, 201, "{bearer}: {}", answer.text());
    }
    let paths: Vec<_> = api.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths[1], "/oauth/authorization/device/");
    assert_eq!(paths[2], "/oauth/token/");
}

#[test]
fn malformed_registrations_are_400_naming_the_problem() {
    let api = DeviceApi::start(Options {
        reject_group: true,
        ..Options::default()
    });
    let key = KeyPair::generate().unwrap();
    let good = body(UUID, &Csr::new(UUID).pem(&key));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    let cases: Vec<(Value, &str)> = vec![
        (with(&|b| drop(b.as_object_mut().unwrap().remove("hardware-id"))), "missing field 'hardware-id'"),
        (with(&|b| b["name"] = json!(7)), "field 'name' must be a string"),
        (with(&|b| b["use-ostree-server"] = json!("true")), "field 'use-ostree-server' must be a JSON boolean"),
        (with(&|b| b["overrides"]["pacman"]["tags"] = json!("main")), "overrides: pacman.tags is not a TOML value: main"),
        (with(&|b| b["overrides"]["pacman"]["tags"] = json!(["main"])), "field 'overrides.pacman.tags' must be a string holding a TOML value"),
        (with(&|b| b["group"] = json!("lab")), "group not supported"),
        (with(&|b| b["csr"] = json!("not a csr")), "invalid CSR"),
        (with(&|b| b["uuid"] = json!("another-uuid")), "CSR common name (8f0c3a52-2b6e-4d7e-9f63-0d4f3c1a9b21) must be the device uuid another-uuid"),
        (
            with(&|b| b["csr"] = json!(Csr { critical_eku: false, ..Csr::new(UUID) }.pem(&key))),
            "CSR must request extendedKeyUsage clientAuth, marked critical",
        ),
        (json!([1, 2]), "body must be a JSON object"),
    ];
    for (req, expected) in cases {
        let answer = register(&api, &req);
        assert_eq!(answer.status, 400, "{expected}");
        assert!(
            answer.text().starts_with(expected),
            "{} != {expected}",
            answer.text()
        );
    }

    let headers = [("Content-Type", "text/plain"), ("OSF-TOKEN", "demo-token")];
    let answer = request(
        &api,
        "POST",
        "/ota/devices/",
        &headers,
        good.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (400, "Content-Type must be application/json")
    );

    // A tampered CSR: flip one bit of the signature.
    let pem = Csr::new(UUID).pem(&key);
    let mut der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .unwrap()
        .1
        .contents;
    *der.last_mut().unwrap() ^= 1;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let tampered =
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n");
    let answer = register(&api, &with(&|b| b["csr"] = json!(tampered)));
    assert_eq!(answer.status, 400);
    assert!(
        answer.text().starts_with("CSR signature does not verify"),
        "{}",
        answer.text()
    );

    assert!(api.registrations().is_empty());
}

#[test]
fn group_is_recorded_unless_rejected() {
    let api = DeviceApi::start(Options::default());
    let key = KeyPair::generate().unwrap();
    let mut req = body(UUID, &Csr::new(UUID).pem(&key));
    req["group"] = json!("lab");
    assert_eq!(register(&api, &req).status, 201);
    assert_eq!(api.registrations()[0].group.as_deref(), Some("lab"));
}

#[test]
fn tampered_201_replies() {
    let api = DeviceApi::start(Options::default());
    let root = api.root_ca_pem();
    let files_of = |reply: Reply| {
        api.push_replies([reply]);
        let (key, answer) = register_new_device(&api);
        assert_eq!(answer.status, 201, "{}", answer.text());
        (key, answer.body.len(), answer.json())
    };
    let leaf_of = |files: &Value| certs(files["client.pem"].as_str().unwrap()).remove(0);
    let inter = certs(&api.intermediate_ca_pem()).remove(0);
    let inter = parse_cert(&inter);

    let (key, _, files) = files_of(Reply::WrongKeyCert);
    let leaf = leaf_of(&files);
    let leaf = parse_cert(&leaf);
    assert_ne!(
        leaf.public_key().raw,
        key.subject_public_key_info().as_slice()
    );
    leaf.verify_signature(Some(inter.public_key())).unwrap();

    let (_, _, files) = files_of(Reply::ExpiredCert);
    let leaf = leaf_of(&files);
    let leaf = parse_cert(&leaf);
    assert!(!leaf.validity().is_valid());
    leaf.verify_signature(Some(inter.public_key())).unwrap();

    let (_, _, files) = files_of(Reply::ForeignChain);
    assert_eq!(files["root.crt"], root);
    let leaf = leaf_of(&files);
    let leaf = parse_cert(&leaf);
    assert!(leaf.verify_signature(Some(inter.public_key())).is_err());
    let chained = certs(files["client.chained"].as_str().unwrap());
    leaf.verify_signature(Some(parse_cert(&chained[1]).public_key()))
        .unwrap();

    let (_, _, files) = files_of(Reply::BadToml);
    assert!(files["sota.toml"]
        .as_str()
        .unwrap()
        .parse::<toml::Table>()
        .is_err());

    let (_, _, files) = files_of(Reply::NonStringValue);
    assert!(files["root.crt"].is_number());

    let (_, _, files) = files_of(Reply::ExtraFile {
        name: "../evil".into(),
        content: "x".into(),
    });
    assert_eq!(files["../evil"], "x");
    assert!(files["client.pem"].is_string());

    let (_, len, files) = files_of(Reply::Oversized(1 << 20));
    assert!(((1 << 20) - 200..=1 << 20).contains(&len), "{len}");
    files["sota.toml"]
        .as_str()
        .unwrap()
        .parse::<toml::Table>()
        .unwrap();

    // Every one of them created the device server-side.
    assert_eq!(api.registrations().len(), 7);
}

#[test]
fn https_with_the_server_ca() {
    let api = DeviceApi::start(Options {
        tls: true,
        ..Options::default()
    });
    assert!(api.url().starts_with("https://127.0.0.1:"));
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(api.server_ca_pem().as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let config = Arc::new(config);
    for host in ["127.0.0.1", "localhost"] {
        let name = ServerName::try_from(host.to_owned()).unwrap();
        let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
        let tls = rustls::StreamOwned::new(conn, connect(&api).unwrap());
        let answer = exchange(tls, "HEAD", "/ota/devices/", &[], b"").unwrap();
        assert_eq!(answer.status, 200, "{host}");
    }

    // The device root does not vouch for the server.
    let mut wrong = rustls::RootCertStore::empty();
    wrong
        .add(CertificateDer::from_pem_slice(api.root_ca_pem().as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(wrong)
    .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tls = rustls::StreamOwned::new(conn, connect(&api).unwrap());
    assert!(exchange(tls, "HEAD", "/ota/devices/", &[], b"").is_err());
}

#[test]
fn refuses_connections_until_it_listens() {
    let api = DeviceApi::start(Options {
        refuse_connections_for: Some(Duration::from_millis(500)),
        ..Options::default()
    });
    let err = TcpStream::connect(api.addr()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match request(&api, "HEAD", "/", &[], b"") {
            Ok(answer) => {
                assert_eq!(answer.status, 200);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("never started listening: {e}"),
        }
    }
}

#[test]
fn dropping_stops_the_server_even_mid_hang() {
    let api = DeviceApi::start(Options::default());
    api.push_replies([Reply::Hang(Duration::from_secs(600))]);
    let addr = api.addr();
    let mut hung = connect(&api).unwrap();
    let body = b"{}";
    let head = format!(
        "POST /ota/devices/ HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    hung.write_all(head.as_bytes()).unwrap();
    hung.write_all(body).unwrap();
    // Wait until the server has read the request and is hanging on it.
    while api.requests().is_empty() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    drop(api);
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut rest = Vec::new();
    let _ = hung.read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert_eq!(
        TcpStream::connect(addr).unwrap_err().kind(),
        io::ErrorKind::ConnectionRefused
    );
}

#[tokio::test]
async fn usable_from_async_tests() {
    let api = DeviceApi::start(Options::default());
    let answer = tokio::task::spawn_blocking({
        let addr = api.addr();
        move || {
            let tcp = TcpStream::connect(addr).unwrap();
            exchange(tcp, "HEAD", "/", &[], b"").unwrap().status
        }
    })
    .await
    .unwrap();
    assert_eq!(answer, 200);
    drop(api);
}

#[test]
fn sign_then_drop_creates_the_device_and_loses_the_answer() {
    let api = DeviceApi::start(Options {
        idempotent_retries: false,
        ..Options::default()
    });
    api.push_replies([Reply::SignThenDrop]);
    let key = KeyPair::generate().unwrap();
    let uuid = crate::pki::random_uuid();
    let device = body(&uuid, &Csr::new(&uuid).pem(&key));
    let headers = [
        ("Content-Type", "application/json"),
        ("OSF-TOKEN", "demo-token"),
    ];
    let lost = request(
        &api,
        "POST",
        "/ota/devices/",
        &headers,
        device.to_string().as_bytes(),
    );
    assert!(lost.is_err(), "{lost:?}");
    assert_eq!(api.registrations().len(), 1);
    assert_eq!(api.registrations()[0].uuid, uuid);
    // Without idempotent retries the same device asking again is refused.
    assert_eq!(register(&api, &device).status, 409);
}

#[test]
fn string_booleans_only_when_asked() {
    let key = KeyPair::generate().unwrap();
    let mut device = body(UUID, &Csr::new(UUID).pem(&key));
    device["use-ostree-server"] = json!("true");
    let strict = DeviceApi::start(Options::default());
    let refused = register(&strict, &device);
    assert_eq!(refused.status, 400);
    assert!(refused.text().contains("must be a JSON boolean"));
    let lenient = DeviceApi::start(Options {
        accept_string_booleans: true,
        ..Options::default()
    });
    assert_eq!(register(&lenient, &device).status, 201);
    assert!(lenient.registrations()[0].use_ostree_server);
    device["use-ostree-server"] = json!("yes");
    assert_eq!(register(&lenient, &device).status, 400);
}

#[test]
fn a_capped_server_serves_a_few_at_a_time_and_turns_the_rest_away() {
    let api = Arc::new(DeviceApi::start(Options {
        capacity: Some(crate::Capacity {
            concurrent: 2,
            service_time: Duration::from_millis(400),
            retry_after: "3".into(),
        }),
        ..Options::default()
    }));
    let started = Instant::now();
    let clients: Vec<_> = (0..5)
        .map(|_| {
            let api = api.clone();
            std::thread::spawn(move || {
                let answer = register_new_device(&api).1;
                (
                    answer.status,
                    answer.header("retry-after").map(str::to_owned),
                    Instant::now(),
                )
            })
        })
        .collect();
    let answers: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let served: Vec<_> = answers.iter().filter(|a| a.0 == 201).collect();
    let refused: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    assert_eq!((served.len(), refused.len()), (2, 3), "{answers:?}");
    assert!(refused.iter().all(|a| a.1.as_deref() == Some("3")));
    // Refusals are immediate, service takes its time.
    assert!(refused
        .iter()
        .all(|a| a.2 - started < Duration::from_millis(350)));
    assert!(served
        .iter()
        .all(|a| a.2 - started >= Duration::from_millis(400)));
    let load = api.load();
    assert_eq!(load.peak_in_service, 2);
    assert_eq!(load.refused_for_capacity, 3);
    // The refusals may be over before the last client connects.
    assert!((2..=5).contains(&load.peak_requests_in_flight), "{load:?}");
    assert_eq!(api.registrations().len(), 2);
    // Once the two are done, there is room again.
    assert_eq!(register_new_device(&api).1.status, 201);
}
