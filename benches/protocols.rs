//! The protocol mocks under real load generators, beside the real server in
//! the same run, by hand:
//!
//! ```sh
//! cargo bench --bench protocols                 # about 30 s
//! cargo bench --bench protocols -- --quick      # about 10 s
//! ```
//!
//! `redis`: `redis-benchmark -P 16 -c 50 -t set,get` against
//! `scripts/redis_mock.rhai` and against redis-server itself. The ratio is
//! the mock's requests per second over the real server's: what a scripted
//! mock costs beside the software it stands in for. A bare tokio server
//! is no floor here, as it would have to parse RESP to answer at all.
//!
//! `TCPSCRIPT_BENCH_BIN=/path/to/tcpscript` benchmarks that binary instead.
//! Not part of CI's pass/fail; it needs redis-server and redis-benchmark.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BUILT_TCPSCRIPT: &str = env!("CARGO_BIN_EXE_tcpscript");

/// A process killed when dropped, so a failed run leaves nothing behind.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let requests = if quick { 100_000 } else { 400_000 };
    let bin = std::env::var("TCPSCRIPT_BENCH_BIN").unwrap_or_else(|_| BUILT_TCPSCRIPT.into());
    for tool in ["redis-server", "redis-benchmark"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("protocols bench: {tool} is not installed; nothing to measure");
            return;
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/redis_mock.rhai");

    let (redis, redis_port) = redis_server();
    let real = run_benchmark(redis_port, requests);
    drop(redis);
    let (mock, mock_port) = mock_server(&bin, &script);
    let mocked = run_benchmark(mock_port, requests);
    drop(mock);

    println!("redis-benchmark -P 16 -c 50 -n {requests} (requests per second, 127.0.0.1)");
    println!(
        "{:<8} {:>14} {:>20} {:>8}",
        "command", "redis-server", "redis_mock.rhai", "ratio"
    );
    for ((command, real), (_, mocked)) in real.iter().zip(&mocked) {
        println!(
            "{command:<8} {real:>14.0} {mocked:>20.0} {:>7.1}%",
            100.0 * mocked / real
        );
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn redis_server() -> (Process, u16) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let process = Process(child);
    // Ready once it answers; redis-benchmark would fail on a refused connect.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (process, port)
}

fn mock_server(bin: &str, script: &Path) -> (Process, u16) {
    let mut child = Command::new(bin)
        .arg("server")
        .arg(script)
        .args(["--listen", "127.0.0.1:0", "-q"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpscript server");
    let stderr = child.stderr.take().unwrap();
    let mut line = String::new();
    BufReader::new(stderr).read_line(&mut line).unwrap();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no `listening on` line: {line:?}"));
    (Process(child), port)
}

/// Requests per second for SET and GET, from redis-benchmark's CSV.
fn run_benchmark(port: u16, requests: u32) -> Vec<(String, f64)> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-P", "16", "-c", "50", "-t", "set,get", "--csv"])
        .args(["-n", &requests.to_string()])
        .output()
        .expect("redis-benchmark");
    assert!(out.status.success(), "redis-benchmark: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split(',').map(|f| f.trim_matches('"'));
            Some((fields.next()?.to_string(), fields.next()?.parse().ok()?))
        })
        .collect()
}
