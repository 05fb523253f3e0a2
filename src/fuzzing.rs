//! The agent's parsers of untrusted input, for the fuzz targets in `fuzz/`
//! (docs/fuzzing.md). Not an API: hidden from the documentation and kept to
//! what the targets need. Each item is the agent's own function, re-exported,
//! or a thin adapter where the agent's types are private to the crate, so
//! that a target never runs a copy of the logic it checks.
//!
//! The shared parsers and the LmP profile's are here; each optional
//! profile's are in its own folder (`profiles::NAME::fuzzing`), as
//! everything of a profile is.

pub use crate::config::{parse_hsm_file, parse_single_line};
pub use crate::error::{Error, ErrorKind};
pub use crate::http::{parse_retry_after, server_message, HttpError};
pub use crate::identity::PENDING_FILE;
pub use crate::profiles::lmp::answer::{validate as lmp_answer, Bundle, ValidityCheck};
pub use crate::retry::RetryPolicy;
pub use crate::secret::Secret;
pub use crate::x509::pem_certificates;
pub use x509_parser::time::ASN1Time;

use std::future::Future;
use std::time::Duration;

/// `/etc/os-release` and `/etc/sota/hsm` as `KEY=value` pairs.
pub fn parse_shell_vars(text: &str) -> Result<Vec<(String, String)>, String> {
    crate::config::parse_shell_vars(text)
}

/// A file as the flow would store it: name, mode, contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileToStore {
    pub name: String,
    pub mode: u32,
    pub contents: String,
}

/// What an LmP registration stores from a validated answer; `p11`: the
/// `[p11]` section of a token key.
pub fn lmp_files_to_store(
    bundle: &Bundle,
    p11: Option<toml::Table>,
) -> Result<Vec<FileToStore>, Error> {
    let files = crate::profiles::lmp::files_to_store(bundle, p11)?;
    Ok(files
        .iter()
        .map(|file| FileToStore {
            name: file.name.clone(),
            mode: file.mode,
            contents: file.contents.clone(),
        })
        .collect())
}

/// One failed request that carried `retry_after` (an HTTP 503), through the
/// agent's retry loop with `policy` (whose `max_attempts` should be 1: a
/// retry would sleep). Returns the loop's final error.
pub fn retry_after_refusal(policy: &RetryPolicy, retry_after: Option<Duration>) -> HttpError {
    let refused = crate::retry::retry(policy, "fuzzing", |_| async {
        Err::<(), _>(HttpError::Status {
            code: 503,
            message: String::new(),
            retry_after,
        })
    });
    let mut refused = std::pin::pin!(refused);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match refused.as_mut().poll(&mut context) {
        std::task::Poll::Ready(Err(error)) => error,
        std::task::Poll::Ready(Ok(())) => unreachable!("the request never succeeds"),
        std::task::Poll::Pending => panic!("the retry loop slept: give the policy max_attempts 1"),
    }
}

/// What the journal loader takes from a pending journal: the identity, the
/// last whole answer (as JSON), and how many records it skipped.
pub struct Journal {
    pub id: String,
    pub software_key: Option<Secret>,
    pub answer: Option<serde_json::Value>,
    pub skipped: usize,
}

fn journal(pending: crate::identity::Pending, skipped: usize) -> Journal {
    Journal {
        answer: pending
            .answer
            .as_ref()
            .map(|answer| serde_json::to_value(answer).expect("an answer is JSON")),
        id: pending.id,
        software_key: pending.software_key,
        skipped,
    }
}

/// The journal's bytes as `load` reads them (`identity.rs` `parse`).
pub fn journal_parse(bytes: &[u8]) -> Result<Journal, String> {
    crate::identity::parse(bytes).map(|(pending, skipped)| journal(pending, skipped))
}

/// Writes `journal` into `dir` as a registration does (`begin`, then
/// `record_answer`) and loads it again (`load`).
pub fn journal_round_trip(dir: &std::path::Path, journal: &Journal) -> Result<Journal, Error> {
    crate::identity::begin(dir, &journal.id, journal.software_key.as_ref())?;
    if let Some(answer) = &journal.answer {
        let answer: crate::profiles::Answer = serde_json::from_value(answer.clone())
            .map_err(|e| Error::internal(format!("the answer does not decode: {e}")))?;
        crate::identity::record_answer(dir, &journal.id, &answer)?;
    }
    let pending = crate::identity::load(dir)?
        .ok_or_else(|| Error::internal("the journal just written is gone"))?;
    Ok(self::journal(pending, 0))
}

/// The settings of a run with `--root root` (where the config file and the
/// device files are), `args` and an empty environment: the profile's name,
/// or every problem found.
pub fn settings_under_root(root: &std::path::Path, args: &[&str]) -> Result<&'static str, Error> {
    let mut all = vec!["lmp-device-register".to_string(), "--root".into()];
    all.push(root.display().to_string());
    all.extend(args.iter().map(|arg| arg.to_string()));
    let command_line = crate::cli::CommandLine::try_parse_from(&all)
        .map_err(|e| Error::config(format!("the command line: {e}")))?;
    crate::profiles::resolve(&command_line, &crate::config::Environment::default())
        .map(|(_, profile)| profile.name())
}
