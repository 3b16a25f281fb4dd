//! `tcpscript check SCRIPT...`: compile every script and read its framing
//! constants, report every error, run nothing.

use std::path::PathBuf;

use crate::diagnostic::Diagnostic;
use crate::engine::{self, Limits, Params};
use crate::error::{Error, exit};

pub(crate) fn run(scripts: &[PathBuf], quiet: bool) -> Result<(), Error> {
    let engine = engine::new_engine(&Limits::default(), Params::default(), None);
    let mut unreadable = 0;
    let mut broken = 0;
    for path in scripts {
        // What a run reads before anything runs is checked too: the
        // framing constants (a proxy script's `UP_` and `DOWN_` ones too).
        let checked = engine::compile(&engine, path).and_then(|script| {
            for constant in ["FRAMING", "UP_FRAMING", "DOWN_FRAMING"] {
                script.declared_framing_named(constant)?;
            }
            Ok(())
        });
        match checked {
            Ok(()) => {
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
