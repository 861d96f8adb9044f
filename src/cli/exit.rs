//! One exit-code rule for every `clove` command, so scripts can tell the cases apart:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the daemon said no (a reply with `"success": false`), or the command's check failed |
//! | 2 | the daemon cannot be reached (no socket, connection refused or dropped) |
//! | 64 | usage error: bad arguments, bad JSON, an unknown op, a missing or invalid file |
//!
//! `clove exec` exits with the command's own exit code instead, when the command ran.

use std::process::ExitCode;

/// The daemon said no, or a check failed.
pub const REFUSED: u8 = 1;
/// The daemon cannot be reached.
pub const UNREACHABLE: u8 = 2;
/// The command line, or a file it names, is wrong (`EX_USAGE` of sysexits.h).
pub const USAGE: u8 = 64;

/// Why a command failed; the text is printed as `clove: TEXT` on stderr.
#[derive(Debug)]
pub enum Failure {
    /// Exit 1: the daemon refused, or what was checked is not right.
    Refused(String),
    /// Exit 2: no daemon answers.
    Unreachable(String),
    /// Exit 64: fix the command line (or the file it names) and try again.
    Usage(String),
}

impl Failure {
    pub fn code(&self) -> u8 {
        match self {
            Failure::Refused(_) => REFUSED,
            Failure::Unreachable(_) => UNREACHABLE,
            Failure::Usage(_) => USAGE,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::Refused(m) | Failure::Unreachable(m) | Failure::Usage(m) => m,
        }
    }
}

/// What a command returns: its exit code, or why it failed.
pub type Outcome = Result<ExitCode, Failure>;

/// Exit 1 without a message (the command printed what went wrong itself).
pub fn refused() -> ExitCode {
    ExitCode::from(REFUSED)
}

/// The help text's section on exit codes (`clove --help`).
pub const HELP: &str = "Exit codes: 0 success; 1 the daemon said no (a reply with \"success\": \
false) or a check failed; 2 the daemon cannot be reached; 64 usage error (bad arguments, bad \
JSON, unknown op, missing or invalid file). `clove exec` exits with the command's own code.";
