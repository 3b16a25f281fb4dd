//! `tcpscript client --tls` against TLS servers tcpscript did not write:
//! `openssl s_server` and Python's `ssl` module, with certificates made by
//! the `openssl` command line for each test, so neither side's TLS code
//! vouches for the other.

use std::path::Path;
use std::process::Command;

use crate::support::*;

/// A CA, a server leaf for `localhost` and `127.0.0.1`, and a client leaf
/// (`CN=tcpscript-client`), all P-256, in a temporary folder.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command line");
    assert!(
        output.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

const SERVER_EXT: &str = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n";

impl Pki {
    pub(crate) fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let req = |key: &str, out: &str, subject: &str, extra: &[&str]| {
            let mut args = vec!["req"];
            args.extend(extra);
            args.extend(ec);
            args.extend(["-keyout", key, "-out", out, "-subj", subject]);
            openssl(d, &args);
        };
        req(
            "ca.key",
            "ca.pem",
            "/CN=tcpscript-test-ca",
            &["-x509", "-days", "2"],
        );
        std::fs::write(d.join("server.ext"), SERVER_EXT).unwrap();
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, subject) in [
            ("server", "/CN=localhost"),
            ("client", "/CN=tcpscript-client"),
        ] {
            let (key, csr, pem, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            req(&key, &csr, subject, &[]);
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-out",
                    &pem,
                    "-extfile",
                    &ext,
                ],
            );
        }
        Pki { dir }
    }

    pub(crate) fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A server certificate valid only on 1 January 2020, signed by the
    /// CA: `openssl ca` takes explicit dates where OpenSSL 3.0's `x509`
    /// does not.
    fn expired(&self) -> String {
        let d = self.dir.path();
        std::fs::write(d.join("index.txt"), "").unwrap();
        std::fs::write(d.join("serial"), "01\n").unwrap();
        std::fs::write(
            d.join("ca.cnf"),
            "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\n\
             serial = serial\ndefault_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "ca",
                "-batch",
                "-config",
                "ca.cnf",
                "-cert",
                "ca.pem",
                "-keyfile",
                "ca.key",
                "-in",
                "server.csr",
                "-out",
                "expired.pem",
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20200102000000Z",
                "-extfile",
                "server.ext",
                "-notext",
            ],
        );
        self.path("expired.pem")
    }

    /// The SHA-256 fingerprint of a certificate, as openssl prints it.
    fn fingerprint(&self, cert: &str) -> String {
        let output = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in", cert])
            .output()
            .unwrap();
        let text = String::from_utf8(output.stdout).unwrap();
        text.trim().rsplit('=').next().unwrap().to_string()
    }
}

/// `openssl s_server -rev` (each line sent back reversed) with `cert`,
/// offering ALPN `echo/1`; once it accepts.
pub(crate) fn s_server(pki: &Pki, cert: &str) -> Running {
    s_server_with(pki, cert, &[])
}

/// `openssl s_server` with `extra` flags.
fn s_server_with(pki: &Pki, cert: &str, extra: &[&str]) -> Running {
    let port = closed_port();
    let mut command = Command::new("openssl");
    command.args([
        "s_server",
        "-accept",
        &format!("127.0.0.1:{port}"),
        "-cert",
        cert,
        "-key",
        &pki.path("server.key"),
        "-alpn",
        "echo/1",
        "-rev",
    ]);
    command.args(extra);
    let mut server = Running::start(command, None);
    server.wait_stdout("ACCEPT");
    server.port = port;
    server
}

/// The Python `ssl` line echo server; with `mutual`, it requires a client
/// certificate signed by the CA.
fn python_server(pki: &Pki, mutual: bool) -> Running {
    let mut command = Command::new("python3");
    command
        .arg("-u")
        .arg(repo_path("tests/fixtures/tls_echo_server.py"))
        .args([pki.path("server.pem"), pki.path("server.key")]);
    if mutual {
        command.arg(pki.path("ca.pem"));
    }
    Running::listening(command, None)
}

/// `tcpscript client SCRIPT --connect localhost:PORT --tls ARGS...`.
fn client(script: &Script, port: u16, args: &[&str]) -> assert_cmd::Command {
    let mut cmd = tcpscript();
    cmd.args(["client", script.path(), "--connect"])
        .arg(format!("localhost:{port}"))
        .args(["--tls", "--connect-retry", "10s"])
        .args(args);
    cmd
}

/// The one line a failed run printed on stderr, checked to be one line
/// and no panic.
fn one_line(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line:\n{stderr}"
    );
    stderr
}

const REVERSED: &str = "send(\"hello\");\nassert_eq(recv(), \"olleh\");\n";

#[test]
fn a_verified_conversation_with_openssl_s_server_reports_what_was_negotiated() {
    let pki = Pki::new();
    let server = s_server(&pki, &pki.path("server.pem"));
    let s = script(&format!(
        "{REVERSED}let info = tls_info();\n\
         assert_eq(info.version, \"TLSv1.3\");\n\
         assert_eq(info.alpn, \"echo/1\");\n\
         assert_eq(info.sni, \"localhost\");\n\
         assert_eq(info.peer_fingerprint, param(\"fp\"));\n\
         assert(info.cipher.contains(\"TLS13\"));\n"
    ));
    let fp = format!("fp={}", pki.fingerprint(&pki.path("server.pem")));
    client(
        &s,
        server.port,
        &[
            "--tls-ca",
            &pki.path("ca.pem"),
            "--tls-alpn",
            "echo/1",
            "--set",
            &fp,
        ],
    )
    .assert()
    .success();
}

#[test]
fn an_ip_address_is_verified_against_the_ip_san_and_sends_no_sni() {
    let pki = Pki::new();
    let server = s_server(&pki, &pki.path("server.pem"));
    let s = script(&format!(
        "{REVERSED}assert_eq(tls_info().sni, ());\nassert_eq(tls_info().alpn, ());\n"
    ));
    tcpscript()
        .args([
            "client",
            s.path(),
            "--tls",
            "--connect-retry",
            "10s",
            "--connect",
        ])
        .arg(server.addr())
        .args(["--tls-ca", &pki.path("ca.pem")])
        .assert()
        .success();
}

#[test]
fn an_unknown_issuer_is_a_network_error_in_one_line() {
    let pki = Pki::new();
    let server = s_server(&pki, &pki.path("server.pem"));
    let s = script(REVERSED);
    let output = client(&s, server.port, &[])
        .assert()
        .code(4)
        .get_output()
        .clone();
    let line = one_line(&output);
    assert!(
        line.contains(&format!(
            "TLS handshake with localhost:{} failed",
            server.port
        )) && line.contains("unknown issuer"),
        "{line}"
    );
}

#[test]
fn a_name_the_certificate_is_not_for_is_a_name_mismatch() {
    let pki = Pki::new();
    let server = s_server(&pki, &pki.path("server.pem"));
    let s = script(REVERSED);
    let args = [
        "--tls-ca",
        &pki.path("ca.pem"),
        "--tls-servername",
        "wrong.example",
    ];
    let output = client(&s, server.port, &args)
        .assert()
        .code(4)
        .get_output()
        .clone();
    assert!(one_line(&output).contains("name mismatch"));
}

#[test]
fn an_expired_certificate_is_refused_as_expired() {
    let pki = Pki::new();
    let server = s_server(&pki, &pki.expired());
    let s = script(REVERSED);
    let args = ["--tls-ca", &pki.path("ca.pem")];
    let output = client(&s, server.port, &args)
        .assert()
        .code(4)
        .get_output()
        .clone();
    assert!(one_line(&output).contains("expired"));
}

#[test]
fn insecure_skips_verification_and_says_so() {
    let pki = Pki::new();
    let server = s_server(&pki, &pki.path("server.pem"));
    let s = script(REVERSED);
    let output = client(
        &s,
        server.port,
        &["--insecure", "--tls-servername", "wrong.example"],
    )
    .assert()
    .success()
    .get_output()
    .clone();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warnings = stderr.lines().filter(|l| l.contains("--insecure")).count();
    assert_eq!(warnings, 1, "{stderr}");
    assert!(stderr.contains("not verified"), "{stderr}");
}

#[test]
fn mutual_tls_presents_the_client_certificate_to_python_ssl() {
    let pki = Pki::new();
    let server = python_server(&pki, true);
    let s = script("send(\"whoami\");\nassert_eq(recv(), \"tcpscript-client\");\n");
    let args = [
        "--tls-ca",
        &pki.path("ca.pem"),
        "--tls-cert",
        &pki.path("client.pem"),
        "--tls-key",
        &pki.path("client.key"),
    ];
    client(&s, server.port, &args).assert().success();
}

#[test]
fn without_a_client_certificate_a_mutual_tls_server_refuses_in_one_line() {
    let pki = Pki::new();
    let server = python_server(&pki, true);
    let s = script("send(\"whoami\");\nassert_eq(recv(), \"anonymous\");\n");
    let output = client(&s, server.port, &["--tls-ca", &pki.path("ca.pem")])
        .assert()
        .code(4)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // TLS 1.3: the server refuses after the client's handshake is over,
    // so the refusal arrives with the first read.
    assert!(
        stderr.contains("requires a client certificate (--tls-cert and --tls-key)"),
        "{stderr}"
    );
    server.wait_stderr("handshake failed");
}

#[test]
fn connect_inherits_tls_and_close_sends_close_notify() {
    let pki = Pki::new();
    let server = python_server(&pki, false);
    let s = script(
        "let c = connect();\n\
         c.send(\"two\");\n\
         assert_eq(c.recv(), \"two\");\n\
         assert_eq(c.tls_info().alpn, \"echo/1\");\n\
         assert_eq(c.tls_info().version, \"TLSv1.3\");\n\
         c.close();\n\
         send(\"one\");\n\
         assert_eq(recv(), \"one\");\n\
         close();\n",
    );
    let args = ["--tls-ca", &pki.path("ca.pem"), "--tls-alpn", "echo/1"];
    client(&s, server.port, &args).assert().success();
    // Python raises on an EOF without close_notify; both ended cleanly.
    let stderr = server.wait_stderr_count("closed cleanly", 2);
    assert!(!stderr.contains("connection failed"), "{stderr}");
}

#[test]
fn a_plain_tcp_echo_is_not_taken_for_tls() {
    let server = Running::server(&["--echo", "--framing", "raw"]);
    let s = script(REVERSED);
    let output = client(&s, server.port, &["--insecure"])
        .assert()
        .code(4)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not speak TLS"), "{stderr}");
}

#[test]
fn a_plain_tcp_greeting_is_not_taken_for_tls() {
    let greeting = script("fn on_connect() { \"220 plain hello\" }\n");
    let server = Running::server(&[greeting.path()]);
    let s = script(REVERSED);
    let output = client(&s, server.port, &["--insecure"])
        .assert()
        .code(4)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not speak TLS"), "{stderr}");
}

#[test]
fn a_silent_plain_tcp_server_times_the_handshake_out() {
    // Accepted by the kernel, never read: no answer to the ClientHello.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = script(REVERSED);
    let output = client(&s, port, &["--insecure", "--timeout", "300ms"])
        .assert()
        .code(4)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no TLS answer within 0.3s"), "{stderr}");
}

#[test]
fn tls_info_is_unit_on_plain_tcp() {
    let server = Running::server(&["--echo"]);
    let s =
        script("assert_eq(tls_info(), ());\nlet c = connect();\nassert_eq(c.tls_info(), ());\n");
    tcpscript()
        .args(["client", s.path(), "--connect", &server.addr()])
        .assert()
        .success();
}

#[test]
fn load_mode_speaks_tls_on_every_connection_and_times_handshakes_apart() {
    let pki = Pki::new();
    let server = python_server(&pki, false);
    let s = script(
        "send(\"hi\");\nassert_eq(recv(), \"hi\");\nassert_eq(tls_info().version, \"TLSv1.3\");\n",
    );
    let args = [
        "--tls-ca",
        &pki.path("ca.pem"),
        "--concurrency",
        "2",
        "--iterations",
        "6",
        "--json",
    ];
    let output = client(&s, server.port, &args)
        .assert()
        .success()
        .get_output()
        .clone();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let figures: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(figures["passed"], 6, "{figures}");
    let handshake = &figures["handshake_ms"];
    assert_eq!(handshake["count"], 6, "{figures}");
    let p50 = handshake["p50"].as_f64().unwrap();
    assert!(
        p50 > 0.0 && p50 <= figures["latency_ms"]["max"].as_f64().unwrap(),
        "{figures}"
    );
    server.wait_stderr_count("closed cleanly", 6);
}

#[test]
fn load_mode_on_plain_tcp_reports_no_handshakes() {
    let server = Running::server(&["--echo"]);
    let s = script("send(\"hi\");\nassert_eq(recv(), \"hi\");\n");
    let output = tcpscript()
        .args([
            "client",
            s.path(),
            "--iterations",
            "2",
            "--json",
            "--connect",
        ])
        .arg(server.addr())
        .assert()
        .success()
        .get_output()
        .clone();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let figures: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(figures.get("handshake_ms").is_none(), "{figures}");
}

#[test]
fn a_server_offering_only_tls_1_1_has_no_version_in_common() {
    let pki = Pki::new();
    let server = s_server_with(
        &pki,
        &pki.path("server.pem"),
        &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"],
    );
    let s = script(REVERSED);
    let ca = pki.path("ca.pem");
    let output = client(&s, server.port, &["--tls-ca", &ca])
        .assert()
        .code(4)
        .get_output()
        .clone();
    let line = one_line(&output);
    assert!(line.contains("no protocol version in common"), "{line}");
}

#[test]
fn connect_with_options_speaks_tls_to_one_server_and_plain_tcp_to_another() {
    let pki = Pki::new();
    let secure = python_server(&pki, false);
    let plain = Running::server(&["--echo"]);
    // `ca` is relative to the current folder, as --tls-ca is.
    let s = script(&format!(
        "send(\"plain\");\nassert_eq(recv(), \"plain\");\nassert_eq(tls_info(), ());\n\
         let c = connect(\"localhost:{}\", #{{tls: true, ca: \"ca.pem\", alpn: [\"echo/1\"]}});\n\
         c.send(\"secure\");\nassert_eq(c.recv(), \"secure\");\n\
         assert_eq(c.tls_info().alpn, \"echo/1\");\n\
         assert_eq(c.tls_info().peer_subject, \"CN=localhost\");\n\
         assert_eq(c.tls_info().peer_issuer, \"CN=tcpscript-test-ca\");\n",
        secure.port
    ));
    tcpscript()
        .current_dir(pki.dir.path())
        .args(["client", s.path(), "--connect", &plain.addr()])
        .assert()
        .success();
}

#[test]
fn connect_with_tls_false_speaks_plain_tcp_under_tls_flags() {
    let pki = Pki::new();
    let secure = python_server(&pki, false);
    let plain = Running::server(&["--echo"]);
    let s = script(&format!(
        "let c = connect(\"{}\", #{{tls: false}});\n\
         c.send(\"plain\");\nassert_eq(c.recv(), \"plain\");\nassert_eq(c.tls_info(), ());\n\
         send(\"secure\");\nassert_eq(recv(), \"secure\");\n\
         assert_eq(tls_info().version, \"TLSv1.3\");\n",
        plain.addr()
    ));
    client(&s, secure.port, &["--tls-ca", &pki.path("ca.pem")])
        .assert()
        .success();
}

#[test]
fn connect_with_tls_but_without_the_ca_is_an_unknown_issuer() {
    let pki = Pki::new();
    let secure = python_server(&pki, false);
    let plain = Running::server(&["--echo"]);
    let s = script(&format!(
        "send(\"plain\");\nassert_eq(recv(), \"plain\");\n\
         let c = connect(\"localhost:{}\", #{{tls: true}});\n",
        secure.port
    ));
    let output = tcpscript()
        .args(["client", s.path(), "--connect", &plain.addr()])
        .assert()
        .code(4)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: TLS handshake with localhost:{} failed: the peer's certificate has an unknown issuer",
            secure.port
        )),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{}:3:9", s.path())), "{stderr}");
}

#[test]
fn bad_connect_options_are_script_errors_at_the_call() {
    let pki = Pki::new();
    let plain = Running::server(&["--echo"]);
    std::fs::write(pki.dir.path().join("bad.key"), "not a key\n").unwrap();
    let cases = [
        (
            "#{tls: true, cert: \"client.pem\", key: \"bad.key\"}",
            "connect(): `bad.key` holds no PEM private key",
        ),
        (
            "#{tls: true, cafile: \"ca.pem\"}",
            "connect(): unknown option `cafile`; the options are tls, ca, insecure, servername, alpn, cert, key",
        ),
        (
            "#{tls: \"yes\"}",
            "connect(): option `tls` must be true or false, not string",
        ),
    ];
    for (options, message) in cases {
        let s = script(&format!(
            "let x = 1;\nlet c = connect(\"{}\", {options});\n",
            plain.addr()
        ));
        let output = tcpscript()
            .current_dir(pki.dir.path())
            .args(["client", s.path(), "--connect", &plain.addr()])
            .assert()
            .code(3)
            .get_output()
            .clone();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("error: {message}\n")), "{stderr}");
        assert!(
            stderr.contains(&format!("--> {}:2:9", s.path())),
            "{stderr}"
        );
    }
}

#[test]
fn insecure_in_connect_options_warns_once() {
    let pki = Pki::new();
    let secure = python_server(&pki, false);
    let s = script(&format!(
        "for i in 0..2 {{\n\
             let c = connect(\"localhost:{}\", #{{tls: true, insecure: true, servername: \"wrong.example\"}});\n\
             c.send(\"hi\");\n\
             assert_eq(c.recv(), \"hi\");\n\
         }}\n",
        secure.port
    ));
    let output = tcpscript()
        .args(["client", s.path(), "--connect", &secure.addr()])
        .args(["--tls", "--tls-ca", &pki.path("ca.pem")])
        .assert()
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warnings = stderr
        .lines()
        .filter(|l| l.contains("not verified"))
        .count();
    assert_eq!(warnings, 1, "{stderr}");
    assert!(stderr.contains("#{insecure: true}"), "{stderr}");
}
