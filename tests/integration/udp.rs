//! `--udp`: datagram servers and clients, against peers tcpscript did not
//! write (Python's `socket`, socat, `std::net::UdpSocket`) both ways.

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use predicates::str::contains;

use crate::support::{PATIENCE, Running, script, shipped, tcpscript};

/// A UDP socket of the test's own, talking to `port` on loopback.
fn peer(port: u16) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(("127.0.0.1", port)).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    socket
}

fn exchange(socket: &UdpSocket, datagram: &[u8]) -> Vec<u8> {
    socket.send(datagram).unwrap();
    recv(socket)
}

fn recv(socket: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0; 65_536];
    let n = socket.recv(&mut buf).expect("a datagram back");
    buf.truncate(n);
    buf
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

/// A UDP port nothing is bound to now: bound, read and released.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Python UDP server that answers each datagram `d` with `reply(d)`
/// (a Python expression over the bytes `d`), once it prints its port.
pub(crate) fn python_server(reply: &str) -> Running {
    let program = format!(
        "import socket, sys\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('127.0.0.1', 0))\n\
         print('listening on 127.0.0.1:%d' % s.getsockname()[1], file=sys.stderr, flush=True)\n\
         while True:\n\
         \x20   d, a = s.recvfrom(65536)\n\
         \x20   s.sendto({reply}, a)\n"
    );
    let mut command = Command::new("python3");
    command.args(["-u", "-c", &program]);
    Running::listening(command, None)
}

fn udp_client(script_path: &str, addr: &str) -> assert_cmd::Command {
    let mut cmd = tcpscript();
    cmd.args(["client", "--udp", script_path, "--connect", addr]);
    cmd
}

#[test]
fn the_udp_conversation_runs_against_the_udp_reply_server() {
    let server = Running::server(&["--udp", &shipped("udp_reply.rhai")]);
    assert!(server.stderr().contains("listening on udp 127.0.0.1:"));
    udp_client(&shipped("udp_conversation.rhai"), &server.addr())
        .assert()
        .success()
        .stderr(contains("ok: "));
}

#[test]
fn the_test_runner_starts_a_udp_server_for_its_cases() {
    tcpscript()
        .args(["test", "--udp", "--server", &shipped("udp_reply.rhai")])
        .arg(shipped("udp_conversation.rhai"))
        .assert()
        .success()
        .stderr(contains("listening on udp 127.0.0.1:"))
        .stderr(contains("1 passed, 0 failed"));
}

#[test]
fn a_python_client_talks_to_the_udp_reply_server() {
    let server = Running::server(&["--udp", &shipped("udp_reply.rhai")]);
    let program = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.settimeout(15)\n\
         for m in [b'hello', b'add 1 2', b'count', b'exit']:\n\
         \x20   s.sendto(m, ('127.0.0.1', {}))\n\
         \x20   print(s.recvfrom(65536)[0].decode())\n",
        server.port
    );
    let out = Command::new("python3")
        .args(["-c", &program])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert!(
        lines[0].starts_with("welcome to the tcpscript tutorial server, you are 127.0.0.1:"),
        "{lines:?}"
    );
    assert_eq!(
        &lines[1..],
        ["sum: 3", "messages so far: 3", "bye after 3 messages"]
    );
}

#[test]
fn socat_talks_to_the_udp_reply_server_and_gets_replies_in_kind() {
    let server = Running::server(&["--udp", &shipped("udp_reply.rhai")]);
    // `socat - UDP:...`: each line of stdin one datagram out, each reply
    // printed as it came, its newline and all.
    let mut socat = Running::start(
        {
            let mut command = Command::new("socat");
            command.args(["-t", "15", "-", &format!("UDP:127.0.0.1:{}", server.port)]);
            command
        },
        None,
    );
    socat.write_stdin("upper hi\n");
    socat.wait_stdout("HI\n");
    socat.write_stdin("count\n");
    socat.wait_stdout("messages so far: 2\n");
}

#[test]
fn a_udp_client_talks_to_a_python_request_reply_server() {
    let server = python_server("b'got ' + d.upper()");
    let client = script(
        r#"
        send("ping");
        assert_eq(recv(), "got PING");
        send("");                     // an empty datagram is a message too
        assert_eq(recv(), "got ");
        let blob = recv_blob_of("x");
        fn recv_blob_of(m) { send(m); recv_blob() }
        assert_eq(blob.len(), 5);
        send("pattern 42");
        let m = expect("^got PATTERN (\\d+)$");
        assert_eq(m[1], "42");
        "#,
    );
    udp_client(client.path(), &server.addr())
        .assert()
        .success()
        .stderr(contains("ok: "));
}

#[test]
fn stream_reads_see_datagrams_back_to_back_and_an_empty_one_ends_nothing() {
    let server = python_server("d");
    let client = script(
        r#"
        send("ab");
        send("");
        send("cd|ef");
        assert_eq(recv_until("|"), "abcd");
        assert_eq(recv_exact(2), "ef");
        send("");
        assert_eq(recv(), "");        // a message read sees it
        "#,
    );
    udp_client(client.path(), &server.addr())
        .assert()
        .success()
        .stderr(contains("ok: "));
}

/// A Python UDP server that answers any datagram with four: `abc`,
/// `def\nghi`, `\n` and `tail`.
fn four_datagram_server() -> Running {
    let program = "import socket, sys\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('127.0.0.1', 0))\n\
         print('listening on 127.0.0.1:%d' % s.getsockname()[1], file=sys.stderr, flush=True)\n\
         while True:\n\
         \x20   d, a = s.recvfrom(65536)\n\
         \x20   for r in [b'abc', b'def\\nghi', b'\\n', b'tail']: s.sendto(r, a)\n";
    let mut command = Command::new("python3");
    command.args(["-u", "-c", program]);
    Running::listening(command, None)
}

#[test]
fn recv_after_a_stream_read_gets_the_rest_of_its_datagram_first() {
    let server = four_datagram_server();
    let client = script(
        r#"
        send("go");
        assert_eq(recv_line(), "abcdef");
        assert_eq(recv(), "ghi");
        assert_eq(recv(), "\n");
        assert_eq(recv(), "tail");
        send("go");
        assert_eq(recv_exact(2), "ab");
        assert_eq(recv(), "c");
        assert_eq(recv(), "def\nghi");
        assert_eq(recv_exact(1), "\n");
        assert_eq(recv(), "tail");
        "#,
    );
    udp_client(client.path(), &server.addr())
        .assert()
        .success()
        .stderr(contains("ok: "));
}

#[test]
fn a_stream_read_after_recv_gets_the_records_left_in_its_datagram() {
    let server = python_server(r"b'\x00\x02ab\x00\x02cd'");
    let client = script(
        r#"
        send("go");
        assert_eq(recv(), "ab");
        assert_eq(recv_exact(2), "cd");
        "#,
    );
    udp_client(client.path(), &server.addr())
        .args(["--framing", "len:u16"])
        .assert()
        .success()
        .stderr(contains("ok: "));
}

#[test]
fn the_whole_records_of_a_datagram_cut_short_come_before_the_error() {
    let server = python_server(r"b'\x00\x02ab\x00\x05xy'");
    let client = script("send(\"go\");\nassert_eq(recv(), \"ab\");\nrecv();\n");
    udp_client(client.path(), &server.addr())
        .args(["--framing", "len:u16"])
        .assert()
        .code(1)
        .stderr(contains(":3:1"))
        .stderr(contains(
            "a datagram ended in the middle of a message (4 bytes left over)",
        ));
}

#[test]
fn a_stream_read_refuses_a_datagram_larger_than_max_frame_whole() {
    let server = python_server("d * 20");
    let client = script(r#"send("0123456789"); recv_until("|");"#);
    udp_client(client.path(), &server.addr())
        .args(["--max-frame", "100"])
        .assert()
        .code(1)
        .stderr(contains(
            "the peer broke the framing while we waited for bytes up to \"|\": \
             a datagram of 200 bytes arrived, larger than --max-frame (100 bytes): refused whole, not cut",
        ));
}

#[test]
fn a_udp_client_talks_to_a_socat_echo_server() {
    let port = free_udp_port();
    let mut command = Command::new("socat");
    command.args([
        "-d",
        "-d",
        &format!("UDP-RECVFROM:{port},fork,reuseaddr,bind=127.0.0.1"),
        "EXEC:cat",
    ]);
    let socat = Running::start(command, None);
    socat.wait_stderr("receiving on");
    let client = script(
        r#"
        send("one");
        assert_eq(recv(), "one");
        let second = connect();
        second.send("two");
        assert_eq(second.recv(), "two");
        "#,
    );
    udp_client(client.path(), &format!("127.0.0.1:{port}"))
        .assert()
        .success();
}

#[test]
fn ncat_talks_to_the_udp_reply_server_and_gets_replies_in_kind() {
    let server = Running::server(&["--udp", &shipped("udp_reply.rhai")]);
    // `ncat -u`: each line of stdin one datagram out, each reply printed
    // as it came.
    let mut ncat = Running::start(
        {
            let mut command = Command::new("ncat");
            command.args(["-u", "127.0.0.1", &server.port.to_string()]);
            command
        },
        None,
    );
    ncat.write_stdin("upper hi\n");
    ncat.wait_stdout("HI\n");
    ncat.write_stdin("count\n");
    ncat.wait_stdout("messages so far: 2\n");
}

#[test]
fn a_udp_client_talks_to_an_ncat_echo_server() {
    let port = free_udp_port();
    let mut command = Command::new("ncat");
    command.args([
        "-v",
        "-u",
        "-l",
        "-k",
        "127.0.0.1",
        &port.to_string(),
        "--exec",
        "/bin/cat",
    ]);
    let ncat = Running::start(command, None);
    ncat.wait_stderr("Listening on");
    let client = script(
        r#"
        send("one");
        assert_eq(recv(), "one");
        send("two");
        assert_eq(recv(), "two");
        "#,
    );
    udp_client(client.path(), &format!("127.0.0.1:{port}"))
        .assert()
        .success();
}

#[test]
fn two_peers_at_once_keep_their_own_session_variables() {
    let server_script = script(
        r#"
        let n = 0;
        fn on_message(m) { n += 1; let all = shared_add("all", 1); `${m} ${n} ${all}` }
        "#,
    );
    let server = Running::server(&["--udp", server_script.path()]);
    let a = peer(server.port);
    let b = peer(server.port);
    assert_eq!(text(exchange(&a, b"a")), "a 1 1");
    assert_eq!(text(exchange(&b, b"b")), "b 1 2");
    assert_eq!(text(exchange(&a, b"a")), "a 2 3");
    assert_eq!(text(exchange(&b, b"b")), "b 2 4");
}

#[test]
fn on_connect_replies_and_peer_names_the_source_address() {
    let server_script = script(r#"fn on_connect() { `hi ${peer()}` } fn on_message(m) { m }"#);
    let server = Running::server(&["--udp", server_script.path()]);
    let a = peer(server.port);
    let greeting = text(exchange(&a, b"x"));
    assert_eq!(
        greeting,
        format!("hi {}", a.local_addr().unwrap()),
        "the greeting comes first"
    );
    assert_eq!(text(recv(&a)), "x");
}

#[test]
fn an_idle_session_ends_through_on_disconnect_and_its_farewell_is_sent() {
    let server_script = script(
        r#"
        let n = 0;
        fn on_message(m) { n += 1; m }
        fn on_disconnect() { log(`gone after ${n}`); "farewell" }
        "#,
    );
    let server = Running::server(&["--udp", server_script.path(), "--idle-timeout", "300ms"]);
    let a = peer(server.port);
    assert_eq!(text(exchange(&a, b"x")), "x");
    let stderr = server.wait_stderr("gone after 1");
    assert!(
        stderr.contains("ended: idle for 300ms (--idle-timeout)"),
        "{stderr}"
    );
    assert_eq!(text(recv(&a)), "farewell");
    // The next datagram starts a new session.
    assert_eq!(text(exchange(&a, b"y")), "y");
}

#[test]
fn close_ends_the_session_and_the_next_datagram_starts_another() {
    let server_script = script(
        r#"
        let n = 0;
        fn on_message(m) { n += 1; if m == "bye" { close(); } `${n}` }
        fn on_disconnect() { log("closed"); }
        "#,
    );
    let server = Running::server(&["--udp", server_script.path()]);
    let a = peer(server.port);
    assert_eq!(text(exchange(&a, b"x")), "1");
    assert_eq!(text(exchange(&a, b"bye")), "2");
    server.wait_stderr("closed");
    assert_eq!(text(exchange(&a, b"x")), "1");
}

#[test]
fn past_max_sessions_the_session_idle_longest_is_evicted_and_said_so() {
    let server_script = script(
        r#"
        fn on_message(m) { m }
        fn on_disconnect() { log("on_disconnect ran"); }
        "#,
    );
    let server = Running::server(&["--udp", server_script.path(), "--max-sessions", "2"]);
    let (a, b, c) = (peer(server.port), peer(server.port), peer(server.port));
    assert_eq!(text(exchange(&a, b"a")), "a");
    assert_eq!(text(exchange(&b, b"b")), "b");
    // `a` was active after `b` came: `b` is now the idlest.
    assert_eq!(text(exchange(&a, b"a")), "a");
    assert_eq!(text(exchange(&c, b"c")), "c");
    let stderr = server.wait_stderr("on_disconnect ran");
    let b_addr = b.local_addr().unwrap().to_string();
    assert!(
        stderr.contains(&format!("[{b_addr}] on_disconnect ran")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{b_addr} evicted: 2 sessions are live (--max-sessions)"
        )),
        "{stderr}"
    );
}

#[test]
fn a_sleep_in_one_session_delays_its_replies_and_no_one_else() {
    let server_script = script(
        r#"
        fn on_message(m) {
            if m == "slow" { send("before"); sleep(2000); close(); return "after"; }
            m
        }
        fn on_disconnect() { log("slow session closed"); }
        "#,
    );
    let server = Running::server(&["--udp", server_script.path()]);
    let (slow, quick) = (peer(server.port), peer(server.port));
    assert_eq!(text(exchange(&slow, b"slow")), "before");
    // The slow session's pause holds nobody else up.
    quick
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    assert_eq!(text(exchange(&quick, b"quick")), "quick");
    assert!(!server.stderr().contains("slow session closed"));
    // What followed the pause goes out after it, the close with it.
    assert_eq!(text(recv(&slow)), "after");
    server.wait_stderr("slow session closed");
}

#[test]
fn broadcast_reaches_every_other_live_session() {
    let server_script = script(
        r#"fn on_message(m) { broadcast(`${peer()} says ${m}`); `sent to ${peers().len() - 1}` }"#,
    );
    let server = Running::server(&["--udp", server_script.path()]);
    let (a, b) = (peer(server.port), peer(server.port));
    assert_eq!(text(exchange(&a, b"hi")), "sent to 0");
    assert_eq!(text(exchange(&b, b"hello")), "sent to 1");
    assert_eq!(
        text(recv(&a)),
        format!("{} says hello", b.local_addr().unwrap())
    );
}

#[test]
fn a_framing_given_cuts_records_within_one_datagram() {
    let server_script = script(r#"fn on_message(m) { `<${m}>` }"#);
    let server = Running::server(&["--udp", server_script.path(), "--framing", "len:u16"]);
    let a = peer(server.port);
    a.send(b"\x00\x02ab\x00\x01c").unwrap();
    assert_eq!(recv(&a), b"\x00\x04<ab>");
    assert_eq!(recv(&a), b"\x00\x03<c>");
    // A record cut by the datagram's end is reported, not carried over.
    a.send(b"\x00\x05ab").unwrap();
    server.wait_stderr("a datagram ended in the middle of a message (4 bytes left over)");
}

#[test]
fn a_udp_client_to_a_port_nothing_listens_on_is_a_network_error() {
    let port = free_udp_port();
    let client = script(r#"send("anyone?"); recv();"#);
    udp_client(client.path(), &format!("127.0.0.1:{port}"))
        .assert()
        .code(4)
        .stderr(contains(format!(
            "nothing listens on udp 127.0.0.1:{port}: its host answered an earlier datagram with ICMP port unreachable"
        )));
}

#[test]
fn a_datagram_too_large_is_refused_on_send() {
    let server = python_server("d");
    let client = script("let big = blob(65508, 0x61); send(big);");
    udp_client(client.path(), &server.addr())
        .assert()
        .code(3)
        .stderr(contains(
            "cannot send: a datagram of 65508 bytes is larger than the most one UDP datagram carries (65507 bytes): not sent",
        ))
        .stderr(contains(":1:"));
    let client = script("send(blob(200, 0x61));");
    udp_client(client.path(), &server.addr())
        .args(["--max-frame", "100"])
        .assert()
        .code(3)
        .stderr(contains(
            "a datagram of 200 bytes is larger than --max-frame (100 bytes): not sent",
        ));
}

#[test]
fn a_server_reply_too_large_for_a_datagram_is_a_script_error() {
    let server_script = script(r#"fn on_message(m) { send(blob(70000, 0x61)); }"#);
    let server = Running::server(&["--udp", server_script.path()]);
    let a = peer(server.port);
    a.send(b"x").unwrap();
    let stderr = server.wait_stderr("does not fit one datagram");
    assert!(stderr.contains("a message of 70000 bytes"), "{stderr}");
}

#[test]
fn a_datagram_larger_than_max_frame_is_reported_not_cut() {
    // The client's side.
    let server = python_server("b'y' * 2000");
    let client = script(r#"send("x"); recv();"#);
    udp_client(client.path(), &server.addr())
        .args(["--max-frame", "1000"])
        .assert()
        .code(1)
        .stderr(contains(
            "a datagram of 2000 bytes arrived, larger than --max-frame (1000 bytes): refused whole, not cut",
        ));
    // The server's.
    let server_script = script(r#"fn on_message(m) { `${m.len()}` }"#);
    let server = Running::server(&["--udp", server_script.path(), "--max-frame", "1000"]);
    let a = peer(server.port);
    a.send(&[b'z'; 2000]).unwrap();
    server.wait_stderr("a datagram of 2000 bytes arrived, larger than --max-frame (1000 bytes)");
    assert_eq!(text(exchange(&a, b"ok")), "2");
}

#[test]
fn expect_close_over_udp_is_a_script_error_that_says_why() {
    let server = python_server("d");
    let client = script("send(\"x\");\nexpect_close();");
    udp_client(client.path(), &server.addr())
        .assert()
        .code(3)
        .stderr(contains("expect_close() means nothing over UDP"))
        .stderr(contains(":2:1"));
}

#[test]
fn shutdown_ends_every_session_through_on_disconnect() {
    let server_script = script(
        r#"
        fn on_message(m) { m }
        fn on_disconnect() { "server going away" }
        "#,
    );
    let mut server = Running::server(&["--udp", server_script.path()]);
    let a = peer(server.port);
    assert_eq!(text(exchange(&a, b"x")), "x");
    server.send_signal("TERM");
    assert_eq!(text(recv(&a)), "server going away");
    server.wait_exit();
    assert!(
        server
            .stderr()
            .contains("shut down: 1 sessions, 1 messages in, 2 out, 0 errors"),
        "{}",
        server.stderr()
    );
}

#[test]
fn at_shutdown_a_reply_waiting_out_a_sleep_still_goes_before_the_farewell() {
    let server_script = script(
        r#"
        fn on_message(m) { sleep(1000); "late" }
        fn on_disconnect() { "bye" }
        "#,
    );
    let mut server = Running::server(&["--udp", "-v", server_script.path()]);
    let a = peer(server.port);
    a.send_to(b"sleepy", ("127.0.0.1", server.port)).unwrap();
    server.wait_stderr("< sleepy");
    server.send_signal("TERM");
    assert_eq!(text(recv(&a)), "late");
    assert_eq!(text(recv(&a)), "bye");
    server.wait_exit();
}

#[test]
fn udp_with_tls_or_without_a_script_is_a_usage_error() {
    tcpscript()
        .args(["server", "--udp", "--tls", "--echo"])
        .assert()
        .code(2);
    // --record is for the manual server, over UDP as over TCP.
    tcpscript()
        .args(["server", "--udp", "--echo", "--record", "x.rhai"])
        .assert()
        .code(2);
}

/// One datagram to `to` and the one that comes back.
fn round_trip(socket: &std::net::UdpSocket, to: &str, message: &str) -> String {
    socket.send_to(message.as_bytes(), to).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match socket.recv_from(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            received => {
                let n = received.unwrap().0;
                return String::from_utf8_lossy(&buf[..n]).into_owned();
            }
        }
    }
}

#[test]
fn a_manual_udp_server_session_is_recorded_and_replays_as_a_udp_server() {
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("mock.rhai");
    let mut command = std::process::Command::new(crate::support::BIN);
    command.args(["server", "--udp", "--listen", "127.0.0.1:0", "--record"]);
    command.arg(&recording);
    let mut server = Running::listening(command, None);
    let socket = |_| {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(crate::support::PATIENCE))
            .unwrap();
        socket
    };
    let (a, b) = (socket(0), socket(1));
    // Two peers, their datagrams interleaved: each is its own session.
    for (peer, sent, typed) in [
        (&a, "hello", "hi there"),
        (&b, "ping", "pong"),
        (&a, "again", "bye"),
    ] {
        peer.send_to(sent.as_bytes(), server.addr()).unwrap();
        server.wait_stdout(&format!("] {sent}"));
        server.write_stdin(&format!("{typed}\n"));
        let mut buf = [0u8; 64];
        let n = loop {
            match peer.recv_from(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                received => break received.unwrap().0,
            }
        };
        assert_eq!(&buf[..n], typed.as_bytes());
    }
    server.close_stdin();
    assert!(server.wait_exit().success());
    let script = std::fs::read_to_string(&recording).unwrap();
    assert!(script.contains("listening on udp 127.0.0.1:"), "{script}");
    assert!(
        script.contains(": 2 sessions, 3 messages answered"),
        "{script}"
    );
    assert!(script.contains(" --udp\n"), "{script}");
    // The recording is a UDP server answering as the person did.
    let mock = Running::server(&["--udp", recording.to_str().unwrap()]);
    let c = socket(2);
    assert_eq!(round_trip(&c, &mock.addr(), "ping"), "pong");
    assert_eq!(round_trip(&c, &mock.addr(), "hello"), "hi there");
    assert_eq!(round_trip(&c, &mock.addr(), "again"), "bye");
}

#[test]
fn the_manual_server_prints_each_datagram_and_answers_it_with_a_line_of_stdin() {
    // The tutorial's server, over UDP: a person types each reply.
    let mut command = std::process::Command::new(crate::support::BIN);
    command.args(["server", "--udp", "--listen", "127.0.0.1:0"]);
    let mut server = Running::listening(command, None);
    assert!(server.stderr().contains("listening on udp 127.0.0.1:"));
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(crate::support::PATIENCE))
        .unwrap();
    let mut buf = [0u8; 64];
    for (sent, typed) in [("hello", "hi there"), ("again", "bye")] {
        socket.send_to(sent.as_bytes(), server.addr()).unwrap();
        server.wait_stdout(&format!("] {sent}"));
        server.write_stdin(&format!("{typed}\n"));
        let n = loop {
            match socket.recv_from(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                received => break received.unwrap().0,
            }
        };
        assert_eq!(&buf[..n], typed.as_bytes());
    }
    let from = socket.local_addr().unwrap();
    assert!(server.stdout().contains(&format!("[{from}] hello")));
    server.close_stdin();
    assert!(server.wait_exit().success());
    assert!(server.stderr().contains("end of input, stopping"));
}

#[test]
fn the_manual_client_sends_each_line_as_a_datagram_and_prints_what_comes_back() {
    let server = python_server("b'<' + d + b'>'");
    tcpscript()
        .args([
            "client",
            "--udp",
            "--connect",
            &server.addr(),
            "--timeout",
            "2s",
        ])
        .write_stdin("hello\nworld\n")
        .assert()
        .success()
        .stdout("<hello>\n<world>\n")
        .stderr(contains(format!("sending to udp {}", server.addr())));
}

#[test]
fn load_mode_runs_conversations_over_udp() {
    let server = Running::server(&["--udp", "--echo", "-q"]);
    udp_client(&shipped("echo_conversation.rhai"), &server.addr())
        .args(["--concurrency", "4", "--iterations", "40"])
        .assert()
        .success()
        .stderr(contains("40 passed, 0 failed"));
}

#[test]
fn a_manual_udp_session_is_recorded_and_replays_over_udp() {
    let server = python_server("b'got ' + d.upper()");
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("session.rhai");
    tcpscript()
        .args(["client", "--udp", "--record"])
        .arg(&recording)
        .args(["--connect", &server.addr()])
        .write_stdin("hello\nping\n")
        .assert()
        .success()
        .stdout("got HELLO\ngot PING\n");
    let script = std::fs::read_to_string(&recording).unwrap();
    assert!(script.contains(" --udp\n"), "{script}");
    assert!(
        script.contains("send(\"hello\");\nassert_eq(recv(), \"got HELLO\");"),
        "{script}"
    );
    let path = recording.to_str().unwrap();
    udp_client(path, &server.addr())
        .assert()
        .success()
        .stderr(contains("(2 sent, 2 received"));
    // The replay asserts what came back: another answer fails it.
    let other = python_server("b'other ' + d");
    udp_client(path, &other.addr())
        .assert()
        .code(1)
        .stderr(contains("got HELLO"));
}
