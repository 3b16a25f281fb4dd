//! Every way a command can end badly, and the one place that maps each to
//! its exit code (the README's "Exit codes" table).

use std::io;

use thiserror::Error;

use crate::diagnostic::Diagnostic;

/// Exit codes, the same for every command.
pub mod exit {
    /// Everything ran and every expectation held.
    pub const OK: u8 = 0;
    /// An expectation or assertion failed (wrong reply, timeout, unexpected
    /// close), or a load-mode `--threshold` broke.
    pub const FAILED: u8 = 1;
    /// Usage error: bad flag, unreadable file, missing parameter.
    pub const USAGE: u8 = 2;
    /// Script error: does not compile, or a runtime error in script code.
    pub const SCRIPT: u8 = 3;
    /// Network error: cannot bind, connect refused, connection reset.
    pub const NETWORK: u8 = 4;
    /// System error: the operating system refused something the command
    /// needs to run at all (a thread, the async runtime, signal handlers, a
    /// second handle on a socket). Not the user's input (2), not the
    /// script (3), not the peer (4): retrying on a less loaded machine, or
    /// with higher limits (`ulimit -u`, `ulimit -n`), is what helps.
    pub const SYSTEM: u8 = 5;
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("cannot read `{path}`: {source}")]
    ReadFile { path: String, source: io::Error },
    /// A script (or a module it imports) that is not a regular file of a
    /// bounded size: a directory, a device such as `/dev/zero`, a FIFO.
    #[error("cannot use `{path}` as a script: {problem}")]
    ScriptFile {
        path: String,
        problem: ScriptFileProblem,
    },
    /// `merge`: a file that is not a usable `--hist-out` file.
    #[error("cannot merge `{path}`: {problem}")]
    ShardFile {
        path: String,
        problem: crate::load::merge::ShardFileError,
    },
    #[error("cannot write `{path}`: {source}")]
    WriteFile { path: String, source: io::Error },
    /// The operating system refused a resource; `action` says which, as
    /// in "start the server thread".
    #[error("cannot {action}: {source}")]
    System {
        action: &'static str,
        source: io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    /// TLS cannot be set up from the flags given (a missing or bad PEM file).
    #[error("{0}")]
    TlsSetup(#[from] crate::tls::TlsError),
    /// The TLS handshake failed; `reason` is one line from `tls::describe`.
    #[error("TLS handshake with {addr} failed: {reason}")]
    Handshake { addr: String, reason: String },
    /// A usage problem found while a script ran (a missing `--set` parameter).
    #[error("{0}")]
    ScriptUsage(Box<Diagnostic>),
    /// The script does not compile, or its own code failed at run time.
    #[error("{0}")]
    Script(Box<Diagnostic>),
    /// An expectation did not hold.
    #[error("{0}")]
    Failed(Box<Diagnostic>),
    /// The connection broke while a script was using it.
    #[error("{0}")]
    Network(Box<Diagnostic>),
    /// `tcpscript test`: some cases did not pass. Each was reported as it
    /// ended; `code` follows the exit-code table (see the runner).
    #[error("{failed} of {total} tests did not pass")]
    TestsFailed {
        failed: usize,
        total: usize,
        code: u8,
    },
    /// Load mode or `merge`: some `--threshold`s broke. Each is named in
    /// the summary; `code` is 1, or the failures' code (see `load`).
    #[error("{} of {total} thresholds broken: {}", broken.len(), broken.join(", "))]
    ThresholdsBroken {
        broken: Vec<String>,
        total: usize,
        code: u8,
    },
}

/// Why a path cannot be read as a script.
#[derive(Debug, Error)]
pub enum ScriptFileProblem {
    /// Reading a directory fails, a device such as `/dev/zero` never ends
    /// and opening a FIFO blocks until a writer comes: only regular files.
    #[error("it is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("it is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    /// Its size was within the limit when looked at, but not by the time
    /// it was read: something is still writing it.
    #[error("it grew past the limit of {limit} bytes while being read")]
    Grew { limit: u64 },
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_)
            | Error::ReadFile { .. }
            | Error::ScriptFile { .. }
            | Error::ShardFile { .. }
            | Error::WriteFile { .. }
            | Error::TlsSetup(_)
            | Error::ScriptUsage(_) => exit::USAGE,
            Error::Script(_) => exit::SCRIPT,
            Error::Failed(_) => exit::FAILED,
            Error::Bind { .. }
            | Error::Connect { .. }
            | Error::Handshake { .. }
            | Error::Network(_) => exit::NETWORK,
            Error::System { .. } => exit::SYSTEM,
            Error::TestsFailed { code, .. } | Error::ThresholdsBroken { code, .. } => *code,
        }
    }

    /// The report behind the errors that point into a script.
    pub fn diagnostic_mut(&mut self) -> Option<&mut Diagnostic> {
        match self {
            Error::ScriptUsage(d) | Error::Script(d) | Error::Failed(d) | Error::Network(d) => {
                Some(d)
            }
            _ => None,
        }
    }

    /// The full report: a rustc-like snippet when the error points into a script.
    pub fn render(&self) -> String {
        match self {
            Error::ScriptUsage(d) | Error::Script(d) | Error::Failed(d) | Error::Network(d) => {
                d.render()
            }
            // Every case was reported already, and the summary printed.
            Error::TestsFailed { .. } => String::new(),
            other => Diagnostic::new(other.to_string()).render(),
        }
    }

    /// Writes the report to stderr in one piece, so reports from
    /// concurrent connections never interleave, and in order with the
    /// transcript lines before it.
    pub fn eprint(&self) {
        let text = self.render();
        if !text.is_empty() {
            crate::console::err(text.trim_end_matches('\n'));
        }
    }
}
