//! Speed and memory benchmark for tcpscript, run by hand:
//!
//! ```sh
//! cargo bench --bench throughput                      # full run, about 3 minutes
//! cargo bench --bench throughput -- --quick           # short run, about 25 s
//! cargo bench --bench throughput -- --only echo,idle  # some sections only
//! cargo bench --bench throughput -- --help            # the options
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
//!
//! The code: `main.rs` reads the arguments (`config.rs`, with clap) and
//! starts the run (`run.rs`). Each section measures and prints its table in
//! its own file: `echo.rs`, `client.rs`, `load.rs`, `idle.rs`, `check.rs`,
//! `tls.rs`. They share the servers under test (`servers.rs`), the floors
//! (`floor.rs`), the load generator (`loadgen.rs`), CPU readings
//! (`measure.rs`) and the report with its targets (`report.rs`).

mod check;
mod client;
mod config;
mod echo;
mod floor;
mod idle;
mod load;
mod loadgen;
mod measure;
mod report;
mod run;
mod servers;
mod tls;

use config::{Args, Config};

fn main() {
    let (args, given) = Args::parse_with_given();
    if args.floor_server {
        floor::floor_server();
        return;
    }
    if let Some([cert, key]) = args.floor_tls_server.as_deref() {
        floor::floor_tls_server(cert, key);
        return;
    }
    let config = Config::new(args, given);
    if let Err(message) = run::run(&config) {
        eprintln!("benchmark failed: {message}");
        std::process::exit(1);
    }
}
