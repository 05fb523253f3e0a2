//! The registration flow every profile shares: lock the state dir, finish
//! an accepted registration whose storing was cut short, check for an
//! existing registration, pick the identity (resuming an unfinished one),
//! let the profile talk to its service, record the answer, store it, and
//! run what follows; keep or discard the pending identity when it fails.
//!
//! A profile whose registration has two stages (a certificate from the
//! factory, then a service that may not accept the device yet) has the first
//! stage stored through the [`Checkpoint`]: from then on the stored files and
//! key are the identity, later runs continue with them, and no failure
//! discards them.

use crate::clock;
use crate::config::Common;
use crate::error::{Error, ErrorKind, Result};
use crate::identity::{self, Pending};
use crate::keys::pkcs11::{Module, Token};
use crate::keys::{DeviceKey, KeySpec, SoftwareKey};
use crate::logging::{self, Context};
use crate::profiles::{Answer, Answers, Backend, Checkpoint, Enrolment, Profile, StoredFile};
use crate::retry::{retry, RetryPolicy, Retryable};
use crate::secret::Secret;
use crate::store::{self, PRIVATE_MODE};
use serde_json::{Map, Value};
use std::cell::{Cell, RefCell};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// What a successful run did, for the log and for `--json`.
#[derive(Debug, serde::Serialize)]
#[serde(transparent)]
pub struct Outcome(Map<String, Value>);

impl Outcome {
    fn new(status: &str, profile: &Profile) -> Outcome {
        let mut fields = Map::new();
        fields.insert("status".into(), status.into());
        fields.insert("profile".into(), profile.name().as_str().into());
        Outcome(fields)
    }

    fn with(mut self, fields: Map<String, Value>) -> Outcome {
        self.0.extend(fields);
        self
    }

    /// `files` begins with what a checkpoint of this run stored.
    fn after_checkpoint(mut self, stored: Vec<String>) -> Outcome {
        if let Some(Value::Array(files)) = self.0.get_mut("files") {
            files.splice(0..0, stored.into_iter().map(Value::from));
        }
        self
    }
}

/// The device being registered: its id and key, and whether they come from
/// an unfinished earlier attempt, or from the first stage an earlier run
/// stored.
struct Identity {
    id: String,
    key: Option<DeviceKey>,
    resumed: bool,
    stored: bool,
}

pub async fn register(common: &Common, profile: &Profile) -> Result<Outcome> {
    let dir = profile.state_dir().to_path_buf();
    let key_spec = profile.key_spec();
    // A wrong module or PIN is reported before anything is created.
    let module = match (&key_spec, &common.hsm) {
        (Some(_), Some(hsm)) => Some(Module::load(hsm)?),
        _ => None,
    };
    store::prepare(&dir)?;
    let _lock = store::DirLock::acquire(&dir)?;

    let pending = identity::load(&dir)?;
    let pending = match pending {
        Some(
            p @ Pending {
                answer: Some(_), ..
            },
        ) if !common.force => {
            return finish_accepted(profile, &common.retry, &dir, key_spec, module, p).await;
        }
        Some(Pending {
            id,
            answer: Some(_),
            ..
        }) => {
            tracing::warn!(
                "--force: abandoning device {id}, which the server accepted but this device never finished storing; delete it on the server"
            );
            None
        }
        other => other,
    };

    let markers = store::present(&dir, &profile.markers())?;
    if !markers.is_empty() {
        let what = format!("{} present in {}", markers.join(" and "), dir.display());
        if common.force {
            tracing::warn!(
                "--force: the registration in {} will be replaced once the new one is complete",
                dir.display()
            );
        } else if common.boot {
            let report = profile.registered_report();
            if let Some(uuid) = report.get("uuid").and_then(Value::as_str) {
                logging::note(Context::DeviceUuid, uuid);
            }
            note_reported_factory(&report);
            tracing::info!(
                message_id = logging::RESULT_MESSAGE_ID,
                registration_result = "already-registered",
                "already registered ({what}); nothing to do"
            );
            return Ok(Outcome::new("already-registered", profile)
                .with(report)
                .with(files_field(&[])));
        } else {
            return Err(Error::new(
                ErrorKind::AlreadyRegistered,
                format!(
                    "this device is already registered ({what}); use --force to register it again"
                ),
            ));
        }
    }
    profile.preflight(common)?;
    profile.announce();

    clock::wait_for_plausible_time(
        clock::earliest_plausible_time(),
        common.clock_wait,
        SystemTime::now,
    )
    .await?;

    let token = match (module, &key_spec) {
        (Some(module), Some(spec)) => Some(module.open_token(spec.token.clone())?),
        _ => None,
    };
    let stored = if common.force {
        None
    } else {
        profile.stored_identity()?
    };
    let mut identity = choose_identity(
        common,
        profile,
        &dir,
        key_spec.as_ref(),
        pending,
        stored,
        token.as_ref(),
    )?;
    logging::note(Context::DeviceUuid, &identity.id);
    if !identity.stored {
        // A resumed identity too: the journal is written anew, which drops
        // whatever an earlier run left after the identity (a torn answer)
        // and makes room for this run's answer before the request goes out.
        let software_key = identity.key.as_ref().and_then(DeviceKey::private_pem);
        identity::begin(&dir, &identity.id, software_key.as_ref()).map_err(|e| {
            Error::new(
                e.kind(),
                format!("{e}; nothing was sent to the server, and the next run tries again"),
            )
        })?;
    }
    if let Some(token) = &token {
        // The key is part of the saved identity now: it outlives this run
        // (even an interrupted one) until the identity is abandoned.
        token.keep_created();
    }

    let mut checkpoint = IdentityStore {
        dir: &dir,
        id: &identity.id,
        key_file: key_spec.as_ref().map(|spec| spec.file),
        software_key: match identity.stored {
            true => None,
            false => identity.key.as_ref().and_then(DeviceKey::private_pem),
        },
        replaced: profile.markers(),
        key_in_token: matches!(identity.key, Some(DeviceKey::Token(_))),
        stored: Cell::new(identity.stored),
        written: RefCell::new(Vec::new()),
    };
    let enrolled = profile
        .enrol(Enrolment {
            common,
            id: &identity.id,
            key: identity.key.as_ref(),
            resumed: identity.resumed,
            stored: identity.stored,
            checkpoint: &checkpoint,
        })
        .await;
    let stored = checkpoint.stored.get();
    let answer = match enrolled {
        Ok(answer) => answer,
        Err(error) => {
            if stored {
                tracing::info!(
                    "kept the identity of {}, stored in {}, for the next attempt",
                    identity.id,
                    dir.display()
                );
            } else if keep_identity_after(&error) {
                tracing::info!("kept the identity of {} for the next attempt", identity.id);
            } else {
                discard(&dir, token.as_deref());
            }
            return Err(error);
        }
    };
    // From here on the fleet holds the device: every failure keeps it.
    // A stored identity's key file is in place already.
    let software_key = match stored {
        true => None,
        false => checkpoint.software_key.take(),
    };
    let checkpointed = checkpoint.written.take();
    drop(checkpoint);
    let id = std::mem::take(&mut identity.id);
    // The key (and with it, soon, the token session) is closed before
    // anything else runs.
    drop(identity);
    let accepted = Accepted {
        id,
        software_key,
        answer,
        // Recorded by the first attempt at storing it.
        kept: AnswerKept::IdentityOnly,
    };
    finish(profile, &common.retry, &dir, key_spec, token, accepted)
        .await
        .map(|outcome| outcome.after_checkpoint(checkpointed))
}

/// A registration the server accepted, on its way to the disk.
struct Accepted {
    id: String,
    software_key: Option<Secret>,
    answer: Answer,
    kept: AnswerKept,
}

/// What is kept for the next run when storing an accepted answer fails.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AnswerKept {
    /// The answer: the next run stores it without asking the server.
    Recorded,
    /// Only the identity: the next run asks the server again, as the same
    /// device.
    IdentityOnly,
}

/// The flow's side of the [`Checkpoint`]: installs a first stage with the
/// key file, after which the journal is no longer needed.
// A build without two-stage profiles never calls it.
#[cfg_attr(not(feature = "azure-dps"), allow(dead_code))]
struct IdentityStore<'a> {
    dir: &'a Path,
    id: &'a str,
    key_file: Option<&'static str>,
    software_key: Option<Secret>,
    /// Markers of a registration that `--force` replaces: they describe
    /// another identity once this one is stored.
    replaced: Vec<&'a str>,
    /// A key file left by an identity made in software is not this one's.
    key_in_token: bool,
    stored: Cell<bool>,
    /// What it stored, for `--json`.
    written: RefCell<Vec<String>>,
}

impl Checkpoint for IdentityStore<'_> {
    fn store_identity(&self, files: Vec<StoredFile>) -> Result<()> {
        if self.stored.get() {
            return Err(Error::internal("the identity is stored already"));
        }
        let entries = entries_to_store(self.key_file, self.software_key.as_ref(), &files);
        let replaced = store::present(self.dir, &self.replaced)?;
        if !replaced.is_empty() {
            tracing::warn!(
                "--force: the registration in {} ({}) is replaced by the new identity {}",
                self.dir.display(),
                replaced.join(", "),
                self.id
            );
        }
        let mut obsolete = self.replaced.clone();
        if let (true, Some(name)) = (self.key_in_token, self.key_file) {
            obsolete.push(name);
        }
        store::install(self.dir, &entries, &obsolete).map_err(|e| {
            // The journal still holds the identity: the next run asks again
            // with the same id and key.
            Error::new(
                e.kind(),
                format!("{e}; the identity of {} is kept for the next run", self.id),
            )
            .with_outcome_unknown()
        })?;
        self.stored.set(true);
        // A journal left behind (this removal failing) names the stored
        // identity, which the next run prefers to it.
        if let Err(e) = identity::remove(self.dir) {
            tracing::warn!("{e}");
        }
        let names: Vec<String> = entries.iter().map(|e| e.name.to_string()).collect();
        tracing::info!(
            "stored the identity of {} ({}) in {}",
            self.id,
            names.join(", "),
            self.dir.display()
        );
        *self.written.borrow_mut() = names;
        Ok(())
    }
}

/// What one registration installs: the software key (a key in a token has
/// no file) and the profile's files.
fn entries_to_store<'a>(
    key_file: Option<&'static str>,
    software_key: Option<&'a Secret>,
    files: &'a [StoredFile],
) -> Vec<store::Entry<'a>> {
    let key = match (key_file, software_key) {
        (Some(name), Some(pem)) => Some(store::Entry {
            name,
            contents: pem.expose().as_bytes(),
            mode: PRIVATE_MODE,
        }),
        _ => None,
    };
    key.into_iter()
        .chain(files.iter().map(|file| store::Entry {
            name: &file.name,
            contents: file.contents.as_bytes(),
            mode: file.mode,
        }))
        .collect()
}

/// A local failure after the server accepted: what becomes of the device.
fn accepted_but(error: Error, id: &str, kept: AnswerKept, answers: Answers) -> Error {
    let next = match (kept, answers) {
        (AnswerKept::Recorded, _) => {
            format!("the server accepted device {id}: the next run finishes storing it without registering it again")
        }
        (AnswerKept::IdentityOnly, Answers::Again) => format!(
            "the server accepted device {id}: its identity is kept, and the next run asks the server again for the same device"
        ),
        (AnswerKept::IdentityOnly, Answers::Once { service }) => format!(
            "device {id} is registered with {service}, but its answer could not be stored and is lost: delete device {id} in {service}, then run again (this device keeps its identity, so the next run registers the same one)"
        ),
    };
    Error::new(error.kind(), format!("{error}; {next}"))
}

/// A failed attempt at storing an accepted answer, and what it left on disk.
struct Unstored {
    error: Error,
    kept: AnswerKept,
}

impl std::fmt::Display for Unstored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl Retryable for Unstored {
    /// Worth another attempt while the answer is only in memory; once it is
    /// recorded, the next run finishes it.
    fn retry_hint(&self) -> Option<Option<std::time::Duration>> {
        (self.kept == AnswerKept::IdentityOnly).then_some(None)
    }
}

/// One attempt at storing an accepted answer: its record first (unless an
/// earlier attempt wrote it), the certificate in the token, the files, and
/// the journal is done with.
fn store_attempt(
    dir: &Path,
    key_file: Option<&'static str>,
    token: Option<&Token>,
    accepted: &Accepted,
    kept: &Cell<AnswerKept>,
) -> Result<Vec<String>> {
    let Accepted {
        id,
        software_key,
        answer,
        ..
    } = accepted;
    if kept.get() == AnswerKept::IdentityOnly {
        // Storing the answer itself may still work (a failed journal write
        // is not a full disk, an I/O error may not repeat).
        match identity::record_answer(dir, id, answer) {
            Ok(()) => kept.set(AnswerKept::Recorded),
            Err(e) => tracing::warn!(
                "{e}; storing the registration of {id} without a record of the answer"
            ),
        }
    }
    if let (Some(token), Some(certificate)) = (token, &answer.token_certificate) {
        token.import_certificate(certificate)?;
    }
    let entries = entries_to_store(key_file, software_key.as_ref(), &answer.files);
    let obsolete: Vec<&str> = answer.obsolete.iter().map(String::as_str).collect();
    store::install(dir, &entries, &obsolete)?;
    identity::remove(dir)?;
    Ok(entries.iter().map(|e| e.name.to_string()).collect())
}

/// Stores an accepted answer. An answer that only this process holds, from
/// a service that answers once, is worth waiting for: the attempts go on
/// (until the retry policy's deadline: half an hour in --boot), each failure
/// logged with its reason, so that a disk that filled up can be freed
/// meanwhile; a run that ended with the answer only in memory would lose
/// the device.
async fn store_accepted(
    answers: Answers,
    policy: &RetryPolicy,
    dir: &Path,
    key_file: Option<&'static str>,
    token: Option<&Token>,
    accepted: &Accepted,
) -> Result<Vec<String>> {
    let kept = Cell::new(accepted.kept);
    let attempt = |_| {
        let stored = store_attempt(dir, key_file, token, accepted, &kept);
        std::future::ready(stored.map_err(|error| Unstored {
            error,
            kept: kept.get(),
        }))
    };
    let stored = match (answers, accepted.kept) {
        (Answers::Once { service }, AnswerKept::IdentityOnly) => {
            let what = format!(
                "storing the registration of device {}, which {service} answers only once",
                accepted.id
            );
            retry(policy, &what, attempt).await
        }
        _ => attempt(1).await,
    };
    stored.map_err(|Unstored { error, kept }| accepted_but(error, &accepted.id, kept, answers))
}

/// Stores an accepted answer, closes the token, runs what follows.
async fn finish(
    profile: &Profile,
    policy: &RetryPolicy,
    dir: &Path,
    key_spec: Option<KeySpec>,
    token: Option<Arc<Token>>,
    accepted: Accepted,
) -> Result<Outcome> {
    let key_file = key_spec.as_ref().map(|spec| spec.file);
    let answers = profile.answers();
    let files = store_accepted(answers, policy, dir, key_file, token.as_deref(), &accepted).await?;
    // Programs run next may open the token themselves.
    drop(token);
    let answer = &accepted.answer;
    tracing::info!(
        message_id = logging::RESULT_MESSAGE_ID,
        registration_result = "registered",
        "{}; wrote {} to {}",
        answer.summary,
        files.join(", "),
        dir.display()
    );
    let mut outcome = Outcome::new("registered", profile)
        .with(answer.report.clone())
        .with(files_field(&files));
    for (step, result) in profile.after_commit() {
        outcome.0.insert(
            step.to_string(),
            serde_json::to_value(result).unwrap_or(Value::Null),
        );
    }
    Ok(outcome)
}

/// The factory as the profile reports it, for the journal fields, on the
/// paths where the profile's announcement (which notes it) does not run.
fn note_reported_factory(report: &Map<String, Value>) {
    if let Some(factory) = report.get("factory").and_then(Value::as_str) {
        logging::note(Context::Factory, factory);
    }
}

fn files_field(files: &[String]) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("files".into(), files.into());
    fields
}

/// An earlier run got the server's acceptance but could not store it.
async fn finish_accepted(
    profile: &Profile,
    policy: &RetryPolicy,
    dir: &Path,
    key_spec: Option<KeySpec>,
    module: Option<Module>,
    pending: Pending,
) -> Result<Outcome> {
    let Pending {
        id,
        software_key,
        answer,
    } = pending;
    let Some(answer) = answer else {
        return Err(Error::internal("no recorded answer to finish"));
    };
    logging::note(Context::DeviceUuid, &id);
    note_reported_factory(&answer.report);
    tracing::info!("finishing the registration of {id}, which the server accepted earlier");
    let token = match (&answer.token_certificate, module, &key_spec) {
        (None, _, _) => None,
        (Some(_), Some(module), Some(spec)) => Some(module.open_token(spec.token.clone())?),
        (Some(_), _, _) => {
            return Err(Error::config(format!(
                "the accepted registration of {id} keeps its key in a PKCS#11 token, but no HSM is configured (/etc/sota/hsm or -m/-P/-S)"
            )))
        }
    };
    if let Some(token) = &token {
        token.keep_created();
    }
    let accepted = Accepted {
        id,
        software_key,
        answer,
        kept: AnswerKept::Recorded,
    };
    finish(profile, policy, dir, key_spec, token, accepted).await
}

/// The identity to register: the one an earlier run stored, or the one of
/// an unfinished earlier attempt (so the server never sees two devices),
/// else a new one.
fn choose_identity(
    common: &Common,
    profile: &Profile,
    dir: &Path,
    key_spec: Option<&KeySpec>,
    pending: Option<Pending>,
    stored: Option<String>,
    token: Option<&Arc<Token>>,
) -> Result<Identity> {
    let stored = match (stored, &pending) {
        // A journal for another id is a newer attempt (one made with
        // --force) that has not stored its first stage yet.
        (Some(id), Some(newer)) if newer.id != id => {
            tracing::info!(
                "the unfinished registration of {} is newer than the identity {id} stored in {}",
                newer.id,
                dir.display()
            );
            None
        }
        (stored, _) => stored,
    };
    if let Some(id) = stored {
        if let Some(wanted) = profile.configured_id().filter(|wanted| *wanted != id) {
            return Err(Error::config(format!(
                "{} holds the identity of {id}, but the configuration asks for {wanted}; run with --force to replace it with a new identity",
                dir.display()
            )));
        }
        let key = stored_key(dir, &id, key_spec, token)?;
        if pending.is_some() {
            // The same id: left by a run stopped just after storing it.
            if let Err(e) = identity::remove(dir) {
                tracing::warn!("{e}");
            }
        }
        tracing::info!(
            "continuing with the identity {id} stored in {}",
            dir.display()
        );
        return Ok(Identity {
            id,
            key,
            resumed: true,
            stored: true,
        });
    }

    let earlier = match pending {
        Some(earlier) if common.force => {
            tracing::warn!(
                "--force: discarding the unfinished registration of {}",
                earlier.id
            );
            None
        }
        Some(earlier) if profile.configured_id().is_some_and(|id| id != earlier.id) => {
            tracing::warn!(
                "discarding the unfinished registration of {}: the configuration asks for another device",
                earlier.id
            );
            None
        }
        Some(earlier)
            if key_spec.is_some() && earlier.software_key.is_some() == token.is_some() =>
        {
            tracing::warn!(
                "discarding the unfinished registration of {}: its key was {}",
                earlier.id,
                if token.is_some() {
                    "in software"
                } else {
                    "in a PKCS#11 token"
                }
            );
            None
        }
        other => other,
    };
    if let Some(earlier) = earlier {
        let key = match (key_spec, token, &earlier.software_key) {
            (None, _, _) => Some(None),
            (Some(spec), None, Some(pem)) => Some(Some(DeviceKey::Software(
                SoftwareKey::from_pem(pem, spec.algorithm)?,
            ))),
            (Some(spec), Some(token), _) => token
                .existing_key(spec.algorithm)?
                .map(|k| Some(DeviceKey::Token(k))),
            (Some(_), None, None) => None,
        };
        match key {
            Some(key) => {
                tracing::info!("resuming the unfinished registration of {}", earlier.id);
                return Ok(Identity {
                    id: earlier.id,
                    key,
                    resumed: true,
                    stored: false,
                });
            }
            None => tracing::warn!(
                "discarding the unfinished registration of {}: its key is no longer in the token",
                earlier.id
            ),
        }
    }

    let id = profile.new_id(token.map(|t| t.as_ref()));
    let key = match (key_spec, token) {
        (None, _) => None,
        (Some(spec), Some(token)) => Some(DeviceKey::Token(
            token.create_key(spec.algorithm, common.force)?,
        )),
        (Some(spec), None) => Some(DeviceKey::Software(SoftwareKey::generate(spec.algorithm)?)),
    };
    Ok(Identity {
        id,
        key,
        resumed: false,
        stored: false,
    })
}

/// The key of a stored identity: the key file beside its files, or the key
/// in the token.
fn stored_key(
    dir: &Path,
    id: &str,
    key_spec: Option<&KeySpec>,
    token: Option<&Arc<Token>>,
) -> Result<Option<DeviceKey>> {
    let Some(spec) = key_spec else {
        return Ok(None);
    };
    let missing = |where_: String| {
        Error::config(format!(
            "{} holds the identity of {id}, but its key is missing ({where_}); run with --force to make a new identity",
            dir.display()
        ))
    };
    if let Some(token) = token {
        return match token.existing_key(spec.algorithm)? {
            Some(key) => Ok(Some(DeviceKey::Token(key))),
            None => Err(missing(format!(
                "PKCS#11 token {} has no `{}` key; was it made in software?",
                spec.token.token_label, spec.token.key_label
            ))),
        };
    }
    let path = dir.join(spec.file);
    match store::read_stored_text(dir, spec.file)? {
        Some(pem) => Ok(Some(DeviceKey::Software(SoftwareKey::from_pem(
            &Secret::new(pem.to_string()),
            spec.algorithm,
        )?))),
        None => Err(missing(format!(
            "no {}; if it is in a PKCS#11 token, configure the HSM (/etc/sota/hsm or -m/-P/-S)",
            path.display()
        ))),
    }
}

/// Whether the identity of a failed attempt must be kept for the next run:
/// yes when the server may hold it (no answer came back, or it says the
/// device exists after an attempt of ours may have created it), no when the
/// server's refusal is definite or the request never reached it.
fn keep_identity_after(error: &Error) -> bool {
    error.kind() == ErrorKind::Interrupted || error.outcome_unknown()
}

/// Forgets an identity the server refused: its token objects and the journal.
fn discard(dir: &Path, token: Option<&Token>) {
    if let Some(token) = token {
        if let Err(e) = token.remove_registration_objects() {
            tracing::warn!("{e}");
        }
    }
    if let Err(e) = identity::remove(dir) {
        tracing::warn!("{e}");
    }
}
