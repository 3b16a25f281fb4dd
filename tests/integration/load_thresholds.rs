//! Load mode's `--threshold`s: pass marks judged on the run's figures,
//! named in the text summary, in `--json` and in `--junit`.

use predicates::str::contains;

use crate::support::{Running, script, tcpscript};

const ECHO_ONCE: &str = "send(\"ping\");\nassert_eq(recv(), \"ping\");\n";

/// Thresholds every run on loopback keeps, one of each kind.
const KEPT: [&str; 4] = ["p99<10s", "max<=60s", "failed<0.1%", "rate>0.001"];

fn load(server: &Running, extra: &[&str]) -> assert_cmd::assert::Assert {
    let s = script(ECHO_ONCE);
    tcpscript()
        .args(["client", s.path(), "--connect", &server.addr()])
        .args(["--concurrency", "2", "--iterations", "20"])
        .args(extra)
        .assert()
}

fn with_thresholds(thresholds: &[&str]) -> Vec<String> {
    thresholds
        .iter()
        .flat_map(|t| ["--threshold".to_string(), t.to_string()])
        .collect()
}

#[test]
fn kept_thresholds_pass_and_are_listed() {
    let server = Running::server(&["--echo", "-q"]);
    let args = with_thresholds(&KEPT);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    load(&server, &args)
        .success()
        .stderr(contains("threshold p99<10s: passed (p99 was "))
        .stderr(contains(
            "threshold failed<0.1%: passed (failed was 0.000%)",
        ))
        .stderr(contains("threshold rate>0.001: passed (rate was "));
}

#[test]
fn a_broken_latency_threshold_is_exit_1_and_named() {
    let server = Running::server(&["--echo", "-q"]);
    load(
        &server,
        &["--threshold", "p99<10s", "--threshold", "max<1us"],
    )
    .code(1)
    .stderr(contains("threshold p99<10s: passed"))
    .stderr(contains("threshold max<1us: FAILED (max was "))
    .stderr(contains("1 of 2 thresholds broken: max<1us"));
}

#[test]
fn a_broken_rate_threshold_is_exit_1() {
    let server = Running::server(&["--echo", "-q"]);
    load(&server, &["--threshold", "rate>100000000"])
        .code(1)
        .stderr(contains("threshold rate>100000000: FAILED (rate was "));
}

#[test]
fn failures_within_the_failed_threshold_pass_and_past_it_fail() {
    // Nothing listens: every conversation fails to connect (exit 4).
    let port = crate::support::closed_port().to_string();
    let s = script(ECHO_ONCE);
    let run = |threshold: &str| {
        tcpscript()
            .args([
                "client",
                s.path(),
                "--connect",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["--iterations", "3", "--threshold", threshold])
            .assert()
    };
    run("failed<=100%").success().stderr(contains(
        "threshold failed<=100%: passed (failed was 100.000%)",
    ));
    run("failed<50%").code(4).stderr(contains(
        "threshold failed<50%: FAILED (failed was 100.000%)",
    ));
}

#[test]
fn thresholds_are_in_the_json_summary() {
    let server = Running::server(&["--echo", "-q"]);
    let out = load(
        &server,
        &["--json", "--threshold", "p50<10s", "--threshold", "p90<1us"],
    )
    .code(1)
    .get_output()
    .stdout
    .clone();
    let summary: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let thresholds = summary["thresholds"].as_array().unwrap();
    assert_eq!(thresholds.len(), 2, "{summary}");
    assert_eq!(thresholds[0]["expr"], "p50<10s");
    assert_eq!(thresholds[0]["passed"], true);
    assert_eq!(thresholds[1]["expr"], "p90<1us");
    assert_eq!(thresholds[1]["passed"], false);
    // Milliseconds, like latency_ms, and the same figure.
    let actual = thresholds[1]["actual"].as_f64().unwrap();
    assert_eq!(actual, summary["latency_ms"]["p90"].as_f64().unwrap());
    assert!(actual > 0.0);
}

#[test]
fn junit_has_one_case_per_threshold() {
    let server = Running::server(&["--echo", "-q"]);
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("load.xml");
    load(
        &server,
        &[
            "--threshold",
            "p99<10s",
            "--threshold",
            "max<1us",
            "--junit",
            junit.to_str().unwrap(),
        ],
    )
    .code(1);
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let cases: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases.len(), 2, "{xml}");
    assert_eq!(cases[0].attribute("name"), Some("p99<10s"));
    assert!(cases[0].children().all(|c| !c.has_tag_name("failure")));
    assert_eq!(cases[1].attribute("name"), Some("max<1us"));
    let failure = cases[1]
        .children()
        .find(|c| c.has_tag_name("failure"))
        .expect("a failure");
    assert!(
        failure
            .attribute("message")
            .unwrap()
            .starts_with("max was "),
        "{xml}"
    );
    let suites = doc.root_element();
    assert_eq!(suites.attribute("failures"), Some("1"));
}

#[test]
fn a_bad_threshold_is_a_usage_error_naming_it() {
    let s = script(ECHO_ONCE);
    for (expression, problem) in [
        ("p99<50", "needs a unit"),
        ("p95<50ms", "unknown figure `p95`"),
        ("failed<2", "not a failure rate"),
        ("rate=5", "no comparison"),
    ] {
        tcpscript()
            .args(["client", s.path(), "--iterations", "1"])
            .args(["--threshold", expression])
            .assert()
            .code(2)
            .stderr(contains(format!("`{expression}`: ")))
            .stderr(contains(problem));
    }
}

#[test]
fn the_html_report_lists_the_thresholds() {
    let server = Running::server(&["--echo", "-q"]);
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("load.html");
    load(
        &server,
        &[
            "--threshold",
            "p99<10s",
            "--threshold",
            "max<1us",
            "--html",
            html.to_str().unwrap(),
        ],
    )
    .code(1);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<table class=\"thresholds\">"), "{page}");
    assert!(page.contains("<tr class=\"passed\"><td>p99&lt;10s</td><td>passed</td>"));
    assert!(page.contains("<tr class=\"failed\"><td>max&lt;1us</td><td>FAILED</td>"));
}
