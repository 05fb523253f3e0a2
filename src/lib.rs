//! lmp-device-register: puts a Linux microPlatform device into its factory's
//! fleet. `run` is the whole program; `main.rs` only hands it the arguments
//! and the environment.

pub mod api;
pub mod bundle;
pub mod cli;
pub mod clock;
pub mod csr;
pub mod error;
pub mod hooks;
pub mod hsm;
pub mod key;
pub mod localfiles;
pub mod logging;
pub mod oauth;
pub mod pending;
pub mod register;
pub mod retry;
pub mod secret;
pub mod settings;
pub mod sotadir;

use clap::Parser;
use error::{Error, ErrorKind};
use settings::{Environment, Settings};
use std::ffi::OsString;

/// Runs `work` until it ends or SIGTERM/SIGINT arrives. On a signal the
/// future is dropped at its current await point: the sota dir is only ever
/// changed by synchronous code between awaits (a commit cannot be cut in
/// half), and drop guards undo what the run created. The handlers only wake
/// this task; no work happens in signal context.
async fn until_interrupted<T>(
    work: impl std::future::Future<Output = error::Result<T>>,
) -> error::Result<T> {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        _ => {
            return Err(Error::new(
                ErrorKind::Internal,
                "cannot install signal handlers",
            ))
        }
    };
    tokio::select! {
        result = work => result,
        _ = term.recv() => Err(Error::new(ErrorKind::Interrupted, "stopped by SIGTERM; nothing was left half-written")),
        _ = int.recv() => Err(Error::new(ErrorKind::Interrupted, "stopped by SIGINT; nothing was left half-written")),
    }
}

/// Runs the agent and returns the process exit code.
pub fn run(args: impl IntoIterator<Item = OsString>, env: Environment) -> u8 {
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ErrorKind::Config.exit_code()
            } else {
                0
            };
        }
    };
    logging::init(env.under_journald());
    let json = cli.json;
    let result = Settings::resolve(&cli, &env).and_then(|settings| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot start: {e}")))?;
        runtime.block_on(until_interrupted(register::register(&settings)))
    });
    match result {
        Ok(outcome) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&outcome).expect("outcome serialises")
                );
            }
            0
        }
        Err(error) => {
            tracing::error!("{error}");
            if json {
                let report = serde_json::json!({
                    "status": "error",
                    "kind": error.kind().as_str(),
                    "message": error.to_string(),
                    "exit_code": error.kind().exit_code(),
                });
                println!("{report}");
            }
            error.kind().exit_code()
        }
    }
}
