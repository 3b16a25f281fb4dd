//! SIGINT and SIGTERM: a grace period, then every connection ends through
//! `on_disconnect`, the summary counts each one, and the exit code is 0.

use std::io::Write;
use std::net::TcpStream;

use crate::support::{LineClient, Running, script};

#[test]
fn a_connection_sleeping_in_a_hook_and_an_idle_one_are_both_ended_and_counted() {
    let s = script(
        "fn on_message(m) { if m == \"nap\" { sleep(3600000); } m }\nfn on_disconnect() { log(`bye ${peer()}`); \"bye\" }\n",
    );
    let mut server = Running::server(&[s.path(), "-v"]);
    let mut sleeper = LineClient::connect(server.port);
    let sleeper_addr = sleeper.stream().local_addr().unwrap().to_string();
    sleeper.send("nap");
    server.wait_stderr(&format!("{sleeper_addr} +"));
    let mut idle = LineClient::connect(server.port);
    let idle_addr = idle.stream().local_addr().unwrap().to_string();
    assert_eq!(idle.exchange("hi"), "hi");
    server.send_signal("TERM");
    assert_eq!(server.wait_exit().code(), Some(0));
    let log = server.stderr();
    assert!(
        log.contains(&format!("[{sleeper_addr}] bye {sleeper_addr}")),
        "{log}"
    );
    assert!(
        log.contains(&format!("[{idle_addr}] bye {idle_addr}")),
        "{log}"
    );
    assert!(
        log.contains("shut down: 2 connections, 2 messages in, "),
        "{log}"
    );
    // Both heard the farewell: the idle one at once, the sleeper once the
    // grace period cut its sleep short.
    assert_eq!(idle.recv().as_deref(), Some("bye"));
    assert_eq!(sleeper.recv().as_deref(), Some("nap"));
    assert_eq!(sleeper.recv().as_deref(), Some("bye"));
}

#[test]
fn a_peer_that_never_reads_is_counted_at_shutdown() {
    let s = script(
        "fn on_message(m) {\n    let s = \"\";\n    s.pad(1000000, \"x\");\n    [s, s, s, s, s, s, s, s]\n}\n",
    );
    let mut server = Running::server(&[s.path(), "-v"]);
    let mut hog = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let hog_addr = hog.local_addr().unwrap().to_string();
    hog.write_all(b"more\n").unwrap();
    // Eight megabytes of replies, and we read none of them.
    server.wait_stderr(&format!("{hog_addr} +"));
    server.send_signal("TERM");
    assert_eq!(server.wait_exit().code(), Some(0));
    let log = server.stderr();
    assert!(
        log.contains("shut down: 1 connections, 1 messages in, "),
        "{log}"
    );
}
