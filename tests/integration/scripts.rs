//! Every script shipped in `scripts/` runs here, against its partner.

use predicates::prelude::*;
use predicates::str::contains;

use crate::support::{LineClient, Running, repo_path, shipped, tcpscript};

fn run_pair(server: &[&str], client: &str, client_args: &[&str]) -> assert_cmd::assert::Assert {
    let mut args = vec![shipped(server[0])];
    args.extend(server[1..].iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Running::server(&args);
    tcpscript()
        .args(["client", &shipped(client), "--connect", &server.addr()])
        .args(client_args)
        .assert()
}

#[test]
fn tutorial_pair() {
    run_pair(&["reply.rhai"], "conversation.rhai", &[]).success();
}

#[test]
fn parametrised_conversation_takes_its_parameters() {
    run_pair(&["reply.rhai"], "parametrised.rhai", &[]).success();
    run_pair(
        &["reply.rhai"],
        "parametrised.rhai",
        &["--set", "name=ada", "--set", "rounds=7"],
    )
    .success()
    .stderr(contains("9 sent"));
    run_pair(
        &["reply.rhai"],
        "parametrised.rhai",
        &["--set", "rounds=many"],
    )
    .code(2)
    .stderr(contains("parameter `rounds` must be an integer"));
}

#[test]
fn binary_key_value_pair() {
    run_pair(&["kv_server.rhai"], "kv_client.rhai", &[])
        .success()
        .stderr(contains("ok: "));
}

#[test]
fn binary_server_refuses_oversized_and_malformed_frames_alone() {
    let server = Running::server(&[&shipped("kv_server.rhai"), "--max-frame", "16"]);
    let mut rude = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    use std::io::{Read, Write};
    rude.write_all(b"\x00\x20").unwrap();
    let mut rest = Vec::new();
    let _ = rude.read_to_end(&mut rest);
    server.wait_stderr("larger than --max-frame (16 bytes)");
    tcpscript()
        .args([
            "client",
            &shipped("kv_client.rhai"),
            "--connect",
            &server.addr(),
        ])
        .assert()
        .success();
}

#[test]
fn flaky_pair() {
    run_pair(&["flaky_server.rhai"], "flaky_client.rhai", &[]).success();
}

#[test]
fn flaky_server_makes_a_hurried_client_time_out() {
    let server = Running::server(&[&shipped("flaky_server.rhai"), "--set", "delay=2000"]);
    let s = crate::support::script("send(\"anyone there?\");\nrecv();\n");
    tcpscript()
        .args([
            "client",
            s.path(),
            "--connect",
            &server.addr(),
            "--timeout",
            "200ms",
        ])
        .assert()
        .code(1)
        .stderr(contains("timed out after 200ms waiting for a message"));
}

#[test]
fn flaky_server_drops_every_nth_message() {
    let server = Running::server(&[&shipped("flaky_server.rhai"), "--set", "drop_every=3"]);
    let mut c = LineClient::connect(server.port);
    assert_eq!(c.exchange("one"), "one");
    assert_eq!(c.exchange("two"), "two");
    c.send("three");
    c.expect_closed();
    server.wait_stderr("dropping the connection at message 3");
    let mut next = LineClient::connect(server.port);
    assert_eq!(next.exchange("fresh"), "fresh");
}

#[test]
fn tutorial_server_answers_nc_style_lines_and_raw_messages_in_kind() {
    let server = Running::server(&[&shipped("reply.rhai")]);
    let mut c = LineClient::connect(server.port);
    assert_eq!(c.exchange("upper typed by hand"), "TYPED BY HAND");
    assert_eq!(c.exchange("exit"), "bye after 1 messages");
    c.expect_closed();
}

#[test]
fn every_shipped_script_compiles_and_is_run_by_this_file() {
    // The protocol scripts run against real peers, in their own files.
    let this_file = [
        include_str!("scripts.rs"),
        include_str!("protocols.rs"),
        include_str!("protocols_http_smtp.rs"),
        include_str!("proxy_script.rs"),
        include_str!("udp.rs"),
    ]
    .concat();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(repo_path("scripts")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rhai") {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            assert!(
                this_file.contains(&format!("\"{name}\"")),
                "scripts/{name} is shipped but no test here runs it"
            );
            names.push(path.display().to_string());
        }
    }
    assert!(names.len() >= 9, "{names:?}");
    tcpscript()
        .arg("check")
        .args(&names)
        .assert()
        .success()
        .stderr(
            contains("ok: ")
                .count(names.len())
                .and(contains("error").not()),
        );
}

#[test]
fn echo_conversation_in_load_mode_against_the_echo_server() {
    let server = Running::server(&["--echo", "-q"]);
    tcpscript()
        .args(["client", &shipped("echo_conversation.rhai")])
        .args(["--connect", &server.addr()])
        .args(["--concurrency", "4", "--iterations", "40"])
        .assert()
        .success()
        .stderr(contains("40 passed, 0 failed"));
}

#[test]
fn chat_pair_through_the_test_runner() {
    tcpscript()
        .args([
            "test",
            "--server",
            &shipped("chat.rhai"),
            &shipped("chat_conversation.rhai"),
        ])
        .assert()
        .success();
}

#[test]
fn chat_room_with_plain_sockets() {
    let server = Running::server(&[&shipped("chat.rhai")]);
    let mut ann = LineClient::connect(server.port);
    let greeting = ann.recv().unwrap();
    assert!(greeting.starts_with("welcome guest1:"), "{greeting}");
    let mut ben = LineClient::connect(server.port);
    assert!(ben.recv().unwrap().starts_with("welcome guest2:"));
    assert_eq!(ann.recv().unwrap(), "* guest2 joined");
    ben.send("hello ann");
    assert_eq!(ann.recv().unwrap(), "<guest2> hello ann");
    drop(ben);
    assert_eq!(ann.recv().unwrap(), "* guest2 left");
    assert_eq!(ann.exchange("/who"), "here: guest1");
}
