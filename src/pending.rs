//! The identity of a registration in progress. Once a UUID (and a software
//! key) has been chosen it is kept here, private, until the registration is
//! committed, so that a retry, a reboot or a rerun after a crash sends the
//! same device to the server instead of a second, different one.

use crate::error::{Error, ErrorKind, Result};
use crate::localfiles::read_secret_optional;
use crate::secret::Secret;
use crate::sotadir::{self, PRIVATE_MODE};
use serde::{Deserialize, Serialize};
use std::path::Path;
use zeroize::Zeroizing;

pub const PENDING_FILE: &str = ".lmp-device-register.pending";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub uuid: String,
    /// PKCS#8 PEM of a software key; `None` when the key lives in a token.
    pub software_key: Option<Secret>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    uuid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    software_key_pem: Option<String>,
}

impl Drop for Stored {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.software_key_pem.zeroize();
    }
}

fn corrupt(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!(
            "{} is damaged ({why}); remove it to start a new registration",
            path.display()
        ),
    )
}

pub fn load(sota_dir: &Path) -> Result<Option<Pending>> {
    let path = sota_dir.join(PENDING_FILE);
    let Some(text) = read_secret_optional(&path)? else {
        return Ok(None);
    };
    let text = Zeroizing::new(text);
    let mut stored: Stored =
        toml::from_str(&text).map_err(|e| corrupt(&path, e.message().to_string()))?;
    if stored.uuid.is_empty() {
        return Err(corrupt(&path, "no uuid"));
    }
    Ok(Some(Pending {
        uuid: std::mem::take(&mut stored.uuid),
        software_key: stored.software_key_pem.take().map(Secret::new),
    }))
}

pub fn save(sota_dir: &Path, pending: &Pending) -> Result<()> {
    let stored = Stored {
        uuid: pending.uuid.clone(),
        software_key_pem: pending
            .software_key
            .as_ref()
            .map(|k| k.expose().to_string()),
    };
    let text = Zeroizing::new(
        toml::to_string(&stored)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot encode state: {e}")))?,
    );
    sotadir::write_atomic(sota_dir, PENDING_FILE, text.as_bytes(), PRIVATE_MODE)
}

pub fn remove(sota_dir: &Path) -> Result<()> {
    match std::fs::remove_file(sota_dir.join(PENDING_FILE)) {
        Ok(()) => sotadir::sync_dir(sota_dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::new(
            ErrorKind::Internal,
            format!(
                "cannot remove {}: {e}",
                sota_dir.join(PENDING_FILE).display()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_is_private_and_removable() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let pending = Pending {
            uuid: "0b3c9c7e-8f6a-4d1e-9a43-2f5a1c0d9e77".into(),
            software_key: Some(Secret::new(
                "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n",
            )),
        };
        save(dir.path(), &pending).unwrap();
        let mode = std::fs::metadata(dir.path().join(PENDING_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(dir.path()).unwrap(), Some(pending));
        remove(dir.path()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        remove(dir.path()).unwrap();
    }

    #[test]
    fn damaged_state_is_reported_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(PENDING_FILE),
            "uuid = \nsoftware_key_pem = \"SECRETKEY",
        )
        .unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        assert!(!err.to_string().contains("SECRETKEY"), "{err}");
    }
}
