//! Keys in a TPM 2.0 through tpm2-pkcs11, against a software TPM (swtpm) on
//! loopback that the test starts itself: LmP and azure-dps register with
//! the key in the TPM, through the built binary, from a blank tpm2-pkcs11
//! store (the agent initialises the module's blank slot itself).

mod common;
mod hsm_support;

use cryptoki::object::{AttributeType, ObjectClass};
use hsm_support::{Fixture, Swtpm, TPM_MODULE};
use std::time::Instant;

const PIN: &str = "2580-tpm-user";
const SO_PIN: &str = "1470-tpm-officer";

/// A device whose `/etc/sota/hsm` names tpm2-pkcs11, with a swtpm of its
/// own; `None` (and a note) where swtpm is not installed.
fn tpm_device() -> Option<(Fixture, Swtpm)> {
    if !hsm_support::swtpm_available() {
        return None;
    }
    let mut fixture = Fixture::new();
    let tpm = Swtpm::start(fixture.dir.path());
    fixture.module_env = tpm.module_env();
    fixture.write_hsm_file(Some(TPM_MODULE), Some(PIN), Some(SO_PIN));
    Some((fixture, tpm))
}

/// The objects in the TPM token `label`, as the user sees them.
fn token_objects(fixture: &Fixture, label: &str) -> Vec<hsm_support::ObjectView> {
    let module = fixture.open_module(TPM_MODULE);
    let session = module.login_to(label, PIN);
    let objects = hsm_support::objects(&session);
    drop(session);
    objects
}

fn find(objects: &[hsm_support::ObjectView], class: ObjectClass) -> &hsm_support::ObjectView {
    objects
        .iter()
        .find(|o| o.class == class)
        .unwrap_or_else(|| panic!("a {class} object in {objects:?}"))
}

/// The token's public key is the certificate's, and the token holds the
/// certificate (`cert_id`) beside its key pair (CKA_ID 01).
fn assert_certificate_of_the_tpm_key(
    objects: &[hsm_support::ObjectView],
    leaf_der: &[u8],
    cert_id: u8,
) {
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der).unwrap();
    let public = find(objects, ObjectClass::PUBLIC_KEY);
    assert_eq!(
        hsm_support::ec_point(&public.bytes(AttributeType::EcPoint).unwrap()),
        leaf.public_key().subject_public_key.data.as_ref()
    );
    assert_eq!(find(objects, ObjectClass::PRIVATE_KEY).id, [1]);
    let certificate = find(objects, ObjectClass::CERTIFICATE);
    assert_eq!(certificate.id, [cert_id]);
    assert_eq!(certificate.bytes(AttributeType::Value).unwrap(), leaf_der);
}

#[test]
fn lmp_registers_with_the_key_in_the_tpm_and_warns_that_fioconfig_cannot_derive() {
    let Some((fixture, _tpm)) = tpm_device() else {
        return;
    };
    let started = Instant::now();
    let run = fixture.run(&[]);
    eprintln!("LmP registration with the TPM key: {:?}", started.elapsed());
    run.assert_code(0)
        .assert_says("initialised token aktualizr")
        .assert_says("cannot derive (CKM_ECDH1_DERIVE)")
        .assert_says("fioconfig");
    assert_eq!(
        fixture.sota_files(),
        ["client.chained", "client.pem", "root.crt", "sota.toml"],
        "the key is in the TPM, not in a file"
    );
    let sota_toml: toml::Table = std::fs::read_to_string(fixture.sota_dir().join("sota.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(sota_toml["p11"]["module"].as_str(), Some(TPM_MODULE));
    assert_eq!(sota_toml["p11"]["label"].as_str(), Some("aktualizr"));

    let client = std::fs::read_to_string(fixture.sota_dir().join("client.pem")).unwrap();
    let leaf = hsm_support::pem_certs(&client).remove(0);
    let objects = token_objects(&fixture, "aktualizr");
    assert_eq!(objects.len(), 3, "{objects:?}");
    assert_certificate_of_the_tpm_key(&objects, &leaf, 3);

    // The key signs inside the TPM, and the server's certificate is for it.
    let module = fixture.open_module(TPM_MODULE);
    let session = module.login(PIN);
    let key = hsm_support::tls_private_key(&session);
    let signature = hsm_support::sign_with_token(&session, key, b"tpm says hello");
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        cert.public_key().subject_public_key.data.as_ref(),
    )
    .verify(b"tpm says hello", &signature)
    .expect("the TPM key's signature verifies with the certificate");
}

#[cfg(feature = "azure-dps")]
#[test]
fn azure_dps_registers_over_mutual_tls_with_the_key_in_the_tpm() {
    use device_api::azure_dps::{AzureDps, DpsOptions};
    let Some((fixture, _tpm)) = tpm_device() else {
        return;
    };
    let dps = AzureDps::start(DpsOptions {
        enable_at_factory: true,
        // Polling has tests of its own; here it would only add waits.
        polls_before_assigned: 0,
        ..DpsOptions::default()
    });
    fixture.configure_azure_dps(&dps);

    let started = Instant::now();
    let run = fixture.run_bare(&["--boot"]);
    eprintln!(
        "azure-dps registration with the TPM key: {:?}",
        started.elapsed()
    );
    run.assert_code(0);
    assert!(
        !run.stderr.contains("CKM_ECDH1_DERIVE"),
        "no consumer of azure-dps needs ECDH:\n{run:?}"
    );
    let state = fixture.root.join("var/lib/azure-dps");
    assert_eq!(
        common::listing(&state),
        ["assignment.json 644", "device.crt 644"]
    );
    let assignment: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("assignment.json")).unwrap())
            .unwrap();
    assert_eq!(assignment["pkcs11"]["module"], TPM_MODULE);
    assert_eq!(assignment["pkcs11"]["tokenLabel"], "azure-dps");

    // DPS accepted the handshake signed in the TPM.
    let chain = std::fs::read_to_string(state.join("device.crt")).unwrap();
    let leaf = hsm_support::pem_certs(&chain).remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    assert_eq!(
        dps.assignments()[0].spki_der,
        cert.tbs_certificate.subject_pki.raw
    );
    let objects = token_objects(&fixture, "azure-dps");
    assert_certificate_of_the_tpm_key(&objects, &leaf, 2);
}
