//! `tcpscript test`: cases, exit codes, parallel runs and every report.

use predicates::prelude::*;
use predicates::str::contains;

use crate::support::{Running, shipped, tcpscript};

/// A folder of client scripts for `scripts/reply.rhai`.
struct Suite {
    dir: tempfile::TempDir,
}

impl Suite {
    fn new(cases: &[(&str, &str)]) -> Suite {
        let dir = tempfile::tempdir().unwrap();
        for (name, source) in cases {
            std::fs::write(dir.path().join(name), source).unwrap();
        }
        Suite { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn folder(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }
}

const PASSING: &str = "send(\"hello\");\nexpect(\"^welcome\");\n";
const FAILING: &str =
    "send(\"hello\");\nrecv();\nsend(\"one\");\nassert_eq(recv(), \"echo 2: two\");\n";
const BROKEN: &str = "let x = 1;\nx.no_such_method();\n";

fn test_with_server(args: &[&str]) -> assert_cmd::Command {
    let mut cmd = tcpscript();
    cmd.args(["test", "--server", &shipped("reply.rhai")])
        .args(args);
    cmd
}

#[test]
fn passing_cases_print_a_line_each_and_a_summary() {
    let suite = Suite::new(&[("a.rhai", PASSING), ("b.rhai", PASSING)]);
    test_with_server(&[suite.folder()])
        .assert()
        .success()
        .stderr(contains(format!("PASS {}", suite.path("a.rhai"))))
        .stderr(contains(format!("PASS {}", suite.path("b.rhai"))))
        .stderr(contains("2 passed, 0 failed"));
}

#[test]
fn a_failed_expectation_is_exit_1_and_a_script_error_exit_3() {
    let suite = Suite::new(&[("a.rhai", PASSING), ("b.rhai", FAILING)]);
    test_with_server(&[suite.folder()])
        .assert()
        .code(1)
        .stderr(contains(format!("FAIL {}", suite.path("b.rhai"))))
        .stderr(contains(format!("--> {}:4:1", suite.path("b.rhai"))))
        .stderr(contains("1 passed, 1 failed"));
    let suite = Suite::new(&[("a.rhai", FAILING), ("b.rhai", BROKEN)]);
    test_with_server(&[suite.folder()]).assert().code(3);
}

#[test]
fn an_unreachable_server_is_exit_4() {
    let port = crate::support::closed_port();
    let suite = Suite::new(&[("a.rhai", PASSING)]);
    tcpscript()
        .args([
            "test",
            "--connect",
            &format!("127.0.0.1:{port}"),
            suite.folder(),
        ])
        .assert()
        .code(4)
        .stderr(contains("cannot connect"));
}

#[test]
fn connect_runs_against_an_outside_server() {
    let server = Running::server(&[&shipped("reply.rhai")]);
    let suite = Suite::new(&[("a.rhai", PASSING)]);
    tcpscript()
        .args(["test", "--connect", &server.addr(), suite.folder()])
        .assert()
        .success();
}

#[test]
fn a_broken_server_script_stops_the_run_with_exit_3() {
    let bad = crate::support::script("fn on_message(msg) {\n");
    let suite = Suite::new(&[("a.rhai", PASSING)]);
    tcpscript()
        .args(["test", "--server", bad.path(), suite.folder()])
        .assert()
        .code(3)
        .stderr(contains(bad.path()));
}

#[test]
fn parallel_cases_all_run_and_params_reach_each() {
    let case =
        "let who = param(\"who\");\nsend(`upper ${who}`);\nassert_eq(recv(), who.to_upper());\n";
    let names: Vec<String> = (0..8).map(|i| format!("case{i}.rhai")).collect();
    let cases: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), case)).collect();
    let suite = Suite::new(&cases);
    let output = test_with_server(&["-j", "4", "--tap", "--set", "who=everyone", suite.folder()])
        .assert()
        .success()
        .stderr(contains("8 passed, 0 failed"))
        .get_output()
        .stdout
        .clone();
    let tap = String::from_utf8(output).unwrap();
    let lines: Vec<&str> = tap.lines().collect();
    assert_eq!(&lines[..2], &["TAP version 13", "1..8"]);
    // Reported in the order given, whatever order they finished in.
    for (i, name) in names.iter().enumerate() {
        assert!(
            lines[i + 2].starts_with(&format!("ok {} - {}", i + 1, suite.path(name))),
            "{tap}"
        );
    }
}

#[test]
fn tap_failures_carry_a_yaml_block() {
    let suite = Suite::new(&[("a.rhai", PASSING), ("b.rhai", FAILING), ("c.rhai", BROKEN)]);
    let output = test_with_server(&["--tap", suite.folder()])
        .assert()
        .code(3)
        .get_output()
        .stdout
        .clone();
    let tap = String::from_utf8(output).unwrap();
    let expected_b = format!("not ok 2 - {} # time=", suite.path("b.rhai"));
    assert!(tap.contains(&expected_b), "{tap}");
    assert!(
        tap.contains(
            "  ---\n  message: \"values differ\"\n  severity: fail\n  exit_code: 1\n  at:\n"
        ),
        "{tap}"
    );
    assert!(
        tap.contains("    line: 4\n    column: 1\n  expected: \"\\\"echo 2: two\\\"\"\n"),
        "{tap}"
    );
    assert!(tap.contains("  severity: error\n  exit_code: 3\n"), "{tap}");
    assert!(tap.lines().filter(|l| *l == "  ...").count() == 2, "{tap}");
}

#[test]
fn junit_reports_failures_errors_and_transcripts() {
    let suite = Suite::new(&[("a.rhai", PASSING), ("b.rhai", FAILING), ("c.rhai", BROKEN)]);
    let report = suite.dir.path().join("junit.xml");
    test_with_server(&["--junit", report.to_str().unwrap(), suite.folder()])
        .assert()
        .code(3);
    let xml = std::fs::read_to_string(&report).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let cases: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases.len(), 3);
    let name = |n: &roxmltree::Node| n.attribute("name").unwrap().to_string();
    assert_eq!(name(&cases[0]), suite.path("a.rhai"));
    assert!(
        cases[0]
            .children()
            .all(|c| !c.has_tag_name("failure") && !c.has_tag_name("error"))
    );
    let out = cases[0]
        .children()
        .find(|c| c.has_tag_name("system-out"))
        .unwrap();
    assert!(out.text().unwrap().contains("> hello"), "{xml}");

    let failure = cases[1]
        .children()
        .find(|c| c.has_tag_name("failure"))
        .unwrap();
    assert_eq!(
        failure.attribute("message"),
        Some(format!("{}:4:1: values differ", suite.path("b.rhai")).as_str())
    );
    assert_eq!(failure.attribute("type"), Some("expectation failed"));
    assert!(
        failure.text().unwrap().contains("actual: \"echo 2: one\""),
        "{xml}"
    );

    let error = cases[2]
        .children()
        .find(|c| c.has_tag_name("error"))
        .unwrap();
    assert_eq!(error.attribute("type"), Some("script error"));
    let suite_node = doc
        .descendants()
        .find(|n| n.has_tag_name("testsuite"))
        .unwrap();
    assert_eq!(suite_node.attribute("failures"), Some("1"));
    assert_eq!(suite_node.attribute("errors"), Some("1"));
}

#[test]
fn json_events_cover_the_conversation() {
    let suite = Suite::new(&[
        (
            "a.rhai",
            "send(\"hello\");\nlet w = expect(\"^welcome\");\nassert(true);\n",
        ),
        ("b.rhai", FAILING),
    ]);
    let output = test_with_server(&["--json", suite.folder()])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let events: Vec<serde_json::Value> = String::from_utf8(output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let of = |test: &str, kind: &str| -> Vec<&serde_json::Value> {
        events
            .iter()
            .filter(|e| e["test"] == suite.path(test) && e["event"] == kind)
            .collect()
    };
    assert_eq!(of("a.rhai", "connect").len(), 1);
    assert_eq!(of("a.rhai", "sent")[0]["text"], "hello");
    assert!(
        of("a.rhai", "received")[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("welcome")
    );
    let assertions = of("a.rhai", "assertion");
    assert_eq!(assertions.len(), 2);
    assert_eq!(assertions[0]["function"], "expect");
    assert_eq!(assertions[0]["line"], 2);
    assert_eq!(of("a.rhai", "result")[0]["status"], "passed");
    let failed = of("b.rhai", "result")[0];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["line"], 4);
    assert_eq!(failed["expected"], "\"echo 2: two\"");
    assert!(events.iter().all(|e| e["time"].as_f64().is_some()));
}

#[test]
fn github_actions_get_annotations_and_a_step_summary() {
    let suite = Suite::new(&[("a.rhai", PASSING), ("b.rhai", FAILING)]);
    let summary = suite.dir.path().join("summary.md");
    test_with_server(&[suite.folder()])
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_STEP_SUMMARY", &summary)
        .assert()
        .code(1)
        .stdout(contains(format!(
            "::error file={},line=4,col=1,title=tcpscript%3A {}::values differ%0Aexpected: \"echo 2: two\"%0A  actual: \"echo 2: one\"",
            suite.path("b.rhai"),
            suite.path("b.rhai")
        )));
    let markdown = std::fs::read_to_string(summary).unwrap();
    assert!(
        markdown.starts_with("### tcpscript: 1 passed, 1 failed\n"),
        "{markdown}"
    );
    assert!(
        markdown.contains(&format!("| ✅ | `{}` |", suite.path("a.rhai"))),
        "{markdown}"
    );
    assert!(
        markdown.contains(&format!("| ❌ | `{}` |", suite.path("b.rhai"))),
        "{markdown}"
    );
    // Without GitHub Actions, no workflow commands.
    test_with_server(&[suite.folder()])
        .assert()
        .code(1)
        .stdout(contains("::error").not());
}

#[test]
fn connect_with_an_address_reaches_another_server() {
    let other = Running::server(&["--echo", "-q"]);
    let source = format!(
        "send(\"hello\");\nexpect(\"^welcome\");\nlet echo = connect(\"{}\");\necho.send(\"ping\");\nassert_eq(echo.recv(), \"ping\");\necho.close();\n",
        other.addr()
    );
    let suite = Suite::new(&[("a.rhai", &source)]);
    test_with_server(&[suite.folder()]).assert().success();
}

#[test]
fn no_cases_is_a_usage_error() {
    let empty = tempfile::tempdir().unwrap();
    tcpscript()
        .args([
            "test",
            "--server",
            &shipped("reply.rhai"),
            empty.path().to_str().unwrap(),
        ])
        .assert()
        .code(2)
        .stderr(contains("no client scripts to run"));
}

/// A case's time limit, for the tests that run into it.
const LIMIT: &str = "1s";

#[test]
fn a_case_that_loops_is_an_error_at_its_time_limit_and_the_run_goes_on() {
    let suite = Suite::new(&[
        ("a.rhai", "send(\"hello\");\nrecv();\nloop {}\n"),
        ("b.rhai", PASSING),
    ]);
    let report = suite.dir.path().join("junit.xml");
    test_with_server(&[
        "--case-timeout",
        LIMIT,
        "--junit",
        report.to_str().unwrap(),
        suite.folder(),
    ])
    .assert()
    .code(3)
    .stderr(contains(
        "error: the conversation ran longer than its time limit of 1s (see --case-timeout)",
    ))
    .stderr(contains(format!("--> {}:3:", suite.path("a.rhai"))))
    .stderr(contains(format!("PASS {}", suite.path("b.rhai"))))
    .stderr(contains("1 passed, 1 failed"));
    let xml = std::fs::read_to_string(&report).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let error = doc
        .descendants()
        .find(|n| n.has_tag_name("error"))
        .expect("the looping case is an <error>");
    assert!(
        error
            .attribute("message")
            .unwrap()
            .contains("time limit of 1s (see --case-timeout)"),
        "{xml}"
    );
}

#[test]
fn a_case_that_sleeps_in_a_loop_is_stopped_at_its_time_limit() {
    let suite = Suite::new(&[("a.rhai", "while true {\n    sleep(100000);\n}\n")]);
    test_with_server(&["--case-timeout", LIMIT, suite.folder()])
        .assert()
        .code(3)
        .stderr(contains("time limit of 1s (see --case-timeout)"))
        .stderr(contains(format!("--> {}:2:5", suite.path("a.rhai"))));
}

#[test]
fn a_float_sleep_is_milliseconds_and_bounded_too() {
    // Rhai's own `sleep(FLOAT)` takes seconds and would sleep for decades.
    let suite = Suite::new(&[("a.rhai", "sleep(1.0e12);\n")]);
    test_with_server(&["--case-timeout", LIMIT, suite.folder()])
        .assert()
        .code(3)
        .stderr(contains("time limit of 1s (see --case-timeout)"));
}

#[test]
fn a_time_limit_cannot_be_caught_by_the_script() {
    let suite = Suite::new(&[("a.rhai", "loop {\n    try { recv(5); } catch (e) { }\n}\n")]);
    test_with_server(&["--case-timeout", LIMIT, suite.folder()])
        .assert()
        .code(3)
        .stderr(contains("time limit of 1s (see --case-timeout)"));
}

#[test]
fn a_connect_retry_is_cut_at_the_time_limit() {
    let port = crate::support::closed_port();
    let suite = Suite::new(&[("a.rhai", PASSING)]);
    tcpscript()
        .args(["test", "--connect", &format!("127.0.0.1:{port}")])
        .args(["--connect-retry", "1h", "--case-timeout", LIMIT])
        .arg(suite.folder())
        .assert()
        .code(3)
        .stderr(contains("time limit of 1s (see --case-timeout)"))
        .stderr(contains(format!(
            "note: while connecting to 127.0.0.1:{port}"
        )));
}

/// Peak resident memory (KiB) of a child: the largest `VmHWM` read from
/// `/proc` while it runs. Not `wait4`'s `ru_maxrss`: the child is spawned
/// sharing this test process's memory until it execs, and the kernel
/// counts this process's own peak (every test running beside it) into
/// the child's. Kills it after `patience`.
fn peak_rss_kib(child: std::process::Child, patience: std::time::Duration) -> (i32, i64) {
    let pid = child.id() as libc::pid_t;
    let deadline = std::time::Instant::now() + patience;
    let mut status = 0;
    let mut peak = 0;
    loop {
        // The high-water mark only grows: the last reading before the
        // exit is the peak, give or take the last 10 ms.
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        {
            peak = peak.max(kib);
        }
        // SAFETY: plain system call on our own child, with a valid pointer.
        let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if reaped == pid {
            return (libc::WEXITSTATUS(status), peak);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running after {patience:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn big_replies_do_not_pile_up_in_memory_or_reports() {
    let server = crate::support::script(
        "fn on_message(msg) {\n    let big = \"\";\n    big.pad(1048576, \"x\");\n    for i in 0..300 {\n        send(big);\n    }\n}\n",
    );
    let case = "send(\"go\");\nfor i in 0..300 {\n    recv();\n}\n";
    let suite = Suite::new(&[("a.rhai", case), ("b.rhai", case), ("c.rhai", case)]);
    let report = suite.dir.path().join("junit.xml");
    let child = std::process::Command::new(crate::support::BIN)
        .args(["test", "--server", server.path(), "--junit"])
        .arg(&report)
        .arg(suite.folder())
        .env_remove("GITHUB_ACTIONS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = KillOnDrop(Some(child.id()));
    let (code, peak) = peak_rss_kib(child, std::time::Duration::from_secs(120));
    guard.0 = None;
    assert_eq!(code, 0);
    // 900 MB went through; what is kept is a head of each message.
    assert!(peak < 120 * 1024, "peak RSS {peak} KiB");
    let size = std::fs::metadata(&report).unwrap().len();
    assert!(size < 2 * 1024 * 1024, "JUnit report of {size} bytes");
    let xml = std::fs::read_to_string(&report).unwrap();
    assert!(
        xml.contains("… (1048576 bytes)"),
        "each message is shown by its head and length"
    );
}

/// Kills a process a failed assertion left running.
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: a signal to our own child, not yet reaped.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
                libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// A server whose every reply is a terminal attack: set the window title,
/// clear the screen, then NUL and a C1 control (CSI), which JSON escaping
/// leaves as it is.
const HOSTILE_SERVER: &str =
    "fn on_message(msg) {\n    \"\\x1b]0;TITLE\\x07\\x1b[2J\\x00 \\u009b end\"\n}\n";

/// How `escape_controls` writes that reply.
const HOSTILE_ESCAPED: &str = "\\u{1b}]0;TITLE\\u{7}\\u{1b}[2J\\0 \\u{9b} end";

/// A case that fails with the peer's text in its message (Rhai quotes the
/// text it cannot parse) and in its transcript.
const QUOTES_THE_PEER: &str = "send(\"hi\");\nlet n = parse_int(recv());\n";

fn assert_no_raw_controls(text: &str) {
    for raw in ['\u{1b}', '\u{7}', '\0', '\u{9b}'] {
        assert!(!text.contains(raw), "raw {raw:?} in:\n{text:?}");
    }
}

fn hostile_test() -> (crate::support::Script, Suite, assert_cmd::Command) {
    let server = crate::support::script(HOSTILE_SERVER);
    let suite = Suite::new(&[("a.rhai", QUOTES_THE_PEER)]);
    let mut cmd = tcpscript();
    cmd.args(["test", "--server", server.path()]);
    (server, suite, cmd)
}

#[test]
fn github_annotations_and_the_step_summary_escape_a_peers_controls() {
    let (_server, suite, mut cmd) = hostile_test();
    let summary = suite.dir.path().join("summary.md");
    let output = cmd
        .arg(suite.folder())
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_STEP_SUMMARY", &summary)
        .assert()
        .code(3)
        .get_output()
        .clone();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("::error "), "{stdout}");
    assert_no_raw_controls(&stdout);
    assert!(stdout.contains(HOSTILE_ESCAPED), "{stdout}");
    let markdown = std::fs::read_to_string(summary).unwrap();
    assert_no_raw_controls(&markdown);
    assert!(markdown.contains(HOSTILE_ESCAPED), "{markdown}");
}

#[test]
fn tap_escapes_a_peers_controls() {
    let (_server, suite, mut cmd) = hostile_test();
    let output = cmd
        .args(["--tap", suite.folder()])
        .assert()
        .code(3)
        .get_output()
        .stdout
        .clone();
    let tap = String::from_utf8(output).unwrap();
    assert_no_raw_controls(&tap);
    // JSON-quoted in the YAML block: each backslash doubled.
    assert!(
        tap.contains(&HOSTILE_ESCAPED.replace('\\', "\\\\")),
        "{tap}"
    );
}

#[test]
fn junit_stays_valid_xml_with_a_peers_controls() {
    let (_server, suite, mut cmd) = hostile_test();
    let report = suite.dir.path().join("junit.xml");
    cmd.args(["--junit", report.to_str().unwrap(), suite.folder()])
        .assert()
        .code(3);
    let xml = std::fs::read_to_string(&report).unwrap();
    assert_no_raw_controls(&xml);
    let doc = roxmltree::Document::parse(&xml).expect("valid XML");
    let error = doc.descendants().find(|n| n.has_tag_name("error")).unwrap();
    assert!(
        error
            .attribute("message")
            .unwrap()
            .contains(HOSTILE_ESCAPED)
    );
    let out = doc
        .descendants()
        .find(|n| n.has_tag_name("system-out"))
        .unwrap();
    assert!(
        out.text().unwrap().contains("< <"),
        "binary-looking reply shown as hex: {xml}"
    );
}

#[test]
fn the_failure_report_on_stderr_escapes_a_peers_controls() {
    let (_server, suite, mut cmd) = hostile_test();
    let output = cmd
        .arg(suite.folder())
        .assert()
        .code(3)
        .get_output()
        .clone();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_no_raw_controls(&stderr);
    assert!(stderr.contains(HOSTILE_ESCAPED), "{stderr}");
}

#[test]
fn json_message_events_carry_a_head_and_the_whole_length() {
    let server = crate::support::script(
        "fn on_message(msg) {\n    let big = \"\";\n    big.pad(100000, \"y\");\n    big\n}\n",
    );
    let suite = Suite::new(&[("a.rhai", "send(\"go\");\nrecv();\n")]);
    let output = tcpscript()
        .args(["test", "--server", server.path(), "--json", suite.folder()])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let received: serde_json::Value = String::from_utf8(output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "received")
        .unwrap();
    assert_eq!(received["len"], 100000);
    assert_eq!(received["text"].as_str().unwrap().len(), 4096);
}
