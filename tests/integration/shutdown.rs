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

/// The hard stop cuts TLS handshakes short too: a peer that connects and
/// says nothing, or sends half a ClientHello, ends with the grace period,
/// not 10 s into its handshake.
#[test]
fn tls_handshakes_left_hanging_end_with_the_grace_period() {
    use std::io::Read;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let mut server = Running::server(&["--echo", "--tls", "--tls-ca-out", ca.to_str().unwrap()]);
    let connected = Instant::now();
    let mut silent = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let mut halfway = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    // A handshake record announcing 512 bytes, and a ClientHello's first 6.
    halfway
        .write_all(&[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ])
        .unwrap();
    // Connections are accepted in order: once a later one is served, the
    // two above are in their handshakes.
    let sync = script("send(\"sync\");\nassert_eq(recv(), \"sync\");\n");
    crate::support::tcpscript()
        .args(["client", sync.path(), "--connect", &server.addr()])
        .args(["--tls", "--tls-ca", ca.to_str().unwrap()])
        .assert()
        .success();
    server.send_signal("TERM");
    assert_eq!(server.wait_exit().code(), Some(0));
    let took = connected.elapsed();
    let log = server.stderr();
    for peer in [&silent, &halfway] {
        let line = format!(
            "{} TLS handshake failed: the server stopped first",
            peer.local_addr().unwrap()
        );
        assert!(log.contains(&line), "{log}");
    }
    assert!(
        log.contains("shut down: 3 connections, 1 messages in, 1 out, 2 errors\n"),
        "{log}"
    );
    // The 5 s grace period, well short of the 10 s handshake timeout.
    assert!(took < Duration::from_secs(9), "{took:?}\n{log}");
    for peer in [&mut silent, &mut halfway] {
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        assert!(
            peer.read_to_end(&mut rest).is_ok_and(|n| n == 0),
            "{rest:?}"
        );
    }
}
