//! `tcpscript proxy SCRIPT`: each direction's messages through the
//! script's hooks, between a plain client and a tcpscript echo server.

use std::io::{ErrorKind, Read};
use std::process::Command;

use crate::support::{BIN, LineClient, Running, script, shipped, tcpscript};

/// `tcpscript proxy SCRIPT --upstream UPSTREAM`, once it is listening.
fn proxy(script: &str, upstream: &str) -> Running {
    let mut command = Command::new(BIN);
    command
        .args(["proxy", script, "--upstream", upstream])
        .args(["--listen", "127.0.0.1:0"]);
    Running::listening(command, None)
}

fn echo_server() -> Running {
    Running::server(&["--echo"])
}

#[test]
fn a_pass_through_script_forwards_every_line_both_ways() {
    let upstream = echo_server();
    let s = script(
        r#"const FRAMING = "line";
        fn on_client_message(msg) { msg }
        fn on_server_message(msg) { msg }"#,
    );
    let mut proxy = proxy(s.path(), &upstream.addr());
    let mut c = LineClient::connect(proxy.port);
    for line in ["one", "two", "three"] {
        assert_eq!(c.exchange(line), line);
    }
    drop(c);
    proxy.send_signal("TERM");
    proxy.wait_exit();
    assert!(
        proxy
            .stderr()
            .contains("shut down: 1 connections, 14 bytes up, 14 down, 0 with faults, 0 errors (messages: 3 up, 3 down)"),
        "{}",
        proxy.stderr()
    );
}

#[test]
fn the_shipped_script_drops_the_third_message() {
    let upstream = echo_server();
    let proxy = proxy(&shipped("proxy_drop_third.rhai"), &upstream.addr());
    let mut c = LineClient::connect(proxy.port);
    for line in ["a", "b", "c", "d"] {
        c.send(line);
    }
    c.stream().shutdown(std::net::Shutdown::Write).unwrap();
    let got: Vec<String> = std::iter::from_fn(|| c.recv()).collect();
    assert_eq!(got, ["a", "b", "d"]);
    proxy.wait_stderr("dropped: c");
}

#[test]
fn a_reply_matching_a_pattern_is_rewritten() {
    let upstream = echo_server();
    let s = script(
        r#"const FRAMING = "line";
        fn on_server_message(msg) {
            let found = msg.captures("^price (\\d+)$");
            if found == () { return msg; }
            `price ${parse_int(found[1]) * 2}`
        }"#,
    );
    let proxy = proxy(s.path(), &upstream.addr());
    let mut c = LineClient::connect(proxy.port);
    assert_eq!(c.exchange("price 21"), "price 42");
    assert_eq!(c.exchange("other"), "other");
}

#[test]
fn to_client_answers_a_request_the_upstream_never_sees() {
    let upstream =
        Running::server(&[
            script(r#"fn on_message(msg) { log(`upstream got ${msg}`); msg }"#).path(),
        ]);
    let s = script(
        r#"const FRAMING = "line";
        fn on_client_message(msg) {
            if msg == "PING" { to_client("PONG"); return; }
            msg
        }"#,
    );
    let proxy = proxy(s.path(), &upstream.addr());
    let mut c = LineClient::connect(proxy.port);
    assert_eq!(c.exchange("PING"), "PONG");
    assert_eq!(c.exchange("hello"), "hello");
    upstream.wait_stderr("upstream got hello");
    assert!(
        !upstream.stderr().contains("upstream got PING"),
        "{}",
        upstream.stderr()
    );
}

#[test]
fn reset_resets_the_client() {
    let upstream = echo_server();
    let s = script(
        r#"const FRAMING = "line";
        fn on_client_message(msg) { if msg == "boom" { reset(); } msg }"#,
    );
    let proxy = proxy(s.path(), &upstream.addr());
    let mut c = LineClient::connect(proxy.port);
    assert_eq!(c.exchange("fine"), "fine");
    c.send("boom");
    let mut rest = Vec::new();
    let err = c.stream().read_to_end(&mut rest).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{rest:?}");
}

#[test]
fn a_hook_error_names_its_place_and_closes_that_connection_only() {
    let upstream = echo_server();
    let s = script(
        "const FRAMING = \"line\";\nfn on_client_message(msg) {\n    if msg == \"bad\" { throw \"no\"; }\n    msg\n}\n",
    );
    let proxy = proxy(s.path(), &upstream.addr());
    let mut other = LineClient::connect(proxy.port);
    assert_eq!(other.exchange("before"), "before");
    let mut c = LineClient::connect(proxy.port);
    c.send("bad");
    c.expect_closed();
    let stderr = proxy.wait_stderr("test.rhai:3:");
    assert!(stderr.contains("on_client_message"), "{stderr}");
    assert_eq!(other.exchange("after"), "after");
}

#[test]
fn to_client_in_a_server_script_is_an_error() {
    let s = script("fn on_connect() { to_client(\"x\") }");
    let server = Running::server(&[s.path()]);
    let mut c = LineClient::connect(server.port);
    c.expect_closed();
    server.wait_stderr("only be used in a proxy script");
}

#[test]
fn a_partial_last_line_is_passed_on_at_the_close() {
    let upstream = echo_server();
    let s = script("const FRAMING = \"line\";\nfn on_client_message(m) { m }");
    let proxy = proxy(s.path(), &upstream.addr());
    let mut c = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    std::io::Write::write_all(&mut c, b"no newline").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, "no newline\n");
}

#[test]
fn delay_holds_back_that_message() {
    let upstream = echo_server();
    let s = script(
        r#"const FRAMING = "line";
        fn on_server_message(msg) { if msg == "slow" { delay(300); } msg }"#,
    );
    let proxy = proxy(s.path(), &upstream.addr());
    let mut c = LineClient::connect(proxy.port);
    let started = std::time::Instant::now();
    assert_eq!(c.exchange("slow"), "slow");
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    assert_eq!(c.exchange("fast"), "fast");
}

/// `python3 -m http.server` serving `hello.txt` over HTTP/1.1 on a free
/// port, once it accepts connections; it logs each request on stderr.
fn http_server(site: &std::path::Path) -> (Running, u16) {
    std::fs::write(site.join("hello.txt"), "hello from python\n").unwrap();
    let port = crate::support::closed_port();
    let mut command = Command::new("python3");
    command
        .args(["-m", "http.server", "--protocol", "HTTP/1.1", "--bind"])
        .args(["127.0.0.1", &port.to_string()])
        .current_dir(site);
    let python = Running::start(command, None);
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < crate::support::PATIENCE,
            "http.server never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (python, port)
}

#[test]
fn curl_through_a_proxy_that_rewrites_response_headers() {
    let site = tempfile::tempdir().unwrap();
    let (_python, port) = http_server(site.path());
    let proxy = proxy(
        &shipped("proxy_http_header.rhai"),
        &format!("127.0.0.1:{port}"),
    );
    let url = format!("http://127.0.0.1:{}/hello.txt", proxy.port);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D", "-", &url, &url])
        .output()
        .expect("curl");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    // Two requests on one keep-alive connection, each response marked.
    assert_eq!(
        text.matches("X-Proxied-By: tcpscript\r\n").count(),
        2,
        "{text}"
    );
    assert_eq!(
        text.matches("Server: tcpscript-proxy over SimpleHTTP")
            .count(),
        2,
        "{text}"
    );
    assert_eq!(text.matches("hello from python\n").count(), 2, "{text}");
}

#[test]
fn the_shipped_heal_script_resets_two_connections_then_lets_them_through() {
    let upstream = echo_server();
    let proxy = proxy(&shipped("proxy_heal_after_two.rhai"), &upstream.addr());
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        c.set_read_timeout(Some(crate::support::PATIENCE)).unwrap();
        // The reset may come first and refuse the write; the socket then
        // reports it once, to the write, and the read sees an end.
        if let Err(e) = std::io::Write::write_all(&mut c, b"ping\n") {
            assert!(
                matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
                "{e}"
            );
            outcomes.push("reset".to_string());
            continue;
        }
        let mut buf = [0u8; 16];
        outcomes.push(match crate::support::read_some(&mut c, &mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => "reset".to_string(),
            Err(e) => format!("{e}"),
        });
    }
    assert_eq!(outcomes, ["reset", "reset", "ping\n", "ping\n"]);
    proxy.wait_stderr("connection 2: reset");
}

#[test]
fn the_shipped_corrupt_script_flips_one_byte_of_the_second_binary_reply() {
    let upstream = Running::server(&["--echo", "--framing", "len:u16"]);
    let proxy = proxy(&shipped("proxy_corrupt_byte.rhai"), &upstream.addr());
    let mut c = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    c.set_read_timeout(Some(crate::support::PATIENCE)).unwrap();
    let payload: Vec<u8> = (0u8..10).chain([0xfe, 0xff]).collect();
    let mut replies = Vec::new();
    for _ in 0..3 {
        let mut frame = (payload.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        std::io::Write::write_all(&mut c, &frame).unwrap();
        let mut len = [0u8; 2];
        c.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
        c.read_exact(&mut body).unwrap();
        replies.push(body);
    }
    assert_eq!(replies[0], payload);
    assert_eq!(replies[2], payload);
    let differing: Vec<usize> = (0..payload.len())
        .filter(|&i| replies[1][i] != payload[i])
        .collect();
    assert_eq!(differing, [6], "{:?}", replies[1]);
    assert_eq!(replies[1][6], payload[6] ^ 0xff);
    proxy.wait_stderr("flipped byte 6 of reply 2");
}

#[test]
fn set_gives_a_proxy_script_its_parameters() {
    let upstream = echo_server();
    let s = script(
        r#"const FRAMING = "line";
        let tag = param("tag", "none");
        fn on_server_message(msg) { `${tag}:${msg}` }"#,
    );
    let mut command = Command::new(BIN);
    command
        .args(["proxy", s.path(), "--upstream", &upstream.addr()])
        .args(["--set", "tag=x", "--listen", "127.0.0.1:0"]);
    let proxy = Running::listening(command, None);
    let mut c = LineClient::connect(proxy.port);
    assert_eq!(c.exchange("hi"), "x:hi");
}

#[test]
fn max_frame_bounds_what_a_proxy_script_takes_in() {
    let upstream = echo_server();
    let s = script("const FRAMING = \"line\";\nfn on_client_message(msg) { msg }");
    let mut command = Command::new(BIN);
    command
        .args(["proxy", s.path(), "--upstream", &upstream.addr()])
        .args(["--max-frame", "16", "--listen", "127.0.0.1:0"]);
    let proxy = Running::listening(command, None);
    let mut c = LineClient::connect(proxy.port);
    assert_eq!(c.exchange("short"), "short");
    c.send("a line much longer than sixteen bytes");
    // The connection ends (closed or reset) rather than take it in.
    let mut buf = [0u8; 64];
    match crate::support::read_some(c.stream(), &mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the line went through: {other:?}"),
    }
    proxy.wait_stderr("16 bytes");
}

#[test]
fn verbose_shows_each_message_with_its_direction() {
    let upstream = echo_server();
    let s = script(
        "const FRAMING = \"line\";\nfn on_client_message(msg) { msg }\nfn on_server_message(msg) { msg.to_upper() }",
    );
    let mut command = Command::new(BIN);
    command
        .args(["proxy", s.path(), "--upstream", &upstream.addr()])
        .args(["-v", "--listen", "127.0.0.1:0"]);
    let proxy = Running::listening(command, None);
    let mut c = LineClient::connect(proxy.port);
    assert_eq!(c.exchange("ping"), "PING");
    assert_eq!(c.exchange("ping\u{1b}[2J"), "PING\u{1b}[2J");
    let shown = proxy.wait_stderr("<s <8 bytes");
    assert!(
        shown.contains("+0.") && shown.contains(" c> ping\n"),
        "{shown}"
    );
    assert!(shown.contains(" <s ping\n"), "{shown}");
    // Peer bytes are escaped before they reach a terminal.
    assert!(!shown.contains('\u{1b}'), "{shown}");
}

#[test]
fn json_events_tell_each_connection_and_message() {
    let upstream = echo_server();
    let s = script("const FRAMING = \"line\";\nfn on_client_message(msg) { msg }");
    let mut command = Command::new(BIN);
    command
        .args(["proxy", s.path(), "--upstream", &upstream.addr()])
        .args(["--json", "--listen", "127.0.0.1:0"]);
    let proxy = Running::listening(command, None);
    let mut c = LineClient::connect(proxy.port);
    assert_eq!(c.exchange("ping"), "ping");
    drop(c);
    let out = proxy.wait_stdout("\"event\":\"close\"");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["open", "message", "close"], "{out}");
    assert_eq!(events[1]["direction"], "up");
    assert_eq!(events[1]["text"], "ping");
    assert_eq!(events[2]["bytes_up"], 5);
    assert_eq!(events[2]["bytes_down"], 5);
}

/// `tcpscript proxy SCRIPT --upstream UPSTREAM ARGS`, once it is listening.
fn proxy_with(script: &str, upstream: &str, args: &[&str]) -> Running {
    let mut command = Command::new(BIN);
    command
        .args(["proxy", script, "--upstream", upstream])
        .args(args)
        .args(["--listen", "127.0.0.1:0"]);
    Running::listening(command, None)
}

const UPPER: &str = r#"const FRAMING = "line";
fn on_server_message(msg) { msg.to_upper() }"#;

#[test]
fn latency_with_a_script_delays_each_changed_message_and_keeps_their_order() {
    let upstream = echo_server();
    let s = script(UPPER);
    let proxy = proxy_with(
        s.path(),
        &upstream.addr(),
        &[
            "--latency",
            "300ms",
            "--jitter",
            "100ms",
            "--direction",
            "down",
        ],
    );
    let mut c = LineClient::connect(proxy.port);
    let started = std::time::Instant::now();
    for line in ["one", "two", "three", "four"] {
        c.send(line);
    }
    let got: Vec<String> = (0..4).map(|_| c.recv().unwrap()).collect();
    assert_eq!(got, ["ONE", "TWO", "THREE", "FOUR"]);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn toxicity_zero_leaves_the_replies_alone() {
    let upstream = echo_server();
    let s = script(UPPER);
    let proxy = proxy_with(
        s.path(),
        &upstream.addr(),
        &["--latency", "2s", "--direction", "down", "--toxicity", "0"],
    );
    let mut c = LineClient::connect(proxy.port);
    let started = std::time::Instant::now();
    assert_eq!(c.exchange("quick"), "QUICK");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn blackhole_after_with_a_script_swallows_later_messages_before_the_hook() {
    let upstream = echo_server();
    let s = script(
        r#"const FRAMING = "line";
        fn on_client_message(msg) { log(`hook saw ${msg}`); msg }"#,
    );
    let proxy = proxy_with(
        s.path(),
        &upstream.addr(),
        &["--blackhole-after", "300ms", "--direction", "up"],
    );
    let mut c = LineClient::connect(proxy.port);
    assert_eq!(c.exchange("early"), "early");
    proxy.wait_stderr("hook saw early");
    std::thread::sleep(std::time::Duration::from_millis(400));
    c.send("late");
    c.stream()
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 16];
    let err = crate::support::read_some(c.stream(), &mut buf).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err:?}"
    );
    assert!(
        !proxy.stderr().contains("hook saw late"),
        "{}",
        proxy.stderr()
    );
}

#[test]
fn reset_after_with_a_script_resets_the_client() {
    let upstream = echo_server();
    let s = script(UPPER);
    let proxy = proxy_with(s.path(), &upstream.addr(), &["--reset-after", "200ms"]);
    let mut c = LineClient::connect(proxy.port);
    assert_eq!(c.exchange("before"), "BEFORE");
    let mut buf = [0u8; 16];
    c.stream()
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let err = crate::support::read_some(c.stream(), &mut buf).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err:?}");
}

#[test]
fn byte_cutting_toxics_are_refused_with_a_script() {
    let s = script(UPPER);
    tcpscript()
        .args([
            "proxy",
            s.path(),
            "--upstream",
            "127.0.0.1:1",
            "--bandwidth",
            "1KiB",
        ])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("whole messages"));
}

#[test]
fn the_shipped_health_script_answers_from_the_proxy_and_forwards_the_rest() {
    let site = tempfile::tempdir().unwrap();
    let (python, port) = http_server(site.path());
    let proxy = proxy(
        &shipped("proxy_answer_health.rhai"),
        &format!("127.0.0.1:{port}"),
    );
    let base = format!("http://127.0.0.1:{}", proxy.port);
    // One keep-alive connection: the proxy's answer sits between two of
    // the upstream's.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("{base}/hello.txt"))
        .arg(format!("{base}/health"))
        .arg(format!("{base}/hello.txt"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from python\nhealthy (answered by the proxy)\nhello from python\n"
    );
    let log = python.wait_stderr_count("GET /hello.txt", 2);
    assert!(!log.contains("/health"), "{log}");
}

#[test]
fn the_shipped_delay_script_holds_back_only_matching_replies() {
    let upstream = echo_server();
    let mut command = Command::new(BIN);
    command
        .args(["proxy", &shipped("proxy_delay_matching.rhai")])
        .args(["--upstream", &upstream.addr(), "--set", "ms=400"])
        .args(["--listen", "127.0.0.1:0"]);
    let proxy = Running::listening(command, None);
    let mut c = LineClient::connect(proxy.port);
    let timed = |c: &mut LineClient, line: &str| {
        let started = std::time::Instant::now();
        assert_eq!(c.exchange(line), line);
        started.elapsed()
    };
    let quick = timed(&mut c, "OK fine");
    let slow = timed(&mut c, "ERR no such key");
    let quick_again = timed(&mut c, "OK again");
    assert!(slow >= std::time::Duration::from_millis(400), "{slow:?}");
    assert!(quick < std::time::Duration::from_millis(400), "{quick:?}");
    assert!(
        quick_again < std::time::Duration::from_millis(400),
        "{quick_again:?}"
    );
    proxy.wait_stderr("delaying by 400 ms: ERR no such key");
}

/// Many messages per read, more than the queues hold, with a hook that
/// also answers some of them itself: every line comes back once, each
/// kind in the order sent.
#[test]
fn a_flood_of_pipelined_lines_comes_back_whole_and_in_order() {
    use std::io::{BufRead, BufReader, Write};
    let upstream = echo_server();
    let s = script(
        r#"const FRAMING = "line";
        fn on_client_message(msg) { if msg.ends_with("7") { to_client("ack " + msg); } msg }
        fn on_server_message(msg) { msg }"#,
    );
    let proxy = proxy(s.path(), &upstream.addr());
    let c = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    const LINES: usize = 100_000;
    let mut writer = c.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut all = Vec::new();
        for i in 0..LINES {
            writeln!(all, "line {i}").unwrap();
        }
        writer.write_all(&all).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let (mut echoed, mut acked) = (0, 0);
    for line in BufReader::new(c).lines() {
        let line = line.unwrap();
        match line.strip_prefix("ack ") {
            Some(rest) => {
                assert_eq!(rest, format!("line {}", acked * 10 + 7));
                acked += 1;
            }
            None => {
                assert_eq!(line, format!("line {echoed}"));
                echoed += 1;
            }
        }
    }
    sender.join().unwrap();
    assert_eq!((echoed, acked), (LINES, LINES / 10));
}

/// Hooks that spin to their limit on every core must not hold up a
/// connection beside them: a scripted connection runs on a thread of its
/// own while one is free, and on the shared runtime otherwise, where a slow
/// hook hands its worker's other connections on.
#[test]
fn hooks_spinning_to_their_limit_leave_a_bystander_served() {
    use std::io::Write;
    use std::net::TcpStream;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    let upstream = echo_server();
    let s = script(
        "const FRAMING = \"line\";\nfn on_client_message(m) { if m == \"spin\" { loop {} } m }\n",
    );
    let proxy = proxy_with(s.path(), &upstream.addr(), &["--hook-timeout", "1s", "-q"]);
    let port = proxy.port;
    let stop = Arc::new(AtomicBool::new(false));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Each hog's hook spins until its limit, which closes its connection.
    let hogs: Vec<_> = (0..cores)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut hog = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    hog.set_read_timeout(Some(crate::support::PATIENCE))
                        .unwrap();
                    hog.write_all(b"spin\n").unwrap();
                    let _ = hog.read_to_end(&mut Vec::new());
                }
            })
        })
        .collect();
    // The bystander may land beside a hog or on a thread of its own: either
    // way it must be served.
    let mut bystander = LineClient::connect(port);
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(3) {
        let sent = Instant::now();
        assert_eq!(bystander.exchange("ping"), "ping");
        worst = worst.max(sent.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for hog in hogs {
        let _ = hog.join();
    }
    // Loose: a held-up bystander waits out a hook's whole second.
    assert!(
        worst < Duration::from_millis(400),
        "a round trip took {worst:?}"
    );
}

#[test]
fn raw_messages_past_max_frame_are_cut_to_it_not_a_reset() {
    let upstream = echo_server();
    let s = script("fn on_client_message(m) { m }\nfn on_server_message(m) { m }\n");
    let mut command = Command::new(BIN);
    command
        .args(["proxy", s.path(), "--upstream", &upstream.addr()])
        .args(["--max-frame", "10", "--listen", "127.0.0.1:0"]);
    let proxy = Running::listening(command, None);
    let mut c = LineClient::connect(proxy.port);
    let long = "x".repeat(100);
    assert_eq!(c.exchange(&long), long);
    assert!(!proxy.stderr().contains("resetting"), "{}", proxy.stderr());
}
