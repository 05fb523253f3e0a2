//! The fleet backends ("profiles"). Each one is a module behind [`Backend`]:
//! it builds its requests from the identity and key the flow hands it,
//! interprets the answers, and returns the files to store. It never writes
//! the file system itself; the flow owns the lock, the pending identity,
//! retries, the commit, `--json` and exit codes.
//!
//! The types a profile returns live here, beside the trait, so that no
//! profile imports `flow` and no shared piece imports a profile.
//!
//! A profile is registered by one line of [`for_each_profile!`]; its module
//! declares its settings and resolves them ([`FromSettings`]). Everything
//! else that lists the profiles (the [`Profile`] enum, `--profile`, the
//! flags, the docs' tables) is made from that list. `docs/adding-a-profile.md`
//! walks through adding one.

use crate::cli::CommandLine;
use crate::config::{Common, Declarations, Environment, Resolver, Setting, Source};
use crate::error::{Error, Result};
use crate::keys::pkcs11::Token;
use crate::keys::{DeviceKey, KeySpec};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Every profile, one line each: its name (which is also its table in the
/// config file and, for all but lmp, its cargo feature) and its type, in
/// its module of the same name. A line that ends in `in tests` is a profile
/// only tests build: builds without it do not know its name.
macro_rules! for_each_profile {
    ($then:ident ! $args:tt) => {
        $then! { $args
            "lmp" => lmp::Lmp,
            #[cfg(feature = "losant")] "losant" => losant::Losant,
            #[cfg(feature = "tii")] "tii" => tii::Tii,
            #[cfg(feature = "azure-dps")] "azure-dps" => azure_dps::AzureDps,
            #[cfg(feature = "example")] "example" => example::Example in tests,
        }
    };
}

/// Whether images may have a profile: all but those only tests build.
macro_rules! shipped {
    () => {
        true
    };
    (tests) => {
        false
    };
}

/// The modules, the [`Profile`] enum and the [`REGISTERED`] list.
macro_rules! declare_profiles {
    ([] $( $(#[$cfg:meta])* $name:literal => $module:ident :: $type:ident $(in $only:ident)?, )*) => {
        $( $(#[$cfg])* pub mod $module; )*

        /// The profile this run registers with.
        // One value per run: the size of its largest variant costs nothing.
        #[allow(clippy::large_enum_variant)]
        pub(crate) enum Profile {
            $( $(#[$cfg])* $type($module::$type), )*
        }

        /// Every profile name and whether images may have it.
        const ALL: &[(&str, bool)] = &[$( ($name, shipped!($($only)?)) ),*];

        /// The profiles of this build.
        pub(crate) const REGISTERED: &[Registration] = &[
            $( $(#[$cfg])* Registration {
                name: $name,
                about: <$module::$type as FromSettings>::ABOUT,
                settings: <$module::$type as FromSettings>::SETTINGS,
                resolve: |r| <$module::$type as FromSettings>::resolve(r).map(Profile::$type),
                locate: <$module::$type as FromSettings>::locate,
                registration: <$module::$type as FromSettings>::registration,
                partway: <$module::$type as FromSettings>::partway,
            }, )*
        ];

        impl Profile {
            pub fn name(&self) -> &'static str {
                match self {
                    $( $(#[$cfg])* Profile::$type(_) => $name, )*
                }
            }
        }
    };
}

for_each_profile!(declare_profiles![]);

/// The arms of [`dispatch!`].
macro_rules! dispatch_arms {
    ([$self:expr, $profile:ident => $body:expr]
     $( $(#[$cfg:meta])* $name:literal => $module:ident :: $type:ident $(in $only:ident)?, )*) => {
        match $self {
            $( $(#[$cfg])* Profile::$type($profile) => $body, )*
        }
    };
}

/// Calls the same method on whichever profile this is.
macro_rules! dispatch {
    ($self:expr, $profile:ident => $body:expr) => {
        for_each_profile!(dispatch_arms![$self, $profile => $body])
    };
}

/// How a profile comes from the settings.
pub(crate) trait FromSettings: Backend + Sized {
    /// One line for the docs.
    const ABOUT: &'static str;
    /// Its settings, in the order the docs list them.
    const SETTINGS: Declarations;
    /// Its settings, resolved and checked: `None` when one is missing or
    /// wrong (the resolver has the problems).
    fn resolve(r: &mut Resolver<'_>) -> Option<Self>;
    /// Where its state lives, resolved alone: `--status` reads every
    /// profile's state whatever else is configured. `None` when the
    /// configured place is unusable.
    fn locate(r: &mut Resolver<'_>) -> Option<StateLocation>;
    /// What its state dir records about a registration (`--status`).
    fn registration(location: &StateLocation) -> crate::status::Registration;
    /// A registration part of the way without a pending identity (a stage
    /// the profile stores on its own): the device's id and what is done.
    fn partway(_dir: &Path) -> Option<(String, &'static str)> {
        None
    }
}

/// Where a profile keeps its state.
pub(crate) struct StateLocation {
    pub dir: std::path::PathBuf,
    /// Files whose presence means "registered" ([`Backend::markers`]).
    pub markers: Vec<String>,
}

impl StateLocation {
    pub fn new(dir: std::path::PathBuf, markers: &[&str]) -> StateLocation {
        StateLocation {
            dir,
            markers: markers.iter().map(|m| m.to_string()).collect(),
        }
    }
}

/// Every profile of this build and where its state lives (when that can
/// be told), in the order of [`for_each_profile!`].
pub(crate) fn state_locations(
    command_line: &CommandLine,
    env: &Environment,
) -> Result<Vec<(&'static str, StateLocation)>> {
    let mut found = Vec::new();
    for registration in REGISTERED {
        let mut r = Resolver::new(command_line, env, &all_names())?;
        r.enter_table(registration.name, registration.settings);
        if let Some(location) = (registration.locate)(&mut r) {
            found.push((registration.name, location));
        }
    }
    Ok(found)
}

/// Every profile name this build knows: its own profiles and those a
/// smaller build leaves out, so that a config file written for a full
/// build still reads.
pub(crate) fn all_names() -> Vec<&'static str> {
    let built = |name: &str| REGISTERED.iter().any(|p| p.name == name);
    ALL.iter()
        .filter(|(name, shipped)| *shipped || built(name))
        .map(|(name, _)| *name)
        .collect()
}

/// A profile of this build, as `--profile` and the docs know it.
pub(crate) struct Registration {
    pub name: &'static str,
    pub about: &'static str,
    pub settings: Declarations,
    resolve: fn(&mut Resolver<'_>) -> Option<Profile>,
    locate: fn(&mut Resolver<'_>) -> Option<StateLocation>,
    pub registration: fn(&StateLocation) -> crate::status::Registration,
    pub partway: fn(&Path) -> Option<(String, &'static str)>,
}

/// The profile of this build called `name`, or why there is none.
fn registered(name: String, what: &str) -> std::result::Result<&'static Registration, String> {
    if let Some(registration) = REGISTERED.iter().find(|p| p.name == name) {
        return Ok(registration);
    }
    let known = all_names();
    if known.contains(&name.as_str()) {
        Err(format!(
            "{what}: this build has no {name} profile (it was built without the cargo feature {name})"
        ))
    } else {
        Err(format!(
            "{what}: unknown profile {name:?} (known: {})",
            known.join(", ")
        ))
    }
}

const PROFILE: Setting<String, &'static Registration> = Setting::new(
    "profile",
    "Registration profile (fleet backend)",
    &[
        crate::config::long("profile", "PROFILE"),
        Source::Env("REGISTER_PROFILE"),
        Source::TopKey("profile"),
        Source::Default("lmp"),
    ],
)
.check(registered);

/// The settings every profile shares.
pub(crate) const SHARED: Declarations = &[&PROFILE];

/// Resolves the settings of a run: the profile's and the shared ones, with
/// every problem reported at once. It reads the device's files and changes
/// nothing, so a command can resolve without registering.
pub(crate) fn resolve(command_line: &CommandLine, env: &Environment) -> Result<(Common, Profile)> {
    let mut r = Resolver::new(command_line, env, &all_names())?;
    let (_, profile, uses_key) = resolve_profile(&mut r);
    let common = r.finish(uses_key)?;
    let profile = profile.ok_or_else(|| Error::internal("the profile settings are incomplete"))?;
    Ok((common, profile))
}

/// The chosen profile and its settings; whether it keeps a key.
fn resolve_profile(r: &mut Resolver<'_>) -> (&'static Registration, Option<Profile>, bool) {
    let chosen = r.get(&PROFILE).unwrap_or(&REGISTERED[0]);
    r.enter_table(chosen.name, chosen.settings);
    let profile = (chosen.resolve)(r);
    let uses_key = profile.as_ref().is_some_and(|p| p.key_spec().is_some());
    refuse_foreign_flags(r, chosen, uses_key);
    (chosen, profile, uses_key)
}

/// The settings of a run as `--check` reports them: every problem and
/// warning as its own line, and the profile when nothing is wrong.
pub(crate) struct Resolution {
    pub profile: &'static str,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    pub resolved: Option<(Common, Profile)>,
}

/// Resolves like [`resolve`], keeping the problems apart.
pub(crate) fn resolve_for_check(
    command_line: &CommandLine,
    env: &Environment,
) -> Result<Resolution> {
    let mut r = Resolver::new(command_line, env, &all_names())?;
    let (chosen, profile, uses_key) = resolve_profile(&mut r);
    if uses_key {
        // Its problems are found by `finish`; resolved now to be listed.
        r.hsm();
    }
    let (problems, warnings) = (r.problems().to_vec(), r.warnings().to_vec());
    let resolved = match (r.finish(uses_key), profile) {
        (Ok(common), Some(profile)) => Some((common, profile)),
        _ => None,
    };
    Ok(Resolution {
        profile: chosen.name,
        problems,
        warnings,
        resolved,
    })
}

/// Whether the declared setting called `name` is a secret.
pub(crate) fn is_secret_setting(name: &str) -> bool {
    all_declarations().any(|setting| setting.name() == name && setting.is_secret())
}

/// The flags of `settings`.
fn flags(settings: Declarations) -> impl Iterator<Item = &'static str> {
    settings
        .iter()
        .filter_map(|setting| setting.flag())
        .map(|flag| flag.long)
}

/// A flag of another profile, or of a key for a profile that keeps none,
/// is refused: it would be silently ignored.
fn refuse_foreign_flags(r: &mut Resolver<'_>, chosen: &Registration, uses_key: bool) {
    let given = |long: &str| r.command_line().value(long).is_some();
    let mut foreign = Vec::new();
    for other in REGISTERED.iter().filter(|p| p.name != chosen.name) {
        for long in flags(other.settings) {
            let named = foreign.iter().any(|(l, _): &(&str, String)| *l == long);
            if given(long) && !named && !flags(chosen.settings).any(|l| l == long) {
                let problem = format!(
                    "--{long} belongs to the {} profile, not {}",
                    other.name, chosen.name
                );
                foreign.push((long, problem));
            }
        }
    }
    if !uses_key {
        for long in flags(crate::config::HSM_SETTINGS).filter(|long| given(long)) {
            let problem = format!(
                "--{long} is not used by the {} profile, which keeps no key",
                chosen.name
            );
            foreign.push((long, problem));
        }
    }
    for (_, problem) in foreign {
        r.problem(problem);
    }
}

/// Every declared setting: each profile's (lmp's first: the C++ tool's
/// flags lead `--help`), then the shared ones.
fn all_declarations() -> impl Iterator<Item = &'static dyn crate::config::Describe> {
    REGISTERED
        .iter()
        .map(|p| p.settings)
        .chain([crate::config::HSM_SETTINGS, SHARED])
        .flatten()
        .copied()
}

/// The flags of the declared settings, each once, for the command line.
pub(crate) fn declared_flags() -> Vec<clap::Arg> {
    let mut seen = Vec::new();
    let mut args = Vec::new();
    for setting in all_declarations() {
        match setting.flag() {
            Some(flag) if !seen.contains(&flag.long) => seen.push(flag.long),
            _ => continue,
        }
        args.extend(crate::cli::declared_arg(setting));
    }
    args
}

/// The environment variables the settings read, each with what it sets
/// and for which profile, for the man page.
pub fn environment_variables() -> Vec<(&'static str, String)> {
    let mut variables: Vec<(&'static str, String)> = Vec::new();
    let scoped = REGISTERED
        .iter()
        .map(|p| (p.settings, p.name))
        .chain([(SHARED, "every profile")]);
    for (settings, scope) in scoped {
        for setting in settings {
            for source in setting.sources() {
                if let Source::Env(var) = source {
                    let help = setting.help().trim_end_matches('.');
                    let words = match setting.switch() {
                        true => ": 1/true/yes/on or 0/false/no/off",
                        false => "",
                    };
                    variables.push((var, format!("{help}{words} ({scope})")));
                }
            }
        }
    }
    variables
}

/// The settings tables of `docs/configuration.md`, made from the
/// declarations: (marker, Markdown) for the shared settings, the settings
/// of a key in a token, and each profile of this build.
pub fn settings_tables() -> Vec<(String, String)> {
    use crate::config::docs::markdown_table;
    let mut tables = vec![
        ("shared".to_string(), markdown_table(SHARED, "")),
        (
            "hsm".to_string(),
            markdown_table(crate::config::HSM_SETTINGS, ""),
        ),
    ];
    for profile in REGISTERED {
        let table = markdown_table(profile.settings, profile.name);
        tables.push((
            profile.name.to_string(),
            format!("{}.\n\n{table}", profile.about),
        ));
    }
    tables
}

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

/// A service a profile talks to, for `--check`.
pub(crate) struct Endpoint {
    /// What it is, as the settings name it ("DEVICE_API").
    pub what: &'static str,
    pub url: reqwest::Url,
    /// The CA certificates its TLS is checked with; the system roots when
    /// `None`.
    pub cacert: Option<crate::config::CaBundle>,
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
    #[cfg(feature = "two-stage")]
    pub stored: bool,
    /// Stores the first stage of a registration that has two.
    #[cfg(feature = "two-stage")]
    pub checkpoint: &'a dyn Checkpoint,
}

/// For registrations in two stages, where the first stage's result must
/// outlive a failure of the second (a certificate from the factory, then a
/// service that may not know the device yet): the flow stores the first
/// stage's files at once, with the device key.
#[cfg(feature = "two-stage")]
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
    /// costs one more request. A two-stage registration counts on it: its
    /// stored first stage asks the second again until it is answered.
    #[cfg(feature = "two-stage")]
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
    /// The services a registration would talk to, for `--check`.
    fn endpoints(&self) -> Vec<Endpoint>;
    /// Files holding a secret that no setting's origin names, for
    /// `--check`'s file modes.
    fn secret_files(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
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
    fn endpoints(&self) -> Vec<Endpoint> {
        dispatch!(self, p => p.endpoints())
    }
    fn secret_files(&self) -> Vec<std::path::PathBuf> {
        dispatch!(self, p => p.secret_files())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{table_problems, Describe};

    /// A value of the TOML type the docs name.
    fn sample(toml_type: &str) -> toml::Value {
        match toml_type {
            "boolean" => toml::Value::Boolean(true),
            "integer" => toml::Value::Integer(60),
            "array of strings" => toml::Value::Array(vec!["a".into()]),
            "absolute path" => toml::Value::String("/etc/x".into()),
            _ => toml::Value::String("x".into()),
        }
    }

    fn keys(setting: &dyn Describe) -> impl Iterator<Item = &'static str> {
        setting.sources().iter().filter_map(|source| match source {
            Source::Key(key) => Some(*key),
            _ => None,
        })
    }

    #[test]
    fn every_declared_key_takes_its_type_and_no_other_key_is_taken() {
        for profile in REGISTERED {
            let mut table = toml::Table::new();
            for setting in profile.settings {
                for key in keys(*setting) {
                    table.insert(key.into(), sample(setting.toml_type()));
                }
            }
            assert!(!table.is_empty(), "{} reads no key", profile.name);
            assert_eq!(
                table_problems(profile.settings, &table),
                Vec::<String>::new()
            );
            let (key, _) = table.iter().next().unwrap();
            let key = key.clone();
            // No declared type takes an array of integers.
            table.insert(key.clone(), toml::Value::Array(vec![1.into()]));
            table.insert("no_such_key".into(), sample("string"));
            let problems = table_problems(profile.settings, &table);
            assert_eq!(problems.len(), 2, "{problems:?}");
            let wrong_type = format!("{key}: invalid type");
            assert!(
                problems.iter().any(|p| p.starts_with(&wrong_type)),
                "{problems:?}"
            );
            assert!(
                problems.contains(&"unknown key no_such_key".into()),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn names_keys_and_flags_are_declared_once_per_profile() {
        for profile in REGISTERED {
            let settings = || [profile.settings, SHARED, crate::config::HSM_SETTINGS].concat();
            let mut names: Vec<&str> = settings().iter().map(|s| s.name()).collect();
            let mut keys: Vec<&str> = settings().iter().flat_map(|s| keys(*s)).collect();
            let flags = settings()
                .iter()
                .filter_map(|s| s.flag())
                .copied()
                .collect::<Vec<_>>();
            let mut longs: Vec<&str> = flags.iter().map(|f| f.long).collect();
            let mut shorts: Vec<char> = flags.iter().filter_map(|f| f.short).collect();
            let count = (names.len(), keys.len(), longs.len(), shorts.len());
            names.sort();
            names.dedup();
            keys.sort();
            keys.dedup();
            longs.sort();
            longs.dedup();
            shorts.sort();
            shorts.dedup();
            let unique = (names.len(), keys.len(), longs.len(), shorts.len());
            assert_eq!(count, unique, "{}: names, keys, flags", profile.name);
        }
    }

    #[test]
    fn a_profile_resolves_only_settings_it_declares() {
        let root = tempfile::tempdir().unwrap();
        let root_arg = root.path().to_str().unwrap();
        let command_line = CommandLine::try_parse_from(["x", "--root", root_arg]).unwrap();
        let env = Environment::default();
        for profile in REGISTERED {
            let mut r = Resolver::new(&command_line, &env, &all_names()).unwrap();
            r.enter_table(profile.name, profile.settings);
            let _ = (profile.resolve)(&mut r);
            r.hsm();
            let declared = [profile.settings, SHARED, crate::config::HSM_SETTINGS].concat();
            for name in &r.consulted {
                assert!(
                    declared.iter().any(|s| s.name() == *name),
                    "{}: {name} is resolved but not declared",
                    profile.name
                );
            }
        }
    }
}
