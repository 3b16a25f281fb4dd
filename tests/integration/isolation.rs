//! One connection must not stall the others: hooks that run to their
//! limits, a shared_update that takes its time, a stdout nobody reads.
//! Each test measures a bystander's round trips while the others misbehave;
//! the bound asserted is loose (the benchmark holds the tight figure), but
//! far below the one-second stalls these cases caused.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{LineClient, PATIENCE, Running, script};

/// Longer than any round trip may take while the others misbehave.
const STALL: Duration = Duration::from_millis(400);

/// Peers that keep sending `word` on fresh connections, each waiting for
/// the server to close it (its hook stopped by the limit), until dropped.
struct Hogs {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Hogs {
    fn start(port: u16, count: usize, word: &'static str) -> Hogs {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..count)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let mut hog = TcpStream::connect(("127.0.0.1", port)).unwrap();
                        hog.set_read_timeout(Some(PATIENCE)).unwrap();
                        hog.write_all(format!("{word}\n").as_bytes()).unwrap();
                        let _ = hog.read_to_end(&mut Vec::new());
                    }
                })
            })
            .collect();
        Hogs { stop, threads }
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn cores() -> usize {
    thread::available_parallelism().map_or(2, |n| n.get())
}

/// Round trips of a bystander for `time`; returns the slowest.
fn bystander_worst(port: u16, time: Duration) -> Duration {
    let mut bystander = LineClient::connect(port);
    let mut times = Vec::new();
    let started = Instant::now();
    while started.elapsed() < time {
        let sent = Instant::now();
        assert_eq!(bystander.exchange("ping"), "ping");
        times.push(sent.elapsed());
    }
    times.sort();
    let p99 = times[times.len() * 99 / 100];
    let worst = *times.last().unwrap();
    eprintln!(
        "bystander: {} round trips, p99 {p99:?}, worst {worst:?}",
        times.len()
    );
    worst
}

#[test]
fn hooks_spinning_to_their_limit_on_every_core_leave_a_bystander_served() {
    let s = script("fn on_message(m) { if m == \"spin\" { loop {} } m }\n");
    let server = Running::server(&[s.path(), "--max-ops", "0", "--hook-timeout", "1s", "-q"]);
    let hogs = Hogs::start(server.port, cores(), "spin");
    let worst = bystander_worst(server.port, Duration::from_secs(3));
    drop(hogs);
    assert!(worst < STALL, "a round trip took {worst:?}");
}

#[test]
fn a_slow_shared_update_never_holds_the_store_from_others() {
    let s = script(
        "fn on_message(m) {\n    if m == \"hold\" { shared_update(\"k\", |v| { loop {} }); }\n    shared_get(\"k\", 0);\n    m\n}\n",
    );
    let server = Running::server(&[s.path(), "--max-ops", "0", "--hook-timeout", "1s", "-q"]);
    let hogs = Hogs::start(server.port, 1, "hold");
    let worst = bystander_worst(server.port, Duration::from_secs(3));
    drop(hogs);
    assert!(worst < STALL, "a round trip took {worst:?}");
}

#[test]
fn print_to_a_stdout_nobody_reads_never_stalls_a_bystander() {
    let s = script(
        "fn on_message(m) {\n    if m == \"shout\" { let s = \"\"; s.pad(100000, \"x\"); for i in 0..20 { print(s); } }\n    m\n}\n",
    );
    let (server, _unread) = Running::server_with_unread_stdout(&[s.path()]);
    let mut shouter = LineClient::connect(server.port);
    // Two megabytes of print() into a pipe that holds 64 KiB.
    assert_eq!(shouter.exchange("shout"), "shout");
    assert_eq!(shouter.exchange("shout"), "shout");
    let worst = bystander_worst(server.port, Duration::from_millis(500));
    assert!(worst < STALL, "a round trip took {worst:?}");
}

#[test]
fn print_to_a_closed_stdout_is_a_script_error_not_a_panic() {
    let s = script("fn on_message(m) {\n    print(m);\n    m\n}\n");
    let (server, pipe) = Running::server_with_unread_stdout(&[s.path()]);
    drop(pipe);
    let mut c = LineClient::connect(server.port);
    c.send("hello");
    // The first print may still be queued before the writer finds the
    // pipe closed; one of the next ones fails.
    let mut ended = false;
    for _ in 0..50 {
        match c.recv() {
            Some(_) => c.send("again"),
            None => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended, "print() to a closed stdout never failed");
    let log = server.wait_stderr("stdout is closed");
    assert!(log.contains("in hook `on_message`"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let mut late = LineClient::connect(server.port);
    late.send("x");
    assert_eq!(late.recv(), None, "every print now fails, but cleanly");
    server.wait_stderr("error: print(): stdout is closed");
}
