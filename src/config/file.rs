//! The optional config file (`/etc/lmp-device-register.toml`): the profile
//! to run and one table per profile. Each profile deserialises its own table
//! into a struct that refuses unknown keys, so a typo is an error that names
//! the file and the key instead of a setting silently ignored.

use super::devicefiles::read_optional;
use crate::cli::ProfileName;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

pub(super) struct ConfigFile {
    pub path: PathBuf,
    pub profile: Option<String>,
    tables: toml::Table,
}

impl ConfigFile {
    /// `Ok(None)` when the file does not exist.
    pub fn load(path: &Path) -> Result<Option<ConfigFile>> {
        let Some(text) = read_optional(path)? else {
            return Ok(None);
        };
        Self::parse(path, &text).map(Some)
    }

    fn parse(path: &Path, text: &str) -> Result<ConfigFile> {
        let bad = |what: String| Error::config(format!("{}: {what}", path.display()));
        let mut tables: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map_or(0, |span| {
                text[..span.start.min(text.len())].matches('\n').count() + 1
            });
            bad(format!(
                "not valid TOML at line {line}: {}",
                e.message().trim()
            ))
        })?;
        let profile = match tables.remove("profile") {
            None => None,
            Some(toml::Value::String(name)) => Some(name),
            Some(other) => {
                return Err(bad(format!(
                    "profile must be a string, not a {}",
                    other.type_str()
                )))
            }
        };
        for (key, value) in &tables {
            if !ProfileName::ALL_NAMES.contains(&key.as_str()) {
                return Err(bad(format!(
                    "unknown key {key:?} (expected profile or a table named after a profile: {})",
                    ProfileName::ALL_NAMES.join(", ")
                )));
            }
            if !value.is_table() {
                return Err(bad(format!("{key} must be a table ([{key}])")));
            }
        }
        Ok(ConfigFile {
            path: path.to_path_buf(),
            profile,
            tables,
        })
    }

    /// The table `[name]` as `T`; an absent table is `T::default()`.
    pub fn section<T: serde::de::DeserializeOwned + Default>(
        &self,
        name: &str,
    ) -> std::result::Result<T, String> {
        match self.tables.get(name) {
            None => Ok(T::default()),
            Some(value) => value.clone().try_into().map_err(|e: toml::de::Error| {
                format!("{} [{name}]{}", self.path.display(), describe(&e))
            }),
        }
    }
}

/// ` key: what is wrong`, or `: what is wrong` when toml names no key (an
/// unknown key names itself in the message). toml keeps the key of a value
/// it could not use to itself; only its `Display` ends with "in `key`".
fn describe(e: &toml::de::Error) -> String {
    let message = e.message().trim();
    let shown = e.to_string();
    match shown
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("in `")?.strip_suffix('`'))
    {
        Some(key) => format!(" {key}: {message}"),
        None => format!(": {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Default, Debug)]
    #[serde(deny_unknown_fields)]
    struct Section {
        url: Option<String>,
        timeout: Option<u64>,
    }

    fn parse(text: &str) -> Result<ConfigFile> {
        ConfigFile::parse(Path::new("/etc/x.toml"), text)
    }

    #[test]
    fn profile_and_sections_are_read() {
        let file =
            parse("profile = \"lmp\"\n[losant]\nurl = \"https://x\"\ntimeout = 3\n").unwrap();
        assert_eq!(file.profile.as_deref(), Some("lmp"));
        let section: Section = file.section("losant").unwrap();
        assert_eq!(section.url.as_deref(), Some("https://x"));
        assert_eq!(section.timeout, Some(3));
        let absent: Section = file.section("tii").unwrap();
        assert!(absent.url.is_none());
    }

    #[test]
    fn mistakes_name_the_file_and_the_key() {
        for (text, expected) in [
            ("profile = 3", "profile must be a string"),
            ("[nope]\n", "unknown key \"nope\""),
            ("lmp = 1", "lmp must be a table"),
            ("[lmp\n", "not valid TOML"),
        ] {
            let err = parse(text).err().unwrap().to_string();
            assert!(err.starts_with("/etc/x.toml: "), "{err}");
            assert!(err.contains(expected), "{err} should say {expected}");
        }
        let file = parse("[losant]\nurll = \"x\"\n").unwrap();
        let err = file.section::<Section>("losant").unwrap_err();
        assert!(err.contains("/etc/x.toml [losant]"), "{err}");
        assert!(err.contains("urll"), "{err}");
        let file = parse("[losant]\ntimeout = \"soon\"\n").unwrap();
        let err = file.section::<Section>("losant").unwrap_err();
        assert!(
            err.starts_with("/etc/x.toml [losant] timeout: invalid type"),
            "{err}"
        );
        let err = parse("profile = \"lmp\"\n\n[lmp\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not valid TOML at line 3"), "{err}");
    }
}
