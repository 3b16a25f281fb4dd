//! The run: what every section needs, each section asked for in turn,
//! then the report.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use tokio::runtime::Runtime;

use crate::check::check_section;
use crate::client::{CLIENT_EXCHANGES, PYTHON_CLIENT, client_section, rhai_client};
use crate::config::{Config, Section};
use crate::echo::echo_section;
use crate::idle::{IDLE_CONNECTIONS, idle_section};
use crate::load::{LOAD_CONVERSATION, load_section};
use crate::report::{Machine, Report};
use crate::servers::{ECHO_HOOK, PYTHON_SERVER, tcpscript};
use crate::tls::tls_section;

/// What every section needs.
pub(crate) struct Context {
    pub(crate) runtime: Runtime,
    dir: tempfile::TempDir,
    pub(crate) python: Option<PathBuf>,
    pub(crate) fd_limit: u64,
}

impl Context {
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub(crate) fn run(config: &Config) -> Result<(), String> {
    let started = Instant::now();
    let fd_limit = raise_fd_limit(IDLE_CONNECTIONS as u64 + 256);
    let python = find_python();
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    fs::write(dir.path().join("echo.rhai"), ECHO_HOOK).map_err(|e| e.to_string())?;
    fs::write(dir.path().join("load.rhai"), LOAD_CONVERSATION).map_err(|e| e.to_string())?;
    fs::write(dir.path().join("echo_server.py"), PYTHON_SERVER).map_err(|e| e.to_string())?;
    fs::write(dir.path().join("client.py"), PYTHON_CLIENT).map_err(|e| e.to_string())?;
    fs::write(
        dir.path().join("client.rhai"),
        rhai_client(CLIENT_EXCHANGES),
    )
    .map_err(|e| e.to_string())?;
    // The load generator: two workers, like the servers it drives.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let context = Context {
        runtime,
        dir,
        python,
        fd_limit,
    };

    let machine = Machine::read();
    eprintln!("tcpscript benchmark: {}", machine.line());
    eprintln!("binary: {}", tcpscript().display());
    match &context.python {
        Some(p) => eprintln!("python: {}", p.display()),
        None => eprintln!("python: not found, Python rows are skipped"),
    }
    eprintln!(
        "open-file limit: {fd_limit}{}",
        if fd_limit < IDLE_CONNECTIONS as u64 + 64 {
            " (too low for 10,000 connections)"
        } else {
            ""
        }
    );
    eprintln!();

    let mut report = Report::default();
    if config.sections.contains(&Section::Echo) {
        report.echo = Some(echo_section(config, &context)?);
    }
    if config.sections.contains(&Section::Client) {
        report.client = Some(client_section(config, &context)?);
    }
    if config.sections.contains(&Section::Load) {
        report.load = Some(load_section(config, &context)?);
    }
    if config.sections.contains(&Section::Idle) {
        report.idle = Some(idle_section(config, &context)?);
    }
    if config.sections.contains(&Section::Check) {
        report.check = Some(check_section(config)?);
    }
    if config.sections.contains(&Section::Tls) {
        report.tls = Some(tls_section(config, &context)?);
    }
    report.print(config, &machine, &context, started.elapsed());
    Ok(())
}

/// Raises this process's open-file limit to at least `want` if it can (to
/// the hard limit, and past it when privileged). Returns the soft limit.
pub(crate) fn raise_fd_limit(want: u64) -> u64 {
    use rlimit::Resource;
    let Ok((soft, hard)) = rlimit::getrlimit(Resource::NOFILE) else {
        return 0;
    };
    if hard < want && want != u64::MAX {
        // Only root may raise the hard limit; try, and ignore a refusal.
        let _ = rlimit::setrlimit(Resource::NOFILE, want, want);
    }
    let (_, hard) = rlimit::getrlimit(Resource::NOFILE).unwrap_or((soft, hard));
    rlimit::increase_nofile_limit(hard).unwrap_or(soft)
}

/// The real interpreter behind `python3` (not a pyenv shim script, whose
/// start-up would be counted against Python).
fn find_python() -> Option<PathBuf> {
    let output = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    path.exists().then_some(path)
}
