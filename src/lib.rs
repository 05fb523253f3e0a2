//! lmp-device-register: puts a freshly flashed device into its fleet, with
//! one of several registration profiles (LmP's factory API by default).
//! `run` is the whole program; `main.rs` only hands it the arguments and the
//! environment.

pub(crate) mod check;
pub mod cli;
pub(crate) mod clock;
pub mod config;
pub(crate) mod csr;
pub mod error;
pub(crate) mod flow;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod http;
pub(crate) mod identity;
pub(crate) mod keys;
pub(crate) mod logging;
pub mod profiles;
pub(crate) mod retry;
pub(crate) mod secret;
pub(crate) mod status;
pub(crate) mod store;
pub(crate) mod tls;
pub(crate) mod x509;

use config::Environment;
use error::{Error, ErrorKind};
use std::ffi::OsString;
use std::io::Write;

/// Runs `work` until it ends or SIGTERM/SIGINT arrives. On a signal the
/// future is dropped at its current await point: files are only ever
/// changed by synchronous code between awaits (an installation cannot be
/// cut in half), and drop guards undo what the run created. The handlers
/// only wake this task; no work happens in signal context.
async fn until_interrupted<T>(
    work: impl std::future::Future<Output = error::Result<T>>,
) -> error::Result<T> {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        _ => return Err(Error::internal("cannot install signal handlers")),
    };
    tokio::select! {
        result = work => result,
        _ = term.recv() => Err(Error::new(ErrorKind::Interrupted, "stopped by SIGTERM; nothing was left half-written")),
        _ = int.recv() => Err(Error::new(ErrorKind::Interrupted, "stopped by SIGINT; nothing was left half-written")),
    }
}

/// Prints the one `--json` object; a closed stdout is no reason to fail.
fn print_json(value: &serde_json::Value) {
    let _ = writeln!(std::io::stdout(), "{value}");
}

fn error_report(kind: ErrorKind, message: &str) -> serde_json::Value {
    serde_json::json!({
        "status": "error",
        "kind": kind.as_str(),
        "message": message,
        "exit_code": kind.exit_code(),
    })
}

/// Runs the agent and returns the process exit code.
pub fn run(args: impl IntoIterator<Item = OsString>, env: Environment) -> u8 {
    let args: Vec<OsString> = args.into_iter().collect();
    let json = args.iter().skip(1).any(|a| a == "--json");
    let command_line = match cli::CommandLine::try_parse_from(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            let _ = e.print();
            if !e.use_stderr() {
                return 0;
            }
            if json {
                // clap's first line says it all ("error: unexpected argument
                // '--x' found"); usage and tips stay on stderr.
                let rendered = e.to_string();
                let first = rendered.lines().next().unwrap_or_default();
                let message = first.strip_prefix("error: ").unwrap_or(first);
                print_json(&error_report(ErrorKind::Config, message));
            }
            return ErrorKind::Config.exit_code();
        }
    };
    let cli = &command_line.cli;
    let run_span = logging::init(env.under_journald(), cli.verbose || env.wants_debug());
    let _in_run = run_span.enter();
    if cli.status {
        return status::run(&command_line, &env).unwrap_or_else(|e| failed(cli.json, e));
    }
    if cli.check {
        return check::run(&command_line, &env).unwrap_or_else(|e| failed(cli.json, e));
    }
    let result = profiles::resolve(&command_line, &env).and_then(|(common, profile)| {
        logging::note(logging::Context::Profile, profile.name());
        for warning in &common.warnings {
            tracing::warn!("{warning}");
        }
        for (what, from) in &common.origins {
            tracing::info!("{what} read from {from}");
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::internal(format!("cannot start: {e}")))?;
        runtime.block_on(until_interrupted(flow::register(&common, &profile)))
    });
    match result {
        Ok(outcome) => {
            if cli.json {
                print_json(&serde_json::to_value(&outcome).unwrap_or_default());
            }
            0
        }
        Err(error) => failed(cli.json, error),
    }
}

/// Reports a run that failed; its exit code.
fn failed(json: bool, error: Error) -> u8 {
    tracing::error!(
        message_id = logging::RESULT_MESSAGE_ID,
        registration_result = "error",
        error_kind = error.kind().as_str(),
        exit_code = error.kind().exit_code(),
        "{error}"
    );
    if json {
        print_json(&error_report(error.kind(), &error.to_string()));
    }
    error.kind().exit_code()
}
