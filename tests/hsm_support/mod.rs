//! Shared pieces of the PKCS#11 tests: a private SoftHSM2 per test, the
//! loopback registration API, the agent run as a child process, and
//! in-process access to the token for checking what the agent left in it.

#![allow(dead_code)]

mod swtpm;
#[allow(unused_imports)]
pub use swtpm::{swtpm_available, Swtpm, TPM_MODULE};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use device_api::{DeviceApi, Options};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const FACTORY: &str = "demo-factory";
pub const API_TOKEN: &str = "demo-token";

/// Whether the machine has SoftHSM2; the tests say so and pass when not.
pub fn softhsm_available() -> bool {
    if Path::new(MODULE).exists() {
        true
    } else {
        // CI installs SoftHSM2 (.ci/run): there a missing module is a failure.
        assert!(
            std::env::var_os("CI").is_none(),
            "SoftHSM2 ({MODULE}) is not installed"
        );
        eprintln!("SoftHSM2 ({MODULE}) is not installed: skipping (apt-get install softhsm2)");
        false
    }
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub softhsm_conf: PathBuf,
    pub api: DeviceApi,
    stubs: PathBuf,
    token_file: PathBuf,
    /// Every PIN this test uses; none may ever appear in the agent's output.
    pub secrets: Vec<String>,
    /// Environment of the PKCS#11 module besides SOFTHSM2_CONF (a TPM's
    /// store and connection), for the agent and for [`Fixture::open_module`].
    pub module_env: Vec<(String, String)>,
}

pub use crate::common::Run;

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with_options(Options::default())
    }

    pub fn with_options(options: Options) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc/sota")).unwrap();
        let tokens = dir.path().join("softhsm-tokens");
        std::fs::create_dir(&tokens).unwrap();
        let softhsm_conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &softhsm_conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .unwrap();
        let stubs = dir.path().join("bin");
        std::fs::create_dir(&stubs).unwrap();
        write_script(&stubs.join("fioconfig"), "exit 0");
        write_script(&stubs.join("systemctl"), "exit 0");
        let token_file = dir.path().join("api-token");
        std::fs::write(&token_file, API_TOKEN).unwrap();
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        Fixture {
            dir,
            root,
            softhsm_conf,
            api: DeviceApi::start(options),
            stubs,
            token_file,
            secrets: Vec::new(),
            module_env: Vec::new(),
        }
    }

    pub fn sota_dir(&self) -> PathBuf {
        self.root.join("var/sota")
    }

    /// Writes `/etc/sota/hsm` under the root; `None` leaves a key out.
    pub fn write_hsm_file(
        &mut self,
        module: Option<&str>,
        pin: Option<&str>,
        so_pin: Option<&str>,
    ) {
        let mut text = String::from("# written by the test\n");
        for (key, value) in [
            ("HSM_MODULE", module),
            ("HSM_PIN", pin),
            ("HSM_SOPIN", so_pin),
        ] {
            if let Some(value) = value {
                // Single quotes keep `"` and `\` literal.
                text.push_str(&format!("{key}='{value}'\n"));
            }
        }
        for secret in [pin, so_pin].into_iter().flatten() {
            self.secrets.push(secret.to_string());
        }
        let path = self.root.join("etc/sota/hsm");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// The agent with this fixture's root, stubs and module environment,
    /// and no other settings.
    pub fn bare_command(&self) -> Command {
        let path = format!("{}:/usr/bin:/bin", self.stubs.display());
        let mut command = Command::new(env!("CARGO_BIN_EXE_lmp-device-register"));
        command
            .arg("--root")
            .arg(&self.root)
            .env_clear()
            .env("PATH", path)
            .env("SOFTHSM2_CONF", &self.softhsm_conf)
            .env("HOME", self.dir.path())
            .envs(self.module_env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null());
        command
    }

    /// Runs `command`; none of this fixture's secrets may be in its output.
    pub fn output(&self, mut command: Command) -> Run {
        let run = Run::from(command.output().unwrap());
        let text = run.output();
        for secret in &self.secrets {
            assert!(
                !text.contains(secret.as_str()),
                "the agent printed the secret {secret:?}:\n{run:?}"
            );
        }
        run
    }

    /// Runs the agent with `args` and no other settings.
    pub fn run_bare(&self, args: &[&str]) -> Run {
        let mut command = self.bare_command();
        command.args(args);
        self.output(command)
    }

    /// Runs the agent against this fixture's root, API and SoftHSM2.
    pub fn run(&self, extra: &[&str]) -> Run {
        let mut command = self.bare_command();
        command
            .args(["--device-api", &self.api.url()])
            .arg("--api-token-file")
            .arg(&self.token_file)
            .args([
                "-f",
                FACTORY,
                "-t",
                "main",
                "-i",
                "test-hwid",
                "--start-daemon",
                "0",
            ])
            .args(extra);
        self.output(command)
    }

    /// Writes the config file of the azure-dps profile for `dps` (its
    /// endpoints, its server CA as `cacert`, its device CA as `factory_ca`).
    #[cfg(feature = "azure-dps")]
    pub fn configure_azure_dps(&self, dps: &device_api::azure_dps::AzureDps) {
        let etc = self.root.join("etc");
        crate::common::write_file(&etc.join("dps-ca.pem"), &dps.server_ca_pem(), 0o644);
        crate::common::write_file(&etc.join("factory-ca.pem"), &dps.device_root_pem(), 0o644);
        let config = format!(
            "profile = \"azure-dps\"\n[azure-dps]\nid_scope = \"{}\"\nendpoint = \"{}\"\nenrol_url = \"{}\"\ncacert = \"{}\"\nfactory_ca = \"{}\"\n",
            dps.id_scope(),
            dps.endpoint(),
            dps.enrol_url(),
            etc.join("dps-ca.pem").display(),
            etc.join("factory-ca.pem").display()
        );
        crate::common::write_file(&etc.join("lmp-device-register.toml"), &config, 0o644);
    }

    /// `softhsm2-util` with this fixture's configuration.
    pub fn softhsm_util(&self, args: &[&str]) -> Output {
        let output = Command::new("softhsm2-util")
            .args(args)
            .env("SOFTHSM2_CONF", &self.softhsm_conf)
            .output()
            .expect("softhsm2-util is installed with softhsm2");
        assert!(
            output.status.success(),
            "softhsm2-util {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Registration files in the sota dir (anything but directories).
    pub fn sota_files(&self) -> Vec<String> {
        let mut names: Vec<String> = match std::fs::read_dir(self.sota_dir()) {
            Ok(entries) => entries
                .map(|e| e.unwrap())
                .filter(|e| !e.file_type().unwrap().is_dir())
                .map(|e| e.file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    /// Opens this fixture's SoftHSM2 in the test process.
    pub fn open_softhsm(&self) -> SoftHsm {
        open_softhsm(&self.softhsm_conf)
    }

    /// Opens `module` in the test process with this fixture's module
    /// environment.
    pub fn open_module(&self, module: &str) -> SoftHsm {
        let env: Vec<(&str, &str)> = self
            .module_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        open_module(module, &env)
    }
}

/// Opens the SoftHSM2 that `conf` describes in the test process.
pub fn open_softhsm(conf: &Path) -> SoftHsm {
    open_module(MODULE, &[("SOFTHSM2_CONF", conf.to_str().unwrap())])
}

/// Opens a PKCS#11 module in the test process with `env` set. Modules read
/// their configuration from the environment when they are initialised, so
/// only one test at a time can hold one.
pub fn open_module(module: &str, env: &[(&str, &str)]) -> SoftHsm {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // Safe under the lock: no other thread of this process reads these
    // variables, and child processes get theirs explicitly.
    for (key, value) in env {
        std::env::set_var(key, value);
    }
    let ctx = Pkcs11::new(module).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    SoftHsm {
        ctx: Some(ctx),
        _guard: guard,
    }
}

/// SoftHSM2 loaded in the test process; finalised when dropped.
pub struct SoftHsm {
    ctx: Option<Pkcs11>,
    _guard: MutexGuard<'static, ()>,
}

impl SoftHsm {
    pub fn ctx(&self) -> &Pkcs11 {
        self.ctx.as_ref().unwrap()
    }

    /// Labels of the initialised tokens.
    pub fn token_labels(&self) -> Vec<String> {
        self.ctx()
            .get_slots_with_initialized_token()
            .unwrap()
            .into_iter()
            .map(|slot| self.ctx().get_token_info(slot).unwrap().label().to_string())
            .collect()
    }

    pub fn slot(&self, label: &str) -> Option<Slot> {
        self.ctx()
            .get_slots_with_initialized_token()
            .unwrap()
            .into_iter()
            .find(|slot| self.ctx().get_token_info(*slot).unwrap().label() == label)
    }

    /// A user session on the `aktualizr` token.
    pub fn login(&self, pin: &str) -> Session {
        self.login_to("aktualizr", pin)
    }

    /// A user session on the token labelled `label`.
    pub fn login_to(&self, label: &str, pin: &str) -> Session {
        let slot = self
            .slot(label)
            .unwrap_or_else(|| panic!("token {label} exists"));
        let session = self.ctx().open_rw_session(slot).unwrap();
        session
            .login(UserType::User, Some(&AuthPin::from(pin.to_string())))
            .unwrap();
        session
    }
}

impl Drop for SoftHsm {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            let _ = ctx.finalize();
        }
    }
}

/// What the test needs to know about one token object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectView {
    pub class: ObjectClass,
    pub label: String,
    pub id: Vec<u8>,
    pub attributes: Vec<Attribute>,
}

impl ObjectView {
    pub fn bool(&self, wanted: AttributeType) -> Option<bool> {
        self.attributes.iter().find_map(|a| match (wanted, a) {
            (AttributeType::Token, Attribute::Token(v))
            | (AttributeType::Private, Attribute::Private(v))
            | (AttributeType::Sensitive, Attribute::Sensitive(v))
            | (AttributeType::Extractable, Attribute::Extractable(v))
            | (AttributeType::Sign, Attribute::Sign(v))
            | (AttributeType::Verify, Attribute::Verify(v))
            | (AttributeType::Derive, Attribute::Derive(v)) => Some(*v),
            _ => None,
        })
    }

    pub fn bytes(&self, wanted: AttributeType) -> Option<Vec<u8>> {
        self.attributes.iter().find_map(|a| match (wanted, a) {
            (AttributeType::Value, Attribute::Value(v))
            | (AttributeType::EcPoint, Attribute::EcPoint(v))
            | (AttributeType::Subject, Attribute::Subject(v))
            | (AttributeType::Issuer, Attribute::Issuer(v))
            | (AttributeType::SerialNumber, Attribute::SerialNumber(v)) => Some(v.clone()),
            _ => None,
        })
    }
}

/// Every object visible to the logged-in user, with the attributes the
/// tests look at.
pub fn objects(session: &Session) -> Vec<ObjectView> {
    let handles = session.find_objects(&[]).unwrap();
    let mut views: Vec<ObjectView> = handles.into_iter().map(|h| view(session, h)).collect();
    views.sort_by_key(|v| (v.label.clone(), v.class.to_string()));
    views
}

pub fn view(session: &Session, handle: ObjectHandle) -> ObjectView {
    let basic = session
        .get_attributes(
            handle,
            &[
                AttributeType::Class,
                AttributeType::Label,
                AttributeType::Id,
            ],
        )
        .unwrap();
    let mut class = None;
    let mut label = String::new();
    let mut id = Vec::new();
    for attribute in basic {
        match attribute {
            Attribute::Class(c) => class = Some(c),
            Attribute::Label(l) => label = String::from_utf8(l).unwrap(),
            Attribute::Id(i) => id = i,
            _ => {}
        }
    }
    let class = class.unwrap();
    let wanted: &[AttributeType] = if class == ObjectClass::PRIVATE_KEY {
        &[
            AttributeType::Token,
            AttributeType::Private,
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::Sign,
            AttributeType::Derive,
        ]
    } else if class == ObjectClass::PUBLIC_KEY {
        &[
            AttributeType::Token,
            AttributeType::Verify,
            AttributeType::Derive,
            AttributeType::EcPoint,
        ]
    } else {
        &[
            AttributeType::Token,
            AttributeType::Value,
            AttributeType::Subject,
            AttributeType::Issuer,
            AttributeType::SerialNumber,
        ]
    };
    let attributes = session.get_attributes(handle, wanted).unwrap();
    ObjectView {
        class,
        label,
        id,
        attributes,
    }
}

/// The uncompressed point inside a CKA_EC_POINT (a DER OCTET STRING).
pub fn ec_point(value: &[u8]) -> Vec<u8> {
    yasna::parse_der(value, |r| r.read_bytes()).unwrap()
}

/// The DER of each certificate in a PEM text.
pub fn pem_certs(text: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(text.as_bytes())
        .map(|pem| pem.unwrap().contents)
        .collect()
}

/// ECDSA-SHA256 with the token's `tls` key, DER encoded, the way a TLS
/// stack needs it: SHA-256 here, CKM_ECDSA in the token.
pub fn sign_with_token(session: &Session, key: ObjectHandle, message: &[u8]) -> Vec<u8> {
    let digest = ring::digest::digest(&ring::digest::SHA256, message);
    let raw = session
        .sign(&Mechanism::Ecdsa, key, digest.as_ref())
        .unwrap();
    let (r, s) = raw.split_at(raw.len() / 2);
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_bigint_bytes(r, true);
            w.next().write_bigint_bytes(s, true);
        })
    })
}

/// The handle of the `tls` private key.
pub fn tls_private_key(session: &Session) -> ObjectHandle {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"tls".to_vec()),
        ])
        .unwrap();
    assert_eq!(found.len(), 1, "exactly one tls private key");
    found[0]
}
