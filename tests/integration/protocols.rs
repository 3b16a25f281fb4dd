//! The shipped protocol scripts against the real thing, both directions:
//! our client against the real server, the real client against our mock.

use std::process::{Child, Command, Stdio};

use crate::support::{Running, closed_port, repo_path, shipped, tcpscript};

/// A real server run for one test, killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command` on a free loopback port; our client waits for it with
/// `--connect-retry`.
fn daemon(command: &mut Command) -> Daemon {
    Daemon(
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}")),
    )
}

fn fixture(name: &str) -> Command {
    let mut command = Command::new("python3");
    command
        .arg("-u")
        .arg(repo_path("tests/fixtures").join(name));
    command
}

#[test]
fn memcached_conversation_against_the_real_memcached() {
    let port = closed_port();
    let _memcached = daemon(Command::new("memcached").args([
        "-u",
        "nobody",
        "-l",
        "127.0.0.1",
        "-U",
        "0",
        "-p",
        &port.to_string(),
    ]));
    tcpscript()
        .args([
            "client",
            &shipped("memcached_conversation.rhai"),
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--connect-retry",
            "10s",
        ])
        .assert()
        .success();
}

#[test]
fn pymemcache_accepts_the_memcached_mock() {
    let server = Running::server(&[&shipped("memcached_mock.rhai")]);
    let mut client = fixture("pymemcache_client.py");
    client.arg(server.port.to_string());
    let mut client = Running::start(client, None);
    assert_eq!(client.wait_exit().code(), Some(0), "{}", client.stderr());
    client.wait_stdout("pymemcache ok: 200000 bytes byte-exact");
}
