//! `tcpscript proxy` between peers it did not write: redis-cli and
//! redis-server, the tutorial's Python programs, and plain `std::net`
//! sockets where a test needs to see a half-close or a reset.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use predicates::str::contains;

use crate::support::{BIN, PATIENCE, Running, closed_port, repo_path, tcpscript};

/// `tcpscript proxy ARGS --listen 127.0.0.1:0`, once it is listening.
pub(crate) fn proxy(upstream: &str, args: &[&str]) -> Running {
    let mut command = Command::new(BIN);
    command
        .args(["proxy", "--upstream", upstream])
        .args(args)
        .args(["--listen", "127.0.0.1:0"]);
    Running::listening(command, None)
}

/// A throwaway redis-server on a free port, persisting nothing; returned
/// once it says it accepts connections.
pub(crate) fn redis_server() -> Running {
    let port = closed_port();
    let mut command = Command::new("redis-server");
    command.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    let mut redis = Running::start(command, None);
    redis.wait_stdout("Ready to accept connections");
    redis.port = port;
    redis
}

/// `redis-cli -p PORT ARGS`: its stdout, and how long it took.
fn redis_cli(port: u16, args: &[&str]) -> (String, Duration) {
    let started = Instant::now();
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli");
    let took = started.elapsed();
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), took)
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// Everything until the peer closes, or the error that ended it.
fn read_to_close(stream: &mut TcpStream) -> (Vec<u8>, Option<ErrorKind>) {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            // A child's exit (SIGCHLD, handled once a test has waited on
            // one with a timeout) interrupts a read under SO_RCVTIMEO.
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (got, Some(e.kind())),
        }
    }
}

/// Closes `stream` with a reset (SO_LINGER 0) rather than a FIN.
fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: SO_LINGER reads one `linger` through the pointer, which
    // points at a live local of that size; the descriptor is the stream's.
    let status = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(status, 0);
    drop(stream);
}

/// A one-connection upstream in this process: `serve` gets the accepted
/// socket; the thread's result is what `serve` returns.
fn upstream<T: Send + 'static>(
    serve: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (String, thread::JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        serve(stream)
    });
    (addr, handle)
}

/// The proxy's summary after SIGTERM, once it has exited 0.
fn stop(mut proxy: Running) -> String {
    proxy.send_signal("TERM");
    assert_eq!(proxy.wait_exit().code(), Some(0), "{}", proxy.stderr());
    proxy.wait_stderr("shut down:")
}

#[test]
fn redis_cli_talks_to_redis_server_through_the_proxy() {
    let redis = redis_server();
    let proxy = proxy(&redis.addr(), &[]);
    assert_eq!(redis_cli(proxy.port, &["SET", "k", "v"]).0, "OK\n");
    assert_eq!(redis_cli(proxy.port, &["GET", "k"]).0, "v\n");
    assert_eq!(redis_cli(proxy.port, &["PING"]).0, "PONG\n");
    let summary = stop(proxy);
    // SET: *3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n is 27 bytes; +OK\r\n 5.
    assert!(
        summary.contains("shut down: 3 connections, 61 bytes up, 19 down, 0 with faults, 0 errors"),
        "{summary}"
    );
}

#[test]
fn latency_down_delays_each_reply_by_the_latency() {
    let redis = redis_server();
    let plain = proxy(&redis.addr(), &[]);
    let slow = proxy(
        &redis.addr(),
        &["--latency", "200ms", "--direction", "down"],
    );
    let (_, baseline) = redis_cli(plain.port, &["PING"]);
    let (pong, took) = redis_cli(slow.port, &["PING"]);
    assert_eq!(pong, "PONG\n");
    let added = took.saturating_sub(baseline);
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(
        added < Duration::from_millis(240),
        "{took:?} - {baseline:?}"
    );
}

#[test]
fn latency_both_ways_delays_a_round_trip_twice() {
    let redis = redis_server();
    let slow = proxy(&redis.addr(), &["--latency", "150ms"]);
    let mut stream = connect(slow.port);
    let started = Instant::now();
    stream.write_all(b"PING\r\n").unwrap();
    let mut pong = [0u8; 7];
    stream.read_exact(&mut pong).unwrap();
    let took = started.elapsed();
    assert_eq!(&pong, b"+PONG\r\n");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_millis(360 + 50), "{took:?}");
}

#[test]
fn latency_delays_a_stream_without_slowing_it_to_a_chunk_per_delay() {
    const SIZE: usize = 2 * 1024 * 1024;
    let (addr, upstream) = upstream(|mut stream| {
        stream.write_all(&vec![b'x'; SIZE]).unwrap();
    });
    let proxy = proxy(&addr, &["--latency", "100ms", "--direction", "down"]);
    let started = Instant::now();
    let mut stream = connect(proxy.port);
    let (got, error) = read_to_close(&mut stream);
    let took = started.elapsed();
    assert_eq!((got.len(), error), (SIZE, None));
    // One 64 KiB read per delay would take 3.2 s and more.
    assert!(took >= Duration::from_millis(100), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    upstream.join().unwrap();
}

#[test]
fn jitter_keeps_each_delay_within_its_range() {
    let redis = redis_server();
    let slow = proxy(
        &redis.addr(),
        &[
            "--latency",
            "100ms",
            "--jitter",
            "50ms",
            "--direction",
            "up",
        ],
    );
    let mut stream = connect(slow.port);
    for _ in 0..5 {
        let started = Instant::now();
        stream.write_all(b"PING\r\n").unwrap();
        let mut pong = [0u8; 7];
        stream.read_exact(&mut pong).unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_millis(150 + 50), "{took:?}");
    }
}

#[test]
fn limit_data_down_cuts_the_reply_at_the_byte() {
    let redis = redis_server();
    let limited = proxy(
        &redis.addr(),
        &["--limit-data", "20", "--direction", "down"],
    );
    let mut stream = connect(limited.port);
    let value = "x".repeat(100);
    stream
        .write_all(format!("SET k {value}\r\nGET k\r\n").as_bytes())
        .unwrap();
    let (got, error) = read_to_close(&mut stream);
    assert_eq!(error, None, "a close, not a reset");
    assert_eq!(
        got,
        b"+OK\r\n$100\r\nxxxxxxxxx",
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn reset_after_resets_the_client() {
    let redis = redis_server();
    let resetting = proxy(&redis.addr(), &["--reset-after", "300ms"]);
    let started = Instant::now();
    let mut stream = connect(resetting.port);
    stream.write_all(b"PING\r\n").unwrap();
    let mut pong = [0u8; 7];
    stream.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"+PONG\r\n", "forwarded until the reset");
    let (_, error) = read_to_close(&mut stream);
    assert_eq!(error, Some(ErrorKind::ConnectionReset));
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn redis_cli_sees_the_reset() {
    let redis = redis_server();
    let resetting = proxy(&redis.addr(), &["--reset-after", "0"]);
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &resetting.port.to_string(), "PING"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("PONG"), "{text}");
    assert!(text.contains("Connection reset by peer"), "{text}");
}

#[test]
fn a_half_close_reaches_the_upstream_and_its_reply_still_comes_back() {
    let (addr, upstream) = upstream(|mut stream| {
        let mut request = Vec::new();
        // Ends only when the client's FIN is passed on.
        stream.read_to_end(&mut request).unwrap();
        stream
            .write_all(format!("got {} bytes\n", request.len()).as_bytes())
            .unwrap();
    });
    let proxy = proxy(&addr, &[]);
    let mut stream = connect(proxy.port);
    stream.write_all(b"hello").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let (got, error) = read_to_close(&mut stream);
    assert_eq!(error, None);
    assert_eq!(got, b"got 5 bytes\n");
    upstream.join().unwrap();
}

#[test]
fn the_upstreams_half_close_leaves_the_client_free_to_send() {
    let (addr, upstream) = upstream(|mut stream| {
        stream.write_all(b"hello, then silence\n").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut request = Vec::new();
        stream.read_to_end(&mut request).unwrap();
        request
    });
    let proxy = proxy(&addr, &[]);
    let mut stream = connect(proxy.port);
    let (got, error) = read_to_close(&mut stream);
    assert_eq!(
        (got.as_slice(), error),
        (&b"hello, then silence\n"[..], None)
    );
    stream.write_all(b"still here").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(upstream.join().unwrap(), b"still here");
}

#[test]
fn a_reset_from_the_upstream_resets_the_client() {
    let (addr, upstream) = upstream(|mut stream| {
        let mut hello = [0u8; 5];
        stream.read_exact(&mut hello).unwrap();
        reset(stream);
    });
    let proxy = proxy(&addr, &[]);
    let mut stream = connect(proxy.port);
    stream.write_all(b"hello").unwrap();
    upstream.join().unwrap();
    let (_, error) = read_to_close(&mut stream);
    assert_eq!(error, Some(ErrorKind::ConnectionReset));
}

#[test]
fn a_reset_from_the_client_resets_the_upstream() {
    let (addr, upstream) = upstream(|mut stream| {
        stream.write_all(b"ready\n").unwrap();
        read_to_close(&mut stream)
    });
    let proxy = proxy(&addr, &[]);
    let mut stream = connect(proxy.port);
    let mut ready = [0u8; 6];
    stream.read_exact(&mut ready).unwrap();
    reset(stream);
    let (_, error) = upstream.join().unwrap();
    assert_eq!(error, Some(ErrorKind::ConnectionReset));
}

#[test]
fn a_stop_closes_connections_still_open_after_the_grace_period() {
    let echo = Running::server(&["--echo"]);
    let proxy = proxy(&echo.addr(), &[]);
    let mut stream = connect(proxy.port);
    stream.write_all(b"hello\n").unwrap();
    let mut hello = [0u8; 6];
    stream.read_exact(&mut hello).unwrap();
    let summary = stop(proxy);
    assert!(
        summary.contains("shut down: 1 connections, 6 bytes up, 6 down"),
        "{summary}"
    );
    let (rest, error) = read_to_close(&mut stream);
    assert_eq!((rest.len(), error), (0, None));
}

#[test]
fn an_upstream_that_refuses_gets_the_client_reset_and_a_line_on_stderr() {
    let refused = format!("127.0.0.1:{}", closed_port());
    let proxy = proxy(&refused, &[]);
    let mut stream = connect(proxy.port);
    let (_, error) = read_to_close(&mut stream);
    assert_eq!(error, Some(ErrorKind::ConnectionReset));
    proxy.wait_stderr(&format!("cannot connect to upstream {refused}"));
    let summary = stop(proxy);
    assert!(summary.contains("1 connections"), "{summary}");
    assert!(summary.contains("1 errors"), "{summary}");
}

/// For each of `count` connections in turn, one after the other (so each
/// has the same index in every run): whether `hello` came back cut by
/// `--limit-data 3 --direction down`.
fn cut_connections(proxy: &Running, count: usize) -> Vec<bool> {
    (0..count)
        .map(|_| {
            let mut stream = connect(proxy.port);
            stream.write_all(b"hello\n").unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
            let (got, error) = read_to_close(&mut stream);
            assert_eq!(error, None);
            match got.as_slice() {
                b"hel" => true,
                b"hello\n" => false,
                other => panic!("{:?}", String::from_utf8_lossy(other)),
            }
        })
        .collect()
}

fn limiting_proxy(echo: &Running, extra: &[&str]) -> Running {
    let args = [&["--limit-data", "3", "--direction", "down"][..], extra].concat();
    proxy(&echo.addr(), &args)
}

#[test]
fn toxicity_zero_affects_no_connection_and_one_affects_every_one() {
    let echo = Running::server(&["--echo"]);
    let none = limiting_proxy(&echo, &["--toxicity", "0"]);
    assert_eq!(cut_connections(&none, 8), [false; 8]);
    let all = limiting_proxy(&echo, &["--toxicity", "1"]);
    assert_eq!(cut_connections(&all, 8), [true; 8]);
    let summary = stop(all);
    assert!(summary.contains("8 with faults"), "{summary}");
    let summary = stop(none);
    assert!(summary.contains("0 with faults"), "{summary}");
}

#[test]
fn a_seed_picks_the_same_connections_every_run() {
    let echo = Running::server(&["--echo"]);
    let args = ["--toxicity", "0.5", "--seed", "7"];
    let first = cut_connections(&limiting_proxy(&echo, &args), 16);
    let second = cut_connections(&limiting_proxy(&echo, &args), 16);
    assert_eq!(first, second);
    assert!(first.contains(&true) && first.contains(&false), "{first:?}");
}

#[test]
fn verbose_shows_the_seed_and_each_connection() {
    let echo = Running::server(&["--echo"]);
    let proxy = limiting_proxy(&echo, &["--seed", "99", "-v"]);
    assert_eq!(cut_connections(&proxy, 1), [true]);
    let text = proxy.wait_stderr("closed (--limit-data) after");
    assert!(
        text.contains("seed 99 (repeat this run with --seed 99)"),
        "{text}"
    );
    assert!(
        text.contains("#1 127.0.0.1:") && text.contains("(toxics)"),
        "{text}"
    );
    assert!(text.contains(": 6 bytes up, 3 down"), "{text}");
}

#[test]
fn bandwidth_caps_the_rate() {
    let (addr, upstream) = upstream(|mut stream| {
        stream.write_all(&[b'x'; 100 * 1024]).unwrap();
    });
    let proxy = proxy(&addr, &["--bandwidth", "200KiB", "--direction", "down"]);
    let started = Instant::now();
    let mut stream = connect(proxy.port);
    let (got, error) = read_to_close(&mut stream);
    let took = started.elapsed();
    assert_eq!((got.len(), error), (100 * 1024, None));
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(took < Duration::from_millis(900), "{took:?}");
    upstream.join().unwrap();
}

#[test]
fn slice_splits_a_reply_into_pieces_apart_in_time() {
    let (addr, upstream) = upstream(|mut stream| {
        stream.write_all(b"0123456789").unwrap();
    });
    let proxy = proxy(&addr, &["--slice", "2:0:40ms", "--direction", "down"]);
    let mut stream = connect(proxy.port);
    let mut pieces = Vec::new();
    let mut chunk = [0u8; 64];
    loop {
        match crate::support::read_some(&mut stream, &mut chunk).unwrap() {
            0 => break,
            n => pieces.push(chunk[..n].to_vec()),
        }
    }
    assert_eq!(pieces.concat(), b"0123456789");
    // 40 ms apart, each piece arrives alone.
    assert_eq!(pieces.len(), 5, "{pieces:?}");
    upstream.join().unwrap();
}

#[test]
fn blackhole_keeps_the_connection_open_and_forwards_nothing() {
    let echo = Running::server(&["--echo"]);
    let proxy = proxy(&echo.addr(), &["--blackhole-after", "0"]);
    let mut stream = connect(proxy.port);
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    stream.write_all(b"hello\n").unwrap();
    let mut chunk = [0u8; 64];
    let error = crate::support::read_some(&mut stream, &mut chunk).unwrap_err();
    assert!(
        matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{error}"
    );
    // Still open: a write is taken without complaint.
    stream.write_all(b"again\n").unwrap();
}

#[test]
fn slow_close_holds_the_close_back() {
    let (addr, upstream) = upstream(|mut stream| {
        stream.write_all(b"bye\n").unwrap();
    });
    let proxy = proxy(&addr, &["--slow-close", "300ms", "--direction", "down"]);
    let mut stream = connect(proxy.port);
    let mut bye = [0u8; 4];
    stream.read_exact(&mut bye).unwrap();
    let started = Instant::now();
    upstream.join().unwrap();
    let (rest, error) = read_to_close(&mut stream);
    assert_eq!((rest.len(), error), (0, None));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn the_tutorial_client_and_server_talk_through_the_proxy() {
    let mut server = Command::new("python3");
    server
        .arg("-u")
        .arg(repo_path("tests/fixtures/tutorial_server.py"))
        .arg("0");
    let server = Running::listening(server, Some("hi from python\nexit\n"));
    let proxy = proxy(&server.addr(), &["--latency", "20ms"]);
    let mut client = Command::new("python3");
    client
        .arg("-u")
        .arg(repo_path("tests/fixtures/tutorial_client.py"))
        .arg(proxy.port.to_string());
    let mut client = Running::start(client, Some("hello\nbye\nexit\n"));
    client.wait_stdout("当前接受的信息是:exit");
    assert_eq!(client.wait_exit().code(), Some(0), "{}", client.stderr());
    let out = server.wait_stdout("当前接受的信息是:bye");
    assert!(out.contains("当前接受的信息是:hello"), "{out}");
}

#[test]
fn bad_flags_are_usage_errors() {
    for (args, message) in [
        (&["--toxicity", "2"][..], "not a fraction from 0 to 1"),
        (&["--jitter", "5ms"], "--latency"),
        (
            &["--latency", "5ms", "--jitter", "6ms"],
            "a delay cannot be negative",
        ),
        (&["--slice", "10:10"], "must be less than the size"),
        (&["--bandwidth", "0"], "not a usable size"),
        (&["--direction", "up"], "--direction applies to toxics"),
        (&["--toxicity", "0.5"], "--toxicity applies to toxics"),
        (&["--direction", "sideways", "--latency", "1ms"], "sideways"),
        (&["--reset-after", "soon"], "--reset-after"),
    ] {
        tcpscript()
            .args([
                "proxy",
                "--upstream",
                "127.0.0.1:1",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .assert()
            .code(2)
            .stderr(contains(message));
    }
    tcpscript()
        .args(["proxy", "--listen", "127.0.0.1:0"])
        .assert()
        .code(2)
        .stderr(contains("--upstream"));
    tcpscript()
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:notaport",
        ])
        .assert()
        .code(2)
        .stderr(contains("bad address `127.0.0.1:notaport`"));
}
