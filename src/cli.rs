//! The command line. Names and short flags match the C++ `lmp-device-register`
//! so existing scripts and documentation keep working.
//!
//! The flags of the settings (`-f`, `-T`, `--manufacturer-id`, ...) are
//! declared with their settings (`config::setting`) and added to the command
//! from there; [`Cli`] holds only the flags that steer the run itself.

use clap::{ArgAction, Args, CommandFactory, FromArgMatches};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

/// Parses the boolean words that scripts pass to the old tool's flags.
pub(crate) fn parse_bool_word(word: &str) -> Result<bool, String> {
    match word.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "expected 1/true/yes/on or 0/false/no/off, got {word:?}"
        )),
    }
}

/// Register this device with its factory (software key or PKCS#11 token).
#[derive(Args, Debug, Default, Clone)]
pub struct Cli {
    /// Replace an existing registration.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool_word, action = ArgAction::Set)]
    pub force: Option<bool>,

    /// Resolve every default path (/etc, /var/sota, /var/lock) under this directory, which must exist.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Config file with one table per profile [default: /etc/lmp-device-register.toml when it exists].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Also log debug lines (or set RUST_LOG=debug; -v is --validate-uuid, as in the C++ tool).
    #[arg(long)]
    pub verbose: bool,

    /// Print one JSON object with the result on stdout.
    #[arg(long)]
    pub json: bool,

    /// Show what this device is registered as, for every profile with a state dir, and exit; reads only.
    #[arg(long)]
    pub status: bool,

    /// Check everything a registration would need (settings, clock, file modes, token, state, servers) without registering, and exit; changes nothing.
    #[arg(long, conflicts_with = "status")]
    pub check: bool,

    /// First-boot mode for the systemd unit: an existing registration is success, and network failures are retried until the deadline.
    #[arg(long)]
    pub boot: bool,

    /// Stop retrying network failures after this many seconds [default: 60, or 1800 with --boot].
    #[arg(long, value_name = "SECONDS")]
    pub retry_deadline: Option<u64>,

    /// Give up on one HTTP request after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout: u64,
}

impl CommandFactory for Cli {
    /// The whole command: the settings' flags first (the C++ tool's, then
    /// the profiles'), then the run's own.
    fn command() -> clap::Command {
        let command = clap::Command::new(env!("CARGO_PKG_NAME"))
            .version(env!("CARGO_PKG_VERSION"))
            .args_override_self(true)
            .args(crate::profiles::declared_flags());
        <Cli as Args>::augment_args(command).about(env!("CARGO_PKG_DESCRIPTION"))
    }

    fn command_for_update() -> clap::Command {
        Self::command()
    }
}

impl clap::Parser for Cli {}

/// A parsed command line: the run's own flags, and the values of the
/// settings' flags, which the settings resolver reads.
#[derive(Debug, Clone)]
pub struct CommandLine {
    pub cli: Cli,
    matches: clap::ArgMatches,
}

impl CommandLine {
    pub fn try_parse_from(
        args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    ) -> Result<CommandLine, clap::Error> {
        let matches = Cli::command().try_get_matches_from(args)?;
        let cli = Cli::from_arg_matches(&matches)?;
        Ok(CommandLine { cli, matches })
    }

    /// The value given to the flag `--long` (the last one, if repeated).
    pub fn value(&self, long: &str) -> Option<&OsStr> {
        self.matches.try_get_raw(long).ok().flatten()?.next_back()
    }
}

/// The flag of a declared setting, with its help from the declaration.
pub(crate) fn declared_arg(setting: &dyn crate::config::Describe) -> Option<clap::Arg> {
    let flag = setting.flag()?;
    let mut arg = clap::Arg::new(flag.long)
        .long(flag.long)
        .value_name(flag.value_name)
        .help(crate::config::help_text(setting))
        .action(ArgAction::Set)
        .value_parser(clap::value_parser!(OsString));
    if let Some(short) = flag.short {
        arg = arg.short(short);
    }
    if setting.is_path() {
        arg = arg.value_hint(clap::ValueHint::AnyPath);
    }
    if setting.switch() {
        // Bare (`-p`) means on; the old explicit form (`-p 1`) still works,
        // and a word that is not a boolean is refused by clap at once.
        arg = arg
            .num_args(0..=1)
            .default_missing_value("true")
            .value_parser(|word: &str| parse_bool_word(word).map(|_| OsString::from(word)));
    }
    Some(arg)
}
