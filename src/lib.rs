//! lmp-device-register: puts a Linux microPlatform device into its factory's
//! fleet. `run` is the whole program; `main.rs` only hands it the arguments
//! and the environment.

pub mod api;
pub mod bundle;
pub mod cli;
pub mod csr;
pub mod error;
pub mod hooks;
pub mod hsm;
pub mod key;
pub mod localfiles;
pub mod logging;
pub mod oauth;
pub mod register;
pub mod retry;
pub mod secret;
pub mod settings;
pub mod sotadir;

use clap::Parser;
use error::{Error, ErrorKind};
use settings::{Environment, Settings};
use std::ffi::OsString;

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
        runtime.block_on(register::register(&settings))
    });
    match result {
        Ok(outcome) => {
            if json {
                println!("{}", serde_json::to_string(&outcome).expect("outcome serialises"));
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
