//! Reading the small configuration files of a device (`/etc/sota/tag`,
//! `/etc/sota/hsm`, `/etc/os-release`, the token file, `/etc/hostname`).
//!
//! Each file is bounded in size, must be a regular file and valid UTF-8, and
//! every problem is reported with the file's path. Parsers are pure functions
//! so that the example files and fuzzing can exercise them directly.

use crate::error::{Error, ErrorKind, Result, ResultExt};
use std::io::Read;
use std::path::Path;

/// Far larger than any legitimate tag, hsm, token or os-release file.
pub const MAX_CONFIG_FILE_BYTES: u64 = 64 * 1024;

/// Reads a small text file; `Ok(None)` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>> {
    read_bounded(path, true)
}

/// Like [`read_optional`] for files that hold secrets (token, PINs, keys):
/// a symbolic link is refused, so the secret is read from where the image
/// put it and not from wherever a link points.
pub fn read_secret_optional(path: &Path) -> Result<Option<String>> {
    read_bounded(path, false)
}

fn read_bounded(path: &Path, follow_links: bool) -> Result<Option<String>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    if !follow_links {
        options.custom_flags(nix::libc::O_NOFOLLOW);
    }
    let file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if !follow_links && e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(Error::config(format!(
                "{} is a symbolic link; secrets are only read from a regular file",
                path.display()
            )))
        }
        Err(e) => {
            return Err(e).with_kind_context(ErrorKind::Config, || {
                format!("cannot open {}", path.display())
            })
        }
    };
    let meta = file.metadata().with_kind_context(ErrorKind::Config, || {
        format!("cannot stat {}", path.display())
    })?;
    if !meta.is_file() {
        return Err(Error::config(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_kind_context(ErrorKind::Config, || {
            format!("cannot read {}", path.display())
        })?;
    if bytes.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(Error::config(format!(
            "{} is larger than {} bytes",
            path.display(),
            MAX_CONFIG_FILE_BYTES
        )));
    }
    if bytes.contains(&0) {
        return Err(Error::config(format!(
            "{} contains NUL bytes (binary file?)",
            path.display()
        )));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| Error::config(format!("{} is not valid UTF-8", path.display())))
}

/// A file that holds exactly one value on one line (tag, token, hostname):
/// surrounding whitespace is trimmed; empty or multi-line content is an error.
pub fn parse_single_line(text: &str, what: &str) -> std::result::Result<String, String> {
    let value = text.trim();
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.lines().count() > 1 {
        return Err(format!("{what} must hold a single line"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(value.to_string())
}

/// Parses a shell-style `KEY=value` file (`/etc/sota/hsm`, `/etc/os-release`).
/// Values may be single- or double-quoted; `#` comments and blank lines are
/// skipped. Nothing is expanded: these files are data, not scripts.
pub fn parse_shell_vars(text: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut vars = Vec::new();
    for (index, raw_line) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let (key, raw_value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {line_no}: expected KEY=value"))?;
        if key.is_empty()
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || key.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(format!("line {line_no}: invalid variable name"));
        }
        let value = unquote(raw_value).map_err(|e| format!("line {line_no}: {e}"))?;
        vars.push((key.to_string(), value));
    }
    Ok(vars)
}

fn unquote(raw: &str) -> std::result::Result<String, &'static str> {
    let raw = raw.trim_end();
    let Some(first) = raw.chars().next() else {
        return Ok(String::new());
    };
    match first {
        '\'' => {
            let inner = raw[1..]
                .strip_suffix('\'')
                .ok_or("unterminated single quote")?;
            if inner.contains('\'') {
                return Err("stray single quote inside a quoted value");
            }
            Ok(inner.to_string())
        }
        '"' => {
            let body = &raw[1..];
            let mut value = String::new();
            let mut chars = body.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some(escaped @ ('"' | '\\' | '$' | '`')) => value.push(escaped),
                        Some(other) => {
                            value.push('\\');
                            value.push(other);
                        }
                        None => return Err("unterminated double quote"),
                    },
                    '"' => {
                        return if chars.as_str().trim().is_empty() {
                            Ok(value)
                        } else {
                            Err("text after the closing double quote")
                        };
                    }
                    other => value.push(other),
                }
            }
            Err("unterminated double quote")
        }
        _ => {
            if raw.contains(['"', '\'']) || raw.chars().any(char::is_whitespace) {
                return Err("unquoted value contains quotes or spaces");
            }
            Ok(raw.to_string())
        }
    }
}

/// The value of `key` in a parsed shell-style file; the last assignment wins,
/// as it would in a shell.
pub fn lookup<'a>(vars: &'a [(String, String)], key: &str) -> Option<&'a str> {
    vars.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_vars_accept_quotes_comments_and_export() {
        let text = "# comment\n\nHSM_MODULE=/usr/lib/libckteec.so.0\nHSM_PIN=\"87654321\"\nexport HSM_SOPIN='12 34'\nQ=\"a\\\"b\\\\c\"\n";
        let vars = parse_shell_vars(text).unwrap();
        assert_eq!(lookup(&vars, "HSM_MODULE"), Some("/usr/lib/libckteec.so.0"));
        assert_eq!(lookup(&vars, "HSM_PIN"), Some("87654321"));
        assert_eq!(lookup(&vars, "HSM_SOPIN"), Some("12 34"));
        assert_eq!(lookup(&vars, "Q"), Some("a\"b\\c"));
        assert_eq!(lookup(&vars, "MISSING"), None);
    }

    #[test]
    fn shell_vars_reject_malformed_lines() {
        for bad in [
            "NOEQUALS",
            "=value",
            "1KEY=x",
            "KEY=\"open",
            "KEY='open",
            "KEY=a b",
            "KEY=\"a\" trailing",
            "BAD-NAME=x",
        ] {
            assert!(parse_shell_vars(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn single_line_values_are_trimmed_and_checked() {
        assert_eq!(parse_single_line("  main \n", "tag").unwrap(), "main");
        assert_eq!(
            parse_single_line(" \n\t", "tag").unwrap_err(),
            "tag is empty"
        );
        assert_eq!(
            parse_single_line("main\ndevel\n", "tag").unwrap_err(),
            "tag must hold a single line"
        );
    }

    #[test]
    fn read_optional_rejects_directories_binary_and_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_optional(&dir.path().join("missing"))
            .unwrap()
            .is_none());

        let err = read_optional(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");

        let binary = dir.path().join("binary");
        std::fs::write(&binary, b"ab\0cd").unwrap();
        assert!(read_optional(&binary)
            .unwrap_err()
            .to_string()
            .contains("NUL"));

        let latin1 = dir.path().join("latin1");
        std::fs::write(&latin1, b"caf\xe9").unwrap();
        assert!(read_optional(&latin1)
            .unwrap_err()
            .to_string()
            .contains("UTF-8"));

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&latin1, &link).unwrap();
        assert!(read_secret_optional(&link)
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));

        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; MAX_CONFIG_FILE_BYTES as usize + 1]).unwrap();
        assert!(read_optional(&big)
            .unwrap_err()
            .to_string()
            .contains("larger"));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any text: a clean error or variables with valid names, never a panic.
        #[test]
        fn shell_vars_never_panic(text in "\\PC*") {
            if let Ok(vars) = parse_shell_vars(&text) {
                for (key, _) in vars {
                    prop_assert!(!key.is_empty());
                    prop_assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                }
            }
        }

        /// Quoting round-trips values made of the characters a PIN may hold.
        #[test]
        fn double_quoted_values_round_trip(value in "[ -~]{0,40}") {
            let escaped: String = value.chars().flat_map(|c| match c {
                '"' | '\\' | '$' | '`' => vec!['\\', c],
                c => vec![c],
            }).collect();
            let vars = parse_shell_vars(&format!("HSM_PIN=\"{escaped}\"\n")).unwrap();
            prop_assert_eq!(lookup(&vars, "HSM_PIN"), Some(value.as_str()));
        }

        /// Errors never echo the input (it may be a secret).
        #[test]
        fn errors_do_not_echo_the_line(secret in "[a-z]{12}") {
            let text = format!("HSM_PIN=\"{secret}\nHSM_SOPIN={secret} x");
            let err = parse_shell_vars(&text).unwrap_err();
            prop_assert!(!err.contains(&secret));
        }

        #[test]
        fn single_line_never_panics(text in "\\PC*") {
            if let Ok(value) = parse_single_line(&text, "tag") {
                prop_assert!(!value.is_empty());
                prop_assert!(!value.contains('\n'));
                prop_assert_eq!(value.trim(), value.as_str());
            }
        }
    }
}
