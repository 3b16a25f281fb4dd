//! `tcpscript completions SHELL` and `tcpscript man`: both written from the
//! clap definitions the parser uses (src/cli.rs), so a new flag reaches the
//! shells and the man page without anyone copying it there.

use std::io::{self, Write};

use clap::CommandFactory;

use crate::error::Error;

/// Writes SHELL's completion script for the whole command line to stdout.
pub(crate) fn completions<C: CommandFactory>(shell: clap_complete::Shell) -> Result<(), Error> {
    let mut command = C::command();
    let name = command.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut out);
    write_stdout(&out)
}

/// Writes tcpscript(1), or tcpscript-COMMAND(1) for one subcommand, as roff
/// to stdout.
pub(crate) fn man<C: CommandFactory>(subcommand: Option<&str>) -> Result<(), Error> {
    let command = C::command();
    let page = match subcommand {
        None => command,
        Some(name) => {
            let names = || {
                command
                    .get_subcommands()
                    .map(|c| c.get_name().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let found = command.find_subcommand(name).ok_or_else(|| {
                Error::Usage(format!("no command `{name}`; the commands are {}", names()))
            })?;
            // The page's title and synopsis name the command as typed:
            // `tcpscript-server`, `tcpscript server [OPTIONS]`. Clap keeps
            // names as `&'static str` (its `string` feature is off): two
            // short strings leaked once by a process about to exit. A
            // subcommand has no version of its own; the page's footer
            // shows the program's.
            let program = command.get_name();
            found
                .clone()
                .name(format!("{program}-{name}").leak() as &str)
                .bin_name(format!("{program} {name}").leak() as &str)
                .version(env!("TCPSCRIPT_VERSION"))
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .and_then(|()| write_stdout_io(&out))
        .map_err(stdout_error)
}

fn write_stdout(bytes: &[u8]) -> Result<(), Error> {
    write_stdout_io(bytes).map_err(stdout_error)
}

/// Straight to stdout, not through `console`'s queue: nothing else writes
/// while these run, and a reader that goes away (`| head`) is an error to
/// report rather than a line to drop.
fn write_stdout_io(bytes: &[u8]) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(bytes)?;
    stdout.flush()
}

fn stdout_error(source: io::Error) -> Error {
    Error::WriteFile {
        path: "stdout".into(),
        source,
    }
}
