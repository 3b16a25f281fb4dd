//! `tcpscript server SCRIPT`: hooks, per-connection state, errors that end
//! one connection only, signals.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::{LineClient, PATIENCE, Running, script, shipped, tcpscript};

#[test]
fn the_tutorial_conversation_passes_end_to_end() {
    let server = Running::server(&[&shipped("reply.rhai")]);
    tcpscript()
        .args([
            "client",
            &shipped("conversation.rhai"),
            "--connect",
            &server.addr(),
        ])
        .assert()
        .success()
        .stderr(predicates::str::contains("ok: "));
    server.wait_stderr("left after 6 messages");
}

#[test]
fn listening_line_comes_first_and_names_the_bound_port() {
    let server = Running::server(&["--echo"]);
    assert!(server.port > 0);
    assert!(
        server
            .stderr()
            .starts_with(&format!("listening on 127.0.0.1:{}\n", server.port))
    );
}

#[test]
fn each_connection_has_its_own_copy_of_top_level_variables() {
    let s = script("let n = 0;\nfn on_message(msg) { n += 1; `${n} ${msg}` }\n");
    let server = Running::server(&[s.path()]);
    let mut a = LineClient::connect(server.port);
    let mut b = LineClient::connect(server.port);
    assert_eq!(a.exchange("a"), "1 a");
    assert_eq!(b.exchange("b"), "1 b");
    assert_eq!(a.exchange("a"), "2 a");
    assert_eq!(b.exchange("b"), "2 b");
    assert_eq!(a.exchange("a"), "3 a");
}

#[test]
fn greeting_array_replies_unit_and_close() {
    let s = script(
        r#"
fn on_connect() { "hi" }
fn on_message(msg) {
    if msg == "two" { return ["one", "two"]; }
    if msg == "none" { return; }
    if msg == "bye" { close(); return "bye"; }
    send("extra");
    msg.len()
}
"#,
    );
    let server = Running::server(&[s.path()]);
    let mut c = LineClient::connect(server.port);
    assert_eq!(c.recv().unwrap(), "hi");
    c.send("two");
    assert_eq!(c.recv().unwrap(), "one");
    assert_eq!(c.recv().unwrap(), "two");
    c.send("none");
    assert_eq!(c.exchange("four"), "extra");
    assert_eq!(c.recv().unwrap(), "4");
    assert_eq!(c.exchange("bye"), "bye");
    c.expect_closed();
}

#[test]
fn a_hook_error_ends_only_its_connection_and_names_file_line_col() {
    let s =
        script("fn on_message(msg) {\n    if msg == \"boom\" { throw \"kaboom\"; }\n    msg\n}\n");
    let server = Running::server(&[s.path()]);
    let mut good = LineClient::connect(server.port);
    let mut bad = LineClient::connect(server.port);
    assert_eq!(good.exchange("before"), "before");
    bad.send("boom");
    bad.expect_closed();
    let log = server.wait_stderr("in hook `on_message`");
    assert!(log.contains(&format!("{}:2:", s.path())), "{log}");
    assert!(log.contains("in hook `on_message`"), "{log}");
    assert_eq!(good.exchange("after"), "after");
    let mut late = LineClient::connect(server.port);
    assert_eq!(late.exchange("late"), "late");
}

#[test]
fn a_runaway_hook_is_stopped_by_the_operation_limit() {
    let s = script("fn on_message(msg) {\n    if msg == \"spin\" { loop { } }\n    msg\n}\n");
    let server = Running::server(&[s.path(), "--max-ops", "100000"]);
    let mut spinner = LineClient::connect(server.port);
    spinner.send("spin");
    spinner.expect_closed();
    server.wait_stderr("operation limit");
    server.wait_stderr("in hook `on_message`");
    let mut other = LineClient::connect(server.port);
    assert_eq!(other.exchange("ok"), "ok");
}

#[test]
fn a_slow_hook_is_stopped_by_the_wall_clock_limit() {
    let s = script("fn on_message(msg) { let x = 0; loop { x += 1; } }\n");
    let server = Running::server(&[s.path(), "--max-ops", "0", "--hook-timeout", "200ms"]);
    let mut c = LineClient::connect(server.port);
    c.send("spin");
    c.expect_closed();
    server.wait_stderr("wall-clock limit of 200ms");
}

#[test]
fn sleep_in_one_connection_does_not_delay_another() {
    let s = script(
        "fn on_message(msg) {\n    if msg == \"slow\" { sleep(3000); }\n    `done ${msg}`\n}\n",
    );
    let server = Running::server(&[s.path()]);
    let mut slow = LineClient::connect(server.port);
    let mut fast = LineClient::connect(server.port);
    slow.send("slow");
    // While the slow connection sleeps, the other is answered at once.
    assert_eq!(fast.exchange("fast"), "done fast");
    slow.stream().set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let pending = crate::support::read_some(slow.stream(), &mut byte);
    assert!(
        matches!(&pending, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the slow reply should still be sleeping: {pending:?}"
    );
    slow.stream().set_nonblocking(false).unwrap();
    assert_eq!(slow.recv().unwrap(), "done slow");
}

#[test]
fn the_idle_clock_runs_only_while_the_server_waits_for_the_peer() {
    let s = script("fn on_message(msg) {\n    if msg == \"slow\" { sleep(800); }\n    msg\n}\n");
    let server = Running::server(&[s.path(), "--idle-timeout", "500ms"]);
    let mut c = LineClient::connect(server.port);
    // The hook's own sleep is longer than the idle limit: not the peer's idling.
    assert_eq!(c.exchange("slow"), "slow");
    // Each message restarts the clock: three of them 200 ms apart span
    // longer than the limit.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(c.exchange("again"), "again");
    }
    let addr = c.stream().local_addr().unwrap().to_string();
    c.expect_closed();
    server.wait_stderr(&format!("{addr} closed: idle for 500ms (--idle-timeout)"));
}

#[test]
fn peer_and_log_name_the_client() {
    let s = script("fn on_connect() { log(`hello ${peer()}`); peer() }\n");
    let server = Running::server(&[s.path()]);
    let mut c = LineClient::connect(server.port);
    let local = c.stream().local_addr().unwrap().to_string();
    assert_eq!(c.recv().unwrap(), local);
    server.wait_stderr(&format!("[{local}] hello {local}"));
}

#[test]
fn verbose_shows_the_transcript() {
    let server = Running::server(&["--echo", "-v"]);
    let mut c = LineClient::connect(server.port);
    assert_eq!(c.exchange("ping"), "ping");
    server.wait_stderr("< ping");
    server.wait_stderr("> ping");
}

#[test]
fn bytes_that_are_not_utf8_come_back_unchanged() {
    let s = script("fn on_message(msg) { msg }\n");
    let server = Running::server(&[s.path(), "--framing", "raw"]);
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let payload = b"\xff\xfe\x00binary\xc3(";
    stream.write_all(payload).unwrap();
    let mut got = vec![0u8; payload.len()];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(&got, payload);
}

#[test]
fn a_peer_that_closes_mid_line_still_gets_its_last_message_served() {
    let s = script("fn on_message(msg) { log(`got ${msg}`); }\n");
    let server = Running::server(&[s.path()]);
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream.write_all(b"partial").unwrap();
    drop(stream);
    server.wait_stderr("got partial");
}

#[test]
fn sigterm_stops_the_server_with_a_summary_and_exit_0() {
    let s = script("fn on_message(msg) { msg }\nfn on_disconnect() { \"server going away\" }\n");
    let mut server = Running::server(&[s.path()]);
    let mut c = LineClient::connect(server.port);
    assert_eq!(c.exchange("x"), "x");
    server.send_signal("TERM");
    // on_disconnect still runs and its reply goes out before the close.
    assert_eq!(c.recv().unwrap(), "server going away");
    c.expect_closed();
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0));
    let log = server.stderr();
    assert!(
        log.contains("shut down: 1 connections, 1 messages in, 2 out, 0 errors"),
        "{log}"
    );
}

#[test]
fn a_port_in_use_is_a_network_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    tcpscript()
        .args(["server", "--echo", "--listen", &addr])
        .assert()
        .code(4)
        .stderr(predicates::str::contains(format!(
            "cannot listen on {addr}"
        )));
}

#[test]
fn a_script_that_does_not_compile_is_exit_3_with_its_position() {
    let s = script("fn on_message(msg) {\n    msg +\n}\n");
    tcpscript()
        .args(["server", s.path(), "--listen", "127.0.0.1:0"])
        .assert()
        .code(3)
        .stderr(predicates::str::contains(format!("--> {}:3:1", s.path())));
}

#[test]
fn a_top_level_error_is_exit_3() {
    let s = script("let x = 1;\nlet y = x.nothing();\n");
    tcpscript()
        .args(["server", s.path(), "--listen", "127.0.0.1:0"])
        .assert()
        .code(3)
        .stderr(predicates::str::contains(format!("--> {}:2:", s.path())));
}

#[test]
fn server_params_reach_the_script() {
    let s = script("let greeting = param(\"greeting\", \"hi\");\nfn on_connect() { greeting }\n");
    let server = Running::server(&[s.path(), "--set", "greeting=salut"]);
    let mut c = LineClient::connect(server.port);
    assert_eq!(c.recv().unwrap(), "salut");
}

#[test]
fn many_clients_at_once_are_all_served() {
    let server = Running::server(&[&shipped("reply.rhai"), "-q"]);
    let mut clients: Vec<LineClient> = (0..50).map(|_| LineClient::connect(server.port)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&format!("n{i}"));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.recv().unwrap(), format!("echo 1: n{i}"));
    }
}

#[test]
fn hooks_route_messages_with_regular_expressions() {
    let s = script(
        r#"
fn on_message(msg) {
    let add = msg.captures("^add (\\d+) (\\d+)$");
    if add != () { return `${parse_int(add[1]) + parse_int(add[2])}`; }
    if msg.matches("^(hi|hello)\\b") { return "greetings"; }
    "?"
}
"#,
    );
    let server = Running::server(&[s.path()]);
    let mut c = LineClient::connect(server.port);
    assert_eq!(c.exchange("add 20 22"), "42");
    assert_eq!(c.exchange("hello there"), "greetings");
    assert_eq!(c.exchange("hiya"), "?");
}

#[test]
fn sigint_and_sigterm_right_after_listening_stop_it_gracefully() {
    // Both signals, sent as early as a client could: summary and exit 0.
    for signal in ["TERM", "INT"] {
        let mut server = Running::server(&["--echo"]);
        server.send_signal(signal);
        assert_eq!(server.wait_exit().code(), Some(0), "SIG{signal}");
        assert!(
            server
                .wait_stderr("shut down: 0 connections")
                .contains("shut down")
        );
    }
}
