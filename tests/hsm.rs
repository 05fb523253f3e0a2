//! Registration with the key in a PKCS#11 token, against SoftHSM2 and the
//! loopback registration API, through the built binary.

mod common;
mod hsm_support;

use cryptoki::object::{AttributeType, ObjectClass};
use device_api::{Options, Reply};
use hsm_support::*;
use std::os::unix::fs::PermissionsExt;
use x509_parser::prelude::*;

const PIN: &str = "4711-user";
const SO_PIN: &str = "0815-officer";

macro_rules! require_softhsm {
    () => {
        if !softhsm_available() {
            return;
        }
    };
}

fn registered_fixture(pin: &str) -> Fixture {
    let mut fixture = Fixture::new();
    fixture.write_hsm_file(Some(MODULE), Some(pin), Some(SO_PIN));
    let run = fixture.run(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    fixture
}

fn sota_toml(fixture: &Fixture) -> toml::Table {
    std::fs::read_to_string(fixture.sota_dir().join("sota.toml"))
        .unwrap()
        .parse()
        .expect("sota.toml is valid TOML")
}

fn read(fixture: &Fixture, name: &str) -> String {
    std::fs::read_to_string(fixture.sota_dir().join(name)).unwrap()
}

/// The registration files, with the token objects only found in the token.
const REGISTRATION_FILES: [&str; 4] = ["client.chained", "client.pem", "root.crt", "sota.toml"];

#[test]
fn first_registration_initialises_the_token_and_keeps_key_and_certificate_in_it() {
    require_softhsm!();
    let fixture = registered_fixture(PIN);

    assert_eq!(fixture.sota_files(), REGISTRATION_FILES, "no pkey.pem");
    let mode = std::fs::metadata(fixture.sota_dir().join("sota.toml"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "sota.toml holds the PIN");

    let config = sota_toml(&fixture);
    let p11 = config["p11"].as_table().expect("[p11] section");
    let expected = [
        ("module", MODULE),
        ("pass", PIN),
        ("tls_pkey_id", "01"),
        ("tls_clientcert_id", "03"),
        ("label", "aktualizr"),
    ];
    for (key, value) in expected {
        assert_eq!(p11[key].as_str(), Some(value), "p11.{key}");
    }
    assert_eq!(p11.len(), expected.len());
    // The server applied the HSM overrides.
    assert_eq!(config["tls"]["pkey_source"].as_str(), Some("pkcs11"));
    assert_eq!(config["tls"]["cert_source"].as_str(), Some("pkcs11"));
    for section in ["storage", "import"] {
        let table = config[section].as_table().unwrap();
        assert!(
            !table.contains_key("tls_pkey_path"),
            "{section}.tls_pkey_path"
        );
        assert!(
            !table.contains_key("tls_clientcert_path"),
            "{section}.tls_clientcert_path"
        );
    }
    let registrations = fixture.api.registrations();
    assert_eq!(registrations.len(), 1);
    assert_eq!(
        registrations[0].overrides["tls"]["pkey_source"].as_str(),
        Some("\"pkcs11\"")
    );

    let client_pem = read(&fixture, "client.pem");
    let client_der = pem_certs(&client_pem).remove(0);
    let (_, client) = X509Certificate::from_der(&client_der).unwrap();

    let hsm = fixture.open_softhsm();
    assert_eq!(hsm.token_labels(), ["aktualizr"]);
    let session = hsm.login(PIN);
    let objects = objects(&session);
    let summary: Vec<(String, ObjectClass, Vec<u8>)> = objects
        .iter()
        .map(|o| (o.label.clone(), o.class, o.id.clone()))
        .collect();
    let mut expected = vec![
        ("client".to_string(), ObjectClass::CERTIFICATE, vec![0x03]),
        ("tls".to_string(), ObjectClass::PRIVATE_KEY, vec![0x01]),
        ("tls".to_string(), ObjectClass::PUBLIC_KEY, vec![0x01]),
    ];
    expected.sort_by_key(|(label, class, _)| (label.clone(), class.to_string()));
    assert_eq!(summary, expected);

    let find = |class| objects.iter().find(|o| o.class == class).unwrap();
    let private = find(ObjectClass::PRIVATE_KEY);
    for (attribute, value) in [
        (AttributeType::Token, true),
        (AttributeType::Private, true),
        (AttributeType::Sensitive, true),
        (AttributeType::Extractable, false),
        (AttributeType::Sign, true),
        (AttributeType::Derive, true),
    ] {
        assert_eq!(
            private.bool(attribute),
            Some(value),
            "private key {attribute:?}"
        );
    }
    let public = find(ObjectClass::PUBLIC_KEY);
    for (attribute, value) in [
        (AttributeType::Token, true),
        (AttributeType::Verify, true),
        (AttributeType::Derive, true),
    ] {
        assert_eq!(
            public.bool(attribute),
            Some(value),
            "public key {attribute:?}"
        );
    }
    let point = ec_point(&public.bytes(AttributeType::EcPoint).unwrap());
    assert_eq!(point.len(), 65);
    assert_eq!(
        client.public_key().subject_public_key.data.as_ref(),
        point.as_slice(),
        "client.pem certifies the token key"
    );

    let cert = find(ObjectClass::CERTIFICATE);
    assert_eq!(cert.bool(AttributeType::Token), Some(true));
    assert_eq!(cert.bytes(AttributeType::Value).unwrap(), client_der);
    assert_eq!(
        cert.bytes(AttributeType::Subject).unwrap(),
        client.subject().as_raw()
    );
    assert_eq!(
        cert.bytes(AttributeType::Issuer).unwrap(),
        client.issuer().as_raw()
    );
    let serial = cert.bytes(AttributeType::SerialNumber).unwrap();
    let (serial_bytes, positive) = yasna::parse_der(&serial, |r| r.read_bigint_bytes()).unwrap();
    assert!(positive);
    assert_eq!(
        serial_bytes,
        client.tbs_certificate.serial.to_bytes_be(),
        "CKA_SERIAL_NUMBER is the DER INTEGER of the serial"
    );
}

#[test]
fn csr_signed_in_the_token_passes_openssl_verification() {
    require_softhsm!();
    let fixture = registered_fixture(PIN);
    let csr = fixture
        .api
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .find_map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            body["csr"].as_str().map(str::to_string)
        })
        .expect("the registration request carried a CSR");
    let Ok(version) = std::process::Command::new("openssl")
        .arg("version")
        .output()
    else {
        eprintln!("openssl is not installed: skipping the openssl check");
        return;
    };
    assert!(version.status.success());
    let path = fixture.dir.path().join("device.csr");
    std::fs::write(&path, &csr).unwrap();
    let output = std::process::Command::new("openssl")
        .args(["req", "-noout", "-verify", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && text.contains("verify OK"),
        "{text}"
    );
}

#[test]
fn token_key_and_returned_chain_complete_a_mutual_tls_handshake() {
    require_softhsm!();
    let mut fixture = Fixture::new();
    // The flags instead of /etc/sota/hsm: the PINs must not leak from there either.
    fixture
        .secrets
        .extend([PIN.to_string(), SO_PIN.to_string()]);
    let run = fixture.run(&["-m", MODULE, "-P", PIN, "-S", SO_PIN]);
    assert_eq!(run.code, 0, "{run:?}");

    let chain: Vec<_> = pem_certs(&read(&fixture, "client.chained"))
        .into_iter()
        .map(rustls::pki_types::CertificateDer::from)
        .collect();
    assert!(chain.len() >= 2, "leaf and issuing CA");
    let client_der = pem_certs(&read(&fixture, "client.pem")).remove(0);
    let hsm = fixture.open_softhsm();
    let session = hsm.login(PIN);
    let key = tls_private_key(&session);
    let peer = mutual_tls::handshake(&fixture.api.root_ca_pem(), chain, session, key);
    assert_eq!(
        peer, client_der,
        "the server saw the registered certificate"
    );
}

#[test]
fn partial_hsm_file_is_a_configuration_error_and_touches_nothing() {
    require_softhsm!();
    let mut fixture = Fixture::new();
    fixture.write_hsm_file(Some(MODULE), Some(PIN), None);
    let run = fixture.run(&[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("HSM_SOPIN"), "{run:?}");
    assert!(
        !run.stderr.contains("HSM_PIN,"),
        "only the missing key is named: {run:?}"
    );
    assert!(fixture.sota_files().is_empty());
    assert!(fixture.api.registrations().is_empty());
    let hsm = fixture.open_softhsm();
    assert!(hsm.token_labels().is_empty(), "no token was initialised");
}

#[test]
fn wrong_user_pin_is_reported_without_retrying_or_showing_it() {
    require_softhsm!();
    let mut fixture = Fixture::new();
    fixture.softhsm_util(&[
        "--init-token",
        "--free",
        "--label",
        "aktualizr",
        "--so-pin",
        SO_PIN,
        "--pin",
        PIN,
    ]);
    fixture.secrets.push(PIN.to_string());
    fixture.write_hsm_file(Some(MODULE), Some("9999-wrong"), Some(SO_PIN));
    let run = fixture.run(&[]);
    assert_eq!(run.code, 7, "{run:?}");
    assert!(run.stderr.contains("user PIN is wrong"), "{run:?}");
    assert!(fixture.sota_files().is_empty());
    assert!(fixture.api.registrations().is_empty());

    // One failed login does not lock the token; the right PIN still works
    // and nothing was created.
    let hsm = fixture.open_softhsm();
    let info = hsm
        .ctx()
        .get_token_info(hsm.slot("aktualizr").unwrap())
        .unwrap();
    assert!(!info.user_pin_locked());
    let session = hsm.login(PIN);
    assert!(objects(&session).is_empty());
}

#[test]
fn pin_of_the_wrong_length_is_a_configuration_error() {
    require_softhsm!();
    let mut fixture = Fixture::new();
    fixture.write_hsm_file(Some(MODULE), Some("q7~"), Some(SO_PIN));
    let run = fixture.run(&[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("4 to 128 bytes"), "{run:?}");
    let hsm = fixture.open_softhsm();
    assert!(hsm.token_labels().is_empty());
}

#[test]
fn missing_module_is_a_configuration_error_and_creates_nothing() {
    require_softhsm!();
    let mut fixture = Fixture::new();
    let module = fixture.dir.path().join("no/such/libckteec.so.0");
    fixture.write_hsm_file(Some(module.to_str().unwrap()), Some(PIN), Some(SO_PIN));
    let run = fixture.run(&[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains(module.to_str().unwrap()), "{run:?}");
    assert!(!fixture.sota_dir().exists(), "nothing created");
    assert!(fixture.api.requests().is_empty());
}

#[test]
fn a_file_that_is_not_a_pkcs11_module_is_refused() {
    require_softhsm!();
    let mut fixture = Fixture::new();
    let text = fixture.dir.path().join("libnot-a-module.so");
    std::fs::write(&text, "this is not a shared library\n").unwrap();
    fixture.write_hsm_file(Some(text.to_str().unwrap()), Some(PIN), Some(SO_PIN));
    let run = fixture.run(&[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("cannot load the PKCS#11 module"),
        "{run:?}"
    );
    assert!(!fixture.sota_dir().exists(), "nothing created");

    // A real shared library that is not a PKCS#11 module.
    let arch = std::env::consts::ARCH;
    let Some(library) = [
        format!("/lib/{arch}-linux-gnu/libm.so.6"),
        format!("/usr/lib/{arch}-linux-gnu/libm.so.6"),
        "/lib64/libm.so.6".to_string(),
        "/usr/lib64/libm.so.6".to_string(),
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists()) else {
        eprintln!("no libm.so.6 found: skipping the shared-library case");
        return;
    };
    fixture.write_hsm_file(Some(&library), Some(PIN), Some(SO_PIN));
    let run = fixture.run(&[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("is not a PKCS#11 module"), "{run:?}");
    assert!(!fixture.sota_dir().exists(), "nothing created");
}

#[test]
fn objects_of_an_earlier_registration_need_force() {
    require_softhsm!();
    let fixture = registered_fixture(PIN);
    let before = {
        let hsm = fixture.open_softhsm();
        objects(&hsm.login(PIN))
    };
    assert_eq!(before.len(), 3);

    // Registered: refused before the token is even opened.
    let run = fixture.run(&[]);
    assert_eq!(run.code, 3, "{run:?}");

    // A factory reset wipes /var/sota but not the token.
    for name in REGISTRATION_FILES {
        std::fs::remove_file(fixture.sota_dir().join(name)).unwrap();
    }
    let run = fixture.run(&[]);
    assert_eq!(run.code, 7, "{run:?}");
    assert!(run.stderr.contains("--force"), "{run:?}");
    assert!(run.stderr.contains("`tls` key"), "{run:?}");
    assert!(fixture.sota_files().is_empty());
    {
        let hsm = fixture.open_softhsm();
        assert_eq!(objects(&hsm.login(PIN)), before, "token untouched");
    }
    assert_eq!(fixture.api.registrations().len(), 1);

    let run = fixture.run(&["--force"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(fixture.sota_files(), REGISTRATION_FILES);
    let after = {
        let hsm = fixture.open_softhsm();
        objects(&hsm.login(PIN))
    };
    assert_eq!(
        after.len(),
        3,
        "one key pair and one certificate: {after:?}"
    );
    let point = |objects: &[ObjectView]| {
        objects
            .iter()
            .find(|o| o.class == ObjectClass::PUBLIC_KEY)
            .and_then(|o| o.bytes(AttributeType::EcPoint))
            .unwrap()
    };
    assert_ne!(point(&before), point(&after), "a new key");
    let cert = after
        .iter()
        .find(|o| o.class == ObjectClass::CERTIFICATE)
        .unwrap();
    assert_eq!(
        cert.bytes(AttributeType::Value).unwrap(),
        pem_certs(&read(&fixture, "client.pem")).remove(0)
    );
    assert_eq!(fixture.api.registrations().len(), 2);
}

fn assert_failure_leaves_token_and_sota_dir_clean(reply: Reply, expected_code: i32) {
    let mut fixture = Fixture::with_options(Options {
        default_reply: reply,
        ..Options::default()
    });
    fixture.write_hsm_file(Some(MODULE), Some(PIN), Some(SO_PIN));
    let run = fixture.run(&[]);
    assert_eq!(run.code, expected_code, "{run:?}");
    assert!(
        fixture.api.requests().iter().any(|r| r.method == "POST"),
        "the key was generated and the CSR sent"
    );
    assert!(
        fixture.sota_files().is_empty(),
        "{:?}",
        fixture.sota_files()
    );
    let hsm = fixture.open_softhsm();
    assert_eq!(hsm.token_labels(), ["aktualizr"]);
    assert!(
        objects(&hsm.login(PIN)).is_empty(),
        "the run's objects were removed"
    );
    assert!(
        run.stderr.contains("removed the abandoned private key"),
        "{run:?}"
    );
}

#[test]
fn server_error_after_key_generation_removes_the_new_key() {
    require_softhsm!();
    assert_failure_leaves_token_and_sota_dir_clean(
        Reply::Status {
            code: 500,
            body: "internal error".into(),
            content_type: "text/plain",
            retry_after: Some("0".into()),
        },
        5,
    );
}

#[test]
fn untrustworthy_answer_after_key_generation_removes_the_new_key() {
    require_softhsm!();
    assert_failure_leaves_token_and_sota_dir_clean(Reply::WrongKeyCert, 6);
}

#[test]
fn a_pin_aktualizr_lite_would_misread_is_refused_before_any_key_is_made() {
    require_softhsm!();
    for pin in [r#"q"uo1234"#, r"back\slash", "it's1234", "with space"] {
        let mut fixture = Fixture::new();
        let run = if pin.contains('\'') {
            // Not writable in the fixture's single quotes: on the command line.
            fixture.run(&["-m", MODULE, "-P", pin, "-S", SO_PIN])
        } else {
            fixture.write_hsm_file(Some(MODULE), Some(pin), Some(SO_PIN));
            fixture.run(&[])
        };
        run.assert_code(2)
            .assert_says("printable ASCII without spaces, quotes");
        assert!(!run.output().contains(pin), "{run:?}");
        assert!(fixture.sota_files().is_empty(), "{run:?}");
        assert!(
            fixture.open_softhsm().token_labels().is_empty(),
            "no token was initialised: {run:?}"
        );
    }
}

/// A TLS client whose private key never leaves the token.
mod mutual_tls {
    use super::hsm_support::sign_with_token;
    use cryptoki::object::ObjectHandle;
    use cryptoki::session::Session;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::sign::{CertifiedKey, Signer, SigningKey};
    use rustls::{SignatureAlgorithm, SignatureScheme};
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Debug)]
    struct TokenKey {
        session: Arc<Mutex<Session>>,
        key: ObjectHandle,
    }

    impl SigningKey for TokenKey {
        fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
            offered
                .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
                .then(|| {
                    Box::new(TokenSigner {
                        session: self.session.clone(),
                        key: self.key,
                    }) as Box<dyn Signer>
                })
        }

        fn algorithm(&self) -> SignatureAlgorithm {
            SignatureAlgorithm::ECDSA
        }
    }

    #[derive(Debug)]
    struct TokenSigner {
        session: Arc<Mutex<Session>>,
        key: ObjectHandle,
    }

    impl Signer for TokenSigner {
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
            let session = self.session.lock().unwrap();
            Ok(sign_with_token(&session, self.key, message))
        }

        fn scheme(&self) -> SignatureScheme {
            SignatureScheme::ECDSA_NISTP256_SHA256
        }
    }

    #[derive(Debug)]
    struct OneClientCert(Arc<CertifiedKey>);

    impl rustls::client::ResolvesClientCert for OneClientCert {
        fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }

        fn has_certs(&self) -> bool {
            true
        }
    }

    /// Runs a loopback server that demands a client certificate from
    /// `client_root_pem`, connects to it with `chain` and the token key,
    /// exchanges a few bytes, and returns the leaf the server saw.
    pub fn handshake(
        client_root_pem: &str,
        chain: Vec<CertificateDer<'static>>,
        session: Session,
        key: ObjectHandle,
    ) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());

        let mut client_roots = rustls::RootCertStore::empty();
        for der in super::hsm_support::pem_certs(client_root_pem) {
            client_roots.add(CertificateDer::from(der)).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(client_roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let server_cert =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![server_cert.cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                    server_cert.signing_key.serialize_der(),
                )),
            )
            .unwrap();

        let mut server_roots = rustls::RootCertStore::empty();
        server_roots.add(server_cert.cert.der().clone()).unwrap();
        let signing_key = Arc::new(TokenKey {
            session: Arc::new(Mutex::new(session)),
            key,
        });
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(server_roots)
            .with_client_cert_resolver(Arc::new(OneClientCert(Arc::new(CertifiedKey::new(
                chain,
                signing_key,
            )))));

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
            let server = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut tls = acceptor
                    .accept(tcp)
                    .await
                    .expect("server side of the handshake");
                let mut hello = [0u8; 4];
                tls.read_exact(&mut hello).await.unwrap();
                assert_eq!(&hello, b"ping");
                tls.write_all(b"pong").await.unwrap();
                tls.flush().await.unwrap();
                let peer = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
                tls.shutdown().await.unwrap();
                peer
            });
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut tls = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .expect("client side of the handshake");
            tls.write_all(b"ping").await.unwrap();
            let mut answer = [0u8; 4];
            tls.read_exact(&mut answer).await.unwrap();
            assert_eq!(&answer, b"pong");
            server.await.unwrap()
        })
    }
}

/// The secret-leak check of a full HSM run: PINs and token appear in no
/// output (the fixture checks every run's output for the PINs too) and in
/// no file that others can read; only the 0600 sota.toml holds the user PIN.
#[test]
fn a_full_hsm_run_leaks_no_pin_and_no_token() {
    require_softhsm!();
    let mut fixture = Fixture::new();
    fixture.write_hsm_file(Some(MODULE), Some(PIN), Some(SO_PIN));
    let run = fixture.run(&["--json", "--start-daemon", "1"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!run.output().contains(API_TOKEN), "{run:?}");

    let mut readable = Vec::new();
    let mut stack = vec![fixture.root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = path.symlink_metadata().unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() && meta.permissions().mode() & 0o044 != 0 {
                readable.push(path);
            }
        }
    }
    assert!(!readable.is_empty(), "the certificates are public");
    for path in readable {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for secret in [PIN, SO_PIN, API_TOKEN] {
            assert!(!text.contains(secret), "{} holds a secret", path.display());
        }
    }
    let sota_toml = fixture.sota_dir().join("sota.toml");
    assert_eq!(
        sota_toml.metadata().unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(sota_toml).unwrap().contains(PIN));
}
