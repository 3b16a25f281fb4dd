//! `tcpscript proxy --record DIR`: the tutorial's own Python client and
//! server talk through the proxy, and what passed becomes both halves of a
//! test, each replayed against the real program on the other side.

use std::path::Path;
use std::process::Command;

use crate::support::{BIN, Running, repo_path, tcpscript};

fn tutorial_server(answers: &str) -> Running {
    let mut server = Command::new("python3");
    server
        .arg("-u")
        .arg(repo_path("tests/fixtures/tutorial_server.py"))
        .arg("0");
    Running::listening(server, Some(answers))
}

fn tutorial_client(port: u16, lines: &str) -> Running {
    let mut client = Command::new("python3");
    client
        .arg("-u")
        .arg(repo_path("tests/fixtures/tutorial_client.py"))
        .arg(port.to_string());
    Running::start(client, Some(lines))
}

const ANSWERS: &str = "hi from python\nexit\n";
const LINES: &str = "hello\nbye\nexit\n";

#[test]
fn a_recorded_conversation_replays_against_the_real_server_and_serves_the_real_client() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rec");
    {
        let server = tutorial_server(ANSWERS);
        let mut command = Command::new(BIN);
        command
            .args([
                "proxy",
                "--upstream",
                &server.addr(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(["--framing", "raw", "--record"])
            .arg(&out);
        let proxy = Running::listening(command, None);
        let mut client = tutorial_client(proxy.port, LINES);
        assert_eq!(client.wait_exit().code(), Some(0), "{}", client.stderr());
        // The tutorial server never closes on its own: ending it ends the
        // connection, and the recording is written whole.
        drop(server);
        proxy.wait_stderr("recorded 3 exchanges to");
        proxy.wait_stderr("recorded 2 exchanges to");
    }
    let client_script = out.join("1-client.rhai");
    let server_script = out.join("1-server.rhai");
    let text = std::fs::read_to_string(&client_script).unwrap();
    assert!(
        text.starts_with("// Recorded by `tcpscript proxy --record`"),
        "{text}"
    );

    // The client's half, against the real server answering as it did.
    let server = tutorial_server(ANSWERS);
    replay_client(&client_script, &server.addr());
    server.wait_stdout("当前接受的信息是:bye");

    // The server's half, for the real client.
    let mock = Running::server(&[server_script.to_str().unwrap()]);
    let mut client = tutorial_client(mock.port, LINES);
    assert_eq!(client.wait_exit().code(), Some(0), "{}", client.stderr());
    let said = client.wait_stdout("当前接受的信息是:exit");
    assert!(said.contains("当前接受的信息是:hi from python"), "{said}");
}

fn replay_client(script: &Path, addr: &str) {
    tcpscript()
        .arg("client")
        .arg(script)
        .args(["--connect", addr])
        .assert()
        .success();
}

#[test]
fn a_long_connection_is_recorded_up_to_a_limit_and_still_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rec");
    let upstream = Running::server(&["--echo"]);
    let mut command = Command::new(BIN);
    command
        .args([
            "proxy",
            "--upstream",
            &upstream.addr(),
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--record")
        .arg(&out);
    let proxy = Running::listening(command, None);
    let mut c = crate::support::LineClient::connect(proxy.port);
    for n in 0..600 {
        let line = format!("line {n}");
        assert_eq!(c.exchange(&line), line);
    }
    proxy.wait_stderr("the recording stopped after 1000 messages");
    drop(c);
    proxy.wait_stderr("recorded 500 exchanges to");
    let text = std::fs::read_to_string(out.join("1-client.rhai")).unwrap();
    assert_eq!(text.matches("\nsend(").count(), 500, "{text}");
    assert!(
        text.contains("--record keeps at most 1000 messages"),
        "{text}"
    );
}
