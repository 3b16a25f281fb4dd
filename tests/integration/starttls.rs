//! `starttls()`: a plain conversation that upgrades to TLS halfway, both
//! ways against software tcpscript did not write (aiosmtpd's STARTTLS,
//! Python's `smtplib.starttls()`), and the bytes an attacker in the middle
//! slips in before the handshake refused on both sides.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// A certificate for 127.0.0.1 and the CA that signed it.
fn server_identity(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    openssl_identity(
        dir,
        "smtp",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth",
    )
}

/// aiosmtpd offering STARTTLS with `cert` and `key`, and requiring it.
fn aiosmtpd_with_starttls(cert: &Path, key: &Path) -> (Running, u16) {
    let port = closed_port();
    let mut command = Command::new("python3");
    command.args(["-u", "-m", "aiosmtpd", "-n", "-l"]);
    command.arg(format!("127.0.0.1:{port}"));
    command.arg("--tlscert").arg(cert).arg("--tlskey").arg(key);
    (Running::start(command, None), port)
}

#[test]
fn smtp_conversation_upgrades_with_starttls_against_aiosmtpd() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = server_identity(dir.path());
    let (server, port) = aiosmtpd_with_starttls(&cert, &key);
    tcpscript()
        .args(["client", &shipped("smtp_conversation.rhai")])
        .args([
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--connect-retry",
            "10s",
        ])
        .args(["--set", "starttls=true", "--tls-ca"])
        .arg(&ca)
        .assert()
        .success();
    // aiosmtpd requires TLS before MAIL: the message it printed came over it.
    let printed = server.wait_stdout("END MESSAGE");
    assert!(
        printed.contains("Subject: tcpscript says hello"),
        "{printed}"
    );
}

#[test]
fn starttls_verifies_the_server_like_tls_does() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, cert, key) = server_identity(dir.path());
    let (_server, port) = aiosmtpd_with_starttls(&cert, &key);
    let out = tcpscript()
        .args(["client", &shipped("smtp_conversation.rhai")])
        .args([
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--connect-retry",
            "10s",
        ])
        .args(["--set", "starttls=true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("starttls()"), "{stderr}");
    assert!(stderr.contains("unknown issuer"), "{stderr}");
}

#[test]
fn smtplib_starttls_against_the_smtp_mock() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let server = Running::server(&[
        &shipped("smtp_mock.rhai"),
        "--tls-ca-out",
        ca.to_str().unwrap(),
    ]);
    // The certificate STARTTLS will present, announced like --tls's.
    server.wait_stderr("tls fingerprint SHA256 ");
    let mut client = Command::new("python3");
    client
        .arg("-u")
        .arg(repo_path("tests/fixtures/smtplib_client.py"))
        .args([&server.port.to_string(), "1000"])
        .arg(&ca);
    let mut client = Running::start(client, None);
    assert_eq!(
        client.wait_exit().code(),
        Some(0),
        "{}\nmock: {}",
        client.stderr(),
        server.stderr()
    );
    client.wait_stdout("smtplib: TLSv1.3 after STARTTLS");
    client.wait_stdout("smtplib ok: sent ");
    server.wait_stderr("message 1 from alice@example.test");
}

#[test]
fn our_smtp_conversation_upgrades_against_our_smtp_mock() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let server = Running::server(&[
        &shipped("smtp_mock.rhai"),
        "--tls-ca-out",
        ca.to_str().unwrap(),
    ]);
    tcpscript()
        .args(["client", &shipped("smtp_conversation.rhai")])
        .args([
            "--connect",
            &server.addr(),
            "--set",
            "starttls=true",
            "--tls-ca",
        ])
        .arg(&ca)
        .assert()
        .success();
    server.wait_stderr("message 1 from alice@tcpscript.test");
}

#[test]
fn a_server_does_not_read_plaintext_sent_after_starttls_as_if_it_came_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let server = Running::server(&[
        &shipped("smtp_mock.rhai"),
        "--tls-ca-out",
        ca.to_str().unwrap(),
    ]);
    let mut peer = TcpStream::connect(server.addr()).unwrap();
    peer.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut greeting = [0u8; 256];
    let n = crate::support::read_some(&mut peer, &mut greeting).unwrap();
    assert!(greeting[..n].starts_with(b"220 "));
    // One write: the command and what an attacker in the middle appended.
    peer.write_all(b"STARTTLS\r\nMAIL FROM:<mallory@evil.test>\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let _ = peer.read_to_end(&mut rest);
    assert_eq!(String::from_utf8_lossy(&rest), "220 Ready to start TLS\r\n");
    let stderr = server.wait_stderr("STARTTLS injection");
    assert!(
        stderr.contains("31 bytes arrived in the clear after the command"),
        "{stderr}"
    );
}

#[test]
fn a_client_does_not_read_plaintext_sent_after_the_go_ahead_as_if_it_came_over_tls() {
    let s = script(r#"fn on_message(m) { send_raw("220 go ahead\r\n250 injected\r\n"); }"#);
    let server = Running::server(&[s.path(), "--tls-ca-out", "/dev/null"]);
    let client = script(
        r#"
        send("STARTTLS");
        assert_eq(recv_line(), "220 go ahead");
        starttls();
        "#,
    );
    let out = tcpscript()
        .args(["client", client.path(), "--connect", &server.addr()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("14 bytes arrived after the go-ahead and before the TLS handshake"),
        "{stderr}"
    );
}

#[test]
fn starttls_on_a_tls_connection_is_a_script_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let server = Running::server(&["--echo", "--tls", "--tls-ca-out", ca.to_str().unwrap()]);
    let client = script("send(\"hi\");\nstarttls();\n");
    let out = tcpscript()
        .args([
            "client",
            client.path(),
            "--connect",
            &server.addr(),
            "--tls",
            "--tls-ca",
        ])
        .arg(&ca)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("starttls(): the connection already speaks TLS"),
        "{stderr}"
    );
    assert!(stderr.contains(":2:1"), "{stderr}");
}

#[test]
fn a_hook_calling_starttls_on_a_tls_connection_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let s = script("fn on_message(m) { starttls(); m }");
    let server = Running::server(&[s.path(), "--tls", "--tls-ca-out", ca.to_str().unwrap()]);
    let client = script("send(\"hi\");\nexpect_close();\n");
    tcpscript()
        .args([
            "client",
            client.path(),
            "--connect",
            &server.addr(),
            "--tls",
            "--tls-ca",
        ])
        .arg(&ca)
        .assert()
        .success();
    let stderr = server.wait_stderr("already speaks TLS");
    assert!(stderr.contains("starttls()"), "{stderr}");
}

#[test]
fn test_with_a_starttls_server_trusts_its_certificate_without_flags() {
    tcpscript()
        .args(["test", "--server", &shipped("smtp_mock.rhai")])
        .args(["--set", "starttls=true", &shipped("smtp_conversation.rhai")])
        .assert()
        .success()
        .stderr(predicates::str::contains("1 passed, 0 failed"));
}

#[test]
fn connect_options_configure_that_connections_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let server = Running::server(&[
        &shipped("smtp_mock.rhai"),
        "--tls-ca-out",
        ca.to_str().unwrap(),
    ]);
    let upgrade = |options: &str| {
        let client = script(&format!(
            r#"
            let c = connect("{addr}", {options});
            assert_eq(c.recv_smtp().code, 220);
            c.send_raw("STARTTLS\r\n");
            assert_eq(c.recv_smtp().code, 220);
            c.starttls();
            c.send_raw("NOOP\r\n");
            assert_eq(c.recv_smtp().code, 250);
            "#,
            addr = server.addr(),
        ));
        tcpscript()
            .args(["client", client.path(), "--connect", &server.addr()])
            .output()
            .unwrap()
    };
    let trusted = upgrade(&format!("#{{ca: {:?}}}", ca.to_str().unwrap()));
    assert_eq!(
        trusted.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    // Without the option, the command's (no CA given) does not trust it.
    let untrusted = upgrade("#{}");
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert_eq!(untrusted.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("unknown issuer"), "{stderr}");
}
