//! `tcpscript proxy --udp` between a Python UDP server and Python-style
//! `std::net` UDP clients: a session per client, faults per datagram.

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{BIN, Running, script, tcpscript};
use crate::udp::python_server;

/// `tcpscript proxy --udp --upstream UPSTREAM ARGS`, once it listens.
fn proxy(upstream: &str, args: &[&str]) -> Running {
    let mut command = Command::new(BIN);
    command
        .args(["proxy", "--udp", "--upstream", upstream])
        .args(args)
        .args(["--listen", "127.0.0.1:0"]);
    Running::listening(command, None)
}

fn client(timeout: Duration) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(timeout)).unwrap();
    socket
}

/// The next datagram as text, or `None` once `timeout` passes.
fn recv(socket: &UdpSocket) -> Option<String> {
    let mut buf = [0u8; 2048];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => return Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

const UPPER: &str = "d.upper()";

#[test]
fn each_client_gets_its_own_session_and_its_own_replies() {
    let upstream = python_server(UPPER);
    let proxy = proxy(&upstream.addr(), &["-v"]);
    let (a, b) = (
        client(crate::support::PATIENCE),
        client(crate::support::PATIENCE),
    );
    for (socket, word) in [(&a, "alpha"), (&b, "beta"), (&a, "again")] {
        socket
            .send_to(word.as_bytes(), ("127.0.0.1", proxy.port))
            .unwrap();
        assert_eq!(recv(socket).as_deref(), Some(word.to_uppercase().as_str()));
    }
    proxy.wait_stderr_count("session open to upstream", 2);
}

#[test]
fn loss_of_one_loses_every_datagram_and_the_summary_counts_them_dropped() {
    let upstream = python_server(UPPER);
    let mut proxy = proxy(&upstream.addr(), &["--loss", "1", "--direction", "up"]);
    let socket = client(Duration::from_millis(300));
    for _ in 0..3 {
        socket.send_to(b"x", ("127.0.0.1", proxy.port)).unwrap();
        assert_eq!(recv(&socket), None);
    }
    proxy.send_signal("TERM");
    proxy.wait_exit();
    assert!(
        proxy
            .stderr()
            .contains("0 datagrams up (0 bytes), 0 down (0 bytes), 3 dropped"),
        "{}",
        proxy.stderr()
    );
}

#[test]
fn duplicate_down_sends_each_reply_twice() {
    let upstream = python_server(UPPER);
    let proxy = proxy(
        &upstream.addr(),
        &["--duplicate", "1", "--direction", "down"],
    );
    let socket = client(Duration::from_millis(500));
    socket.send_to(b"twice", ("127.0.0.1", proxy.port)).unwrap();
    assert_eq!(recv(&socket).as_deref(), Some("TWICE"));
    assert_eq!(recv(&socket).as_deref(), Some("TWICE"));
    assert_eq!(recv(&socket), None);
}

#[test]
fn reorder_lets_each_datagram_overtake_the_one_before() {
    // The upstream echoes each as it comes: its order shows in the replies.
    let upstream = python_server("d");
    let proxy = proxy(&upstream.addr(), &["--reorder", "1", "--direction", "up"]);
    let socket = client(crate::support::PATIENCE);
    for word in ["1", "2", "3", "4"] {
        socket
            .send_to(word.as_bytes(), ("127.0.0.1", proxy.port))
            .unwrap();
    }
    let got: Vec<String> = (0..4).map(|_| recv(&socket).unwrap()).collect();
    assert_eq!(got, ["2", "1", "4", "3"]);
}

#[test]
fn a_script_changes_replies_and_latency_delays_them() {
    let upstream = python_server(UPPER);
    let s = script(
        r#"fn on_server_message(msg) { msg + "!" }
        fn on_client_message(msg) {
            if msg == "ping" { to_client("pong from the proxy"); return; }
            msg
        }"#,
    );
    let proxy = proxy(
        &upstream.addr(),
        &[s.path(), "--latency", "300ms", "--direction", "down"],
    );
    let socket = client(crate::support::PATIENCE);
    let started = Instant::now();
    socket.send_to(b"hello", ("127.0.0.1", proxy.port)).unwrap();
    assert_eq!(recv(&socket).as_deref(), Some("HELLO!"));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    socket.send_to(b"ping", ("127.0.0.1", proxy.port)).unwrap();
    assert_eq!(recv(&socket).as_deref(), Some("pong from the proxy"));
}

#[test]
fn an_idle_session_ends_after_the_idle_timeout() {
    let upstream = python_server(UPPER);
    let proxy = proxy(&upstream.addr(), &["--idle-timeout", "300ms", "-v"]);
    let socket = client(crate::support::PATIENCE);
    socket.send_to(b"once", ("127.0.0.1", proxy.port)).unwrap();
    assert_eq!(recv(&socket).as_deref(), Some("ONCE"));
    proxy.wait_stderr("ended (--idle-timeout)");
}

#[test]
fn stream_faults_and_datagram_faults_stay_where_they_mean_something() {
    tcpscript()
        .args([
            "proxy",
            "--udp",
            "--upstream",
            "127.0.0.1:1",
            "--slow-close",
            "1s",
        ])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("means nothing with --udp"));
    tcpscript()
        .args(["proxy", "--upstream", "127.0.0.1:1", "--loss", "0.5"])
        .assert()
        .code(2);
}

#[test]
fn what_on_connect_returns_or_sends_goes_to_the_client() {
    let upstream = python_server(UPPER);
    let s = script(r#"fn on_connect() { send("sent first"); "greeting" }"#);
    let proxy = proxy(&upstream.addr(), &[s.path()]);
    let socket = client(Duration::from_millis(500));
    socket.send_to(b"hello", ("127.0.0.1", proxy.port)).unwrap();
    assert_eq!(recv(&socket).as_deref(), Some("sent first"));
    assert_eq!(recv(&socket).as_deref(), Some("greeting"));
    assert_eq!(recv(&socket).as_deref(), Some("HELLO"));
    assert_eq!(recv(&socket), None);
}

#[test]
fn a_datagram_a_hook_makes_too_large_is_refused_said_and_counted() {
    let upstream = python_server("d");
    let s = script(
        r#"fn on_client_message(msg) {
            if msg == "big" { let s = "x"; s.pad(70000, "x"); return s; }
            msg
        }"#,
    );
    let mut proxy = proxy(&upstream.addr(), &[s.path()]);
    let socket = client(Duration::from_millis(500));
    socket.send_to(b"big", ("127.0.0.1", proxy.port)).unwrap();
    socket.send_to(b"small", ("127.0.0.1", proxy.port)).unwrap();
    assert_eq!(recv(&socket).as_deref(), Some("small"));
    proxy.wait_stderr(
        "cannot send a datagram of 70000 bytes to the upstream: \
         larger than the most one UDP datagram carries (65507 bytes); not sent",
    );
    proxy.send_signal("TERM");
    proxy.wait_exit();
    assert!(
        proxy.stderr().contains(
            "1 datagrams up (5 bytes), 1 down (5 bytes), 0 dropped, 0 with faults, 1 errors"
        ),
        "{}",
        proxy.stderr()
    );
}

#[test]
fn datagrams_a_blackhole_swallows_are_counted_dropped() {
    let upstream = python_server("d");
    let mut proxy = proxy(
        &upstream.addr(),
        &["--blackhole-after", "0ms", "--direction", "up"],
    );
    let socket = client(Duration::from_millis(300));
    for _ in 0..2 {
        socket.send_to(b"x", ("127.0.0.1", proxy.port)).unwrap();
        assert_eq!(recv(&socket), None);
    }
    proxy.send_signal("TERM");
    proxy.wait_exit();
    assert!(
        proxy
            .stderr()
            .contains("0 datagrams up (0 bytes), 0 down (0 bytes), 2 dropped"),
        "{}",
        proxy.stderr()
    );
}
