//! The shipped HTTP/1.1 and SMTP scripts against the real thing, both
//! directions: our client against Python's http.server and aiosmtpd, and
//! curl and smtplib against our mocks.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::support::{Running, closed_port, repo_path, shipped, tcpscript};

/// The size the issue asks binaries to go through at. Messages over
/// 100,000 bytes cannot be blobs until large binaries land, so the tests
/// at this size fail until then; the `_below_the_blob_limit` tests run the
/// same path with a binary that fits.
const LARGE: usize = 200_000;
const FITS: usize = 90_000;

/// `python3 -m http.server --protocol HTTP/1.1` serving `dir` on a free
/// loopback port: the port, and the server (killed when dropped).
fn python_http_server(dir: &Path) -> (u16, Running) {
    let port = closed_port();
    let mut command = Command::new("python3");
    command
        .args(["-m", "http.server", "--protocol", "HTTP/1.1", "--bind"])
        .args(["127.0.0.1", &port.to_string()])
        .current_dir(dir);
    (port, Running::start(command, None))
}

/// Byte `i` is `i % 251`, as scripts/http_conversation.rhai expects.
fn counting(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

/// Bytes that look random (xorshift), every value in them.
fn noise(size: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn http_conversation(size: usize) {
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("hello.txt"), "hello from python\n").unwrap();
    std::fs::write(site.path().join("bin.dat"), counting(size)).unwrap();
    let (port, _server) = python_http_server(site.path());
    tcpscript()
        .args([
            "client",
            &shipped("http_conversation.rhai"),
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--connect-retry",
            "10s",
            "--set",
            &format!("size={size}"),
        ])
        .assert()
        .success();
}

#[test]
fn http_conversation_against_python_http_server() {
    http_conversation(LARGE);
}

#[test]
fn http_conversation_against_python_http_server_below_the_blob_limit() {
    http_conversation(FITS);
}

#[test]
fn http_conversation_fails_when_a_byte_of_the_binary_differs() {
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("hello.txt"), "hello from python\n").unwrap();
    let mut binary = counting(FITS);
    binary[FITS / 2] ^= 1;
    std::fs::write(site.path().join("bin.dat"), binary).unwrap();
    let (port, _server) = python_http_server(site.path());
    tcpscript()
        .args([
            "client",
            &shipped("http_conversation.rhai"),
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--connect-retry",
            "10s",
            "--set",
            &format!("size={FITS}"),
        ])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("http_conversation.rhai:30:"));
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["--max-time", "15"])
        .args(args)
        .output()
        .expect("curl runs")
}

fn curl_echoes(size: usize) {
    let server = Running::server(&[&shipped("http_mock.rhai")]);
    let dir = tempfile::tempdir().unwrap();
    let sent = noise(size);
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    std::fs::write(&input, &sent).unwrap();
    let curl = curl(&[
        "-sS",
        "--fail",
        "--data-binary",
        &format!("@{}", input.display()),
        &format!("http://{}/echo", server.addr()),
        "-o",
        output.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&curl.stderr);
    assert!(
        curl.status.success(),
        "curl: {stderr}\nmock: {}",
        server.stderr()
    );
    assert!(!stderr.contains("Excess"), "{stderr}");
    let got = std::fs::read(&output).unwrap();
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "the echoed body differs from the one sent");
}

#[test]
fn curl_posts_a_binary_body_and_gets_it_back_byte_exact() {
    curl_echoes(LARGE + 50_000);
}

#[test]
fn curl_posts_a_binary_body_and_gets_it_back_below_the_blob_limit() {
    curl_echoes(FITS);
}

#[test]
fn curl_gets_404_from_the_mock_for_an_unknown_path() {
    let server = Running::server(&[&shipped("http_mock.rhai")]);
    let curl = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{}/nowhere", server.addr()),
    ]);
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "404");
}

#[test]
fn curl_reuses_one_connection_to_the_mock_for_two_urls() {
    let server = Running::server(&[&shipped("http_mock.rhai")]);
    let url = format!("http://{}/hello", server.addr());
    let curl = curl(&["-sSv", &url, &url]);
    let stderr = String::from_utf8_lossy(&curl.stderr);
    assert!(curl.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout),
        "hello from tcpscript\n".repeat(2)
    );
    assert!(
        stderr.contains("Re-using existing connection"),
        "curl did not keep the connection:\n{stderr}"
    );
    assert!(!stderr.contains("Excess"), "{stderr}");
    // The mock saw both requests from one client port.
    let log = server.wait_stderr_count("GET /hello", 2);
    let peers: BTreeSet<&str> = log
        .lines()
        .filter(|l| l.ends_with("GET /hello"))
        .map(|l| l.split(']').next().unwrap())
        .collect();
    assert_eq!(peers.len(), 1, "{log}");
}

#[test]
fn smtp_conversation_against_aiosmtpd() {
    let port = closed_port();
    let mut command = Command::new("python3");
    command.args([
        "-u",
        "-m",
        "aiosmtpd",
        "-n",
        "-l",
        &format!("127.0.0.1:{port}"),
    ]);
    let server = Running::start(command, None);
    tcpscript()
        .args([
            "client",
            &shipped("smtp_conversation.rhai"),
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--connect-retry",
            "10s",
        ])
        .assert()
        .success();
    // aiosmtpd printed the message it accepted, the dot-stuffing undone.
    let printed = server.wait_stdout("END MESSAGE");
    assert!(
        printed.contains("Subject: tcpscript says hello"),
        "{printed}"
    );
    assert!(
        printed.contains("\nHello Bob,\n.a line that starts with a dot\n"),
        "{printed}"
    );
}

#[test]
fn smtplib_sends_a_large_message_through_the_smtp_mock() {
    let server = Running::server(&[&shipped("smtp_mock.rhai")]);
    let mut client = Command::new("python3");
    client
        .arg("-u")
        .arg(repo_path("tests/fixtures/smtplib_client.py"))
        .args([server.port.to_string(), LARGE.to_string()]);
    let mut client = Running::start(client, None);
    assert_eq!(
        client.wait_exit().code(),
        Some(0),
        "{}\nmock: {}",
        client.stderr(),
        server.stderr()
    );
    let printed = client.wait_stdout("smtplib ok: sent ");
    let size: usize = printed
        .trim()
        .rsplit_once("sent ")
        .and_then(|(_, rest)| rest.strip_suffix(" bytes"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size in {printed:?}"));
    assert!(size >= LARGE, "{size}");
    server.wait_stderr(&format!(
        "message 1 from alice@example.test to [\"bob@example.test\"]: {size} bytes"
    ));
}
