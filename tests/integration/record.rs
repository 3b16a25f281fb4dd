//! `--record FILE`: a manual session, piped on stdin, written down as a
//! script; the script replayed against the same peer (passes) and against
//! a peer that changed (fails where it changed).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use predicates::prelude::*;
use predicates::str::contains;

use crate::support::{BIN, LineClient, Running, script, shipped, tcpscript};

/// The server a person pokes at. Its ids and times come from `--set`, so
/// each run can give different values, as a real server would.
const SERVER: &str = r#"
let count = 0;
fn on_connect() { `welcome, you are ${peer()}` }
fn on_message(msg) {
    count += 1;
    if msg == "exit" { close(); return "bye"; }
    if msg == "hello" { return param("hello", "hi"); }
    if msg == "id" { return `session ${param("token")} at ${param("time")}`; }
    if msg == "two" { return ["first", "second"]; }
    if msg == "bin" { return unhex("00ff10"); }
    `echo ${count}: ${msg}`
}
"#;

fn server(s: &crate::support::Script, sets: &[&str]) -> Running {
    let mut args = vec![s.path()];
    for set in sets {
        args.extend(["--set", set]);
    }
    Running::server(&args)
}

fn record_client(file: &Path, server: &Running, extra: &[&str], input: &str) -> String {
    let out = tcpscript()
        .args(["client", "--connect", &server.addr(), "--record"])
        .arg(file)
        .args(extra)
        .write_stdin(input)
        .assert()
        .success()
        .get_output()
        .stderr
        .clone();
    String::from_utf8(out).unwrap()
}

fn replay(file: &Path, server: &Running) -> assert_cmd::assert::Assert {
    tcpscript()
        .arg("client")
        .arg(file)
        .args(["--connect", &server.addr()])
        .assert()
}

fn check(file: &Path) {
    tcpscript()
        .arg("check")
        .arg(file)
        .assert()
        .success()
        .stderr(contains("ok: "));
}

/// `--> FILE:LINE:` for the line of `file` that contains `text`.
fn arrow_to(file: &Path, text: &str) -> String {
    let source = std::fs::read_to_string(file).unwrap();
    let line = source
        .lines()
        .position(|l| l.contains(text))
        .unwrap_or_else(|| panic!("{text:?} not in:\n{source}"));
    format!("--> {}:{}:", file.display(), line + 1)
}

fn recording_in(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[test]
fn a_client_session_replays_and_fails_where_the_server_changed() {
    let s = script(SERVER);
    let first = server(&s, &["token=a1b2c3d4e5", "time=2024-05-01T12:00:00Z"]);
    let dir = tempfile::tempdir().unwrap();
    let file = recording_in(&dir, "session.rhai");
    let stderr = record_client(&file, &first, &[], "hello\nid\ntwo\nadd 2 3\nexit\n");
    assert!(stderr.contains("recorded 5 exchanges to"), "{stderr}");

    let text = std::fs::read_to_string(&file).unwrap();
    for expected in [
        "// Recorded by `tcpscript client --record` on ",
        &format!("// against {}.", first.addr()),
        "// The greeting, before anything was sent.\n\
         expect(\"^welcome, you are \\\\d+\\\\.\\\\d+\\\\.\\\\d+\\\\.\\\\d+:\\\\d+$\"); // recorded: \"welcome, you are 127.0.0.1:",
        "send(\"hello\");\nassert_eq(recv(), \"hi\");\n",
        "send(\"id\");\nexpect(\"^session [0-9a-f]+ at \\\\d{4}-\\\\d{2}-\\\\d{2}T\\\\d{2}:\\\\d{2}:\\\\d{2}Z$\"); \
         // recorded: \"session a1b2c3d4e5 at 2024-05-01T12:00:00Z\"\n",
        "send(\"two\");\nassert_eq(recv(), \"first\");\nassert_eq(recv(), \"second\");\n",
        // What was sent and echoed back stays literal; the count does not.
        "expect(\"^echo \\\\d+: add 2 3$\"); // recorded: \"echo 4: add 2 3\"\n",
        "send(\"exit\");\nassert_eq(recv(), \"bye\");\nexpect_close();\n",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    assert!(!text.contains("FRAMING"), "{text}");
    check(&file);

    // Same server, another run: another port, another token, another time.
    let again = server(&s, &["token=ffee00112233", "time=2031-12-31T23:59:59Z"]);
    replay(&file, &again)
        .success()
        .stderr(contains("5 sent, 7 received"));

    // A server whose greeting is unchanged but answers `hello` differently.
    let changed = server(
        &s,
        &["token=ab12", "time=2024-05-01T12:00:00Z", "hello=hey"],
    );
    replay(&file, &changed)
        .code(1)
        .stderr(contains(arrow_to(&file, "assert_eq(recv(), \"hi\");")))
        .stderr(contains("expected: \"hi\"").and(contains("actual: \"hey\"")))
        .stderr(contains("> hello"));

    // A server whose ids changed shape: the pattern no longer matches.
    let reshaped = server(&s, &["token=none", "time=yesterday"]);
    replay(&file, &reshaped)
        .code(1)
        .stderr(contains(arrow_to(&file, "expect(\"^session ")))
        .stderr(contains(
            "expected a message matching /^session [0-9a-f]+ at",
        ))
        .stderr(contains("actual: \"session none at yesterday\""));
}

#[test]
fn record_exact_keeps_every_value_literal() {
    let s = script(
        r#"fn on_message(msg) { if msg == "exit" { close(); return "bye"; } `token ${param("token")}` }"#,
    );
    let first = server(&s, &["token=a1b2c3d4e5"]);
    let dir = tempfile::tempdir().unwrap();
    let file = recording_in(&dir, "exact.rhai");
    record_client(&file, &first, &["--record-exact"], "id\nexit\n");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("send(\"id\");\nassert_eq(recv(), \"token a1b2c3d4e5\");"),
        "{text}"
    );
    assert!(!text.contains("expect("), "{text}");
    check(&file);
    replay(&file, &first).success();
    let other = server(&s, &["token=ffff0000"]);
    replay(&file, &other)
        .code(1)
        .stderr(contains("actual: \"token ffff0000\""));
}

#[test]
fn binary_replies_are_recorded_as_blobs() {
    let s = script(SERVER);
    let first = server(&s, &["token=x", "time=y"]);
    let dir = tempfile::tempdir().unwrap();
    let file = recording_in(&dir, "binary.rhai");
    record_client(&file, &first, &[], "bin\n");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("send(\"bin\");\nassert_eq(recv(), unhex(\"00ff10\"));\n"),
        "{text}"
    );
    // The input ended without `exit`: the server never closed by itself.
    assert!(!text.contains("expect_close"), "{text}");
    check(&file);
    replay(&file, &first).success();
}

#[test]
fn the_framing_in_use_is_declared_in_the_recording() {
    // The tutorial's server speaks raw: no newline is added to what is sent.
    let first = Running::server(&[&shipped("reply.rhai"), "-q"]);
    let dir = tempfile::tempdir().unwrap();
    let file = recording_in(&dir, "raw.rhai");
    record_client(
        &file,
        &first,
        &["--framing", "raw"],
        "hello\nupper piped\nexit\n",
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\nconst FRAMING = \"raw\";\n"), "{text}");
    assert!(
        text.contains("send(\"upper piped\");\nassert_eq(recv(), \"PIPED\");"),
        "{text}"
    );
    assert!(text.contains("expect_close();"), "{text}");
    check(&file);
    // No --framing on the replay: the script says it.
    replay(&file, &first).success();
}

#[test]
fn a_close_after_the_end_of_input_is_described_not_asserted() {
    let echo = Running::server(&["--echo", "-q"]);
    let dir = tempfile::tempdir().unwrap();
    let file = recording_in(&dir, "echo.rhai");
    record_client(&file, &echo, &[], "one\nexit\n");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("send(\"exit\");\nassert_eq(recv(), \"exit\");\n"),
        "{text}"
    );
    assert!(
        text.contains("// Then the input ended, and the peer closed the connection."),
        "{text}"
    );
    assert!(!text.contains("expect_close"), "{text}");
    replay(&file, &echo).success();
}

/// The manual server, recording, with `replies` typed in advance.
fn recording_server(file: &Path, replies: &str) -> Running {
    let mut command = Command::new(BIN);
    command
        .args(["server", "--listen", "127.0.0.1:0", "--record"])
        .arg(file);
    Running::listening(command, Some(replies))
}

#[test]
fn a_server_session_replays_to_a_plain_socket_client() {
    let dir = tempfile::tempdir().unwrap();
    let file = recording_in(&dir, "mock.rhai");
    let mut manual = recording_server(&file, "hi\nok pid\none\ntwo\nbinary\nexit\nhi again\none\n");
    let mut a = LineClient::connect(manual.port);
    assert_eq!(a.exchange("hello"), "hi");
    assert_eq!(a.exchange("pid 4242"), "ok pid");
    assert_eq!(a.exchange("next"), "one");
    assert_eq!(a.exchange("next"), "two");
    a.stream().write_all(b"\xff\xfe\n").unwrap();
    assert_eq!(a.recv().unwrap(), "binary");
    assert_eq!(a.exchange("bye"), "exit");
    a.expect_closed();
    let mut b = LineClient::connect(manual.port);
    assert_eq!(b.exchange("hello"), "hi again");
    assert_eq!(b.exchange("next"), "one");
    // No reply left: the session ends while this message waits.
    b.send("left waiting");
    b.expect_closed();
    assert_eq!(manual.wait_exit().code(), Some(0));
    assert!(
        manual.stderr().contains("recorded 8 exchanges to"),
        "{}",
        manual.stderr()
    );

    let text = std::fs::read_to_string(&file).unwrap();
    for expected in [
        "// Recorded by `tcpscript server --record` on ",
        "2 connections, 8 messages answered by hand.",
        "// Connection 2 got \"hi again\" instead.\n    if msg == \"hello\" {\n        return \"hi\";\n    }\n",
        "// Numbers may differ; recorded: \"pid 4242\".\n    if form == \"pid #\" {",
        "if msg == unhex(\"fffe\") {\n        return \"binary\";\n    }",
        "    if msg == \"bye\" {\n        close();\n        return \"exit\";\n    }\n",
        "// The session ended while \"left waiting\" from connection 2",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    check(&file);

    // The replay answers as the person did, counting turns per connection.
    let mock = Running::server(&[file.to_str().unwrap()]);
    let mut a = LineClient::connect(mock.port);
    assert_eq!(a.exchange("hello"), "hi");
    assert_eq!(a.exchange("pid 99"), "ok pid");
    assert_eq!(a.exchange("next"), "one");
    let mut b = LineClient::connect(mock.port);
    assert_eq!(b.exchange("next"), "one");
    assert_eq!(a.exchange("next"), "two");
    assert_eq!(a.exchange("next"), "two");
    a.stream().write_all(b"\xff\xfe\n").unwrap();
    assert_eq!(a.recv().unwrap(), "binary");
    assert_eq!(a.exchange("bye"), "exit");
    a.expect_closed();

    // A client that changed: what was never recorded gets no reply (the
    // next line read is the answer to the message after it), and is logged.
    b.send("howdy");
    assert_eq!(b.exchange("hello"), "hi");
    mock.wait_stderr("no recorded reply for howdy");
}

#[test]
fn an_interrupted_server_session_leaves_a_working_recording() {
    let dir = tempfile::tempdir().unwrap();
    let file = recording_in(&dir, "cut.rhai");
    let mut command = Command::new(BIN);
    command
        .args(["server", "--listen", "127.0.0.1:0", "--record"])
        .arg(&file);
    let mut manual = Running::listening(command, None);
    let mut c = LineClient::connect(manual.port);
    manual.write_stdin("pong\n");
    assert_eq!(c.exchange("ping"), "pong");
    manual.send_signal("TERM");
    manual.wait_exit();
    check(&file);
    let mock = Running::server(&[file.to_str().unwrap()]);
    assert_eq!(LineClient::connect(mock.port).exchange("ping"), "pong");
    // Nothing but the recording is left in its folder.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn recording_needs_manual_mode_and_a_writable_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = recording_in(&dir, "x.rhai");
    let file = file.to_str().unwrap();
    let s = script("send(1);");
    for args in [
        vec!["client", s.path(), "--record", file],
        vec!["server", s.path(), "--record", file],
        vec!["server", "--echo", "--record", file],
        vec!["client", "--record-exact"],
    ] {
        tcpscript().args(&args).assert().code(2);
    }
    // Refused before connecting (a refused connect would be exit 4).
    let port = crate::support::closed_port();
    tcpscript()
        .args(["client", "--connect", &port.to_string()])
        .args(["--record", "/nonexistent/folder/x.rhai"])
        .write_stdin("hello\n")
        .assert()
        .code(2)
        .stderr(contains("cannot record to `/nonexistent/folder/x.rhai`"));
    tcpscript()
        .args(["server", "--listen", "127.0.0.1:0", "--record"])
        .arg(dir.path())
        .assert()
        .code(2)
        .stderr(contains("cannot record to").and(contains("listening on").not()));
    assert!(!Path::new(file).exists());
}
