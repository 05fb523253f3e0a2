//! The identity of a registration in progress, kept in a small journal in
//! the state dir until the registration is stored. Its life cycle, all of it
//! here: [`load`] what an earlier run left; [`begin`] the journal of a new
//! identity or [`resume`] an unfinished one (written anew either way);
//! [`record_answer`]; [`finish`] once stored; [`keep_or_discard`] after a
//! failure. The journal holds:
//!
//! 1. the identity (id and software key), written before the first request,
//!    so that a retry, a reboot or a rerun after a crash presents the same
//!    device to the server instead of a second one;
//! 2. the server's accepted answer, written (one fsync) before anything is
//!    installed, so that a failure while storing (a full disk, an I/O error,
//!    power loss) is finished by the next run without asking the server
//!    again.
//!
//! Each record is one line: the SHA-256 of the JSON that follows, a space,
//! the JSON. Power loss can tear the answer's record (only what was synced
//! survives), and a second cut during the recovery boot is common on a
//! production line switched off at the wall. Two rules keep a torn record
//! from ever hiding a whole one:
//!
//! - Every run that is about to ask the server writes the journal anew,
//!   atomically, with the identity alone ([`begin`]): a fragment of an
//!   earlier answer never shares a file with the next answer, and the file
//!   stays one identity and at most one answer.
//! - An answer is written on a line of its own (a newline first), after
//!   whatever the file already holds, and [`load`] takes the last record
//!   that checks out, skipping fragments, garbage and zeros. This alone would
//!   be enough; the rewrite keeps the file small and each run's record in a
//!   file of its own. The loader never trusts a record whose checksum fails.
//!
//! The identity is followed in the file by [`ANSWER_ROOM`] zero bytes,
//! allocated on the disk when the journal is written: the answer's record
//! goes there, so recording an answer needs no new space, and a service
//! that hands out its answer once does not lose it to a disk that filled up
//! while the request was out. Unwritten room reads as zeros after power
//! loss, which the loader skips like any other separator.

use crate::error::{Error, ErrorKind, Result};
use crate::keys::pkcs11::Token;
use crate::keys::{DeviceKey, KeySpec, SoftwareKey};
use crate::profiles::Answer;
use crate::secret::Secret;
use crate::store::{self, PRIVATE_MODE};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use zeroize::Zeroizing;

pub const PENDING_FILE: &str = ".lmp-device-register.pending";

/// Space kept for the answer's record: an LmP answer (four certificates and
/// sota.toml) records in about 6 KiB, Losant's in under 1 KiB; a larger one
/// (a fleet manager's payload) still records when the disk has room.
pub const ANSWER_ROOM: u64 = 64 * 1024;

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

impl Pending {
    /// `--force` gives up an accepted registration this device never
    /// finished storing: the server keeps that device.
    pub fn abandon(self) {
        tracing::warn!(
            "--force: abandoning device {}, which the server accepted but this device never finished storing; delete it on the server",
            self.id
        );
    }
}

/// The device being registered: its id and key, and whether they come from
/// an unfinished earlier attempt, or from the first stage an earlier run
/// stored.
pub struct Identity {
    pub id: String,
    pub key: Option<DeviceKey>,
    pub resumed: bool,
    pub stored: bool,
}

/// What a run asks for, against which an unfinished identity is resumed.
pub struct Wanted<'a> {
    pub force: bool,
    /// An id the configuration asks for.
    pub configured_id: Option<&'a str>,
    pub key_spec: Option<&'a KeySpec>,
    /// The token, when the key is to be in one.
    pub token: Option<&'a Arc<Token>>,
}

/// The identity of an unfinished earlier attempt, with its key, unless this
/// run asks for another: `--force`, another configured id, or a key that
/// moved between software and a token (or left the token). Its journal is
/// written anew by [`begin`] before the request.
pub fn resume(earlier: Pending, wanted: &Wanted<'_>) -> Result<Option<Identity>> {
    let Wanted {
        force,
        configured_id,
        key_spec,
        token,
    } = *wanted;
    let id = &earlier.id;
    let reason = if force {
        Some("--force".to_string())
    } else if configured_id.is_some_and(|wanted| wanted != id) {
        Some("the configuration asks for another device".into())
    } else if key_spec.is_some() && earlier.software_key.is_some() == token.is_some() {
        let was = match token {
            Some(_) => "in software",
            None => "in a PKCS#11 token",
        };
        Some(format!("its key was {was}"))
    } else {
        None
    };
    if let Some(reason) = reason {
        match force {
            true => tracing::warn!("--force: discarding the unfinished registration of {id}"),
            false => tracing::warn!("discarding the unfinished registration of {id}: {reason}"),
        }
        return Ok(None);
    }
    let key = match (key_spec, token, &earlier.software_key) {
        (None, _, _) => Some(None),
        (Some(spec), None, Some(pem)) => Some(Some(DeviceKey::Software(SoftwareKey::from_pem(
            pem,
            spec.algorithm,
        )?))),
        (Some(spec), Some(token), _) => token
            .existing_key(spec.algorithm)?
            .map(|k| Some(DeviceKey::Token(k))),
        (Some(_), None, None) => None,
    };
    let Some(key) = key else {
        tracing::warn!(
            "discarding the unfinished registration of {id}: its key is no longer in the token"
        );
        return Ok(None);
    };
    tracing::info!("resuming the unfinished registration of {id}");
    Ok(Some(Identity {
        id: earlier.id,
        key,
        resumed: true,
        stored: false,
    }))
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

/// The JSON of a record whose checksum matches.
fn checked(record: &[u8]) -> Option<&str> {
    let (sum, json) = std::str::from_utf8(record).ok()?.split_once(' ')?;
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

/// What a journal's bytes hold: the identity, the last whole answer, and how
/// many records it skipped as cut short or damaged.
pub(crate) fn parse(bytes: &[u8]) -> std::result::Result<(Pending, usize), String> {
    // JSON escapes every control character, so neither a newline nor a NUL
    // (unwritten room) occurs inside a record: both only separate records.
    let mut records = bytes
        .split(|&b| b == b'\n' || b == 0)
        .filter(|record| !record.is_empty());
    let first = records
        .next()
        .and_then(checked)
        .ok_or("its identity record does not check out")?;
    let mut identity: IdentityRecord = serde_json::from_str(first).map_err(|e| e.to_string())?;
    if identity.id.is_empty() {
        return Err("no id".into());
    }
    let mut answer = None;
    let mut skipped = 0;
    for record in records {
        match checked(record).map(serde_json::from_str::<Answer>) {
            Some(Ok(whole)) => answer = Some(whole),
            _ => skipped += 1,
        }
    }
    let pending = Pending {
        id: std::mem::take(&mut identity.id),
        software_key: identity.software_key_pem.take().map(Secret::new),
        answer,
    };
    Ok((pending, skipped))
}

/// Where the next record goes: after the last byte written, before the
/// zeros of the room.
fn end_of_records(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1)
}

pub fn load(dir: &Path) -> Result<Option<Pending>> {
    let path = dir.join(PENDING_FILE);
    let Some(bytes) = store::read_stored(dir, PENDING_FILE)? else {
        return Ok(None);
    };
    let (pending, skipped) = parse(&bytes).map_err(|why| damaged(&path, why))?;
    match (skipped, &pending.answer) {
        (0, _) => {}
        (_, None) => tracing::warn!(
            "{}: the recorded answer was cut short; asking the server again",
            path.display()
        ),
        (_, Some(_)) => tracing::warn!(
            "{}: a record cut short is ignored; the whole answer recorded in it is used",
            path.display()
        ),
    }
    Ok(Some(pending))
}

/// Writes the journal anew with the identity alone (replacing any earlier
/// one, and with it any answer or fragment of one) and room for the answer,
/// before a request is sent for it.
pub fn begin(dir: &Path, id: &str, software_key: Option<&Secret>) -> Result<()> {
    let line = record_line(&IdentityRecord {
        id: id.to_string(),
        software_key_pem: software_key.map(|k| k.expose().to_string()),
    })?;
    store::write_atomic(
        dir,
        PENDING_FILE,
        line.as_bytes(),
        PRIVATE_MODE,
        ANSWER_ROOM,
    )
}

/// Records the server's answer for identity `id`, on a line of its own
/// after what the journal holds. An identity stored by an earlier run (the
/// first stage of a two-stage registration) has no journal: it gets one,
/// without a key (its key file is in place).
pub fn record_answer(dir: &Path, id: &str, answer: &Answer) -> Result<()> {
    let existing = match store::read_stored(dir, PENDING_FILE)? {
        Some(bytes) => bytes,
        None => {
            begin(dir, id, None)?;
            store::read_stored(dir, PENDING_FILE)?.unwrap_or_default()
        }
    };
    let path = dir.join(PENDING_FILE);
    let (pending, _) = parse(&existing).map_err(|why| damaged(&path, why))?;
    if pending.id != id {
        return Err(Error::internal(format!(
            "{} is the journal of {}, not of {id}",
            path.display(),
            pending.id
        )));
    }
    let (offset, record) = answer_record(&existing, answer)?;
    store::write_at_durable(dir, PENDING_FILE, offset, record.as_bytes())
}

/// Where in a journal holding `existing` the record of `answer` goes, and
/// its bytes: on a line of its own, so that it never continues a fragment.
fn answer_record(existing: &[u8], answer: &Answer) -> Result<(u64, Zeroizing<String>)> {
    let mut record = Zeroizing::new(String::from("\n"));
    record.push_str(&record_line(answer)?);
    Ok((end_of_records(existing) as u64, record))
}

/// The registration (or the first stage of one) is stored: the journal has
/// served.
pub fn finish(dir: &Path) -> Result<()> {
    store::remove(dir, PENDING_FILE)
}

/// After a failed attempt: the identity is kept for the next run when the
/// server may hold it (no answer came back, or it says the device exists
/// after an attempt of ours may have created it) or when it is stored
/// already; it is forgotten, with the token objects this identity made,
/// when the server's refusal is definite or the request never reached it.
pub fn keep_or_discard(dir: &Path, id: &str, stored: bool, token: Option<&Token>, error: &Error) {
    if stored {
        tracing::info!(
            "kept the identity of {id}, stored in {}, for the next attempt",
            dir.display()
        );
    } else if error.kind() == ErrorKind::Interrupted || error.outcome_unknown() {
        tracing::info!("kept the identity of {id} for the next attempt");
    } else {
        if let Some(token) = token {
            if let Err(e) = token.remove_registration_objects() {
                tracing::warn!("{e}");
            }
        }
        if let Err(e) = finish(dir) {
            tracing::warn!("{e}");
        }
    }
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

        record_answer(dir.path(), "0b3c9c7e", &answer()).unwrap();
        let pending = load(dir.path()).unwrap().unwrap();
        let recorded = pending.answer.unwrap();
        assert_eq!(recorded.files[0].contents, "CERT");
        assert_eq!(recorded.obsolete, ["sql.db"]);

        finish(dir.path()).unwrap();
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

    /// The journal's bytes after `answer` is recorded the way
    /// [`record_answer`] writes it.
    fn with_record(journal: &mut Vec<u8>, answer: &Answer) {
        let (offset, record) = answer_record(journal, answer).unwrap();
        let offset = offset as usize;
        let end = offset + record.len();
        if journal.len() < end {
            journal.resize(end, 0);
        }
        journal[offset..end].copy_from_slice(record.as_bytes());
    }

    fn journal_bytes(dir: &Path) -> Vec<u8> {
        std::fs::read(dir.join(PENDING_FILE)).unwrap()
    }

    #[test]
    fn the_answer_goes_into_the_room_made_before_the_request() {
        let dir = tempfile::tempdir().unwrap();
        begin(dir.path(), "id-1", Some(&Secret::new(KEY))).unwrap();
        let before = journal_bytes(dir.path());
        let identity_len = end_of_records(&before);
        assert_eq!(before.len() as u64, identity_len as u64 + ANSWER_ROOM);
        assert!(before[identity_len..].iter().all(|&b| b == 0));
        record_answer(dir.path(), "id-1", &answer()).unwrap();
        let after = journal_bytes(dir.path());
        assert_eq!(after.len(), before.len(), "written in place, no new space");
        let mut expected = before.clone();
        with_record(&mut expected, &answer());
        assert_eq!(after, expected);
        assert!(load(dir.path()).unwrap().unwrap().answer.is_some());
        // Another identity's answer is refused.
        let err = record_answer(dir.path(), "id-2", &answer()).unwrap_err();
        assert!(err.to_string().contains("not of id-2"), "{err}");
    }

    #[test]
    fn a_stored_identity_gets_a_journal_without_a_key_for_its_answer() {
        let dir = tempfile::tempdir().unwrap();
        record_answer(dir.path(), "id-1", &answer()).unwrap();
        let pending = load(dir.path()).unwrap().unwrap();
        assert_eq!(pending.id, "id-1");
        assert!(pending.software_key.is_none());
        assert!(pending.answer.is_some());
    }

    #[test]
    fn a_fragment_never_hides_the_answer_written_after_it() {
        let line = record_line(&answer()).unwrap();
        for garbage in [
            &line.as_bytes()[..line.len() / 2],
            b"\xff\xfe torn",
            b"\0\0x",
        ] {
            let dir = tempfile::tempdir().unwrap();
            begin(dir.path(), "id-1", None).unwrap();
            let mut bytes = journal_bytes(dir.path());
            let end = end_of_records(&bytes);
            bytes[end..end + garbage.len()].copy_from_slice(garbage);
            std::fs::write(dir.path().join(PENDING_FILE), &bytes).unwrap();
            assert!(load(dir.path()).unwrap().unwrap().answer.is_none());
            // Appended as a run that could not write the journal anew would.
            record_answer(dir.path(), "id-1", &answer()).unwrap();
            let pending = load(dir.path()).unwrap().unwrap();
            assert_eq!(pending.answer.unwrap().files[0].contents, "CERT");
        }
    }

    #[test]
    fn a_new_journal_drops_the_fragment_of_an_earlier_answer() {
        let dir = tempfile::tempdir().unwrap();
        begin(dir.path(), "id-1", None).unwrap();
        let line = record_line(&answer()).unwrap();
        let mut bytes = journal_bytes(dir.path());
        let end = end_of_records(&bytes);
        bytes[end..end + 10].copy_from_slice(&line.as_bytes()[..10]);
        std::fs::write(dir.path().join(PENDING_FILE), &bytes).unwrap();
        begin(dir.path(), "id-1", None).unwrap();
        let fresh = journal_bytes(dir.path());
        assert!(!fresh.windows(10).any(|w| w == &line.as_bytes()[..10]));
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

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn answers() -> impl Strategy<Value = Vec<Answer>> {
            // Any text, newlines, NULs and non-ASCII included: JSON escapes
            // what must not appear raw in a record.
            prop::collection::vec(("\\PC{0,40}", ".{0,3}"), 1..4).prop_map(|parts| {
                parts
                    .into_iter()
                    .enumerate()
                    .map(|(i, (contents, extra))| Answer {
                        files: vec![StoredFile::new(
                            "f",
                            0o600,
                            format!("{contents}\0\n{extra}"),
                        )],
                        obsolete: Vec::new(),
                        token_certificate: None,
                        summary: format!("answer {i}"),
                        report: serde_json::Map::new(),
                    })
                    .collect()
            })
        }

        fn same(a: &Answer, b: &Answer) -> bool {
            serde_json::to_string(a).unwrap() == serde_json::to_string(b).unwrap()
        }

        /// An identity with a small room, then each answer recorded after
        /// the one before (no new journal in between: the harder case), and
        /// where each record's checked text starts and ends.
        fn recorded(answers: &[Answer]) -> (Vec<u8>, Vec<(usize, usize)>) {
            let mut journal = record_line(&IdentityRecord {
                id: "id".into(),
                software_key_pem: Some(KEY.into()),
            })
            .unwrap()
            .as_bytes()
            .to_vec();
            journal.resize(journal.len() + 64, 0);
            let mut spans = Vec::new();
            for answer in answers {
                let start = end_of_records(&journal) + 1;
                with_record(&mut journal, answer);
                let end = end_of_records(&journal) - 1;
                spans.push((start, end));
            }
            (journal, spans)
        }

        fn loaded(bytes: &[u8]) -> Option<Answer> {
            parse(bytes).unwrap().0.answer
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(16))]

            /// Power lost at any byte of any record, with the rest of the
            /// file gone or still zeros: the last whole answer loads; and
            /// an answer recorded afterwards by a resumed run is the one
            /// that loads.
            #[test]
            fn a_cut_anywhere_loads_the_last_whole_answer(
                answers in answers(),
                later in answers(),
            ) {
                let (journal, spans) = recorded(&answers);
                let identity_end = spans[0].0 - 1;
                for cut in identity_end..=journal.len() {
                    let mut zeros_after = journal[..cut].to_vec();
                    zeros_after.resize(journal.len(), 0);
                    for image in [journal[..cut].to_vec(), zeros_after] {
                        let whole = spans.iter().rposition(|&(_, end)| end <= cut);
                        let got = loaded(&image);
                        match whole {
                            Some(i) => prop_assert!(same(got.as_ref().unwrap(), &answers[i])),
                            None => prop_assert!(got.is_none()),
                        }
                        let mut resumed = image;
                        for answer in &later {
                            with_record(&mut resumed, answer);
                        }
                        prop_assert!(same(&loaded(&resumed).unwrap(), later.last().unwrap()));
                    }
                }
            }

            /// A changed byte anywhere: a record it touches is never taken;
            /// the last record it leaves whole is.
            #[test]
            fn a_record_that_fails_its_checksum_is_never_taken(
                answers in answers(),
                at in any::<prop::sample::Index>(),
                value in any::<u8>(),
            ) {
                let (journal, spans) = recorded(&answers);
                let at = at.index(journal.len());
                prop_assume!(journal[at] != value);
                let mut changed = journal.clone();
                changed[at] = value;
                let separator = value == b'\n' || value == 0;
                // A record is whole when the change is outside it and did
                // not glue something to it in place of a separator.
                let whole = |&(start, end): &(usize, usize)| {
                    !(start..end).contains(&at) && (separator || (at + 1 != start && at != end))
                };
                let identity_end = spans[0].0 - 1;
                if at < identity_end || (at == identity_end && !separator) {
                    prop_assert!(parse(&changed).is_err());
                    return Ok(());
                }
                let expected = spans.iter().rposition(whole);
                let got = loaded(&changed);
                match expected {
                    Some(i) => prop_assert!(same(got.as_ref().unwrap(), &answers[i])),
                    None => prop_assert!(got.is_none()),
                }
            }
        }
    }
}
