//! The fleet backends ("profiles"). Each one is a module behind [`Backend`]:
//! it builds its requests from the identity and key the flow hands it,
//! interprets the answers, and returns the files to store. It never writes
//! the file system itself; the flow owns the lock, the pending identity,
//! retries, the commit, `--json` and exit codes.
//!
//! The types a profile returns live here, beside the trait, so that no
//! profile imports `flow` and no shared piece imports a profile.
//!
//! Adding a profile `foo` (cargo feature `foo`, on by default):
//! - `cli::ProfileName::Foo` (`#[cfg(feature = "foo")]`), its `as_str`, and
//!   its flags in `cli::profile_of_flag`;
//! - `profiles/foo/`: a settings resolver reading the `[foo]` table through
//!   `config::Resolver::section` into a `#[serde(deny_unknown_fields)]`
//!   struct, and a type implementing [`Backend`];
//! - a `Profile::Foo` variant, its arm in `dispatch!`, `Profile::resolve`
//!   and `Profile::name`.

#[cfg(feature = "azure-dps")]
pub mod azure_dps;
pub mod lmp;
#[cfg(feature = "losant")]
pub mod losant;
#[cfg(feature = "tii")]
pub mod tii;

use crate::cli::ProfileName;
use crate::config::{Common, Resolver};
use crate::error::Result;
use crate::keys::pkcs11::Token;
use crate::keys::{DeviceKey, KeySpec};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A file a profile asks the flow to store in its state dir.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct StoredFile {
    pub name: String,
    pub mode: u32,
    pub contents: String,
}

impl StoredFile {
    pub fn new(name: impl Into<String>, mode: u32, contents: impl Into<String>) -> Self {
        StoredFile {
            name: name.into(),
            mode,
            contents: contents.into(),
        }
    }
}

impl Drop for StoredFile {
    fn drop(&mut self) {
        // Keys, PINs in sota.toml, access secrets: wiped, whatever the file.
        zeroize::Zeroize::zeroize(&mut self.contents);
    }
}

impl std::fmt::Debug for StoredFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredFile({} {:o})", self.name, self.mode)
    }
}

/// What the server's acceptance amounts to on the device. The flow records
/// it durably before storing it, so that a failure while storing never
/// loses a device the fleet already holds.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Answer {
    /// In the order they are installed: whatever starts other services
    /// when it appears comes last.
    pub files: Vec<StoredFile>,
    /// Names removed when the answer is installed (state of an identity
    /// being replaced).
    pub obsolete: Vec<String>,
    /// A PEM certificate to store in the token beside the key.
    pub token_certificate: Option<String>,
    /// The final log line, e.g. "registered device <id> (<name>)".
    pub summary: String,
    /// Fields for `--json` (never a secret).
    pub report: serde_json::Map<String, serde_json::Value>,
}

/// The fields of a `json!({...})` object, for [`Answer::report`] and
/// [`Backend::registered_report`].
pub(crate) fn report_fields(
    object: serde_json::Value,
) -> serde_json::Map<String, serde_json::Value> {
    match object {
        serde_json::Value::Object(fields) => fields,
        _ => serde_json::Map::new(),
    }
}

/// The outcome of one step after the commit (a program run, a service
/// started), for the log and `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum StepOutcome {
    Done,
    Skipped,
    Failed(String),
}

/// What the flow hands a profile for its network steps.
pub(crate) struct Enrolment<'a> {
    pub common: &'a Common,
    /// The device's identity (UUID, manufacturer id, registration id).
    pub id: &'a str,
    /// The device key, for profiles that have one.
    pub key: Option<&'a DeviceKey>,
    /// The identity comes from an earlier, unfinished attempt.
    pub resumed: bool,
    /// The identity is the one an earlier run stored through the
    /// [`Checkpoint`] ([`Backend::stored_identity`]): its files are in the
    /// state dir.
    // Only the profiles that register in two stages read these two.
    #[cfg_attr(not(feature = "azure-dps"), allow(dead_code))]
    pub stored: bool,
    /// Stores the first stage of a registration that has two.
    #[cfg_attr(not(feature = "azure-dps"), allow(dead_code))]
    pub checkpoint: &'a dyn Checkpoint,
}

/// For registrations in two stages, where the first stage's result must
/// outlive a failure of the second (a certificate from the factory, then a
/// service that may not know the device yet): the flow stores the first
/// stage's files at once, with the device key.
#[cfg_attr(not(feature = "azure-dps"), allow(dead_code))]
pub(crate) trait Checkpoint {
    /// Installs `files` (and a software key) in the state dir now. From then
    /// on they are the device's identity: the flow never discards it, and
    /// later runs continue with it ([`Backend::stored_identity`]) until a
    /// run with `--force`. An error means nothing is stored and the identity
    /// is kept pending, as after an unknown outcome.
    fn store_identity(&self, files: Vec<StoredFile>) -> Result<()>;
}

/// What a profile's service does when an identity it accepted asks again:
/// what an answer the device could not store costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answers {
    /// It answers again (DPS assigns the same device again): a lost answer
    /// costs one more request.
    // Only azure-dps answers again so far.
    #[cfg_attr(not(feature = "azure-dps"), allow(dead_code))]
    Again,
    /// It answers once, or may (Losant's credentials, TII's fleet-manager
    /// result, a factory API that answers 409 for a known device): an answer
    /// the device does not store is lost, and the device with it. The flow
    /// keeps trying to store it, and says plainly when it cannot.
    Once {
        /// Where the device must then be deleted, e.g. "the Losant
        /// application".
        service: &'static str,
    },
}

/// One fleet backend.
pub(crate) trait Backend {
    /// Where the profile's files live; the flow locks it and keeps the
    /// pending identity there.
    fn state_dir(&self) -> &Path;
    /// Files whose presence means "registered".
    fn markers(&self) -> Vec<&str>;
    /// The key the profile needs, if any.
    fn key_spec(&self) -> Option<KeySpec>;
    /// Checks beyond the flow's own, before any key or request is made.
    fn preflight(&self, common: &Common) -> Result<()>;
    /// Logs what is about to happen (after the pre-flight has passed).
    fn announce(&self);
    /// `--json` fields describing an existing registration.
    fn registered_report(&self) -> serde_json::Map<String, serde_json::Value>;
    /// An identity asked for by configuration; a pending identity with
    /// another id is abandoned.
    fn configured_id(&self) -> Option<&str>;
    /// A new identity, when there is no pending one.
    fn new_id(&self, token: Option<&Token>) -> String;
    /// The id of an identity stored by an earlier run through the
    /// [`Checkpoint`] (its first-stage files are in the state dir, and a
    /// software key beside them), which this run continues.
    /// Only a missing file means "none"; a file that cannot be read is an
    /// error, so that a stored identity is never taken for absent and
    /// replaced.
    fn stored_identity(&self) -> Result<Option<String>> {
        Ok(None)
    }
    /// Whether the service answers an accepted identity again.
    fn answers(&self) -> Answers;
    /// The network steps: what the server accepted, ready to store.
    async fn enrol(&self, enrolment: Enrolment<'_>) -> Result<Answer>;
    /// Steps after the commit (the key and token are closed by then).
    fn after_commit(&self) -> Vec<(&'static str, StepOutcome)>;
}

/// The profile this run registers with.
// One value per run: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Profile {
    Lmp(lmp::Lmp),
    #[cfg(feature = "losant")]
    Losant(losant::Losant),
    #[cfg(feature = "tii")]
    Tii(tii::Tii),
    #[cfg(feature = "azure-dps")]
    AzureDps(azure_dps::AzureDps),
}

/// Calls the same method on whichever profile this is.
macro_rules! dispatch {
    ($self:expr, $profile:ident => $body:expr) => {
        match $self {
            Profile::Lmp($profile) => $body,
            #[cfg(feature = "losant")]
            Profile::Losant($profile) => $body,
            #[cfg(feature = "tii")]
            Profile::Tii($profile) => $body,
            #[cfg(feature = "azure-dps")]
            Profile::AzureDps($profile) => $body,
        }
    };
}

/// Where a profile keeps its state, resolved without its other settings,
/// so that `--status` can read every profile's state on any device.
pub(crate) struct StateLocation {
    pub dir: std::path::PathBuf,
    /// Files whose presence means "registered" ([`Backend::markers`]).
    pub markers: Vec<String>,
}

impl StateLocation {
    /// The state dir of profile `name`; `None` when its configured location
    /// is unusable (the registration would say why).
    pub fn of(r: &mut Resolver<'_>, name: ProfileName) -> Option<StateLocation> {
        let markers = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        Some(match name {
            ProfileName::Lmp => StateLocation {
                dir: lmp::config::locate(r),
                markers: markers(lmp::REGISTERED_MARKERS),
            },
            #[cfg(feature = "losant")]
            ProfileName::Losant => {
                let (dir, credentials) = losant::config::locate(r)?;
                StateLocation {
                    dir,
                    markers: vec![credentials],
                }
            }
            #[cfg(feature = "tii")]
            ProfileName::Tii => StateLocation {
                dir: tii::config::locate(r),
                markers: markers(tii::REGISTERED_MARKERS),
            },
            #[cfg(feature = "azure-dps")]
            ProfileName::AzureDps => StateLocation {
                dir: azure_dps::config::locate(r),
                markers: markers(&[azure_dps::ASSIGNMENT_FILE]),
            },
        })
    }
}

impl Profile {
    /// The settings of profile `name`, through the shared resolver.
    pub fn resolve(r: &mut Resolver<'_>, name: ProfileName) -> Option<Profile> {
        match name {
            ProfileName::Lmp => lmp::Lmp::resolve(r).map(Profile::Lmp),
            #[cfg(feature = "losant")]
            ProfileName::Losant => losant::Losant::resolve(r).map(Profile::Losant),
            #[cfg(feature = "tii")]
            ProfileName::Tii => tii::Tii::resolve(r).map(Profile::Tii),
            #[cfg(feature = "azure-dps")]
            ProfileName::AzureDps => azure_dps::AzureDps::resolve(r).map(Profile::AzureDps),
        }
    }

    pub fn name(&self) -> ProfileName {
        match self {
            Profile::Lmp(_) => ProfileName::Lmp,
            #[cfg(feature = "losant")]
            Profile::Losant(_) => ProfileName::Losant,
            #[cfg(feature = "tii")]
            Profile::Tii(_) => ProfileName::Tii,
            #[cfg(feature = "azure-dps")]
            Profile::AzureDps(_) => ProfileName::AzureDps,
        }
    }
}

impl Backend for Profile {
    fn state_dir(&self) -> &Path {
        dispatch!(self, p => p.state_dir())
    }
    fn markers(&self) -> Vec<&str> {
        dispatch!(self, p => p.markers())
    }
    fn key_spec(&self) -> Option<KeySpec> {
        dispatch!(self, p => p.key_spec())
    }
    fn preflight(&self, common: &Common) -> Result<()> {
        dispatch!(self, p => p.preflight(common))
    }
    fn announce(&self) {
        dispatch!(self, p => p.announce())
    }
    fn registered_report(&self) -> serde_json::Map<String, serde_json::Value> {
        dispatch!(self, p => p.registered_report())
    }
    fn configured_id(&self) -> Option<&str> {
        dispatch!(self, p => p.configured_id())
    }
    fn new_id(&self, token: Option<&Token>) -> String {
        dispatch!(self, p => p.new_id(token))
    }
    fn stored_identity(&self) -> Result<Option<String>> {
        dispatch!(self, p => p.stored_identity())
    }
    fn answers(&self) -> Answers {
        dispatch!(self, p => p.answers())
    }
    async fn enrol(&self, enrolment: Enrolment<'_>) -> Result<Answer> {
        dispatch!(self, p => p.enrol(enrolment).await)
    }
    fn after_commit(&self) -> Vec<(&'static str, StepOutcome)> {
        dispatch!(self, p => p.after_commit())
    }
}
