//! Load mode across machines: `--shard K/N` slices, `--hist-out` files
//! and `tcpscript merge`, checked against the `hdrhistogram` crate's own
//! V2 decoder.

use std::path::Path;

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use predicates::str::contains;

use crate::support::{Running, script, tcpscript};

const ECHO_ONCE: &str = "send(\"ping\");\nassert_eq(recv(), \"ping\");\n";

fn json(output: &[u8]) -> serde_json::Value {
    serde_json::from_slice(output).expect("one JSON object")
}

/// Runs shard `shard` of a 3-user, 41-conversation test, writing `out`.
fn shard(server: &Running, s: &str, shard: &str, out: &Path) -> serde_json::Value {
    let output = tcpscript()
        .args(["client", s, "--connect", &server.addr()])
        .args(["--concurrency", "3", "--iterations", "41", "--json"])
        .args(["--shard", shard, "--hist-out", out.to_str().unwrap()])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    json(&output)
}

/// A file's latency histogram, read by the `hdrhistogram` crate.
fn latency(path: &Path) -> Histogram<u64> {
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(file["encoding"], "hdrhistogram-v2+base64");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(file["latency_us"].as_str().unwrap())
        .unwrap();
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .expect("an HdrHistogram V2 encoding")
}

fn merge(files: &[&Path], extra: &[&str]) -> assert_cmd::assert::Assert {
    tcpscript()
        .arg("merge")
        .args(files.iter().map(|f| f.to_str().unwrap()))
        .args(extra)
        .assert()
}

#[test]
fn two_shards_add_up_to_the_whole_and_merge_exactly() {
    let server = Running::server(&["--echo", "-q"]);
    let s = script(ECHO_ONCE);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("1.json"), dir.path().join("2.json"));
    let first = shard(&server, s.path(), "1/2", &a);
    let second = shard(&server, s.path(), "2/2", &b);
    // 41 in two: the first shard takes the odd one; 3 users likewise.
    assert_eq!(first["conversations"], 21);
    assert_eq!(second["conversations"], 20);
    assert_eq!(first["concurrency"], 2);
    assert_eq!(second["concurrency"], 1);

    let output = merge(&[&a, &b], &["--json"])
        .success()
        .get_output()
        .stdout
        .clone();
    let merged = json(&output);
    assert_eq!(merged["conversations"], 41);
    assert_eq!(merged["passed"], 41);
    assert_eq!(merged["failed"], 0);
    assert_eq!(merged["messages"], 82);
    assert_eq!(merged["concurrency"], 3);

    // The union of both files' histograms, added by the crate itself.
    let mut union = latency(&a);
    union.add(latency(&b)).unwrap();
    assert_eq!(union.len(), 41);
    let ms = |micros: u64| micros as f64 / 1000.0;
    let spread = &merged["latency_ms"];
    assert_eq!(
        spread["p50"].as_f64(),
        Some(ms(union.value_at_quantile(0.5)))
    );
    assert_eq!(
        spread["p99"].as_f64(),
        Some(ms(union.value_at_quantile(0.99)))
    );
    assert_eq!(spread["max"].as_f64(), Some(ms(union.max())));
    // Each file's histogram is its shard's own figures.
    assert_eq!(latency(&a).len(), 21);
    assert_eq!(
        first["latency_ms"]["max"].as_f64(),
        Some(ms(latency(&a).max()))
    );
    // Over the longest shard's time.
    let longest = first["duration"]
        .as_f64()
        .unwrap()
        .max(second["duration"].as_f64().unwrap());
    let rate = merged["conversations_per_second"].as_f64().unwrap();
    assert!(
        (rate - 41.0 / longest).abs() < 41.0 / longest * 1e-3,
        "{rate}"
    );
}

#[test]
fn a_merge_judges_thresholds_on_the_whole() {
    let server = Running::server(&["--echo", "-q"]);
    let s = script(ECHO_ONCE);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("1.json"), dir.path().join("2.json"));
    shard(&server, s.path(), "1/2", &a);
    shard(&server, s.path(), "2/2", &b);
    merge(
        &[&a, &b],
        &["--threshold", "p99<10s", "--threshold", "failed<=0"],
    )
    .success()
    .stderr(contains("41 conversations in "))
    .stderr(contains("threshold p99<10s: passed"));
    let junit = dir.path().join("merge.xml");
    merge(
        &[&a, &b],
        &["--threshold", "max<1us", "--junit", junit.to_str().unwrap()],
    )
    .code(1)
    .stderr(contains("threshold max<1us: FAILED (max was "));
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let case = doc
        .descendants()
        .find(|n| n.has_tag_name("testcase"))
        .unwrap();
    assert_eq!(case.attribute("name"), Some("max<1us"));
    assert!(case.children().any(|c| c.has_tag_name("failure")), "{xml}");
}

#[test]
fn a_shard_given_twice_is_refused() {
    let server = Running::server(&["--echo", "-q"]);
    let s = script(ECHO_ONCE);
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("1.json");
    shard(&server, s.path(), "1/2", &a);
    let copy = dir.path().join("copy.json");
    std::fs::copy(&a, &copy).unwrap();
    merge(&[&a, &copy], &[])
        .code(2)
        .stderr(contains("it is shard 1/2, like `"));
}

#[test]
fn a_file_that_is_not_a_shard_is_a_usage_error() {
    let s = script("not json");
    merge(&[Path::new(s.path())], &[])
        .code(2)
        .stderr(contains("cannot merge `"))
        .stderr(contains("it is not JSON"));
}

#[test]
fn auto_takes_the_shard_from_the_job_index() {
    let server = Running::server(&["--echo", "-q"]);
    let s = script(ECHO_ONCE);
    let output = tcpscript()
        .args(["client", s.path(), "--connect", &server.addr()])
        .args(["--concurrency", "4", "--iterations", "10", "--json"])
        .args(["--shard", "auto/4"])
        .env("JOB_COMPLETION_INDEX", "3")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    // 10 in four: 3, 3, 2, 2; the index is 0-based.
    assert_eq!(json(&output)["conversations"], 2);
    tcpscript()
        .args([
            "client",
            s.path(),
            "--iterations",
            "10",
            "--concurrency",
            "4",
        ])
        .args(["--shard", "auto/4"])
        .env_remove("JOB_COMPLETION_INDEX")
        .assert()
        .code(2)
        .stderr(contains("JOB_COMPLETION_INDEX, which is not set"));
}

#[test]
fn a_shard_with_no_users_is_a_usage_error() {
    let s = script(ECHO_ONCE);
    tcpscript()
        .args([
            "client",
            s.path(),
            "--iterations",
            "10",
            "--concurrency",
            "2",
        ])
        .args(["--shard", "3/3"])
        .assert()
        .code(2)
        .stderr(contains("--concurrency 2 leaves this shard none"));
}

#[test]
fn start_at_waits_then_runs() {
    let server = Running::server(&["--echo", "-q"]);
    let s = script(ECHO_ONCE);
    let start = std::time::SystemTime::now() + std::time::Duration::from_millis(1500);
    let seconds = start
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let began = std::time::Instant::now();
    tcpscript()
        .args(["client", s.path(), "--connect", &server.addr()])
        .args(["--iterations", "2", "--start-at", &format!("{seconds:.3}")])
        .assert()
        .success()
        .stderr(contains("waiting "));
    assert!(began.elapsed() >= std::time::Duration::from_millis(1400));
    tcpscript()
        .args(["client", s.path(), "--iterations", "2"])
        .args(["--start-at", "2999-01-01T00:00:00Z"])
        .assert()
        .code(2)
        .stderr(contains("more than the limit of 24h"));
}

#[test]
fn four_shards_merged_count_what_the_whole_run_counts() {
    let server = Running::server(&["--echo", "-q"]);
    let s = script(ECHO_ONCE);
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let output = tcpscript()
            .args(["client", s.path(), "--connect", &server.addr()])
            .args(["--concurrency", "6", "--iterations", "103", "--json"])
            .args(extra)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        json(&output)
    };
    let whole = run(&[]);
    let files: Vec<_> = (1..=4)
        .map(|k| {
            let path = dir.path().join(format!("{k}.json"));
            run(&[
                "--shard",
                &format!("{k}/4"),
                "--hist-out",
                path.to_str().unwrap(),
            ]);
            path
        })
        .collect();
    let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let html = dir.path().join("merged.html");
    let output = merge(
        &paths,
        &[
            "--json",
            "--threshold",
            "p99<10s",
            "--html",
            html.to_str().unwrap(),
        ],
    )
    .success()
    .get_output()
    .stdout
    .clone();
    let merged = json(&output);
    for figure in [
        "conversations",
        "passed",
        "failed",
        "messages",
        "concurrency",
    ] {
        assert_eq!(merged[figure], whole[figure], "{figure}");
    }
    let mut union = latency(paths[0]);
    for path in &paths[1..] {
        union.add(latency(path)).unwrap();
    }
    assert_eq!(union.len(), 103);
    let p90 = merged["latency_ms"]["p90"].as_f64().unwrap();
    assert_eq!(p90, union.value_at_quantile(0.9) as f64 / 1000.0);
    // The page has the figures and the thresholds, and no charts over time.
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("103 conversations"), "{page}");
    assert!(page.contains("<table class=\"thresholds\">"));
    assert!(page.contains("id=\"distribution\"") && !page.contains("id=\"throughput\""));
}

#[test]
fn a_missing_shard_is_noted() {
    let server = Running::server(&["--echo", "-q"]);
    let s = script(ECHO_ONCE);
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("1.json");
    shard(&server, s.path(), "1/2", &a);
    merge(&[&a], &[])
        .success()
        .stderr(contains("note: merging 1 of 2 shards; missing: 2/2"))
        .stderr(contains("21 conversations in "));
}
