//! Load mode: virtual users running a conversation in a loop.

use predicates::str::contains;

use crate::support::{Running, script, shipped, tcpscript};

const ECHO_ONCE: &str = "send(\"ping\");\nassert_eq(recv(), \"ping\");\n";

fn summary(output: &[u8]) -> serde_json::Value {
    serde_json::from_slice(output).expect("one JSON object")
}

#[test]
fn users_run_the_conversation_the_given_number_of_times() {
    let server = Running::server(&["--echo", "-q"]);
    let s = script(ECHO_ONCE);
    let out = tcpscript()
        .args(["client", s.path(), "--connect", &server.addr()])
        .args(["--concurrency", "4", "--iterations", "40", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let figures = summary(&out);
    assert_eq!(figures["conversations"], 40);
    assert_eq!(figures["passed"], 40);
    assert_eq!(figures["failed"], 0);
    assert_eq!(figures["messages"], 80);
    assert!(figures["conversations_per_second"].as_f64().unwrap() > 0.0);
    let latency = &figures["latency_ms"];
    assert!(latency["p50"].as_f64().unwrap() <= latency["p99"].as_f64().unwrap());
}

#[test]
fn the_plain_summary_reads_conversations_per_second() {
    let server = Running::server(&["--echo", "-q"]);
    let s = script(ECHO_ONCE);
    tcpscript()
        .args(["client", s.path(), "--connect", &server.addr()])
        .args(["--concurrency", "2", "--duration", "300ms"])
        .assert()
        .success()
        .stderr(contains(" conversations/s"))
        .stderr(contains("latency per conversation: p50 "))
        .stderr(contains(" failed"));
}

#[test]
fn failures_are_grouped_by_message_and_set_the_exit_code() {
    // Every second message drops the connection: half the runs fail alike.
    let server = Running::server(&[&shipped("flaky_server.rhai"), "--set", "drop_every=2"]);
    let s = script(
        "send(\"a\");\nassert_eq(recv(), \"a\");\nsend(\"b\");\nassert_eq(recv(), \"b\");\n",
    );
    let out = tcpscript()
        .args(["client", s.path(), "--connect", &server.addr()])
        .args(["--concurrency", "3", "--iterations", "12", "--json"])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let figures = summary(&out);
    assert_eq!(figures["conversations"], 12);
    assert_eq!(figures["failed"], 12);
    let failures = figures["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["count"], 12);
    let message = failures[0]["message"].as_str().unwrap();
    assert!(
        message.ends_with(":4:11: expected a message, but the peer closed the connection"),
        "{message}"
    );
}

#[test]
fn rate_paces_new_conversations() {
    let server = Running::server(&["--echo", "-q"]);
    let s = script(ECHO_ONCE);
    let out = tcpscript()
        .args(["client", s.path(), "--connect", &server.addr()])
        .args([
            "--concurrency",
            "4",
            "--duration",
            "500ms",
            "--rate",
            "20",
            "--json",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    // 20 per second for half a second: about ten, never hundreds.
    let conversations = summary(&out)["conversations"].as_u64().unwrap();
    assert!((1..=12).contains(&conversations), "{conversations}");
}

#[test]
fn load_mode_needs_a_stopping_rule() {
    let s = script(ECHO_ONCE);
    tcpscript()
        .args(["client", s.path(), "--concurrency", "2"])
        .assert()
        .code(2)
        .stderr(contains("needs --duration, --iterations or --stages"));
    tcpscript()
        .args(["client", s.path(), "--iterations", "2", "--rate", "0"])
        .assert()
        .code(2);
}

#[test]
fn under_rate_latency_counts_from_when_a_conversation_was_due() {
    // The first message stalls a second; 20 conversations a second fall
    // due meanwhile, and start late when it ends. Timed from their start,
    // one conversation would be slow; timed from when they were due,
    // the stall shows in all of them (no coordinated omission).
    let stall = script(
        "fn on_message(msg) {\n    if shared_add(\"messages\", 1) == 1 { sleep(1000); }\n    msg\n}\n",
    );
    let server = Running::server(&[stall.path(), "-q"]);
    let s = script(ECHO_ONCE);
    let out = tcpscript()
        .args(["client", s.path(), "--connect", &server.addr()])
        .args(["--rate", "20", "--duration", "2s", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let figures = summary(&out);
    let latency = &figures["latency_ms"];
    assert!(latency["max"].as_f64().unwrap() >= 1000.0, "{figures}");
    assert!(latency["p90"].as_f64().unwrap() > 300.0, "{figures}");
}
