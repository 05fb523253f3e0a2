//! One error type for the whole agent. Every failure carries a kind, and the
//! kind alone decides the process exit code (documented in README.md, "Exit codes").

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A bug or an unexpected local failure (I/O, ...).
    Internal,
    /// Bad flags, environment or configuration files.
    Config,
    /// The device already has a registration (and `--force` was not given).
    AlreadyRegistered,
    /// The registration API answered with a final refusal (4xx).
    Rejected,
    /// The API could not be reached or kept failing (network, timeouts, 5xx).
    Unavailable,
    /// The API answered 201 but the answer cannot be trusted or used.
    BadResponse,
    /// The PKCS#11 module or token failed.
    Hsm,
    /// Another registration or aktualizr-lite holds the device.
    Busy,
    /// SIGINT/SIGTERM arrived; the run stopped cleanly.
    Interrupted,
}

impl ErrorKind {
    /// Every kind, in exit-code order (for the documentation's tables).
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Internal,
        ErrorKind::Config,
        ErrorKind::AlreadyRegistered,
        ErrorKind::Rejected,
        ErrorKind::Unavailable,
        ErrorKind::BadResponse,
        ErrorKind::Hsm,
        ErrorKind::Busy,
        ErrorKind::Interrupted,
    ];

    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Internal => 1,
            ErrorKind::Config => 2,
            ErrorKind::AlreadyRegistered => 3,
            ErrorKind::Rejected => 4,
            ErrorKind::Unavailable => 5,
            ErrorKind::BadResponse => 6,
            ErrorKind::Hsm => 7,
            ErrorKind::Busy => 8,
            ErrorKind::Interrupted => 9,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Internal => "internal",
            ErrorKind::Config => "config",
            ErrorKind::AlreadyRegistered => "already-registered",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::BadResponse => "bad-response",
            ErrorKind::Hsm => "hsm",
            ErrorKind::Busy => "busy",
            ErrorKind::Interrupted => "interrupted",
        }
    }
}

pub struct Error {
    kind: ErrorKind,
    inner: anyhow::Error,
    /// The request may have reached the server and been acted on, although
    /// no answer came back (timeout, broken connection).
    outcome_unknown: bool,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl fmt::Display + Send + Sync + 'static) -> Self {
        Error {
            kind,
            inner: anyhow::anyhow!("{message}"),
            outcome_unknown: false,
        }
    }

    pub fn with_outcome_unknown(mut self) -> Self {
        self.outcome_unknown = true;
        self
    }

    pub fn outcome_unknown(&self) -> bool {
        self.outcome_unknown
    }

    pub fn config(message: impl fmt::Display + Send + Sync + 'static) -> Self {
        Error::new(ErrorKind::Config, message)
    }

    pub fn internal(message: impl fmt::Display + Send + Sync + 'static) -> Self {
        Error::new(ErrorKind::Internal, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `{:#}` prints the whole chain on one line: "doing X: because Y".
        write!(f, "{:#}", self.inner)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {:#}", self.kind, self.inner)
    }
}

impl std::error::Error for Error {}

/// Attaches a kind and a context to any error, e.g. an `io::Error`.
pub(crate) trait ResultExt<T> {
    fn with_kind_context<C, F>(self, kind: ErrorKind, context: F) -> Result<T>
    where
        C: fmt::Display + Send + Sync + 'static,
        F: FnOnce() -> C;
}

impl<T, E> ResultExt<T> for std::result::Result<T, E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn with_kind_context<C, F>(self, kind: ErrorKind, context: F) -> Result<T>
    where
        C: fmt::Display + Send + Sync + 'static,
        F: FnOnce() -> C,
    {
        self.map_err(|e| Error {
            kind,
            inner: anyhow::Error::new(e).context(context()),
            outcome_unknown: false,
        })
    }
}
