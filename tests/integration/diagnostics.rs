//! The exact text of error reports: the same rustc-like rendering from
//! `client`, `server`, `check` and `test`.

use crate::support::{LineClient, Running, script_named, shipped, tcpscript};

/// The report with the temporary folder and time offsets made stable.
fn normalized(text: &str, dir: &str) -> String {
    let offsets = regex::Regex::new(r"\+\d+\.\d{3}s").unwrap();
    let ports = regex::Regex::new(r"127\.0\.0\.1:\d+").unwrap();
    let text = text.replace(dir, "DIR");
    let text = offsets.replace_all(&text, "+T");
    ports.replace_all(&text, "127.0.0.1:PORT").into_owned()
}

fn dir_of(path: &str) -> String {
    std::path::Path::new(path)
        .parent()
        .unwrap()
        .display()
        .to_string()
}

fn stderr_of(assert: assert_cmd::assert::Assert) -> String {
    String::from_utf8(assert.get_output().stderr.clone()).unwrap()
}

/// The report of a client script that fails its expectation (exit 1).
fn failing_client(script: &crate::support::Script, server: &Running) -> String {
    stderr_of(
        tcpscript()
            .args(["client", script.path(), "--connect", &server.addr()])
            .assert()
            .code(1),
    )
}

#[test]
fn client_failure() {
    let server = Running::server(&[&shipped("reply.rhai")]);
    let s = script_named(
        "conv.rhai",
        "send(\"hello\");\nrecv();\n\nsend(\"how are you?\");\nassert_eq(recv(), \"echo 2: fine\");\n",
    );
    let text = failing_client(&s, &server);
    assert_eq!(
        normalized(&text, &dir_of(s.path())),
        "\
error: values differ
 --> DIR/conv.rhai:5:1
  |
5 | assert_eq(recv(), \"echo 2: fine\");
  | ^
  = expected: \"echo 2: fine\"
  =   actual: \"echo 2: how are you?\"
last messages (oldest first):
  +T > hello
  +T < welcome to the tcpscript tutorial server, you are 127.0.0.1:PORT
  +T > how are you?
  +T < echo 2: how are you?
"
    );
}

#[test]
fn binary_values_are_compared_in_hex_and_text_blocks_as_a_diff() {
    let s = script_named(
        "values.rhai",
        "let reply = unhex(\"00ff\");\nassert_eq(reply, \"ok\", \"status byte\");\n",
    );
    let server = Running::server(&["--echo", "-q"]);
    let text = failing_client(&s, &server);
    assert_eq!(
        normalized(&text, &dir_of(s.path())),
        "\
error: status byte
 --> DIR/values.rhai:2:1
  |
2 | assert_eq(reply, \"ok\", \"status byte\");
  | ^
  = expected: <2 bytes: 6f 6b>
  =   actual: <2 bytes: 00 ff>
"
    );
    let s = script_named(
        "lines.rhai",
        "let page = \"HTTP/1.1 200 OK\\nServer: x\\n\\nbody\";\nassert_eq(page, \"HTTP/1.1 404 Not Found\\nServer: x\\n\\nbody\");\n",
    );
    let text = failing_client(&s, &server);
    assert_eq!(
        normalized(&text, &dir_of(s.path())),
        "\
error: values differ
 --> DIR/lines.rhai:2:1
  |
2 | assert_eq(page, \"HTTP/1.1 404 Not Found\\nServer: x\\n\\nbody\");
  | ^
  = expected: \"HTTP/1.1 404 Not Found\\nServer: x\\n\\nbody\"
  =   actual: \"HTTP/1.1 200 OK\\nServer: x\\n\\nbody\"
  = diff (-expected +actual):
    -HTTP/1.1 404 Not Found
    +HTTP/1.1 200 OK
     Server: x
     
     body
"
    );
}

#[test]
fn server_hook_error() {
    let s = script_named(
        "hooks.rhai",
        "fn on_message(msg) {\n    let n = parse_int(msg);\n    `double: ${n * 2}`\n}\n",
    );
    let server = Running::server(&[s.path()]);
    let mut c = LineClient::connect(server.port);
    assert_eq!(c.exchange("21"), "double: 42");
    c.send("lots");
    c.expect_closed();
    let text = server.wait_stderr("lots\n");
    let report = &text[text.find("error:").unwrap()..];
    assert_eq!(
        normalized(report, &dir_of(s.path())),
        "\
error: Error parsing integer number 'lots': invalid digit found in string
 --> DIR/hooks.rhai:2:13
  |
2 |     let n = parse_int(msg);
  |             ^
  = note: in hook `on_message` for 127.0.0.1:PORT
last messages (oldest first):
  < 21
  > double: 42
  < lots
"
    );
}

#[test]
fn check_syntax_error() {
    let s = script_named("broken.rhai", "let greeting = \"hi\";\nsend(greeting\n");
    let text = stderr_of(tcpscript().args(["check", s.path()]).assert().code(3));
    assert_eq!(
        normalized(&text, &dir_of(s.path())),
        "\
error: Expecting ')' to close the arguments list of this function call 'send'
 --> DIR/broken.rhai:3:1
  |
3 | 
  | ^
error: 1 of 1 scripts failed to check
"
    );
}

#[test]
fn test_runner_failure() {
    let s = script_named("case.rhai", "send(\"hello\");\nexpect(\"^goodbye\");\n");
    let text = stderr_of(
        tcpscript()
            .args(["test", "--server", &shipped("reply.rhai"), "-q", s.path()])
            .assert()
            .code(1),
    );
    let ms = regex::Regex::new(r"\(\d+ ms\)").unwrap();
    let seconds = regex::Regex::new(r"\(\d+\.\d\ds\)").unwrap();
    let text = ms.replace_all(&text, "(N ms)");
    let text = seconds.replace_all(&text, "(N s)");
    assert_eq!(
        normalized(&text, &dir_of(s.path())),
        "\
FAIL DIR/case.rhai (N ms)
error: expected a message matching /^goodbye/
 --> DIR/case.rhai:2:1
  |
2 | expect(\"^goodbye\");
  | ^
  = expected: /^goodbye/
  =   actual: \"welcome to the tcpscript tutorial server, you are 127.0.0.1:PORT\"
last messages (oldest first):
  +T > hello
  +T < welcome to the tcpscript tutorial server, you are 127.0.0.1:PORT
0 passed, 1 failed (N s)
"
    );
}

fn assert_no_raw_controls(text: &str) {
    for raw in ['\u{1b}', '\u{7}', '\0'] {
        assert!(!text.contains(raw), "raw {raw:?} in:\n{text:?}");
    }
}

#[test]
fn expected_values_from_the_script_are_escaped() {
    let server = Running::server(&["--echo", "-q"]);
    let s = script_named(
        "conv.rhai",
        "send(\"plain\");\nexpect(\"\\x1b]0;T\\x07\\x00\");\n",
    );
    let text = failing_client(&s, &server);
    assert_no_raw_controls(&text);
    assert!(
        text.contains("error: expected a message matching /\\u{1b}]0;T\\u{7}\\0/\n"),
        "{text}"
    );
    assert!(
        text.contains("= expected: /\\u{1b}]0;T\\u{7}\\0/\n"),
        "{text}"
    );
    assert!(text.contains("=   actual: \"plain\"\n"), "{text}");
}

#[test]
fn the_quoted_source_line_is_escaped_and_the_caret_still_lines_up() {
    let server = Running::server(&["--echo", "-q"]);
    // Raw control bytes written into the script itself, in a string literal.
    let s = script_named(
        "conv.rhai",
        "send(\"x\");\n\tlet t = \"\u{1b}[2J\u{7}\"; assert(false, t);\n",
    );
    let text = normalized(&failing_client(&s, &server), &dir_of(s.path()));
    assert_no_raw_controls(&text);
    let caret = format!("  | \t{}^\n", " ".repeat(26));
    assert!(
        text.starts_with(&format!(
            "error: \\u{{1b}}[2J\\u{{7}}\n --> DIR/conv.rhai:2:19\n  |\n2 | \tlet t = \"\\u{{1b}}[2J\\u{{7}}\"; assert(false, t);\n{caret}"
        )),
        "{text}"
    );
}
