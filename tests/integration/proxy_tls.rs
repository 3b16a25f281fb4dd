//! `tcpscript proxy` with TLS on either side, between peers it did not
//! write: redis-cli and redis-server, each speaking TLS or not, with
//! certificates made by openssl.

use std::process::{Command, Stdio};

use tempfile::TempDir;

use crate::proxy::{proxy, redis_server};
use crate::support::{BIN, Running, closed_port, openssl_identity};

/// A throwaway redis-server speaking only TLS, with a certificate for
/// 127.0.0.1 signed by the returned CA.
fn redis_tls_server(dir: &TempDir) -> (Running, std::path::PathBuf) {
    let (ca, cert, key) = openssl_identity(dir.path(), "redis", "subjectAltName=IP:127.0.0.1");
    let port = closed_port();
    let mut command = Command::new("redis-server");
    command
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .arg("--tls-ca-cert-file")
        .arg(&ca)
        .args(["--tls-auth-clients", "no"]);
    let mut redis = Running::start(command, None);
    redis.wait_stdout("Ready to accept connections");
    redis.port = port;
    (redis, ca)
}

/// `redis-cli -p PORT ARGS`, with `tls` its TLS flags: its exit status
/// and what it printed on stdout and stderr.
fn redis_cli(port: u16, tls: &[&str], args: &[&str]) -> (bool, String) {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(tls)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn tls_toward_clients_terminates_in_front_of_a_plain_redis() {
    let dir = TempDir::new().unwrap();
    let ca = dir.path().join("proxy-ca.pem");
    let redis = redis_server();
    let proxy = proxy(
        &redis.addr(),
        &["--tls", "--tls-ca-out", ca.to_str().unwrap()],
    );
    proxy.wait_stderr("tls fingerprint SHA256 ");
    let tls = ["--tls", "--cacert", ca.to_str().unwrap()];
    let (ok, out) = redis_cli(proxy.port, &tls, &["SET", "greeting", "hello over TLS"]);
    assert!(ok && out.contains("OK"), "{out}");
    // The upstream got it in the clear: redis itself answers without TLS.
    let (ok, out) = redis_cli(redis.port, &[], &["GET", "greeting"]);
    assert!(ok && out.contains("hello over TLS"), "{out}");
}

#[test]
fn tls_toward_the_upstream_lets_a_plain_client_talk_to_a_tls_redis() {
    let dir = TempDir::new().unwrap();
    let (redis, ca) = redis_tls_server(&dir);
    let proxy = proxy(
        &redis.addr(),
        &["--upstream-tls", "--upstream-tls-ca", ca.to_str().unwrap()],
    );
    let (ok, out) = redis_cli(proxy.port, &[], &["PING"]);
    assert!(ok && out.contains("PONG"), "{out}");
    // Without the proxy, plain TCP to that port gets nothing sensible.
    let (_, out) = redis_cli(redis.port, &[], &["PING"]);
    assert!(!out.contains("PONG"), "{out}");
}

#[test]
fn tls_on_both_sides_carries_a_script_s_changes() {
    let dir = TempDir::new().unwrap();
    let (redis, ca) = redis_tls_server(&dir);
    let proxy_ca = dir.path().join("proxy-ca.pem");
    let script = crate::support::script(
        r#"
        fn on_server_message(msg) { msg.replace("+PONG", "+PONG via the proxy"); msg }
        "#,
    );
    // A bare port, as the README writes it: verified as 127.0.0.1.
    let proxy = proxy(
        &redis.port.to_string(),
        &[
            script.path(),
            "--tls",
            "--tls-ca-out",
            proxy_ca.to_str().unwrap(),
            "--upstream-tls",
            "--upstream-tls-ca",
            ca.to_str().unwrap(),
        ],
    );
    let tls = ["--tls", "--cacert", proxy_ca.to_str().unwrap()];
    let (ok, out) = redis_cli(proxy.port, &tls, &["PING"]);
    assert!(ok && out.contains("PONG via the proxy"), "{out}");
}

#[test]
fn an_upstream_certificate_it_cannot_verify_resets_the_client_and_says_which_flag_fixes_it() {
    let dir = TempDir::new().unwrap();
    let (redis, _ca) = redis_tls_server(&dir);
    let proxy = proxy(&redis.addr(), &["--upstream-tls"]);
    let (ok, out) = redis_cli(proxy.port, &[], &["PING"]);
    assert!(!ok || !out.contains("PONG"), "{out}");
    let said = proxy.wait_stderr("resetting the client");
    assert!(said.contains("TLS handshake failed"), "{said}");
    assert!(said.contains("unknown issuer"), "{said}");
    assert!(said.contains("--upstream-tls-ca"), "{said}");
}

#[test]
fn a_plain_client_fails_its_handshake_and_the_proxy_serves_the_next() {
    let dir = TempDir::new().unwrap();
    let ca = dir.path().join("proxy-ca.pem");
    let redis = redis_server();
    let proxy = proxy(
        &redis.addr(),
        &["--tls", "--tls-ca-out", ca.to_str().unwrap()],
    );
    let (_, out) = redis_cli(proxy.port, &[], &["PING"]);
    assert!(!out.contains("PONG"), "{out}");
    let said = proxy.wait_stderr("TLS handshake failed");
    assert!(said.contains("does not speak TLS"), "{said}");
    let tls = ["--tls", "--cacert", ca.to_str().unwrap()];
    let (ok, out) = redis_cli(proxy.port, &tls, &["PING"]);
    assert!(ok && out.contains("PONG"), "{out}");
}

#[test]
fn listening_side_tls_flags_need_tls() {
    let out = Command::new(BIN)
        .args([
            "proxy",
            "--upstream",
            "127.0.0.1:1",
            "--tls-san",
            "example.test",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("need --tls"),
        "{out:?}"
    );
}

#[test]
fn toxics_apply_inside_tls_on_both_sides() {
    let dir = TempDir::new().unwrap();
    let (redis, ca) = redis_tls_server(&dir);
    let proxy_ca = dir.path().join("proxy-ca.pem");
    let proxy = proxy(
        &redis.addr(),
        &[
            "--tls",
            "--tls-ca-out",
            proxy_ca.to_str().unwrap(),
            "--upstream-tls",
            "--upstream-tls-ca",
            ca.to_str().unwrap(),
            "--latency",
            "400ms",
            "--direction",
            "down",
        ],
    );
    let tls = ["--tls", "--cacert", proxy_ca.to_str().unwrap()];
    let started = std::time::Instant::now();
    let (ok, out) = redis_cli(proxy.port, &tls, &["PING"]);
    assert!(ok && out.contains("PONG"), "{out}");
    // The toxics see the decrypted stream: the reply waits out the latency.
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}
