//! `tcpscript server --tls` against TLS clients tcpscript did not write:
//! `openssl s_client`, `curl` and Python's `ssl`, each verifying the
//! server against the throwaway CA it wrote with `--tls-ca-out`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

use crate::support::{Running, repo_path, script, shipped, tcpscript};

/// A server with `--tls --tls-ca-out DIR/ca.pem` plus `args`.
fn tls_server(dir: &Path, args: &[&str]) -> (Running, PathBuf) {
    let ca = dir.join("ca.pem");
    let mut all = args.to_vec();
    all.extend(["--tls", "--tls-ca-out", ca.to_str().unwrap()]);
    (Running::server(&all), ca)
}

/// `openssl s_client` sending `input`, reading until the server closes.
fn s_client(port: u16, ca: &Path, extra: &[&str], input: &str) -> Output {
    let mut child = s_client_command(port, ca, extra)
        .arg("-ign_eof")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn s_client_command(port: u16, ca: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new("openssl");
    command
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-CAfile", ca.to_str().unwrap(), "-verify_return_error"])
        .args(extra);
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The value of `tls fingerprint SHA256 ...` on the server's stderr.
fn announced_fingerprint(server: &Running) -> String {
    let stderr = server.wait_stderr("tls fingerprint SHA256 ");
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("tls fingerprint SHA256 "))
        .unwrap();
    line.trim().to_string()
}

/// `openssl x509 -fingerprint -sha256` of the first certificate in `pem`.
fn openssl_fingerprint(dir: &Path, pem: &str) -> String {
    let begin = pem
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end_marker = "-----END CERTIFICATE-----";
    let end = pem[begin..].find(end_marker).unwrap() + begin + end_marker.len();
    let path = dir.join("served.pem");
    std::fs::write(&path, format!("{}\n", &pem[begin..end])).unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = text(&out.stdout);
    out.trim()
        .split_once('=')
        .expect("Fingerprint=...")
        .1
        .to_string()
}

#[test]
fn openssl_s_client_verifies_the_throwaway_ca_and_gets_the_echo() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = tls_server(dir.path(), &["--echo"]);
    // The echo server never closes: s_client keeps its stdin open and is
    // killed once the echo is back.
    let mut client = Running::start(
        s_client_command(server.port, &ca, &["-servername", "localhost"]),
        None,
    );
    client.write_stdin("hello over tls\n");
    let stdout = client.wait_stdout("\nhello over tls\n");
    assert!(stdout.contains("Verify return code: 0 (ok)"), "{stdout}");
}

#[test]
fn the_announced_fingerprint_is_the_served_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let s = script("fn on_message(msg) { close(); msg }");
    let (server, ca) = tls_server(dir.path(), &[s.path()]);
    let out = s_client(server.port, &ca, &["-showcerts"], "hi\n");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Verify return code: 0 (ok)"), "{stdout}");
    assert_eq!(
        announced_fingerprint(&server),
        openssl_fingerprint(dir.path(), &stdout)
    );
    // Printed right after `listening on`.
    let stderr = server.stderr();
    let mut lines = stderr.lines();
    assert!(
        lines.next().unwrap().starts_with("listening on "),
        "{stderr}"
    );
    assert!(
        lines.next().unwrap().starts_with("tls fingerprint SHA256 "),
        "{stderr}"
    );
}

#[test]
fn hooks_see_what_the_handshake_settled() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        r#"
fn on_message(msg) {
    let tls = tls_info();
    close();
    `${msg} ${tls.version} alpn=${tls.alpn} sni=${tls.sni} client=${tls.peer_fingerprint}`
}
"#,
    );
    let (server, ca) = tls_server(dir.path(), &[s.path(), "--tls-alpn", "http/1.1"]);
    let out = s_client(
        server.port,
        &ca,
        &["-servername", "localhost", "-alpn", "h2,http/1.1"],
        "hello\n",
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("ALPN protocol: http/1.1"), "{stdout}");
    assert!(
        stdout.contains("\nhello TLSv1.3 alpn=http/1.1 sni=localhost client=\n"),
        "{stdout}\n{}",
        server.stderr()
    );
}

#[test]
fn tls_info_is_unit_over_plain_tcp() {
    let s = script(r#"fn on_message(msg) { `${msg} ${type_of(tls_info())}` }"#);
    let server = Running::server(&[s.path()]);
    let mut client = crate::support::LineClient::connect(server.port);
    assert_eq!(client.exchange("hello"), "hello ()");
}

#[test]
fn curl_gets_the_https_mock() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = tls_server(dir.path(), &[&shipped("http_mock.rhai")]);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&ca)
        .arg(format!("https://127.0.0.1:{}/hello", server.port))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello from tcpscript\n");
}

/// Python's `ssl` client of tests/fixtures/tls_client.py.
fn python_client(port: u16, ca: &Path, identity: Option<(&Path, &Path)>) -> Output {
    let mut command = Command::new("python3");
    command
        .arg(repo_path("tests/fixtures/tls_client.py"))
        .arg(port.to_string())
        .arg(ca);
    if let Some((cert, key)) = identity {
        command.arg(cert).arg(key);
    }
    command.output().unwrap()
}

/// A client CA and a client certificate it signed, made with openssl.
fn client_identity(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    crate::support::openssl_identity(dir, "client", "extendedKeyUsage=clientAuth")
}

#[test]
fn mutual_tls_admits_a_client_with_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (client_ca, cert, key) = client_identity(dir.path());
    let (server, ca) = tls_server(
        dir.path(),
        &["--echo", "--tls-client-ca", client_ca.to_str().unwrap()],
    );
    let out = python_client(server.port, &ca, Some((&cert, &key)));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "connected TLSv1.3\nreply hello\n");
}

#[test]
fn mutual_tls_refuses_a_client_without_a_certificate_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (client_ca, _, _) = client_identity(dir.path());
    let (server, ca) = tls_server(
        dir.path(),
        &["--echo", "--tls-client-ca", client_ca.to_str().unwrap()],
    );
    let out = python_client(server.port, &ca, None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).starts_with("error: "),
        "{}",
        text(&out.stderr)
    );
    let stderr = server.wait_stderr("TLS handshake failed");
    let line = stderr
        .lines()
        .find(|l| l.contains("TLS handshake failed"))
        .unwrap();
    assert!(line.starts_with("127.0.0.1:"), "{line}");
    assert!(
        line.ends_with(
            " TLS handshake failed: the client sent no certificate, and this server requires one (--tls-client-ca)"
        ),
        "{line}"
    );
}

#[test]
fn a_plain_tcp_client_is_told_apart_and_others_are_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = tls_server(dir.path(), &["--echo"]);
    let mut plain = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    plain.write_all(b"hello\n").unwrap();
    // The server answers with an alert, then closes: no echo.
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.ends_with(b"hello\n"), "{answer:?}");
    server.wait_stderr("TLS handshake failed: the peer does not speak TLS");
    let out = python_client(server.port, &ca, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "connected TLSv1.3\nreply hello\n");
    server.send_signal("TERM");
    server.wait_stderr("shut down: 2 connections, 1 messages in, 1 out, 1 errors");
}

#[test]
fn closing_sends_close_notify() {
    let dir = tempfile::tempdir().unwrap();
    let s = script("fn on_message(msg) { close(); msg }");
    let (server, ca) = tls_server(dir.path(), &[s.path()]);
    let out = Command::new("python3")
        .arg(repo_path("tests/fixtures/tls_client.py"))
        .arg(server.port.to_string())
        .arg(&ca)
        .env("TLS_CLIENT_READ_TO_EOF", "1")
        .output()
        .unwrap();
    // Without close_notify, Python reports the EOF as a protocol violation.
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "connected TLSv1.3\nreply hello\nclosed with close_notify\n"
    );
}

#[test]
fn a_missing_certificate_file_is_a_usage_error_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    tcpscript()
        .args(["server", "--echo", "--listen", "127.0.0.1:0", "--tls"])
        .args(["--tls-cert", missing, "--tls-key", missing])
        .timeout(std::time::Duration::from_secs(20))
        .assert()
        .code(2)
        .stderr(contains("cannot read").and(contains("missing.pem")))
        .stderr(contains("listening on").not());
}

#[test]
fn a_client_that_never_starts_the_handshake_is_cut_off_alone() {
    let dir = tempfile::tempdir().unwrap();
    // The handshake waits no longer than --idle-timeout when it is shorter.
    let (server, ca) = tls_server(dir.path(), &["--echo", "--idle-timeout", "500ms"]);
    let mut silent = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    server.wait_stderr("TLS handshake failed");
    let mut rest = Vec::new();
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    assert_eq!(silent.read_to_end(&mut rest).unwrap(), 0, "{rest:?}");
    // Others are served meanwhile and after.
    let out = python_client(server.port, &ca, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_client_offering_only_tls_1_1_finds_no_common_version() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = tls_server(dir.path(), &["--echo"]);
    let out = s_client_command(
        server.port,
        &ca,
        &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    assert!(!out.status.success(), "{}", text(&out.stdout));
    server.wait_stderr("TLS handshake failed: no protocol version");
}

/// `openssl x509 -noout ARGS -in CERT`'s one line, after its `key=`.
fn openssl_field(cert: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout"])
        .args(args)
        .arg("-in")
        .arg(cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = text(&out.stdout);
    out.trim().split_once('=').expect("key=value").1.to_string()
}

#[test]
fn a_client_script_sees_the_throwaway_leafs_names_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = tls_server(dir.path(), &["--echo", "--tls-san", "example.test"]);
    let s = script(
        r#"
let info = tls_info();
assert_eq(info.peer_subject, "CN=localhost");
assert_eq(info.peer_issuer, "CN=tcpscript throwaway CA");
for name in ["localhost", "127.0.0.1", "::1", "example.test"] {
    assert(info.peer_sans.contains(name), `${name} is not in ${info.peer_sans}`);
}
assert(info.peer_not_after > param("now"), `expired: ${info.peer_not_after}`);
assert_eq(info.peer_fingerprint.len(), 95);
"#,
    );
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    tcpscript()
        .args([
            "client",
            s.path(),
            "--tls",
            "--tls-ca",
            ca.to_str().unwrap(),
        ])
        .args(["--connect", &server.addr(), "--set", &format!("now={now}")])
        .assert()
        .success();
}

#[test]
fn a_hook_sees_the_client_certificates_subject_issuer_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let (client_ca, cert, key) = client_identity(dir.path());
    let s = script(
        r#"
fn on_message(msg) {
    let t = tls_info();
    `${msg} subject=${t.peer_subject} issuer=${t.peer_issuer} sans=${t.peer_sans.len()} until=${t.peer_not_after}`
}
"#,
    );
    let (server, ca) = tls_server(
        dir.path(),
        &[s.path(), "--tls-client-ca", client_ca.to_str().unwrap()],
    );
    let out = python_client(server.port, &ca, Some((&cert, &key)));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // What openssl reads in the same certificate; its ISO 8601 date has a
    // space where RFC 3339 has a `T`.
    let subject = openssl_field(&cert, &["-subject", "-nameopt", "RFC2253"]);
    let issuer = openssl_field(&cert, &["-issuer", "-nameopt", "RFC2253"]);
    let until = openssl_field(&cert, &["-enddate", "-dateopt", "iso_8601"]).replace(' ', "T");
    assert_eq!(subject, "CN=client");
    assert_eq!(
        text(&out.stdout),
        format!(
            "connected TLSv1.3\nreply hello subject={subject} issuer={issuer} sans=0 until={until}\n"
        ),
        "{}",
        server.stderr()
    );
}

#[test]
fn a_client_refusing_the_name_is_told_apart_from_one_refusing_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = tls_server(dir.path(), &["--echo"]);
    let s = script("send(\"x\");\n");
    tcpscript()
        .args(["client", s.path(), "--connect", &server.addr(), "--tls"])
        .args([
            "--tls-ca",
            ca.to_str().unwrap(),
            "--tls-servername",
            "example.com",
        ])
        .assert()
        .code(4)
        .stderr(contains("name mismatch"));
    server.wait_stderr(
        "TLS handshake failed: the peer refused our certificate (a name it did not expect",
    );
    tcpscript()
        .args(["client", s.path(), "--connect", &server.addr(), "--tls"])
        .assert()
        .code(4);
    server.wait_stderr(
        "TLS handshake failed: the peer refused our certificate (not signed by a CA it trusts)",
    );
}
