use std::process::ExitCode;

use clap::Parser;
use tcpscript::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error.eprint();
            ExitCode::from(error.exit_code())
        }
    }
}

// Every message costs a few small allocations (Rhai strings, script
// values); mimalloc makes those cheaper than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
