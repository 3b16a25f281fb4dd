//! Scripts that recurse on the native stack, in code or in data: each one
//! ends with a script error or its answer, never with the process
//! aborting on a stack overflow (exit 134, no report). Every test here
//! aborted the process before the stack was sized and checked.

use std::time::Duration;

use predicates::str::contains;

use crate::support::{LineClient, Running, script, script_named, tcpscript};

/// A function recursing `n` calls deep, with `levels` of parentheses in
/// each call: about 144 KB of stack per call in a debug build at 16
/// levels, 40 KB in a release one. Deeper than 63 calls, Rhai's call
/// limit stops it.
fn recursion(levels: usize) -> String {
    format!(
        "fn down(n, x) {{\n    if n <= 0 {{ return 0; }}\n    {}down(n - 1, x){}\n}}\n",
        "x + (".repeat(levels),
        ")".repeat(levels)
    )
}

/// The depth 60 computes 60 × 16 = 960; 200 meets the call limit.
const DEEP_HOOK: &str = "fn on_message(msg) { down(parse_int(msg), 1) }\n";

/// Longer than any test here needs, for debug builds on busy machines.
const SLOW: Duration = Duration::from_secs(120);

fn deep_hook_server() -> (crate::support::Script, Running) {
    let s = script_named("deep.rhai", &(recursion(16) + DEEP_HOOK));
    let server = Running::server(&[s.path()]);
    (s, server)
}

#[test]
fn a_hook_recursing_as_deep_as_the_peer_asks_ends_only_that_connection() {
    let (s, server) = deep_hook_server();
    let mut bystander = LineClient::connect(server.port);
    let mut c = LineClient::connect(server.port);
    assert_eq!(c.exchange("60"), "960");
    c.send("200");
    c.expect_closed();
    let log = server.wait_stderr("in hook `on_message`");
    assert!(log.contains("error: Stack overflow"), "{log}");
    assert!(log.contains(&format!("{}:5:", s.path())), "{log}");
    assert_eq!(bystander.exchange("3"), "48");
}

#[test]
fn a_test_run_reports_deep_recursion_in_its_cases_and_in_the_server() {
    let server = script_named("deep.rhai", &(recursion(16) + DEEP_HOOK));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a_server_side.rhai"),
        "send(\"60\");\nassert_eq(recv(), \"960\");\n",
    )
    .unwrap();
    let client_side = dir.path().join("b_client_side.rhai");
    std::fs::write(&client_side, recursion(16) + "down(200, 1);\n").unwrap();
    let junit = dir.path().join("junit.xml");
    tcpscript()
        .args(["test", "--server", server.path()])
        .arg(dir.path())
        .arg("--junit")
        .arg(&junit)
        .timeout(SLOW)
        .assert()
        .code(3)
        .stderr(contains("1 passed, 1 failed"))
        .stderr(contains("error: Stack overflow"))
        .stderr(contains(format!("{}:5:", client_side.display())));
    let report = std::fs::read_to_string(&junit).unwrap();
    assert!(report.contains("Stack overflow"), "{report}");
}

#[test]
fn load_mode_counts_deep_recursion_as_failures_and_prints_its_summary() {
    let server = Running::server(&["--echo", "-q"]);
    let s = script(&(recursion(16) + "send(\"x\");\nrecv();\ndown(200, 1);\n"));
    tcpscript()
        .args(["client", s.path(), "--connect", &server.addr()])
        .args(["--concurrency", "2", "--iterations", "6"])
        .timeout(SLOW)
        .assert()
        .code(3)
        .stderr(contains("6 conversations in"))
        .stderr(contains("0 passed, 6 failed"))
        .stderr(contains("Stack overflow"));
}

#[test]
fn a_client_recursing_deep_in_its_own_code_gets_its_answer_or_a_script_error() {
    // 20 levels: deeper than the main thread's 8 MiB in a debug build.
    let fine = script(&(recursion(20) + "assert_eq(down(62, 1), 1240);\n"));
    let server = Running::server(&["--echo", "-q"]);
    tcpscript()
        .args(["client", fine.path(), "--connect", &server.addr()])
        .timeout(SLOW)
        .assert()
        .success();
    let too_deep = script_named("too_deep.rhai", &(recursion(20) + "down(200, 1);\n"));
    tcpscript()
        .args(["client", too_deep.path(), "--connect", &server.addr()])
        .timeout(SLOW)
        .assert()
        .code(3)
        .stderr(contains("error: Stack overflow"))
        .stderr(contains(format!("{}:5:", too_deep.path())));
}

/// A server whose hooks build nested data as the peer asks, and use it.
const DATA_HOOKS: &str = r#"
fn nest(n) { let a = []; for i in 0..n { a = [take(a)]; } a }

fn on_message(msg) {
    let words = msg.split(" ");
    let n = parse_int(words[1]);
    switch words[0] {
        // Every step copies the array so far, and drops the old one.
        "build" => { let a = []; for i in 0..n { a = [a]; } "built" }
        "print" => nest(n).to_string().len(),
        "compare" => nest(n) == nest(n),
        "drop" => {
            let m = #{};
            for i in 0..n { m = #{k: take(m)}; }
            m = ();
            "dropped"
        }
    }
}
"#;

/// Asks the data server for `request`, expecting `reply`; a bystander is
/// served afterwards.
fn data_hook(request: &str, reply: &str) {
    let s = script(DATA_HOOKS);
    let server = Running::server(&[s.path(), "--max-ops", "0", "--hook-timeout", "2m"]);
    let mut bystander = LineClient::connect(server.port);
    let mut c = LineClient::connect(server.port);
    assert_eq!(c.exchange(request), reply);
    assert_eq!(bystander.exchange("print 2"), "6");
}

#[test]
fn a_hook_builds_nested_data_step_by_step() {
    data_hook("build 3000", "built");
}

#[test]
fn a_hook_prints_nested_data() {
    // `[[[...]]]`: two brackets a level.
    data_hook("print 1500", "3002");
}

#[test]
fn a_hook_compares_nested_data() {
    data_hook("compare 1500", "true");
}

#[test]
fn a_hook_drops_nested_data() {
    data_hook("drop 3000", "dropped");
}

/// Runs a client script (against an echo server) that must pass.
fn client_passes(source: &str) {
    let server = Running::server(&["--echo", "-q"]);
    let s = script(source);
    tcpscript()
        .args(["client", s.path(), "--connect", &server.addr()])
        .timeout(SLOW)
        .assert()
        .success();
}

const NEST: &str = "fn nest(n) { let a = []; for i in 0..n { a = [take(a)]; } a }\n";

#[test]
fn a_client_builds_and_drops_nested_data_step_by_step() {
    // Each step copies a map and an array: 3.4 KB of stack a level to copy
    // in a debug build, 10 MB at the end, past the main thread's 8 MiB.
    client_passes(
        "let m = #{};\nfor i in 0..3000 { m = #{k: [m]}; }\n\
         assert_eq(m.keys(), [\"k\"]);\nm = ();\n",
    );
}

#[test]
fn a_client_prints_nested_data() {
    client_passes(&format!(
        "{NEST}let a = nest(2000);\nassert_eq(a.to_string().len(), 4002);\n\
         assert_eq(`${{a}}`.len(), 4002);\nassert_eq((\"\" + a).len(), 4002);\n\
         log(a);\nassert(a.to_debug().starts_with(\"[[[\"));\n"
    ));
}

#[test]
fn a_client_compares_nested_data() {
    client_passes(&format!(
        "{NEST}let a = nest(2000);\nlet b = nest(2000);\nassert(a == b);\n\
         assert(!(a != b));\nassert(a in [1, b]);\nassert_eq(a, b);\n"
    ));
}

/// Closures that capture variables chain without limit: a million levels
/// in a second, then a recursive drop through all of them.
const CLOSURE_CHAIN: &str = "let prev = ();\nlet n = 0;\n\
    while n < 1000000 {\n    let q = prev;\n    prev = || q;\n    n += 1;\n}\nprev = ();\n";

#[test]
fn a_client_cannot_chain_closures_that_capture_variables() {
    let server = Running::server(&["--echo", "-q"]);
    let s = script_named("chain.rhai", CLOSURE_CHAIN);
    tcpscript()
        .args(["client", s.path(), "--connect", &server.addr()])
        .timeout(SLOW)
        .assert()
        .code(3)
        .stderr(contains(
            "error: closures cannot capture variables: `q` comes from outside this closure",
        ))
        .stderr(contains(format!("{}:5:15", s.path())));
}

#[test]
fn a_server_cannot_chain_closures_that_capture_variables() {
    let s = script_named(
        "chain.rhai",
        &format!("fn on_message(msg) {{\n{CLOSURE_CHAIN}}}\n"),
    );
    tcpscript()
        .args(["server", s.path(), "--listen", "127.0.0.1:0"])
        .assert()
        .code(3)
        .stderr(contains("closures cannot capture variables"))
        .stderr(contains(format!("{}:6:15", s.path())));
}
