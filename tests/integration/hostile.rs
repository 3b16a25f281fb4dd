//! Hostile peers and hostile scripts: each case ends its own connection,
//! never the server, and is checked for its exact outcome over real sockets.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::Duration;

use crate::support::{LineClient, PATIENCE, Running, script, script_named, tcpscript};

/// An echo server script that says what it got.
const ECHO: &str = "fn on_message(msg) { msg }\n";

/// Asserts that the server still answers a fresh, well-behaved client.
fn still_serving(server: &Running) {
    let mut c = LineClient::connect(server.port);
    assert_eq!(c.exchange("still there?"), "still there?");
}

#[test]
fn oversized_frame_ends_only_that_connection() {
    let s = script(ECHO);
    let server = Running::server(&[s.path(), "--max-frame", "64"]);
    let mut bystander = LineClient::connect(server.port);
    let mut big = LineClient::connect(server.port);
    big.send(&"x".repeat(100));
    big.expect_closed();
    server.wait_stderr("message of 100 bytes is larger than --max-frame (64 bytes)");
    assert_eq!(bystander.exchange("ok"), "ok");
    still_serving(&server);
}

#[test]
fn garbage_length_prefix_is_refused_before_buffering() {
    let s = script(ECHO);
    let server = Running::server(&[s.path(), "--framing", "len:u32", "--max-frame", "1024"]);
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    // A length of 0x7f7f7f7f: two gigabytes promised, none buffered.
    stream.write_all(b"\x7f\x7f\x7f\x7fgarbage").unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty());
    server.wait_stderr("message of 2139062143 bytes is larger than --max-frame (1024 bytes)");
    // A well-formed frame on a new connection is still echoed.
    let mut good = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    good.set_read_timeout(Some(PATIENCE)).unwrap();
    good.write_all(b"\x00\x00\x00\x02hi").unwrap();
    let mut reply = [0u8; 6];
    good.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"\x00\x00\x00\x02hi");
}

#[test]
fn invalid_utf8_is_a_blob_echoed_byte_for_byte_in_every_framing() {
    let s =
        script("fn on_message(msg) { if type_of(msg) != \"blob\" { throw \"not a blob\" } msg }\n");
    let payload: &[u8] = b"\xff\x00\xfe\xc3(\x80";
    let cases: [(&str, Vec<u8>); 4] = [
        ("line", [payload, b"\n"].concat()),
        ("raw", payload.to_vec()),
        ("delim:\\r\\n", [payload, b"\r\n"].concat()),
        (
            "len:u16:le",
            [&[payload.len() as u8, 0][..], payload].concat(),
        ),
    ];
    for (framing, wire) in cases {
        let server = Running::server(&[s.path(), "--framing", framing]);
        let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.write_all(&wire).unwrap();
        let mut echoed = vec![0u8; wire.len()];
        stream.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, wire, "framing {framing}");
    }
}

#[test]
fn half_closed_peer_still_gets_every_reply_before_the_close() {
    let s = script(ECHO);
    let server = Running::server(&[s.path()]);
    let mut c = LineClient::connect(server.port);
    c.send("one");
    c.send("two");
    c.stream().shutdown(Shutdown::Write).unwrap();
    assert_eq!(c.recv().as_deref(), Some("one"));
    assert_eq!(c.recv().as_deref(), Some("two"));
    assert_eq!(c.recv(), None);
    still_serving(&server);
}

#[test]
fn peer_that_resets_mid_message_ends_alone() {
    let s =
        script("fn on_connect() { \"greeting you will not read\" }\nfn on_message(msg) { msg }\n");
    let server = Running::server(&[s.path(), "-v"]);
    let mut c = LineClient::connect(server.port);
    assert_eq!(c.recv().as_deref(), Some("greeting you will not read"));
    let mut rude = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let rude_addr = rude.local_addr().unwrap().to_string();
    // The greeting has been written, so it sits unread in our buffer.
    server.wait_stderr(&format!("{rude_addr} +"));
    // Half a message, then close with the greeting unread: the kernel resets.
    rude.write_all(b"half a mess").unwrap();
    drop(rude);
    let log = server.wait_stderr(&format!("{rude_addr} closed"));
    assert!(
        log.contains(&format!("{rude_addr} connection error"))
            || log.contains(&format!("{rude_addr} < half a mess")),
        "{log}"
    );
    assert_eq!(c.exchange("after the reset"), "after the reset");
    let mut late = LineClient::connect(server.port);
    assert_eq!(late.recv().as_deref(), Some("greeting you will not read"));
    assert_eq!(late.exchange("late"), "late");
}

#[test]
fn silent_peer_is_closed_by_the_idle_timeout() {
    let s = script(ECHO);
    let server = Running::server(&[s.path(), "--idle-timeout", "300ms"]);
    let mut silent = LineClient::connect(server.port);
    let addr = silent.stream().local_addr().unwrap().to_string();
    silent.expect_closed();
    server.wait_stderr(&format!("{addr} closed: idle for 300ms (--idle-timeout)"));
    still_serving(&server);
}

#[test]
fn peer_that_never_reads_is_bounded_then_dropped() {
    let s = script(
        "fn on_message(msg) {\n    if msg != \"more please\" { return msg; }\n    let big = \"\";\n    big.pad(65536, 'x');\n    big\n}\n",
    );
    let server = Running::server(&[s.path(), "--idle-timeout", "1s"]);
    let mut hog = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    hog.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // Ask for 64 KiB replies and read none: soon the server stops reading
    // us (its replies are stuck), so our own writes stall, or the server
    // closes us for not reading first (and then drains what we send, so
    // the close is not a reset: that reading does not count). Nothing
    // grows. Requests go 4,096 at a time, to fill what the kernel buffers
    // well within the idle limit.
    let requests = b"more please\n".repeat(4096);
    let mut sent = 0usize;
    let stalled = loop {
        if server.stderr().contains("read none of its replies") {
            break true;
        }
        match hog.write(&requests) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break true;
            }
            Err(_) => break false,
        }
        if sent > 64 * 1024 * 1024 {
            break false;
        }
    };
    assert!(
        stalled,
        "the server kept reading {sent} bytes from a peer that never reads"
    );
    server.wait_stderr("read none of its replies for 1s; closing");
    still_serving(&server);
}

#[test]
fn two_thousand_concurrent_connections_are_all_served() {
    let wanted = 2000;
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    assert!(
        limit >= wanted as u64 + 64,
        "the open-file limit here is {limit}: 2,000 connections cannot be tested (raise `ulimit -n`)"
    );
    let s = script(ECHO);
    let server = Running::server(&[s.path(), "-q"]);
    let mut clients: Vec<LineClient> = (0..wanted)
        .map(|_| LineClient::connect(server.port))
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&format!("client {i}"));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.recv().unwrap(), format!("client {i}"));
    }
    still_serving(&server);
}

#[test]
fn runaway_loop_is_stopped_naming_hook_and_script() {
    let s = script_named(
        "spin.rhai",
        "fn on_message(msg) {\n    if msg == \"go\" { while true { } }\n    msg\n}\n",
    );
    let server = Running::server(&[s.path(), "--max-ops", "50000"]);
    let mut c = LineClient::connect(server.port);
    c.send("go");
    c.expect_closed();
    let log = server.wait_stderr("in hook `on_message`");
    assert!(log.contains("operation limit reached"), "{log}");
    assert!(log.contains("spin.rhai"), "{log}");
    still_serving(&server);
}

#[test]
fn slow_hook_is_stopped_by_the_wall_clock() {
    let s = script_named(
        "slow.rhai",
        "fn on_message(msg) {\n    let n = 0;\n    while msg == \"go\" { n += 1; }\n    msg\n}\n",
    );
    let server = Running::server(&[s.path(), "--max-ops", "0", "--hook-timeout", "250ms"]);
    let mut c = LineClient::connect(server.port);
    c.send("go");
    c.expect_closed();
    let log = server.wait_stderr("in hook `on_message`");
    assert!(log.contains("wall-clock limit of 250ms"), "{log}");
    assert!(log.contains("slow.rhai"), "{log}");
    still_serving(&server);
}

#[test]
fn huge_string_and_array_are_stopped() {
    let s = script_named(
        "hog.rhai",
        "fn on_message(msg) {\n    if msg == \"string\" { let s = \"x\"; loop { s += s; } }\n    if msg == \"array\" { let a = []; loop { a.push(1); } }\n    msg\n}\n",
    );
    let server = Running::server(&[s.path(), "--max-ops", "0", "--hook-timeout", "2s"]);
    let mut c = LineClient::connect(server.port);
    c.send("string");
    c.expect_closed();
    server.wait_stderr("Length of string too large");
    let mut c = LineClient::connect(server.port);
    let addr = c.stream().local_addr().unwrap().to_string();
    c.send("array");
    c.expect_closed();
    // Each push re-measures the array, so growth slows down as it nears
    // the size limit; whichever limit comes first stops it.
    let log = server.wait_stderr(&format!("in hook `on_message` for {addr}"));
    let report = &log[log.rfind("error:").unwrap()..];
    assert!(
        report.contains("Size of array too large") || report.contains("wall-clock limit of 2s"),
        "{log}"
    );
    assert!(report.contains("hog.rhai"), "{log}");
    still_serving(&server);
}

#[test]
fn deep_recursion_is_stopped() {
    let s = script(
        "fn down(n) { down(n + 1) }\nfn on_message(msg) { if msg == \"dive\" { down(0) } msg }\n",
    );
    let server = Running::server(&[s.path()]);
    let mut c = LineClient::connect(server.port);
    c.send("dive");
    c.expect_closed();
    let log = server.wait_stderr("in hook `on_message`");
    assert!(log.contains("Stack overflow"), "{log}");
    still_serving(&server);
}

#[test]
fn sleep_in_one_hook_never_delays_another() {
    let s = script("fn on_message(msg) { if msg == \"nap\" { sleep(5000); } msg }\n");
    let server = Running::server(&[s.path()]);
    let mut napper = LineClient::connect(server.port);
    napper.send("nap");
    let mut others: Vec<LineClient> = (0..20).map(|_| LineClient::connect(server.port)).collect();
    for (i, c) in others.iter_mut().enumerate() {
        assert_eq!(c.exchange(&format!("quick {i}")), format!("quick {i}"));
    }
    assert_eq!(napper.recv().as_deref(), Some("nap"));
}

#[test]
fn eval_is_refused() {
    let s = script("fn on_message(msg) { eval(msg) }\n");
    tcpscript()
        .args(["server", s.path(), "--listen", "127.0.0.1:0"])
        .assert()
        .code(3)
        .stderr(predicates::str::contains(format!("{}:1:", s.path())));
}

#[test]
fn imports_stay_inside_the_script_folder() {
    let outside = script_named("secret.rhai", "export const SECRET = 42;\n");
    let outside_path = outside.path().trim_end_matches(".rhai").to_string();
    for import in ["../secret", "/etc/passwd", outside_path.as_str()] {
        let s = script(&format!("import \"{import}\" as m;\n"));
        tcpscript()
            .args(["server", s.path(), "--listen", "127.0.0.1:0"])
            .assert()
            .code(3)
            .stderr(predicates::str::contains("is refused"));
    }
    // A module beside the script is fine.
    let s = script("import \"helper\" as h;\nfn on_connect() { h::GREETING }\n");
    let folder = std::path::Path::new(s.path()).parent().unwrap();
    std::fs::write(
        folder.join("helper.rhai"),
        "export const GREETING = \"from a module\";\n",
    )
    .unwrap();
    let server = Running::server(&[s.path()]);
    let mut c = LineClient::connect(server.port);
    assert_eq!(c.recv().as_deref(), Some("from a module"));
}

#[test]
fn shutdown_lets_in_flight_replies_out() {
    let s = script(
        "fn on_message(msg) { sleep(300); `late ${msg}` }\nfn on_disconnect() { \"goodbye\" }\n",
    );
    let mut server = Running::server(&[s.path(), "-v"]);
    let mut c = LineClient::connect(server.port);
    c.send("reply");
    server.wait_stderr("< reply");
    server.send_signal("INT");
    assert_eq!(c.recv().as_deref(), Some("late reply"));
    assert_eq!(c.recv().as_deref(), Some("goodbye"));
    c.expect_closed();
    assert_eq!(server.wait_exit().code(), Some(0));
    assert!(
        server
            .stderr()
            .contains("shut down: 1 connections, 1 messages in, 2 out, 0 errors")
    );
}

#[test]
fn a_slow_but_steady_reader_is_not_cut_off_by_the_idle_timeout() {
    let s = script(
        "fn on_message(m) {\n    let s = \"\";\n    s.pad(1000000, \"x\");\n    [s, s, s, s, s, s, s, s]\n}\n",
    );
    let server = Running::server(&[s.path(), "--idle-timeout", "300ms"]);
    let mut reader = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    reader.set_read_timeout(Some(PATIENCE)).unwrap();
    reader.write_all(b"go\n").unwrap();
    // 256 KiB every 50 ms: slower than the server writes, never idle for
    // anything like 300 ms.
    let wanted = 8 * 1_000_001;
    let mut got = 0;
    let mut chunk = vec![0u8; 256 * 1024];
    while got < wanted {
        let n = crate::support::read_some(&mut reader, &mut chunk).unwrap();
        assert!(
            n > 0,
            "cut off after {got} of {wanted} bytes:\n{}",
            server.stderr()
        );
        got += n;
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(got, wanted);
    assert!(!server.stderr().contains("closing"), "{}", server.stderr());
}

#[test]
fn a_reply_too_long_for_len_u8_is_a_script_error_at_its_hook_and_line() {
    let s = script_named(
        "short.rhai",
        "fn on_message(m) {\n    send(\"first\");\n    let s = \"\";\n    s.pad(300, \"x\");\n    s\n}\n",
    );
    let server = Running::server(&[s.path(), "--framing", "len:u8"]);
    let mut c = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    c.write_all(b"\x02hi").unwrap();
    // What the hook sent before the bad reply still arrives, then the close.
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"\x05first");
    let log = server.wait_stderr("does not fit the framing len:u8 (at most 255 bytes)");
    assert!(
        log.contains("the value returned by `on_message` cannot be sent"),
        "{log}"
    );
    assert!(log.contains("short.rhai:1:1"), "{log}");
    assert!(!log.contains("bad framing from peer"), "{log}");
}

#[test]
fn a_send_too_long_for_len_u8_fails_at_the_send() {
    let s = script_named(
        "short.rhai",
        "fn on_message(m) {\n    send(\"first\");\n    let s = \"\";\n    s.pad(300, \"x\");\n    send(s);\n}\n",
    );
    let server = Running::server(&[s.path(), "--framing", "len:u8"]);
    let mut c = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    c.write_all(b"\x02hi").unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"\x05first");
    let log = server.wait_stderr("send(): a message of 300 bytes does not fit the framing len:u8");
    assert!(log.contains("short.rhai:5:5"), "{log}");
}

#[test]
fn a_line_of_exactly_max_frame_bytes_ending_in_crlf_is_accepted() {
    let s = script(ECHO);
    let server = Running::server(&[s.path(), "--max-frame", "64"]);
    let mut c = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    let line = "y".repeat(64);
    c.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    let mut reply = vec![0u8; 65];
    c.read_exact(&mut reply).unwrap();
    assert_eq!(reply, format!("{line}\n").as_bytes());
}

#[test]
fn a_float_sleep_in_a_hook_is_milliseconds_and_never_blocks_a_worker() {
    let s = script("fn on_message(msg) { if msg == \"nap\" { sleep(100000.0); } msg }\n");
    let server = Running::server(&[s.path()]);
    // As many nappers as worker threads, and more.
    let mut nappers: Vec<LineClient> = (0..8).map(|_| LineClient::connect(server.port)).collect();
    for napper in &mut nappers {
        napper.send("nap");
    }
    let mut other = LineClient::connect(server.port);
    assert_eq!(other.exchange("awake?"), "awake?");
}
