//! The command line, parsed by clap, and the settings the run takes from it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::echo::CONNECTIONS;
use crate::run::Context;
use crate::servers::{FLOOR_ARG, FLOOR_TLS_ARG, Kind};

/// Speed and memory benchmark for tcpscript.
#[derive(Debug, Parser)]
#[command(
    override_usage = "cargo bench --bench throughput [-- OPTIONS]",
    after_help = "TCPSCRIPT_BENCH_BIN=PATH benchmarks that tcpscript binary instead.",
    // The last of a repeated option counts: `--rounds 2 --rounds 3` is 3
    // rounds, `--only echo --only tls` the TLS section only.
    args_override_self = true
)]
pub(crate) struct Args {
    /// Short runs (about 25 s in all)
    #[arg(long)]
    quick: bool,
    /// Run these sections only [default: all]
    #[arg(long, value_name = "SECTION,...", value_delimiter = ',', action = ArgAction::Set)]
    only: Option<Vec<Section>>,
    /// Servers for echo and idle [default: all; ratios and targets need the floor]
    #[arg(long, value_name = "SERVER,...", value_delimiter = ',', action = ArgAction::Set)]
    servers: Option<Vec<Kind>>,
    /// Connection counts for echo [default: 1,50,500]
    #[arg(
        long,
        value_name = "N,...",
        value_delimiter = ',',
        value_parser = positive,
        action = ArgAction::Set
    )]
    conns: Option<Vec<usize>>,
    /// Echo rounds per server, twice that at 1 connection [default: 6, 2 with --quick]
    #[arg(long, value_name = "N", value_parser = positive)]
    rounds: Option<usize>,
    /// Run as the floor server (internal: `Server::start` spawns this)
    #[arg(long = FLOOR_ARG.trim_start_matches('-'), hide = true)]
    pub(crate) floor_server: bool,
    /// Run as the TLS floor server (internal: `Server::start` spawns this)
    #[arg(
        long = FLOOR_TLS_ARG.trim_start_matches('-'),
        hide = true,
        num_args = 2,
        value_names = ["CERT", "KEY"]
    )]
    pub(crate) floor_tls_server: Option<Vec<PathBuf>>,
    // cargo bench passes this to every bench target.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    /// Parses the command line (exiting with clap's message when it is bad);
    /// also returns the options it gave, for the reproduce line.
    pub(crate) fn parse_with_given() -> (Args, Vec<String>) {
        let matches = Args::command().get_matches();
        let args = Args::from_arg_matches(&matches)
            .map_err(|e| e.format(&mut Args::command()))
            .unwrap_or_else(|e| e.exit());
        (args, given(&matches))
    }
}

/// The options given on the command line, in their order, each as
/// `--name value` (`--bench` and the floor servers' left out).
fn given(matches: &ArgMatches) -> Vec<String> {
    let mut given: Vec<(usize, String)> = ["quick", "only", "servers", "conns", "rounds"]
        .into_iter()
        .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
        .filter_map(|id| {
            let index = matches.index_of(id)?;
            if id == "quick" {
                return Some((index, "--quick".to_string()));
            }
            let values: Vec<String> = matches
                .get_raw(id)?
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            Some((index, format!("--{id} {}", values.join(","))))
        })
        .collect();
    given.sort_by_key(|(index, _)| *index);
    given.into_iter().map(|(_, arg)| arg).collect()
}

/// A positive number, for `--conns` and `--rounds`.
fn positive(value: &str) -> Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| "needs a positive number".to_string())
}

/// A part of the run, as `--only` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub(crate) enum Section {
    Echo,
    Client,
    Load,
    Idle,
    Check,
    Tls,
}

impl Section {
    pub(crate) const ALL: [Section; 6] = [
        Section::Echo,
        Section::Client,
        Section::Load,
        Section::Idle,
        Section::Check,
        Section::Tls,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Section::Echo => "echo",
            Section::Client => "client",
            Section::Load => "load",
            Section::Idle => "idle",
            Section::Check => "check",
            Section::Tls => "tls",
        }
    }
}

pub(crate) struct Config {
    pub(crate) quick: bool,
    pub(crate) sections: BTreeSet<Section>,
    /// Servers to compare (`--servers floor,tcpscript,python`).
    pub(crate) servers: Vec<Kind>,
    /// Connection counts of the echo section (`--conns 1,50,500`).
    pub(crate) connections: Vec<usize>,
    /// The arguments as given after `--`, for the reproduce line.
    args: Vec<String>,
    /// Measured seconds per echo run, warm-up before it, and rounds.
    pub(crate) echo_time: Duration,
    pub(crate) echo_warmup: Duration,
    pub(crate) echo_rounds: usize,
    pub(crate) client_runs: usize,
    pub(crate) check_runs: usize,
}

impl Config {
    /// The settings for `args`; `given` is what the reproduce line echoes.
    pub(crate) fn new(args: Args, given: Vec<String>) -> Config {
        let quick = args.quick;
        Config {
            quick,
            sections: args
                .only
                .map_or_else(|| Section::ALL.into_iter().collect(), BTreeSet::from_iter),
            servers: args
                .servers
                .unwrap_or_else(|| vec![Kind::Floor, Kind::Tcpscript, Kind::Python]),
            connections: args.conns.unwrap_or_else(|| CONNECTIONS.to_vec()),
            args: given,
            // Short runs, many rounds: the servers take turns often, so a
            // slow patch of a shared machine hits them all alike.
            echo_time: Duration::from_millis(if quick { 600 } else { 1000 }),
            echo_warmup: Duration::from_millis(if quick { 200 } else { 300 }),
            echo_rounds: args.rounds.unwrap_or(if quick { 2 } else { 6 }),
            client_runs: if quick { 3 } else { 5 },
            check_runs: 20,
        }
    }

    /// The servers to run, in `order`, without Python when it is missing.
    pub(crate) fn kinds(&self, context: &Context, order: &[Kind]) -> Vec<Kind> {
        order
            .iter()
            .copied()
            .filter(|k| self.servers.contains(k))
            .filter(|k| *k != Kind::Python || context.python.is_some())
            .collect()
    }

    pub(crate) fn reproduce(&self) -> String {
        if self.args.is_empty() {
            "cargo bench --bench throughput".into()
        } else {
            format!("cargo bench --bench throughput -- {}", self.args.join(" "))
        }
    }
}
