//! Stream reads (`recv_exact`, `recv_until`, `recv_line`, `expect_stream`),
//! `send_raw`, `set_framing` and `bytes:N`, against peers that send their
//! bytes in awkward pieces.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use predicates::str::contains;

use crate::support::{Running, repo_path, script, tcpscript};

/// The fixture peer, sending `pieces` (Python bytes literals) in turn.
fn pieces_server(pieces: &[&str]) -> Running {
    let mut command = Command::new("python3");
    command
        .arg("-u")
        .arg(repo_path("tests/fixtures/pieces_server.py"))
        .args(pieces);
    Running::listening(command, None)
}

#[test]
fn stream_reads_and_framed_receives_share_one_buffer() {
    // A RESP exchange and a memcached data block, cut inside CRLFs and values.
    let peer = pieces_server(&[
        r"b'+OK\r'",
        r"b'\n$7\r\nab\r'",
        r"b'\ncde\r\nVALUE k 0 5\r\nab'",
        r"b'\r\nc\r\nEND\r\n250-mx\r\n250-8BIT'",
        r"b'MIME\r\n250 OK\r\nbin:\xff\x00\xfe'",
    ]);
    let s = script(
        r#"
assert_eq(recv_line(), "+OK");
assert_eq(recv_until("\r\n"), "$7");
assert_eq(recv_exact(7), "ab\r\ncde");
assert_eq(recv_exact(2), "\r\n");
let m = expect_stream("VALUE (\\S+) \\d+ (\\d+)\r\n");
assert_eq(m[1], "k");
set_framing(`bytes:${parse_int(m[2]) + 2}`);
assert_eq(recv(), "ab\r\nc\r\n");
set_framing("line");
assert_eq(recv(), "END");
let reply = expect_stream("(?m)^250 (.*)\r\n");
assert_eq(reply[1], "OK");
assert_eq(recv_until(":"), "bin");
let b = recv_exact(3);
assert_eq(type_of(b), "blob");
assert_eq(b[0], 0xff);
send_raw("no newline");
send("then a line");
"#,
    );
    tcpscript()
        .args(["client", s.path(), "--connect", &peer.addr()])
        .assert()
        .success();
    peer.wait_stdout(r"b'no newlinethen a line\n'");
}

#[test]
fn connections_from_connect_have_the_stream_reads_as_methods() {
    let peer = pieces_server(&[
        r"b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel'",
        r"b'lo'",
    ]);
    let s = script(&format!(
        r#"
let c = connect("{}");
let status = c.expect_stream("HTTP/1.1 (\\d+) .*\r\n");
assert_eq(status[1], "200");
let length = c.expect_stream("(?i)content-length: (\\d+)\r\n");
assert_eq(c.recv_line(), "");
assert_eq(c.recv_exact(parse_int(length[1])), "hello");
c.send_raw(blob(2, 0x41));
c.close();
"#,
        peer.addr()
    ));
    // The default connection goes to a server that is never talked to.
    let idle = Running::server(&["--echo"]);
    tcpscript()
        .args(["client", s.path(), "--connect", &idle.addr()])
        .assert()
        .success();
    peer.wait_stdout("b'AA'");
}

#[test]
fn a_stream_read_that_times_out_shows_the_bytes_that_did_arrive() {
    let peer = pieces_server(&[r"b'250-first\r\n250-sec'"]);
    let s = script(r#"expect_stream("(?m)^250 .*\r\n", 300);"#);
    tcpscript()
        .args(["client", s.path(), "--connect", &peer.addr()])
        .assert()
        .code(1)
        .stderr(contains(
            "timed out after 300ms waiting for bytes matching /(?m)^250 .*\\r\\n/",
        ))
        .stderr(contains(
            r#"actual: 18 bytes with no match: "250-first\r\n250-sec""#,
        ));

    let peer = pieces_server(&[r"b'abc'"]);
    let s = script(r#"recv_exact(5, 300);"#);
    tcpscript()
        .args(["client", s.path(), "--connect", &peer.addr()])
        .assert()
        .code(1)
        .stderr(contains(r#"3 bytes of the 5 bytes asked for: "abc""#));
}

#[test]
fn stream_reads_are_held_to_max_frame() {
    let peer = pieces_server(&[&format!("b'{}'", "x".repeat(3000))]);
    let s = script(r#"recv_until("\r\n");"#);
    tcpscript()
        .args([
            "client",
            s.path(),
            "--connect",
            &peer.addr(),
            "--max-frame",
            "1KiB",
        ])
        .assert()
        .code(1)
        .stderr(contains("larger than --max-frame (1024 bytes)"));
    let s = script(r#"recv_exact(2000);"#);
    let idle = Running::server(&["--echo"]);
    tcpscript()
        .args([
            "client",
            s.path(),
            "--connect",
            &idle.addr(),
            "--max-frame",
            "1KiB",
        ])
        .assert()
        .code(3)
        .stderr(contains(
            "recv_exact(2000): the size must be from 0 to --max-frame (1024 bytes)",
        ));
}

#[test]
fn a_server_hook_switches_framing_for_the_next_message_and_sends_raw() {
    let s = script(
        r#"
let key = "";
let store = #{};
fn on_message(msg) {
    if key != "" {
        store[key] = msg.sub_string(0, msg.len() - 2);
        key = "";
        set_framing("delim:\r\n");
        send_raw("STORED\r\n");
        return;
    }
    let words = msg.split(" ");
    if words[0] == "set" {
        key = words[1];
        set_framing(`bytes:${parse_int(words[4]) + 2}`);
    } else if words[0] == "get" {
        let value = store[words[1]];
        send_raw(`VALUE ${words[1]} 0 ${value.len()}` + "\r\n" + value + "\r\nEND\r\n");
    }
}
"#,
    );
    let server = Running::server(&[s.path(), "--framing", "delim:\\r\\n"]);
    let mut peer = TcpStream::connect(server.addr()).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The command and its data block in one write: the new framing must
    // apply to bytes that already arrived.
    peer.write_all(b"set k 0 0 6\r\nab\r\ncd\r\nget k\r\n")
        .unwrap();
    let want = b"STORED\r\nVALUE k 0 6\r\nab\r\ncd\r\nEND\r\n";
    let mut got = vec![0; want.len()];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
}

#[test]
fn bytes_framing_cuts_fixed_size_messages_and_sends_them_as_they_are() {
    let server = Running::server(&["--echo", "--framing", "bytes:4"]);
    let mut peer = TcpStream::connect(server.addr()).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    peer.write_all(b"abcdef").unwrap();
    let mut got = [0; 4];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"abcd");
    peer.write_all(b"gh").unwrap();
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"efgh");
}

#[test]
fn a_framing_larger_than_max_frame_is_refused() {
    tcpscript()
        .args([
            "server",
            "--echo",
            "--framing",
            "bytes:2048",
            "--max-frame",
            "1KiB",
        ])
        .assert()
        .code(2)
        .stderr(contains(
            "--framing bytes:2048: messages of 2048 bytes are larger than --max-frame (1024 bytes)",
        ));
    let s = script(r#"fn on_message(m) { set_framing("bytes:99999999"); }"#);
    let server = Running::server(&[s.path()]);
    let mut peer = TcpStream::connect(server.addr()).unwrap();
    peer.write_all(b"x\n").unwrap();
    server.wait_stderr(
        "set_framing(): bytes:99999999: messages of 99999999 bytes are larger than --max-frame",
    );
    let s = script(r#"set_framing("nonsense");"#);
    let idle = Running::server(&["--echo"]);
    tcpscript()
        .args(["client", s.path(), "--connect", &idle.addr()])
        .assert()
        .code(3)
        .stderr(contains("set_framing: unknown framing `nonsense`"));
}

#[test]
fn a_stream_read_whose_end_comes_past_max_frame_fails_all_the_same() {
    for (read, pieces) in [
        ("recv_until(\"END\")", ["b'aaaaaaaaaaaaa'", "b'END'"]),
        ("recv_line()", ["b'aaaaaaaaaaa'", "b'\\n'"]),
    ] {
        let peer = pieces_server(&pieces);
        let s = script(&format!("{read};\n"));
        tcpscript()
            .args(["client", s.path(), "--connect", &peer.addr()])
            .args(["--max-frame", "10"])
            .assert()
            .code(1)
            .stderr(contains("larger than --max-frame (10 bytes)"));
    }
}
