use std::process::ExitCode;

use clap::Parser;
use tcpscript::cli::Cli;

fn main() -> ExitCode {
    ExitCode::from(Cli::parse().run())
}

// Every message costs a few small allocations (Rhai strings, script
// values); mimalloc makes those cheaper than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
