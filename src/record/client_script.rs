//! A manual client session, and the conversation script that replays it.

use std::time::SystemTime;

use bytes::Bytes;

use super::generalise::generalise;
use super::literal::{rhai_bytes, rhai_string};
use super::{Header, push_framing};
use crate::framing::Framing;

/// What happened on the connection, in the order the person saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Sent(Bytes),
    Received(Bytes),
    /// The input ended (`exit` or end of stdin) and our side was shut.
    InputEnded,
    /// The peer closed the connection.
    Closed,
}

/// A manual client session as it happens.
#[derive(Debug, Clone)]
pub(crate) struct ClientRecording {
    header: Header,
    /// `--connect` as the user wrote it, for the replay command.
    connect: String,
    /// The address it resolved to.
    peer: Option<String>,
    framing: Framing,
    exact: bool,
    events: Vec<Event>,
    error: Option<String>,
}

/// One block of the script: a send and what came back before the next.
struct Block<'a> {
    sent: Option<&'a [u8]>,
    received: Vec<&'a [u8]>,
}

impl ClientRecording {
    pub(crate) fn new(
        file: String,
        started: SystemTime,
        connect: &str,
        framing: Framing,
        exact: bool,
    ) -> Self {
        ClientRecording {
            header: Header {
                file,
                started,
                tls: None,
                udp: false,
                by: None,
            },
            connect: connect.to_string(),
            peer: None,
            framing,
            exact,
            events: Vec::new(),
            error: None,
        }
    }

    pub(super) fn header_mut(&mut self) -> &mut super::Header {
        &mut self.header
    }

    /// A session over TLS, with the flags that set it up.
    pub(crate) fn over_tls(mut self, flags: Option<String>) -> Self {
        self.header.tls = flags;
        self
    }

    pub(crate) fn over_udp(mut self, udp: bool) -> Self {
        self.header.udp = udp;
        self
    }

    pub(crate) fn connected(&mut self, peer: String) {
        self.peer = Some(peer);
    }

    pub(crate) fn sent(&mut self, message: &[u8]) {
        self.events
            .push(Event::Sent(Bytes::copy_from_slice(message)));
    }

    pub(crate) fn received(&mut self, message: Bytes) {
        self.events.push(Event::Received(message));
    }

    pub(crate) fn input_ended(&mut self) {
        if !self.events.contains(&Event::InputEnded) {
            self.events.push(Event::InputEnded);
        }
    }

    pub(crate) fn closed(&mut self) {
        if !self.events.contains(&Event::Closed) {
            self.events.push(Event::Closed);
        }
    }

    pub(crate) fn failed(&mut self, error: String) {
        self.error.get_or_insert(error);
    }

    /// Messages sent so far.
    pub(crate) fn exchanges(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::Sent(_)))
            .count()
    }

    /// The script: a header, then one block per line sent with the
    /// assertions on what came back, then how the session ended.
    pub(crate) fn script(&self) -> String {
        let mut out = String::new();
        let target = self.peer.as_deref().unwrap_or(&self.connect);
        self.header.push(
            &mut out,
            "client",
            &format!("against {target}"),
            &format!(
                "tcpscript client {} --connect {}",
                self.header.file, self.connect
            ),
        );
        if self.exact {
            out.push_str(
                "// Recorded with --record-exact: every message must come back exactly\n\
                 // as it did.\n",
            );
        } else {
            out.push_str(
                "// Values that look variable (numbers, timestamps, ids, hex) are matched\n\
                 // by pattern, with the recorded message beside each; text that was sent\n\
                 // and echoed back stays literal. --record-exact keeps every value.\n",
            );
        }
        push_framing(&mut out, &self.framing);

        let (blocks, after) = self.blocks();
        for block in &blocks {
            out.push('\n');
            let keep = match block.sent {
                Some(sent) => {
                    out.push_str(&format!("send({});\n", rhai_bytes(sent)));
                    std::str::from_utf8(sent).ok()
                }
                None => {
                    out.push_str("// The greeting, before anything was sent.\n");
                    None
                }
            };
            for message in &block.received {
                out.push_str(&self.assertion(message, keep));
                out.push('\n');
            }
            if block.sent.is_some() && block.received.is_empty() {
                out.push_str("// Nothing came back.\n");
            }
        }
        self.push_ending(&mut out, &after);
        out
    }

    /// The blocks before the input ended, and what came after it.
    fn blocks(&self) -> (Vec<Block<'_>>, After<'_>) {
        let mut blocks = Vec::new();
        let mut current = Block {
            sent: None,
            received: Vec::new(),
        };
        let mut after = After::default();
        for event in &self.events {
            match event {
                Event::Sent(m) => {
                    let next = Block {
                        sent: Some(m),
                        received: Vec::new(),
                    };
                    let done = std::mem::replace(&mut current, next);
                    if done.sent.is_some() || !done.received.is_empty() {
                        blocks.push(done);
                    }
                }
                Event::Received(m) if after.input_ended => after.received.push(m),
                Event::Received(m) => current.received.push(m),
                Event::InputEnded => after.input_ended = true,
                Event::Closed => {
                    after.closed = true;
                    after.closed_first = !after.input_ended;
                }
            }
        }
        if current.sent.is_some() || !current.received.is_empty() {
            blocks.push(current);
        }
        (blocks, after)
    }

    fn assertion(&self, message: &[u8], keep: Option<&str>) -> String {
        let Ok(text) = std::str::from_utf8(message) else {
            return format!("assert_eq(recv(), {});", rhai_bytes(message));
        };
        match generalise(text, keep).filter(|_| !self.exact) {
            Some(pattern) => format!(
                "expect({}); // recorded: {}",
                rhai_string(&pattern),
                rhai_string(text)
            ),
            None => format!("assert_eq(recv(), {});", rhai_string(text)),
        }
    }

    fn push_ending(&self, out: &mut String, after: &After<'_>) {
        if let Some(error) = &self.error {
            out.push_str(&format!(
                "\n// The session ended with an error: {}\n",
                one_line(error)
            ));
            return;
        }
        if after.closed_first {
            // The peer hung up by itself (after `exit`, say): a replay must see that.
            out.push_str("expect_close();\n");
            return;
        }
        if !after.received.is_empty() || after.closed {
            // A script cannot half-close: its end shuts its side and stops
            // reading, so whatever the peer did after that is not replayed.
            let mut what: Vec<String> = after
                .received
                .iter()
                .map(|m| format!("sent {}", rhai_bytes(m)))
                .collect();
            if after.closed {
                what.push("closed the connection".into());
            }
            out.push_str(&format!(
                "\n// Then the input ended, and the peer {}. A script's end shuts\n\
                 // its side too, after which nothing more is checked.\n",
                what.join(", then ")
            ));
        }
    }
}

/// What happened once the input had ended.
#[derive(Default)]
struct After<'a> {
    input_ended: bool,
    received: Vec<&'a [u8]>,
    closed: bool,
    /// The peer closed before our input ended: it closes on its own.
    closed_first: bool,
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn recording(exact: bool) -> ClientRecording {
        let mut r = ClientRecording::new(
            "session.rhai".into(),
            UNIX_EPOCH + Duration::from_secs(1_717_243_200),
            "7777",
            Framing::Line,
            exact,
        );
        r.connected("127.0.0.1:7777".into());
        r.received(Bytes::from_static(b"welcome, you are 127.0.0.1:50312"));
        r.sent(b"hello");
        r.received(Bytes::from_static(b"hi \"there\""));
        r.sent(b"how are you?");
        r.received(Bytes::from_static(b"echo 2: how are you?"));
        r.sent(b"blob");
        r.received(Bytes::from_static(b"\x00\xff"));
        r.sent(b"silence");
        r.sent(b"exit");
        r.received(Bytes::from_static(b"bye"));
        r.closed();
        r
    }

    #[test]
    fn a_session_reads_as_the_script_a_person_would_write() {
        let script = recording(false).script();
        let expected = r#"// Recorded by `tcpscript client --record` on 2024-06-01T12:00:00Z,
// against 127.0.0.1:7777.
// Replay: tcpscript client session.rhai --connect 7777
//
// Values that look variable (numbers, timestamps, ids, hex) are matched
// by pattern, with the recorded message beside each; text that was sent
// and echoed back stays literal. --record-exact keeps every value.

// The greeting, before anything was sent.
expect("^welcome, you are \\d+\\.\\d+\\.\\d+\\.\\d+:\\d+$"); // recorded: "welcome, you are 127.0.0.1:50312"

send("hello");
assert_eq(recv(), "hi \"there\"");

send("how are you?");
expect("^echo \\d+: how are you\\?$"); // recorded: "echo 2: how are you?"

send("blob");
assert_eq(recv(), unhex("00ff"));

send("silence");
// Nothing came back.

send("exit");
assert_eq(recv(), "bye");
expect_close();
"#;
        assert_eq!(script, expected);
    }

    #[test]
    fn exact_keeps_values_literal() {
        let script = recording(true).script();
        assert!(script.contains("assert_eq(recv(), \"echo 2: how are you?\");"));
        assert!(!script.contains("expect(\""));
    }

    #[test]
    fn what_follows_the_end_of_input_is_described_not_asserted() {
        let mut r = ClientRecording::new(
            "s.rhai".into(),
            UNIX_EPOCH,
            "7777",
            "raw".parse().unwrap(),
            false,
        );
        r.sent(b"one");
        r.received(Bytes::from_static(b"one"));
        r.input_ended();
        r.received(Bytes::from_static(b"bye"));
        r.closed();
        let script = r.script();
        assert!(script.contains("const FRAMING = \"raw\";"), "{script}");
        assert!(
            script.contains("the peer sent \"bye\", then closed the connection"),
            "{script}"
        );
        assert!(!script.contains("expect_close"), "{script}");
    }
}
