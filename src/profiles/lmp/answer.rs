//! Validation of the registration answer before anything is written: the
//! server is trusted to sign our key, not to choose paths on the device or to
//! hand us a certificate for someone else's key.

use crate::error::{Error, ErrorKind, Result};
use crate::x509;
use rustls::pki_types::CertificateDer;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;
use x509_parser::time::ASN1Time;

pub const CLIENT_CERT: &str = "client.pem";
pub const CLIENT_CHAIN: &str = "client.chained";
pub const ROOT_CERT: &str = "root.crt";
pub const SOTA_TOML: &str = "sota.toml";

/// The only names written into the sota dir, in the order they are
/// committed: `sota.toml` last, because its appearance starts fioconfig and
/// aktualizr-lite.
pub const ALLOWED_FILES: [&str; 4] = [ROOT_CERT, CLIENT_CHAIN, CLIENT_CERT, SOTA_TOML];
const MAX_VALUE_BYTES: usize = 256 * 1024;
const MAX_ENTRIES: usize = 32;

/// A validated answer: allow-listed names, parsed and verified contents.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub files: BTreeMap<&'static str, String>,
    /// Entries with a harmless but unknown name, reported and not written.
    pub ignored: Vec<String>,
    pub sota_toml: toml::Table,
}

/// Whether `name` could even be a plain file name in the sota dir; unsafe
/// names make the whole answer suspect.
fn is_safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

struct StrictStringMap(Vec<(String, String)>);

impl<'de> Deserialize<'de> for StrictStringMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = StrictStringMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object mapping file names to strings")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut entries: Vec<(String, String)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
                    }
                    if entries.len() == MAX_ENTRIES {
                        return Err(serde::de::Error::custom("too many entries"));
                    }
                    let value = map.next_value::<String>().map_err(|_| {
                        serde::de::Error::custom(format!("the value of {key:?} is not a string"))
                    })?;
                    entries.push((key, value));
                }
                Ok(StrictStringMap(entries))
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

fn bad(message: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::BadResponse,
        format!("the server's answer was refused: {message}"),
    )
}

fn certificates(text: &str, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    x509::require_certificates(text).map_err(|e| bad(format!("{what} {e}")))
}

/// When to check certificate validity.
#[derive(Debug, Clone, Copy)]
pub struct ValidityCheck {
    pub now: ASN1Time,
}

impl ValidityCheck {
    pub fn at_system_time() -> Self {
        ValidityCheck {
            now: ASN1Time::now(),
        }
    }
}

/// Checks the 201 body: shape, names, that `client.pem` certifies
/// `our_public_key` (raw EC point), that the chain verifies to `root.crt`,
/// and that `sota.toml` parses.
pub fn validate(body: &[u8], our_public_key: &[u8], clock: ValidityCheck) -> Result<Bundle> {
    let text = std::str::from_utf8(body).map_err(|_| bad("it is not valid UTF-8"))?;
    let StrictStringMap(entries) =
        serde_json::from_str(text).map_err(|e| bad(format!("it is not the expected JSON: {e}")))?;

    let mut files = BTreeMap::new();
    let mut ignored = Vec::new();
    for (name, value) in entries {
        if !is_safe_file_name(&name) {
            return Err(bad(format!(
                "it names a file {:?} that is not a plain file name",
                name.escape_debug().to_string()
            )));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(bad(format!(
                "{name} is larger than {MAX_VALUE_BYTES} bytes"
            )));
        }
        match ALLOWED_FILES.iter().find(|allowed| **allowed == name) {
            Some(allowed) => {
                files.insert(*allowed, value);
            }
            None => ignored.push(name),
        }
    }
    for required in [CLIENT_CERT, SOTA_TOML] {
        if !files.contains_key(required) {
            return Err(bad(format!("it has no {required}")));
        }
    }

    let client = certificates(&files[CLIENT_CERT], CLIENT_CERT)?;
    if client.len() != 1 {
        return Err(bad(format!(
            "{CLIENT_CERT} holds {} certificates, expected exactly one",
            client.len()
        )));
    }
    if !x509::certifies_key(&client[0], our_public_key) {
        return Err(bad(format!(
            "{CLIENT_CERT} certifies a different key than this device's ({})",
            x509::subject(&client[0])
        )));
    }
    x509::check_validity(&client[0], clock.now).map_err(|e| bad(format!("{CLIENT_CERT} {e}")))?;

    if let (Some(chained), Some(root)) = (files.get(CLIENT_CHAIN), files.get(ROOT_CERT)) {
        let chain = certificates(chained, CLIENT_CHAIN)?;
        let roots = certificates(root, ROOT_CERT)?;
        if chain[0] != client[0] {
            return Err(bad(format!(
                "{CLIENT_CHAIN} does not start with the certificate of {CLIENT_CERT}"
            )));
        }
        x509::verify_chain(&chain, &roots)
            .map_err(|e| bad(format!("{CLIENT_CHAIN} does not lead to {ROOT_CERT}: {e}")))?;
    } else if let Some(root) = files.get(ROOT_CERT) {
        certificates(root, ROOT_CERT)?;
    }

    let sota_toml: toml::Table = files[SOTA_TOML]
        .parse()
        .map_err(|e| bad(format!("{SOTA_TOML} is not valid TOML: {e}")))?;

    Ok(Bundle {
        files,
        ignored,
        sota_toml,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names() {
        for good in [
            "client.pem",
            "sota.toml",
            "root.crt",
            "client.chained",
            "x_1-2",
        ] {
            assert!(is_safe_file_name(good), "{good}");
        }
        for evil in [
            "../x",
            "/etc/x",
            ".hidden",
            "a\0b",
            "",
            "a/b",
            "..",
            "é",
            &"a".repeat(65),
        ] {
            assert!(!is_safe_file_name(evil), "{evil:?}");
        }
    }

    #[test]
    fn shape_errors_are_reported() {
        let clock = ValidityCheck::at_system_time();
        let cases: [(&[u8], &str); 6] = [
            (b"not json", "not the expected JSON"),
            (b"[1,2]", "not the expected JSON"),
            (br#"{"client.pem": 5}"#, "is not a string"),
            (br#"{"a": "x", "a": "y"}"#, "duplicate key"),
            (b"\xff\xfe", "not valid UTF-8"),
            (br#"{"sota.toml": "x = 1"}"#, "no client.pem"),
        ];
        for (body, expected) in cases {
            let err = validate(body, b"key", clock).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::BadResponse);
            assert!(
                err.to_string().contains(expected),
                "{err} should say {expected}"
            );
        }
    }
}

#[cfg(test)]
mod certificates {
    use super::*;
    use rcgen::{CertificateParams, DnType, Issuer, KeyPair, PublicKeyData};

    struct Pki {
        root_pem: String,
        leaf_pem: String,
        leaf_key: KeyPair,
    }

    fn pki(not_before: ::time::OffsetDateTime, not_after: ::time::OffsetDateTime) -> Pki {
        let root_key = KeyPair::generate().unwrap();
        let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        root_params
            .distinguished_name
            .push(DnType::CommonName, "root");
        root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = root_params.self_signed(&root_key).unwrap();
        let issuer = Issuer::new(root_params, &root_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "device");
        leaf_params.not_before = not_before;
        leaf_params.not_after = not_after;
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        Pki {
            root_pem: root.pem(),
            leaf_pem: leaf.pem(),
            leaf_key,
        }
    }

    fn answer(pki: &Pki, client: &str, chained: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "root.crt": pki.root_pem,
            "client.pem": client,
            "client.chained": chained,
            "sota.toml": "[tls]\nserver = \"https://example\"\n",
            "extra.txt": "ignored",
        }))
        .unwrap()
    }

    fn valid_now() -> Pki {
        let now = ::time::OffsetDateTime::now_utc();
        pki(
            now - ::time::Duration::hours(1),
            now + ::time::Duration::days(1),
        )
    }

    fn refusal(pki: &Pki, body: &[u8]) -> String {
        let err = validate(
            body,
            pki.leaf_key.der_bytes(),
            ValidityCheck::at_system_time(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadResponse);
        err.to_string()
    }

    #[test]
    fn a_sound_answer_is_accepted_and_unknown_names_are_ignored() {
        let pki = valid_now();
        let body = answer(&pki, &pki.leaf_pem, &pki.leaf_pem);
        let bundle = validate(
            &body,
            pki.leaf_key.der_bytes(),
            ValidityCheck::at_system_time(),
        )
        .unwrap();
        assert_eq!(bundle.ignored, ["extra.txt"]);
        assert_eq!(bundle.files.len(), 4);
    }

    #[test]
    fn not_yet_valid_and_expired_certificates_are_refused() {
        let now = ::time::OffsetDateTime::now_utc();
        let future = pki(
            now + ::time::Duration::days(1),
            now + ::time::Duration::days(2),
        );
        let body = answer(&future, &future.leaf_pem, &future.leaf_pem);
        assert!(refusal(&future, &body).contains("is not valid before"));
        let past = pki(
            now - ::time::Duration::days(2),
            now - ::time::Duration::days(1),
        );
        let body = answer(&past, &past.leaf_pem, &past.leaf_pem);
        assert!(refusal(&past, &body).contains("expired"));
    }

    #[test]
    fn client_pem_must_hold_exactly_our_one_certificate() {
        let pki = valid_now();
        let two = format!("{}{}", pki.leaf_pem, pki.root_pem);
        assert!(refusal(&pki, &answer(&pki, &two, &two)).contains("holds 2 certificates"));
        assert!(refusal(&pki, &answer(&pki, "no pem here", &pki.leaf_pem))
            .contains("holds no certificate"));
        let other = valid_now();
        let body = answer(&other, &other.leaf_pem, &other.leaf_pem);
        assert!(refusal(&pki, &body).contains("certifies a different key"));
    }

    #[test]
    fn the_chain_must_start_with_client_pem_and_reach_root_crt() {
        let pki = valid_now();
        let other = valid_now();
        let body = answer(&pki, &pki.leaf_pem, &other.leaf_pem);
        assert!(refusal(&pki, &body).contains("does not start with"));
        let mut foreign_root = answer(&pki, &pki.leaf_pem, &pki.leaf_pem);
        let mut map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&foreign_root).unwrap();
        map.insert("root.crt".into(), other.root_pem.clone().into());
        foreign_root = serde_json::to_vec(&map).unwrap();
        assert!(refusal(&pki, &foreign_root).contains("does not lead to root.crt"));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::collection::btree_map;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Arbitrary bytes are refused cleanly, never a panic.
        #[test]
        fn arbitrary_bytes_are_refused(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let err = validate(&body, b"key", ValidityCheck::at_system_time()).unwrap_err();
            prop_assert_eq!(err.kind(), ErrorKind::BadResponse);
        }

        /// Well-formed maps with arbitrary names and contents: refused with a
        /// reason (there is no valid certificate in them), never a panic, and
        /// an unsafe name is always what is reported first.
        #[test]
        fn arbitrary_maps_are_refused(entries in btree_map("\\PC{0,12}", "\\PC{0,40}", 0..6)) {
            let body = serde_json::to_vec(&entries).unwrap();
            let err = validate(&body, b"key", ValidityCheck::at_system_time()).unwrap_err();
            prop_assert_eq!(err.kind(), ErrorKind::BadResponse);
            if entries.keys().any(|name| !is_safe_file_name(name)) {
                prop_assert!(err.to_string().contains("not a plain file name"), "{}", err);
            }
        }
    }
}
