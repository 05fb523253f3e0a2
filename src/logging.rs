//! Log output: plain lines on stderr for a technician, the journal when
//! systemd runs the agent. Secrets are never logged: they are held in
//! `Secret`, whose formatting is redacted.
//!
//! In the journal, levels map to syslog priorities (error 3, warning 4,
//! info 6, debug 7), and what a line is about travels in fields of its own:
//! every line of a run carries `PROFILE`, `DEVICE_UUID` and `FACTORY` from
//! the moment they are known ([`note`]), and the one line that tells how the
//! run ended carries `MESSAGE_ID` = [`RESULT_MESSAGE_ID`],
//! `REGISTRATION_RESULT` (`registered`, `already-registered`, `error`) and,
//! for an error, `ERROR_KIND` and `EXIT_CODE`. On stderr only the message is
//! printed: a technician reads sentences, not fields.

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::debug_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// `journalctl MESSAGE_ID=a6b0462edfb34591aeeb05d885a78cfb` lists the
/// outcome of every run, on every boot. Never change it: fleet tooling
/// filters on it.
pub const RESULT_MESSAGE_ID: &str = "a6b0462edfb34591aeeb05d885a78cfb";

/// Journal fields describing the run, set once they are known.
#[derive(Debug, Clone, Copy)]
pub enum Context {
    Profile,
    DeviceUuid,
    Factory,
}

impl Context {
    fn field(self) -> &'static str {
        match self {
            Context::Profile => "profile",
            Context::DeviceUuid => "device_uuid",
            Context::Factory => "factory",
        }
    }
}

/// Adds `value` to every later journal line of this run (no effect on stderr).
pub fn note(context: Context, value: &str) {
    tracing::Span::current().record(context.field(), value);
}

/// The syslog convention, not tracing-journald's default (which puts info
/// at notice, 5, and debug at informational, 6).
fn syslog_priorities() -> PriorityMappings {
    PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// Sets up logging and returns the span the whole run is to be logged in:
/// it carries the [`Context`] fields to the journal. Enter it before
/// anything is logged.
pub fn init(to_journald: bool, debug: bool) -> tracing::Span {
    let filter = if debug {
        LevelFilter::DEBUG
    } else {
        LevelFilter::INFO
    };
    if to_journald {
        if let Ok(journald) = tracing_journald::layer() {
            let journald = journald
                .with_syslog_identifier("lmp-device-register".into())
                .with_priority_mappings(syslog_priorities())
                // Field names as written (DEVICE_UUID, MESSAGE_ID), not "F_…".
                .with_field_prefix(None);
            if tracing_subscriber::registry()
                .with(journald)
                .with(filter)
                .try_init()
                .is_ok()
            {
                return tracing::info_span!(
                    "registration",
                    profile = tracing::field::Empty,
                    device_uuid = tracing::field::Empty,
                    factory = tracing::field::Empty,
                );
            }
            return tracing::Span::none();
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(filter)
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .fmt_fields(debug_fn(|writer, field, value| {
            if field.name() == "message" {
                write!(writer, "{value:?}")
            } else {
                Ok(())
            }
        }))
        // Its own complaint about a failed write would go to the same broken
        // stderr through eprintln!, which panics; a log line that cannot be
        // written is lost, and the exit code still tells the outcome.
        .log_internal_errors(false)
        .try_init();
    tracing::Span::none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_follow_syslog() {
        let p = syslog_priorities();
        let digit = |p: Priority| p as u8 - b'0';
        assert_eq!([p.error, p.warn, p.info, p.debug].map(digit), [3, 4, 6, 7]);
    }

    #[test]
    fn the_result_message_id_is_a_journal_id128() {
        assert_eq!(RESULT_MESSAGE_ID.len(), 32);
        assert!(RESULT_MESSAGE_ID
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }
}
