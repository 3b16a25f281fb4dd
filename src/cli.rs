//! The command line: flags as the README lists them, and the step from parsed
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
use crate::proxy::toxics::{Direction, Slice, Toxics};
use crate::proxy::{self, ProxyOptions};
use crate::record::RecordOptions;
use crate::report::{self, events::Events, events::result_event};
use crate::runner::{self, ServerSettings, TestOptions};
use crate::server::hooks::DEFAULT_MAX_OPERATIONS;
use crate::server::hooks::ServerScript;
use crate::server::{self, ServerOptions};
use crate::transcript::SHOWN_ON_FAILURE;
use crate::transcript::Verbosity;

/// The tutorial's port, on loopback unless asked otherwise.
const DEFAULT_ADDR: &str = "127.0.0.1:7777";

/// A load-mode conversation's time limit unless `--case-timeout` says: a
/// stuck conversation ends as an error instead of holding its user, and
/// the whole run, for ever.
const LOAD_CASE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(
    name = "tcpscript",
    // The version, and the commit when built from git (see build.rs).
    version = env!("TCPSCRIPT_VERSION"),
    about = "Drive TCP and UDP clients and servers from Rhai scripts",
    long_about = "Drive TCP and UDP clients and servers from Rhai scripts.\n\n\
        A server script says how to reply to every message; a client script says \
        what to send and asserts what comes back. Without a script, both commands \
        run by hand on stdin, like the TCP tutorial they automate.\n\n\
        Exit codes: 0 ok, 1 an expectation failed, 2 usage error, 3 script error, \
        4 network error, 5 system error (the system refused a thread, the runtime or \
        signal handlers)."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Reply to every message by script (or by hand on stdin)
    Server(ServerArgs),
    /// Run a conversation by script (or by hand on stdin)
    Client(ClientArgs),
    /// Run client scripts as test cases, with reports for CI
    Test(TestArgs),
    /// Compile scripts and read their framing constants, report errors; run nothing
    Check(CheckArgs),
    /// Forward connections to an upstream, with network faults on demand
    Proxy(ProxyArgs),
    /// Add up load-mode shards' --hist-out files exactly, and judge --threshold on the whole
    Merge(MergeArgs),
    /// Print a shell completion script, e.g. `tcpscript completions bash > /etc/bash_completion.d/tcpscript`
    Completions(CompletionsArgs),
    /// Print the man page (roff), e.g. `tcpscript man | man -l -`
    Man(ManArgs),
}

/// Flags both roles share.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// What one message is: line, raw, delim:SEQ, len:u8|u16|u32[:be|le] or bytes:N
    /// [default: the script's FRAMING constant, else line; with --udp, raw: the whole datagram]
    #[arg(long, value_name = "FRAMING")]
    pub(crate) framing: Option<Framing>,
    /// Largest message accepted from the peer, e.g. 65536, 64KiB, 1MiB
    #[arg(long, value_name = "BYTES", value_parser = parse_max_frame, default_value = "1MiB")]
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

/// The server's TLS flags.
#[derive(Debug, Args)]
pub struct ServerTlsArgs {
    /// Serve TLS: with --tls-cert and --tls-key, that certificate; without,
    /// a throwaway CA and a leaf for localhost, 127.0.0.1 and ::1
    #[arg(long)]
    pub(crate) tls: bool,
    /// Certificate chain, PEM, leaf first (with --tls-key)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert, PEM
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Another name or IP address for the throwaway leaf; repeatable
    #[arg(long, value_name = "NAME", conflicts_with = "tls_cert")]
    pub(crate) tls_san: Vec<String>,
    /// Write the throwaway CA here, PEM, for clients to trust (--tls-ca)
    #[arg(long, value_name = "FILE", conflicts_with = "tls_cert")]
    pub(crate) tls_ca_out: Option<PathBuf>,
    /// Require client certificates signed by these CAs, PEM (mutual TLS)
    #[arg(long, value_name = "FILE")]
    pub(crate) tls_client_ca: Option<PathBuf>,
    /// An ALPN protocol to offer, e.g. h2, http/1.1; repeatable, in order of preference
    #[arg(long, value_name = "PROTO")]
    pub(crate) tls_alpn: Vec<String>,
}

impl ServerTlsArgs {
    /// `None` when the server never speaks TLS: no `--tls`, no other TLS
    /// flag (without `--tls` they configure `starttls()`), and a script
    /// that never calls `starttls()`.
    pub(crate) fn options(&self, starttls: bool) -> Option<crate::tls::ServerTls> {
        let configured = self.tls
            || starttls
            || self.tls_cert.is_some()
            || !self.tls_san.is_empty()
            || self.tls_ca_out.is_some()
            || self.tls_client_ca.is_some()
            || !self.tls_alpn.is_empty();
        configured.then(|| crate::tls::ServerTls {
            identity: self.tls_cert.clone().zip(self.tls_key.clone()),
            sans: self.tls_san.clone(),
            ca_out: self.tls_ca_out.clone(),
            client_ca: self.tls_client_ca.clone(),
            alpn: self.tls_alpn.clone(),
        })
    }

    /// The flags again, for a recording's replay command; `None` without `--tls`.
    fn replay_flags(&self) -> Option<String> {
        let mut flags = Flags::new("--tls");
        flags.path("--tls-cert", self.tls_cert.as_ref());
        flags.path("--tls-key", self.tls_key.as_ref());
        flags.each("--tls-san", &self.tls_san);
        flags.path("--tls-ca-out", self.tls_ca_out.as_ref());
        flags.path("--tls-client-ca", self.tls_client_ca.as_ref());
        flags.each("--tls-alpn", &self.tls_alpn);
        self.tls.then(|| flags.0.join(" "))
    }
}

/// Flags written back out as shell words.
struct Flags(Vec<String>);

impl Flags {
    fn new(first: &str) -> Self {
        Flags(vec![first.to_string()])
    }

    fn value(&mut self, flag: &str, value: &str) {
        self.0.push(flag.to_string());
        self.0.push(crate::record::shell_word(value));
    }

    fn path(&mut self, flag: &str, path: Option<&PathBuf>) {
        if let Some(path) = path {
            self.value(flag, &path.display().to_string());
        }
    }

    fn each(&mut self, flag: &str, values: &[String]) {
        for value in values {
            self.value(flag, value);
        }
    }
}

/// The client's TLS flags. Without `--tls` they configure a later `starttls()`.
#[derive(Debug, Args)]
pub struct ClientTlsArgs {
    /// Speak TLS, verifying the server against the system's roots and --tls-ca
    #[arg(long)]
    pub(crate) tls: bool,
    /// Also trust the CAs in this PEM file; repeatable
    #[arg(long, value_name = "FILE")]
    pub(crate) tls_ca: Vec<PathBuf>,
    /// Do not verify the server's certificate at all (said on stderr)
    #[arg(long)]
    pub(crate) insecure: bool,
    /// The name to verify and send as SNI [default: the host of --connect]
    #[arg(long, value_name = "NAME", value_parser = parse_server_name)]
    pub(crate) tls_servername: Option<String>,
    /// An ALPN protocol to offer; repeatable, in order of preference
    #[arg(long, value_name = "PROTO")]
    pub(crate) tls_alpn: Vec<String>,
    /// Client certificate chain, PEM (with --tls-key), for mutual TLS
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert, PEM
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// What to verify and offer, whether TLS starts at once or later.
    pub(crate) fn options(&self) -> crate::tls::ClientTls {
        crate::tls::ClientTls {
            ca: self.tls_ca.clone(),
            insecure: self.insecure,
            servername: self.tls_servername.clone(),
            alpn: self.tls_alpn.clone(),
            identity: self.tls_cert.clone().zip(self.tls_key.clone()),
            trusted: Vec::new(),
        }
    }

    /// The flags again, for a recording's replay command; `None` without `--tls`.
    fn replay_flags(&self) -> Option<String> {
        let mut flags = Flags::new("--tls");
        for ca in &self.tls_ca {
            flags.path("--tls-ca", Some(ca));
        }
        if self.insecure {
            flags.0.push("--insecure".into());
        }
        if let Some(name) = &self.tls_servername {
            flags.value("--tls-servername", name);
        }
        flags.each("--tls-alpn", &self.tls_alpn);
        flags.path("--tls-cert", self.tls_cert.as_ref());
        flags.path("--tls-key", self.tls_key.as_ref());
        self.tls.then(|| flags.0.join(" "))
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
    /// Serve UDP: one datagram is one message, a session per peer address
    /// (ended by --idle-timeout, default 30s, or close()); framing applies
    /// within a datagram only when given
    #[arg(long, conflicts_with = "tls")]
    pub(crate) udp: bool,
    #[command(flatten)]
    pub(crate) limits: ServerLimitArgs,
    #[command(flatten)]
    pub(crate) tls: ServerTlsArgs,
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
    #[arg(long, value_name = "DURATION", value_parser = parse_retry)]
    pub(crate) connect_retry: Option<Duration>,
    /// Speak UDP: one datagram is one message (framing applies within a
    /// datagram only when given); connect() opens more sockets
    #[arg(long, conflicts_with = "tls")]
    pub(crate) udp: bool,
    /// Operations the script may run in all (0 = no limit)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) max_ops: u64,
    /// Longest a run may take in all [default: none; 60s per conversation in load mode]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) case_timeout: Option<Duration>,
    /// Write one JSON event per line on stdout (connect, sent, received, assertion, result)
    #[arg(long)]
    pub(crate) json: bool,
    /// Load mode: this many virtual users run the conversation in a loop
    #[arg(long, value_name = "N", requires = "script", value_parser = concurrency_range())]
    pub(crate) concurrency: Option<usize>,
    /// Load mode: run for this long
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "iterations", requires = "script")]
    pub(crate) duration: Option<Duration>,
    /// Load mode: users over time instead of --concurrency and --duration, e.g.
    /// 0:10s,200:30s,200:1m,0:10s: from 0, each TARGET:DURATION moves linearly
    /// to TARGET users over DURATION (200:0s jumps); the run lasts their sum
    #[arg(long, value_name = "STAGES", value_parser = load::stages::parse_arg, conflicts_with_all = ["concurrency", "duration", "iterations"], requires = "script")]
    pub(crate) stages: Option<load::stages::Stages>,
    /// Load mode: run this many conversations in all
    #[arg(long, value_name = "M", requires = "script", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) iterations: Option<u64>,
    /// Load mode: start at most this many conversations per second; latency
    /// then counts from when each was due
    #[arg(long, value_name = "PER_SECOND", requires = "script", value_parser = parse_rate)]
    pub(crate) rate: Option<f64>,
    /// Load mode: write a self-contained HTML report with charts
    #[arg(long, value_name = "FILE", requires = "script")]
    pub(crate) html: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) thresholds: ThresholdArgs,
    #[command(flatten)]
    pub(crate) shards: ShardArgs,
    #[command(flatten)]
    pub(crate) tls: ClientTlsArgs,
    #[command(flatten)]
    pub(crate) record: RecordArgs,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

#[derive(Debug, Args)]
#[command(mut_arg("tls", |arg| arg.help(
    "Every case speaks TLS; with --server, that server serves it with a throwaway CA the cases trust"
)))]
pub struct TestArgs {
    /// Client scripts, or folders of them (their .rhai files, sorted)
    #[arg(required = true, value_name = "CLIENT")]
    pub(crate) clients: Vec<PathBuf>,
    /// Start this server script in-process on a free loopback port
    #[arg(long, value_name = "SCRIPT", conflicts_with = "connect")]
    pub(crate) server: Option<PathBuf>,
    /// The cases, and the --server, speak UDP
    #[arg(long, conflicts_with = "tls")]
    pub(crate) udp: bool,
    /// Run against a server already listening here
    #[arg(short, long, value_name = "ADDR", default_value = DEFAULT_ADDR)]
    pub(crate) connect: String,
    /// Cases run at once
    #[arg(short, long, value_name = "N", default_value_t = 1, value_parser = jobs_range())]
    pub(crate) jobs: usize,
    /// Write a JUnit XML report
    #[arg(long, value_name = "FILE")]
    pub(crate) junit: Option<PathBuf>,
    /// Write a self-contained HTML report, to open in a browser
    #[arg(long, value_name = "FILE")]
    pub(crate) html: Option<PathBuf>,
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
    #[arg(long, value_name = "DURATION", value_parser = parse_retry)]
    pub(crate) connect_retry: Option<Duration>,
    /// Longest one case may take in all; a case over it is an error and the run goes on
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
    pub(crate) case_timeout: Duration,
    /// For the server script given with --server
    #[command(flatten)]
    pub(crate) limits: ServerLimitArgs,
    /// Every case's TLS (its `--tls` help is the test run's own, above)
    #[command(flatten)]
    pub(crate) tls: ClientTlsArgs,
    /// With --server and --tls: another name or IP address for the
    /// server's throwaway certificate (for --tls-servername); repeatable
    #[arg(long, value_name = "NAME", requires_all = ["server", "tls"])]
    pub(crate) tls_san: Vec<String>,
    /// With --server and --tls: the server requires client certificates
    /// signed by these CAs, PEM (each case presents --tls-cert/--tls-key)
    #[arg(long, value_name = "FILE", requires_all = ["server", "tls"])]
    pub(crate) tls_client_ca: Option<PathBuf>,
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
    /// Close a connection that sends nothing, or reads none of its replies,
    /// this long; with --udp, end a session that sends nothing this long [default with --udp: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) idle_timeout: Option<Duration>,
    /// With --udp: live sessions at most; a new peer past it evicts the
    /// session idle the longest, and says so [default: 10000]
    #[arg(long, value_name = "N", requires = "udp", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) max_sessions: Option<u64>,
    /// Memory all connections' scripts may hold in all (variables, map keys,
    /// what a hook call builds); a connection past it, or past its share
    /// when all together are, ends with an error
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "128MiB")]
    pub(crate) max_memory: usize,
}

impl ServerLimitArgs {
    /// The UDP server's options, with `--udp`.
    fn udp(&self, udp: bool) -> Option<crate::server::udp::UdpOptions> {
        udp.then(|| crate::server::udp::UdpOptions {
            max_sessions: self
                .max_sessions
                .map_or(crate::server::udp::DEFAULT_MAX_SESSIONS, |n| {
                    usize::try_from(n).unwrap_or(usize::MAX)
                }),
        })
    }

    fn limits(&self) -> Limits {
        Limits {
            max_operations: self.max_ops,
            max_memory: self.max_memory,
            ..Limits::default()
        }
    }
}

/// Pass marks for load mode and `merge`, and the report that lists them.
#[derive(Debug, Args)]
pub struct ThresholdArgs {
    /// Load mode: a pass mark for the run's figures, e.g. p99<50ms, max<=1s, failed<0.1%, rate>1000;
    /// repeatable. Latency p50, p90, p99 or max in us, ms or s; failed as a
    /// percentage or a fraction; rate in conversations/s. One broken: exit 1
    #[arg(long = "threshold", value_name = "EXPR", value_parser = load::threshold::parse_arg)]
    pub(crate) thresholds: Vec<load::threshold::Threshold>,
    /// Load mode: write a JUnit XML report, one test case per --threshold
    #[arg(long, value_name = "FILE")]
    pub(crate) junit: Option<PathBuf>,
}

/// Load mode across machines: each runs a shard, `merge` adds them up.
#[derive(Debug, Args)]
pub struct ShardArgs {
    /// Load mode: run the K-th of N equal slices of --concurrency, --iterations
    /// and --rate (1/1 is the whole test). auto/N takes K from JOB_COMPLETION_INDEX
    /// + 1, which a Kubernetes Indexed Job sets
    #[arg(long, value_name = "K/N", value_parser = load::shard::parse_arg, requires = "script")]
    pub(crate) shard: Option<load::shard::ShardSpec>,
    /// Load mode: start the users at TIME (RFC 3339, e.g. 2026-05-01T12:00:00Z,
    /// or seconds since 1970), once the scripts are compiled, so that shards start
    /// together; at most 24h ahead
    #[arg(long, value_name = "TIME", value_parser = load::shard::parse_start_at, requires = "script")]
    pub(crate) start_at: Option<std::time::SystemTime>,
    /// Load mode: write the counts and the latency histogram losslessly
    /// (HdrHistogram V2) to FILE, for `tcpscript merge`
    #[arg(long, value_name = "FILE", requires = "script")]
    pub(crate) hist_out: Option<PathBuf>,
}

impl ShardArgs {
    fn any(&self) -> bool {
        self.shard.is_some() || self.start_at.is_some() || self.hist_out.is_some()
    }
}

#[derive(Debug, Args)]
#[command(
    mut_arg("thresholds", |arg| arg.help(
        "A pass mark for the merged figures, e.g. p99<50ms, failed<0.1%, rate>1000; \
         repeatable (see `tcpscript client --help`). One broken: exit 1"
    )),
    mut_arg("junit", |arg| arg.help("Write a JUnit XML report, one test case per --threshold"))
)]
pub struct MergeArgs {
    /// Files written by load mode's --hist-out, e.g. one per shard
    #[arg(required = true, value_name = "FILE")]
    pub(crate) files: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) thresholds: ThresholdArgs,
    /// Print the summary as one JSON object on stdout
    #[arg(long)]
    pub(crate) json: bool,
    /// Write a self-contained HTML report (the figures over time stay with each shard)
    #[arg(long, value_name = "FILE")]
    pub(crate) html: Option<PathBuf>,
    /// Write the merged figures as one file again, to merge with others
    #[arg(long, value_name = "FILE")]
    pub(crate) hist_out: Option<PathBuf>,
    /// Print nothing when every conversation passed and every threshold held
    #[arg(short, long)]
    pub(crate) quiet: bool,
}

fn run_merge(args: MergeArgs) -> Result<(), Error> {
    load::merge::run(&load::merge::MergeOptions {
        files: args.files,
        hist_out: args.hist_out,
        report: load::ReportOptions {
            json: args.json,
            quiet: args.quiet,
            html: args.html,
            junit: args.thresholds.junit,
            thresholds: args.thresholds.thresholds,
        },
    })
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
    /// `tls`: the session's TLS flags, written into the replay command.
    /// `udp`: a client session over UDP, replayed with `--udp`.
    fn options(&self, tls: Option<String>, udp: bool) -> Option<RecordOptions> {
        self.record.clone().map(|path| RecordOptions {
            path,
            exact: self.record_exact,
            tls,
            udp,
        })
    }
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// A script whose hooks see, change, drop or answer each message
    /// (on_client_message, on_server_message); without one, bytes pass as they are
    #[arg(value_name = "SCRIPT")]
    pub(crate) script: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port
    #[arg(short, long, value_name = "ADDR", default_value = DEFAULT_ADDR)]
    pub(crate) listen: String,
    /// Where each accepted connection is forwarded
    #[arg(short, long, value_name = "ADDR")]
    pub(crate) upstream: String,
    /// Longest wait for each connect to the upstream
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    pub(crate) connect_timeout: Duration,
    /// With a SCRIPT: a parameter for its param("NAME"); repeatable
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_param, requires = "script")]
    pub(crate) params: Vec<(String, String)>,
    /// With a SCRIPT or --record: the largest message its framings accept from either side
    #[arg(long, value_name = "BYTES", value_parser = parse_max_frame, default_value = "1MiB")]
    pub(crate) max_frame: usize,
    /// With a SCRIPT: wall-clock time one hook call may run before it is stopped
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    pub(crate) hook_timeout: Duration,
    /// Write each connection into DIR as N-client.rhai (replays the client,
    /// asserting the upstream's replies) and N-server.rhai (a mock answering as the upstream did)
    #[arg(long, value_name = "DIR", conflicts_with = "script")]
    pub(crate) record: Option<PathBuf>,
    /// With --record: what one message is, both ways [default: line]
    #[arg(long, value_name = "FRAMING", requires = "record")]
    pub(crate) framing: Option<Framing>,
    /// With --record: assert and match every value literally, no patterns
    #[arg(long, requires = "record")]
    pub(crate) record_exact: bool,
    /// Events on stdout, one JSON object per line: each connection's open
    /// and close, and with a SCRIPT or --record each message
    #[arg(long)]
    pub(crate) json: bool,
    /// Relay UDP: a session per client address with a socket of its own to
    /// the upstream; one datagram is one message (--loss, --duplicate, --reorder)
    #[arg(long, conflicts_with_all = ["record", "tls", "upstream_tls"])]
    pub(crate) udp: bool,
    /// With --udp: end a session with no datagram either way this long
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s", requires = "udp")]
    pub(crate) idle_timeout: Duration,
    /// With --udp: live sessions at most; datagrams from new clients past it are dropped
    #[arg(long, value_name = "N", default_value_t = 10_000, requires = "udp", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) max_sessions: u64,
    #[command(flatten)]
    pub(crate) toxics: ToxicArgs,
    #[command(flatten)]
    pub(crate) tls: ServerTlsArgs,
    #[command(flatten)]
    pub(crate) upstream_tls: UpstreamTlsArgs,
    /// Show each connection's open and close, and the seed
    #[arg(short, long)]
    pub(crate) verbose: bool,
    /// Print errors only
    #[arg(short, long, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
}

/// `proxy`'s TLS toward the upstream; its `--tls` flags are the server's,
/// toward clients.
#[derive(Debug, Args)]
pub struct UpstreamTlsArgs {
    /// Speak TLS to the upstream, verifying it against the system's roots and --upstream-tls-ca
    #[arg(long)]
    pub(crate) upstream_tls: bool,
    /// Also trust the CAs in this PEM file for the upstream; repeatable
    #[arg(long, value_name = "FILE", requires = "upstream_tls")]
    pub(crate) upstream_tls_ca: Vec<PathBuf>,
    /// Do not verify the upstream's certificate at all (said on stderr)
    #[arg(long, requires = "upstream_tls")]
    pub(crate) upstream_insecure: bool,
    /// The name to verify the upstream as and send as SNI [default: the host of --upstream]
    #[arg(long, value_name = "NAME", requires = "upstream_tls", value_parser = parse_server_name)]
    pub(crate) upstream_tls_servername: Option<String>,
    /// An ALPN protocol to offer the upstream; repeatable, in order of preference
    #[arg(long, value_name = "PROTO", requires = "upstream_tls")]
    pub(crate) upstream_tls_alpn: Vec<String>,
    /// Client certificate chain for the upstream, PEM (with --upstream-tls-key)
    #[arg(long, value_name = "FILE", requires_all = ["upstream_tls", "upstream_tls_key"])]
    pub(crate) upstream_tls_cert: Option<PathBuf>,
    /// Private key of --upstream-tls-cert, PEM
    #[arg(long, value_name = "FILE", requires = "upstream_tls_cert")]
    pub(crate) upstream_tls_key: Option<PathBuf>,
}

impl UpstreamTlsArgs {
    fn options(&self) -> Option<crate::tls::ClientTls> {
        self.upstream_tls.then(|| crate::tls::ClientTls {
            ca: self.upstream_tls_ca.clone(),
            insecure: self.upstream_insecure,
            servername: self.upstream_tls_servername.clone(),
            alpn: self.upstream_tls_alpn.clone(),
            identity: self
                .upstream_tls_cert
                .clone()
                .zip(self.upstream_tls_key.clone()),
            trusted: Vec::new(),
        })
    }
}

/// toxiproxy's toxics, as flags of `proxy`.
#[derive(Debug, Args)]
pub struct ToxicArgs {
    /// Delay each chunk by this much (toxiproxy: latency)
    #[arg(long, value_name = "DURATION", value_parser = parse_retry)]
    pub(crate) latency: Option<Duration>,
    /// With --latency: add or take up to this much at random (toxiproxy: jitter)
    #[arg(long, value_name = "DURATION", value_parser = parse_retry, requires = "latency")]
    pub(crate) jitter: Option<Duration>,
    /// Forward at most this many bytes per second, e.g. 64KiB (toxiproxy: bandwidth)
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    pub(crate) bandwidth: Option<usize>,
    /// Split chunks into pieces of SIZE±VARIATION bytes, DELAY apart (toxiproxy: slicer)
    #[arg(long, value_name = "SIZE[:VARIATION[:DELAY]]", value_parser = Slice::parse)]
    pub(crate) slice: Option<Slice>,
    /// Forward this many bytes, then close both sides (toxiproxy: limit_data)
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub(crate) limit_data: Option<usize>,
    /// Reset both sides this long after the connect (toxiproxy: reset_peer)
    #[arg(long, value_name = "DURATION", value_parser = parse_retry)]
    pub(crate) reset_after: Option<Duration>,
    /// Stop forwarding this long after the connect; keep the connection open (toxiproxy: timeout)
    #[arg(long, value_name = "DURATION", value_parser = parse_retry)]
    pub(crate) blackhole_after: Option<Duration>,
    /// Pass a close on this much later (toxiproxy: slow_close)
    #[arg(long, value_name = "DURATION", value_parser = parse_retry)]
    pub(crate) slow_close: Option<Duration>,
    /// With --udp: lose each datagram with this chance, 0 to 1
    #[arg(long, value_name = "P", value_parser = parse_chance, default_value = "0", requires = "udp")]
    pub(crate) loss: f64,
    /// With --udp: send each datagram twice with this chance, 0 to 1
    #[arg(long, value_name = "P", value_parser = parse_chance, default_value = "0", requires = "udp")]
    pub(crate) duplicate: f64,
    /// With --udp: hold a datagram back until the next one overtakes it, with this chance
    #[arg(long, value_name = "P", value_parser = parse_chance, default_value = "0", requires = "udp")]
    pub(crate) reorder: f64,
    /// Which way the toxics apply: up (client to upstream), down or both [default: both]
    #[arg(long, value_enum, value_name = "WAY")]
    pub(crate) direction: Option<Direction>,
    /// The fraction of connections the toxics apply to, 0 to 1 (toxiproxy: toxicity) [default: 1]
    #[arg(long, value_name = "P", value_parser = parse_toxicity)]
    pub(crate) toxicity: Option<f64>,
    /// Seed of the choice of connections and of the jitter and slice sizes [default: random]
    #[arg(long, value_name = "N")]
    pub(crate) seed: Option<u64>,
}

impl ToxicArgs {
    fn toxics(&self) -> Toxics {
        Toxics {
            latency: self.latency,
            jitter: self.jitter.unwrap_or_default(),
            bandwidth: self.bandwidth,
            slice: self.slice,
            limit_data: self.limit_data.map(|n| n as u64),
            reset_after: self.reset_after,
            blackhole_after: self.blackhole_after,
            slow_close: self.slow_close,
            direction: self.direction,
            loss: self.loss,
            duplicate: self.duplicate,
            reorder: self.reorder,
            toxicity: self.toxicity.unwrap_or(1.0),
        }
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

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in
    #[arg(value_enum)]
    pub(crate) shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// A command's own page (tcpscript-COMMAND(1)) instead of tcpscript(1)
    #[arg(value_name = "COMMAND")]
    pub(crate) command: Option<String>,
}

impl Cli {
    /// Runs the command and reports how it ended; returns the exit code.
    pub fn run(self) -> u8 {
        let code = match self.command.run() {
            Ok(()) => crate::error::exit::OK,
            Err(error) => {
                error.eprint();
                error.exit_code()
            }
        };
        // Output is queued so that it never blocks; write it all out.
        crate::console::flush(Duration::from_secs(5));
        code
    }
}

impl Command {
    /// Runs the command on a thread whose stack holds any script (see
    /// `stack`): a server's top level, a client's conversation and the
    /// values they leave behind all live on it.
    fn run(self) -> Result<(), Error> {
        crate::stack::run("tcpscript", move || self.execute())?
    }

    fn execute(self) -> Result<(), Error> {
        match self {
            Command::Server(args) => run_server(args),
            Command::Client(args) => run_client(args),
            Command::Test(args) => run_test(args),
            Command::Check(args) => check::run(&args.scripts, args.quiet),
            Command::Proxy(args) => run_proxy(args),
            Command::Merge(args) => run_merge(args),
            Command::Completions(args) => crate::generate::completions::<Cli>(args.shell),
            Command::Man(args) => crate::generate::man::<Cli>(args.command.as_deref()),
        }
    }
}

/// A `--framing bytes:N` larger than `--max-frame` could deliver nothing.
fn check_framing(common: &CommonArgs) -> Result<(), Error> {
    match &common.framing {
        Some(framing) => framing
            .check_max_frame(common.max_frame)
            .map_err(|e| Error::Usage(format!("--framing {e}"))),
        None => Ok(()),
    }
}

fn run_server(args: ServerArgs) -> Result<(), Error> {
    check_framing(&args.common)?;
    let verbosity = args.common.verbosity();
    let limits = args.limits.limits().with_max_frame(args.common.max_frame);
    let script = match (&args.script, args.echo) {
        (Some(path), _) => ServerScript::load(
            path,
            &limits,
            args.limits.hook_timeout,
            args.common.params(),
            verbosity,
        )?,
        (None, true) => ServerScript::echo(&limits, verbosity)?,
        (None, false) if args.udp => {
            if args.tls.options(false).is_some() {
                return Err(Error::Usage(
                    "TLS does not run over UDP: drop the --tls flags".into(),
                ));
            }
            return manual::udp_server(&ManualServerOptions {
                listen: args.listen,
                framing: args.common.framing.unwrap_or(Framing::Raw),
                max_frame: args.common.max_frame,
                verbosity,
                record: args.record.options(None, true),
                tls: None,
            });
        }
        (None, false) => {
            return manual::server(&ManualServerOptions {
                listen: args.listen,
                framing: args.common.framing.unwrap_or(Framing::Line),
                max_frame: args.common.max_frame,
                verbosity,
                record: args.record.options(args.tls.replay_flags(), false),
                tls: match (args.tls.tls, args.tls.options(false)) {
                    (true, Some(options)) => Some(crate::tls::server_config(&options)?),
                    (false, Some(_)) => {
                        return Err(Error::Usage(
                            "without --tls the TLS flags configure a script's starttls(), \
                             and manual mode has no script: add --tls"
                                .into(),
                        ));
                    }
                    (_, None) => None,
                },
            });
        }
    };
    let framing = match args.common.framing {
        Some(framing) => framing,
        None => script
            .declared_framing(args.common.max_frame)?
            .unwrap_or(default_framing(args.udp)),
    };
    if args.udp && script.calls_any(&["starttls"]) {
        return Err(Error::Usage(
            "starttls() upgrades a TCP connection: a --udp server has none".into(),
        ));
    }
    // A certificate that cannot be used is a usage error before listening.
    // Without --tls, the same flags (or a throwaway certificate, when none
    // are given) serve the script's `starttls()`.
    let tls = match args.tls.options(script.calls_any(&["starttls"])) {
        Some(options) => Some(server::Tls {
            setup: crate::tls::server_config(&options)?,
            on_accept: args.tls.tls,
        }),
        None => None,
    };
    server::run(
        script,
        ServerOptions {
            listen: args.listen,
            framing,
            idle_timeout: args.limits.idle_timeout,
            max_frame: args.common.max_frame,
            verbosity,
            hook_timeout: args.limits.hook_timeout,
            udp: args.limits.udp(args.udp),
        },
        tls,
    )
}

/// What one message is unless the flags or the script say: a line over
/// TCP, the whole datagram over UDP.
pub(crate) fn default_framing(udp: bool) -> Framing {
    if udp { Framing::Raw } else { Framing::Line }
}

/// The manual server answers one TCP client at a time: not a UDP server.
fn run_proxy(args: ProxyArgs) -> Result<(), Error> {
    let toxics = args.toxics.toxics();
    // A datagram has no stream to cut, close or reset.
    if args.udp {
        for (given, flag) in [
            (toxics.bandwidth.is_some(), "--bandwidth"),
            (toxics.slice.is_some(), "--slice"),
            (toxics.limit_data.is_some(), "--limit-data"),
            (toxics.reset_after.is_some(), "--reset-after"),
            (toxics.slow_close.is_some(), "--slow-close"),
        ] {
            if given {
                return Err(Error::Usage(format!(
                    "{flag} acts on a stream and means nothing with --udp; \
                     use --loss, --duplicate, --reorder, --latency, --jitter or --blackhole-after"
                )));
            }
        }
    }
    let verbosity = Verbosity::from_flags(args.verbose as u8, args.quiet);
    let script = match &args.script {
        // With a script the toxics apply to whole messages; these three
        // cut bytes, which would split them.
        Some(_)
            if toxics.bandwidth.is_some()
                || toxics.slice.is_some()
                || toxics.limit_data.is_some() =>
        {
            return Err(Error::Usage(
                "--bandwidth, --slice and --limit-data cut bytes and cannot be combined with a SCRIPT, \
                 whose toxics apply to whole messages (--latency, --jitter, --reset-after, \
                 --blackhole-after, --slow-close); a script can delay(), close() or reset() itself"
                    .into(),
            ));
        }
        None if args.record.is_some() && toxics.any() => {
            return Err(Error::Usage(
                "--record cannot be combined with the toxics: it writes down the conversation as it is"
                    .into(),
            ));
        }
        None => match &args.record {
            Some(dir) => Some(proxy::scripted::ProxyScript::recording(
                proxy::scripted::Record {
                    dir: dir.clone(),
                    upstream: args.upstream.clone(),
                    exact: args.record_exact,
                    verbosity,
                },
                args.framing.clone().unwrap_or(Framing::Line),
                args.max_frame,
            )?),
            None => None,
        },
        Some(path) => Some(proxy::scripted::ProxyScript::load(
            path,
            proxy::scripted::ScriptOptions {
                params: Arc::new(args.params.iter().cloned().collect()),
                max_frame: args.max_frame,
                hook_timeout: args.hook_timeout,
                verbosity,
            },
        )?),
    };
    // Flags that shape nothing on their own are likely a mistake.
    if !toxics.any() {
        for (given, flag) in [
            (args.toxics.direction.is_some(), "--direction"),
            (args.toxics.seed.is_some(), "--seed"),
            (args.toxics.toxicity.is_some(), "--toxicity"),
        ] {
            if given {
                return Err(Error::Usage(format!(
                    "{flag} applies to toxics, and none were given \
                     (--latency, --bandwidth, --slice, --limit-data, --reset-after, \
                     --blackhole-after, --slow-close; with --udp, --loss, --duplicate, --reorder)"
                )));
            }
        }
    }
    if let (Some(latency), Some(jitter)) = (toxics.latency, args.toxics.jitter)
        && jitter > latency
    {
        return Err(Error::Usage(format!(
            "--jitter {jitter:?} is more than --latency {latency:?}: a delay cannot be negative"
        )));
    }
    // The server's TLS flags without --tls configure its starttls(); a
    // proxy has none, so they would do nothing.
    let tls = match args.tls.options(false) {
        Some(_) if !args.tls.tls => {
            return Err(Error::Usage(
                "the --tls-* flags of `proxy` shape its TLS toward clients, and need --tls".into(),
            ));
        }
        Some(options) => Some(crate::tls::server_config(&options)?),
        None => None,
    };
    let upstream_tls = match args.upstream_tls.options() {
        Some(options) => {
            if options.insecure {
                crate::tls::warn_insecure("--upstream-insecure");
            }
            Some(proxy::transport::UpstreamTls::new(
                &options,
                &args.upstream,
            )?)
        }
        None => None,
    };
    proxy::run(
        ProxyOptions {
            listen: args.listen,
            upstream: args.upstream,
            connect_timeout: args.connect_timeout,
            toxics,
            fingerprint: tls.as_ref().map(|setup| setup.fingerprint.clone()),
            tls: tls.map(|setup| tokio_rustls::TlsAcceptor::from(setup.config)),
            upstream_tls,
            udp: args.udp,
            idle_timeout: args.idle_timeout,
            max_sessions: args.max_sessions as usize,
            seed: args.toxics.seed,
            verbosity,
            json: args.json,
        },
        script,
    )
}

fn run_client(args: ClientArgs) -> Result<(), Error> {
    check_framing(&args.common)?;
    let verbosity = args.common.verbosity();
    if args.script.is_none()
        && (!args.thresholds.thresholds.is_empty() || args.thresholds.junit.is_some())
    {
        return Err(Error::Usage(
            "--threshold and --junit are for load mode, which needs a SCRIPT".into(),
        ));
    }
    let Some(script) = args.script else {
        return manual::client(&ManualClientOptions {
            connect: args.connect,
            timeout: args.timeout,
            connect_retry: args.connect_retry,
            udp: args.udp,
            framing: args.common.framing.unwrap_or(default_framing(args.udp)),
            max_frame: args.common.max_frame,
            verbosity,
            record: args.record.options(args.tls.replay_flags(), args.udp),
            tls: client_tls(&args.tls, Vec::new())?.0,
        });
    };
    let (tls, starttls) = client_tls(&args.tls, Vec::new())?;
    let options = ClientOptions {
        params: args.common.params(),
        script,
        connect: args.connect,
        timeout: args.timeout,
        connect_retry: args.connect_retry,
        udp: args.udp,
        framing: args.common.framing,
        max_frame: args.common.max_frame,
        verbosity,
        limits: Limits {
            max_operations: args.max_ops,
            ..Limits::default()
        }
        .with_max_frame(args.common.max_frame),
        case_timeout: args.case_timeout,
        tls,
        starttls,
        tls_flags: Arc::new(args.tls.options()),
    };
    let until = match (&args.stages, args.duration, args.iterations) {
        (Some(stages), _, _) => Some(Until::Elapsed(stages.total())),
        (None, Some(duration), _) => Some(Until::Elapsed(duration)),
        (None, None, Some(iterations)) => Some(Until::Iterations(iterations)),
        (None, None, None) => None,
    };
    let load_flags = args.concurrency.is_some()
        || until.is_some()
        || args.rate.is_some()
        || args.html.is_some()
        || !args.thresholds.thresholds.is_empty()
        || args.thresholds.junit.is_some()
        || args.shards.any();
    if load_flags {
        let Some(until) = until else {
            return Err(Error::Usage(
                "load mode needs --duration, --iterations or --stages to know when to stop".into(),
            ));
        };
        let users = match &args.stages {
            Some(stages) => stages.users(),
            None => args.concurrency.unwrap_or(1),
        };
        let (shard, slice) = match &args.shards.shard {
            Some(spec) => {
                let variable = std::env::var(load::shard::INDEX_VARIABLE).ok();
                let shard = spec
                    .resolve(variable.as_deref())
                    .map_err(|e| Error::Usage(e.to_string()))?;
                let slice = shard
                    .slice(users, until, args.rate)
                    .map_err(|e| Error::Usage(e.to_string()))?;
                (Some(shard), slice)
            }
            None => (
                None,
                load::shard::Slice {
                    users,
                    until,
                    rate: args.rate,
                },
            ),
        };
        if let Some(start) = args.shards.start_at {
            load::shard::wait_for(start, std::time::SystemTime::now()).map_err(Error::Usage)?;
        }
        return load::run(&LoadOptions {
            client: ClientOptions {
                case_timeout: options.case_timeout.or(Some(LOAD_CASE_TIMEOUT)),
                ..options
            },
            concurrency: slice.users,
            until: slice.until,
            rate: slice.rate,
            shard,
            start_at: args.shards.start_at,
            hist_out: args.shards.hist_out,
            stages: match (&args.stages, &shard) {
                (Some(stages), Some(shard)) => Some(stages.shard(shard)),
                (stages, _) => stages.clone(),
            },
            report: load::ReportOptions {
                json: args.json,
                quiet: verbosity == Verbosity::Quiet,
                html: args.html,
                junit: args.thresholds.junit,
                thresholds: args.thresholds.thresholds,
            },
        });
    }
    let events = args
        .json
        .then(|| Events::to_stdout().for_test(&options.script.display().to_string()));
    let started = std::time::Instant::now();
    let conversed = match ClientScript::load(&options) {
        Ok(script) => script.run(events.clone(), SHOWN_ON_FAILURE),
        Err(error) => {
            if let Some(events) = &events {
                events.emit("result", result_event(Some(&error), started.elapsed()));
            }
            report::github::annotate(&error, None);
            return Err(error);
        }
    };
    if let Some(events) = &events {
        let error = conversed.result.as_ref().err();
        events.emit("result", result_event(error, conversed.elapsed));
    }
    let summary = conversed
        .result
        .inspect_err(|error| report::github::annotate(error, None))?;
    if verbosity >= Verbosity::Normal {
        crate::console::err(&format!(
            "ok: {} ({} sent, {} received, {:.3}s)",
            options.script.display(),
            summary.sent,
            summary.received,
            summary.elapsed.as_secs_f64()
        ));
    }
    Ok(())
}

/// The TLS of a client command: what `--tls` connections use, and what a
/// later `starttls()` does. Flags given are checked here, before any
/// connection: a CA file that cannot be read is a usage error, not a
/// failure halfway through a conversation. `trusted`: CAs made in this
/// process (`test --server`'s), trusted besides `--tls-ca`.
fn client_tls(
    args: &ClientTlsArgs,
    trusted: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> Result<
    (
        Option<crate::tls::blocking::Client>,
        Arc<crate::tls::blocking::Deferred>,
    ),
    Error,
> {
    let options = crate::tls::ClientTls {
        trusted,
        ..args.options()
    };
    let configured = args.tls
        || !options.ca.is_empty()
        || !options.trusted.is_empty()
        || options.insecure
        || options.servername.is_some()
        || !options.alpn.is_empty()
        || options.identity.is_some();
    if !configured {
        return Ok((None, Arc::default()));
    }
    if options.insecure {
        crate::tls::warn_insecure("--insecure");
    }
    let client = crate::tls::blocking::Client::new(options)?;
    let deferred = Arc::new(crate::tls::blocking::Deferred::new(Some(client.clone())));
    Ok((args.tls.then_some(client), deferred))
}

fn run_test(args: TestArgs) -> Result<(), Error> {
    check_framing(&args.common)?;
    let verbosity = args.common.verbosity();
    let limits = args.limits.limits().with_max_frame(args.common.max_frame);
    // The server's TLS first: the cases trust the throwaway CA it makes.
    // A server script that calls `starttls()` needs a certificate too; the
    // text is enough to tell (a throwaway made for a mere mention costs a
    // millisecond).
    let starttls = args.server.as_ref().is_some_and(|path| {
        std::fs::read_to_string(path).is_ok_and(|text| text.contains("starttls"))
    });
    let server_tls = match (&args.server, args.tls.tls || starttls) {
        (Some(_), true) => Some(crate::tls::server_config(&crate::tls::ServerTls {
            identity: None,
            sans: args.tls_san.clone(),
            ca_out: None,
            client_ca: args.tls_client_ca.clone(),
            // One list for both ends: what the cases offer, the server accepts.
            alpn: args.tls.tls_alpn.clone(),
        })?),
        _ => None,
    };
    let trusted: Vec<_> = server_tls.iter().filter_map(|tls| tls.ca.clone()).collect();
    // What `connect(addr, options)` starts from trusts that CA too.
    let tls_flags = Arc::new(crate::tls::ClientTls {
        trusted: trusted.clone(),
        ..args.tls.options()
    });
    let (tls, starttls) = client_tls(&args.tls, trusted)?;
    runner::run(TestOptions {
        clients: args.clients,
        client: ClientOptions {
            script: PathBuf::new(),
            connect: args.connect,
            timeout: args.timeout,
            connect_retry: args.connect_retry,
            udp: args.udp,
            framing: args.common.framing.clone(),
            max_frame: args.common.max_frame,
            params: args.common.params(),
            verbosity,
            limits: Limits::default().with_max_frame(args.common.max_frame),
            case_timeout: Some(args.case_timeout),
            tls,
            starttls,
            tls_flags,
        },
        server: args.server.map(|path| {
            (
                path,
                ServerSettings {
                    limits,
                    hook_timeout: args.limits.hook_timeout,
                    idle_timeout: args.limits.idle_timeout,
                    udp: args.limits.udp(args.udp),
                    tls: server_tls,
                    tls_on_accept: args.tls.tls,
                },
            )
        }),
        jobs: args.jobs,
        junit: args.junit,
        html: args.html,
        tap: args.tap,
        json: args.json,
    })
}

/// The longest any duration flag may be: a year (`1y`, 365.25 days).
/// Far longer than any conversation, test run or idle connection, and far
/// from where a deadline stops fitting the clock (`Instant` + `Duration`
/// panics on overflow, which `--timeout 1e19` used to reach).
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(31_557_600);

/// Load mode runs one thread and one compiled script per virtual user.
const MAX_CONCURRENCY: u64 = load::MAX_USERS;

/// `-j`: test cases run at once, each on a thread of its own.
const MAX_JOBS: u64 = 1_000;

/// `--rate` bounds: below one conversation in 1000 s a run is not a load
/// test; above a million per second it paces nothing any machine reaches.
const MIN_RATE: f64 = 0.001;
const MAX_RATE: f64 = 1_000_000.0;

/// The largest `--max-frame`. A message is buffered whole before it is
/// handed on, so this is also memory a single peer may make a connection
/// hold; scripts cannot build strings past 8 MiB anyway.
const MAX_FRAME_LIMIT: usize = 1024 * 1024 * 1024;

/// A duration flag that must be more than zero: `--timeout`,
/// `--hook-timeout`, `--idle-timeout`, `--duration`. A zero timeout would
/// fail every read at once (and a socket refuses it), a zero duration runs
/// nothing.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_retry(text)?;
    if duration.is_zero() {
        return Err(format!(
            "`{text}` is too short: give more than 0, e.g. 5s or 250ms"
        ));
    }
    Ok(duration)
}

/// `5s`, `250ms`, `1m30s`; a bare number is seconds. Zero is allowed
/// (`--connect-retry 0`: do not retry); at most [`MAX_DURATION`].
pub(crate) fn parse_retry(text: &str) -> Result<Duration, String> {
    let too_long = || format!("`{text}` is longer than the limit of 1 year (1y)");
    let duration = match text.trim().parse::<f64>() {
        Ok(seconds) if seconds.is_nan() || seconds < 0.0 => {
            return Err(format!(
                "`{text}` is not a duration of 0 or more (try 5s, 250ms or 1m)"
            ));
        }
        Ok(seconds) => Duration::try_from_secs_f64(seconds).map_err(|_| too_long())?,
        Err(_) => humantime::parse_duration(text).map_err(|e| match e {
            humantime::DurationError::NumberOverflow => too_long(),
            e => format!("{e} (try 5s, 250ms or 1m)"),
        })?,
    };
    if duration > MAX_DURATION {
        return Err(too_long());
    }
    Ok(duration)
}

/// `--rate`: conversations started per second, from [`MIN_RATE`] to
/// [`MAX_RATE`]. A tiny rate used to put the second conversation's start
/// past the end of the clock.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if (MIN_RATE..=MAX_RATE).contains(&rate) => Ok(rate),
        Ok(_) => Err(format!(
            "`{text}` is out of range: give from {MIN_RATE} to {MAX_RATE:.0} conversations per second"
        )),
        Err(_) => Err(format!(
            "`{text}` is not a number of conversations per second"
        )),
    }
}

fn concurrency_range() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=MAX_CONCURRENCY)
}

fn jobs_range() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=MAX_JOBS)
}

/// `--max-frame`: a size from 1 byte to [`MAX_FRAME_LIMIT`].
fn parse_max_frame(text: &str) -> Result<usize, String> {
    let size = parse_size(text)?;
    if size > MAX_FRAME_LIMIT {
        return Err(format!("`{text}` is more than the limit of 1GiB"));
    }
    Ok(size)
}

/// `65536`, `64KiB`, `64K`, `1MiB`, `1M`.
/// A TLS server name (a DNS name or an IP address), checked before
/// anything connects.
fn parse_server_name(text: &str) -> Result<String, String> {
    rustls::pki_types::ServerName::try_from(text)
        .map(|_| text.to_string())
        .map_err(|_| format!("`{text}` is not a valid TLS server name"))
}

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

/// `--toxicity`: a fraction from 0 (no connection) to 1 (every one).
fn parse_chance(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!(
            "`{text}` is not a chance from 0 to 1 (0.1: one datagram in ten)"
        )),
    }
}

fn parse_toxicity(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!(
            "`{text}` is not a fraction from 0 to 1 (0.25: a quarter of the connections)"
        )),
    }
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
    fn durations_are_finite_and_at_most_a_year() {
        assert_eq!(parse_duration("1y"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("31557600"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        for text in ["1e19", "1e30", "inf", "1y1s", "2y", "99999999999999999999y"] {
            let error = parse_duration(text).unwrap_err();
            assert!(
                error.contains("longer than the limit of 1 year"),
                "{text}: {error}"
            );
        }
        for text in ["NaN", "-1", "-inf"] {
            let error = parse_duration(text).unwrap_err();
            assert!(error.contains("not a duration"), "{text}: {error}");
        }
    }

    #[test]
    fn timeouts_must_be_more_than_zero() {
        for text in ["0", "0s", "0ms", "1e-12", "-0"] {
            let error = parse_duration(text).unwrap_err();
            assert!(error.contains("too short"), "{text}: {error}");
        }
        assert_eq!(parse_duration("1ns"), Ok(Duration::from_nanos(1)));
    }

    #[test]
    fn connect_retry_may_be_zero() {
        assert_eq!(parse_retry("0"), Ok(Duration::ZERO));
        assert_eq!(parse_retry("30s"), Ok(Duration::from_secs(30)));
        assert!(parse_retry("1e19").is_err());
    }

    #[test]
    fn rates_are_within_bounds() {
        assert_eq!(parse_rate("0.001"), Ok(0.001));
        assert_eq!(parse_rate("1000000"), Ok(1_000_000.0));
        for text in [
            "1e-300", "0", "-5", "0.0009", "1000001", "inf", "NaN", "fast",
        ] {
            assert!(parse_rate(text).is_err(), "{text}");
        }
    }

    #[test]
    fn max_frame_is_at_most_a_gibibyte() {
        assert_eq!(parse_max_frame("1GiB"), Ok(1 << 30));
        assert!(parse_max_frame("1025MiB").is_err());
        assert!(parse_max_frame("0").is_err());
    }

    /// The error clap reports for `args`, which must name `flag`.
    fn refused(args: &[&str], flag: &str) -> clap::error::ErrorKind {
        let error = Cli::try_parse_from(args).unwrap_err();
        assert!(error.to_string().contains(flag), "{args:?}: {error}");
        error.kind()
    }

    #[test]
    fn counts_are_within_bounds() {
        use clap::error::ErrorKind::ValueValidation;
        let client = ["tcpscript", "client", "x.rhai", "--iterations", "1"];
        for n in ["0", "10001"] {
            let args = [&client[..], &["--concurrency", n]].concat();
            assert_eq!(refused(&args, "--concurrency"), ValueValidation);
        }
        assert!(Cli::try_parse_from([&client[..], &["--concurrency", "10000"]].concat()).is_ok());
        let args = ["tcpscript", "client", "x.rhai", "--iterations", "0"];
        assert_eq!(refused(&args, "--iterations"), ValueValidation);
        for n in ["0", "1001"] {
            let args = ["tcpscript", "test", "x.rhai", "-j", n];
            assert_eq!(refused(&args, "--jobs"), ValueValidation);
        }
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
