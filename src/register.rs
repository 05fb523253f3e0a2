//! The registration flow: pre-flight, identity, key and CSR, the API call,
//! validation, the atomic commit, and what follows it.

use crate::api::{ApiClient, Credentials, Overrides, RegistrationRequest};
use crate::bundle::{self, Bundle, ValidityCheck};
use crate::clock;
use crate::csr::{build_csr_pem, CsrSubject};
use crate::error::{Error, ErrorKind, Result};
use crate::hooks::{self, StepOutcome};
use crate::key::SoftwareKey;
use crate::pending::{self, Pending};
use crate::retry::retry;
use crate::settings::Settings;
use crate::sotadir::{self, StagedFile, PRIVATE_KEY, PRIVATE_MODE, PUBLIC_MODE};
use rcgen::PublicKeyData;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::SystemTime;

/// What a successful run did, for the log and for `--json`.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub status: &'static str,
    pub uuid: String,
    pub name: String,
    pub factory: String,
    pub sota_dir: String,
    pub files: Vec<String>,
    pub fioconfig: StepOutcome,
    pub aktualizr_lite: StepOutcome,
}

/// The TOML literal of a string, e.g. `main` -> `"main"`.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

/// Overrides the factory applies to the `sota.toml` it returns.
pub fn overrides(settings: &Settings, uses_hsm: bool) -> Overrides {
    let mut overrides: Overrides = BTreeMap::new();
    let pacman = overrides.entry("pacman").or_default();
    pacman.insert("tags", toml_string(&settings.tags));
    if let Some(apps) = &settings.apps {
        pacman.insert("type", toml_string("ostree+compose_apps"));
        pacman.insert(
            "compose_apps_root",
            toml_string(&settings.sota_dir.join("compose-apps").to_string_lossy()),
        );
        pacman.insert("compose_apps", toml_string(&apps.join(",")));
    }
    if let Some(restorable) = &settings.restorable_apps {
        pacman.insert("reset_apps", toml_string(&restorable.join(",")));
    }
    if uses_hsm {
        let tls = overrides.entry("tls").or_default();
        tls.insert("pkey_source", toml_string("pkcs11"));
        tls.insert("cert_source", toml_string("pkcs11"));
        for section in ["storage", "import"] {
            let entries = overrides.entry(section).or_default();
            entries.insert("tls_pkey_path", String::new());
            entries.insert("tls_clientcert_path", String::new());
        }
    }
    overrides
}

fn log_settings(settings: &Settings) {
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    for (what, from) in &settings.origins {
        tracing::info!("{what} read from {from}");
    }
    tracing::info!(
        "registering with factory {} (tag {}, hardware id {}, {}) at {}",
        settings.factory,
        settings.tags,
        settings.hardware_id,
        if settings.production {
            "production"
        } else {
            "not production"
        },
        settings.device_api
    );
    if settings.device_api.scheme() == "http" {
        tracing::warn!(
            "DEVICE_API {} is plain http: the token and the certificates cross the network unencrypted",
            settings.device_api
        );
    }
}

/// What the pre-flight found.
enum Preflight {
    Proceed(sotadir::DirLock),
    /// Registered already, which first-boot mode treats as success.
    Registered(Vec<&'static str>),
}

/// Checks that must pass before any key or request is made.
fn preflight(settings: &Settings) -> Result<Preflight> {
    sotadir::prepare(&settings.sota_dir)?;
    let lock = sotadir::DirLock::acquire(&settings.sota_dir)?;
    sotadir::recover(&settings.sota_dir)?;
    sotadir::ensure_aklite_not_running(&settings.aklite_lock)?;
    let markers = sotadir::registration_markers(&settings.sota_dir);
    if markers.is_empty() {
        return Ok(Preflight::Proceed(lock));
    }
    if settings.force {
        tracing::warn!(
            "--force: the registration in {} will be replaced once the new one is complete",
            settings.sota_dir.display()
        );
        return Ok(Preflight::Proceed(lock));
    }
    if settings.boot {
        return Ok(Preflight::Registered(markers));
    }
    Err(Error::new(
        ErrorKind::AlreadyRegistered,
        format!(
            "this device is already registered ({} present in {}); use --force to register it again",
            markers.join(" and "),
            settings.sota_dir.display()
        ),
    ))
}

async fn credentials(settings: &Settings, client: &ApiClient, uuid: &str) -> Result<Credentials> {
    if let Some(token) = &settings.token {
        return Ok(Credentials::Token {
            header: settings.token_header.clone(),
            token: token.clone(),
        });
    }
    if settings.boot || !std::io::stdin().is_terminal() {
        return Err(Error::config(
            "no API token: provide /etc/lmp-device-register-token, --api-token-file or TOKEN_FILE (interactive OAuth needs a terminal)",
        ));
    }
    let token = crate::oauth::device_flow(
        client.http(),
        &settings.oauth_base,
        uuid,
        &settings.factory,
        &mut |text| eprintln!("{text}"),
    )
    .await?;
    Ok(Credentials::Bearer(token))
}

/// The identity to register: the one of an unfinished earlier attempt when
/// there is one (so the server never sees two devices), else a new one.
/// Returns it with whether it was resumed.
fn identity(settings: &Settings) -> Result<(Pending, bool)> {
    let earlier = match pending::load(&settings.sota_dir)? {
        Some(earlier) if settings.force => {
            tracing::warn!(
                "--force: discarding the unfinished registration of {}",
                earlier.uuid
            );
            None
        }
        Some(earlier) if settings.uuid.as_ref().is_some_and(|u| *u != earlier.uuid) => {
            tracing::warn!(
                "discarding the unfinished registration of {}: --uuid asks for another device",
                earlier.uuid
            );
            None
        }
        Some(earlier) if earlier.software_key.is_none() => {
            tracing::warn!(
                "discarding the unfinished registration of {}: its key was in a PKCS#11 token",
                earlier.uuid
            );
            None
        }
        other => other,
    };
    if let Some(earlier) = earlier {
        tracing::info!(
            "resuming the unfinished registration of {} with its key",
            earlier.uuid
        );
        return Ok((earlier, true));
    }
    let uuid = match &settings.uuid {
        Some(uuid) => uuid.clone(),
        None => {
            let uuid = uuid::Uuid::new_v4().to_string();
            tracing::info!("generated device UUID {uuid}");
            uuid
        }
    };
    let key = SoftwareKey::generate()?;
    Ok((
        Pending {
            uuid,
            software_key: Some(key.private_pem()),
        },
        false,
    ))
}

/// Whether the identity of a failed attempt must be kept for the next run:
/// yes when the server may have accepted it (the answer never arrived, or it
/// says the device exists already and this identity comes from an earlier
/// attempt), no when the refusal is definite.
fn keep_identity_after(error: &Error, resumed: bool) -> bool {
    match error.kind() {
        ErrorKind::Unavailable | ErrorKind::Interrupted => true,
        ErrorKind::AlreadyRegistered => resumed,
        _ => false,
    }
}

pub async fn register(settings: &Settings) -> Result<Outcome> {
    log_settings(settings);
    if settings.hsm.is_some() {
        return Err(Error::new(
            ErrorKind::Hsm,
            "PKCS#11 keys are not supported by this build",
        ));
    }
    let _lock = match preflight(settings)? {
        Preflight::Proceed(lock) => lock,
        Preflight::Registered(markers) => {
            tracing::info!(
                "already registered ({} present in {}); nothing to do",
                markers.join(" and "),
                settings.sota_dir.display()
            );
            return Ok(Outcome {
                status: "already-registered",
                uuid: String::new(),
                name: String::new(),
                factory: settings.factory.clone(),
                sota_dir: settings.sota_dir.display().to_string(),
                files: Vec::new(),
                fioconfig: StepOutcome::Skipped,
                aktualizr_lite: StepOutcome::Skipped,
            });
        }
    };
    let policy = &settings.retry;

    let mut client = ApiClient::new(settings.cacert.as_deref(), settings.request_timeout)?;
    let status = retry(policy, "reaching DEVICE_API", |_| {
        client.probe(&settings.device_api)
    })
    .await
    .map_err(|e| e.into_error(&format!("cannot reach {}", settings.device_api)))?;
    tracing::debug!("DEVICE_API answered HEAD with HTTP {status}");

    clock::wait_for_plausible_time(
        clock::earliest_plausible_time(),
        settings.clock_wait,
        SystemTime::now,
    )
    .await?;

    let (identity, resumed) = identity(settings)?;
    let result = register_identity(settings, &mut client, &identity).await;
    match &result {
        Err(error) if !keep_identity_after(error, resumed) => {
            if let Err(e) = pending::remove(&settings.sota_dir) {
                tracing::warn!("{e}");
            }
        }
        Err(_) => tracing::info!(
            "kept the identity of {} for the next attempt",
            identity.uuid
        ),
        Ok(_) => {}
    }
    result
}

async fn register_identity(
    settings: &Settings,
    client: &mut ApiClient,
    identity: &Pending,
) -> Result<Outcome> {
    let uuid = identity.uuid.clone();
    let name = settings.name.clone().unwrap_or_else(|| uuid.clone());
    tracing::info!("device UUID {uuid}, name {name}");

    client.set_credentials(credentials(settings, client, &uuid).await?);

    let private_pem = identity
        .software_key
        .as_ref()
        .expect("software identities carry their key");
    let key = SoftwareKey::from_pem(private_pem)?;
    pending::save(&settings.sota_dir, identity)?;
    let csr = build_csr_pem(
        &key,
        &CsrSubject {
            uuid: &uuid,
            factory: &settings.factory,
            production: settings.production,
        },
    )?;

    let sota_dir_text = settings.sota_dir.to_string_lossy();
    let overrides = overrides(settings, false);
    let request = RegistrationRequest {
        name: &name,
        uuid: &uuid,
        csr: &csr,
        hardware_id: &settings.hardware_id,
        sota_config_dir: &sota_dir_text,
        use_ostree_server: settings.use_ostree_server,
        group: settings.group.as_deref(),
        overrides: &overrides,
    };
    let body = retry(&settings.retry, "registering", |_| {
        client.register(&settings.device_api, &request)
    })
    .await
    .map_err(|e| e.into_error("the registration API refused the device"))?;

    let bundle = bundle::validate(&body, key.der_bytes(), ValidityCheck::at_system_time())?;
    for name in &bundle.ignored {
        tracing::warn!("the server sent {name:?}, which is not a registration file; not written");
    }
    let files = write_registration(settings, &bundle, Some(private_pem.expose().as_bytes()))?;
    tracing::info!(
        "registered device {uuid} ({name}); wrote {} to {}",
        files.join(", "),
        settings.sota_dir.display()
    );

    let fioconfig = hooks::fioconfig_check_in(&settings.fioconfig_secrets_dir);
    if let StepOutcome::Failed(why) = &fioconfig {
        tracing::warn!("initial configuration check-in failed (the device is registered; fioconfig will retry on its own): {why}");
    }
    let aktualizr_lite = if settings.start_daemon {
        let outcome = hooks::start_aktualizr_lite();
        if let StepOutcome::Failed(why) = &outcome {
            tracing::warn!("could not start aktualizr-lite: {why}");
        }
        outcome
    } else {
        StepOutcome::Skipped
    };

    Ok(Outcome {
        status: "registered",
        uuid,
        name,
        factory: settings.factory.clone(),
        sota_dir: settings.sota_dir.display().to_string(),
        files,
        fioconfig,
        aktualizr_lite,
    })
}

/// Writes the registration as one unit; returns the names written.
fn write_registration(
    settings: &Settings,
    bundle: &Bundle,
    private_key_pem: Option<&[u8]>,
) -> Result<Vec<String>> {
    let mut staged = Vec::new();
    if let Some(pem) = private_key_pem {
        staged.push(StagedFile {
            name: PRIVATE_KEY,
            contents: pem,
            mode: PRIVATE_MODE,
        });
    }
    for name in bundle::ALLOWED_FILES {
        if let Some(contents) = bundle.files.get(name) {
            staged.push(StagedFile {
                name,
                contents: contents.as_bytes(),
                mode: PUBLIC_MODE,
            });
        }
    }
    // aktualizr-lite's database belongs to the identity being replaced.
    let mut obsolete = vec!["sql.db", pending::PENDING_FILE];
    if private_key_pem.is_none() {
        obsolete.push(PRIVATE_KEY);
    }
    sotadir::commit(&settings.sota_dir, &staged, &obsolete)?;
    Ok(staged.iter().map(|f| f.name.to_string()).collect())
}
