//! The registration flow: pre-flight, identity, key and CSR, the API call,
//! validation, the atomic commit, and what follows it.

use crate::api::{ApiClient, Credentials, Overrides, RegistrationRequest};
use crate::bundle::{self, Bundle, ValidityCheck};
use crate::clock;
use crate::csr::{build_csr_pem, CsrSubject};
use crate::error::{Error, ErrorKind, Result};
use crate::hooks::{self, StepOutcome};
use crate::hsm;
use crate::key::{DeviceKey, SoftwareKey};
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

/// Without a token the only way to authenticate is a person approving the
/// device in a browser: refuse at once when nobody can.
fn ensure_credentials_obtainable(settings: &Settings) -> Result<()> {
    if settings.token.is_none() && (settings.boot || !std::io::stdin().is_terminal()) {
        return Err(Error::config(
            "no API token: provide /etc/lmp-device-register-token, --api-token-file or TOKEN_FILE (interactive OAuth needs a terminal)",
        ));
    }
    Ok(())
}

async fn credentials(settings: &Settings, client: &ApiClient, uuid: &str) -> Result<Credentials> {
    if let Some(token) = &settings.token {
        return Ok(Credentials::Token {
            header: settings.token_header.clone(),
            token: token.clone(),
        });
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

/// The device being registered: its UUID and key, and whether they come from
/// an unfinished earlier attempt.
struct Identity<'t> {
    uuid: String,
    key: DeviceKey<'t>,
    resumed: bool,
}

impl Identity<'_> {
    fn pending(&self) -> Pending {
        Pending {
            uuid: self.uuid.clone(),
            software_key: self.key.private_pem(),
        }
    }
}

/// The identity to register: the one of an unfinished earlier attempt when
/// there is one (so the server never sees two devices), else a new one.
fn identity<'t>(settings: &Settings, token: Option<&'t hsm::Token>) -> Result<Identity<'t>> {
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
        Some(earlier) if earlier.software_key.is_some() == token.is_some() => {
            tracing::warn!(
                "discarding the unfinished registration of {}: its key was {}",
                earlier.uuid,
                if token.is_some() {
                    "in software"
                } else {
                    "in a PKCS#11 token"
                }
            );
            None
        }
        other => other,
    };
    if let Some(earlier) = earlier {
        let key = match (token, &earlier.software_key) {
            (None, Some(pem)) => Some(DeviceKey::Software(SoftwareKey::from_pem(pem)?)),
            (Some(token), _) => token.existing_key()?.map(DeviceKey::Token),
            (None, None) => None,
        };
        match key {
            Some(key) => {
                tracing::info!(
                    "resuming the unfinished registration of {} with its key",
                    earlier.uuid
                );
                return Ok(Identity {
                    uuid: earlier.uuid,
                    key,
                    resumed: true,
                });
            }
            None => tracing::warn!(
                "discarding the unfinished registration of {}: its key is no longer in the token",
                earlier.uuid
            ),
        }
    }

    let uuid = match &settings.uuid {
        Some(uuid) => uuid.clone(),
        None => match token.and_then(hsm::Token::slot_uuid) {
            Some(uuid) => {
                tracing::info!("device UUID {uuid} read from the PKCS#11 slot");
                uuid
            }
            None => {
                let uuid = uuid::Uuid::new_v4().to_string();
                tracing::info!("generated device UUID {uuid}");
                uuid
            }
        },
    };
    let key = match token {
        Some(token) => DeviceKey::Token(token.create_key(settings.force)?),
        None => DeviceKey::Software(SoftwareKey::generate()?),
    };
    Ok(Identity {
        uuid,
        key,
        resumed: false,
    })
}

/// Whether the identity of a failed attempt must be kept for the next run:
/// yes when the server may have accepted it (no answer came back, or it says
/// the device exists and this identity comes from an earlier attempt), no
/// when the server's refusal is definite.
fn keep_identity_after(error: &Error, resumed: bool) -> bool {
    match error.kind() {
        ErrorKind::Interrupted => true,
        ErrorKind::AlreadyRegistered => resumed,
        _ => error.outcome_unknown(),
    }
}

pub async fn register(settings: &Settings) -> Result<Outcome> {
    log_settings(settings);
    // A wrong module or PIN is reported before anything is created.
    let module = settings.hsm.as_ref().map(hsm::Module::load).transpose()?;
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
    ensure_credentials_obtainable(settings)?;
    let token = module.map(hsm::Module::open_token).transpose()?;

    let mut client = ApiClient::new(settings.cacert.as_deref(), settings.request_timeout)?;
    let status = retry(&settings.retry, "reaching DEVICE_API", |_| {
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

    let identity = identity(settings, token.as_ref())?;
    pending::save(&settings.sota_dir, &identity.pending())?;
    if let Some(token) = &token {
        // The key is part of the saved identity now: it outlives this run
        // (even an interrupted one) until the identity is abandoned.
        token.keep_created();
    }
    let result = register_identity(settings, &mut client, &identity).await;
    match &result {
        Err(error) if !keep_identity_after(error, identity.resumed) => {
            if let Some(token) = &token {
                if let Err(e) = token.remove_registration_objects() {
                    tracing::warn!("{e}");
                }
            }
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
    identity: &Identity<'_>,
) -> Result<Outcome> {
    let token = identity.key.token();
    let uuid = identity.uuid.clone();
    let name = settings.name.clone().unwrap_or_else(|| uuid.clone());
    tracing::info!("device UUID {uuid}, name {name}");

    client.set_credentials(credentials(settings, client, &uuid).await?);

    let csr = build_csr_pem(
        &identity.key,
        &CsrSubject {
            uuid: &uuid,
            factory: &settings.factory,
            production: settings.production,
        },
    )?;

    let sota_dir_text = settings.sota_dir.to_string_lossy();
    let overrides = overrides(settings, token.is_some());
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

    let bundle = bundle::validate(
        &body,
        identity.key.der_bytes(),
        ValidityCheck::at_system_time(),
    )?;
    for name in &bundle.ignored {
        tracing::warn!("the server sent {name:?}, which is not a registration file; not written");
    }
    if let Some(token) = token {
        token.import_certificate(&bundle.files[bundle::CLIENT_CERT])?;
    }
    let files = write_registration(settings, &bundle, &identity.key)?;
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
    key: &DeviceKey<'_>,
) -> Result<Vec<String>> {
    let private_key_pem = key.private_pem();
    // With a token key, sota.toml carries the user PIN in [p11].
    let p11_sota_toml = key
        .p11_section()
        .map(|p11| hsm::sota_toml_with_p11(&bundle.sota_toml, p11))
        .transpose()?;
    let mut staged = Vec::new();
    if let Some(pem) = &private_key_pem {
        staged.push(StagedFile {
            name: PRIVATE_KEY,
            contents: pem.expose().as_bytes(),
            mode: PRIVATE_MODE,
        });
    }
    for name in bundle::ALLOWED_FILES {
        if let (bundle::SOTA_TOML, Some(text)) = (name, &p11_sota_toml) {
            staged.push(StagedFile {
                name,
                contents: text.expose().as_bytes(),
                mode: PRIVATE_MODE,
            });
        } else if let Some(contents) = bundle.files.get(name) {
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
