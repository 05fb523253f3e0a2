//! The identity of a registration in progress, kept in a small journal in
//! the state dir until the registration is stored:
//!
//! 1. the identity (id and software key), written before the first request,
//!    so that a retry, a reboot or a rerun after a crash presents the same
//!    device to the server instead of a second one;
//! 2. the server's accepted answer, appended (one fsync) before anything is
//!    installed, so that a failure while storing (a full disk, an I/O error,
//!    power loss) is finished by the next run without asking the server
//!    again.
//!
//! Each record is one line: the SHA-256 of the JSON that follows, a space,
//! the JSON. A record cut short by power loss fails its checksum and is
//! ignored; only a damaged identity record is an error.

use crate::error::{Error, ErrorKind, Result};
use crate::profiles::Answer;
use crate::secret::Secret;
use crate::store::{self, PRIVATE_MODE};
use serde::{Deserialize, Serialize};
use std::path::Path;
use zeroize::Zeroizing;

pub const PENDING_FILE: &str = ".lmp-device-register.pending";

/// An unfinished registration.
#[derive(Debug)]
pub struct Pending {
    pub id: String,
    /// PKCS#8 PEM of a software key; `None` when the key lives in a token
    /// (or the profile has none).
    pub software_key: Option<Secret>,
    /// What the server accepted, when it got that far.
    pub answer: Option<Answer>,
}

#[derive(Serialize, Deserialize)]
struct IdentityRecord {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    software_key_pem: Option<String>,
}

impl Drop for IdentityRecord {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.software_key_pem);
    }
}

fn record_line(record: &impl Serialize) -> Result<Zeroizing<String>> {
    let json =
        Zeroizing::new(serde_json::to_string(record).map_err(|e| {
            Error::internal(format!("cannot encode the pending registration: {e}"))
        })?);
    let mut line = Zeroizing::new(checksum(&json));
    line.push(' ');
    line.push_str(&json);
    line.push('\n');
    Ok(line)
}

/// The hex SHA-256 that starts a record's line.
fn checksum(json: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, json.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The JSON of a line whose checksum matches.
fn checked(line: &str) -> Option<&str> {
    let (sum, json) = line.split_once(' ')?;
    (sum == checksum(json)).then_some(json)
}

fn damaged(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!(
            "{} is damaged ({why}); remove it to start a new registration",
            path.display()
        ),
    )
}

pub fn load(dir: &Path) -> Result<Option<Pending>> {
    let path = dir.join(PENDING_FILE);
    let Some(text) = crate::config::read_secret_optional(&path)? else {
        return Ok(None);
    };
    let text = Zeroizing::new(text);
    let mut lines = text.lines();
    let first = lines
        .next()
        .and_then(checked)
        .ok_or_else(|| damaged(&path, "its identity record does not check out"))?;
    let mut identity: IdentityRecord =
        serde_json::from_str(first).map_err(|e| damaged(&path, e))?;
    if identity.id.is_empty() {
        return Err(damaged(&path, "no id"));
    }
    let answer = match lines.next() {
        None => None,
        Some(line) => match checked(line).map(serde_json::from_str::<Answer>) {
            Some(Ok(answer)) => Some(answer),
            _ => {
                tracing::warn!(
                    "{}: the recorded answer was cut short; asking the server again",
                    path.display()
                );
                None
            }
        },
    };
    Ok(Some(Pending {
        id: std::mem::take(&mut identity.id),
        software_key: identity.software_key_pem.take().map(Secret::new),
        answer,
    }))
}

/// Starts the journal with the identity (replacing any earlier one).
pub fn begin(dir: &Path, id: &str, software_key: Option<&Secret>) -> Result<()> {
    let line = record_line(&IdentityRecord {
        id: id.to_string(),
        software_key_pem: software_key.map(|k| k.expose().to_string()),
    })?;
    store::write_atomic(dir, PENDING_FILE, line.as_bytes(), PRIVATE_MODE)
}

/// Records the server's answer after the identity.
pub fn record_answer(dir: &Path, answer: &Answer) -> Result<()> {
    store::append_durable(dir, PENDING_FILE, record_line(answer)?.as_bytes())
}

pub fn remove(dir: &Path) -> Result<()> {
    store::remove(dir, PENDING_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::StoredFile;
    use std::os::unix::fs::PermissionsExt;

    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n";

    fn answer() -> Answer {
        Answer {
            files: vec![StoredFile::new("client.pem", 0o644, "CERT")],
            obsolete: vec!["sql.db".into()],
            token_certificate: None,
            summary: "registered".into(),
            report: serde_json::Map::new(),
        }
    }

    #[test]
    fn round_trip_is_private_and_removable() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        begin(dir.path(), "0b3c9c7e", Some(&Secret::new(KEY))).unwrap();
        let mode = std::fs::metadata(dir.path().join(PENDING_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let pending = load(dir.path()).unwrap().unwrap();
        assert_eq!(pending.id, "0b3c9c7e");
        assert_eq!(pending.software_key.unwrap().expose(), KEY);
        assert!(pending.answer.is_none());

        record_answer(dir.path(), &answer()).unwrap();
        let pending = load(dir.path()).unwrap().unwrap();
        let recorded = pending.answer.unwrap();
        assert_eq!(recorded.files[0].contents, "CERT");
        assert_eq!(recorded.obsolete, ["sql.db"]);

        remove(dir.path()).unwrap();
        assert!(load(dir.path()).unwrap().is_none());
    }

    #[test]
    fn an_answer_cut_short_is_ignored_and_the_identity_kept() {
        let dir = tempfile::tempdir().unwrap();
        begin(dir.path(), "id-1", None).unwrap();
        let line = record_line(&answer()).unwrap();
        let path = dir.path().join(PENDING_FILE);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&line[..line.len() / 2]);
        std::fs::write(&path, text).unwrap();
        let pending = load(dir.path()).unwrap().unwrap();
        assert_eq!(pending.id, "id-1");
        assert!(pending.answer.is_none());
    }

    #[test]
    fn damaged_identity_is_reported_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(PENDING_FILE),
            "00 {\"id\": \"x\", \"software_key_pem\": \"SECRETKEY\"}\n",
        )
        .unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        assert!(!err.to_string().contains("SECRETKEY"), "{err}");
    }
}
