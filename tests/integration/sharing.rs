//! A server script whose top level holds a big table, beside 2,000 idle
//! connections: the server stays small and serves a new client at once,
//! and every connection still behaves as if it had its own copy of the
//! top-level variables.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{BIN, LineClient, script};

/// Connections held open, sending nothing.
const IDLE: usize = 2000;
/// What the server may grow by, above its RSS once listening.
const BUDGET: u64 = 256 * 1024 * 1024;
/// A first exchange slower than this means the server was busy with the
/// idle connections. (About 1 ms on a release build; this is a debug build
/// sharing two cores with the other tests.)
const PROMPT: Duration = Duration::from_millis(500);

/// Builds `table`, 100,000 items (item `i` is `2 * i`), in parts: Rhai
/// measures the whole array after each change, so pushing one item at a
/// time would take minutes in a debug build.
const BUILD_ARRAY: &str = r#"
let table = [];
for j in 0..100 {
    let part = [];
    for i in 0..1000 { part.push((j * 1000 + i) * 2); }
    table += part;
}
"#;

/// A script whose top level builds `table`, then runs `top`; `on_connect`
/// greets and `on_message` is `body`.
fn array_script(top: &str, body: &str) -> String {
    format!(
        "{BUILD_ARRAY}\n{top}\n\
         fn on_connect() {{ \"hi\" }}\nfn on_message(msg) {{\n    {body}\n}}\n"
    )
}

/// `on_message(i)` answers item `i`.
const READ_ITEM: &str = "`${table[parse_int(msg)]} of ${table.len()}`";

/// A map of 100,000 entries; `on_message("k7")` answers entry `k7`.
const MAP: &str = r#"
let table = #{};
for j in 0..100 {
    let part = #{};
    for i in 0..1000 { let n = j * 1000 + i; part["k" + n] = n * 3; }
    table += part;
}
fn on_connect() { "hi" }
fn on_message(msg) { `${table[msg]} of ${table.len()}` }
"#;

/// `tcpscript server SCRIPT -q` on a free port, with its process id, killed
/// when dropped.
struct Server {
    child: Child,
    port: u16,
    /// VmRSS in bytes once it printed `listening on`.
    idle_rss: u64,
}

impl Server {
    fn start(path: &str) -> Server {
        let mut child = Command::new(BIN)
            .args([
                "server",
                path,
                "-q",
                "--max-ops",
                "0",
                "--listen",
                "127.0.0.1:0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("GITHUB_ACTIONS")
            .spawn()
            .expect("spawn the server");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let port = loop {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "the server ended before listening"
            );
            if let Some((_, addr)) = line.trim_end().split_once("listening on ") {
                break addr.rsplit(':').next().unwrap().parse().unwrap();
            }
        };
        // Keep the pipe drained so the server never blocks on a write.
        thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        let idle_rss = rss(child.id());
        Server {
            child,
            port,
            idle_rss,
        }
    }

    fn growth(&self) -> u64 {
        rss(self.child.id()).saturating_sub(self.idle_rss)
    }

    /// Asserts that the server has grown by less than [`BUDGET`].
    fn assert_small(&self, held: usize) {
        let growth = self.growth();
        assert!(
            growth < BUDGET,
            "with {held} connections held, the server grew by {} MiB (budget {} MiB)",
            growth >> 20,
            BUDGET >> 20
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident set size of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

fn raise_open_file_limit() {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    assert!(
        limit >= 2 * IDLE as u64 + 64,
        "the open-file limit here is {limit}: {IDLE} connections cannot be tested (raise `ulimit -n`)"
    );
}

/// Opens [`IDLE`] connections that each wait for their greeting and then
/// send nothing. The server's growth is checked as they come, so a server
/// that copies the table for each stops the test early, not at gigabytes.
fn hold_idle(server: &Server) -> Vec<LineClient> {
    raise_open_file_limit();
    let mut held = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let mut c = LineClient::connect(server.port);
        assert_eq!(c.recv().as_deref(), Some("hi"));
        held.push(c);
        if i % 100 == 99 {
            server.assert_small(i + 1);
        }
    }
    server.assert_small(IDLE);
    eprintln!(
        "{IDLE} idle connections: the server grew by {:.1} MiB",
        server.growth() as f64 / (1024.0 * 1024.0)
    );
    held
}

#[test]
fn idle_connections_do_not_copy_a_big_top_level_array() {
    let s = script(&array_script("", READ_ITEM));
    let server = Server::start(s.path());
    let mut held = hold_idle(&server);
    let mut c = LineClient::connect(server.port);
    assert_eq!(c.recv().as_deref(), Some("hi"));
    assert_eq!(c.exchange("99999"), "199998 of 100000");
    assert_eq!(held[0].exchange("7"), "14 of 100000");
    assert_eq!(held[IDLE - 1].exchange("0"), "0 of 100000");
    server.assert_small(IDLE + 1);
}

#[test]
fn idle_connections_do_not_copy_a_big_top_level_map() {
    let s = script(MAP);
    let server = Server::start(s.path());
    let mut held = hold_idle(&server);
    let mut c = LineClient::connect(server.port);
    assert_eq!(c.recv().as_deref(), Some("hi"));
    assert_eq!(c.exchange("k99999"), "299997 of 100000");
    assert_eq!(held[IDLE / 2].exchange("k5"), "15 of 100000");
    server.assert_small(IDLE + 1);
}

#[test]
fn a_new_client_is_served_at_once_beside_idle_connections() {
    raise_open_file_limit();
    let s = script(&array_script("", READ_ITEM));
    let server = Server::start(s.path());
    // Connected, not waited for: the server takes them all on at once.
    let mut held: Vec<LineClient> = (0..IDLE)
        .map(|_| LineClient::connect(server.port))
        .collect();
    let started = Instant::now();
    let mut c = LineClient::connect(server.port);
    assert_eq!(c.recv().as_deref(), Some("hi"));
    assert_eq!(c.exchange("3"), "6 of 100000");
    let first_exchange = started.elapsed();
    eprintln!(
        "beside {IDLE} idle connections, a new client's first exchange took {first_exchange:?}"
    );
    assert!(
        first_exchange < PROMPT,
        "a new client beside {IDLE} idle connections waited {first_exchange:?} for its first reply"
    );
    for c in &mut held {
        assert_eq!(c.recv().as_deref(), Some("hi"));
    }
    server.assert_small(IDLE + 1);
}

#[test]
fn counters_stay_per_connection_beside_a_shared_table() {
    let s = script(&array_script(
        "let count = 0;",
        "count += 1; `${count}: ${table[count]}`",
    ));
    let server = Server::start(s.path());
    let _held = hold_idle(&server);
    let mut a = LineClient::connect(server.port);
    let mut b = LineClient::connect(server.port);
    assert_eq!(a.recv().as_deref(), Some("hi"));
    assert_eq!(b.recv().as_deref(), Some("hi"));
    assert_eq!(a.exchange("x"), "1: 2");
    assert_eq!(a.exchange("x"), "2: 4");
    assert_eq!(b.exchange("x"), "1: 2");
    assert_eq!(a.exchange("x"), "3: 6");
    server.assert_small(IDLE + 2);
}

#[test]
fn a_change_to_a_big_table_is_seen_only_by_its_own_connection() {
    let s = script(&array_script(
        "",
        r#"if msg == "change" { table[0] = -1; table.pop(); } `${table[0]} ${table.len()}`"#,
    ));
    let server = Server::start(s.path());
    let _held = hold_idle(&server);
    let mut a = LineClient::connect(server.port);
    let mut b = LineClient::connect(server.port);
    assert_eq!(a.recv().as_deref(), Some("hi"));
    assert_eq!(b.recv().as_deref(), Some("hi"));
    assert_eq!(a.exchange("change"), "-1 99999");
    assert_eq!(b.exchange("read"), "0 100000");
    assert_eq!(a.exchange("read"), "-1 99999");
    let mut late = LineClient::connect(server.port);
    assert_eq!(late.recv().as_deref(), Some("hi"));
    assert_eq!(late.exchange("read"), "0 100000");
    server.assert_small(IDLE + 3);
}
