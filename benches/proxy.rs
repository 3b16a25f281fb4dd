//! `tcpscript proxy` forwarding, by hand:
//!
//! ```sh
//! cargo bench --bench proxy                # about 90 s
//! cargo bench --bench proxy -- --quick     # about 25 s
//! cargo bench --bench proxy -- --only 1 --each --pin apart
//! ```
//!
//! Three proxies stand between the bench's load generator and a bare tokio
//! echo upstream (in the bench process, 1 worker): `tcpscript proxy` with no
//! toxics; the floor, a bare tokio `copy_bidirectional` proxy (this binary
//! re-executed with `--floor-proxy UPSTREAM`, default runtime, `TCP_NODELAY`
//! both sides, in its own process as tcpscript is); and socat
//! (`TCP-LISTEN:PORT,fork,reuseaddr TCP:UPSTREAM`), what a user reaches for.
//!
//! - round trips/s of 32-byte ping-pong over 1 and 50 connections, in 1 s
//!   rounds, proxies taking turns (order rotating), the ratio to the
//!   floor's run in the same round, median over rounds. The one-connection
//!   row has twice the rounds: its rate turns on where the kernel places
//!   the load, the proxy and the upstream, drawn anew with each connection.
//!   `--each` prints every round, `--pin one` runs everything on one CPU
//!   and `--pin apart` the proxies on one and the rest on the other, so
//!   that each proxy meets the same placement;
//! - bulk MB/s: one connection writing 256 MiB while reading its echo
//!   (so 256 MiB each way through the proxy), median of rounds;
//! - each proxy's CPU per round trip in the round-trip rows (utime+stime
//!   from `/proc`, socat's forked children included), median of rounds:
//!   with one connection the rate is bound by wake-up latency more than by
//!   CPU, and this says what each proxy spends for it.
//!
//! Targets: tcpscript ≥ 0.9x the floor and ahead of socat on each row;
//! `tcpscript proxy SCRIPT` with a pass-through script in `line` framing
//! (each message through both hooks) ≥ 0.7x the floor in round trips (the
//! bulk row streams bytes with no line ends, so it has no figure there).
//! `TCPSCRIPT_BENCH_BIN=/path/to/tcpscript` measures that binary instead.
//! Not part of CI's pass/fail: it always exits 0 unless it could not run.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use pin::Pin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

#[path = "support/pin.rs"]
mod pin;

const BUILT_TCPSCRIPT: &str = env!("CARGO_BIN_EXE_tcpscript");
const MESSAGE: &[u8; 32] = b"00000000000000000000 ping-pong!\n";
const BULK: u64 = 256 * 1024 * 1024;
/// What `tcpscript proxy SCRIPT` runs: each line through both hooks as it is.
const PASS_THROUGH: &str = "const FRAMING = \"line\";\n\
    fn on_client_message(msg) { msg }\n\
    fn on_server_message(msg) { msg }\n";
/// Where each proxy sits in the list.
const FLOOR: usize = 0;
const TCPSCRIPT: usize = 1;
const SCRIPT: usize = 2;
const SOCAT: usize = 3;

#[derive(Debug, Parser)]
struct Args {
    /// Run as the floor proxy forwarding to this address (internal)
    #[arg(long, hide = true, value_name = "UPSTREAM")]
    floor_proxy: Option<SocketAddr>,
    /// Fewer and shorter rounds
    #[arg(long)]
    quick: bool,
    /// Rounds per row [default: 5, 2 with --quick]
    #[arg(long)]
    rounds: Option<usize>,
    /// Only this row: `1` (one connection), `50` or `bulk`
    #[arg(long, value_parser = ["1", "50", "bulk"])]
    only: Option<String>,
    /// Print each round's figures under its row
    #[arg(long)]
    each: bool,
    /// Pin to CPUs: `one` runs everything on CPU 0, `apart` the proxies on
    /// CPU 1 and the load and upstream on CPU 0 [default: the kernel places]
    #[arg(long, value_parser = Pin::parse)]
    pin: Option<Pin>,
    /// Passed by `cargo bench`
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    if let Some(upstream) = args.floor_proxy {
        floor_proxy(upstream);
        return;
    }
    if let Some(pin) = args.pin {
        pin.bench().expect("cannot pin to CPU 0");
    }
    let rounds = args.rounds.unwrap_or(if args.quick { 2 } else { 5 });
    let round = if args.quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(1)
    };
    let upstream_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let upstream = upstream_rt.block_on(echo_upstream());
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let bin = std::env::var("TCPSCRIPT_BENCH_BIN").unwrap_or_else(|_| BUILT_TCPSCRIPT.into());
    let up = upstream.to_string();
    let pass_through =
        std::env::temp_dir().join(format!("tcpscript-bench-{}.rhai", std::process::id()));
    std::fs::write(&pass_through, PASS_THROUGH).unwrap();
    let mut proxies = vec![
        (
            "floor",
            start(
                args.pin,
                Command::new(std::env::current_exe().unwrap()).args(["--floor-proxy", &up]),
            ),
        ),
        (
            "tcpscript",
            start(
                args.pin,
                Command::new(&bin).args([
                    "proxy",
                    "-q",
                    "--listen",
                    "127.0.0.1:0",
                    "--upstream",
                    &up,
                ]),
            ),
        ),
        (
            "script",
            start(
                args.pin,
                Command::new(&bin).arg("proxy").arg(&pass_through).args([
                    "-q",
                    "--listen",
                    "127.0.0.1:0",
                    "--upstream",
                    &up,
                ]),
            ),
        ),
    ];
    let have_socat = Command::new("socat").arg("-V").output().is_ok();
    if have_socat {
        proxies.push(("socat", socat(args.pin, upstream)));
    } else {
        eprintln!("socat is not installed: no socat column");
    }

    println!(
        "tcpscript proxy vs a tokio copy_bidirectional floor and socat; echo upstream; 127.0.0.1; {rounds} rounds, {} at 1 connection{}",
        rounds * 2,
        args.pin
            .map_or(String::new(), |pin| format!("; pinned {pin:?}")
                .to_lowercase())
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9}  target",
        "", "floor", "tcpscript", "socat", "script", "vs floor", "vs socat", "script"
    );
    let mut cpu_rows = Vec::new();
    let rows = [Row::RoundTrips(1), Row::RoundTrips(50), Row::Bulk];
    for row in rows
        .into_iter()
        .filter(|row| args.only.as_ref().is_none_or(|only| *only == row.key()))
    {
        // figures[p][r]: proxy p's figure in round r; cpu[p][r] its CPU
        // seconds per round trip.
        let mut figures = vec![Vec::new(); proxies.len()];
        let mut cpu = vec![Vec::new(); proxies.len()];
        let measured: Vec<usize> = (0..proxies.len())
            .filter(|&p| p != SCRIPT || matches!(row, Row::RoundTrips(_)))
            .collect();
        // See the top: twice the draws of the placement.
        let row_rounds = match row {
            Row::RoundTrips(1) => rounds * 2,
            _ => rounds,
        };
        for r in 0..row_rounds {
            for i in 0..measured.len() {
                let p = measured[(i + r) % measured.len()];
                let (figure, seconds) = load.block_on(row.measure(&proxies[p].1, round));
                figures[p].push(figure);
                cpu[p].extend(seconds);
            }
        }
        let ratio = |of: usize, to: usize| {
            (!figures[of].is_empty()).then(|| {
                median(
                    (0..row_rounds)
                        .map(|r| figures[of][r] / figures[to][r])
                        .collect(),
                )
            })
        };
        let vs_floor = ratio(TCPSCRIPT, FLOOR).unwrap_or_default();
        let vs_socat = have_socat.then(|| ratio(TCPSCRIPT, SOCAT)).flatten();
        let script = ratio(SCRIPT, FLOOR);
        let pass =
            vs_floor >= 0.9 && vs_socat.is_none_or(|v| v > 1.0) && script.is_none_or(|v| v >= 0.7);
        let cell = |p: usize| {
            figures
                .get(p)
                .filter(|f| !f.is_empty())
                .map_or("-".to_string(), |f| format!("{:.0}", median(f.clone())))
        };
        let times = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}x"));
        println!(
            "{:<22} {:>10} {:>10} {:>10} {:>10} {:>8.2}x {:>9} {:>9}  {} (≥0.9x floor, > socat; script ≥0.7x floor)",
            row.name(),
            cell(FLOOR),
            cell(TCPSCRIPT),
            cell(SOCAT),
            cell(SCRIPT),
            vs_floor,
            times(vs_socat),
            times(script),
            if pass { "PASS" } else { "FAIL" },
        );
        if args.each {
            for r in 0..row_rounds {
                let figure = |p: usize| figures[p].get(r).map_or("-".into(), |f| format!("{f:.0}"));
                println!(
                    "  round {:<14} {:>10} {:>10} {:>10} {:>10}",
                    r + 1,
                    figure(FLOOR),
                    figure(TCPSCRIPT),
                    figure(SOCAT),
                    figure(SCRIPT)
                );
            }
        }
        if cpu.iter().any(|c| !c.is_empty()) {
            cpu_rows.push((row, cpu));
        }
    }
    println!();
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}  (informative: no target)",
        "CPU per round trip", "floor", "tcpscript", "socat", "script", "vs floor", "vs socat"
    );
    for (row, cpu) in cpu_rows {
        let micros = |p: usize| {
            cpu.get(p)
                .filter(|c| !c.is_empty())
                .map(|c| median(c.clone()) * 1e6)
        };
        let cell = |p: usize| micros(p).map_or("-".to_string(), |us| format!("{us:.1} us"));
        let ratio = |to: usize| {
            micros(TCPSCRIPT)
                .zip(micros(to))
                .map_or("-".to_string(), |(a, b)| format!("{:.2}x", a / b))
        };
        println!(
            "{:<22} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
            row.name().replace("round trips/s, ", ""),
            cell(FLOOR),
            cell(TCPSCRIPT),
            cell(SOCAT),
            cell(SCRIPT),
            ratio(FLOOR),
            ratio(SOCAT),
        );
    }
    let _ = std::fs::remove_file(&pass_through);
}

#[derive(Debug, Clone, Copy)]
enum Row {
    RoundTrips(usize),
    Bulk,
}

impl Row {
    /// What `--only` calls the row.
    fn key(self) -> String {
        match self {
            Row::RoundTrips(n) => n.to_string(),
            Row::Bulk => "bulk".into(),
        }
    }

    fn name(self) -> String {
        match self {
            Row::RoundTrips(1) => "round trips/s, 1 conn".into(),
            Row::RoundTrips(n) => format!("round trips/s, {n} conns"),
            Row::Bulk => "bulk MB/s each way".into(),
        }
    }

    /// The row's figure, and the proxy's CPU seconds per round trip
    /// (round-trip rows only).
    async fn measure(self, proxy: &Proxy, round: Duration) -> (f64, Option<f64>) {
        match self {
            Row::RoundTrips(connections) => {
                let (rate, cpu) = round_trips(proxy, connections, round).await;
                (rate, Some(cpu))
            }
            Row::Bulk => (bulk(proxy.port).await, None),
        }
    }
}

/// Round trips per second over `connections`, each one ping in flight,
/// and the proxy's CPU seconds per round trip meanwhile.
async fn round_trips(proxy: &Proxy, connections: usize, round: Duration) -> (f64, f64) {
    let mut streams = Vec::new();
    for _ in 0..connections {
        let stream = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        stream.set_nodelay(true).unwrap();
        streams.push(stream);
    }
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let warm = Arc::new(AtomicU64::new(0));
    // Warm every connection up (the upstream connect happens on the first
    // bytes at the latest), then count.
    let mut tasks = Vec::new();
    for mut stream in streams {
        let (done, count, warm) = (done.clone(), count.clone(), warm.clone());
        tasks.push(tokio::spawn(async move {
            let mut reply = [0u8; 32];
            stream.write_all(MESSAGE).await.unwrap();
            stream.read_exact(&mut reply).await.unwrap();
            warm.fetch_add(1, Ordering::Relaxed);
            while !done.load(Ordering::Relaxed) {
                stream.write_all(MESSAGE).await.unwrap();
                stream.read_exact(&mut reply).await.unwrap();
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Every connection has made its round trip through the proxy (and
    // socat has forked its child for each) before the CPU is first read.
    while warm.load(Ordering::Relaxed) < connections as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let cpu_before = cpu_seconds(proxy.child.id());
    let started = Instant::now();
    let before = count.load(Ordering::Relaxed);
    tokio::time::sleep(round).await;
    let after = count.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu = cpu_seconds(proxy.child.id()) - cpu_before;
    done.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let trips = (after - before) as f64;
    (trips / elapsed.as_secs_f64(), cpu / trips.max(1.0))
}

/// utime + stime of a process (all its threads) and of its children, in
/// seconds: socat serves each connection in a child it forks.
fn cpu_seconds(pid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks = |pid: &str| -> u64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return 0;
        };
        // Fields after the command name's last ')'; utime and stime are
        // fields 14 and 15 of stat(5).
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok());
        field(14).unwrap_or(0) + field(15).unwrap_or(0)
    };
    let pid = pid.to_string();
    let mut total = ticks(&pid);
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            total += children.split_whitespace().map(ticks).sum::<u64>();
        }
    }
    total as f64 / hz
}

/// MB/s each way: one connection writes `BULK` bytes while reading the echo.
async fn bulk(port: u16) -> f64 {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 256 * 1024];
        let mut sent = 0;
        while sent < BULK {
            write.write_all(&chunk).await.unwrap();
            sent += chunk.len() as u64;
        }
        write.shutdown().await.unwrap();
    });
    let mut buffer = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    while got < BULK {
        match read.read(&mut buffer).await.unwrap() {
            0 => panic!("closed after {got} bytes"),
            n => got += n as u64,
        }
    }
    let elapsed = started.elapsed();
    writer.await.unwrap();
    BULK as f64 / 1e6 / elapsed.as_secs_f64()
}

/// The upstream: echoes whatever comes, through a 64 KiB buffer.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// The floor: accept, connect upstream, `copy_bidirectional`.
fn floor_proxy(upstream: SocketAddr) {
    let runtime = Runtime::new().unwrap();
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        eprintln!("listening on {}", listener.local_addr().unwrap());
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
}

/// A proxy process, killed when dropped.
struct Proxy {
    child: Child,
    port: u16,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` and reads the port from its `listening on` line.
fn start(pin: Option<Pin>, command: &mut Command) -> Proxy {
    if let Some(pin) = pin {
        pin.measured(command);
    }
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let port = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("{command:?} said {line:?}"));
    // Keep draining stderr so that the proxy never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    Proxy { child, port }
}

/// socat on a free port; it prints nothing when ready, so connect until
/// it answers.
fn socat(pin: Option<Pin>, upstream: SocketAddr) -> Proxy {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = Command::new("socat");
    if let Some(pin) = pin {
        pin.measured(&mut command);
    }
    let child = command
        .arg(format!(
            "TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,nodelay"
        ))
        .arg(format!("TCP:{upstream},nodelay"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "socat never listened on {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
    Proxy { child, port }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}
