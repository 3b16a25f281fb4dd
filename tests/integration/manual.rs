//! Manual mode (no SCRIPT): the tutorial's programs, driven by piped stdin.

use std::process::Command;

use predicates::str::contains;

use crate::support::{BIN, LineClient, Running, script, shipped, tcpscript};

#[test]
fn client_sends_stdin_lines_prints_replies_and_stops_at_exit() {
    let server = Running::server(&[&shipped("reply.rhai")]);
    tcpscript()
        .args(["client", "--connect", &server.addr()])
        .write_stdin("hello\nupper piped\nexit\nnever sent\n")
        .assert()
        .success()
        .stdout(contains("welcome to the tcpscript tutorial server"))
        .stdout(contains("PIPED\nbye after 2 messages\n"));
    server.wait_stderr("left after 2 messages");
}

#[test]
fn client_stops_at_end_of_input_too() {
    let server = Running::server(&["--echo", "-q"]);
    tcpscript()
        .args(["client", "--connect", &server.addr()])
        .write_stdin("one\ntwo\n")
        .assert()
        .success()
        .stdout("one\ntwo\n");
}

#[test]
fn client_connect_refused_is_exit_4() {
    let port = crate::support::closed_port();
    tcpscript()
        .args(["client", "--connect", &format!("127.0.0.1:{port}")])
        .write_stdin("x\n")
        .assert()
        .code(4);
}

#[test]
fn server_answers_each_message_with_the_next_stdin_line() {
    let mut server = Running::server_with_input(&[], Some("first reply\nsecond reply\nexit\n"));
    let mut c = LineClient::connect(server.port);
    let me = c.stream().local_addr().unwrap().to_string();
    assert_eq!(c.exchange("hello"), "first reply");
    assert_eq!(c.exchange("again"), "second reply");
    // Answering `exit` ends that client, as in the tutorial.
    assert_eq!(c.exchange("bye"), "exit");
    c.expect_closed();
    let out = server.wait_stdout(&format!("[{me}] bye"));
    assert!(
        out.contains(&format!("[{me}] hello\n[{me}] again\n")),
        "{out}"
    );
    // No reply left and no client: the end of stdin stops the server.
    assert_eq!(server.wait_exit().code(), Some(0));
    assert!(
        server.stderr().contains("end of input, stopping"),
        "{}",
        server.stderr()
    );
}

#[test]
fn server_stops_at_the_end_of_input_with_a_client_waiting_for_a_reply() {
    let mut server = Running::server_with_input(
        &[],
        Some(
            "only reply
",
        ),
    );
    let mut c = LineClient::connect(server.port);
    assert_eq!(c.exchange("hello"), "only reply");
    c.send("anyone?");
    c.expect_closed();
    assert_eq!(server.wait_exit().code(), Some(0));
    server.wait_stderr(": end of input, stopping");
}

#[test]
fn server_serves_the_next_client_after_one_closes_without_spinning() {
    let server = Running::server_with_input(&[], Some("r1\nr2\n"));
    let first = LineClient::connect(server.port);
    drop(first);
    server.wait_stderr("closed by peer");
    let mut second = LineClient::connect(server.port);
    assert_eq!(second.exchange("hi"), "r1");
    // One line per closed client: no busy loop printing empty messages.
    // The line is printed before the reply is sent, but reaches our pipe
    // reader on its own schedule: wait for it.
    let out = server.wait_stdout("] hi\n");
    assert_eq!(out.lines().count(), 1, "{out}");
}

#[test]
fn echo_replies_with_the_message_and_prints_nothing_per_message() {
    let mut server = Running::server(&["--echo"]);
    let mut a = LineClient::connect(server.port);
    let mut b = LineClient::connect(server.port);
    assert_eq!(a.exchange("ping a"), "ping a");
    assert_eq!(b.exchange("ping b"), "ping b");
    drop((a, b));
    // A load test against it must not turn into a line per message.
    server.send_signal("TERM");
    server.wait_exit();
    assert_eq!(server.stdout(), "");
    assert!(!server.stderr().contains("ping"), "{}", server.stderr());
}

#[test]
fn echo_with_v_shows_each_message_with_the_peer() {
    let server = Running::server(&["--echo", "-v"]);
    let mut a = LineClient::connect(server.port);
    assert_eq!(a.exchange("ping a"), "ping a");
    let me = a.stream().local_addr().unwrap().to_string();
    let log = server.wait_stderr(" < ping a");
    assert!(log.contains(&format!("{me} +")), "{log}");
}

#[test]
fn echo_and_a_script_cannot_be_combined() {
    let mut cmd = Command::new(BIN);
    cmd.args(["server", "x.rhai", "--echo"]);
    assert_eq!(cmd.output().unwrap().status.code(), Some(2));
}

#[test]
fn server_stops_at_the_end_of_input_while_no_client_is_connected() {
    tcpscript()
        .args(["server", "--listen", "127.0.0.1:0"])
        .write_stdin("")
        .assert()
        .success()
        .stderr(contains("end of input, stopping"));
}

#[test]
fn server_cuts_a_line_of_input_longer_than_max_frame() {
    let mut server = Running::server(&["--max-frame", "1KiB"]);
    let mut c = LineClient::connect(server.port);
    c.send("hi");
    server.wait_stdout("] hi\n");
    server.write_stdin(&format!("{}\n", "z".repeat(4 * 1024 * 1024)));
    assert_eq!(c.recv().unwrap(), "z".repeat(1024));
    server.wait_stderr(
        "a line of input of 4194304 bytes is longer than --max-frame: only its first 1024 bytes are used",
    );
}

fn assert_no_raw_controls(text: &str) {
    for raw in ['\u{1b}', '\u{7}', '\0'] {
        assert!(!text.contains(raw), "raw {raw:?} in:\n{text:?}");
    }
}

#[test]
fn client_prints_a_peers_controls_escaped() {
    let hostile = script("fn on_message(msg) {\n    \"\\x1b]0;TITLE\\x07\\x1b[2J\\x00 end\"\n}\n");
    let server = Running::server(&[hostile.path()]);
    let output = tcpscript()
        .args(["client", "--connect", &server.addr()])
        .write_stdin("hi\n")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let stdout = String::from_utf8(output).unwrap();
    assert_no_raw_controls(&stdout);
    assert_eq!(
        stdout,
        "<19 bytes: 1b 5d 30 3b 54 49 54 4c 45 07 1b 5b 32 4a 00 20 65 6e 64>\n"
    );
}

#[test]
fn client_reports_a_peer_breaking_the_framing_as_that_with_exit_1() {
    // The tutorial server's greeting is longer than 16 bytes.
    let server = Running::server(&[&shipped("reply.rhai")]);
    tcpscript()
        .args(["client", "--connect", &server.addr(), "--max-frame", "16"])
        .write_stdin("hello\n")
        .assert()
        .code(1)
        .stderr(contains(format!(
            "error: the peer {} broke the framing: ",
            server.addr()
        )))
        .stderr(contains("larger than --max-frame"))
        .stderr(contains("cannot connect").count(0));
}
