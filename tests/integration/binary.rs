//! Large binary messages: whole in scripts up to `--max-frame`, and a
//! string joined with a blob keeps every byte.

use std::io::{Read, Write};
use std::net::TcpStream;

use predicates::str::contains;

use crate::support::{PATIENCE, Running, script, tcpscript};

/// `n` bytes that are not UTF-8 (so they reach a script as a blob) and
/// differ from one position to the next (so a lost or moved byte shows).
fn binary(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 ^ 0x80).collect()
}

/// A peer tcpscript did not write, speaking `len:u32` (big-endian).
struct LenClient(TcpStream);

impl LenClient {
    fn connect(port: u16) -> LenClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        LenClient(stream)
    }

    fn send(&mut self, message: &[u8]) {
        let len = u32::try_from(message.len()).unwrap();
        self.0.write_all(&len.to_be_bytes()).unwrap();
        self.0.write_all(message).unwrap();
    }

    fn recv(&mut self) -> Vec<u8> {
        let mut len = [0; 4];
        self.0.read_exact(&mut len).expect("a reply, not a close");
        let mut message = vec![0; u32::from_be_bytes(len) as usize];
        self.0.read_exact(&mut message).unwrap();
        message
    }
}

/// Replies with the message rebuilt from two slices, after checking its
/// length, a copy and a comparison: each used to fail past 100,000 bytes.
const REBUILD: &str = r#"
fn on_message(m) {
    let b = m;
    if type_of(b) != "blob" { return `not a blob: ${type_of(b)}`; }
    if b.len() != 300_000 { return `length ${b.len()}`; }
    let half = b.len() / 2;
    let joined = b.extract(0, half) + b.extract(half..b.len());
    if joined != m.to_blob() { return "slices differ"; }
    let copy = blob();
    copy += joined;
    copy
}
"#;

#[test]
fn a_300_kb_binary_message_is_whole_in_a_server_script() {
    let s = script(REBUILD);
    let server = Running::server(&[s.path(), "--framing", "len:u32"]);
    let mut peer = LenClient::connect(server.port);
    let message = binary(300_000);
    peer.send(&message);
    let reply = peer.recv();
    assert!(
        reply == message,
        "{} bytes back: {:?}",
        reply.len(),
        String::from_utf8_lossy(&reply[..reply.len().min(80)])
    );
}

#[test]
fn a_300_kb_binary_message_is_whole_in_a_client_script() {
    let s = script(REBUILD);
    let server = Running::server(&[s.path(), "--framing", "len:u32"]);
    let client = script(
        r#"
let sent = blob(300_000, 0xff);
sent[1] = 1;
sent[299_998] = 2;
send(sent);
let back = recv_blob();
assert_eq(back.len(), 300_000);
assert(back == sent, "the reply differs");
assert_eq(back.extract(299_990..).len(), 10);
assert_eq(back[299_998], 2);
"#,
    );
    tcpscript()
        .args(["client", client.path(), "--framing", "len:u32"])
        .args(["--connect", &server.addr()])
        .assert()
        .success()
        .stderr(contains("1 sent, 1 received"));
}

#[test]
fn a_20_mib_message_round_trips_with_max_frame_256mib() {
    // Twice the default string limit (8 MiB): the limit follows --max-frame.
    const SIZE: usize = 20 << 20;
    let s = script(
        r#"
fn on_message(m) {
    let b = m;
    if b.len() != 20 * 1024 * 1024 { return `length ${b.len()}`; }
    b
}
"#,
    );
    let server = Running::server(&[s.path(), "--framing", "len:u32", "--max-frame", "256MiB"]);
    let mut peer = LenClient::connect(server.port);
    let message = binary(SIZE);
    peer.send(&message);
    let reply = peer.recv();
    assert_eq!(reply.len(), SIZE, "{:?}", String::from_utf8_lossy(&reply));
    assert!(reply == message, "the reply differs");
}

#[test]
fn a_20_mib_message_round_trips_between_tcpscript_client_and_server() {
    let s = script("fn on_message(m) { m }\n");
    let server = Running::server(&[s.path(), "--framing", "len:u32", "--max-frame", "256MiB"]);
    let client = script(
        r#"
let sent = blob(20 * 1024 * 1024, 0xff);
sent[12_345] = 7;
send(sent);
let back = recv_blob();
assert_eq(back.len(), 20 * 1024 * 1024);
assert(back == sent, "the reply differs");
"#,
    );
    tcpscript()
        .args(["client", client.path(), "--framing", "len:u32"])
        .args(["--max-frame", "256MiB", "--connect", &server.addr()])
        .assert()
        .success()
        .stderr(contains("1 sent, 1 received"));
}

#[test]
fn a_string_and_a_blob_join_without_losing_a_byte() {
    let s = script(
        r#"
fn on_message(m) {
    let before = "<" + m;
    let after = m + ">";
    let added = "[";
    added += m;
    before + after + added
}
"#,
    );
    let server = Running::server(&[s.path(), "--framing", "len:u32"]);
    let mut peer = LenClient::connect(server.port);
    let message = b"\xff\x00ab\xc3".to_vec();
    peer.send(&message);
    let expected = [&b"<"[..], &message, &message, b">", b"[", &message].concat();
    assert_eq!(peer.recv(), expected);
}
