//! TLS in every command: `tcpscript test` with its own TLS server or an
//! outside one, manual mode both ways against peers tcpscript did not
//! write (`openssl s_server`, Python's `ssl`), and `--record` over TLS.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

use crate::support::{BIN, LineClient, Running, repo_path, script, script_named, tcpscript};
use crate::tls_client::{Pki, s_server};

/// A server script that tells each message what the handshake settled.
const TELLS_TLS: &str = r#"
fn on_message(msg) {
    let tls = tls_info();
    `${msg} over ${tls.version} alpn=${tls.alpn}`
}
"#;

/// Python's `ssl` client (tests/fixtures/tls_client.py): verifies the
/// server on `port` as `localhost` against `ca`, sends `hello`, prints
/// `reply ...`.
fn python_client(port: u16, ca: &Path) -> std::process::Output {
    Command::new("python3")
        .arg(repo_path("tests/fixtures/tls_client.py"))
        .arg(port.to_string())
        .arg(ca)
        .output()
        .expect("python3")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn test_with_its_own_tls_server_trusts_the_throwaway_ca_without_flags() {
    let server = script(TELLS_TLS);
    let first = script_named(
        "first.rhai",
        "send(\"hi\");\nassert_eq(recv(), \"hi over TLSv1.3 alpn=h2\");\n\
         assert_eq(tls_info().version, \"TLSv1.3\");\n",
    );
    let second = script_named(
        "second.rhai",
        "let info = tls_info();\nassert_eq(info.version, \"TLSv1.3\");\n\
         assert_eq(info.alpn, \"h2\");\nassert_eq(info.sni, ());\n\
         send(\"again\");\nexpect(\"^again over TLSv1.3\");\n",
    );
    tcpscript()
        .args([
            "test",
            "--server",
            server.path(),
            "--tls",
            "--tls-alpn",
            "h2",
        ])
        .args([first.path(), second.path(), "-j", "2"])
        .assert()
        .success()
        .stderr(contains("2 passed, 0 failed"))
        .stderr(contains(format!(
            "server {} listening on 127.0.0.1:",
            server.path()
        )))
        .stderr(contains(format!(
            "server {} tls fingerprint SHA256 ",
            server.path()
        )));
    // The same cases over plain TCP: tls_info() is () and they fail.
    tcpscript()
        .args(["test", "--server", server.path(), first.path()])
        .assert()
        .code(1)
        .stderr(contains("0 passed, 1 failed"));
}

#[test]
fn test_with_its_own_tls_server_verifies_a_name_given_with_tls_san() {
    let server = script(TELLS_TLS);
    let case = script(
        "send(\"hi\");\nexpect(\"^hi over TLSv1.3\");\n\
         assert_eq(tls_info().sni, \"mock.test\");\n",
    );
    let run = |san: &[&str]| {
        let mut cmd = tcpscript();
        cmd.args(["test", "--server", server.path(), "--tls"])
            .args(["--tls-servername", "mock.test"])
            .args(san)
            .arg(case.path());
        cmd.assert()
    };
    run(&["--tls-san", "mock.test"]).success();
    // Without the SAN the name is not the certificate's: the case says so.
    run(&[]).code(4).stderr(contains("name mismatch"));
}

#[test]
fn test_with_its_own_tls_server_can_require_client_certificates() {
    let pki = Pki::new();
    let server = script(
        "fn on_message(msg) { if tls_info().peer_fingerprint == () { \"anonymous\" } else { \"known\" } }",
    );
    let case = script("send(\"who\");\nassert_eq(recv(), \"known\");\n");
    let run = |identity: &[&str]| {
        let mut cmd = tcpscript();
        cmd.args(["test", "--server", server.path(), "--tls"])
            .args(["--tls-client-ca", &pki.path("ca.pem")])
            .args(identity)
            .arg(case.path());
        cmd.assert()
    };
    run(&[
        "--tls-cert",
        &pki.path("client.pem"),
        "--tls-key",
        &pki.path("client.key"),
    ])
    .success();
    run(&[])
        .code(4)
        .stderr(contains("requires a client certificate"));
}

#[test]
fn test_tls_against_an_outside_tls_server_trusts_tls_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let s = script(TELLS_TLS);
    let server = Running::server(&[s.path(), "--tls", "--tls-ca-out", ca.to_str().unwrap()]);
    let case = script(
        "send(\"hi\");\nassert_eq(recv(), \"hi over TLSv1.3 alpn=\");\n\
         assert_eq(tls_info().version, \"TLSv1.3\");\n",
    );
    tcpscript()
        .args(["test", "--connect", &server.addr(), "--tls", "--tls-ca"])
        .arg(&ca)
        .arg(case.path())
        .assert()
        .success()
        .stderr(contains("1 passed, 0 failed"));
    // The throwaway CA is the outside server's: without --tls-ca, nothing
    // vouches for it.
    tcpscript()
        .args(["test", "--connect", &server.addr(), "--tls", case.path()])
        .assert()
        .code(4)
        .stderr(contains("unknown issuer"));
}

#[test]
fn manual_client_speaks_tls_to_openssl_s_server() {
    let pki = Pki::new();
    let server = s_server(&pki, &pki.path("server.pem"));
    // `s_server -rev` sends each line back reversed, and never closes:
    // the client waits --timeout for it after the input ends.
    tcpscript()
        .args(["client", "--tls", "--tls-ca", &pki.path("ca.pem")])
        .args(["--connect", &format!("localhost:{}", server.port)])
        .args(["--timeout", "1s"])
        .write_stdin("hello\nover tls\n")
        .assert()
        .success()
        .stdout(contains("olleh\nslt revo\n"));
}

#[test]
fn manual_client_refuses_an_unknown_issuer_in_one_line() {
    let pki = Pki::new();
    let server = s_server(&pki, &pki.path("server.pem"));
    let output = tcpscript()
        .args(["client", "--tls", "--connect", &server.addr()])
        .write_stdin("hello\n")
        .assert()
        .code(4)
        .stdout("")
        .stderr(contains("TLS handshake with 127.0.0.1:").and(contains("unknown issuer")))
        .get_output()
        .clone();
    let stderr = text(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[test]
fn manual_server_speaks_tls_to_python_ssl_and_outlives_a_plain_client() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let mut server = Running::server_with_input(
        &["--tls", "--tls-ca-out", ca.to_str().unwrap()],
        Some("typed reply\n"),
    );
    let stderr = server.wait_stderr("tls fingerprint SHA256 ");
    assert!(
        stderr
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("tls fingerprint"),
        "{stderr}"
    );
    // A client that speaks no TLS ends alone, said on stderr.
    let mut plain = LineClient::connect(server.port);
    plain.send("hello in the clear");
    // An alert record (type 21), then the close.
    let mut rest = Vec::new();
    let _ = plain.stream().read_to_end(&mut rest);
    assert_eq!(rest.first(), Some(&21), "{rest:?}");
    server.wait_stderr("TLS handshake failed: the peer does not speak TLS");

    let out = python_client(server.port, &ca);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("connected TLSv1.3"), "{stdout}");
    assert!(stdout.contains("reply typed reply"), "{stdout}");
    server.wait_stdout("] hello\n");
    // No reply left: the server stops.
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn a_client_session_recorded_over_tls_replays_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let s = script(TELLS_TLS);
    let server = Running::server(&[s.path(), "--tls", "--tls-ca-out", ca.to_str().unwrap()]);
    let file = dir.path().join("session.rhai");
    tcpscript()
        .args(["client", "--tls", "--tls-ca"])
        .arg(&ca)
        .args(["--connect", &server.addr(), "--record"])
        .arg(&file)
        .write_stdin("hello\nagain\n")
        .assert()
        .success()
        .stdout(contains("hello over TLSv1.3 alpn=\n"))
        .stderr(contains("recorded 2 exchanges to"));
    let recorded = std::fs::read_to_string(&file).unwrap();
    for expected in [
        format!(
            "// Replay: tcpscript client {} --connect {} --tls --tls-ca {}\n",
            file.display(),
            server.addr(),
            ca.display()
        ),
        "// Recorded over TLS".to_string(),
        // What is recorded is the plaintext inside TLS.
        "send(\"hello\");\nexpect(\"^hello over TLSv1".to_string(),
    ] {
        assert!(
            recorded.contains(&expected),
            "{expected:?} not in:\n{recorded}"
        );
    }
    let replay = |tls: &[&str]| {
        let mut cmd = tcpscript();
        cmd.arg("client")
            .arg(&file)
            .args(["--connect", &server.addr()])
            .args(tls);
        cmd.assert()
    };
    replay(&["--tls", "--tls-ca", ca.to_str().unwrap()])
        .success()
        .stderr(contains("2 sent, 2 received"));
    // In the clear the server answers with a TLS alert, not the reply.
    replay(&[]).failure();
}

#[test]
fn a_server_session_recorded_over_tls_replays_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let file = dir.path().join("mock.rhai");
    let mut command = Command::new(BIN);
    command
        .args(["server", "--listen", "127.0.0.1:0", "--tls", "--tls-ca-out"])
        .arg(&ca)
        .arg("--record")
        .arg(&file);
    let mut manual = Running::listening(command, Some("recorded reply\n"));
    let out = python_client(manual.port, &ca);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("reply recorded reply"));
    assert_eq!(manual.wait_exit().code(), Some(0));
    let recorded = std::fs::read_to_string(&file).unwrap();
    let replay_line = format!("--listen 127.0.0.1:0 --tls --tls-ca-out {}\n", ca.display());
    assert!(recorded.contains(&replay_line), "{recorded}");
    assert!(recorded.contains("// Recorded over TLS"), "{recorded}");

    // The replay, over TLS with the flags the header gives, answers as
    // the person did.
    let again = dir.path().join("again.pem");
    let mock = Running::server(&[
        file.to_str().unwrap(),
        "--tls",
        "--tls-ca-out",
        again.to_str().unwrap(),
    ]);
    let out = python_client(mock.port, &again);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("reply recorded reply"));
}

#[test]
fn a_server_name_that_is_none_is_a_usage_error_before_anything_connects() {
    let port = crate::support::closed_port().to_string();
    let s = script("send(\"x\");\n");
    tcpscript()
        .args(["client", s.path(), "--tls", "--tls-servername", "a b"])
        .args(["--connect", &format!("127.0.0.1:{port}")])
        .assert()
        .code(2)
        .stderr(contains("`a b` is not a valid TLS server name"));
    tcpscript()
        .args(["proxy", "--upstream", &port, "--upstream-tls"])
        .args(["--upstream-tls-servername", ""])
        .assert()
        .code(2)
        .stderr(contains("`` is not a valid TLS server name"));
}
