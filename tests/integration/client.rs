//! `tcpscript client SCRIPT`: conversations, their failures and exit codes.
//! The servers here are tcpscript's own echo or a plain `std::net` peer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::thread;

use predicates::prelude::*;
use predicates::str::contains;

use crate::support::{Running, script, tcpscript};

fn client(s: &crate::support::Script, server: &Running) -> assert_cmd::Command {
    let mut cmd = tcpscript();
    cmd.args(["client", s.path(), "--connect", &server.addr()]);
    cmd
}

/// A server script for these tests: echoes, with a few commands.
const SERVER: &str = r#"
fn on_message(msg) {
    if msg == "quit" { close(); return "bye"; }
    if msg == "silence" { return; }
    if msg == "id" { return "you are #17"; }
    if msg == "binary" { return unhex("00ff10"); }
    if msg == "two" { return ["one", "two"]; }
    `echo: ${msg}`
}
"#;

fn server() -> (Running, crate::support::Script) {
    let s = script(SERVER);
    (Running::server(&[s.path()]), s)
}

#[test]
fn a_passing_conversation_exits_0_with_a_summary() {
    let (server, _s) = server();
    let s = script(
        r#"
send("hello");
assert_eq(recv(), "echo: hello");
send("id");
let m = expect("^you are #(\\d+)$");
assert_eq(m[0], "you are #17");
assert_eq(parse_int(m[1]), 17);
send("silence");
assert_eq(try_recv(100), ());
assert_eq(try_recv(), ());
send("two");
assert_eq(recv(), "one");
assert_eq(try_recv(), "two");
send("binary");
assert_eq(hex(recv_blob()), "00ff10");
send("quit");
assert_eq(recv(), "bye");
expect_close();
"#,
    );
    client(&s, &server)
        .assert()
        .success()
        .stderr(contains("ok: ").and(contains("6 sent, 6 received")));
}

#[test]
fn a_wrong_reply_is_exit_1_with_position_values_and_transcript() {
    let (server, _s) = server();
    let s = script("send(\"hello\");\nlet r = recv();\nassert_eq(r, \"echo: hallo\");\n");
    let out = client(&s, &server)
        .assert()
        .code(1)
        .get_output()
        .stderr
        .clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains(&format!("--> {}:3:1", s.path())), "{text}");
    assert!(
        text.contains("3 | assert_eq(r, \"echo: hallo\");"),
        "{text}"
    );
    assert!(text.contains("expected: \"echo: hallo\""), "{text}");
    assert!(text.contains("actual: \"echo: hello\""), "{text}");
    assert!(
        text.contains("> hello") && text.contains("< echo: hello"),
        "{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "no colour when stderr is not a terminal: {text:?}"
    );
}

#[test]
fn a_regex_that_does_not_match_shows_pattern_and_message() {
    let (server, _s) = server();
    let s = script("send(\"x\");\nexpect(\"^you are #(\\\\d+)$\");\n");
    client(&s, &server)
        .assert()
        .code(1)
        .stderr(contains(format!("{}:2:1", s.path())))
        .stderr(contains("expected: /^you are #(\\d+)$/"))
        .stderr(contains("actual: \"echo: x\""));
}

#[test]
fn a_receive_that_times_out_is_exit_1() {
    let (server, _s) = server();
    let s = script("send(\"silence\");\nrecv();\n");
    client(&s, &server)
        .args(["--timeout", "300ms"])
        .assert()
        .code(1)
        .stderr(contains("timed out after 300ms waiting for a message"))
        .stderr(contains(format!("{}:2:1", s.path())));
    let s = script("send(\"silence\");\nrecv(100);\n");
    client(&s, &server)
        .assert()
        .code(1)
        .stderr(contains("timed out after 100ms"));
}

#[test]
fn an_unexpected_close_is_exit_1_and_expect_close_checks_the_close() {
    let (server, _s) = server();
    let s = script("send(\"quit\");\nrecv();\nrecv();\n");
    client(&s, &server)
        .assert()
        .code(1)
        .stderr(contains("the peer closed the connection"))
        .stderr(contains(format!("{}:3:1", s.path())));
    let s = script("send(\"hi\");\nexpect_close(200);\n");
    client(&s, &server)
        .assert()
        .code(1)
        .stderr(contains("a message arrived"))
        .stderr(contains("actual: \"echo: hi\""));
    let s = script("expect_close(100);\n");
    client(&s, &server)
        .assert()
        .code(1)
        .stderr(contains("it stayed open for 100ms"));
}

#[test]
fn assert_and_fail_are_expectation_failures() {
    let (server, _s) = server();
    let s = script("assert(1 + 1 == 3, \"arithmetic is broken\");\n");
    client(&s, &server)
        .assert()
        .code(1)
        .stderr(contains("arithmetic is broken"));
    let s = script("\nfail(\"stop here\");\n");
    client(&s, &server)
        .assert()
        .code(1)
        .stderr(contains("stop here"))
        .stderr(contains(format!("{}:2:1", s.path())));
}

#[test]
fn a_script_error_is_exit_3_and_a_syntax_error_never_connects() {
    let (server, _s) = server();
    let s = script("let x = 5;\nx.no_such_method();\n");
    client(&s, &server)
        .assert()
        .code(3)
        .stderr(contains(format!("{}:2:3", s.path())));
    let s = script("send(\"x\"\n");
    tcpscript()
        .args(["client", s.path(), "--connect", "127.0.0.1:1"])
        .assert()
        .code(3)
        .stderr(contains(format!("{}:", s.path())));
    let s = script("expect(\"(unclosed\");\n");
    client(&s, &server)
        .assert()
        .code(3)
        .stderr(contains("invalid regular expression"));
}

#[test]
fn connect_to_an_address_that_is_none_is_a_script_error() {
    let (server, _s) = server();
    let s = script("let c = connect(\"garbage\");\n");
    client(&s, &server)
        .assert()
        .code(3)
        .stderr(contains("bad address `garbage`"))
        .stderr(contains(format!("{}:1:9", s.path())));
}

#[test]
fn connect_refused_is_exit_4() {
    let port = crate::support::closed_port();
    let s = script("send(\"x\");\n");
    tcpscript()
        .args([
            "client",
            s.path(),
            "--connect",
            &format!("127.0.0.1:{port}"),
        ])
        .assert()
        .code(4)
        .stderr(contains(format!("cannot connect to 127.0.0.1:{port}")));
}

#[test]
fn connect_retry_waits_for_a_server_that_is_still_starting() {
    let listener_addr: std::net::SocketAddr =
        format!("127.0.0.1:{}", crate::support::closed_port())
            .parse()
            .unwrap();
    let s = script("send(\"late\");\nassert_eq(recv(), \"late\");\n");
    let mut client = std::process::Command::new(crate::support::BIN);
    client.args([
        "client",
        s.path(),
        "--connect",
        &listener_addr.to_string(),
        "--connect-retry",
        "10s",
    ]);
    let mut running = Running::start(client, None);
    // Bound only after the client has started trying.
    thread::sleep(std::time::Duration::from_millis(200));
    let listener = TcpListener::bind(listener_addr).unwrap();
    let (stream, _) = listener.accept().unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    (&stream).write_all(line.as_bytes()).unwrap();
    assert_eq!(running.wait_exit().code(), Some(0), "{}", running.stderr());
}

#[test]
fn a_reset_connection_is_exit_4() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let peer = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        // Read only part of what arrived: closing with unread data resets.
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).unwrap();
        drop(stream);
    });
    let s = script("send(\"abcdef\");\nrecv();\n");
    tcpscript()
        .args(["client", s.path(), "--connect", &addr])
        .assert()
        .code(4)
        .stderr(contains("connection error"))
        .stderr(contains(format!("{}:2:1", s.path())));
    peer.join().unwrap();
}

#[test]
fn params_env_and_their_errors() {
    let (server, _s) = server();
    let s = script(
        r#"
let name = param("name");
let count = param("count", 1);
assert_eq(count + 1, 4);
assert_eq(param("missing", "dflt"), "dflt");
assert_eq(env("TCPSCRIPT_TEST_ENV"), "from env");
assert_eq(env("TCPSCRIPT_TEST_UNSET"), ());
send(name);
assert_eq(recv(), "echo: Ada");
"#,
    );
    client(&s, &server)
        .args(["--set", "name=Ada", "--set", "count=3"])
        .env("TCPSCRIPT_TEST_ENV", "from env")
        .assert()
        .success();
    client(&s, &server)
        .args(["--set", "count=3"])
        .env("TCPSCRIPT_TEST_ENV", "from env")
        .assert()
        .code(2)
        .stderr(contains(
            "parameter `name` is not set: pass --set name=VALUE",
        ));
    client(&s, &server)
        .args(["--set", "name=Ada", "--set", "count=three"])
        .assert()
        .code(2)
        .stderr(contains("parameter `count` must be an integer"));
}

#[test]
fn verbose_prints_the_transcript_and_quiet_prints_nothing() {
    let (server, _s) = server();
    let s = script("send(\"hello\");\nrecv();\nlog(\"done\");\n");
    client(&s, &server).arg("-v").assert().success().stderr(
        contains("> hello")
            .and(contains("< echo: hello"))
            .and(contains("done")),
    );
    client(&s, &server).arg("-q").assert().success().stderr("");
}

#[test]
fn bad_flags_and_unreadable_scripts_are_usage_errors() {
    tcpscript()
        .args(["client", "--timeout", "soon"])
        .assert()
        .code(2);
    tcpscript()
        .args(["client", "--framing", "morse"])
        .assert()
        .code(2);
    tcpscript().args(["frobnicate"]).assert().code(2);
    tcpscript()
        .args(["client", "/nonexistent/conversation.rhai"])
        .assert()
        .code(2)
        .stderr(contains("cannot read `/nonexistent/conversation.rhai`"));
}

#[test]
fn eval_is_refused() {
    let s = script("eval(\"1\");\n");
    tcpscript()
        .args(["check", s.path()])
        .assert()
        .code(3)
        .stderr(contains(format!("{}:1:1", s.path())));
}

#[test]
fn case_timeout_bounds_a_single_run() {
    let (server, _s) = server();
    let s = script("send(\"x\");\nrecv();\nloop {}\n");
    client(&s, &server)
        .args(["--case-timeout", "1s"])
        .assert()
        .code(3)
        .stderr(contains(
            "the conversation ran longer than its time limit of 1s (see --case-timeout)",
        ))
        .stderr(contains(format!("{}:3:", s.path())));
}

#[test]
fn a_load_mode_conversation_has_a_time_limit() {
    let (server, _s) = server();
    let s = script("send(\"x\");\nrecv();\nloop {}\n");
    client(&s, &server)
        .args([
            "--case-timeout",
            "1s",
            "--concurrency",
            "2",
            "--iterations",
            "2",
        ])
        .assert()
        .code(3)
        .stderr(contains("2 × "))
        .stderr(contains("time limit of 1s (see --case-timeout)"));
}

/// A server whose every reply is a terminal attack (title, clear screen, NUL).
const HOSTILE: &str = "fn on_message(msg) {\n    \"\\x1b]0;TITLE\\x07\\x1b[2J\\x00 end\"\n}\n";

/// That reply as `escape_controls` writes it.
const HOSTILE_ESCAPED: &str = "\\u{1b}]0;TITLE\\u{7}\\u{1b}[2J\\0 end";

fn hostile() -> (Running, crate::support::Script) {
    let s = script(HOSTILE);
    (Running::server(&[s.path()]), s)
}

fn assert_no_raw_controls(text: &str) {
    for raw in ['\u{1b}', '\u{7}', '\0'] {
        assert!(!text.contains(raw), "raw {raw:?} in:\n{text:?}");
    }
}

fn stderr_of(cmd: &mut assert_cmd::Command, code: i32) -> String {
    let output = cmd.assert().code(code).get_output().clone();
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn log_escapes_a_peers_controls() {
    let (server, _s) = hostile();
    let s = script("send(\"hi\");\nlog(recv());\n");
    let stderr = stderr_of(&mut client(&s, &server), 0);
    assert_no_raw_controls(&stderr);
    assert!(stderr.contains(HOSTILE_ESCAPED), "{stderr}");
}

#[test]
fn a_script_error_quoting_a_peers_text_escapes_it() {
    let (server, _s) = hostile();
    let s = script("send(\"hi\");\nlet n = parse_int(recv());\n");
    let stderr = stderr_of(&mut client(&s, &server), 3);
    assert_no_raw_controls(&stderr);
    assert!(
        stderr.contains(&format!("Error parsing integer number '{HOSTILE_ESCAPED}'")),
        "{stderr}"
    );
}

#[test]
fn a_load_mode_failure_summary_escapes_a_peers_controls() {
    let (server, _s) = hostile();
    let s = script("send(\"hi\");\nfail(recv());\n");
    let stderr = stderr_of(
        client(&s, &server).args(["--concurrency", "1", "--iterations", "2"]),
        1,
    );
    assert_no_raw_controls(&stderr);
    assert!(
        stderr.contains(&format!("2 × {}:2:1: {HOSTILE_ESCAPED}", s.path())),
        "{stderr}"
    );
}

#[test]
fn json_result_event_has_the_place_the_values_and_the_duration() {
    let (server, _s) = server();
    let s = script("send(\"a\");\nassert_eq(recv(), \"echo: b\");\n");
    let output = client(&s, &server)
        .arg("--json")
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let result: serde_json::Value = String::from_utf8(output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "result")
        .expect("a result event");
    assert_eq!(result["status"], "failed");
    assert_eq!(result["exit_code"], 1);
    assert_eq!(result["message"], "values differ");
    assert_eq!(result["file"], s.path());
    assert_eq!(result["line"], 2);
    assert_eq!(result["column"], 1);
    assert_eq!(result["expected"], "\"echo: b\"");
    assert_eq!(result["actual"], "\"echo: a\"");
    assert!(result["duration"].as_f64().unwrap() > 0.0, "{result}");
}

#[test]
fn a_timeout_with_part_of_a_message_shows_the_bytes_pending() {
    // A raw server answers without a line end; the client reads lines.
    let raw = script("fn on_message(msg) {\n    \"HTTP/1.1 200\"\n}\n");
    let server = Running::server(&[raw.path(), "--framing", "raw"]);
    let s = script("send(\"GET\");\nrecv(300);\n");
    client(&s, &server)
        .assert()
        .code(1)
        .stderr(contains(
            "timed out after 300ms waiting for a message: only part of one arrived",
        ))
        .stderr(contains(
            "actual: 12 bytes without a line end: \"HTTP/1.1 200\"",
        ))
        .stderr(contains("nothing arrived").not());
}

#[test]
fn expect_close_takes_a_reset_for_the_close_it_is() {
    // A peer that closes with bytes of ours unread resets the connection
    // (the tutorial's server, closing after its last reply, does so when
    // the client has already sent its next line).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let peer = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).unwrap();
        // Dropped with "i\n" unread: an RST, not a FIN.
    });
    let s = script("send(\"hi\");\nexpect_close();\n");
    tcpscript()
        .args([
            "client",
            s.path(),
            "--connect",
            &format!("127.0.0.1:{port}"),
        ])
        .assert()
        .success();
    peer.join().unwrap();
}

#[test]
fn a_script_framing_larger_than_max_frame_is_refused_before_anything_connects() {
    let message = "FRAMING bytes:100: messages of 100 bytes are larger than --max-frame (10 bytes)";
    let s = script("const FRAMING = \"bytes:100\";\nrecv();\n");
    tcpscript()
        .args(["client", s.path(), "--max-frame", "10"])
        .args(["--connect", &crate::support::closed_port().to_string()])
        .assert()
        .code(3)
        .stderr(contains(message));
    let s = script("const FRAMING = \"bytes:100\";\nfn on_message(m) { m }\n");
    tcpscript()
        .args([
            "server",
            s.path(),
            "--max-frame",
            "10",
            "--listen",
            "127.0.0.1:0",
        ])
        .assert()
        .code(3)
        .stderr(contains(message));
}
