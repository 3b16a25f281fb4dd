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

/// A throwaway redis-server on a free port, persisting nothing.
fn redis_server() -> (Daemon, u16) {
    let port = closed_port();
    let daemon = daemon(Command::new("redis-server").args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]));
    (daemon, port)
}

#[test]
fn redis_conversation_against_the_real_redis_server() {
    let (_redis, port) = redis_server();
    tcpscript()
        .args([
            "client",
            &shipped("redis_conversation.rhai"),
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--connect-retry",
            "10s",
        ])
        .assert()
        .success();
}

/// `redis-cli ARGS` against `port`, `stdin` fed to it; its stdout, in the
/// format it shows on a terminal unless ARGS ask for `--raw`.
fn redis_cli(port: u16, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args((!args.contains(&"--raw")).then_some("--no-raw"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli");
    let mut pipe = child.stdin.take().unwrap();
    if let Some(input) = stdin {
        pipe.write_all(input).unwrap();
    }
    drop(pipe);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    out.stdout
}

#[test]
fn redis_cli_and_redis_benchmark_accept_the_redis_mock() {
    let server = Running::server(&[&shipped("redis_mock.rhai")]);
    let port = server.port;
    assert_eq!(redis_cli(port, &["PING"], None), b"PONG\n");
    assert_eq!(
        redis_cli(port, &["SET", "greeting", "hello world"], None),
        b"OK\n"
    );
    assert_eq!(
        redis_cli(port, &["GET", "greeting"], None),
        b"\"hello world\"\n"
    );
    assert_eq!(
        redis_cli(port, &["INCRBY", "n", "41"], None),
        b"(integer) 41\n"
    );
    assert_eq!(redis_cli(port, &["INCR", "n"], None), b"(integer) 42\n");
    assert_eq!(redis_cli(port, &["GET", "missing"], None), b"(nil)\n");
    assert_eq!(
        redis_cli(port, &["MGET", "greeting", "missing"], None),
        b"1) \"hello world\"\n2) (nil)\n"
    );
    assert_eq!(
        redis_cli(port, &["NOSUCH"], None),
        b"(error) ERR unknown command 'NOSUCH'\n"
    );

    // 256 KB of every byte value, CRLF and RESP markers included, set from
    // stdin (`-x`) and read back byte-exact (`--raw` adds one newline).
    let value: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    assert_eq!(
        redis_cli(port, &["-x", "SET", "bin"], Some(&value)),
        b"OK\n"
    );
    let mut back = redis_cli(port, &["--raw", "GET", "bin"], None);
    assert_eq!(back.pop(), Some(b'\n'));
    assert!(
        back == value,
        "{} bytes came back, not the same",
        back.len()
    );

    // Pipelined: 16 commands in flight on each of 10 connections.
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-P", "16", "-c", "10", "-n", "4000", "-t", "set,get", "-q"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for command in ["SET: ", "GET: "] {
        assert!(
            text.split('\r')
                .any(|part| part.contains(command) && part.contains("requests per second")),
            "{text}"
        );
    }
    server.wait_stderr_count("", 1);
    assert!(!server.stderr().contains("error"), "{}", server.stderr());
}
