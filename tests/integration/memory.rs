//! Memory counted in bytes: what a peer promises, what a hook queues for a
//! peer that never reads, what waits for a slow member of a chat, and what
//! the shared store keeps. Each case reads the server's resident memory
//! from `/proc` and requires it to stay within 256 MiB of its idle size,
//! with a bystander still served.

use std::io::Write;
use std::net::TcpStream;

use crate::support::{LineClient, MIB, Running, allow_open_files, script};

/// How far above its idle size the server may grow in any of these cases.
const HEADROOM: u64 = 256 * MIB;

fn assert_within_headroom(server: &Running, idle: u64) {
    let memory = server.memory();
    eprintln!(
        "server memory: idle {} MiB, peak {} MiB, now {} MiB",
        idle / MIB,
        memory.peak / MIB,
        memory.rss / MIB
    );
    assert!(
        memory.peak < idle + HEADROOM,
        "the server grew from {} MiB to {} MiB",
        idle / MIB,
        memory.peak / MIB
    );
}

fn still_serving(server: &Running) {
    let mut c = LineClient::connect(server.port);
    assert_eq!(c.exchange("still there?"), "still there?");
}

#[test]
fn length_prefixes_promising_a_megabyte_each_reserve_nothing() {
    let connections: usize = 2000;
    allow_open_files(connections as u64 + 64);
    let s = script("fn on_message(m) { m }\n");
    let server = Running::server(&[s.path(), "--framing", "len:u32", "--idle-timeout", "1s"]);
    let idle = server.memory().rss;
    let mut peers: Vec<TcpStream> = (0..connections)
        .map(|_| TcpStream::connect(("127.0.0.1", server.port)).unwrap())
        .collect();
    for peer in &mut peers {
        // One mebibyte promised, a hundred bytes of it sent.
        peer.write_all(&[0, 0x10, 0, 0]).unwrap();
        peer.write_all(&[b'x'; 100]).unwrap();
    }
    // A connection is idle only once it has read all there was: when every
    // one has been closed for it, every header was read and held at once.
    server.wait_stderr_count("closed: idle for 1s", connections);
    assert_within_headroom(&server, idle);
    drop(peers);
    let mut good = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    good.write_all(b"\x00\x00\x00\x02hi").unwrap();
    let mut reply = [0u8; 6];
    std::io::Read::read_exact(&mut good, &mut reply).unwrap();
    assert_eq!(&reply, b"\x00\x00\x00\x02hi");
}

#[test]
fn a_hook_sending_a_megabyte_in_a_loop_to_a_peer_that_never_reads_holds_little() {
    let s = script(
        "fn on_message(m) {\n    if m != \"flood\" { return m; }\n    let big = \"\";\n    big.pad(1048576, \"x\");\n    loop { send(big); }\n}\n",
    );
    let server = Running::server(&[s.path()]);
    let idle = server.memory().rss;
    let mut flooder = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    flooder.write_all(b"flood\n").unwrap();
    // The hook runs to its limit; the connection then writes what it
    // queued with backpressure: a megabyte or so at a time, not all of it.
    server.wait_stderr("in hook `on_message`");
    assert_within_headroom(&server, idle);
    still_serving(&server);
}

#[test]
fn a_hook_sending_new_megabyte_strings_in_a_loop_is_stopped_by_the_memory_limit() {
    let s = script(
        "fn on_message(m) {\n    if m != \"flood\" { return m; }\n    let big = \"\";\n    big.pad(1048576, \"x\");\n    for i in 0..1000 { send(big + i); }\n}\n",
    );
    let server = Running::server(&[s.path(), "--hook-timeout", "30s"]);
    let idle = server.memory().rss;
    let mut flooder = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    flooder.write_all(b"flood\n").unwrap();
    let log = server.wait_stderr("more than --max-memory (128 MiB)");
    assert!(log.contains("in hook `on_message`"), "{log}");
    assert_within_headroom(&server, idle);
    still_serving(&server);
}

#[test]
fn a_hook_sending_one_big_string_many_times_to_a_peer_that_never_reads_holds_little() {
    let s = script(
        "fn on_message(m) {\n    if m != \"flood\" { return m; }\n    let big = \"\";\n    big.pad(1048576, \"x\");\n    for i in 0..20000 { send(big); }\n}\n",
    );
    let server = Running::server(&[s.path(), "--hook-timeout", "30s", "--idle-timeout", "2s"]);
    let idle = server.memory().rss;
    let mut flooder = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    flooder.write_all(b"flood\n").unwrap();
    // Twenty gigabytes to write to a peer that takes none: the connection
    // waits on the peer with a bounded buffer, then gives up on it.
    server.wait_stderr("read none of its replies for 2s");
    assert_within_headroom(&server, idle);
    still_serving(&server);
}

#[test]
fn broadcasts_waiting_for_a_member_that_never_reads_are_bounded_in_bytes() {
    let s = script(
        "let big = \"\";\nbig.pad(8000000, \"x\");\nfn on_message(m) {\n    if m == \"big\" { broadcast(big + m.len()); return \"sent\"; }\n    m\n}\n",
    );
    let server = Running::server(&[s.path(), "-q"]);
    let idle = server.memory().rss;
    // Joins the room and reads nothing, ever.
    let _deaf = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let mut talker = LineClient::connect(server.port);
    for _ in 0..300 {
        assert_eq!(talker.exchange("big"), "sent");
    }
    assert_within_headroom(&server, idle);
    still_serving(&server);
}

#[test]
fn dropped_broadcasts_are_reported_once_a_second_not_once_each() {
    let s = script(
        "let chunk = \"\";\nchunk.pad(65536, \"x\");\nfn on_message(m) {\n    if m == \"flood\" { for i in 0..200 { broadcast(chunk); } return \"done\"; }\n    m\n}\n",
    );
    let mut server = Running::server(&[s.path()]);
    let _deaf = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let mut talker = LineClient::connect(server.port);
    // Thirteen megabytes for a member whose buffers hold a few.
    for _ in 0..3 {
        assert_eq!(talker.exchange("flood"), "done");
    }
    server.wait_stderr("broadcasts dropped: their receivers read too slowly");
    server.send_signal("TERM");
    server.wait_exit();
    let log = server.stderr();
    let notes = drop_notes(&log);
    assert!(notes <= 3, "{notes} notes:\n{log}");
    assert!(log.contains(" broadcasts dropped\n"), "{log}");
}

#[test]
fn quiet_servers_print_no_line_for_dropped_broadcasts() {
    let s = script(
        "let chunk = \"\";\nchunk.pad(65536, \"x\");\nfn on_message(m) {\n    if m == \"flood\" { for i in 0..200 { broadcast(chunk); } return \"done\"; }\n    m\n}\n",
    );
    let mut server = Running::server(&[s.path(), "-q"]);
    let _deaf = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let mut talker = LineClient::connect(server.port);
    for _ in 0..3 {
        assert_eq!(talker.exchange("flood"), "done");
    }
    server.send_signal("TERM");
    server.wait_exit();
    assert_eq!(drop_notes(&server.stderr()), 0, "{}", server.stderr());
}

/// Lines about dropped broadcasts, the shutdown summary aside.
fn drop_notes(log: &str) -> usize {
    log.lines()
        .filter(|line| line.contains("dropped") && !line.starts_with("shut down"))
        .count()
}

#[test]
fn the_shared_store_refuses_keys_past_its_limit_and_stays_usable() {
    let s = script(
        "fn on_message(m) {\n    if m == \"fill\" {\n        for i in 0..20000 { shared_set(`k${i}`, i); }\n    }\n    `${shared_keys().len()}`\n}\n",
    );
    let server = Running::server(&[s.path(), "--max-ops", "0", "--hook-timeout", "60s"]);
    let mut filler = LineClient::connect(server.port);
    filler.send("fill");
    filler.expect_closed();
    let log = server.wait_stderr("the shared store is full: it holds 10000 keys");
    assert!(log.contains("test.rhai:3:"), "{log}");
    let mut reader = LineClient::connect(server.port);
    assert_eq!(reader.exchange("count"), "10000");
}

#[test]
fn the_shared_store_refuses_bytes_past_its_limit() {
    let idle_script = script(
        "let mib = \"\";\nmib.pad(1048576, \"x\");\nfn on_message(m) {\n    if m == \"fill\" {\n        for i in 0..200 { shared_set(`k${i}`, mib + i); }\n    }\n    `${shared_keys().len()}`\n}\n",
    );
    // Room for the store to fill: every megabyte string holds two.
    let server = Running::server(&[
        idle_script.path(),
        "--max-ops",
        "0",
        "--max-memory",
        "512MiB",
    ]);
    let idle = server.memory().rss;
    let mut filler = LineClient::connect(server.port);
    filler.send("fill");
    filler.expect_closed();
    server.wait_stderr("would take it past its limit of 64 MiB");
    assert_within_headroom(&server, idle);
    let mut reader = LineClient::connect(server.port);
    let kept: usize = reader.exchange("count").parse().unwrap();
    assert!((60..64).contains(&kept), "{kept} keys kept");
}

#[test]
fn map_keys_count_toward_the_memory_limit() {
    let s = script(
        "let seen = #{};\nfn on_message(m) {\n    if m != \"keys\" { return m; }\n    let k = \"\";\n    k.pad(1048576, \"k\");\n    for i in 0..600 { seen[k + i] = i; }\n    \"kept them all\"\n}\n",
    );
    let server = Running::server(&[s.path(), "--max-ops", "0", "--hook-timeout", "30s"]);
    let idle = server.memory().rss;
    let mut hog = LineClient::connect(server.port);
    hog.send("keys");
    hog.expect_closed();
    let log = server.wait_stderr("more than --max-memory (128 MiB)");
    assert!(log.contains("in hook `on_message`"), "{log}");
    assert_within_headroom(&server, idle);
    still_serving(&server);
}

#[test]
fn keys_kept_across_messages_count_too() {
    let s = script(
        "let seen = #{};\nfn on_message(m) {\n    if m == \"still there?\" { return m; }\n    let k = \"\";\n    k.pad(1048576, m);\n    seen[k] = 1;\n    `${seen.len()}`\n}\n",
    );
    let server = Running::server(&[s.path(), "--max-memory", "32MiB"]);
    let idle = server.memory().rss;
    let mut hog = LineClient::connect(server.port);
    let mut answered = 0;
    for i in 0..200 {
        hog.send(&format!("{:x}", i + 10));
        match hog.recv() {
            Some(_) => answered += 1,
            None => break,
        }
    }
    assert!(
        (20..40).contains(&answered),
        "{answered} keys of 1 MiB kept"
    );
    server.wait_stderr("more than --max-memory (32 MiB)");
    assert_within_headroom(&server, idle);
    still_serving(&server);
}

#[test]
fn locals_of_deep_recursion_count_toward_the_memory_limit() {
    let s = script(
        "fn dive(n, s) { let t = s + n; if n > 0 { dive(n - 1, t) } else { t.len() } }\nfn on_message(m) {\n    if m != \"go\" { return m; }\n    let s = \"\";\n    s.pad(8000000, \"x\");\n    dive(60, s)\n}\n",
    );
    let server = Running::server(&[s.path(), "--hook-timeout", "30s"]);
    let idle = server.memory().rss;
    let mut hog = LineClient::connect(server.port);
    hog.send("go");
    hog.expect_closed();
    server.wait_stderr("more than --max-memory");
    assert_within_headroom(&server, idle);
    still_serving(&server);
}

#[test]
fn many_connections_share_the_memory_limit_and_a_bystander_is_served() {
    let connections: usize = 200;
    allow_open_files(connections as u64 + 64);
    let s = script(
        "let big = \"\";\nbig.pad(2000000, \"x\");\nlet kept = [];\nfn on_message(m) {\n    if m == \"grow\" { kept.push(big + m); return \"grew\"; }\n    m\n}\n",
    );
    let server = Running::server(&[s.path(), "-q"]);
    let idle = server.memory().rss;
    let mut hogs: Vec<LineClient> = (0..connections)
        .map(|_| LineClient::connect(server.port))
        .collect();
    // Two megabytes each, 400 asked for in all: the first ones fit, then
    // every connection past its share is ended.
    let mut ended = 0;
    for hog in &mut hogs {
        hog.send("grow");
        if hog.recv().is_none() {
            ended += 1;
        }
    }
    assert!(ended > 0, "no connection was stopped");
    server.wait_stderr("more than its share");
    assert_within_headroom(&server, idle);
    still_serving(&server);
}
