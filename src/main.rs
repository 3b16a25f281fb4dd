use std::process::ExitCode;

use clap::Parser;
use tcpscript::cli::Cli;

fn main() -> ExitCode {
    ExitCode::from(Cli::parse().run())
}
