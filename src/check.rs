//! `tcpscript check SCRIPT...`: compile every script, report every error,
//! run nothing.

use std::path::PathBuf;

use crate::diagnostic::Diagnostic;
use crate::engine::{self, Limits, Params};
use crate::error::{Error, exit};

pub(crate) fn run(scripts: &[PathBuf], quiet: bool) -> Result<(), Error> {
    let engine = engine::new_engine(&Limits::default(), Params::default(), None);
    let mut unreadable = 0;
    let mut broken = 0;
    for path in scripts {
        match engine::compile(&engine, path) {
            Ok(_) => {
                if !quiet {
                    crate::console::err(&format!("ok: {}", path.display()));
                }
            }
            Err(error) => {
                error.eprint();
                crate::report::github::annotate(&error, None);
                match error.exit_code() {
                    exit::USAGE => unreadable += 1,
                    _ => broken += 1,
                }
            }
        }
    }
    let failed = unreadable + broken;
    if failed == 0 {
        return Ok(());
    }
    let summary = format!("{failed} of {} scripts failed to check", scripts.len());
    if unreadable > 0 {
        Err(Error::Usage(summary))
    } else {
        Err(Error::Script(Box::new(Diagnostic::new(summary))))
    }
}
