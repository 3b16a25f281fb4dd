//! `tcpscript test`: client scripts as test cases, against a server script
//! started in-process on a free port or an outside server, with one line
//! per test, a summary, and reports for CI.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::client::{ClientOptions, ClientScript};
use crate::error::{Error, exit};
use crate::report::events::{Events, result_event};
use crate::report::{self, CaseResult, Outcome};
use crate::server::hooks::ServerScript;
use crate::server::{self, ServerOptions};
use crate::transcript::Verbosity;

/// Messages of each test kept for the reports (JUnit's `<system-out>`),
/// each by its head; the transcript also bounds the bytes they hold.
const KEPT_FOR_REPORTS: usize = 1000;

#[derive(Debug, Clone)]
pub(crate) struct TestOptions {
    /// Client scripts, or folders of them.
    pub(crate) clients: Vec<PathBuf>,
    /// How every case connects: `connect` is ignored when a server is given.
    pub(crate) client: ClientOptions,
    /// A server script to start in-process, with its options.
    pub(crate) server: Option<(PathBuf, ServerSettings)>,
    pub(crate) jobs: usize,
    pub(crate) junit: Option<PathBuf>,
    pub(crate) html: Option<PathBuf>,
    pub(crate) tap: bool,
    pub(crate) json: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct ServerSettings {
    pub(crate) limits: crate::engine::Limits,
    pub(crate) hook_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    /// `--udp`: the server serves datagrams.
    pub(crate) udp: Option<crate::server::udp::UdpOptions>,
    /// `--tls`: the server's TLS, its throwaway CA already trusted by
    /// every case's client.
    pub(crate) tls: Option<crate::tls::ServerSetup>,
    /// `--tls`: every connection speaks TLS; otherwise `tls` serves only
    /// the script's `starttls()`.
    pub(crate) tls_on_accept: bool,
}

/// Runs every case; `Ok` only when all passed.
pub(crate) fn run(options: TestOptions) -> Result<(), Error> {
    let cases = collect(&options.clients)?;
    let started = Instant::now();
    let verbosity = options.client.verbosity;
    let mut client = options.client.clone();

    let background = match &options.server {
        Some((path, settings)) => {
            let script = ServerScript::load(
                path,
                &settings.limits,
                settings.hook_timeout,
                client.params.clone(),
                quieter(verbosity),
            )?;
            let framing = match &client.framing {
                Some(framing) => framing.clone(),
                None => script
                    .declared_framing(client.max_frame)?
                    .unwrap_or(crate::cli::default_framing(settings.udp.is_some())),
            };
            let background = server::spawn(
                script,
                ServerOptions {
                    listen: "127.0.0.1:0".into(),
                    framing,
                    max_frame: client.max_frame,
                    verbosity: quieter(verbosity),
                    hook_timeout: settings.hook_timeout,
                    idle_timeout: settings.idle_timeout,
                    udp: settings.udp,
                },
                settings.tls.clone().map(|setup| server::Tls {
                    setup,
                    on_accept: settings.tls_on_accept,
                }),
            )?;
            client.connect = background.addr().to_string();
            if verbosity >= Verbosity::Normal {
                crate::console::err(&format!(
                    "server {} listening on {}{}",
                    path.display(),
                    if settings.udp.is_some() { "udp " } else { "" },
                    background.addr()
                ));
                if let Some(tls) = &settings.tls {
                    crate::console::err(&format!(
                        "server {} tls fingerprint SHA256 {}",
                        path.display(),
                        tls.fingerprint
                    ));
                }
            }
            Some(background)
        }
        None => None,
    };

    let events = options.json.then(Events::to_stdout);
    let results = run_cases(&cases, &client, options.jobs, events.as_ref(), verbosity);
    if let Some(background) = background {
        background.stop();
    }
    let total = started.elapsed();

    let passed = results.iter().filter(|r| r.outcome.passed()).count();
    let failed = results.len() - passed;
    if verbosity >= Verbosity::Normal || failed > 0 {
        crate::console::err(&format!(
            "{passed} passed, {failed} failed ({:.2}s)",
            total.as_secs_f64()
        ));
    }
    if options.tap {
        print!("{}", report::tap::render(&results));
    }
    if let Some(path) = &options.junit {
        report::junit::write(path, &results, total)?;
    }
    if let Some(path) = &options.html {
        report::html::write(path, &results, total)?;
    }
    if report::github::enabled() {
        for result in &results {
            if let Some(error) = result.outcome.error() {
                report::github::annotate(error, Some(&result.name));
            }
        }
        if let Err(e) = report::github::write_summary(&results) {
            crate::console::err(&format!("warning: cannot write $GITHUB_STEP_SUMMARY: {e}"));
        }
    }
    match exit_code(&results) {
        exit::OK => Ok(()),
        code => Err(Error::TestsFailed {
            failed,
            total: results.len(),
            code,
        }),
    }
}

/// 1 when only expectations failed; a case that could not run properly
/// (script error 3, network error 4, usage 2) gives its own code, the
/// first such case in order deciding.
fn exit_code(results: &[CaseResult]) -> u8 {
    let mut code = exit::OK;
    for result in results {
        match &result.outcome {
            Outcome::Passed => {}
            Outcome::Failed(_) => {
                if code == exit::OK {
                    code = exit::FAILED;
                }
            }
            Outcome::Broken(error) => return error.exit_code(),
        }
    }
    code
}

/// Files as given, and the `.rhai` files of folders, sorted.
fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let mut cases = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|source| Error::ReadFile {
                    path: path.display().to_string(),
                    source,
                })?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "rhai"))
                .collect();
            found.sort();
            cases.extend(found);
        } else {
            cases.push(path.clone());
        }
    }
    if cases.is_empty() {
        return Err(Error::Usage(
            "no client scripts to run: give .rhai files or folders holding them".into(),
        ));
    }
    Ok(cases)
}

/// Runs the cases on `jobs` threads; results come back in the given order.
fn run_cases(
    cases: &[PathBuf],
    client: &ClientOptions,
    jobs: usize,
    events: Option<&Events>,
    verbosity: Verbosity,
) -> Vec<CaseResult> {
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<CaseResult>>> = cases.iter().map(|_| Mutex::new(None)).collect();
    let print = Mutex::new(());
    let work = || {
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some(path) = cases.get(index) else { break };
            let result = run_case(path, client, events);
            {
                let _guard = print.lock().unwrap_or_else(|e| e.into_inner());
                print_result(&result, verbosity);
            }
            *slots[index].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        }
    };
    std::thread::scope(|scope| {
        // Each runner thread is sized for scripts; if the system refuses
        // one, the threads it did start (or this one) take its share.
        let mut started = 0;
        for _ in 0..jobs.clamp(1, cases.len()) {
            if crate::stack::spawn_scoped(scope, "tcpscript-test", work).is_ok() {
                started += 1;
            }
        }
        if started == 0 {
            work();
        }
    });
    slots
        .into_iter()
        .filter_map(|slot| slot.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect()
}

fn run_case(path: &Path, client: &ClientOptions, events: Option<&Events>) -> CaseResult {
    let name = path.display().to_string();
    let started = Instant::now();
    let options = ClientOptions {
        script: path.to_path_buf(),
        verbosity: quieter(client.verbosity),
        ..client.clone()
    };
    let test_events = events.map(|e| e.for_test(&name));
    let (result, transcript) = match ClientScript::load(&options) {
        Ok(script) => {
            let conversed = script.run(test_events.clone(), KEPT_FOR_REPORTS);
            (conversed.result, conversed.transcript)
        }
        Err(error) => (Err(error), Vec::new()),
    };
    let duration = started.elapsed();
    let outcome = Outcome::from_result(result);
    if let Some(events) = &test_events {
        events.emit("result", result_event(outcome.error(), duration));
    }
    CaseResult {
        name,
        duration,
        outcome,
        transcript,
    }
}

/// What the server and each case print themselves during a run: their
/// `log()` lines only with `-v`, and never live transcripts, which would
/// interleave between parallel cases (failures show theirs in the report).
fn quieter(verbosity: Verbosity) -> Verbosity {
    match verbosity {
        Verbosity::Verbose => Verbosity::Normal,
        _ => Verbosity::Quiet,
    }
}

fn print_result(result: &CaseResult, verbosity: Verbosity) {
    let time = report::millis(result.duration);
    match result.outcome.error() {
        None => {
            if verbosity >= Verbosity::Normal {
                crate::console::err(&format!("{PASS}PASS{PASS:#} {} ({time})", result.name));
            }
        }
        Some(error) => {
            crate::console::err(&format!("{FAIL}FAIL{FAIL:#} {} ({time})", result.name));
            error.eprint();
        }
    }
}

const PASS: anstyle::Style = anstyle::AnsiColor::Green.on_default().bold();
const FAIL: anstyle::Style = anstyle::AnsiColor::Red.on_default().bold();
