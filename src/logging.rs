//! Log output: plain lines on stderr for a technician, the journal when
//! systemd runs the agent. Secrets are never logged: they are held in
//! `Secret`, whose formatting is redacted.

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub fn init(to_journald: bool, debug: bool) {
    let filter = if debug {
        LevelFilter::DEBUG
    } else {
        LevelFilter::INFO
    };
    if to_journald {
        if let Ok(journald) = tracing_journald::layer() {
            let _ = tracing_subscriber::registry()
                .with(journald.with_syslog_identifier("lmp-device-register".into()))
                .with(filter)
                .try_init();
            return;
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(filter)
        .without_time()
        .with_target(false)
        .with_ansi(false)
        // Its own complaint about a failed write would go to the same broken
        // stderr through eprintln!, which panics; a log line that cannot be
        // written is lost, and the exit code still tells the outcome.
        .log_internal_errors(false)
        .try_init();
}
