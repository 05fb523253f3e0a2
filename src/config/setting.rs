//! Settings as data: each setting is declared once, as a [`Setting`] — its
//! name, its sources in order of precedence, how a value is read and checked,
//! whether it is a secret, and its help text. The [`Resolver`] walks the
//! sources; `--help`, the man page and the tables of `docs/configuration.md`
//! are made from the same declarations.
//!
//! Why our own and not a configuration crate: clap's `env` reads the process
//! environment at parse time (the agent resolves from one snapshot that tests
//! can replace), stops at the first bad value (the agent reports every
//! problem of a run at once) and knows only flag > environment > default,
//! while the agent's order puts the config file and the device's own files
//! between the environment and the defaults. figment merges providers into
//! one tree that serde then extracts: it would need a provider of our own for
//! each device file (os-release, `/etc/sota/tag`, `/etc/sota/hsm`, the MAC
//! address), stops at the first error of an extraction, reads the process
//! environment, and brings a second TOML parser (`toml_edit`) beside `toml`.
//! So clap parses the command line (and still builds `--help`, the man page
//! and the completions, from these declarations), and this small module does
//! the rest with what the agent already links.
//!
//! [`Resolver`]: super::Resolver

use super::Resolver;
use crate::secret::Secret;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

/// A command-line flag.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    pub long: &'static str,
    pub short: Option<char>,
    /// The placeholder of its value in `--help`.
    pub value_name: &'static str,
}

/// A flag with a short form, as the C++ tool had most of them.
pub const fn flag(long: &'static str, short: char, value_name: &'static str) -> Source {
    Source::Flag(Flag {
        long,
        short: Some(short),
        value_name,
    })
}

/// A flag with only a long form.
pub const fn long(long: &'static str, value_name: &'static str) -> Source {
    Source::Flag(Flag {
        long,
        short: None,
        value_name,
    })
}

/// Reads a source that needs code of its own: `Ok(None)` when it has no
/// value, `Err` when it is broken (the problem is recorded already).
pub type DeviceRead = fn(&mut Resolver<'_>) -> Result<Option<Found<Raw>>, super::Reported>;

/// Where a value may come from. A setting lists its sources in order of
/// precedence; the first that has a value decides.
pub enum Source {
    /// A command-line flag.
    Flag(Flag),
    /// An environment variable (an empty one counts as unset).
    Env(&'static str),
    /// A key of the profile's table in the config file.
    Key(&'static str),
    /// A key at the top of the config file, outside the profiles' tables.
    TopKey(&'static str),
    /// A variable of `/etc/os-release`.
    OsRelease(&'static str),
    /// A device file that holds one line, e.g. `etc/sota/tag` (under
    /// `--root`); `what` names it in messages.
    Line {
        path: &'static str,
        what: &'static str,
    },
    /// A device source with its own parsing (`/etc/sota/hsm`, the MAC
    /// address of a network card, ...); `doc` says what it is in the docs.
    Device { doc: &'static str, read: DeviceRead },
    /// A value the profile hands the resolver when it resolves the setting,
    /// e.g. a claim of a token it has just read; `doc` says what it is.
    Given(&'static str),
    /// Set when the agent was built (`option_env!`), e.g. by the Yocto recipe.
    Build {
        var: &'static str,
        value: Option<&'static str>,
    },
    /// A default path under `--root`, e.g. `var/sota`.
    UnderRoot(&'static str),
    /// The built-in default.
    Default(&'static str),
}

/// A value as a source holds it, before it is read as the setting's type.
pub enum Raw {
    /// From the command line, the environment or a device file.
    Text(OsString),
    /// From the config file, typed by TOML.
    Toml(toml::Value),
}

impl Raw {
    pub fn text(text: impl Into<OsString>) -> Raw {
        Raw::Text(text.into())
    }

    /// Empty, or only white space.
    pub fn is_blank(&self) -> bool {
        match self {
            Raw::Text(text) => text.to_str().is_some_and(|t| t.trim().is_empty()),
            Raw::Toml(value) => value.as_str().is_some_and(|t| t.trim().is_empty()),
        }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        // A raw value may be a PIN or a token: wiped, whatever it was.
        if let Raw::Text(text) = self {
            use std::os::unix::ffi::OsStringExt;
            zeroize::Zeroize::zeroize(&mut std::mem::take(text).into_vec());
        }
    }
}

/// What kind of source a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    CommandLine,
    Environment,
    ConfigFile,
    /// A device file or another source with its own parsing.
    Device,
    /// Set when the agent was built.
    Build,
    /// A built-in default.
    Default,
}

/// A value and where it came from.
#[derive(Debug)]
pub struct Found<T> {
    pub value: T,
    /// The source as messages and the log name it: `--factory`,
    /// `environment DEVICE_FACTORY`, `/etc/x.toml [lmp] factory`, ...
    pub from: String,
    pub kind: Kind,
}

impl<T> Found<T> {
    pub fn new(value: T, from: impl Into<String>, kind: Kind) -> Self {
        Found {
            value,
            from: from.into(),
            kind,
        }
    }

    /// From a device source (the usual answer of a [`DeviceRead`]).
    pub fn device(value: T, from: impl Into<String>) -> Self {
        Found::new(value, from, Kind::Device)
    }
}

/// How a setting's type is read from text and from TOML.
pub trait Value: Sized {
    /// The TOML type of its config-file key, as the docs name it.
    const TOML_TYPE: &'static str = "string";
    /// Its flag takes an optional `1/true/yes/on`, `0/false/no/off` (the
    /// C++ tool's `--force 1` form) and means "on" without one.
    const SWITCH: bool = false;
    /// It names a file or directory (shells complete it so).
    const PATH: bool = false;

    /// `what` names the source in the error.
    fn from_text(text: &str, what: &str) -> Result<Self, String>;

    fn from_os(text: &OsStr, what: &str) -> Result<Self, String> {
        match text.to_str() {
            Some(text) => Self::from_text(text, what),
            None => Err(format!("{what}: not valid UTF-8")),
        }
    }

    fn from_toml(value: toml::Value, what: &str) -> Result<Self, String>;

    fn from_raw(raw: Raw, what: &str) -> Result<Self, String> {
        match raw {
            Raw::Text(ref text) => Self::from_os(text, what),
            Raw::Toml(ref value) => Self::from_toml(value.clone(), what),
        }
    }
}

/// A TOML value as `T`, with serde's own words for a wrong type.
fn deserialize<T: serde::de::DeserializeOwned>(
    value: toml::Value,
    what: &str,
) -> Result<T, String> {
    value
        .try_into()
        .map_err(|e: toml::de::Error| format!("{what}: {}", e.message().trim()))
}

impl Value for String {
    fn from_text(text: &str, _what: &str) -> Result<Self, String> {
        Ok(text.to_string())
    }
    fn from_toml(value: toml::Value, what: &str) -> Result<Self, String> {
        deserialize(value, what)
    }
}

impl Value for Secret {
    fn from_text(text: &str, _what: &str) -> Result<Self, String> {
        Ok(Secret::new(text))
    }
    fn from_toml(value: toml::Value, what: &str) -> Result<Self, String> {
        deserialize::<String>(value, what).map(Secret::new)
    }
}

impl Value for PathBuf {
    const TOML_TYPE: &'static str = "absolute path";
    const PATH: bool = true;
    fn from_text(text: &str, _what: &str) -> Result<Self, String> {
        Ok(PathBuf::from(text))
    }
    fn from_os(text: &OsStr, _what: &str) -> Result<Self, String> {
        Ok(PathBuf::from(text))
    }
    /// A relative path in the config file would depend on the working
    /// directory, which is `/` under the boot unit and anything in a
    /// technician's shell: refused.
    fn from_toml(value: toml::Value, what: &str) -> Result<Self, String> {
        let path: PathBuf = deserialize(value, what)?;
        if path.is_relative() {
            return Err(format!(
                "{what} {}: must be an absolute path",
                path.display()
            ));
        }
        Ok(path)
    }
}

impl Value for bool {
    const TOML_TYPE: &'static str = "boolean";
    const SWITCH: bool = true;
    fn from_text(text: &str, what: &str) -> Result<Self, String> {
        crate::cli::parse_bool_word(text).map_err(|e| format!("{what}: {e}"))
    }
    fn from_toml(value: toml::Value, what: &str) -> Result<Self, String> {
        deserialize(value, what)
    }
}

impl Value for u64 {
    const TOML_TYPE: &'static str = "integer";
    fn from_text(text: &str, what: &str) -> Result<Self, String> {
        text.parse()
            .map_err(|_| format!("{what}: {text:?} is not a whole number"))
    }
    fn from_toml(value: toml::Value, what: &str) -> Result<Self, String> {
        deserialize(value, what)
    }
}

/// A list: comma-separated in text, an array of strings in TOML.
impl Value for Vec<String> {
    const TOML_TYPE: &'static str = "array of strings";
    fn from_text(text: &str, _what: &str) -> Result<Self, String> {
        Ok(super::split_list(text))
    }
    fn from_toml(value: toml::Value, what: &str) -> Result<Self, String> {
        deserialize(value, what)
    }
}

/// A setting whose values are read as `V` and checked into a `T`.
pub struct Setting<V, T = V> {
    /// How the log, the messages and the docs name it.
    pub name: &'static str,
    /// One line for `--help` and the docs.
    pub help: &'static str,
    pub sources: &'static [Source],
    /// Never logged nor shown; a flag carrying it draws a warning.
    pub secret: bool,
    /// Its absence is a problem naming every source.
    pub required: bool,
    /// An empty value counts as unset: the next source decides.
    pub skip_empty: bool,
    /// What the agent does without a value, for the docs (e.g. "the system
    /// roots"); empty when there is nothing to say.
    pub otherwise: &'static str,
    /// Checks a value; `what` names its source in the error.
    pub check: fn(V, &str) -> Result<T, String>,
}

fn accept<V>(value: V, _what: &str) -> Result<V, String> {
    Ok(value)
}

impl<V> Setting<V, V> {
    pub const fn new(name: &'static str, help: &'static str, sources: &'static [Source]) -> Self {
        Setting {
            name,
            help,
            sources,
            secret: false,
            required: false,
            skip_empty: false,
            otherwise: "",
            check: accept::<V>,
        }
    }
}

impl<V, T> Setting<V, T> {
    pub const fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    pub const fn required(mut self) -> Self {
        self.required = true;
        self
    }

    pub const fn skip_empty(mut self) -> Self {
        self.skip_empty = true;
        self
    }

    pub const fn otherwise(mut self, otherwise: &'static str) -> Self {
        self.otherwise = otherwise;
        self
    }

    pub const fn check<U>(self, check: fn(V, &str) -> Result<U, String>) -> Setting<V, U> {
        Setting {
            name: self.name,
            help: self.help,
            sources: self.sources,
            secret: self.secret,
            required: self.required,
            skip_empty: self.skip_empty,
            otherwise: self.otherwise,
            check,
        }
    }
}

/// A setting as the docs and the command line see it, whatever its type.
pub trait Describe: Sync {
    fn name(&self) -> &'static str;
    fn help(&self) -> &'static str;
    fn sources(&self) -> &'static [Source];
    fn is_secret(&self) -> bool;
    fn is_required(&self) -> bool;
    fn otherwise(&self) -> &'static str;
    fn toml_type(&self) -> &'static str;
    fn switch(&self) -> bool;
    fn is_path(&self) -> bool;
    /// Whether a config-file value has the setting's type (the check that
    /// follows is not made).
    #[cfg(test)]
    fn read_toml(&self, value: toml::Value, what: &str) -> Result<(), String>;

    fn flag(&self) -> Option<&'static Flag> {
        self.sources().iter().find_map(|source| match source {
            Source::Flag(flag) => Some(flag),
            _ => None,
        })
    }
}

impl<V: Value, T> Describe for Setting<V, T> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn help(&self) -> &'static str {
        self.help
    }
    fn sources(&self) -> &'static [Source] {
        self.sources
    }
    fn is_secret(&self) -> bool {
        self.secret
    }
    fn is_required(&self) -> bool {
        self.required
    }
    fn otherwise(&self) -> &'static str {
        self.otherwise
    }
    fn toml_type(&self) -> &'static str {
        V::TOML_TYPE
    }
    fn switch(&self) -> bool {
        V::SWITCH
    }
    fn is_path(&self) -> bool {
        V::PATH
    }
    #[cfg(test)]
    fn read_toml(&self, value: toml::Value, what: &str) -> Result<(), String> {
        V::from_toml(value, what).map(|_| ())
    }
}

/// The settings a profile (or the agent as a whole) declares, in the order
/// the docs list them.
pub type Declarations = &'static [&'static dyn Describe];

/// What the resolver would refuse in a table of the config file for these
/// settings: keys none of them reads, values of the wrong type.
#[cfg(test)]
pub fn table_problems(settings: Declarations, table: &toml::Table) -> Vec<String> {
    let reads = |setting: &&&dyn Describe, key: &str| {
        setting
            .sources()
            .iter()
            .any(|source| matches!(source, Source::Key(k) if *k == key))
    };
    table
        .iter()
        .filter_map(
            |(key, value)| match settings.iter().find(|s| reads(s, key)) {
                None => Some(format!("unknown key {key}")),
                Some(setting) => setting.read_toml(value.clone(), key).err(),
            },
        )
        .collect()
}
