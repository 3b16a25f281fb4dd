//! Peers tcpscript did not write: the tutorial's own Python programs
//! (tests/fixtures), pointed at loopback and a free port.

use std::process::Command;

use predicates::str::contains;

use crate::support::{Running, repo_path, script, shipped, tcpscript};

fn python(fixture: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg("-u").arg(repo_path("tests/fixtures").join(fixture));
    cmd
}

#[test]
fn the_tutorial_client_talks_to_the_scripted_server_in_raw_framing() {
    // reply.rhai declares raw framing itself: no flag needed.
    let server = Running::server(&[&shipped("reply.rhai")]);
    let mut client = python("tutorial_client.py");
    client.arg(server.port.to_string());
    let mut client = Running::start(client, Some("hello\n你好\nupper abc\nexit\n"));
    assert_eq!(client.wait_exit().code(), Some(0), "{}", client.stderr());
    let out = client.wait_stdout("当前接受的信息是:ABC");
    assert!(
        out.contains(
            "当前接受的信息是:welcome to the tcpscript tutorial server, you are 127.0.0.1:"
        ),
        "{out}"
    );
    assert!(out.contains("当前接受的信息是:echo 2: 你好"), "{out}");
    server.wait_stderr("left after 3 messages");
}

#[test]
fn a_scripted_client_talks_to_the_tutorial_server_fed_on_stdin() {
    let mut command = python("tutorial_server.py");
    command.arg("0");
    let server = Running::listening(command, Some("hi from python\nexit\n"));
    let s = script(
        r#"
send("hello");
assert_eq(recv(), "hi from python");
send("bye");
assert_eq(recv(), "exit");
expect_close();
"#,
    );
    tcpscript()
        .args([
            "client",
            s.path(),
            "--framing",
            "raw",
            "--connect",
            &server.addr(),
        ])
        .assert()
        .success();
    let out = server.wait_stdout("服务完毕");
    assert!(out.contains("当前接受的信息是:hello"), "{out}");
    assert!(out.contains("当前接受的信息是:bye"), "{out}");
}

#[test]
fn the_manual_client_talks_to_the_tutorial_server() {
    let mut command = python("tutorial_server.py");
    command.arg("0");
    let server = Running::listening(command, Some("reply one\nreply two\n"));
    tcpscript()
        .args([
            "client",
            "--framing",
            "raw",
            "--timeout",
            "2s",
            "--connect",
            &server.addr(),
        ])
        .write_stdin("first\nsecond\nexit\n")
        .assert()
        .success()
        .stdout(contains("reply one\nreply two\n"));
    let out = server.wait_stdout("当前接受的信息是:exit");
    assert!(out.contains("当前接受的信息是:first"), "{out}");
    assert!(out.contains("当前接受的信息是:second"), "{out}");
}

#[test]
fn the_tutorial_client_talks_to_the_manual_server() {
    let server = Running::server_with_input(&["--framing", "raw"], Some("pong one\npong two\n"));
    let mut client = python("tutorial_client.py");
    client.arg(server.port.to_string());
    let mut client = Running::start(client, Some("ping one\nping two\nexit\n"));
    assert_eq!(client.wait_exit().code(), Some(0), "{}", client.stderr());
    let out = client.wait_stdout("当前接受的信息是:pong two");
    assert!(out.contains("当前接受的信息是:pong one"), "{out}");
    let printed = server.wait_stdout("] exit");
    assert!(printed.contains("] ping one\n"), "{printed}");
}
