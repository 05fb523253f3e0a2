//! The registration flow every profile shares, in the order of
//! [`register`]: lock the state dir; finish an accepted registration whose
//! storing was cut short; check for an existing registration; the profile's
//! pre-flight and a plausible clock; pick the identity (resuming an
//! unfinished one) and write its journal; let the profile talk to its
//! service, keeping or discarding the identity when that fails; record the
//! answer, store it, and run what follows. The journal's life cycle itself
//! is [`identity`]'s.
//!
//! A profile whose registration has two stages (a certificate from the
//! factory, then a service that may not accept the device yet) has the first
//! stage stored through the [`Checkpoint`]: from then on the stored files and
//! key are the identity, later runs continue with them, and no failure
//! discards them.

use crate::clock;
use crate::config::Common;
use crate::error::{Error, ErrorKind, Result};
use crate::identity::{self, Identity, Pending};
use crate::keys::pkcs11::{Module, Token};
use crate::keys::{DeviceKey, KeySpec, SoftwareKey};
use crate::logging::{self, Context};
#[cfg(feature = "two-stage")]
use crate::profiles::Checkpoint;
use crate::profiles::{Answer, Answers, Backend, Enrolment, Profile, StoredFile};
use crate::retry::{retry, RetryPolicy, Retryable};
use crate::secret::Secret;
use crate::store::{self, PRIVATE_MODE};
use serde_json::{Map, Value};
use std::cell::Cell;
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
        fields.insert("profile".into(), profile.name().into());
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

    let pending = match identity::load(&dir)? {
        Some(accepted) if accepted.answer.is_some() && !common.force => {
            return finish_accepted(profile, &common.retry, &dir, key_spec, module, accepted).await;
        }
        Some(accepted) if accepted.answer.is_some() => {
            accepted.abandon();
            None
        }
        other => other,
    };
    if let Some(outcome) = existing_registration(common, profile, &dir)? {
        return Ok(outcome);
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
    let identity = choose_identity(common, profile, &dir, key_spec.as_ref(), pending, &token)?;
    if let Some(token) = &token {
        // The key is part of the saved identity now: it outlives this run
        // (even an interrupted one) until the identity is abandoned; and so
        // does what this run adds to the token.
        token.keep_created();
    }
    let (accepted, checkpointed) = enrol(common, profile, &dir, identity, token.as_deref()).await?;
    finish(profile, &common.retry, &dir, key_spec, token, accepted)
        .await
        .map(|outcome| outcome.after_checkpoint(checkpointed))
}

/// A registration already in the state dir: nothing to do in `--boot`, an
/// error for a technician, replaced (once the new one is complete) with
/// `--force`.
fn existing_registration(
    common: &Common,
    profile: &Profile,
    dir: &Path,
) -> Result<Option<Outcome>> {
    let markers = store::present(dir, &profile.markers())?;
    if markers.is_empty() {
        return Ok(None);
    }
    let what = format!("{} present in {}", markers.join(" and "), dir.display());
    if common.force {
        tracing::warn!(
            "--force: the registration in {} will be replaced once the new one is complete",
            dir.display()
        );
        return Ok(None);
    }
    if !common.boot {
        return Err(Error::new(
            ErrorKind::AlreadyRegistered,
            format!("this device is already registered ({what}); use --force to register it again"),
        ));
    }
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
    Ok(Some(
        Outcome::new("already-registered", profile)
            .with(report)
            .with(files_field(&[])),
    ))
}

/// Lets the profile talk to its service with the identity (through the
/// [`Checkpoint`] for a first stage). On failure the identity is kept or
/// discarded; on success the key is closed, and what the server accepted is
/// returned with the names a checkpoint stored.
async fn enrol(
    common: &Common,
    profile: &Profile,
    dir: &Path,
    identity: Identity,
    token: Option<&Token>,
) -> Result<(Accepted, Vec<String>)> {
    // A stored identity's key file is in place already.
    let software_key = match identity.stored {
        true => None,
        false => identity.key.as_ref().and_then(DeviceKey::private_pem),
    };
    #[cfg(feature = "two-stage")]
    let checkpoint = IdentityStore::new(dir, profile, &identity, software_key.as_ref());
    let enrolled = profile
        .enrol(Enrolment {
            common,
            id: &identity.id,
            key: identity.key.as_ref(),
            resumed: identity.resumed,
            #[cfg(feature = "two-stage")]
            stored: identity.stored,
            #[cfg(feature = "two-stage")]
            checkpoint: &checkpoint,
        })
        .await;
    // Whether the identity is stored, and what a first stage of this run
    // stored.
    #[cfg(feature = "two-stage")]
    let (stored, written) = checkpoint.stored();
    #[cfg(not(feature = "two-stage"))]
    let (stored, written) = (identity.stored, Vec::new());
    let answer = enrolled.inspect_err(|error| {
        identity::keep_or_discard(dir, &identity.id, stored, token, error);
    })?;
    // From here on the fleet holds the device: every failure keeps it.
    let accepted = Accepted {
        id: identity.id.clone(),
        software_key: software_key.filter(|_| !stored),
        answer,
        // Recorded by the first attempt at storing it.
        kept: AnswerKept::IdentityOnly,
    };
    // The key (and with it, soon, the token session) is closed before
    // anything else runs.
    drop(identity);
    Ok((accepted, written))
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
#[cfg(feature = "two-stage")]
struct IdentityStore<'a> {
    dir: &'a Path,
    id: &'a str,
    key_file: Option<&'static str>,
    software_key: Option<&'a Secret>,
    /// Markers of a registration that `--force` replaces: they describe
    /// another identity once this one is stored.
    replaced: Vec<&'a str>,
    /// A key file left by an identity made in software is not this one's.
    key_in_token: bool,
    stored: Cell<bool>,
    /// What it stored, for `--json`.
    written: std::cell::RefCell<Vec<String>>,
}

#[cfg(feature = "two-stage")]
impl<'a> IdentityStore<'a> {
    fn new(
        dir: &'a Path,
        profile: &'a Profile,
        identity: &'a Identity,
        software_key: Option<&'a Secret>,
    ) -> Self {
        IdentityStore {
            dir,
            id: &identity.id,
            key_file: profile.key_spec().map(|spec| spec.file),
            software_key,
            replaced: profile.markers(),
            key_in_token: matches!(identity.key, Some(DeviceKey::Token(_))),
            stored: Cell::new(identity.stored),
            written: Default::default(),
        }
    }

    /// Whether the identity is stored, and the names this run stored.
    fn stored(self) -> (bool, Vec<String>) {
        (self.stored.get(), self.written.into_inner())
    }
}

#[cfg(feature = "two-stage")]
impl Checkpoint for IdentityStore<'_> {
    fn store_identity(&self, files: Vec<StoredFile>) -> Result<()> {
        if self.stored.get() {
            return Err(Error::internal("the identity is stored already"));
        }
        let entries = entries_to_store(self.key_file, self.software_key, &files);
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
        if let Err(e) = identity::finish(self.dir) {
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
        #[cfg(feature = "two-stage")]
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
    identity::finish(dir)?;
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
/// else a new one. Unless stored, its journal is written (anew, for a
/// resumed one) before anything is sent.
fn choose_identity(
    common: &Common,
    profile: &Profile,
    dir: &Path,
    key_spec: Option<&KeySpec>,
    pending: Option<Pending>,
    token: &Option<Arc<Token>>,
) -> Result<Identity> {
    let stored = match common.force {
        true => None,
        false => profile.stored_identity()?,
    };
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
        return stored_identity(profile, dir, id, key_spec, token.as_ref(), pending);
    }
    let wanted = identity::Wanted {
        force: common.force,
        configured_id: profile.configured_id(),
        key_spec,
        token: token.as_ref(),
    };
    let resumed = match pending {
        Some(earlier) => identity::resume(earlier, &wanted)?,
        None => None,
    };
    let identity = match resumed {
        Some(resumed) => resumed,
        None => new_identity(common, profile, key_spec, token.as_ref())?,
    };
    logging::note(Context::DeviceUuid, &identity.id);
    let software_key = identity.key.as_ref().and_then(DeviceKey::private_pem);
    identity::begin(dir, &identity.id, software_key.as_ref()).map_err(|e| {
        Error::new(
            e.kind(),
            format!("{e}; nothing was sent to the server, and the next run tries again"),
        )
    })?;
    Ok(identity)
}

/// The identity an earlier run stored (a first stage), with its key.
fn stored_identity(
    profile: &Profile,
    dir: &Path,
    id: String,
    key_spec: Option<&KeySpec>,
    token: Option<&Arc<Token>>,
    pending: Option<Pending>,
) -> Result<Identity> {
    if let Some(wanted) = profile.configured_id().filter(|wanted| *wanted != id) {
        return Err(Error::config(format!(
            "{} holds the identity of {id}, but the configuration asks for {wanted}; run with --force to replace it with a new identity",
            dir.display()
        )));
    }
    let key = stored_key(dir, &id, key_spec, token)?;
    if pending.is_some() {
        // The same id: left by a run stopped just after storing it.
        if let Err(e) = identity::finish(dir) {
            tracing::warn!("{e}");
        }
    }
    tracing::info!(
        "continuing with the identity {id} stored in {}",
        dir.display()
    );
    logging::note(Context::DeviceUuid, &id);
    Ok(Identity {
        id,
        key,
        resumed: true,
        stored: true,
    })
}

/// A new identity: the profile's id, a key made in the token or in software.
fn new_identity(
    common: &Common,
    profile: &Profile,
    key_spec: Option<&KeySpec>,
    token: Option<&Arc<Token>>,
) -> Result<Identity> {
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
