//! The one resolver: walks the sources a [`Setting`] declares, in order, and
//! takes the first value found; records where it came from; collects every
//! problem instead of stopping at the first.
//!
//! Resolving reads files but changes nothing, so it is a step of its own
//! that any command can run before (or instead of) registering.

use super::devicefiles::{lookup, parse_shell_vars, parse_single_line};
use super::file::ConfigFile;
use super::hsm::{self, HsmFile, HsmSettings};
use super::setting::{Declarations, Found, Kind, Raw, Setting, Source, Value};
use super::{
    problem_report, read_optional, read_secret_optional, readable_by_others, Common, Environment,
    Reported, CONFIG_FILE, HSM_FILE, OS_RELEASE,
};
use crate::cli::{Cli, CommandLine};
use crate::error::{Error, Result};
use crate::retry::RetryPolicy;
use crate::secret::Secret;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The sources of every setting, and the problems found so far.
pub struct Resolver<'a> {
    command_line: &'a CommandLine,
    env: &'a Environment,
    root: PathBuf,
    file: Option<ConfigFile>,
    /// The config-file table of the profile being resolved.
    table: &'static str,
    os_release: (PathBuf, Vec<(String, String)>),
    /// `/etc/sota/hsm`, read when a setting first needs it.
    hsm_file: Option<std::result::Result<Option<HsmFile>, Reported>>,
    hsm: Option<Option<HsmSettings>>,
    origins: Vec<(String, String)>,
    warnings: Vec<String>,
    problems: Vec<String>,
    /// The settings resolved, for the test that each is declared.
    #[cfg(test)]
    pub(crate) consulted: Vec<&'static str>,
}

impl<'a> Resolver<'a> {
    /// Sets up the sources. Only a `--root` that does not exist, or a config
    /// file that cannot be read, stop here: nothing else can be resolved
    /// without them. `tables` are the tables a config file may have.
    pub fn new(
        command_line: &'a CommandLine,
        env: &'a Environment,
        tables: &[&str],
    ) -> Result<Self> {
        let cli = &command_line.cli;
        let root = cli.root.clone().unwrap_or_else(|| PathBuf::from("/"));
        if !root.is_dir() {
            return Err(Error::config(format!(
                "--root {}: no such directory (nothing was created)",
                root.display()
            )));
        }
        let file = match &cli.config {
            Some(path) => Some(ConfigFile::load(path, tables)?.ok_or_else(|| {
                Error::config(format!("--config {}: no such file", path.display()))
            })?),
            None => ConfigFile::load(&root.join(CONFIG_FILE), tables)?,
        };
        let mut resolver = Resolver {
            command_line,
            env,
            os_release: (root.join(OS_RELEASE), Vec::new()),
            root,
            file,
            table: "",
            hsm_file: None,
            hsm: None,
            origins: Vec::new(),
            warnings: Vec::new(),
            problems: Vec::new(),
            #[cfg(test)]
            consulted: Vec::new(),
        };
        if let Some(file) = &resolver.file {
            let path = file.path.display().to_string();
            resolver.origin("config file", path);
        }
        resolver.load_os_release();
        Ok(resolver)
    }

    pub fn cli(&self) -> &'a Cli {
        &self.command_line.cli
    }

    pub fn command_line(&self) -> &'a CommandLine {
        self.command_line
    }

    /// A device path (`etc/...`, `var/...`) under `--root`.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// A set, non-empty environment variable.
    pub fn env(&self, key: &str) -> Option<&'a str> {
        self.env.get(key)
    }

    /// The value of `setting`, from the first of its sources that has one;
    /// `None` when none has, or when the value was refused (a problem is
    /// recorded then, and for a required setting that has none).
    pub fn get<V: Value, T>(&mut self, setting: &Setting<V, T>) -> Option<T> {
        self.found(setting).map(|found| found.value)
    }

    /// Like [`Resolver::get`], with where the value came from.
    pub fn found<V: Value, T>(&mut self, setting: &Setting<V, T>) -> Option<Found<T>> {
        self.found_with(setting, None)
    }

    /// Like [`Resolver::found`]; `given` is the value of the setting's
    /// [`Source::Given`], which the caller has at hand.
    pub fn found_with<V: Value, T>(
        &mut self,
        setting: &Setting<V, T>,
        mut given: Option<Found<Raw>>,
    ) -> Option<Found<T>> {
        #[cfg(test)]
        self.consulted.push(setting.name);
        for source in setting.sources {
            let raw = match source {
                Source::Given(_) => given.take(),
                source => match self.read(source) {
                    Ok(raw) => raw,
                    // A broken source decides too: what comes after it is
                    // not what was meant.
                    Err(Reported) => return None,
                },
            };
            match raw {
                Some(raw) if setting.skip_empty && raw.value.is_blank() => continue,
                Some(raw) => return self.accept(setting, raw),
                None => continue,
            }
        }
        if setting.required {
            let missing = self.missing(setting.name, setting.sources);
            self.problem(missing);
        }
        None
    }

    /// Reads and checks the value a source had, and notes where it came from.
    fn accept<V: Value, T>(
        &mut self,
        setting: &Setting<V, T>,
        raw: Found<Raw>,
    ) -> Option<Found<T>> {
        let Found { value, from, kind } = raw;
        let checked = V::from_raw(value, &from).and_then(|value| (setting.check)(value, &from));
        let value = checked.map_err(|problem| self.problem(problem)).ok()?;
        if setting.secret && kind == Kind::CommandLine {
            self.warn(format!(
                "{from} puts a secret on the command line, readable by every local user; use a file instead"
            ));
        }
        if kind != Kind::Default {
            self.origin(setting.name, from.clone());
        }
        Some(Found { value, from, kind })
    }

    /// The value `source` has, if any.
    fn read(&mut self, source: &Source) -> std::result::Result<Option<Found<Raw>>, Reported> {
        let text = |value: &str, from: String, kind| Some(Found::new(Raw::text(value), from, kind));
        Ok(match *source {
            Source::Flag(flag) => self.command_line.value(flag.long).map(|value| {
                Found::new(
                    Raw::text(value),
                    format!("--{}", flag.long),
                    Kind::CommandLine,
                )
            }),
            Source::Env(var) => self
                .env(var)
                .and_then(|value| text(value, format!("environment {var}"), Kind::Environment)),
            Source::Key(key) => self
                .key(key)
                .map(|value| Found::new(Raw::Toml(value), self.file_key(key), Kind::ConfigFile)),
            Source::TopKey(key) => self.file.as_ref().and_then(|file| {
                let value = file.top(key)?;
                let from = format!("{} {key}", file.path.display());
                Some(Found::new(Raw::Toml(value), from, Kind::ConfigFile))
            }),
            Source::OsRelease(var) => self.os_release(var),
            Source::Line { path, what } => return self.line(path, what),
            Source::Device { read, .. } => return read(self),
            Source::Given(_) => None,
            Source::Build { var, value } => {
                value.and_then(|value| text(value, format!("build-time {var}"), Kind::Build))
            }
            Source::UnderRoot(path) => Some(Found::new(
                Raw::text(self.path(path)),
                "the default",
                Kind::Default,
            )),
            Source::Default(value) => text(value, "the built-in default".into(), Kind::Default),
        })
    }

    /// "missing factory: pass --factory, set DEVICE_FACTORY, ...", naming
    /// the sources a value could have come from. A setting first read from
    /// the config file is named by its key there, which is what to write.
    fn missing(&self, name: &str, sources: &[Source]) -> String {
        let name = match sources.first() {
            Some(Source::Key(key)) => key,
            _ => name,
        };
        let hints: Vec<String> = sources
            .iter()
            .filter_map(|source| match *source {
                Source::Flag(flag) => Some(format!("pass --{}", flag.long)),
                Source::Env(var) => Some(format!("set {var}")),
                Source::Key(key) => Some(format!("set {}", self.file_key(key))),
                Source::TopKey(key) => Some(format!("set {key} in the config file")),
                Source::OsRelease(var) => {
                    Some(format!("set {var} in {}", self.os_release.0.display()))
                }
                Source::Line { path, .. } => Some(format!("provide {}", self.path(path).display())),
                Source::Device { doc, .. } | Source::Given(doc) => Some(doc.replace('`', "")),
                Source::Build { var, .. } => Some(format!("build the agent with {var}")),
                Source::UnderRoot(_) | Source::Default(_) => None,
            })
            .collect();
        match hints.split_last() {
            None => format!("missing {name}"),
            Some((last, [])) => format!("missing {name}: {last}"),
            Some((last, rest)) => format!("missing {name}: {}, or {last}", rest.join(", ")),
        }
    }

    /// Enters the config-file table of the profile to resolve: a key that
    /// none of its settings reads is a problem (a typo must not be a setting
    /// silently ignored).
    pub(crate) fn enter_table(&mut self, table: &'static str, settings: Declarations) {
        self.table = table;
        let known: Vec<&str> = settings
            .iter()
            .flat_map(|setting| setting.sources())
            .filter_map(|source| match source {
                Source::Key(key) => Some(*key),
                _ => None,
            })
            .collect();
        let unknown = match &self.file {
            Some(file) => file.unknown_keys(table, &known),
            None => Vec::new(),
        };
        for problem in unknown {
            self.problem(problem);
        }
    }

    fn key(&self, key: &str) -> Option<toml::Value> {
        self.file.as_ref()?.key(self.table, key).cloned()
    }

    /// Whether the profile's table sets `key`.
    pub fn key_is_set(&self, key: &str) -> bool {
        self.key(key).is_some()
    }

    /// How a key of the profile's table is named in messages and origins.
    pub fn file_key(&self, key: &str) -> String {
        let table = self.table;
        match &self.file {
            Some(file) => format!("{} [{table}] {key}", file.path.display()),
            None => format!("[{table}] {key} of {}", self.path(CONFIG_FILE).display()),
        }
    }

    /// os-release is read whether or not a setting needs it: a broken one
    /// is a problem on any image.
    fn load_os_release(&mut self) {
        let path = self.os_release.0.clone();
        let vars = match self.read_optional(&path) {
            Ok(Some(text)) => parse_shell_vars(&text).unwrap_or_else(|e| {
                self.problem(format!("{}: {e}", path.display()));
                Vec::new()
            }),
            Ok(None) | Err(Reported) => Vec::new(),
        };
        self.os_release.1 = vars;
    }

    fn os_release(&self, var: &str) -> Option<Found<Raw>> {
        let (path, vars) = &self.os_release;
        let value = lookup(vars, var).filter(|value| !value.is_empty())?;
        let from = format!("{} {var}", path.display());
        Some(Found::device(Raw::text(value), from))
    }

    /// A device file of one line.
    fn line(
        &mut self,
        path: &str,
        what: &str,
    ) -> std::result::Result<Option<Found<Raw>>, Reported> {
        let path = self.path(path);
        let Some(text) = self.read_optional(&path)? else {
            return Ok(None);
        };
        match parse_single_line(&text, what) {
            Ok(line) => Ok(Some(Found::device(
                Raw::text(line),
                path.display().to_string(),
            ))),
            Err(e) => {
                self.problem(format!("{}: {e}", path.display()));
                Err(Reported)
            }
        }
    }

    /// `/etc/sota/hsm` (under `--root`), read once: `Ok(None)` when it does
    /// not exist, `Err` when it is broken (reported once).
    fn load_hsm_file(&mut self) -> std::result::Result<Option<&HsmFile>, Reported> {
        if self.hsm_file.is_none() {
            let path = self.path(HSM_FILE);
            let file = hsm::read_hsm_file(self, &path);
            self.hsm_file = Some(file);
        }
        match &self.hsm_file {
            Some(Ok(file)) => Ok(file.as_ref()),
            _ => Err(Reported),
        }
    }

    /// A variable of `/etc/sota/hsm`.
    pub fn hsm_file(&mut self, var: &str) -> std::result::Result<Option<Found<Raw>>, Reported> {
        let from = self.path(HSM_FILE).display().to_string();
        let value = self.load_hsm_file()?.and_then(|file| file.get(var));
        Ok(value.map(|value| Found::device(Raw::Text(value), from)))
    }

    /// Whether `/etc/sota/hsm` exists (and can be read).
    pub fn hsm_file_exists(&mut self) -> bool {
        matches!(self.load_hsm_file(), Ok(Some(_)))
    }

    /// A small device file; `Ok(None)` when it does not exist, `Err` when
    /// it cannot be used (recorded as a problem already).
    pub fn read_optional(&mut self, path: &Path) -> std::result::Result<Option<String>, Reported> {
        read_optional(path).map_err(|e| {
            self.problem(e.to_string());
            Reported
        })
    }

    /// Like [`Resolver::read_optional`] for a file that holds a secret.
    pub fn read_secret(
        &mut self,
        path: &Path,
    ) -> std::result::Result<Option<zeroize::Zeroizing<String>>, Reported> {
        match read_secret_optional(path) {
            Ok(text) => Ok(text.map(zeroize::Zeroizing::new)),
            Err(e) => {
                self.problem(e.to_string());
                Err(Reported)
            }
        }
    }

    /// A file holding one secret line (an API or registration token), with
    /// a warning when others can read it; `Ok(None)` when it does not exist,
    /// `Err` when it cannot be used (recorded as a problem already). `what`
    /// names the file in errors, `secret` the value in the origins.
    pub fn secret_line(
        &mut self,
        path: &Path,
        what: &str,
        secret: &str,
    ) -> std::result::Result<Option<Secret>, Reported> {
        let Some(text) = self.read_secret(path)? else {
            return Ok(None);
        };
        let line = parse_single_line(&text, what).map_err(|e| {
            self.problem(format!("{}: {e}", path.display()));
            Reported
        })?;
        if let Some(mode) = readable_by_others(path) {
            self.warn(format!(
                "{} is readable by group or others (mode {mode:o}); it should be 0600",
                path.display()
            ));
        }
        self.origin(secret, path.display().to_string());
        Ok(Some(Secret::new(line)))
    }

    pub fn origin(&mut self, what: impl Into<String>, from: impl Into<String>) {
        let origin = (what.into(), from.into());
        // A source a setting reads through another one is named once.
        if !self.origins.contains(&origin) {
            self.origins.push(origin);
        }
    }

    /// Says more about where a value came from than its source's name.
    pub fn amend_origin(&mut self, what: &str, from: &str, amended: String) {
        if let Some(origin) = self
            .origins
            .iter_mut()
            .find(|(w, f)| w == what && f == from)
        {
            origin.1 = amended;
        }
    }

    pub fn warn(&mut self, warning: impl Into<String>) {
        self.warnings.push(warning.into());
    }

    /// The problems found so far, each on its own (`--check` lists them).
    pub(crate) fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The warnings so far.
    pub(crate) fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Records a problem; resolution goes on so that all are reported.
    pub fn problem(&mut self, problem: impl Into<String>) {
        let problem = problem.into();
        // A source two settings read is broken only once.
        if !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }

    /// The HSM configuration, for profiles that keep their key in a token:
    /// `-m/-P/-S` and `/etc/sota/hsm`. Resolved once.
    pub(crate) fn hsm(&mut self) -> Option<&HsmSettings> {
        if self.hsm.is_none() {
            let hsm = hsm::resolve(self);
            self.hsm = Some(hsm);
        }
        self.hsm.as_ref().and_then(Option::as_ref)
    }

    /// The shared settings and the end of resolution: every problem found
    /// (here or by the profile) is reported at once.
    pub(crate) fn finish(mut self, uses_key: bool) -> Result<Common> {
        let cli = self.cli();
        let hsm = if uses_key { self.hsm().cloned() } else { None };
        let mut retry = if cli.boot {
            RetryPolicy::boot()
        } else {
            RetryPolicy::interactive()
        };
        if let Some(seconds) = cli.retry_deadline {
            retry.deadline = Duration::from_secs(seconds);
        }
        if !self.problems.is_empty() {
            return Err(Error::config(problem_report(&self.problems)));
        }
        Ok(Common {
            boot: cli.boot,
            force: cli.force.unwrap_or(false),
            hsm,
            retry,
            request_timeout: Duration::from_secs(cli.request_timeout),
            clock_wait: Duration::from_secs(if cli.boot { 15 * 60 } else { 30 }),
            origins: self.origins,
            warnings: self.warnings,
        })
    }
}
