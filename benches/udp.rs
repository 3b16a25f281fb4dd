//! `cargo bench --bench udp`: `tcpscript server --udp` against a bare tokio
//! `UdpSocket` echo (the floor: this binary re-executed with
//! `--floor-udp-server`, one task receiving and sending back), measured
//! in the same run:
//!
//! - request/reply at 1 and 50 peers: each peer a connected socket in the
//!   bench's own runtime (2 workers), sending 32 bytes and waiting for them
//!   back; servers take turns in 1 s rounds. Datagrams answered per second,
//!   the server's CPU per datagram (utime+stime from `/proc/PID/stat`), and
//!   both as a ratio to the floor's in the same round (median over rounds).
//! - RSS (`VmRSS`) of the server holding 10,000 live sessions, each of
//!   which exchanged one datagram, against its RSS before any.
//!
//! ```text
//! peers  server     answered/s  vs floor   CPU/datagram  vs floor
//! ```
//!
//! Options: `--rounds N` (default 10: a rate turns on where the kernel
//! places the peers, the server and its threads, and a placement can hold
//! for several rounds, so a median of 5 could land on one bad spell),
//! `--quick` (4 rounds of 0.5 s), `--pin one` (all on
//! CPU 0) or `--pin apart` (the servers on CPU 1, the bench on CPU 0), so
//! that both servers meet the same placement, `--only 1|50` (that row
//! alone, and no RSS), `--each` (every round under its row).
//! Run by hand, not by CI; the figures are as noisy as the machine.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::net::UdpSocket;

use pin::Pin;

#[path = "support/pin.rs"]
mod pin;

const FLOOR_ARG: &str = "--floor-udp-server";
const MESSAGE: &[u8; 32] = b"00000000000000000000 ping-pong!\n";
const PEERS: [usize; 2] = [1, 50];
const SESSIONS: usize = 10_000;
/// A reply not back in this long is counted lost, and the peer goes on.
const LOST_AFTER: Duration = Duration::from_millis(200);
/// `--pin`, for the servers the bench starts.
static PIN: std::sync::OnceLock<Pin> = std::sync::OnceLock::new();

#[derive(Debug, Parser)]
struct Args {
    /// Run as the floor server (internal)
    #[arg(long = "floor-udp-server", hide = true)]
    floor: bool,
    /// Fewer and shorter rounds
    #[arg(long)]
    quick: bool,
    /// Rounds per row [default: 10, 4 with --quick]
    #[arg(long)]
    rounds: Option<usize>,
    /// Only this row (`1` or `50` peers), and no RSS
    #[arg(long, value_parser = ["1", "50"])]
    only: Option<String>,
    /// Print each round's figures under its row
    #[arg(long)]
    each: bool,
    /// Pin to CPUs: `one` runs everything on CPU 0, `apart` the servers on
    /// CPU 1 and the peers on CPU 0 [default: the kernel places]
    #[arg(long, value_parser = Pin::parse)]
    pin: Option<Pin>,
    /// Passed by `cargo bench`
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    if args.floor {
        return floor_server();
    }
    if let Some(pin) = args.pin {
        if let Err(e) = pin.bench() {
            eprintln!("udp bench: cannot pin to CPU 0: {e}");
            std::process::exit(1);
        }
        let _ = PIN.set(pin);
    }
    let rounds = args.rounds.unwrap_or(if args.quick { 4 } else { 10 });
    let window = if args.quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(1)
    };
    let only = args.only.and_then(|only| only.parse().ok());
    if let Err(e) = run(rounds, window, only, args.each) {
        eprintln!("udp bench: {e}");
        std::process::exit(1);
    }
}

fn run(rounds: usize, window: Duration, only: Option<usize>, each: bool) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let echo = dir.path().join("echo.rhai");
    std::fs::write(&echo, "fn on_message(msg) { msg }\n").map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    println!(
        "udp request/reply, {rounds} rounds of {window:?} per server and peer count{}",
        PIN.get()
            .map_or(String::new(), |pin| format!("; pinned {pin:?}")
                .to_lowercase())
    );
    println!("peers  server     answered/s  vs floor (spread)      CPU/datagram  vs floor  lost");
    let floor = Server::start(Kind::Floor, &echo)?;
    let tcpscript = Server::start(Kind::Tcpscript, &echo)?;
    for peers in PEERS
        .into_iter()
        .filter(|p| only.is_none_or(|only| only == *p))
    {
        let mut rates = Vec::new();
        let mut cpus = Vec::new();
        let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            // The order alternates, so neither always runs on a warmer machine.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            let mut this_round = [Run::default(), Run::default()];
            for i in order {
                let server = [&floor, &tcpscript][i];
                this_round[i] = runtime.block_on(measure(server, peers, window))?;
            }
            rates.push(this_round[1].rate() / this_round[0].rate());
            cpus.push(this_round[1].cpu_per_datagram() / this_round[0].cpu_per_datagram());
            for (i, run) in this_round.into_iter().enumerate() {
                runs[i].push(run);
            }
        }
        for (i, name) in ["floor", "tcpscript"].into_iter().enumerate() {
            let rate = median(runs[i].iter().map(Run::rate).collect());
            let cpu = median(runs[i].iter().map(Run::cpu_per_datagram).collect());
            let lost: u64 = runs[i].iter().map(|r| r.lost).sum();
            let (vs_rate, vs_cpu) = if i == 0 {
                ("-".to_string(), "-".to_string())
            } else {
                (
                    format!(
                        "{:.2}x ({:.2}x..{:.2}x)",
                        median(rates.clone()),
                        min(&rates),
                        max(&rates)
                    ),
                    format!("{:.2}x", median(cpus.clone())),
                )
            };
            println!(
                "{peers:>5}  {name:<9} {rate:>11.0}  {vs_rate:<21} {:>9.2} µs  {vs_cpu:>8}  {lost}",
                cpu * 1e6
            );
        }
        if each {
            for (r, (rate, cpu)) in rates.iter().zip(&cpus).enumerate() {
                println!(
                    "  round {:<3} {:>11.0} {:>11.0}  {rate:.2}x  CPU {cpu:.2}x",
                    r + 1,
                    runs[0][r].rate(),
                    runs[1][r].rate(),
                );
            }
        }
    }
    println!("targets: answered/s >= 0.90x the floor, CPU per datagram <= 1.20x");
    drop(tcpscript);
    drop(floor);
    if only.is_some() {
        return Ok(());
    }

    let server = Server::start_with(Kind::Tcpscript, &echo, &["--idle-timeout", "10m"])?;
    let before_kib = rss_kib(server.pid())?;
    let opened = raise_fd_limit(SESSIONS as u64 + 1024);
    if opened < SESSIONS as u64 + 256 {
        return Err(format!(
            "the open-file limit is {opened}: {SESSIONS} sockets cannot be opened (raise `ulimit -n`)"
        ));
    }
    let sockets = runtime.block_on(open_sessions(server.addr, SESSIONS))?;
    let after_kib = rss_kib(server.pid())?;
    // Every session still answers: they are live, not evicted or expired.
    let answered = runtime.block_on(exchange_all(&sockets))?;
    println!(
        "RSS with {SESSIONS} live sessions: {:.1} MiB (before any: {:.1} MiB; {:.0} bytes a session); \
         {answered} of {SESSIONS} answered again; target < 64 MiB",
        after_kib as f64 / 1024.0,
        before_kib as f64 / 1024.0,
        (after_kib.saturating_sub(before_kib) * 1024) as f64 / SESSIONS as f64,
    );
    Ok(())
}

#[derive(Debug, Default)]
struct Run {
    answered: u64,
    lost: u64,
    seconds: f64,
    /// The server's CPU seconds over the window.
    cpu: f64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.answered as f64 / self.seconds
    }

    fn cpu_per_datagram(&self) -> f64 {
        self.cpu / self.answered.max(1) as f64
    }
}

/// `peers` sockets ping-pong with `server` for a short warm-up, then for
/// `window`, counted.
async fn measure(server: &Server, peers: usize, window: Duration) -> Result<Run, String> {
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..peers {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        socket
            .connect(server.addr)
            .await
            .map_err(|e| e.to_string())?;
        let (counting, stop, answered, lost) = (
            counting.clone(),
            stop.clone(),
            answered.clone(),
            lost.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if socket.send(MESSAGE).await.is_err() {
                    break;
                }
                match tokio::time::timeout(LOST_AFTER, socket.recv(&mut buf)).await {
                    Ok(Ok(_)) if counting.load(Ordering::Relaxed) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu_before = proc_cpu(server.pid())?;
    let started = Instant::now();
    counting.store(true, Ordering::Relaxed);
    tokio::time::sleep(window).await;
    counting.store(false, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    let cpu = proc_cpu(server.pid())? - cpu_before;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    Ok(Run {
        answered: answered.load(Ordering::Relaxed),
        lost: lost.load(Ordering::Relaxed),
        seconds,
        cpu,
    })
}

/// `n` sockets, each of which has exchanged one datagram with `addr`: a
/// session each on the server.
async fn open_sessions(addr: SocketAddr, n: usize) -> Result<Vec<Arc<UdpSocket>>, String> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("socket: {e}"))?;
        socket.connect(addr).await.map_err(|e| e.to_string())?;
        sockets.push(Arc::new(socket));
    }
    let answered = exchange_all(&sockets).await?;
    if answered < n {
        return Err(format!("only {answered} of {n} sessions answered"));
    }
    Ok(sockets)
}

/// One round trip on every socket, 256 at a time, each tried up to 5
/// times; how many answered.
async fn exchange_all(sockets: &[Arc<UdpSocket>]) -> Result<usize, String> {
    let mut answered = 0;
    for batch in sockets.chunks(256) {
        let mut set = tokio::task::JoinSet::new();
        for socket in batch {
            let socket = socket.clone();
            set.spawn(async move {
                let mut buf = [0u8; 64];
                for _ in 0..5 {
                    if socket.send(MESSAGE).await.is_err() {
                        return false;
                    }
                    let reply = tokio::time::timeout(LOST_AFTER, socket.recv(&mut buf)).await;
                    if matches!(reply, Ok(Ok(_))) {
                        return true;
                    }
                }
                false
            });
        }
        while let Some(ok) = set.join_next().await {
            answered += usize::from(ok.map_err(|e| e.to_string())?);
        }
    }
    Ok(answered)
}

#[derive(Clone, Copy)]
enum Kind {
    Floor,
    Tcpscript,
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(kind: Kind, echo: &std::path::Path) -> Result<Server, String> {
        Server::start_with(kind, echo, &[])
    }

    fn start_with(kind: Kind, echo: &std::path::Path, extra: &[&str]) -> Result<Server, String> {
        let mut command = match kind {
            Kind::Floor => {
                let mut c = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
                c.arg(FLOOR_ARG);
                c
            }
            Kind::Tcpscript => {
                let mut c = Command::new(tcpscript());
                c.args(["server", "--udp"])
                    .arg(echo)
                    .args(["--listen", "127.0.0.1:0", "-q"])
                    .args(extra);
                c
            }
        };
        if let Some(pin) = PIN.get() {
            pin.measured(&mut command);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start a server: {e}"))?;
        let mut first = String::new();
        let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
        stderr.read_line(&mut first).map_err(|e| e.to_string())?;
        // The rest is drained, so the server never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        let addr = first
            .trim_end()
            .strip_prefix("listening on udp ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("the server did not start: {first:?}"))?;
        Ok(Server { child, addr })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The release binary, or `TCPSCRIPT_BENCH_BIN` (as for the throughput bench).
fn tcpscript() -> PathBuf {
    std::env::var_os("TCPSCRIPT_BENCH_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_tcpscript")),
        PathBuf::from,
    )
}

/// The floor: receive a datagram, send it back, nothing else.
fn floor_server() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // A task of its own, as tcpscript's loop is: a worker waits on the
    // socket and runs it at once, where the thread in `block_on` would be
    // woken by a worker for every datagram.
    runtime.block_on(async {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        eprintln!("listening on udp {}", socket.local_addr().expect("addr"));
        let _ = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                if let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                    let _ = socket.send_to(&buf[..n], peer).await;
                }
            }
        })
        .await;
    });
}

/// utime + stime of a process, all threads, in seconds.
fn proc_cpu(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields start after the command name's last ')'; utime and stime are
    // fields 14 and 15 of stat(5).
    let after = &stat[stat.rfind(')').ok_or("bad /proc stat")? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64, String> {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v as f64)
            .ok_or_else(|| "bad /proc stat".to_string())
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(14)? + ticks(15)?) / hz)
}

fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS".to_string())
}

/// The soft open-file limit raised towards `want` (at most the hard one).
fn raise_fd_limit(want: u64) -> u64 {
    rlimit::increase_nofile_limit(want).unwrap_or(0)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}
