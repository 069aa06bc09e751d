//! How a command ended, for people and scripts: the exit code, and an error in one line (the
//! gRPC code's name and the server's message, or what kept the client from the server and how
//! to point it elsewhere).
//!
//! Scripts branch on the exit code, so it is a contract (also in `--help` and the README):
//!
//! | Exit | When                                                                        |
//! |------|-----------------------------------------------------------------------------|
//! | 0    | Completed - Success or Nothing to Import, or any command that did its work  |
//! | 2    | Completed - Partial: imported, with rows to fix (`errors ID > fix.csv`)     |
//! | 1    | Error - Parsing, Error - Unknown, Cancelled, or any error                   |
//! | 64   | The command line is wrong (sysexits' EX_USAGE): nothing was sent            |
//!
//! Partial has a code of its own because it is neither: the valid rows are in, and a script
//! usually wants to fetch the fix-up file rather than stop or retry the whole file. A usage
//! error has one too, apart from 2 (which clap would give it): a typo in a script must never
//! read as a partial import.

use crate::proto::ImportStatus;

/// How a command ended, which decides the exit code.
///
/// A command returns it, `main` calls [`Outcome::exit_code`]; an error is a [`CliError`]
/// instead, and exits 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did what it was asked.
    Done,
    /// It followed an import to this status: the proto's `ImportStatus` number, kept raw so
    /// that a status this client does not know still gives an exit code (1).
    Ended(i32),
}

impl Outcome {
    /// 0 for Completed - Success and Nothing to Import, 2 for Completed - Partial, 1 for
    /// Error - Parsing, Error - Unknown and Cancelled.
    ///
    /// Also 1 for PROCESSING (an import that has not ended is no success yet), UNSPECIFIED and
    /// any number the proto does not know: only a status known to be good exits 0.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Done => 0,
            Outcome::Ended(status) => match ImportStatus::try_from(status) {
                Ok(ImportStatus::CompletedSuccess | ImportStatus::CompletedNothingToImport) => 0,
                Ok(ImportStatus::CompletedPartial) => 2,
                Ok(
                    ImportStatus::Unspecified
                    | ImportStatus::Processing
                    | ImportStatus::ErrorParsing
                    | ImportStatus::ErrorUnknown
                    | ImportStatus::Cancelled,
                )
                | Err(_) => 1,
            },
        }
    }
}

/// The exit code of a command line that clap or a command refused: sysexits' EX_USAGE.
pub const USAGE: u8 = 64;

/// What went wrong, in one line (printed after `error: `; exit code 1, or [`USAGE`]).
///
/// The text is built where the error happens, in words that say what to do. Only the `cli`
/// module writes one from text (`new`, `usage`); a `tonic::Status` converts into one through
/// `From`, which keeps the server's message.
#[derive(Debug)]
pub struct CliError {
    /// The line, without `error: `.
    message: String,
    /// The command line itself is wrong (a flag's value that clap could not check), so
    /// nothing was sent: exit 64 rather than 1.
    usage: bool,
}

impl CliError {
    /// A failure: exit code 1.
    pub(super) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            usage: false,
        }
    }

    /// A wrong command line found after clap's checks: exit code 64.
    pub(super) fn usage(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            usage: true,
        }
    }

    /// 64 for a wrong command line, 1 for every other error.
    pub fn exit_code(&self) -> u8 {
        if self.usage { USAGE } else { 1 }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

impl From<tonic::Status> for CliError {
    /// `NOT_FOUND: import 'x' was not found in account 'acme'`.
    ///
    /// The server's message is kept as it is (it says what to do), with any newline made a
    /// space, so that the error stays one line.
    fn from(status: tonic::Status) -> Self {
        let message = status.message().replace('\n', " ");
        CliError::new(format!("{}: {message}", code_name(status.code())))
    }
}

impl CliError {
    /// A local I/O failure: `what` was being done (`cannot read users.csv`), then the cause in
    /// plain words (`no such file or directory`).
    pub(super) fn io(what: impl std::fmt::Display, error: std::io::Error) -> Self {
        CliError::new(format!("{what}: {}", plain(&error)))
    }
}

/// What every command returns: how it ended, or the one-line error.
pub type CliResult = Result<Outcome, CliError>;

/// The gRPC code as the protocol names it: `FAILED_PRECONDITION`.
///
/// tonic's `Display` of a code is a sentence (`Some requested entity was not found`); the
/// name is what the proto, the README and grpcurl use, and what a person searches for.
pub(super) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// An error's innermost cause in plain words: `connection refused`, not
/// `transport error: ... Connection refused (os error 111)`.
///
/// The chain's outer layers (tonic's, hyper's) name the library, not the problem; the
/// innermost source is the one a person can act on. The OS error number is dropped and the
/// first letter lowered, so that it reads on after `cannot reach URL: `.
pub(super) fn plain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    let text = innermost.to_string();
    let text = match text.find(" (os error") {
        Some(at) => &text[..at],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_status() {
        let code = |status: ImportStatus| Outcome::Ended(status as i32).exit_code();
        assert_eq!(code(ImportStatus::CompletedSuccess), 0);
        assert_eq!(code(ImportStatus::CompletedNothingToImport), 0);
        assert_eq!(code(ImportStatus::CompletedPartial), 2);
        assert_eq!(code(ImportStatus::ErrorParsing), 1);
        assert_eq!(code(ImportStatus::ErrorUnknown), 1);
        assert_eq!(code(ImportStatus::Cancelled), 1);
        assert_eq!(Outcome::Done.exit_code(), 0);
    }

    #[test]
    fn an_rpc_error_is_one_line() {
        let error = CliError::from(tonic::Status::failed_precondition("import 'x' ended\nlong"));
        assert_eq!(
            error.to_string(),
            "FAILED_PRECONDITION: import 'x' ended long"
        );
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(plain(&io), "connection refused");
    }
}
