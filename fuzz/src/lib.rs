//! The properties the fuzz targets check, one function per target (the
//! targets in `fuzz_targets/` only hand libFuzzer's input to these). Each
//! calls the agent's own parser through `lmp_device_register::fuzzing` and
//! checks more than "no panic":
//!
//! * round trips: what the agent would store from an accepted answer is
//!   accepted again by the same check (as a later run or a re-sent answer
//!   would be);
//! * secrets: every `$S` in the input is replaced by [`MARKER`] before
//!   parsing, and no error message (nor `Debug` of a secret-bearing value)
//!   may contain it;
//! * shapes: errors of an answer are `bad-response`, cleaned messages carry
//!   no control characters, and so on.
//!
//! The fixtures (device key, clock, factory CA) are those the seeds in
//! `seeds/` were made with by `tests/seeds.rs`.

use lmp_device_register::fuzzing as agent;
use lmp_device_register::fuzzing::{ASN1Time, ErrorKind};
use lmp_device_register::profiles::azure_dps::fuzzing as azure_dps;
use lmp_device_register::profiles::losant::fuzzing as losant;
use lmp_device_register::profiles::tii::fuzzing as tii;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::time::{Duration, SystemTime};

/// Planted wherever the input says `$S`; alphanumeric, so that it is valid
/// in base64url, JSON strings, TOML and shell values alike.
pub const MARKER: &str = "hunter2SECRETmarker0";
const PLACEHOLDER: &[u8] = b"$S";

/// The raw EC point of the device key the seeds' certificates are for.
pub const DEVICE_KEY: &[u8] = include_bytes!("../fixtures/device-key.pub");
/// When the seeds were made (Unix seconds); their certificates are valid a
/// year from then, so a fixed clock keeps the corpus meaningful.
const SEEDS_MADE_AT: &str = include_str!("../fixtures/clock");
/// The factory CA of the DPS double (`factory_ca`).
pub const DPS_FACTORY_CA: &str = include_str!("../fixtures/dps-factory-ca.pem");

/// The ids the seeds' certificates name.
pub const LMP_UUID: &str = "5f0b8d1e-2c4a-4b6e-9d3f-7a1c2e4b6d8f";
pub const DPS_ID: &str = "fuzz-dps-device-1";
pub const TII_ID: &str = "0b3c9c7e8f6a4d1e9a432f5a1c0d9e77";

/// A day after the seeds were made.
pub fn now() -> ASN1Time {
    let made: i64 = SEEDS_MADE_AT.trim().parse().expect("fixtures/clock");
    ASN1Time::from_timestamp(made + 24 * 3600).expect("a valid time")
}

/// The input with every `$S` replaced by [`MARKER`].
pub fn plant(data: &[u8]) -> Cow<'_, [u8]> {
    if !data.windows(2).any(|w| w == PLACEHOLDER) {
        return Cow::Borrowed(data);
    }
    let mut out = Vec::with_capacity(data.len() + 32);
    let mut rest = data;
    while let Some(at) = rest.windows(2).position(|w| w == PLACEHOLDER) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(MARKER.as_bytes());
        rest = &rest[at + 2..];
    }
    out.extend_from_slice(rest);
    Cow::Owned(out)
}

fn assert_no_marker(text: &str, what: &str) {
    assert!(
        !text.contains(MARKER),
        "{what} shows a secret of the input: {text}"
    );
}

fn assert_bad_response(error: &agent::Error) {
    assert_eq!(error.kind(), ErrorKind::BadResponse, "{error}");
}

/// The `[p11]` section a token key adds to `sota.toml`; its PIN is a secret.
fn p11_section() -> toml::Table {
    let mut p11 = toml::Table::new();
    for (key, value) in [
        ("module", "/usr/lib/softhsm/libsofthsm2.so"),
        ("pass", MARKER),
        ("label", "aktualizr"),
        ("tls_pkey_id", "01"),
        ("tls_clientcert_id", "03"),
    ] {
        p11.insert(key.into(), toml::Value::String(value.into()));
    }
    p11
}

/// The registration API's 201 answer (`lmp/answer.rs` `validate`). An
/// accepted answer stores files that, sent again, are accepted again, with
/// the same certificates and `sota.toml` (plus `[p11]` for a token key).
pub fn lmp_answer(data: &[u8]) {
    let clock = agent::ValidityCheck { now: now() };
    let bundle = match agent::lmp_answer(data, DEVICE_KEY, clock) {
        Ok(bundle) => bundle,
        Err(error) => return assert_bad_response(&error),
    };
    for p11 in [None, Some(p11_section())] {
        let files = agent::lmp_files_to_store(&bundle, p11.clone())
            .unwrap_or_else(|e| panic!("an accepted answer cannot be stored: {e}"));
        assert_eq!(files.last().map(|f| f.name.as_str()), Some("sota.toml"));
        let resent: serde_json::Map<String, Value> = files
            .iter()
            .map(|f| (f.name.clone(), Value::String(f.contents.clone())))
            .collect();
        let body = Value::Object(resent).to_string();
        let again = agent::lmp_answer(body.as_bytes(), DEVICE_KEY, clock)
            .unwrap_or_else(|e| panic!("the stored files are refused: {e}"));
        for (name, contents) in &bundle.files {
            if *name != "sota.toml" {
                assert_eq!(again.files.get(name), Some(contents), "{name}");
            }
        }
        let Some(p11) = p11 else {
            assert_eq!(again.files.get("sota.toml"), bundle.files.get("sota.toml"));
            continue;
        };
        let stored = files.last().expect("sota.toml");
        assert_eq!(stored.mode & 0o077, 0, "sota.toml with the PIN is private");
        same_toml_but_p11(&bundle.sota_toml, &again.sota_toml, &p11);
    }
}

/// `ours` is `server`'s `sota.toml` with `p11` merged into its `[p11]`.
fn same_toml_but_p11(server: &toml::Table, ours: &toml::Table, p11: &toml::Table) {
    let canonical = |value: &toml::Value| toml::to_string(&json!({ "v": value })).ok();
    for (key, value) in server.iter().filter(|(key, _)| *key != "p11") {
        let kept = ours.get(key).map(canonical);
        assert_eq!(kept, Some(canonical(value)), "sota.toml [{key}] changed");
    }
    assert_eq!(
        ours.len(),
        server.len() + usize::from(!server.contains_key("p11"))
    );
    let section = ours["p11"].as_table().expect("[p11] is a table");
    for (key, value) in p11 {
        assert_eq!(section.get(key), Some(value), "p11.{key}");
    }
    if let Some(toml::Value::Table(theirs)) = server.get("p11") {
        for (key, value) in theirs.iter().filter(|(key, _)| !p11.contains_key(*key)) {
            assert_eq!(section.get(key).map(canonical), Some(canonical(value)));
        }
    }
}

/// The DPS factory's enrolment answer (`azure_dps/factory.rs`), with and
/// without a factory CA: an accepted certificate is stored as `device.crt`,
/// which the next run checks again and must accept as the same chain.
pub fn dps_factory(data: &[u8]) {
    for ca in [None, Some(DPS_FACTORY_CA)] {
        let certificate = match azure_dps::dps_factory_answer(data, DEVICE_KEY, DPS_ID, ca, now()) {
            Ok(certificate) => certificate,
            Err(error) => {
                assert_bad_response(&error);
                continue;
            }
        };
        let stored =
            azure_dps::dps_stored_certificate(&certificate.pem, DEVICE_KEY, DPS_ID, ca, now())
                .unwrap_or_else(|e| panic!("device.crt as stored is refused: {e}"));
        assert_eq!(stored.chain, certificate.chain);
        assert_eq!(stored.pem, certificate.pem);
        let leaf = agent::pem_certificates(&certificate.leaf_pem).expect("the leaf's PEM");
        assert_eq!(leaf.len(), 1);
        assert_eq!(leaf[0].as_ref(), certificate.chain[0].as_slice());
    }
}

/// DPS's operation status (`azure_dps/dps.rs` `decide`, then
/// `assignment`), for a register and for a poll: an assignment names a hub
/// and a device without control characters; what is shown otherwise has
/// none either (it goes to the log and the terminal); the operation polled
/// next is usable.
pub fn dps_status(data: &[u8]) {
    for polled in [
        None,
        Some("4.fd7c3b9fcece0b69.48bad530c2b29596025aeba570bf30e4"),
    ] {
        match azure_dps::dps_operation_status(data, polled, DPS_ID) {
            Ok((hub, device)) => {
                for value in [&hub, &device] {
                    assert!(!value.is_empty() && !value.chars().any(char::is_control));
                }
            }
            Err((shown, next)) => {
                assert!(!shown.chars().any(char::is_control), "{shown:?}");
                if let Some(operation) = next {
                    assert!(!operation.is_empty() && operation.len() <= 200);
                }
            }
        }
    }
}

/// Losant's registration answer (`losant/api.rs` `parse_credentials`): no
/// error quotes the answer, `Debug` hides the access secret, and the
/// credentials file parses back to the same credentials.
pub fn losant_credentials(data: &[u8]) {
    let data = plant(data);
    let (credentials, _ignored) = match losant::parse_credentials(&data) {
        Ok(parsed) => parsed,
        Err(why) => return assert_no_marker(&why, "an error"),
    };
    if !credentials.device_id.contains(MARKER) && !credentials.access_key.contains(MARKER) {
        assert_no_marker(&format!("{credentials:?}"), "Debug of the credentials");
    }
    let file = credentials.file_contents();
    let (again, ignored) =
        losant::parse_credentials(file.expose().as_bytes()).expect("the credentials file parses");
    assert!(ignored.is_empty());
    assert_eq!(again.device_id, credentials.device_id);
    assert_eq!(again.access_key, credentials.access_key);
    assert_eq!(
        again.access_secret.expose(),
        credentials.access_secret.expose()
    );
}

/// The Losant registration token (`losant/jwt.rs`), taken as it is (first
/// byte even) or built from a decoded header and payload (odd: the rest is
/// `header \xff payload \xff signature`), so that the fuzzer reaches the
/// JSON inside. Errors never show any of it.
pub fn losant_jwt(data: &[u8]) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let rest = plant(rest);
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(&rest).into_owned()
    } else {
        let mut parts = rest.splitn(3, |b| *b == 0xff);
        let header = URL_SAFE_NO_PAD.encode(parts.next().unwrap_or_default());
        let payload = URL_SAFE_NO_PAD.encode(parts.next().unwrap_or_default());
        let signature = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        format!("{header}.{payload}.{signature}")
    };
    match losant::unverified_claims(&token) {
        Ok(claims) => {
            for claim in [&claims.url, &claims.iss].into_iter().flatten() {
                assert!(!claim.is_empty() && claim.trim() == claim, "{claim:?}");
            }
        }
        Err(why) => assert_no_marker(&why, "an error"),
    }
}

/// The TII provisioning answer (`tii/provision.rs` `validate`). What the
/// agent stores (`device.crt`, `ca.crt`) and the NATS URL it reports, sent
/// back as an answer, are accepted again as the same thing.
pub fn tii_provision(data: &[u8]) {
    let provisioned = match tii::tii_provision(data, DEVICE_KEY, TII_ID, now()) {
        Ok(provisioned) => provisioned,
        Err(error) => return assert_bad_response(&error),
    };
    let mut resent = json!({
        "certificate": provisioned.chain_pem(),
        "caCertificate": provisioned.ca_pem(),
    });
    if let Some(url) = &provisioned.nats_url {
        resent["fleetManagementNatsUrl"] = Value::String(url.to_string());
    }
    let again = tii::tii_provision(resent.to_string().as_bytes(), DEVICE_KEY, TII_ID, now())
        .unwrap_or_else(|e| panic!("the stored certificates are refused: {e}"));
    assert_eq!(again.chain, provisioned.chain);
    assert_eq!(again.roots, provisioned.roots);
    assert_eq!(again.nats_url, provisioned.nats_url);
    for pem in [provisioned.leaf_pem(), provisioned.issuing_ca_pem()] {
        assert_eq!(agent::pem_certificates(&pem).map(|c| c.len()), Ok(1));
    }
}

/// The fleet manager's NATS result (`tii/nats.rs`). Its payload may hold
/// secrets: an error may show the marker only where the result's `error` or
/// `status` (the fleet manager's words) hold it. The payload is stored as
/// `registration.json`, which must parse back to the same value.
pub fn tii_nats(data: &[u8]) {
    let data = plant(data);
    match tii::tii_nats_result(&data) {
        Ok(registered) => {
            let stored = serde_json::to_string_pretty(&registered.payload).expect("JSON");
            let again: Value = serde_json::from_str(&stored).expect("registration.json parses");
            assert_eq!(again, registered.payload);
            // The alias is the device's name, shown on purpose; the
            // payload (where older fleet managers put secrets) never is.
            let alias_said_it = registered
                .alias
                .as_deref()
                .is_some_and(|a| a.contains(MARKER));
            if !alias_said_it {
                assert_no_marker(&format!("{registered:?}"), "Debug of the result");
            }
        }
        Err(error) => {
            let shown = format!("{error}");
            // Lossy: the agent skips invalid UTF-8 in members it ignores,
            // which a strict parse of the whole result would refuse.
            let words: Option<Value> = serde_json::from_str(&String::from_utf8_lossy(&data)).ok();
            // serde reads an array as the fields in their order: status,
            // payload, alias, error.
            let said = |field: &str, place: usize| {
                words
                    .as_ref()
                    .and_then(|w| match w {
                        Value::Array(fields) => fields.get(place)?.as_str(),
                        _ => w.get(field)?.as_str(),
                    })
                    .is_some_and(|text| text.contains(MARKER))
            };
            if !said("error", 3) && !said("status", 0) {
                assert_no_marker(&shown, "an error");
            }
        }
    }
}

/// `Retry-After` (`http.rs` `parse_retry_after`), then the retry loop that
/// takes it as a floor: whatever a server says, the loop decides without a
/// panic and without sleeping past its deadline.
pub fn retry_after(data: &[u8]) {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    let parsed = agent::parse_retry_after(value, now);
    for policy in [
        agent::RetryPolicy::boot(),
        agent::RetryPolicy::interactive(),
    ] {
        let once = agent::RetryPolicy {
            max_attempts: 1,
            ..policy
        };
        let error = agent::retry_after_refusal(&once, parsed);
        assert!(
            matches!(error, agent::HttpError::Status { code: 503, .. }),
            "{error}"
        );
    }
}

/// The server's words in an error answer (`http.rs` `server_message`):
/// trimmed, no control characters, bounded.
pub fn server_message(data: &[u8]) {
    let message = agent::server_message(data);
    assert!(!message.chars().any(char::is_control), "{message:?}");
    assert_eq!(message.trim(), message);
    assert!(message.chars().count() <= 2003, "{} chars", message.len());
}

/// A network interface's sysfs files (`losant/mac.rs`): `address`, then
/// after a `\xff` `addr_assign_type`. An accepted address is a lower-case
/// Ethernet MAC that is accepted again as itself, and only an address not
/// from the card is warned about.
pub fn sysfs_mac(data: &[u8]) {
    let mut parts = data.splitn(2, |b| *b == 0xff);
    let address = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let assign_type = parts
        .next()
        .map(|t| String::from_utf8_lossy(t).trim().to_string());
    let path = std::path::Path::new("/sys/class/net/eth0/address");
    let Ok(checked) = losant::sysfs_mac_address("eth0", path, &address, assign_type.as_deref())
    else {
        return;
    };
    let mac = &checked.mac;
    assert_eq!(mac.len(), 17, "{mac:?}");
    assert!(
        mac.bytes()
            .all(|b| b == b':' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{mac:?}"
    );
    assert_ne!(mac, "00:00:00:00:00:00");
    let again = losant::sysfs_mac_address("eth0", path, mac, None).expect("the address again");
    assert_eq!(&again.mac, mac);
    let not_the_cards = matches!(assign_type.as_deref(), Some("2" | "3"));
    assert_eq!(checked.warning.is_some(), not_the_cards);
}

/// The small device files (`config/devicefiles.rs`, `config/hsm.rs`):
/// `/etc/os-release` and `/etc/sota/hsm` (`KEY=value`), `/etc/sota/tag` and
/// the API token file (one line). The PINs and the token are secrets: no
/// error and no `Debug` of the hsm settings may show them.
pub fn device_files(data: &[u8]) {
    let data = plant(data);
    // The reader refuses what is not UTF-8 or holds a NUL before parsing.
    let Ok(text) = std::str::from_utf8(&data) else {
        return;
    };
    if text.contains('\0') {
        return;
    }
    match agent::parse_shell_vars(text) {
        Ok(vars) => {
            for (key, _) in &vars {
                assert!(!key.is_empty() && !key.starts_with(|c: char| c.is_ascii_digit()));
                assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{key:?}"
                );
            }
        }
        Err(why) => assert_no_marker(&why, "an error"),
    }
    match agent::parse_hsm_file(text) {
        Ok(hsm) => {
            let module_shows_it = hsm
                .module
                .as_ref()
                .is_some_and(|m| m.to_string_lossy().contains(MARKER));
            if !module_shows_it {
                assert_no_marker(&format!("{hsm:?}"), "Debug of the hsm file");
            }
        }
        Err(why) => assert_no_marker(&why, "an error"),
    }
    match agent::parse_single_line(text, "the token file") {
        Ok(line) => {
            assert!(!line.is_empty() && line.trim() == line, "{line:?}");
            assert!(!line.chars().any(char::is_control), "{line:?}");
        }
        Err(why) => assert_no_marker(&why, "an error"),
    }
}

/// The hex SHA-256 a journal record starts with, computed here on its own
/// (not by the agent's code), to check the loader against.
fn sha256_hex(json: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, json);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn record_checks_out(record: &[u8]) -> bool {
    let Some(space) = record.iter().position(|b| *b == b' ') else {
        return false;
    };
    sha256_hex(&record[space + 1..]).as_bytes() == &record[..space]
}

/// A directory for the journal's round trip: memory-backed where there is
/// one, so that its fsyncs cost nothing.
fn scratch_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("lmp-fuzz-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    })
}

/// The pending journal (`identity.rs`), as it is (first byte even) or as
/// records that this target checksums itself (odd: the rest is JSON records
/// separated by newlines), so that the fuzzer reaches the JSON. Nothing the
/// loader accepts fails its checksum; errors never show the software key;
/// what was loaded, written again by a registration, loads the same.
pub fn journal(data: &[u8]) {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let rest = plant(rest);
    let bytes = if mode % 2 == 0 {
        rest.into_owned()
    } else {
        let mut bytes = Vec::new();
        for json in rest.split(|b| *b == b'\n') {
            bytes.extend_from_slice(sha256_hex(json).as_bytes());
            bytes.push(b' ');
            bytes.extend_from_slice(json);
            bytes.push(b'\n');
        }
        bytes
    };
    let loaded = match agent::journal_parse(&bytes) {
        Ok(loaded) => loaded,
        Err(why) => return assert_no_marker(&why, "an error"),
    };
    let mut records = bytes
        .split(|b| *b == b'\n' || *b == 0)
        .filter(|r| !r.is_empty());
    let identity = records.next().expect("an identity record");
    assert!(
        record_checks_out(identity),
        "an identity record that fails its checksum was taken"
    );
    if loaded.answer.is_some() {
        assert!(
            records.any(record_checks_out),
            "an answer that fails its checksum was taken"
        );
    }
    let again = agent::journal_round_trip(scratch_dir(), &loaded)
        .unwrap_or_else(|e| panic!("the loaded journal cannot be written again: {e}"));
    assert_eq!(again.id, loaded.id);
    assert_eq!(again.software_key, loaded.software_key);
    assert_eq!(again.answer, loaded.answer);
    assert_eq!(again.skipped, 0);
}

/// Where the settings target's device tree is: a fixed path, so that
/// seeds can point settings at its files (`/dev/shm/lmp-fuzz-root/etc/...`).
pub const SETTINGS_ROOT: &str = "/dev/shm/lmp-fuzz-root";

/// The device tree for the settings: an os-release, a tag, an API token
/// file and an hsm file whose token and PINs are the marker. Written
/// atomically, the same by every process.
fn settings_root() -> &'static std::path::Path {
    static ROOT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        use std::os::unix::fs::OpenOptionsExt;
        let root = std::path::PathBuf::from(SETTINGS_ROOT);
        std::fs::create_dir_all(root.join("etc/sota")).expect("etc/sota");
        let files = [
            ("etc/os-release", "ID=lmp\nLMP_FACTORY=demo-factory\nLMP_MACHINE=intel-corei7-64\n".to_string()),
            ("etc/sota/tag", "main\n".to_string()),
            ("etc/lmp-device-register-token", format!("{MARKER}-token\n")),
            ("etc/sota/hsm", format!("HSM_MODULE=/usr/lib/softhsm/libsofthsm2.so\nHSM_PIN={MARKER}\nHSM_SOPIN={MARKER}-so\n")),
        ];
        for (path, text) in files {
            let temporary = scratch_dir().join("device-file");
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true).mode(0o600);
            let mut file = options.open(&temporary).expect("a device file");
            std::io::Write::write_all(&mut file, text.as_bytes()).expect("written");
            std::fs::rename(&temporary, root.join(path)).expect("in place");
        }
        root
    })
}

/// The config file (`config/file.rs`) through the whole settings
/// resolution, as a run with `--root` and `--config` does it: whatever the file says, the
/// result is settings or a configuration error, and no error shows the API
/// token or a PIN the device files hold, whichever file a setting is
/// pointed at.
pub fn config_file(data: &[u8]) {
    let root = settings_root();
    let config = scratch_dir().join("lmp-device-register.toml");
    std::fs::write(&config, data).expect("the config file");
    let config = config.display().to_string();
    if let Err(error) = agent::settings_under_root(root, &["--config", &config]) {
        assert_eq!(error.kind(), ErrorKind::Config, "{error}");
        assert_no_marker(&error.to_string(), "an error");
    }
}
