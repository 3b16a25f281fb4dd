//! `tcpscript check`: compile only.

use predicates::str::contains;

use crate::bad_input::{TOO_LARGE, fifo, not_a_script, too_large};
use crate::support::{closed_port, script, shipped, tcpscript};

#[test]
fn shipped_scripts_compile() {
    tcpscript()
        .args([
            "check",
            &shipped("reply.rhai"),
            &shipped("conversation.rhai"),
        ])
        .assert()
        .success()
        .stderr(contains("ok: ").count(2));
}

#[test]
fn every_broken_script_is_reported_with_its_position() {
    let good = script("let x = 1;\n");
    let bad = script("let x = 1;\nlet y = (2;\n");
    tcpscript()
        .args(["check", good.path(), bad.path()])
        .assert()
        .code(3)
        .stderr(contains(format!("--> {}:2:", bad.path())))
        .stderr(contains("2 | let y = (2;"))
        .stderr(contains("1 of 2 scripts failed to check"));
}

#[test]
fn a_missing_script_is_a_usage_error() {
    tcpscript()
        .args(["check", "/nonexistent.rhai"])
        .assert()
        .code(2)
        .stderr(contains("cannot read `/nonexistent.rhai`"));
    tcpscript().arg("check").assert().code(2);
}

/// `tcpscript check PATH` refuses it as a script: a usage error.
fn refused(path: &str, problem: &str) {
    tcpscript()
        .args(["check", path])
        .assert()
        .code(2)
        .stderr(contains(not_a_script(path, problem)))
        .stderr(contains("1 of 1 scripts failed to check"));
}

#[test]
fn a_device_is_not_read() {
    refused("/dev/zero", "it is a character device, not a regular file");
}

#[test]
fn a_fifo_is_not_opened() {
    let (_dir, path) = fifo("pipe.rhai");
    refused(&path, "it is a FIFO (named pipe), not a regular file");
}

#[test]
fn a_directory_is_not_a_script() {
    let dir = tempfile::tempdir().unwrap();
    refused(
        dir.path().to_str().unwrap(),
        "it is a directory, not a regular file",
    );
}

#[test]
fn a_script_over_the_size_limit_is_not_compiled() {
    let large = too_large("large.rhai");
    refused(large.path(), TOO_LARGE);
}

#[test]
fn an_invalid_pattern_literal_is_a_compile_error_at_the_literal() {
    let bad = script("send(\"PING\");\nexpect(\"+PONG\");\n");
    tcpscript()
        .args(["check", bad.path()])
        .assert()
        .code(3)
        .stderr(contains(
            "error: invalid regular expression given to expect(): \
             repetition operator missing expression",
        ))
        .stderr(contains(format!("--> {}:2:8", bad.path())))
        .stderr(contains("2 | expect(\"+PONG\");"))
        .stderr(contains("1 of 1 scripts failed to check"));
}

#[test]
fn invalid_patterns_given_to_methods_and_matches_are_reported() {
    for (source, at) in [
        ("let c = connect(\"x:1\");\nc.expect(\"(\");\n", "2:10"),
        (
            "fn on_message(m) {\n    if m.matches(\"[\") { m }\n}\n",
            "2:18",
        ),
        (
            "fn on_message(m) {\n    captures(m, \"a{2,1}\")\n}\n",
            "2:17",
        ),
    ] {
        let bad = script(source);
        tcpscript()
            .args(["check", bad.path()])
            .assert()
            .code(3)
            .stderr(contains("invalid regular expression given to"))
            .stderr(contains(format!("--> {}:{at}", bad.path())));
    }
}

/// Every command compiles the script first: the pattern is refused before
/// a connection is tried (the port is closed, which would be exit code 4)
/// or a server listens.
#[test]
fn an_invalid_pattern_literal_stops_a_script_before_it_runs() {
    let client = script("expect(\"+PONG\");\n");
    let addr = format!("127.0.0.1:{}", closed_port());
    tcpscript()
        .args(["client", client.path(), "--connect", &addr])
        .assert()
        .code(3)
        .stderr(contains("invalid regular expression given to expect()"))
        .stderr(contains(format!("--> {}:1:8", client.path())));
    let server = script("fn on_message(m) { m.matches(\"(\") }\n");
    tcpscript()
        .args(["server", server.path(), "--listen", "127.0.0.1:0"])
        .assert()
        .code(3)
        .stderr(contains("invalid regular expression given to matches()"))
        .stderr(contains(format!("--> {}:1:30", server.path())));
}

#[test]
fn a_framing_constant_a_run_would_refuse_fails_the_check() {
    let good = script("const FRAMING = \"len:u16\";\nconst UP_FRAMING = \"line\";\n");
    let unknown = script("const FRAMING = \"nope\";\nsend(\"x\");\n");
    let not_text = script("const DOWN_FRAMING = 5;\n");
    tcpscript()
        .args(["check", good.path(), unknown.path(), not_text.path()])
        .assert()
        .code(3)
        .stderr(contains(format!("ok: {}", good.path())))
        .stderr(contains(format!(
            "{}: FRAMING: unknown framing `nope`",
            unknown.path()
        )))
        .stderr(contains(format!(
            "{}: DOWN_FRAMING must be a string such as \"raw\" or \"len:u16\"",
            not_text.path()
        )))
        .stderr(contains("2 of 3 scripts failed to check"));
}
