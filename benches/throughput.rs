//! Speed and memory benchmark for tcpscript, run by hand:
//!
//! ```sh
//! cargo bench --bench throughput                      # full run, about 1.5 minutes
//! cargo bench --bench throughput -- --quick           # short run, about 25 s
//! cargo bench --bench throughput -- --only echo,idle  # some sections only
//! ```
//!
//! Sections (all on 127.0.0.1, every port picked by binding port 0 and
//! reading the `listening on IP:PORT` line each server prints first):
//!
//! - `echo`: ping-pong of 32-byte lines over 1, 50 and 500 connections
//!   against `tcpscript server` with a one-line echo hook, a bare tokio
//!   line-echo server (the floor, this binary re-executed with
//!   `--floor-server`), and a Python asyncio echo server. Servers run
//!   alternately; each figure is compared with the floor.
//! - `client`: 20,000 send/recv/assert_eq exchanges by `tcpscript client`
//!   against the floor server, beside the same loop in blocking Python.
//! - `idle`: RSS of a server holding 10,000 idle connections.
//! - `check`: wall time of `tcpscript check` on a small script.
//! - `tls`: the echo ping-pong over 50 TLS connections against `tcpscript
//!   server --tls` (its throwaway CA trusted via `--tls-ca-out`) and a bare
//!   tokio-rustls line-echo floor (this binary re-executed with
//!   `--floor-tls-server CERT KEY`, an rcgen self-signed certificate), both
//!   on rustls with the `ring` provider; then load mode's TLS rate,
//!   `tcpscript client --tls --concurrency 50` against the TLS floor,
//!   beside a tokio-rustls connect/handshake/exchange/close loop.
//!
//! `TCPSCRIPT_BENCH_BIN=/path/to/tcpscript` benchmarks that binary instead
//! of the one cargo built (a build with debug info to profile, another branch).
//!
//! It is not part of CI's pass/fail: it prints a table with the targets
//! and PASS/FAIL per row, and always exits 0 unless it could not run.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

/// The release binary cargo built for this bench (`target/release/tcpscript`).
const BUILT_TCPSCRIPT: &str = env!("CARGO_BIN_EXE_tcpscript");
/// Set to benchmark another build instead, e.g. one with debug info to profile.
const BIN_VAR: &str = "TCPSCRIPT_BENCH_BIN";

/// The tcpscript binary under test.
fn tcpscript() -> PathBuf {
    std::env::var_os(BIN_VAR).map_or_else(|| PathBuf::from(BUILT_TCPSCRIPT), PathBuf::from)
}
/// The hidden argument that turns this binary into the floor server.
const FLOOR_ARG: &str = "--floor-server";
/// The hidden argument that turns this binary into the TLS floor server;
/// it takes the certificate and key PEM files.
const FLOOR_TLS_ARG: &str = "--floor-tls-server";
/// Connections of the TLS echo run.
const TLS_CONNECTIONS: usize = 50;

/// One ping: 31 bytes and a newline. The first 20 bytes carry a sequence
/// number so a stale or mixed-up reply is caught.
const MESSAGE: &[u8; 32] = b"00000000000000000000 ping-pong!\n";
const ECHO_HOOK: &str = "fn on_message(msg) { msg }\n";
/// Load mode's conversation: one exchange, on a fresh connection each time.
const LOAD_CONVERSATION: &str = "send(\"ping\");\nassert_eq(recv(), \"ping\");\n";
/// Virtual users in the load section.
const LOAD_USERS: usize = 50;
const CONNECTIONS: [usize; 3] = [1, 50, 500];
const IDLE_CONNECTIONS: usize = 10_000;
const CLIENT_EXCHANGES: usize = 20_000;
/// Connects in flight at once when opening many connections.
const CONNECT_CONCURRENCY: usize = 256;
/// A connection that cannot finish its round trip this long after the
/// measurement stops is counted as an error (stalled).
const STALL_LIMIT: Duration = Duration::from_secs(10);

/// The Python asyncio line-echo server: what a user writes instead.
const PYTHON_SERVER: &str = r#"
import asyncio, resource, socket, sys

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
except (ValueError, OSError):
    pass

async def handle(reader, writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write(line)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{port}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"#;

/// The scripted client's conversation, as a plain blocking Python loop.
const PYTHON_CLIENT: &str = r#"
import socket, sys

port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port), timeout=10)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
f = s.makefile("rb")
for i in range(n):
    m = f"ping {i}"
    s.sendall(m.encode() + b"\n")
    r = f.readline().decode().rstrip("\r\n")
    assert r == m, (r, m)
s.close()
"#;

fn rhai_client(exchanges: usize) -> String {
    format!(
        "for i in 0..{exchanges} {{\n    let m = `ping ${{i}}`;\n    send(m);\n    assert_eq(recv(), m);\n}}\n"
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(FLOOR_ARG) {
        floor_server();
        return;
    }
    if args.first().map(String::as_str) == Some(FLOOR_TLS_ARG) {
        match (args.get(1), args.get(2)) {
            (Some(cert), Some(key)) => floor_tls_server(Path::new(cert), Path::new(key)),
            _ => {
                eprintln!("usage: {FLOOR_TLS_ARG} CERT KEY");
                std::process::exit(2);
            }
        }
        return;
    }
    let config = match Config::parse(&args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(message) = run(&config) {
        eprintln!("benchmark failed: {message}");
        std::process::exit(1);
    }
}

const USAGE: &str = "\
usage: cargo bench --bench throughput [-- OPTIONS]

  --quick                           short runs (about 25 s in all)
  --only echo,client,load,idle,check,tls  run these sections only
  --servers floor,tcpscript,python  servers for echo and idle (default: all;
                                    ratios and targets need the floor)
  --conns 1,50,500                  connection counts for echo
  --rounds N                        echo rounds per server (default 6, 2 with --quick)

  TCPSCRIPT_BENCH_BIN=PATH          benchmark that tcpscript binary instead";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    Echo,
    Client,
    Load,
    Idle,
    Check,
    Tls,
}

impl Section {
    const ALL: [Section; 6] = [
        Section::Echo,
        Section::Client,
        Section::Load,
        Section::Idle,
        Section::Check,
        Section::Tls,
    ];

    fn name(self) -> &'static str {
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

struct Config {
    quick: bool,
    sections: BTreeSet<Section>,
    /// Servers to compare (`--servers floor,tcpscript,python`).
    servers: Vec<Kind>,
    /// Connection counts of the echo section (`--conns 1,50,500`).
    connections: Vec<usize>,
    /// The arguments as given after `--`, for the reproduce line.
    args: Vec<String>,
    /// Measured seconds per echo run, warm-up before it, and rounds.
    echo_time: Duration,
    echo_warmup: Duration,
    echo_rounds: usize,
    client_runs: usize,
    check_runs: usize,
}

impl Config {
    fn parse(args: &[String]) -> Result<Config, String> {
        let mut quick = false;
        let mut sections: BTreeSet<Section> = Section::ALL.into_iter().collect();
        let mut servers = vec![Kind::Floor, Kind::Tcpscript, Kind::Python];
        let mut connections = CONNECTIONS.to_vec();
        let mut rounds = None;
        let mut given = Vec::new();
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            // `--name value` or `--name=value`.
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (arg.as_str(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| iter.next().cloned())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match name {
                // cargo bench passes this to every bench target.
                "--bench" => continue,
                "--quick" => {
                    quick = true;
                    given.push(arg.clone());
                }
                "--only" => {
                    let list = value()?;
                    sections =
                        parse_list(&list, |s| Section::ALL.into_iter().find(|x| x.name() == s))?;
                    given.push(format!("--only {list}"));
                }
                "--servers" => {
                    let list = value()?;
                    servers = parse_list(&list, |s| {
                        [Kind::Floor, Kind::Tcpscript, Kind::Python]
                            .into_iter()
                            .find(|k| k.id() == s)
                    })?;
                    given.push(format!("--servers {list}"));
                }
                "--conns" => {
                    let list = value()?;
                    connections = parse_list(&list, |s| s.parse().ok().filter(|&n| n > 0))?;
                    given.push(format!("--conns {list}"));
                }
                "--rounds" => {
                    let n = value()?;
                    rounds = Some(
                        n.parse::<usize>()
                            .ok()
                            .filter(|&n| n > 0)
                            .ok_or_else(|| format!("--rounds needs a positive number, not {n}"))?,
                    );
                    given.push(format!("--rounds {n}"));
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument `{other}`")),
            }
        }
        Ok(Config {
            quick,
            sections,
            servers,
            connections,
            args: given,
            // Short runs, many rounds: the servers take turns often, so a
            // slow patch of a shared machine hits them all alike.
            echo_time: Duration::from_millis(if quick { 600 } else { 1000 }),
            echo_warmup: Duration::from_millis(if quick { 200 } else { 300 }),
            echo_rounds: rounds.unwrap_or(if quick { 2 } else { 6 }),
            client_runs: if quick { 3 } else { 5 },
            check_runs: 20,
        })
    }

    /// The servers to run, in `order`, without Python when it is missing.
    fn kinds(&self, context: &Context, order: &[Kind]) -> Vec<Kind> {
        order
            .iter()
            .copied()
            .filter(|k| self.servers.contains(k))
            .filter(|k| *k != Kind::Python || context.python.is_some())
            .collect()
    }

    fn reproduce(&self) -> String {
        if self.args.is_empty() {
            "cargo bench --bench throughput".into()
        } else {
            format!("cargo bench --bench throughput -- {}", self.args.join(" "))
        }
    }
}

/// A comma-separated list, each item looked up by `find`.
fn parse_list<T, C: FromIterator<T>>(
    list: &str,
    find: impl Fn(&str) -> Option<T>,
) -> Result<C, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| find(item).ok_or_else(|| format!("unknown item `{item}` in `{list}`")))
        .collect()
}

// ---------------------------------------------------------------------------
// The run

/// What every section needs.
struct Context {
    runtime: Runtime,
    dir: tempfile::TempDir,
    python: Option<PathBuf>,
    fd_limit: u64,
}

impl Context {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn run(config: &Config) -> Result<(), String> {
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

// ---------------------------------------------------------------------------
// Servers under test

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Floor,
    Tcpscript,
    Python,
    /// The tokio-rustls floor (`--floor-tls-server`).
    FloorTls,
    /// `tcpscript server --tls` with its throwaway CA.
    TcpscriptTls,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Floor => "floor (tokio)",
            Kind::Tcpscript => "tcpscript",
            Kind::Python => "python asyncio",
            Kind::FloorTls => "floor (tokio-rustls)",
            Kind::TcpscriptTls => "tcpscript --tls",
        }
    }

    /// The name `--servers` takes.
    fn id(self) -> &'static str {
        match self {
            Kind::Floor => "floor",
            Kind::Tcpscript => "tcpscript",
            Kind::Python => "python",
            Kind::FloorTls => "floor-tls",
            Kind::TcpscriptTls => "tcpscript-tls",
        }
    }
}

/// A server process, stopped (killed if need be) when dropped.
struct Server {
    kind: Kind,
    child: Child,
    addr: SocketAddr,
    /// Everything it printed on stderr after the `listening on` line.
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(kind: Kind, context: &Context) -> Result<Server, String> {
        let mut command = match kind {
            Kind::Floor => {
                let mut c =
                    Command::new(std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?);
                c.arg(FLOOR_ARG);
                c
            }
            Kind::Tcpscript => {
                let mut c = Command::new(tcpscript());
                c.arg("server").arg(context.path("echo.rhai")).args([
                    "--listen",
                    "127.0.0.1:0",
                    "-q",
                ]);
                c
            }
            Kind::Python => {
                let python = context.python.as_ref().ok_or("python3 not found")?;
                let mut c = Command::new(python);
                c.arg(context.path("echo_server.py"));
                c
            }
            Kind::FloorTls => {
                let mut c =
                    Command::new(std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?);
                c.arg(FLOOR_TLS_ARG)
                    .arg(context.path(FLOOR_CERT))
                    .arg(context.path(FLOOR_KEY));
                c
            }
            Kind::TcpscriptTls => {
                let mut c = Command::new(tcpscript());
                c.arg("server")
                    .arg(context.path("echo.rhai"))
                    .args(["--listen", "127.0.0.1:0", "-q", "--tls", "--tls-ca-out"])
                    .arg(context.path(TCPSCRIPT_CA));
                c
            }
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", kind.name()))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let rest = Arc::new(Mutex::new(String::new()));
        let (first_tx, first_rx) = mpsc::channel();
        {
            let rest = rest.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut first = String::new();
                let _ = reader.read_line(&mut first);
                let _ = first_tx.send(first);
                let mut buf = [0u8; 4096];
                while let Ok(n) = reader.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut rest = rest.lock().unwrap();
                    if rest.len() < 64 * 1024 {
                        rest.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        let mut server = Server {
            kind,
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr: rest,
        };
        let first = first_rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| format!("{} printed nothing on stderr in 20 s", kind.name()))?;
        let addr = first
            .trim_end()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .ok_or_else(|| {
                format!(
                    "{} did not start: its first stderr line is {first:?} {}",
                    kind.name(),
                    server.stderr.lock().unwrap()
                )
            })?;
        if !addr.ip().is_loopback() {
            return Err(format!("{} listens on {addr}, not loopback", kind.name()));
        }
        server.addr = addr;
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User and system CPU the process has used so far, in seconds.
    fn cpu(&self) -> Result<Cpu, String> {
        proc_cpu(self.pid())
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory(&self) -> Result<(u64, u64), String> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .map_err(|e| format!("/proc/{}/status: {e}", self.pid()))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok((field("VmRSS:"), field("VmHWM:")))
    }

    /// Stops it with SIGTERM; returns what it printed after starting.
    fn stop(mut self) -> String {
        self.terminate();
        self.stderr.lock().unwrap().clone()
    }

    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    user: f64,
    system: f64,
}

impl Cpu {
    fn total(self) -> f64 {
        self.user + self.system
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            user: self.user - before.user,
            system: self.system - before.system,
        }
    }
}

/// utime and stime of a process (all its threads) from `/proc/PID/stat`.
fn proc_cpu(pid: u32) -> Result<Cpu, String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let after = &stat[stat.rfind(')').ok_or("bad /proc stat")? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks = |i: usize| -> Result<f64, String> {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v as f64)
            .ok_or_else(|| "bad /proc stat".to_string())
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(Cpu {
        user: ticks(14)? / hz,
        system: ticks(15)? / hz,
    })
}

/// CPU this (load generator) process has used, all threads.
fn self_cpu() -> Cpu {
    rusage_cpu(libc::RUSAGE_SELF)
}

fn rusage_cpu(who: libc::c_int) -> Cpu {
    // SAFETY: getrusage fills the struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    Cpu {
        user: timeval(usage.ru_utime),
        system: timeval(usage.ru_stime),
    }
}

fn timeval(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

// ---------------------------------------------------------------------------
// The floor: a bare tokio line-echo server in its own process

fn floor_server() {
    raise_fd_limit(u64::MAX);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind");
        // The same backlog as tcpscript, so bursts of connects are alike.
        let listener = socket.listen(4096).expect("listen");
        eprintln!("listening on {}", listener.local_addr().expect("addr"));
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let (read, mut write) = stream.split();
                let mut read = tokio::io::BufReader::new(read);
                let mut line = String::new();
                loop {
                    line.clear();
                    match tokio::io::AsyncBufReadExt::read_line(&mut read, &mut line).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if write.write_all(line.as_bytes()).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
}

// ---------------------------------------------------------------------------
// Load generator

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

fn new_histogram() -> Histogram<u64> {
    // Nanoseconds, 100 ns to 60 s, two significant digits (under 1% error):
    // small enough to keep one per connection.
    Histogram::new_with_bounds(100, 60_000_000_000, 2).expect("histogram bounds")
}

/// What one connection did in the measured window.
struct ConnStats {
    round_trips: u64,
    hist: Histogram<u64>,
    error: Option<String>,
}

/// Writes `seq` as 20 decimal digits at the front of `msg`.
fn stamp(msg: &mut [u8; 32], mut seq: u64) {
    for i in (0..20).rev() {
        msg[i] = b'0' + (seq % 10) as u8;
        seq /= 10;
    }
}

/// Any stream the echo measures: a `TcpStream` or a TLS stream over one.
trait EchoStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> EchoStream for S {}

async fn round_trip<S: EchoStream>(stream: &mut S, msg: &[u8; 32]) -> Result<(), String> {
    let mut reply = [0u8; 32];
    stream
        .write_all(msg)
        .await
        .map_err(|e| format!("write: {e}"))?;
    // A no-op on TCP; pushes a TLS record out.
    stream.flush().await.map_err(|e| format!("flush: {e}"))?;
    stream
        .read_exact(&mut reply)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if &reply != msg {
        return Err(format!(
            "wrong reply: sent {:?}, got {:?}",
            String::from_utf8_lossy(msg),
            String::from_utf8_lossy(&reply)
        ));
    }
    Ok(())
}

async fn ping_pong<S: EchoStream>(mut stream: S, phase: Arc<AtomicU8>) -> ConnStats {
    let mut stats = ConnStats {
        round_trips: 0,
        hist: new_histogram(),
        error: None,
    };
    let mut msg = *MESSAGE;
    let mut seq = 0u64;
    while phase.load(Ordering::Relaxed) != STOP {
        stamp(&mut msg, seq);
        seq += 1;
        let start = Instant::now();
        if let Err(e) = round_trip(&mut stream, &msg).await {
            stats.error = Some(e);
            break;
        }
        if phase.load(Ordering::Relaxed) == MEASURE {
            stats.round_trips += 1;
            stats
                .hist
                .saturating_record(start.elapsed().as_nanos() as u64);
        }
    }
    stats
}

/// Opens `n` connections (`CONNECT_CONCURRENCY` at a time); each does one
/// round trip first when `exchange` is set. Returns the streams and errors.
async fn connect_many(addr: SocketAddr, n: usize, exchange: bool) -> (Vec<TcpStream>, Vec<String>) {
    let mut streams = Vec::with_capacity(n);
    let mut errors = Vec::new();
    let mut set = JoinSet::new();
    let mut started = 0;
    loop {
        while started < n && set.len() < CONNECT_CONCURRENCY {
            started += 1;
            set.spawn(async move {
                let mut stream = TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                if exchange {
                    tokio::time::timeout(STALL_LIMIT, round_trip(&mut stream, MESSAGE))
                        .await
                        .map_err(|_| "first round trip timed out".to_string())??;
                }
                Ok::<_, String>(stream)
            });
        }
        match set.join_next().await {
            Some(Ok(Ok(stream))) => streams.push(stream),
            Some(Ok(Err(e))) => errors.push(e),
            Some(Err(e)) => errors.push(format!("task: {e}")),
            None => break,
        }
    }
    (streams, errors)
}

/// One echo measurement: `n` connections to `server`.
#[derive(Clone)]
struct EchoRun {
    round_trips: u64,
    errors: u64,
    first_error: Option<String>,
    hist: Histogram<u64>,
    seconds: f64,
    server_cpu: f64,
    loadgen_cpu: f64,
}

impl EchoRun {
    fn empty() -> Self {
        EchoRun {
            round_trips: 0,
            errors: 0,
            first_error: None,
            hist: new_histogram(),
            seconds: 0.0,
            server_cpu: 0.0,
            loadgen_cpu: 0.0,
        }
    }

    fn add(&mut self, other: &EchoRun) {
        self.round_trips += other.round_trips;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.hist.add(&other.hist).expect("same histogram bounds");
        self.seconds += other.seconds;
        self.server_cpu += other.server_cpu;
        self.loadgen_cpu += other.loadgen_cpu;
    }

    fn per_second(&self) -> f64 {
        self.round_trips as f64 / self.seconds.max(1e-9)
    }

    /// Server CPU seconds per round trip, in microseconds.
    fn cpu_per_message_us(&self) -> f64 {
        self.server_cpu / (self.round_trips.max(1) as f64) * 1e6
    }

    fn loadgen_cpu_per_message_us(&self) -> f64 {
        self.loadgen_cpu / (self.round_trips.max(1) as f64) * 1e6
    }

    fn p50_us(&self) -> f64 {
        self.hist.value_at_quantile(0.50) as f64 / 1e3
    }

    fn p99_us(&self) -> f64 {
        self.hist.value_at_quantile(0.99) as f64 / 1e3
    }
}

fn echo_run(
    context: &Context,
    server: &Server,
    n: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<EchoRun, String> {
    let (streams, connect_errors) = context
        .runtime
        .block_on(connect_many(server.addr, n, false));
    measure_echo(context, server, streams, connect_errors, warmup, measure)
}

/// Ping-pong on `streams` (already connected) for `warmup` then `measure`,
/// with the server's CPU over the measured window.
fn measure_echo<S: EchoStream>(
    context: &Context,
    server: &Server,
    streams: Vec<S>,
    connect_errors: Vec<String>,
    warmup: Duration,
    measure: Duration,
) -> Result<EchoRun, String> {
    let runtime = &context.runtime;
    let mut run = EchoRun::empty();
    run.errors = connect_errors.len() as u64;
    run.first_error = connect_errors.into_iter().next();
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|stream| runtime.spawn(ping_pong(stream, phase.clone())))
        .collect();
    std::thread::sleep(warmup);
    let server_before = server.cpu()?;
    let loadgen_before = self_cpu();
    let start = Instant::now();
    phase.store(MEASURE, Ordering::Relaxed);
    std::thread::sleep(measure);
    phase.store(STOP, Ordering::Relaxed);
    run.seconds = start.elapsed().as_secs_f64();
    let server_after = server.cpu()?;
    let loadgen_after = self_cpu();
    run.server_cpu = server_after.since(server_before).total();
    run.loadgen_cpu = loadgen_after.since(loadgen_before).total();
    runtime.block_on(async {
        let give_up = tokio::time::Instant::now() + STALL_LIMIT;
        for task in tasks {
            let abort = task.abort_handle();
            match tokio::time::timeout_at(give_up, task).await {
                Ok(Ok(stats)) => {
                    run.round_trips += stats.round_trips;
                    run.hist.add(&stats.hist).expect("same histogram bounds");
                    if let Some(e) = stats.error {
                        run.errors += 1;
                        run.first_error.get_or_insert(e);
                    }
                }
                Ok(Err(e)) => {
                    run.errors += 1;
                    run.first_error.get_or_insert(format!("task: {e}"));
                }
                Err(_) => {
                    abort.abort();
                    run.errors += 1;
                    run.first_error
                        .get_or_insert("stalled: no reply 10 s after the end".into());
                }
            }
        }
    });
    Ok(run)
}

struct EchoResults {
    kinds: Vec<Kind>,
    /// For each connection count, each kind's aggregate over the rounds.
    rows: Vec<(usize, Vec<(Kind, EchoRun)>)>,
    /// For each connection count and server, its (round trips/s, CPU per
    /// message) ratios to the floor's run in the same round.
    round_ratios: Vec<(usize, Vec<KindRatios>)>,
}

/// One server's (round trips/s, CPU per message) ratios to the floor, per round.
type KindRatios = (Kind, Vec<(f64, f64)>);

impl EchoResults {
    /// The per-round ratios to the floor of `kind` at `n` connections.
    fn ratios(&self, n: usize, kind: Kind) -> Option<(Vec<f64>, Vec<f64>)> {
        if kind == Kind::Floor {
            return None;
        }
        let (_, per_kind) = self.round_ratios.iter().find(|(m, _)| *m == n)?;
        let (_, ratios) = per_kind.iter().find(|(k, _)| *k == kind)?;
        if ratios.is_empty() {
            return None;
        }
        Some((
            ratios.iter().map(|r| r.0).collect(),
            ratios.iter().map(|r| r.1).collect(),
        ))
    }

    /// Median over the rounds of (round trips/s, CPU per message) ratios
    /// to the floor: what the targets use. 1 for the floor itself.
    fn ratio(&self, n: usize, kind: Kind) -> (f64, f64) {
        if kind == Kind::Floor && self.get(n, Kind::Floor).is_some() {
            return (1.0, 1.0);
        }
        match self.ratios(n, kind) {
            Some((rate, cpu)) => (median(rate), median(cpu)),
            None => (f64::NAN, f64::NAN),
        }
    }

    fn get(&self, n: usize, kind: Kind) -> Option<&EchoRun> {
        self.rows
            .iter()
            .find(|(m, _)| *m == n)?
            .1
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, r)| r)
    }
}

fn echo_section(config: &Config, context: &Context) -> Result<EchoResults, String> {
    let kinds = config.kinds(context, &[Kind::Floor, Kind::Tcpscript, Kind::Python]);
    eprintln!(
        "== echo: ping-pong of 32-byte lines, {} s measured per run after {} ms warm-up, {} round(s), servers alternating",
        config.echo_time.as_secs_f64(),
        config.echo_warmup.as_millis(),
        config.echo_rounds
    );
    // One process per server for the whole section; connections are new per run.
    let servers: Vec<Server> = kinds
        .iter()
        .map(|&k| Server::start(k, context))
        .collect::<Result<_, _>>()?;
    eprintln!(
        "  pids (to attach a profiler): {}",
        servers
            .iter()
            .map(|s| format!("{} {}", s.kind.name(), s.pid()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut rows = Vec::new();
    let mut round_ratios = Vec::new();
    for &n in &config.connections {
        let mut totals: Vec<(Kind, EchoRun)> =
            kinds.iter().map(|&k| (k, EchoRun::empty())).collect();
        let mut ratios = Vec::new();
        for round in 0..config.echo_rounds {
            let mut this_round: Vec<(Kind, EchoRun)> = Vec::new();
            // Who goes first rotates from round to round.
            for i in 0..servers.len() {
                let index = (i + round) % servers.len();
                let server = &servers[index];
                let run = echo_run(context, server, n, config.echo_warmup, config.echo_time)?;
                eprintln!(
                    "  {n:>3} conn  round {}  {:<15} {:>9} rt/s  p50 {:>8.1} us  p99 {:>8.1} us  server cpu {:>6.2} us/msg  load gen {:>6.2} us/msg  errors {}",
                    round + 1,
                    server.kind.name(),
                    thousands(run.per_second()),
                    run.p50_us(),
                    run.p99_us(),
                    run.cpu_per_message_us(),
                    run.loadgen_cpu_per_message_us(),
                    run.errors,
                );
                if let Some(e) = &run.first_error {
                    eprintln!("      first error: {e}");
                }
                totals[index].1.add(&run);
                this_round.push((server.kind, run));
            }
            let floor = this_round.iter().find(|(k, _)| *k == Kind::Floor);
            for (kind, run) in &this_round {
                if let (Some((_, f)), true) = (floor, *kind != Kind::Floor) {
                    let slot = match ratios.iter_mut().find(|(k, _)| k == kind) {
                        Some(slot) => slot,
                        None => {
                            ratios.push((*kind, Vec::new()));
                            ratios.last_mut().expect("just pushed")
                        }
                    };
                    slot.1.push((
                        run.per_second() / f.per_second().max(1e-9),
                        run.cpu_per_message_us() / f.cpu_per_message_us().max(1e-9),
                    ));
                }
            }
        }
        round_ratios.push((n, ratios));
        rows.push((n, totals));
    }
    for server in servers {
        let kind = server.kind;
        let stderr = server.stop();
        let noted = stderr
            .lines()
            .filter(|l| !l.starts_with("shut down:") || !l.ends_with(" 0 errors"))
            .collect::<Vec<_>>();
        if !noted.is_empty() {
            eprintln!("  {} said on stderr: {}", kind.name(), noted.join(" | "));
        }
    }
    eprintln!();
    Ok(EchoResults {
        kinds,
        rows,
        round_ratios,
    })
}

// ---------------------------------------------------------------------------
// Scripted client

/// One client process run: wall time and CPU from wait4.
#[derive(Debug, Clone, Copy)]
struct ProcessRun {
    wall: f64,
    user: f64,
    system: f64,
}

/// Runs a command to completion; fails unless it exits 0.
fn run_measured(
    command: &mut Command,
    what: &str,
    stderr_path: &Path,
) -> Result<ProcessRun, String> {
    let stderr = fs::File::create(stderr_path).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let mut status = 0;
    // SAFETY: waiting for our own child, into structs we own. std's Child
    // is not waited for afterwards.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let pid = libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage);
        if pid < 0 {
            return Err(format!("wait4 {what}: {}", std::io::Error::last_os_error()));
        }
        usage
    };
    let wall = start.elapsed().as_secs_f64();
    let exited = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    if exited != Some(0) {
        return Err(format!(
            "{what} failed (status {status:#x}): {}",
            fs::read_to_string(stderr_path).unwrap_or_default().trim()
        ));
    }
    Ok(ProcessRun {
        wall,
        user: timeval(usage.ru_utime),
        system: timeval(usage.ru_stime),
    })
}

struct ClientResults {
    exchanges: usize,
    tcpscript: Vec<ProcessRun>,
    python: Vec<ProcessRun>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

impl ClientResults {
    fn wall(runs: &[ProcessRun]) -> f64 {
        median(runs.iter().map(|r| r.wall).collect())
    }
    fn user(runs: &[ProcessRun]) -> f64 {
        median(runs.iter().map(|r| r.user).collect())
    }
    fn system(runs: &[ProcessRun]) -> f64 {
        median(runs.iter().map(|r| r.system).collect())
    }
}

fn client_section(config: &Config, context: &Context) -> Result<ClientResults, String> {
    eprintln!(
        "== client: {CLIENT_EXCHANGES} send/recv/assert_eq exchanges against the floor server, {} run(s) each, alternating",
        config.client_runs
    );
    let server = Server::start(Kind::Floor, context)?;
    let port = server.addr.port().to_string();
    let mut results = ClientResults {
        exchanges: CLIENT_EXCHANGES,
        tcpscript: Vec::new(),
        python: Vec::new(),
    };
    let err = context.path("client.stderr");
    for run in 0..config.client_runs {
        let mut command = Command::new(tcpscript());
        command
            .arg("client")
            .arg(context.path("client.rhai"))
            .args(["--connect", &server.addr.to_string(), "-q"]);
        let t = run_measured(&mut command, "tcpscript client", &err)?;
        eprintln!(
            "  run {}  tcpscript client  wall {:>7.3} s  user {:>6.3} s  sys {:>6.3} s",
            run + 1,
            t.wall,
            t.user,
            t.system
        );
        results.tcpscript.push(t);
        if let Some(python) = &context.python {
            let mut command = Command::new(python);
            command
                .arg(context.path("client.py"))
                .arg(&port)
                .arg(CLIENT_EXCHANGES.to_string());
            let p = run_measured(&mut command, "python client", &err)?;
            eprintln!(
                "  run {}  python loop       wall {:>7.3} s  user {:>6.3} s  sys {:>6.3} s",
                run + 1,
                p.wall,
                p.user,
                p.system
            );
            results.python.push(p);
        }
    }
    drop(server);
    eprintln!();
    Ok(results)
}

// ---------------------------------------------------------------------------
// Load mode

struct LoadResults {
    /// Per round: (tcpscript conversations/s, tokio loop conversations/s).
    rounds: Vec<(f64, f64)>,
    tcpscript_failed: u64,
    tokio_errors: u64,
    /// tcpscript's peak resident memory over the rounds, in KiB.
    peak_rss_kib: u64,
    /// The same at more users, one round each.
    scales: Vec<LoadScale>,
}

/// Load mode at many users, beside the tokio loop at as many tasks.
struct LoadScale {
    users: usize,
    ours: f64,
    reference: f64,
    tcpscript_failed: u64,
    tokio_errors: u64,
    /// tcpscript's peak resident memory, in KiB.
    peak_rss_kib: u64,
}

/// User counts measured after the 50-user rounds.
const LOAD_SCALES: [usize; 2] = [2_000, 10_000];

/// The reference: LOAD_USERS tasks, each connecting, sending one line,
/// reading the echo and closing, in a loop, for `time`.
fn tokio_connect_loop(
    context: &Context,
    addr: SocketAddr,
    time: Duration,
    users: usize,
) -> (u64, u64, f64) {
    context.runtime.block_on(async {
        let started = Instant::now();
        let deadline = started + time;
        let mut tasks = Vec::new();
        for _ in 0..users {
            tasks.push(tokio::spawn(async move {
                let (mut done, mut errors) = (0u64, 0u64);
                while Instant::now() < deadline {
                    let once = async {
                        let mut stream = tokio::net::TcpStream::connect(addr).await?;
                        stream.set_nodelay(true)?;
                        stream.write_all(b"ping\n").await?;
                        let mut reply = [0u8; 5];
                        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut reply).await?;
                        Ok::<_, std::io::Error>(reply == *b"ping\n")
                    };
                    match once.await {
                        Ok(true) => done += 1,
                        _ => errors += 1,
                    }
                }
                (done, errors)
            }));
        }
        let (mut done, mut errors) = (0, 0);
        for task in tasks {
            if let Ok((d, e)) = task.await {
                done += d;
                errors += e;
            }
        }
        (done, errors, started.elapsed().as_secs_f64())
    })
}

fn load_section(config: &Config, context: &Context) -> Result<LoadResults, String> {
    let rounds = if config.quick { 1 } else { 3 };
    let time = Duration::from_millis(if config.quick { 1000 } else { 2000 });
    eprintln!(
        "== load: {LOAD_USERS} users, one-exchange echo conversations against the floor server, {rounds} round(s) of {:.1} s, alternating",
        time.as_secs_f64()
    );
    let server = Server::start(Kind::Floor, context)?;
    let mut results = LoadResults {
        rounds: Vec::new(),
        tcpscript_failed: 0,
        tokio_errors: 0,
        peak_rss_kib: 0,
        scales: Vec::new(),
    };
    for round in 0..rounds {
        let mut command = Command::new(tcpscript());
        command
            .arg("client")
            .arg(context.path("load.rhai"))
            .args(["--connect", &server.addr.to_string(), "--json"])
            .args(["--concurrency", &LOAD_USERS.to_string()])
            .args(["--duration", &format!("{}ms", time.as_millis())]);
        let (stdout, peak_rss_kib) = run_watching_memory(command)?;
        results.peak_rss_kib = results.peak_rss_kib.max(peak_rss_kib);
        let summary: serde_json::Value = serde_json::from_slice(&stdout)
            .map_err(|e| format!("load mode printed no JSON summary: {e}"))?;
        let ours = summary["conversations_per_second"].as_f64().unwrap_or(0.0);
        results.tcpscript_failed += summary["failed"].as_u64().unwrap_or(0);
        let (done, errors, seconds) = tokio_connect_loop(context, server.addr, time, LOAD_USERS);
        results.tokio_errors += errors;
        let reference = done as f64 / seconds.max(1e-9);
        eprintln!(
            "  round {}  tcpscript {:>9}/s  tokio loop {:>9}/s  ratio {:.2}",
            round + 1,
            thousands(ours),
            thousands(reference),
            ours / reference.max(1e-9)
        );
        results.rounds.push((ours, reference));
    }
    // Past a few thousand users, what matters is what each one costs: one
    // longer round each, memory watched throughout.
    let time = Duration::from_millis(if config.quick { 2000 } else { 4000 });
    let usable = context.fd_limit.saturating_sub(256) as usize;
    for users in LOAD_SCALES {
        if users > usable {
            eprintln!(
                "  {users} users: skipped, the open-file limit is {}",
                context.fd_limit
            );
            continue;
        }
        let mut command = Command::new(tcpscript());
        command
            .arg("client")
            .arg(context.path("load.rhai"))
            .args(["--connect", &server.addr.to_string(), "--json", "-q"])
            .args(["--concurrency", &users.to_string()])
            .args(["--duration", &format!("{}ms", time.as_millis())]);
        let (stdout, peak_rss_kib) = run_watching_memory(command)?;
        let summary: serde_json::Value = serde_json::from_slice(&stdout)
            .map_err(|e| format!("load mode at {users} users printed no JSON summary: {e}"))?;
        let ours = summary["conversations_per_second"].as_f64().unwrap_or(0.0);
        let tcpscript_failed = summary["failed"].as_u64().unwrap_or(u64::MAX);
        let (done, tokio_errors, seconds) = tokio_connect_loop(context, server.addr, time, users);
        let reference = done as f64 / seconds.max(1e-9);
        eprintln!(
            "  {users} users  tcpscript {:>9}/s ({} failed, peak RSS {:.0} MiB)  tokio loop {:>9}/s  ratio {:.2}",
            thousands(ours),
            tcpscript_failed,
            peak_rss_kib as f64 / 1024.0,
            thousands(reference),
            ours / reference.max(1e-9)
        );
        results.scales.push(LoadScale {
            users,
            ours,
            reference,
            tcpscript_failed,
            tokio_errors,
            peak_rss_kib,
        });
    }
    drop(server);
    eprintln!();
    Ok(results)
}

/// Runs `command` to its end; its standard output and its peak resident
/// memory in KiB (VmHWM, read until it exits).
fn run_watching_memory(mut command: Command) -> Result<(Vec<u8>, u64), String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{}: {e}", tcpscript().display()))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut out);
        out
    });
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(status) = fs::read_to_string(&status_file)
            && let Some(kib) = status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        {
            peak = kib;
        }
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = reader.join().map_err(|_| "reading stdout failed")?;
    Ok((out, peak))
}

fn load_table(out: &mut String, load: &LoadResults, verdicts: &mut Vec<Verdict>) {
    let ours = median(load.rounds.iter().map(|r| r.0).collect());
    let reference = median(load.rounds.iter().map(|r| r.1).collect());
    let ratio = median(load.rounds.iter().map(|r| r.0 / r.1.max(1e-9)).collect());
    let _ = writeln!(
        out,
        "\n## load mode: {LOAD_USERS} users, one-exchange echo conversations (connect, send, receive, close), against the floor server (median of {} round(s))\n",
        load.rounds.len()
    );
    let _ = writeln!(
        out,
        "| client                                  | conversations/s | failures | peak RSS |"
    );
    let _ = writeln!(
        out,
        "|-----------------------------------------|----------------:|---------:|---------:|"
    );
    let _ = writeln!(
        out,
        "| tcpscript client --concurrency {LOAD_USERS:<8} | {:>15} | {:>8} | {:>4.0} MiB |",
        thousands(ours),
        load.tcpscript_failed,
        load.peak_rss_kib as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "| tokio connect/send/recv/close loop      | {:>15} | {:>8} |          |",
        thousands(reference),
        load.tokio_errors
    );
    verdicts.push(Verdict {
        row: 8,
        measured: format!(
            "{}/s vs {}/s = {:.2}x",
            thousands(ours),
            thousands(reference),
            ratio
        ),
        pass: ratio >= 0.5 && load.tcpscript_failed == 0,
    });
    if load.scales.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n### at more users (one round each; the 50-user figure is the median above)\n"
    );
    let _ = writeln!(
        out,
        "| users  | tcpscript conv/s | failures | peak RSS    | per user | tokio loop conv/s | tokio errors | ratio | vs 50 users |"
    );
    let _ = writeln!(
        out,
        "|-------:|-----------------:|---------:|------------:|---------:|------------------:|-------------:|------:|------------:|"
    );
    for scale in &load.scales {
        let _ = writeln!(
            out,
            "| {:>6} | {:>16} | {:>8} | {:>7.0} MiB | {:>5.0} KB | {:>17} | {:>12} | {:>5.2} | {:>10.2}x |",
            scale.users,
            thousands(scale.ours),
            scale.tcpscript_failed,
            scale.peak_rss_kib as f64 / 1024.0,
            scale.peak_rss_kib as f64 * 1.024 / scale.users as f64,
            thousands(scale.reference),
            scale.tokio_errors,
            scale.ours / scale.reference.max(1e-9),
            scale.ours / ours.max(1e-9)
        );
        match scale.users {
            2_000 => verdicts.push(Verdict {
                row: 12,
                measured: format!(
                    "{}/s vs {}/s at 50 = {:.2}x",
                    thousands(scale.ours),
                    thousands(ours),
                    scale.ours / ours.max(1e-9)
                ),
                pass: scale.ours >= 0.8 * ours && scale.tcpscript_failed == 0,
            }),
            10_000 => verdicts.push(Verdict {
                row: 13,
                measured: format!(
                    "{}/s, {} failed, peak RSS {:.0} MiB",
                    thousands(scale.ours),
                    scale.tcpscript_failed,
                    scale.peak_rss_kib as f64 / 1024.0
                ),
                pass: scale.tcpscript_failed == 0 && scale.peak_rss_kib < 1 << 20,
            }),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Idle connections

struct IdleResult {
    kind: Kind,
    target: usize,
    held: usize,
    live: usize,
    first_error: Option<String>,
    rss_before_kib: u64,
    rss_held_kib: u64,
    rss_after_check_kib: u64,
    hwm_kib: u64,
    connect_seconds: f64,
}

fn idle_section(config: &Config, context: &Context) -> Result<Vec<IdleResult>, String> {
    let kinds = config.kinds(context, &[Kind::Tcpscript, Kind::Floor, Kind::Python]);
    // Room for the connections plus stdio, the runtime and servers' pipes.
    let usable = context.fd_limit.saturating_sub(64) as usize;
    let target = IDLE_CONNECTIONS.min(usable);
    eprintln!("== idle: {IDLE_CONNECTIONS} connections held open, one message exchanged on each");
    if target < IDLE_CONNECTIONS {
        eprintln!(
            "  WARNING: this process's open-file limit is {} and could not be raised: only {target} connections will be opened",
            context.fd_limit
        );
    }
    let mut results = Vec::new();
    for kind in kinds {
        let server = Server::start(kind, context)?;
        let (rss_before_kib, _) = server.memory()?;
        let start = Instant::now();
        let (streams, errors) = context
            .runtime
            .block_on(connect_many(server.addr, target, true));
        let connect_seconds = start.elapsed().as_secs_f64();
        let held = streams.len();
        let (rss_held_kib, _) = server.memory()?;
        // Are they all still live? One more round trip on every one.
        let (streams, live, check_error) = context.runtime.block_on(async move {
            let mut set = JoinSet::new();
            for (i, mut stream) in streams.into_iter().enumerate() {
                set.spawn(async move {
                    let mut msg = *MESSAGE;
                    stamp(&mut msg, i as u64);
                    let ok = tokio::time::timeout(STALL_LIMIT, round_trip(&mut stream, &msg))
                        .await
                        .map_err(|_| "no reply within 10 s".to_string())
                        .and_then(|r| r);
                    (stream, ok)
                });
            }
            let mut live = 0;
            let mut first_error = None;
            let mut kept = Vec::with_capacity(held);
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok((stream, Ok(()))) => {
                        live += 1;
                        kept.push(stream);
                    }
                    Ok((stream, Err(e))) => {
                        first_error.get_or_insert(e);
                        kept.push(stream);
                    }
                    Err(e) => {
                        first_error.get_or_insert(format!("task: {e}"));
                    }
                }
            }
            (kept, live, first_error)
        });
        let (rss_after_check_kib, hwm_kib) = server.memory()?;
        // Close ours first so the server sees every peer leave, then stop it.
        context.runtime.block_on(async { drop(streams) });
        let stderr = server.stop();
        let first_error = errors.into_iter().next().or(check_error).or_else(|| {
            stderr
                .lines()
                .find(|l| !l.starts_with("shut down:") && !l.trim().is_empty())
                .map(str::to_string)
        });
        eprintln!(
            "  {:<15} held {held}/{target}, live {live}, RSS {} before, {} held, {} after the check (peak {}), connect {:.2} s",
            kind.name(),
            mib(rss_before_kib),
            mib(rss_held_kib),
            mib(rss_after_check_kib),
            mib(hwm_kib),
            connect_seconds
        );
        if let Some(e) = &first_error {
            eprintln!("      first error: {e}");
        }
        results.push(IdleResult {
            kind,
            target,
            held,
            live,
            first_error,
            rss_before_kib,
            rss_held_kib,
            rss_after_check_kib,
            hwm_kib,
            connect_seconds,
        });
    }
    eprintln!();
    Ok(results)
}

// ---------------------------------------------------------------------------
// Startup

struct CheckResult {
    script: PathBuf,
    runs: Vec<f64>,
}

fn check_section(config: &Config) -> Result<CheckResult, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reply.rhai");
    if !script.exists() {
        return Err(format!("{} is missing", script.display()));
    }
    eprintln!(
        "== check: `tcpscript check -q {}`, median of {} runs after 3 warm-up runs",
        script.display(),
        config.check_runs
    );
    let mut runs = Vec::new();
    for i in 0..config.check_runs + 3 {
        let start = Instant::now();
        let status = Command::new(tcpscript())
            .args(["check", "-q"])
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("tcpscript check: {e}"))?;
        let elapsed = start.elapsed().as_secs_f64();
        if !status.success() {
            return Err(format!(
                "tcpscript check {} failed: {status}",
                script.display()
            ));
        }
        if i >= 3 {
            runs.push(elapsed);
        }
    }
    let result = CheckResult { script, runs };
    eprintln!(
        "  median {:.1} ms, min {:.1} ms, max {:.1} ms\n",
        result.median_ms(),
        result.runs.iter().copied().fold(f64::INFINITY, f64::min) * 1e3,
        result.runs.iter().copied().fold(0.0, f64::max) * 1e3,
    );
    Ok(result)
}

impl CheckResult {
    fn median_ms(&self) -> f64 {
        median(self.runs.clone()) * 1e3
    }
}

// ---------------------------------------------------------------------------
// Report

struct Machine {
    cpu: String,
    cores: usize,
    kernel: String,
    commit: String,
}

impl Machine {
    fn read() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let commit = Command::new("git")
            .args([
                "-C",
                env!("CARGO_MANIFEST_DIR"),
                "describe",
                "--always",
                "--dirty",
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpu,
            cores,
            kernel,
            commit,
        }
    }

    fn line(&self) -> String {
        format!(
            "{}, {} cores, Linux {}, tcpscript {}",
            self.cpu, self.cores, self.kernel, self.commit
        )
    }
}

#[derive(Default)]
struct Report {
    echo: Option<EchoResults>,
    client: Option<ClientResults>,
    load: Option<LoadResults>,
    idle: Option<Vec<IdleResult>>,
    check: Option<CheckResult>,
    tls: Option<TlsResults>,
}

/// The targets, in the order of the final table: (figure, target).
const TARGETS: [(&str, &str); 14] = [
    ("echo round trips/s, 1 conn", ">= 0.95x floor, no errors"),
    ("echo round trips/s, 50 conns", ">= 0.95x floor, no errors"),
    ("echo round trips/s, 500 conns", ">= 0.95x floor, no errors"),
    ("server CPU per message, 50 conns", "<= 1.15x floor"),
    (
        "scripted client throughput, 20k exchanges",
        ">= 0.95x python loop",
    ),
    (
        "scripted client user CPU, 20k exchanges",
        "<= 0.6x python loop",
    ),
    (
        "10,000 idle connections (tcpscript)",
        "all held and live, RSS < 64 MiB",
    ),
    ("`tcpscript check` wall time", "under 20 ms"),
    (
        "load mode, 50 users, one-exchange echo",
        ">= 0.5x tokio connect loop",
    ),
    (
        "TLS echo round trips/s, 50 conns",
        ">= 0.9x tokio-rustls floor, no errors",
    ),
    ("TLS server CPU per message, 50 conns", "<= 1.2x floor"),
    (
        "TLS load mode, 50 users, connect+handshake+exchange+close",
        ">= 0.8x tokio-rustls loop",
    ),
    (
        "load mode, 2,000 users, one-exchange echo",
        ">= 0.8x tcpscript's own 50-user figure",
    ),
    (
        "load mode, 10,000 users, one-exchange echo",
        "all running, no failures, RSS < 1 GiB",
    ),
];

/// A measured row of the targets table.
struct Verdict {
    /// Index into `TARGETS`.
    row: usize,
    measured: String,
    pass: bool,
}

impl Report {
    fn print(&self, config: &Config, machine: &Machine, context: &Context, elapsed: Duration) {
        let mut out = String::new();
        let _ = writeln!(out, "# tcpscript benchmark results\n");
        let _ = writeln!(out, "machine:   {}", machine.line());
        let _ = writeln!(out, "binary:    {}", tcpscript().display());
        let _ = writeln!(
            out,
            "run:       {}{}, {:.0} s",
            config.reproduce(),
            if config.quick { " (quick)" } else { "" },
            elapsed.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "note:      the load generator runs in this process on the same {} cores as the server under test, the same for every server",
            machine.cores
        );
        let mut verdicts = Vec::new();
        if let Some(echo) = &self.echo {
            echo_table(&mut out, echo, config, &mut verdicts);
        }
        if let Some(client) = &self.client {
            client_table(&mut out, client, &mut verdicts);
        }
        if let Some(load) = &self.load {
            load_table(&mut out, load, &mut verdicts);
        }
        if let Some(idle) = &self.idle {
            idle_table(&mut out, idle, context, &mut verdicts);
        }
        if let Some(tls) = &self.tls {
            tls_table(&mut out, tls, config, &mut verdicts);
        }
        if let Some(check) = &self.check {
            let median = check.median_ms();
            let _ = writeln!(
                out,
                "\n## startup: `tcpscript check -q {}`\n\nmedian {:.1} ms over {} runs (min {:.1} ms)",
                check.script.display(),
                median,
                check.runs.len(),
                check.runs.iter().copied().fold(f64::INFINITY, f64::min) * 1e3
            );
            verdicts.push(Verdict {
                row: 7,
                measured: format!("{median:.1} ms (median of {})", check.runs.len()),
                pass: median < 20.0,
            });
        }

        let _ = writeln!(out, "\n## targets\n");
        let rows: Vec<(&str, String, &str, &str)> = TARGETS
            .iter()
            .enumerate()
            .map(
                |(i, (figure, target))| match verdicts.iter().find(|v| v.row == i) {
                    Some(v) => (
                        *figure,
                        v.measured.clone(),
                        *target,
                        if v.pass { "PASS" } else { "FAIL" },
                    ),
                    None => (*figure, "not measured in this run".into(), *target, "-"),
                },
            )
            .collect();
        let width = |f: fn(&(&str, String, &str, &str)) -> usize, min: usize| {
            rows.iter().map(f).max().unwrap_or(min).max(min)
        };
        let fig_w = width(|r| r.0.chars().count(), 6);
        let meas_w = width(|r| r.1.chars().count(), 8);
        let tgt_w = width(|r| r.2.chars().count(), 6);
        let _ = writeln!(
            out,
            "| {:<fig_w$} | {:<meas_w$} | {:<tgt_w$} | result |",
            "figure", "measured", "target"
        );
        let _ = writeln!(
            out,
            "|{}|{}|{}|--------|",
            "-".repeat(fig_w + 2),
            "-".repeat(meas_w + 2),
            "-".repeat(tgt_w + 2)
        );
        for (figure, measured, target, result) in &rows {
            let _ = writeln!(
                out,
                "| {figure:<fig_w$} | {measured:<meas_w$} | {target:<tgt_w$} | {result:<6} |"
            );
        }
        let passed = verdicts.iter().filter(|v| v.pass).count();
        let failed = verdicts.len() - passed;
        let _ = writeln!(
            out,
            "\n{passed} PASS, {failed} FAIL, {} not measured",
            TARGETS.len() - verdicts.len()
        );
        let skipped: Vec<&str> = Section::ALL
            .into_iter()
            .filter(|s| !config.sections.contains(s))
            .map(Section::name)
            .collect();
        if !skipped.is_empty() {
            let _ = writeln!(out, "not run: {}", skipped.join(", "));
        }
        let _ = writeln!(out, "reproduce: {}", config.reproduce());
        print!("{out}");
    }
}

fn echo_table(out: &mut String, echo: &EchoResults, config: &Config, verdicts: &mut Vec<Verdict>) {
    let _ = writeln!(
        out,
        "\n## echo server ping-pong (32-byte lines, {} round(s) x {} s per server and connection count, alternating)\n",
        config.echo_rounds,
        config.echo_time.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| conns | server         | round trips/s | vs floor | p50 us  | p99 us   | errors | server CPU us/msg | vs floor | load gen CPU us/msg |"
    );
    let _ = writeln!(
        out,
        "|------:|----------------|--------------:|---------:|--------:|---------:|-------:|------------------:|---------:|--------------------:|"
    );
    for (n, runs) in &echo.rows {
        for (kind, run) in runs {
            let (rate_ratio, cpu_ratio) = echo.ratio(*n, *kind);
            let _ = writeln!(
                out,
                "| {n:>5} | {:<14} | {:>13} | {:>8} | {:>7.1} | {:>8.1} | {:>6} | {:>17.2} | {:>8} | {:>19.2} |",
                kind.name(),
                thousands(run.per_second()),
                times(rate_ratio),
                run.p50_us(),
                run.p99_us(),
                run.errors,
                run.cpu_per_message_us(),
                times(cpu_ratio),
                run.loadgen_cpu_per_message_us(),
            );
        }
    }
    let _ = writeln!(
        out,
        "\nround trips/s, latency, errors and CPU are totals over the rounds; \"vs floor\" is the median over the rounds of the ratio to the floor's run in the same round."
    );
    let errors: Vec<String> = echo
        .rows
        .iter()
        .flat_map(|(n, runs)| {
            runs.iter().filter_map(move |(k, r)| {
                r.first_error
                    .as_ref()
                    .map(|e| format!("{} at {n} conns: {e}", k.name()))
            })
        })
        .collect();
    for e in errors {
        let _ = writeln!(out, "first error, {e}");
    }
    let mut spreads = String::new();
    for (n, _) in &echo.rows {
        for &kind in &echo.kinds {
            if let Some((rate, cpu)) = echo.ratios(*n, kind) {
                let _ = writeln!(
                    spreads,
                    "  {n:>3} conns, {:<14}: round trips/s {}, server CPU/msg {}",
                    kind.name(),
                    spread(&rate),
                    spread(&cpu),
                );
            }
        }
    }
    if !spreads.is_empty() {
        let _ = writeln!(
            out,
            "ratios to the floor, lowest..highest round (the spread is the machine's noise):\n{spreads}"
        );
    }
    if config.servers.contains(&Kind::Python) && !echo.kinds.contains(&Kind::Python) {
        let _ = writeln!(out, "(python3 not found: no Python row)");
    }
    for (row, n) in CONNECTIONS.into_iter().enumerate() {
        if let Some(t) = echo.get(n, Kind::Tcpscript) {
            let (ratio, _) = echo.ratio(n, Kind::Tcpscript);
            if ratio.is_nan() {
                continue;
            }
            verdicts.push(Verdict {
                row,
                measured: format!(
                    "{}/s, {:.2}x floor, {} errors",
                    thousands(t.per_second()),
                    ratio,
                    t.errors
                ),
                pass: ratio >= 0.95 && t.errors == 0,
            });
        }
    }
    if let (Some(t), Some(f)) = (echo.get(50, Kind::Tcpscript), echo.get(50, Kind::Floor)) {
        let (_, ratio) = echo.ratio(50, Kind::Tcpscript);
        verdicts.push(Verdict {
            row: 3,
            measured: format!(
                "{:.2} us vs {:.2} us, {:.2}x floor",
                t.cpu_per_message_us(),
                f.cpu_per_message_us(),
                ratio
            ),
            pass: ratio <= 1.15,
        });
    }
}

fn client_table(out: &mut String, client: &ClientResults, verdicts: &mut Vec<Verdict>) {
    let n = client.exchanges as f64;
    let _ = writeln!(
        out,
        "\n## scripted client: {} send/recv/assert_eq exchanges against the floor server (median of {} run(s), whole process incl. startup)\n",
        client.exchanges,
        client.tcpscript.len()
    );
    let _ = writeln!(
        out,
        "| client              | wall s  | exchanges/s | user CPU s | sys CPU s |"
    );
    let _ = writeln!(
        out,
        "|---------------------|--------:|------------:|-----------:|----------:|"
    );
    let t_wall = ClientResults::wall(&client.tcpscript);
    let t_user = ClientResults::user(&client.tcpscript);
    let _ = writeln!(
        out,
        "| tcpscript client    | {:>7.3} | {:>11} | {:>10.3} | {:>9.3} |",
        t_wall,
        thousands(n / t_wall),
        t_user,
        ClientResults::system(&client.tcpscript)
    );
    if client.python.is_empty() {
        let _ = writeln!(out, "(python3 not found: no comparison)");
        return;
    }
    let p_wall = ClientResults::wall(&client.python);
    let p_user = ClientResults::user(&client.python);
    let _ = writeln!(
        out,
        "| python socket loop  | {:>7.3} | {:>11} | {:>10.3} | {:>9.3} |",
        p_wall,
        thousands(n / p_wall),
        p_user,
        ClientResults::system(&client.python)
    );
    let throughput = p_wall / t_wall;
    let cpu = t_user / p_user.max(1e-9);
    verdicts.push(Verdict {
        row: 4,
        measured: format!(
            "{}/s vs {}/s = {:.2}x python",
            thousands(n / t_wall),
            thousands(n / p_wall),
            throughput
        ),
        pass: throughput >= 0.95,
    });
    verdicts.push(Verdict {
        row: 5,
        measured: format!("{t_user:.3} s vs {p_user:.3} s = {cpu:.2}x python"),
        pass: cpu <= 0.6,
    });
}

fn idle_table(
    out: &mut String,
    idle: &[IdleResult],
    context: &Context,
    verdicts: &mut Vec<Verdict>,
) {
    let _ = writeln!(
        out,
        "\n## {IDLE_CONNECTIONS} idle connections, one message exchanged on each (RSS = VmRSS of the server)\n"
    );
    let _ = writeln!(
        out,
        "| server         | held        | live   | RSS before | RSS held  | RSS after check | peak (VmHWM) | per conn   | connect s |"
    );
    let _ = writeln!(
        out,
        "|----------------|-------------|-------:|-----------:|----------:|----------------:|-------------:|-----------:|----------:|"
    );
    for r in idle {
        let per_conn = (r.rss_held_kib.max(r.rss_after_check_kib) as f64 - r.rss_before_kib as f64)
            * 1024.0
            / (r.held.max(1) as f64);
        let _ = writeln!(
            out,
            "| {:<14} | {:>5}/{:<5} | {:>6} | {:>10} | {:>9} | {:>15} | {:>12} | {:>6.2} KiB | {:>9.2} |",
            r.kind.name(),
            r.held,
            r.target,
            r.live,
            mib(r.rss_before_kib),
            mib(r.rss_held_kib),
            mib(r.rss_after_check_kib),
            mib(r.hwm_kib),
            per_conn / 1024.0,
            r.connect_seconds,
        );
        if let Some(e) = &r.first_error {
            let _ = writeln!(out, "first error, {}: {e}", r.kind.name());
        }
    }
    if let Some(t) = idle.iter().find(|r| r.kind == Kind::Tcpscript) {
        let rss = t.rss_held_kib.max(t.rss_after_check_kib);
        let all = t.held == IDLE_CONNECTIONS && t.live == IDLE_CONNECTIONS;
        let mut measured = format!(
            "{}/{} held, {} live, {}",
            t.held,
            IDLE_CONNECTIONS,
            t.live,
            mib(rss)
        );
        if t.target < IDLE_CONNECTIONS {
            let _ = write!(measured, " (fd limit {} too low)", context.fd_limit);
        }
        verdicts.push(Verdict {
            row: 6,
            measured,
            pass: all && rss < 64 * 1024,
        });
    }
}

// ---------------------------------------------------------------------------
// Helpers

/// Raises this process's open-file limit to at least `want` if it can (to
/// the hard limit, and past it when privileged). Returns the soft limit.
fn raise_fd_limit(want: u64) -> u64 {
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

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `0.93x`, or `-` when there is nothing to compare with.
fn times(ratio: f64) -> String {
    if ratio.is_finite() {
        format!("{ratio:.2}x")
    } else {
        "-".into()
    }
}

/// `0.81x..0.93x`: the smallest and largest of some ratios.
fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.2}x..{max:.2}x")
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// ---------------------------------------------------------------------------
// TLS: echo and load mode over rustls (ring), against a tokio-rustls floor

/// The floor's self-signed certificate and key, in the temp dir.
const FLOOR_CERT: &str = "floor_cert.pem";
const FLOOR_KEY: &str = "floor_key.pem";
/// Where `tcpscript server --tls` writes its throwaway CA.
const TCPSCRIPT_CA: &str = "ca.pem";

/// The TLS floor: the floor's line echo behind a tokio-rustls acceptor.
fn floor_tls_server(cert: &Path, key: &Path) {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    raise_fd_limit(u64::MAX);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("certificate file")
        .collect::<Result<_, _>>()
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_file(key).expect("key PEM");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind");
        let listener = socket.listen(4096).expect("listen");
        eprintln!("listening on {}", listener.local_addr().expect("addr"));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let mut stream = tokio::io::BufReader::new(stream);
                let mut line = String::new();
                loop {
                    line.clear();
                    match tokio::io::AsyncBufReadExt::read_line(&mut stream, &mut line).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let inner = stream.get_mut();
                            if inner.write_all(line.as_bytes()).await.is_err()
                                || inner.flush().await.is_err()
                            {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
}

/// A self-signed certificate for the floor, for `localhost` and 127.0.0.1
/// (the name load mode verifies when connecting to 127.0.0.1).
fn write_floor_identity(context: &Context) -> Result<(), String> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .map_err(|e| format!("rcgen: {e}"))?;
    fs::write(context.path(FLOOR_CERT), made.cert.pem()).map_err(|e| e.to_string())?;
    fs::write(context.path(FLOOR_KEY), made.signing_key.serialize_pem())
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// A connector trusting the certificates in `pem` (a CA, or the floor's
/// self-signed certificate), sharing one ClientConfig (and its session cache).
fn tls_connector(pem: &Path) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pem).map_err(|e| format!("{}: {e}", pem.display()))? {
        let cert = cert.map_err(|e| format!("{}: {e}", pem.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", pem.display()))?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

type TlsClientStream = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect_tls(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> std::io::Result<TlsClientStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
    connector.connect(name, stream).await
}

/// Opens `n` TLS connections at once, each handshaken.
async fn connect_many_tls(
    addr: SocketAddr,
    n: usize,
    connector: tokio_rustls::TlsConnector,
) -> (Vec<TlsClientStream>, Vec<String>) {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let connector = connector.clone();
        set.spawn(async move {
            tokio::time::timeout(STALL_LIMIT, connect_tls(addr, &connector))
                .await
                .map_err(|_| "TLS connect timed out".to_string())?
                .map_err(|e| format!("TLS connect: {e}"))
        });
    }
    let mut streams = Vec::with_capacity(n);
    let mut errors = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(stream)) => streams.push(stream),
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("task: {e}")),
        }
    }
    (streams, errors)
}

/// The TLS reference for load mode: LOAD_USERS tasks, each connecting,
/// handshaking, sending one line, reading the echo and closing (close_notify
/// and FIN), in a loop, for `time`.
fn tokio_rustls_connect_loop(
    context: &Context,
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    time: Duration,
) -> (u64, u64, f64) {
    context.runtime.block_on(async {
        let started = Instant::now();
        let deadline = started + time;
        let mut tasks = Vec::new();
        for _ in 0..LOAD_USERS {
            let connector = connector.clone();
            tasks.push(tokio::spawn(async move {
                let (mut done, mut errors) = (0u64, 0u64);
                while Instant::now() < deadline {
                    let once = async {
                        let mut stream = connect_tls(addr, &connector).await?;
                        stream.write_all(b"ping\n").await?;
                        stream.flush().await?;
                        let mut reply = [0u8; 5];
                        stream.read_exact(&mut reply).await?;
                        let _ = stream.shutdown().await;
                        Ok::<_, std::io::Error>(reply == *b"ping\n")
                    };
                    match once.await {
                        Ok(true) => done += 1,
                        _ => errors += 1,
                    }
                }
                (done, errors)
            }));
        }
        let (mut done, mut errors) = (0, 0);
        for task in tasks {
            if let Ok((d, e)) = task.await {
                done += d;
                errors += e;
            }
        }
        (done, errors, started.elapsed().as_secs_f64())
    })
}

struct TlsResults {
    /// Totals over the rounds of the echo runs.
    floor: EchoRun,
    ours: EchoRun,
    /// Per round: tcpscript's (round trips/s, CPU per message) over the floor's.
    echo_ratios: Vec<(f64, f64)>,
    /// Per round: (tcpscript load mode conversations/s, tokio-rustls loop's).
    load_rounds: Vec<(f64, f64)>,
    load_failed: u64,
    loop_errors: u64,
}

fn tls_section(config: &Config, context: &Context) -> Result<TlsResults, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    write_floor_identity(context)?;
    eprintln!(
        "== tls: ping-pong of 32-byte lines over {TLS_CONNECTIONS} TLS connections, {} s measured per run after {} ms warm-up, {} round(s), servers alternating",
        config.echo_time.as_secs_f64(),
        config.echo_warmup.as_millis(),
        config.echo_rounds
    );
    let servers = [
        Server::start(Kind::FloorTls, context)?,
        Server::start(Kind::TcpscriptTls, context)?,
    ];
    eprintln!(
        "  pids: {} {}, {} {}",
        servers[0].kind.name(),
        servers[0].pid(),
        servers[1].kind.name(),
        servers[1].pid()
    );
    let connectors = [
        tls_connector(&context.path(FLOOR_CERT))?,
        tls_connector(&context.path(TCPSCRIPT_CA))?,
    ];
    let mut results = TlsResults {
        floor: EchoRun::empty(),
        ours: EchoRun::empty(),
        echo_ratios: Vec::new(),
        load_rounds: Vec::new(),
        load_failed: 0,
        loop_errors: 0,
    };
    for round in 0..config.echo_rounds {
        let mut this_round: [Option<EchoRun>; 2] = [None, None];
        for i in 0..servers.len() {
            let index = (i + round) % servers.len();
            let server = &servers[index];
            let (streams, errors) = context.runtime.block_on(connect_many_tls(
                server.addr,
                TLS_CONNECTIONS,
                connectors[index].clone(),
            ));
            let run = measure_echo(
                context,
                server,
                streams,
                errors,
                config.echo_warmup,
                config.echo_time,
            )?;
            eprintln!(
                "  {TLS_CONNECTIONS:>3} conn  round {}  {:<20} {:>9} rt/s  p50 {:>8.1} us  p99 {:>8.1} us  server cpu {:>6.2} us/msg  load gen {:>6.2} us/msg  errors {}",
                round + 1,
                server.kind.name(),
                thousands(run.per_second()),
                run.p50_us(),
                run.p99_us(),
                run.cpu_per_message_us(),
                run.loadgen_cpu_per_message_us(),
                run.errors,
            );
            if let Some(e) = &run.first_error {
                eprintln!("      first error: {e}");
            }
            this_round[index] = Some(run);
        }
        let [Some(floor), Some(ours)] = this_round else {
            unreachable!("both servers ran");
        };
        results.echo_ratios.push((
            ours.per_second() / floor.per_second().max(1e-9),
            ours.cpu_per_message_us() / floor.cpu_per_message_us().max(1e-9),
        ));
        results.floor.add(&floor);
        results.ours.add(&ours);
    }
    let [floor, ours] = servers;
    let stderr = ours.stop();
    let noted = stderr
        .lines()
        .filter(|l| !l.starts_with("tls fingerprint") && !l.trim().is_empty())
        .filter(|l| !l.starts_with("shut down:") || !l.ends_with(" 0 errors"))
        .collect::<Vec<_>>();
    if !noted.is_empty() {
        eprintln!(
            "  {} said on stderr: {}",
            Kind::TcpscriptTls.name(),
            noted.join(" | ")
        );
    }

    let rounds = if config.quick { 1 } else { 3 };
    let time = Duration::from_millis(if config.quick { 1000 } else { 2000 });
    eprintln!(
        "== tls load: {LOAD_USERS} users, one-exchange echo conversations over TLS against the TLS floor, {rounds} round(s) of {:.1} s, alternating",
        time.as_secs_f64()
    );
    for round in 0..rounds {
        let output = Command::new(tcpscript())
            .arg("client")
            .arg(context.path("load.rhai"))
            .args(["--connect", &floor.addr.to_string(), "--json", "--tls"])
            .arg("--tls-ca")
            .arg(context.path(FLOOR_CERT))
            .args(["--concurrency", &LOAD_USERS.to_string()])
            .args(["--duration", &format!("{}ms", time.as_millis())])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("tcpscript client --tls --concurrency: {e}"))?;
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| format!("TLS load mode printed no JSON summary: {e}"))?;
        let ours = summary["conversations_per_second"].as_f64().unwrap_or(0.0);
        results.load_failed += summary["failed"].as_u64().unwrap_or(0);
        let (done, errors, seconds) =
            tokio_rustls_connect_loop(context, floor.addr, &connectors[0], time);
        results.loop_errors += errors;
        let reference = done as f64 / seconds.max(1e-9);
        eprintln!(
            "  round {}  tcpscript --tls {:>9}/s  tokio-rustls loop {:>9}/s  ratio {:.2}",
            round + 1,
            thousands(ours),
            thousands(reference),
            ours / reference.max(1e-9)
        );
        results.load_rounds.push((ours, reference));
    }
    drop(floor);
    eprintln!();
    Ok(results)
}

fn tls_table(out: &mut String, tls: &TlsResults, config: &Config, verdicts: &mut Vec<Verdict>) {
    let rate_ratio = median(tls.echo_ratios.iter().map(|r| r.0).collect());
    let cpu_ratio = median(tls.echo_ratios.iter().map(|r| r.1).collect());
    let _ = writeln!(
        out,
        "\n## TLS echo ping-pong ({TLS_CONNECTIONS} connections, 32-byte lines, rustls with ring on both sides, {} round(s) x {} s per server, alternating)\n",
        tls.echo_ratios.len(),
        config.echo_time.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| server               | round trips/s | vs floor | p50 us  | p99 us   | errors | server CPU us/msg | vs floor | load gen CPU us/msg |"
    );
    let _ = writeln!(
        out,
        "|----------------------|--------------:|---------:|--------:|---------:|-------:|------------------:|---------:|--------------------:|"
    );
    for (kind, run, rate, cpu) in [
        (Kind::FloorTls, &tls.floor, 1.0, 1.0),
        (Kind::TcpscriptTls, &tls.ours, rate_ratio, cpu_ratio),
    ] {
        let _ = writeln!(
            out,
            "| {:<20} | {:>13} | {:>8} | {:>7.1} | {:>8.1} | {:>6} | {:>17.2} | {:>8} | {:>19.2} |",
            kind.name(),
            thousands(run.per_second()),
            times(rate),
            run.p50_us(),
            run.p99_us(),
            run.errors,
            run.cpu_per_message_us(),
            times(cpu),
            run.loadgen_cpu_per_message_us(),
        );
    }
    for (kind, run) in [
        (Kind::FloorTls, &tls.floor),
        (Kind::TcpscriptTls, &tls.ours),
    ] {
        if let Some(e) = &run.first_error {
            let _ = writeln!(out, "first error, {}: {e}", kind.name());
        }
    }
    if !tls.echo_ratios.is_empty() {
        let _ = writeln!(
            out,
            "\n\"vs floor\" is the median over the rounds; lowest..highest round: round trips/s {}, server CPU/msg {}",
            spread(&tls.echo_ratios.iter().map(|r| r.0).collect::<Vec<_>>()),
            spread(&tls.echo_ratios.iter().map(|r| r.1).collect::<Vec<_>>()),
        );
        verdicts.push(Verdict {
            row: 9,
            measured: format!(
                "{}/s vs {}/s, {:.2}x floor, {} errors",
                thousands(tls.ours.per_second()),
                thousands(tls.floor.per_second()),
                rate_ratio,
                tls.ours.errors
            ),
            pass: rate_ratio >= 0.9 && tls.ours.errors == 0,
        });
        verdicts.push(Verdict {
            row: 10,
            measured: format!(
                "{:.2} us vs {:.2} us, {:.2}x floor",
                tls.ours.cpu_per_message_us(),
                tls.floor.cpu_per_message_us(),
                cpu_ratio
            ),
            pass: cpu_ratio <= 1.2,
        });
    }

    if tls.load_rounds.is_empty() {
        return;
    }
    let ours = median(tls.load_rounds.iter().map(|r| r.0).collect());
    let reference = median(tls.load_rounds.iter().map(|r| r.1).collect());
    let ratio = median(
        tls.load_rounds
            .iter()
            .map(|r| r.0 / r.1.max(1e-9))
            .collect(),
    );
    let _ = writeln!(
        out,
        "\n## TLS load mode: {LOAD_USERS} users, one-exchange echo conversations (connect, handshake, send, receive, close), against the TLS floor (median of {} round(s))\n",
        tls.load_rounds.len()
    );
    let _ = writeln!(out, "| {:<46} | conversations/s | failures |", "client");
    let _ = writeln!(out, "|{}|----------------:|---------:|", "-".repeat(48));
    let _ = writeln!(
        out,
        "| {:<46} | {:>15} | {:>8} |",
        format!("tcpscript client --tls --concurrency {LOAD_USERS}"),
        thousands(ours),
        tls.load_failed
    );
    let _ = writeln!(
        out,
        "| {:<46} | {:>15} | {:>8} |",
        "tokio-rustls connect/handshake/echo/close loop",
        thousands(reference),
        tls.loop_errors
    );
    verdicts.push(Verdict {
        row: 11,
        measured: format!(
            "{}/s vs {}/s = {:.2}x",
            thousands(ours),
            thousands(reference),
            ratio
        ),
        pass: ratio >= 0.8 && tls.load_failed == 0,
    });
}
