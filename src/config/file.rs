//! The optional config file (`/etc/lmp-device-register.toml`): the profile
//! to run and one table per profile. A key that none of the profile's
//! settings reads is refused, so a typo is an error that names the file and
//! the key instead of a setting silently ignored.

use super::devicefiles::read_optional;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

pub(super) struct ConfigFile {
    pub path: PathBuf,
    pub profile: Option<String>,
    tables: toml::Table,
}

impl ConfigFile {
    /// `Ok(None)` when the file does not exist; `tables` are the names its
    /// tables may have (every profile's, even one this build leaves out).
    pub fn load(path: &Path, tables: &[&str]) -> Result<Option<ConfigFile>> {
        let Some(text) = read_optional(path)? else {
            return Ok(None);
        };
        Self::parse(path, &text, tables).map(Some)
    }

    fn parse(path: &Path, text: &str, known: &[&str]) -> Result<ConfigFile> {
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
            if !known.contains(&key.as_str()) {
                return Err(bad(format!(
                    "unknown key {key:?} (expected profile or a table named after a profile: {})",
                    known.join(", ")
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

    /// A key at the top of the file.
    pub fn top(&self, key: &str) -> Option<toml::Value> {
        match key {
            "profile" => self.profile.clone().map(toml::Value::String),
            _ => None,
        }
    }

    /// `key` of the table `[table]`.
    pub fn key(&self, table: &str, key: &str) -> Option<&toml::Value> {
        self.tables.get(table)?.get(key)
    }

    /// The keys of `[table]` that are not `known`, as problems; worded as
    /// serde words them.
    pub fn unknown_keys(&self, table: &str, known: &[&str]) -> Vec<String> {
        let Some(toml::Value::Table(keys)) = self.tables.get(table) else {
            return Vec::new();
        };
        let expected: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
        keys.keys()
            .filter(|key| !known.contains(&key.as_str()))
            .map(|key| {
                format!(
                    "{} [{table}]: unknown field `{key}`, expected one of {}",
                    self.path.display(),
                    expected.join(", ")
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLES: &[&str] = &["lmp", "losant", "tii"];

    fn parse(text: &str) -> Result<ConfigFile> {
        ConfigFile::parse(Path::new("/etc/x.toml"), text, TABLES)
    }

    #[test]
    fn profile_and_tables_are_read() {
        let file =
            parse("profile = \"lmp\"\n[losant]\nurl = \"https://x\"\ntimeout = 3\n").unwrap();
        assert_eq!(file.profile.as_deref(), Some("lmp"));
        assert_eq!(file.top("profile"), Some(toml::Value::String("lmp".into())));
        assert_eq!(
            file.key("losant", "url").and_then(toml::Value::as_str),
            Some("https://x")
        );
        assert_eq!(
            file.key("losant", "timeout")
                .and_then(toml::Value::as_integer),
            Some(3)
        );
        assert!(file.key("tii", "url").is_none());
        assert!(file.unknown_keys("losant", &["url", "timeout"]).is_empty());
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
        assert_eq!(
            file.unknown_keys("losant", &["url", "timeout"]),
            ["/etc/x.toml [losant]: unknown field `urll`, expected one of `url`, `timeout`"]
        );
        let err = parse("profile = \"lmp\"\n\n[lmp\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not valid TOML at line 3"), "{err}");
    }
}
