//! Reports of test runs, for people and for machines.

pub(crate) mod events; // --json: one event per line
pub(crate) mod github; // GitHub Actions: ::error annotations and the step summary
pub(crate) mod html; // --html FILE: a self-contained page
pub(crate) mod junit; // --junit FILE: JUnit XML
pub(crate) mod tap; // --tap: TAP version 13
pub(crate) mod timeline; // load mode's figures over time, for --html

use std::time::Duration;

use crate::diagnostic::Diagnostic;
use crate::error::{Error, exit};

/// One client script run as a test case.
#[derive(Debug)]
pub(crate) struct CaseResult {
    /// The script's path as given: what reports call the test.
    pub(crate) name: String,
    pub(crate) duration: Duration,
    pub(crate) outcome: Outcome,
    /// What was said, formatted, oldest first.
    pub(crate) transcript: Vec<String>,
}

#[derive(Debug)]
pub(crate) enum Outcome {
    Passed,
    /// An expectation did not hold: a `<failure>` in JUnit.
    Failed(Error),
    /// The case could not run properly (script or network error): an `<error>`.
    Broken(Error),
}

impl Outcome {
    pub(crate) fn from_result<T>(result: Result<T, Error>) -> Outcome {
        match result {
            Ok(_) => Outcome::Passed,
            Err(error) if error.exit_code() == exit::FAILED => Outcome::Failed(error),
            Err(error) => Outcome::Broken(error),
        }
    }

    pub(crate) fn error(&self) -> Option<&Error> {
        match self {
            Outcome::Passed => None,
            Outcome::Failed(error) | Outcome::Broken(error) => Some(error),
        }
    }

    pub(crate) fn passed(&self) -> bool {
        matches!(self, Outcome::Passed)
    }
}

/// The error's diagnostic, or a plain one made from its message.
pub(crate) fn diagnostic_of(error: &Error) -> Diagnostic {
    match error {
        Error::ScriptUsage(d) | Error::Script(d) | Error::Failed(d) | Error::Network(d) => {
            (**d).clone()
        }
        other => Diagnostic::new(other.to_string()),
    }
}

/// The report without ANSI styles, for files and machines.
pub(crate) fn plain(error: &Error) -> String {
    anstream::adapter::strip_str(&error.render()).to_string()
}

/// Milliseconds, for people.
pub(crate) fn millis(duration: Duration) -> String {
    format!("{} ms", duration.as_millis())
}
