//! Load mode's `--stages`: users over time, counted at the server.

use predicates::str::contains;

use crate::support::{Running, script, tcpscript};

/// Each message is held 100 ms, so the server sees every running user's
/// connection open at once, and says how many it sees.
const COUNTING_SERVER: &str =
    "fn on_message(msg) {\n    print(`peers ${peers().len()}`);\n    sleep(100);\n    msg\n}\n";

const ECHO_ONCE: &str = "send(\"ping\");\nassert_eq(recv(), \"ping\");\n";

#[test]
fn each_stage_reaches_its_user_count_at_the_server() {
    let server_script = script(COUNTING_SERVER);
    let server = Running::server(&[server_script.path(), "-q"]);
    let s = script(ECHO_ONCE);
    let began = std::time::Instant::now();
    let output = tcpscript()
        .args(["client", s.path(), "--connect", &server.addr(), "--json"])
        .args(["--stages", "2:0s,2:800ms,5:0s,5:800ms"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let elapsed = began.elapsed();
    let summary: serde_json::Value = serde_json::from_slice(&output).unwrap();
    assert_eq!(summary["concurrency"], 5);
    assert!(
        elapsed >= std::time::Duration::from_millis(1600),
        "{elapsed:?}"
    );
    let seen: Vec<usize> = server
        .wait_stdout("peers 5")
        .lines()
        .filter_map(|l| l.strip_prefix("peers ")?.parse().ok())
        .collect();
    // The first stage's users, then the second's. A user's next
    // connection may open before the server sees its last one close (on a
    // busy machine, a few of them): counts run above the users at times.
    let first_stage: Vec<usize> = seen.iter().copied().take_while(|n| *n < 5).collect();
    assert!(first_stage.contains(&2), "{seen:?}");
    // 2 users for 800 ms at 100 ms a conversation: about 16 messages
    // before the others join (all 5 at once would give 4 at most).
    assert!(first_stage.len() >= 8, "{seen:?}");
    assert!(seen.contains(&5), "{seen:?}");
}

#[test]
fn stages_replace_concurrency_and_duration() {
    let s = script(ECHO_ONCE);
    tcpscript()
        .args(["client", s.path(), "--stages", "2:1s", "--concurrency", "3"])
        .assert()
        .code(2)
        .stderr(contains("--concurrency"));
    tcpscript()
        .args(["client", s.path(), "--stages", "0:1s"])
        .assert()
        .code(2)
        .stderr(contains("no stage has any user"));
}
