//! The command line: flags as SPEC.md names them, and the step from parsed
//! flags to each command's options.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::check;
use crate::client::{ClientOptions, ClientScript};
use crate::engine::Limits;
use crate::error::Error;
use crate::framing::Framing;
use crate::load::{self, LoadOptions, Until};
use crate::manual::{self, ManualClientOptions, ManualServerOptions};
use crate::record::RecordOptions;
use crate::report::{self, events::Events};
use crate::runner::{self, ServerSettings, TestOptions};
use crate::server::hooks::DEFAULT_MAX_OPERATIONS;
use crate::server::hooks::ServerScript;
use crate::server::{self, ServerOptions};
use crate::transcript::SHOWN_ON_FAILURE;
use crate::transcript::Verbosity;
use serde_json::json;

/// The tutorial's port, on loopback unless asked otherwise.
const DEFAULT_ADDR: &str = "127.0.0.1:7777";

#[derive(Debug, Parser)]
#[command(
    name = "tcpscript",
    version,
    about = "Drive TCP clients and servers from Rhai scripts",
    long_about = "Drive TCP clients and servers from Rhai scripts.\n\n\
        A server script says how to reply to every message; a client script says \
        what to send and asserts what comes back. Without a script, both commands \
        run by hand on stdin, like the TCP tutorial they automate.\n\n\
        Exit codes: 0 ok, 1 an expectation failed, 2 usage error, 3 script error, \
        4 network error."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Reply to every message by script (or by hand on stdin)
    Server(ServerArgs),
    /// Run a conversation by script (or by hand on stdin)
    Client(ClientArgs),
    /// Run client scripts as test cases, with reports for CI
    Test(TestArgs),
    /// Compile scripts and report errors; run nothing
    Check(CheckArgs),
}

/// Flags both roles share.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// What one message is: line, raw, delim:SEQ or len:u8|u16|u32[:be|le]
    /// [default: the script's FRAMING constant, else line]
    #[arg(long, value_name = "FRAMING")]
    pub(crate) framing: Option<Framing>,
    /// Largest message accepted from the peer, e.g. 65536, 64KiB, 1MiB
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "1MiB")]
    pub(crate) max_frame: usize,
    /// A parameter for the script's param("NAME"); repeatable
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_param)]
    pub(crate) params: Vec<(String, String)>,
    /// Show the transcript: > sent, < received, with time offsets
    #[arg(short, long)]
    pub(crate) verbose: bool,
    /// Print errors only
    #[arg(short, long, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
}

impl CommonArgs {
    fn verbosity(&self) -> Verbosity {
        Verbosity::from_flags(self.verbose as u8, self.quiet)
    }

    fn params(&self) -> Arc<HashMap<String, String>> {
        Arc::new(self.params.iter().cloned().collect())
    }
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Server script with on_connect / on_message / on_disconnect hooks
    pub(crate) script: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port
    #[arg(short, long, value_name = "ADDR", default_value = DEFAULT_ADDR)]
    pub(crate) listen: String,
    /// Without a script: reply to each message with itself
    #[arg(long, conflicts_with_all = ["script", "record"])]
    pub(crate) echo: bool,
    #[command(flatten)]
    pub(crate) limits: ServerLimitArgs,
    #[command(flatten)]
    pub(crate) record: RecordArgs,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Conversation script: send, recv, expect, assert
    pub(crate) script: Option<PathBuf>,
    /// Address to connect to
    #[arg(short, long, value_name = "ADDR", default_value = DEFAULT_ADDR)]
    pub(crate) connect: String,
    /// Longest wait for any one message (and for the connect)
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    pub(crate) timeout: Duration,
    /// Keep retrying a refused connect for this long (a server still starting)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) connect_retry: Option<Duration>,
    /// Operations the script may run in all (0 = no limit)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) max_ops: u64,
    /// Write one JSON event per line on stdout (connect, sent, received, assertion, result)
    #[arg(long)]
    pub(crate) json: bool,
    /// Load mode: this many virtual users run the conversation in a loop
    #[arg(long, value_name = "N", requires = "script")]
    pub(crate) concurrency: Option<usize>,
    /// Load mode: run for this long
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "iterations", requires = "script")]
    pub(crate) duration: Option<Duration>,
    /// Load mode: run this many conversations in all
    #[arg(long, value_name = "M", requires = "script")]
    pub(crate) iterations: Option<u64>,
    /// Load mode: start at most this many conversations per second
    #[arg(long, value_name = "PER_SECOND", requires = "script")]
    pub(crate) rate: Option<f64>,
    #[command(flatten)]
    pub(crate) record: RecordArgs,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Client scripts, or folders of them (their .rhai files, sorted)
    #[arg(required = true, value_name = "CLIENT")]
    pub(crate) clients: Vec<PathBuf>,
    /// Start this server script in-process on a free loopback port
    #[arg(long, value_name = "SCRIPT", conflicts_with = "connect")]
    pub(crate) server: Option<PathBuf>,
    /// Run against a server already listening here
    #[arg(short, long, value_name = "ADDR", default_value = DEFAULT_ADDR)]
    pub(crate) connect: String,
    /// Cases run at once
    #[arg(short, long, value_name = "N", default_value_t = 1)]
    pub(crate) jobs: usize,
    /// Write a JUnit XML report
    #[arg(long, value_name = "FILE")]
    pub(crate) junit: Option<PathBuf>,
    /// Print a TAP version 13 report on stdout
    #[arg(long, conflicts_with = "json")]
    pub(crate) tap: bool,
    /// Print one JSON event per line on stdout
    #[arg(long)]
    pub(crate) json: bool,
    /// Longest wait for any one message (and for the connect)
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    pub(crate) timeout: Duration,
    /// Keep retrying a refused connect for this long
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) connect_retry: Option<Duration>,
    /// For the server script given with --server
    #[command(flatten)]
    pub(crate) limits: ServerLimitArgs,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// What a server script's hooks and peers may do, for `server` and for the
/// server `test` starts.
#[derive(Debug, Args)]
pub struct ServerLimitArgs {
    /// Operations one hook call may run before it is stopped (0 = no limit)
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_OPERATIONS)]
    pub(crate) max_ops: u64,
    /// Wall-clock time one hook call may run before it is stopped
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    pub(crate) hook_timeout: Duration,
    /// Close a connection that sends nothing, or reads none of its replies, this long
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) idle_timeout: Option<Duration>,
}

impl ServerLimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_operations: self.max_ops,
            ..Limits::default()
        }
    }
}

/// Manual mode only: write the session down as a script that replays it.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Without a script: write the session to FILE as a script that replays it
    #[arg(long, value_name = "FILE", conflicts_with = "script")]
    pub(crate) record: Option<PathBuf>,
    /// With --record: keep every value literal (no patterns for numbers, ids, times)
    #[arg(long, requires = "record")]
    pub(crate) record_exact: bool,
}

impl RecordArgs {
    fn options(&self) -> Option<RecordOptions> {
        self.record.clone().map(|path| RecordOptions {
            path,
            exact: self.record_exact,
        })
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Scripts to compile
    #[arg(required = true)]
    pub(crate) scripts: Vec<PathBuf>,
    /// Print errors only
    #[arg(short, long)]
    pub(crate) quiet: bool,
}

impl Command {
    /// Runs the command on a thread whose stack holds any script (see
    /// `stack`): a server's top level, a client's conversation and the
    /// values they leave behind all live on it.
    pub fn run(self) -> Result<(), Error> {
        crate::stack::run("tcpscript", move || self.execute())?
    }

    fn execute(self) -> Result<(), Error> {
        match self {
            Command::Server(args) => run_server(args),
            Command::Client(args) => run_client(args),
            Command::Test(args) => run_test(args),
            Command::Check(args) => check::run(&args.scripts, args.quiet),
        }
    }
}

fn run_server(args: ServerArgs) -> Result<(), Error> {
    let verbosity = args.common.verbosity();
    let limits = args.limits.limits();
    let script = match (&args.script, args.echo) {
        (Some(path), _) => ServerScript::load(
            path,
            &limits,
            args.limits.hook_timeout,
            args.common.params(),
            verbosity,
        )?,
        (None, true) => ServerScript::echo(&limits, verbosity)?,
        (None, false) => {
            return manual::server(&ManualServerOptions {
                listen: args.listen,
                framing: args.common.framing.unwrap_or(Framing::Line),
                max_frame: args.common.max_frame,
                verbosity,
                record: args.record.options(),
            });
        }
    };
    let framing = match args.common.framing {
        Some(framing) => framing,
        None => script.declared_framing()?.unwrap_or(Framing::Line),
    };
    server::run(
        script,
        ServerOptions {
            listen: args.listen,
            framing,
            idle_timeout: args.limits.idle_timeout,
            max_frame: args.common.max_frame,
            verbosity,
            print_messages: args.echo && verbosity >= Verbosity::Normal,
        },
    )
}

fn run_client(args: ClientArgs) -> Result<(), Error> {
    let verbosity = args.common.verbosity();
    let Some(script) = args.script else {
        return manual::client(&ManualClientOptions {
            connect: args.connect,
            timeout: args.timeout,
            connect_retry: args.connect_retry,
            framing: args.common.framing.unwrap_or(Framing::Line),
            max_frame: args.common.max_frame,
            verbosity,
            record: args.record.options(),
        });
    };
    let options = ClientOptions {
        params: args.common.params(),
        script,
        connect: args.connect,
        timeout: args.timeout,
        connect_retry: args.connect_retry,
        framing: args.common.framing,
        max_frame: args.common.max_frame,
        verbosity,
        limits: Limits {
            max_operations: args.max_ops,
            ..Limits::default()
        },
    };
    let until = match (args.duration, args.iterations) {
        (Some(duration), _) => Some(Until::Elapsed(duration)),
        (None, Some(iterations)) => Some(Until::Iterations(iterations)),
        (None, None) => None,
    };
    if args.concurrency.is_some() || until.is_some() || args.rate.is_some() {
        let Some(until) = until else {
            return Err(Error::Usage(
                "load mode needs --duration or --iterations to know when to stop".into(),
            ));
        };
        if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return Err(Error::Usage("--rate must be a positive number".into()));
        }
        return load::run(&LoadOptions {
            client: options,
            concurrency: args.concurrency.unwrap_or(1).max(1),
            until,
            rate: args.rate,
            json: args.json,
        });
    }
    let events = args
        .json
        .then(|| Events::to_stdout().for_test(&options.script.display().to_string()));
    let conversed = match ClientScript::load(&options) {
        Ok(mut script) => script.run(events.clone(), SHOWN_ON_FAILURE),
        Err(error) => {
            report::github::annotate(&error, None);
            return Err(error);
        }
    };
    if let Some(events) = &events {
        let status = match &conversed.result {
            Ok(_) => json!({ "status": "passed" }),
            Err(error) => {
                json!({ "status": "failed", "exit_code": error.exit_code(), "message": error.to_string() })
            }
        };
        events.emit("result", status);
    }
    let summary = conversed
        .result
        .inspect_err(|error| report::github::annotate(error, None))?;
    if verbosity >= Verbosity::Normal {
        eprintln!(
            "ok: {} ({} sent, {} received, {:.3}s)",
            options.script.display(),
            summary.sent,
            summary.received,
            summary.elapsed.as_secs_f64()
        );
    }
    Ok(())
}

fn run_test(args: TestArgs) -> Result<(), Error> {
    let verbosity = args.common.verbosity();
    let limits = args.limits.limits();
    runner::run(TestOptions {
        clients: args.clients,
        client: ClientOptions {
            script: PathBuf::new(),
            connect: args.connect,
            timeout: args.timeout,
            connect_retry: args.connect_retry,
            framing: args.common.framing.clone(),
            max_frame: args.common.max_frame,
            params: args.common.params(),
            verbosity,
            limits: Limits::default(),
        },
        server: args.server.map(|path| {
            (
                path,
                ServerSettings {
                    limits,
                    hook_timeout: args.limits.hook_timeout,
                    idle_timeout: args.limits.idle_timeout,
                },
            )
        }),
        jobs: args.jobs,
        junit: args.junit,
        tap: args.tap,
        json: args.json,
    })
}

/// `5s`, `250ms`, `1m30s`; a bare number is seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<f64>()
        && seconds.is_finite()
        && seconds >= 0.0
    {
        return Ok(Duration::from_secs_f64(seconds));
    }
    humantime::parse_duration(text).map_err(|e| format!("{e} (try 5s, 250ms or 1m)"))
}

/// `65536`, `64KiB`, `64K`, `1MiB`, `1M`.
pub(crate) fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: usize = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size: try 65536, 64KiB or 1MiB"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        other => return Err(format!("unknown size unit `{other}`: use KiB or MiB")),
    };
    number
        .checked_mul(factor)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("`{text}` is not a usable size"))
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("`{text}` is not NAME=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1TiB").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn params_need_a_name() {
        assert_eq!(parse_param("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_param("=x").is_err());
        assert!(parse_param("x").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
