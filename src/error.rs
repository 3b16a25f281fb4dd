//! Every way a command can end badly, and the one place that maps each to
//! its exit code (the README's "Exit codes" table).

use std::io;

use thiserror::Error;

use crate::diagnostic::Diagnostic;

/// Exit codes, the same for every command.
pub mod exit {
    /// Everything ran and every expectation held.
    pub const OK: u8 = 0;
    /// An expectation or assertion failed (wrong reply, timeout, unexpected close).
    pub const FAILED: u8 = 1;
    /// Usage error: bad flag, unreadable file, missing parameter.
    pub const USAGE: u8 = 2;
    /// Script error: does not compile, or a runtime error in script code.
    pub const SCRIPT: u8 = 3;
    /// Network error: cannot bind, connect refused, connection reset.
    pub const NETWORK: u8 = 4;
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("cannot read `{path}`: {source}")]
    ReadFile { path: String, source: io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    /// The system refused something tcpscript needs to run: a thread, the
    /// async runtime, a signal handler.
    #[error("cannot {action}: {source}")]
    System {
        action: &'static str,
        source: io::Error,
    },
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
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::ReadFile { .. } | Error::ScriptUsage(_) => exit::USAGE,
            Error::Script(_) => exit::SCRIPT,
            Error::Failed(_) => exit::FAILED,
            Error::Bind { .. }
            | Error::Connect { .. }
            | Error::Network(_)
            | Error::System { .. } => exit::NETWORK,
            Error::TestsFailed { code, .. } => *code,
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
