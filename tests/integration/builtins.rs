//! Rhai built-ins that would build far more than their input, called from
//! a server hook: each fails fast with an error naming the function and
//! the limit, the server's memory stays bounded, and a bystander
//! connection is still served.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::{LineClient, Running, script};

/// Most a hook's attack may raise the server's peak memory above idle.
const MEMORY_BUDGET_KIB: u64 = 256 * 1024;

/// Longest an attack may take to be stopped: a debug build, on a busy
/// machine, well before anything is built.
const FAST: Duration = Duration::from_secs(5);

/// `/proc/PID/status` field `key` (`VmRSS`, `VmHWM`), in KiB.
fn memory_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A server hook that runs `attack` for the message `go` and echoes
/// anything else.
fn hook(attack: &str) -> String {
    format!("fn on_message(m) {{\n    if m == \"go\" {{\n        {attack}\n    }}\n    m\n}}\n")
}

/// Sends `payload` to a server running `source` (with more flags `args`),
/// and checks that the hook failed fast with `message`, within the memory
/// budget, while another connection is still served.
fn attack_with(source: &str, args: &[&str], payload: &[u8], message: &str) {
    let script = script(source);
    let mut all = vec![script.path()];
    all.extend_from_slice(args);
    let server = Running::server(&all);
    let idle = memory_kib(server.pid(), "VmRSS");

    let mut attacker = LineClient::connect(server.port);
    let started = Instant::now();
    attacker.stream().write_all(payload).unwrap();
    attacker.expect_closed();
    let took = started.elapsed();
    server.wait_stderr(message);

    let mut bystander = LineClient::connect(server.port);
    assert_eq!(bystander.exchange("ping"), "ping");

    let peak = memory_kib(server.pid(), "VmHWM");
    assert!(
        peak.saturating_sub(idle) < MEMORY_BUDGET_KIB,
        "peak {peak} KiB against {idle} KiB idle"
    );
    assert!(took < FAST, "the hook took {took:?} to be stopped");
}

fn attack(attack: &str, message: &str) {
    attack_with(&hook(attack), &[], b"go\n", message);
}

/// Builds an 8 MiB string `s` (just under the string limit) of `unit`.
fn big(unit: &str) -> String {
    format!(r#"let s = ""; s.pad(8000000, "{unit}");"#)
}

#[test]
fn split_on_an_empty_delimiter() {
    attack(
        &format!(r#"{} s.split("");"#, big("x")),
        "split(): 8000002 pieces is more than the array limit of 100000",
    );
}

#[test]
fn split_on_a_character() {
    attack(
        &format!("{} s.split(',');", big(",")),
        "split(): 8000001 pieces is more than the array limit of 100000",
    );
}

#[test]
fn split_rev() {
    attack(
        &format!(r#"{} s.split_rev(",");"#, big(",")),
        "split_rev(): 8000001 pieces is more than the array limit of 100000",
    );
}

#[test]
fn split_on_whitespace() {
    attack(
        &format!("{} s.split();", big("a ")),
        "split(): 4000000 pieces is more than the array limit of 100000",
    );
}

#[test]
fn to_chars() {
    attack(
        &format!("{} s.to_chars();", big("x")),
        "to_chars(): 8000000 characters is more than the array limit of 100000",
    );
}

#[test]
fn replace_each_character_with_a_big_string() {
    attack(
        &format!(
            r#"{} let t = ""; t.pad(100, "a"); t.replace("a", s);"#,
            big("x")
        ),
        "replace(): the result would be 800000000 bytes, more than the string limit of 8388608",
    );
}

#[test]
fn pad_with_an_empty_string() {
    attack(
        r#"let s = "a"; s.pad(2, "");"#,
        "pad(): the padding is empty, so the string never reaches 2 characters",
    );
}

#[test]
fn array_pad_with_a_big_item() {
    attack(
        &format!("{} let a = []; a.pad(1152921504606846976, s);", big("x")),
        "pad(): the array would hold 1152921504606846976 items, more than the array limit of 100000",
    );
}

#[test]
fn blob_to_array() {
    // 20 MiB that are not UTF-8 reach the hook as a blob.
    let mut payload = vec![0xff; 20 << 20];
    payload.push(b'\n');
    attack_with(
        r#"fn on_message(m) { if type_of(m) == "blob" { m.to_array(); } m }"#,
        &["--max-frame", "32MiB"],
        &payload,
        "to_array(): 20971520 bytes is more than the array limit of 100000",
    );
}

#[test]
fn parse_json_of_millions_of_values() {
    // Every array literal within the limit, four million values in all.
    let build = r#"
        let chunk = "[";
        chunk.pad(99990 * 2, "0,");
        chunk += "0]";
        let text = "{\"a\":[" + chunk;
        for i in 0..40 { text += "," + chunk; }
        text += "]}";
        parse_json(text);"#;
    attack(
        build,
        "parse_json(): 4099632 values is more than the array limit of 100000 \
         and the map limit of 100000 allow together",
    );
}

#[test]
fn map_to_big_strings() {
    attack(
        &format!(
            "{} let a = []; a.pad(60, 0); a.map((|s, x| s + \"y\").curry(s));",
            big("x")
        ),
        "map(): the results would hold 16000002 bytes of strings, more than the string limit of 8388608",
    );
}

#[test]
fn map_of_a_map_to_big_strings() {
    attack(
        &format!(
            "{} let m = #{{}}; for i in 0..60 {{ m[`k${{i}}`] = i; }} m.map((|s, v| s + \"y\").curry(s));",
            big("x")
        ),
        "map(): the results would hold 16000002 bytes of strings, more than the string limit of 8388608",
    );
}

#[test]
fn zip_to_big_strings() {
    attack(
        &format!(
            "{} let a = []; a.pad(60, 0); a.zip(a, (|s, x, y| s + \"y\").curry(s));",
            big("x")
        ),
        "zip(): the results would hold 16000002 bytes of strings, more than the string limit of 8388608",
    );
}

#[test]
fn for_each_growing_every_element() {
    attack(
        &format!(
            "{} let a = []; a.pad(60, 0); a.for_each((|s| this = s + \"y\").curry(s));",
            big("x")
        ),
        "for_each(): the array would hold 16000002 bytes of strings, more than the string limit of 8388608",
    );
}

#[test]
fn hex_of_a_big_string() {
    attack(
        &format!("{} hex(s);", big("x")),
        "hex(): the result would be 16000000 bytes, more than the string limit of 8388608",
    );
}
