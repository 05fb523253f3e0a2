//! `--status` through the built binary, for each state a profile's state
//! dir can be in: none, in progress without and with the server's answer
//! recorded, registered with a key file and with a token key; text and
//! `--json`; and nothing on disk changes.

mod common;
mod hsm_support;

use device_api::Reply;
use hsm_support::{softhsm_available, Fixture, MODULE};
use serde_json::{json, Value};

const PIN: &str = "3141-status-user";
const SO_PIN: &str = "2718-status-officer";

/// Runs `--status` (text, then `--json`) and proves that neither changed
/// anything under the device root; the text and the JSON report.
fn status(fixture: &Fixture) -> (String, Value) {
    let before = common::snapshot(fixture.dir.path());
    let text = fixture.run_bare(&["--status"]);
    text.assert_code(0);
    let json = fixture.run_bare(&["--status", "--json"]);
    json.assert_code(0);
    assert_eq!(
        common::snapshot(fixture.dir.path()),
        before,
        "--status changed the device"
    );
    let report: Value = serde_json::from_str(json.stdout.trim()).unwrap();
    (text.stdout, report)
}

/// The report of one profile.
fn entry<'a>(report: &'a Value, profile: &str) -> &'a Value {
    report["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["profile"] == profile)
        .unwrap_or_else(|| panic!("no {profile} in {report}"))
}

#[test]
fn without_a_state_dir_nothing_is_registered_and_an_empty_one_says_so() {
    let fixture = Fixture::new();
    let (text, report) = status(&fixture);
    assert_eq!(
        text,
        "not registered: no profile has a state dir on this device\n"
    );
    assert_eq!(report, json!({"status": "status", "profiles": []}));

    std::fs::create_dir_all(fixture.sota_dir()).unwrap();
    let (text, report) = status(&fixture);
    assert_eq!(
        text,
        format!("lmp: not registered ({})\n", fixture.sota_dir().display())
    );
    assert_eq!(
        report["profiles"],
        json!([{"profile": "lmp", "state": "not-registered",
                "state_dir": fixture.sota_dir().display().to_string()}])
    );
}

#[test]
fn a_registration_whose_answer_was_lost_is_in_progress_without_an_answer() {
    let fixture = Fixture::new();
    fixture.api.push_replies([Reply::SignThenDrop]);
    let run = fixture.run(&["--retry-deadline", "0"]);
    assert_ne!(run.code, 0, "{run:?}");
    let uuid = fixture.api.registrations()[0].uuid.clone();

    let (text, report) = status(&fixture);
    let lmp = entry(&report, "lmp");
    assert_eq!(lmp["state"], "in-progress");
    assert_eq!(
        lmp["pending"],
        json!({"id": uuid, "answer_recorded": false, "stage": "pending identity"})
    );
    assert!(text.contains("lmp: in progress ("), "{text}");
    assert!(text.contains(&format!("  identity     {uuid}\n")), "{text}");
    assert!(
        text.contains("  answer       not recorded: the next run asks the server again"),
        "{text}"
    );
}

#[test]
fn an_accepted_registration_that_could_not_be_stored_is_in_progress_with_its_answer() {
    let fixture = Fixture::new();
    // A directory where root.crt goes: storing fails after the answer is
    // recorded.
    std::fs::create_dir_all(fixture.sota_dir().join("root.crt/in-the-way")).unwrap();
    let run = fixture.run(&[]);
    assert_ne!(run.code, 0, "{run:?}");
    let uuid = fixture.api.registrations()[0].uuid.clone();

    let (text, report) = status(&fixture);
    let lmp = entry(&report, "lmp");
    assert_eq!(lmp["state"], "in-progress");
    assert_eq!(lmp["pending"]["id"], uuid.as_str());
    assert_eq!(lmp["pending"]["answer_recorded"], true);
    assert!(
        text.contains(
            "  answer       recorded: the next run stores it without asking the server again"
        ),
        "{text}"
    );
}

/// The certificate part of a registered profile's report.
fn assert_certificate(entry: &Value, subject_has: &str, file: &str) {
    let certificate = &entry["certificate"];
    assert!(
        certificate["file"].as_str().unwrap().ends_with(file),
        "{certificate}"
    );
    assert!(
        certificate["subject"]
            .as_str()
            .unwrap()
            .contains(subject_has),
        "{certificate}"
    );
    assert!(!certificate["issuer"].as_str().unwrap().is_empty());
    let days = certificate["days_left"].as_i64().unwrap();
    assert!(days > 0, "{certificate}");
    assert!(certificate["not_after"].as_str().unwrap().ends_with("GMT"));
}

#[test]
fn lmp_registered_with_a_key_file() {
    let fixture = Fixture::new();
    fixture.run(&[]).assert_code(0);
    let uuid = fixture.api.registrations()[0].uuid.clone();

    let (text, report) = status(&fixture);
    let lmp = entry(&report, "lmp");
    assert_eq!(lmp["state"], "registered");
    assert_eq!(lmp["id"], uuid.as_str());
    assert_eq!(lmp["factory"], hsm_support::FACTORY);
    assert_certificate(lmp, &format!("CN={uuid}"), "client.pem");
    let key_file = fixture.sota_dir().join("pkey.pem").display().to_string();
    assert_eq!(lmp["key"], json!({"file": key_file, "mode": "0600"}));
    assert!(text.contains("lmp: registered ("), "{text}");
    assert!(text.contains(&format!("  device id    {uuid}\n")), "{text}");
    assert!(
        text.contains(&format!("  factory      {}\n", hsm_support::FACTORY)),
        "{text}"
    );
    assert!(text.contains(" days left)\n"), "{text}");
    assert!(
        text.contains(&format!("  key          file {key_file} (mode 0600)\n")),
        "{text}"
    );
}

#[test]
fn lmp_registered_with_a_token_key() {
    if !softhsm_available() {
        return;
    }
    let mut fixture = Fixture::new();
    fixture.write_hsm_file(Some(MODULE), Some(PIN), Some(SO_PIN));
    fixture.run(&[]).assert_code(0);

    let (text, report) = status(&fixture);
    let lmp = entry(&report, "lmp");
    assert_eq!(lmp["state"], "registered");
    assert_eq!(
        lmp["key"],
        json!({"token": "aktualizr", "label": "tls", "id": "01", "module": MODULE})
    );
    assert!(
        text.contains(&format!(
            "  key          token aktualizr, key `tls` (CKA_ID 01), module {MODULE}\n"
        )),
        "{text}"
    );
    assert!(!text.contains(PIN) && !report.to_string().contains(PIN));
}

#[cfg(feature = "azure-dps")]
#[test]
fn azure_dps_in_progress_after_the_factory_then_registered_with_a_token_key() {
    use device_api::azure_dps::{AzureDps, DpsOptions};
    if !softhsm_available() {
        return;
    }
    let dps = AzureDps::start(DpsOptions {
        polls_before_assigned: 0,
        ..DpsOptions::default()
    });
    let mut fixture = Fixture::new();
    fixture.write_hsm_file(Some(MODULE), Some(PIN), Some(SO_PIN));
    fixture.configure_azure_dps(&dps);
    fixture.run_bare(&[]).assert_code(4);
    let id = dps.issued()[0].registration_id.clone();

    let (text, report) = status(&fixture);
    let azure = entry(&report, "azure-dps");
    assert_eq!(azure["state"], "in-progress");
    assert_eq!(azure["pending"]["id"], id.as_str());
    assert_eq!(azure["pending"]["answer_recorded"], false);
    assert!(
        text.contains(
            "  stage        certificate from the factory stored, DPS assignment to come\n"
        ),
        "{text}"
    );

    dps.set_enrollment(&id, true);
    fixture.run_bare(&["--boot"]).assert_code(0);
    let (text, report) = status(&fixture);
    let azure = entry(&report, "azure-dps");
    assert_eq!(azure["state"], "registered");
    assert_eq!(azure["id"], id.as_str());
    assert_eq!(azure["name"], id.as_str(), "the DPS device id");
    assert!(azure["hub"].as_str().unwrap().contains("azure-devices"));
    assert_certificate(azure, &format!("CN={id}"), "device.crt");
    assert_eq!(
        azure["key"],
        json!({"token": "azure-dps", "label": "device", "id": "01", "module": MODULE})
    );
    assert!(text.contains("azure-dps: registered ("), "{text}");
    assert!(text.contains("  hub          "), "{text}");
}

#[cfg(all(feature = "tii", feature = "losant"))]
#[test]
fn tii_and_losant_registered_as_their_files_say() {
    /// A certificate for `cn` with a fresh key, self-signed; and the key's PEM.
    fn certificate(cn: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    let fixture = Fixture::new();
    let tii = fixture.root.join("var/lib/fleet-registration");
    let cn = "/Finland~Solita/fleet/dev-7/registration_agent";
    let (crt, key) = certificate(cn);
    common::write_file(&tii.join("device.crt"), &crt, 0o644);
    common::write_file(&tii.join("ca.crt"), &crt, 0o644);
    common::write_file(&tii.join("device.key"), &key, 0o600);
    common::write_file(&tii.join("registration.json"), "{}\n", 0o600);
    let losant = fixture.root.join("var/lib/losant");
    common::write_file(
        &losant.join("credentials.json"),
        "{\"deviceId\": \"5f2a\", \"accessKey\": \"key-1\", \"accessSecret\": \"do-not-show\"}\n",
        0o600,
    );

    let (text, report) = status(&fixture);
    let entry_tii = entry(&report, "tii");
    assert_eq!(entry_tii["state"], "registered");
    assert_eq!(entry_tii["id"], cn);
    assert_certificate(entry_tii, "dev-7", "device.crt");
    assert_eq!(entry_tii["key"]["mode"], "0600");
    let entry_losant = entry(&report, "losant");
    assert_eq!(entry_losant["state"], "registered");
    assert_eq!(entry_losant["id"], "5f2a");
    assert_eq!(entry_losant["key"], Value::Null);
    assert!(text.contains("losant: registered ("), "{text}");
    assert!(text.contains("  device id    5f2a\n"), "{text}");
    assert!(!text.contains("do-not-show") && !report.to_string().contains("do-not-show"));
}
