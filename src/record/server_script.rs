//! A manual server session, and the server script that answers as the
//! person did.
//!
//! Each distinct message becomes one block of `on_message`. A message that
//! got different answers gets them in turn, counted per connection in a
//! top-level map (top-level variables are per-connection copies, and hooks
//! see them). Messages that differ only in their numbers are matched by
//! their shape, unless they were answered differently.

use std::collections::HashMap;
use std::time::SystemTime;

use bytes::Bytes;

use super::generalise::shape;
use super::literal::{rhai_bytes, rhai_string};
use super::{Header, push_framing};
use crate::framing::Framing;
use crate::message;

/// The reply that closed the connection in manual mode.
const EXIT_WORD: &str = "exit";

/// A manual server session as it happens.
#[derive(Debug, Clone)]
pub(crate) struct ServerRecording {
    header: Header,
    /// `--listen` as the user wrote it, for the replay command.
    listen: String,
    /// The address it was bound to.
    local: Option<String>,
    framing: Framing,
    exact: bool,
    connections: Vec<Connection>,
    /// The connection (over UDP, the peer's session) whose message is
    /// being answered.
    current: usize,
}

#[derive(Debug, Clone)]
struct Connection {
    peer: String,
    /// Each message and the reply typed for it; `None` while it waits.
    exchanges: Vec<(Bytes, Option<String>)>,
}

/// How a block recognises its message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Exact(Bytes),
    /// Any text with this [`shape`].
    Shape(String),
}

/// One block of `on_message`.
struct Entry {
    key: Key,
    /// Distinct recorded texts, for a shape.
    examples: Vec<String>,
    /// Per connection (in order), the replies in the order given.
    replies: Vec<(usize, Vec<String>)>,
}

impl ServerRecording {
    pub(crate) fn new(
        file: String,
        started: SystemTime,
        listen: &str,
        framing: Framing,
        exact: bool,
    ) -> Self {
        ServerRecording {
            header: Header {
                file,
                started,
                tls: None,
                udp: false,
                by: None,
            },
            listen: listen.to_string(),
            local: None,
            framing,
            exact,
            connections: Vec::new(),
            current: 0,
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

    /// A session over UDP: a peer's datagrams are one session, and the
    /// replay runs with `--udp`.
    pub(crate) fn over_udp(mut self, udp: bool) -> Self {
        self.header.udp = udp;
        self
    }

    pub(crate) fn listening(&mut self, local: String) {
        self.local = Some(local);
    }

    pub(crate) fn connected(&mut self, peer: String) {
        self.current = self.connections.len();
        self.connections.push(Connection {
            peer,
            exchanges: Vec::new(),
        });
    }

    /// A datagram from `peer`: its session's, begun at its first.
    pub(crate) fn datagram_from(&mut self, peer: String) {
        match self.connections.iter().position(|c| c.peer == peer) {
            Some(index) => self.current = index,
            None => self.connected(peer),
        }
    }

    pub(crate) fn message(&mut self, message: &[u8]) {
        if let Some(connection) = self.connections.get_mut(self.current) {
            connection
                .exchanges
                .push((Bytes::copy_from_slice(message), None));
        }
    }

    pub(crate) fn replied(&mut self, reply: &str) {
        if let Some((_, answer)) = self
            .connections
            .get_mut(self.current)
            .and_then(|c| c.exchanges.last_mut())
        {
            *answer = Some(reply.to_string());
        }
    }

    /// Messages answered so far.
    pub(crate) fn exchanges(&self) -> usize {
        self.answered().count()
    }

    fn answered(&self) -> impl Iterator<Item = (usize, &Bytes, &String)> {
        self.connections.iter().enumerate().flat_map(|(i, c)| {
            c.exchanges
                .iter()
                .filter_map(move |(m, r)| r.as_ref().map(|r| (i, m, r)))
        })
    }

    /// How each recorded message is recognised. Texts with numbers share a
    /// shape block when there is one text of that shape, or when all of
    /// them got the same reply (`hello from 4242`, `hello from 5151`);
    /// otherwise the numbers are what told them apart (`add 2 3`, `add 4 5`)
    /// and each text is matched exactly.
    fn keys(&self) -> HashMap<Bytes, Key> {
        let mut by_shape: HashMap<String, (Vec<&Bytes>, Vec<&String>)> = HashMap::new();
        for (_, message, reply) in self.answered() {
            if let Ok(text) = std::str::from_utf8(message) {
                let (texts, replies) = by_shape.entry(shape(text)).or_default();
                if !texts.contains(&message) {
                    texts.push(message);
                }
                replies.push(reply);
            }
        }
        let mut keys = HashMap::new();
        for (_, message, _) in self.answered() {
            let key = match std::str::from_utf8(message) {
                Ok(text) if !self.exact && text.bytes().any(|b| b.is_ascii_digit()) => {
                    let form = shape(text);
                    let (texts, replies) = &by_shape[&form];
                    let alike = replies.iter().all(|r| *r == replies[0]);
                    if texts.len() == 1 || alike {
                        Key::Shape(form)
                    } else {
                        Key::Exact(message.clone())
                    }
                }
                _ => Key::Exact(message.clone()),
            };
            keys.insert(message.clone(), key);
        }
        keys
    }

    /// The blocks, in the order their messages first arrived.
    fn entries(&self) -> Vec<Entry> {
        let keys = self.keys();
        let mut entries: Vec<Entry> = Vec::new();
        for (connection, message, reply) in self.answered() {
            let key = &keys[message];
            let index = match entries.iter().position(|e| &e.key == key) {
                Some(index) => index,
                None => {
                    entries.push(Entry {
                        key: key.clone(),
                        examples: Vec::new(),
                        replies: Vec::new(),
                    });
                    entries.len() - 1
                }
            };
            let entry = &mut entries[index];
            let text = String::from_utf8_lossy(message).into_owned();
            if !entry.examples.contains(&text) {
                entry.examples.push(text);
            }
            match entry.replies.last_mut() {
                Some((c, replies)) if *c == connection => replies.push(reply.clone()),
                _ => entry.replies.push((connection, vec![reply.clone()])),
            }
        }
        entries
    }

    pub(crate) fn script(&self) -> String {
        let mut out = String::new();
        let local = self.local.as_deref().unwrap_or(&self.listen);
        let answered = self.exchanges();
        let (udp, unit) = if self.header.udp {
            (" udp", "session")
        } else {
            ("", "connection")
        };
        self.header.push(
            &mut out,
            "server",
            &format!(
                "listening on{udp} {local}: {} {unit}{}, {answered} message{} answered by hand",
                self.connections.len(),
                plural(self.connections.len()),
                plural(answered),
            ),
            &format!(
                "tcpscript server {} --listen {}",
                self.header.file, self.listen
            ),
        );
        out.push_str(
            "// Each message gets the reply it got then. A message that got different\n\
             // replies gets them in turn on each connection, then the last one again.\n",
        );
        if !self.exact {
            out.push_str(
                "// Messages that differ only in their numbers get the same reply,\n\
                 // unless the numbers changed the reply (--record-exact: never).\n",
            );
        }
        out.push_str("// A message never recorded gets no reply, and is logged.\n");
        if !self.header.udp {
            out.push_str("// The reply `exit` closed the connection, as it did in manual mode.\n");
        }
        self.push_unanswered(&mut out);
        push_framing(&mut out, &self.framing);

        let entries = self.entries();
        let in_turn = entries.iter().any(|e| turns(e).len() > 1);
        let shapes = entries.iter().any(|e| matches!(e.key, Key::Shape(_)));
        if in_turn {
            out.push_str(
                "\n// Per connection (each starts with its own copy): how many times each\n\
                 // message answered in turn has arrived.\n\
                 let seen = #{};\n",
            );
        }
        out.push_str("\nfn on_message(msg) {\n");
        if shapes {
            out.push_str("    let form = shape(msg);\n");
        }
        for entry in &entries {
            out.push('\n');
            self.push_entry(&mut out, entry);
        }
        if !entries.is_empty() {
            out.push('\n');
        }
        out.push_str("    log(`no recorded reply for ${msg}`);\n}\n");
        if shapes {
            out.push_str(SHAPE_FN);
        }
        out
    }

    /// Messages that were still waiting for a reply when the session ended.
    fn push_unanswered(&self, out: &mut String) {
        for (index, connection) in self.connections.iter().enumerate() {
            for (message, reply) in &connection.exchanges {
                if reply.is_none() {
                    out.push_str(&format!(
                        "// The session ended while {} from connection {} ({}) waited\n\
                         // for a reply: it gets none here.\n",
                        rhai_bytes(message),
                        index + 1,
                        connection.peer
                    ));
                }
            }
        }
    }

    fn push_entry(&self, out: &mut String, entry: &Entry) {
        let turns = turns(entry);
        let (condition, counter) = match &entry.key {
            Key::Exact(bytes) => {
                let counter = match std::str::from_utf8(bytes) {
                    Ok(text) => text.to_string(),
                    Err(_) => message::hex(bytes),
                };
                let numbered = std::str::from_utf8(bytes)
                    .is_ok_and(|text| text.bytes().any(|b| b.is_ascii_digit()));
                if numbered && !self.exact {
                    out.push_str(
                        "    // Matched exactly: its numbers changed the reply, so they count.\n",
                    );
                }
                (format!("msg == {}", rhai_bytes(bytes)), counter)
            }
            Key::Shape(form) => {
                let examples: Vec<String> = entry.examples.iter().map(|e| rhai_string(e)).collect();
                out.push_str(&format!(
                    "    // Numbers may differ; recorded: {}.\n",
                    examples.join(", ")
                ));
                (format!("form == {}", rhai_string(form)), form.clone())
            }
        };
        if turns.len() > 1 {
            out.push_str("    // Answered differently in turn.\n");
        }
        for (turn, (_, others)) in turns.iter().enumerate() {
            for (connection, reply) in others {
                out.push_str(&format!(
                    "    // Connection {} got {} {}.\n",
                    connection + 1,
                    rhai_string(reply),
                    ordinal_time(turn, turns.len()),
                ));
            }
        }
        out.push_str(&format!("    if {condition} {{\n"));
        if turns.len() == 1 {
            let reply = &turns[0].0;
            // Over UDP, `exit` is a reply like any other: nothing closed.
            if reply == EXIT_WORD && !self.header.udp {
                out.push_str("        close();\n");
            }
            out.push_str(&format!("        return {};\n", rhai_string(reply)));
        } else {
            let counter = rhai_string(&counter);
            out.push_str(&format!(
                "        let turn = seen[{counter}] ?? 0;\n        seen[{counter}] = turn + 1;\n"
            ));
            out.push_str("        return switch turn {\n");
            for (turn, (reply, _)) in turns.iter().enumerate() {
                let value = if reply == EXIT_WORD && !self.header.udp {
                    format!("{{ close(); {} }}", rhai_string(reply))
                } else {
                    rhai_string(reply)
                };
                if turn + 1 < turns.len() {
                    out.push_str(&format!("            {turn} => {value},\n"));
                } else {
                    out.push_str(&format!("            _ => {value},\n"));
                }
            }
            out.push_str("        };\n");
        }
        out.push_str("    }\n");
    }
}

/// For each turn (the n-th arrival on a connection), the reply of the
/// first connection that got that far, and the connections that got a
/// different one. Turns that repeat the same reply to the end collapse
/// into one, since the last reply is given again anyway.
fn turns(entry: &Entry) -> Vec<(String, Vec<(usize, String)>)> {
    let longest = entry
        .replies
        .iter()
        .map(|(_, r)| r.len())
        .max()
        .unwrap_or(0);
    let mut turns: Vec<(String, Vec<(usize, String)>)> = (0..longest)
        .map(|n| {
            let mut given = entry
                .replies
                .iter()
                .filter_map(|(c, replies)| replies.get(n).map(|r| (*c, r.clone())));
            let (_, chosen) = given.next().expect("some connection got this far");
            let others = given.filter(|(_, r)| *r != chosen).collect();
            (chosen, others)
        })
        .collect();
    while turns.len() > 1 && turns[turns.len() - 1].0 == turns[turns.len() - 2].0 {
        let (_, others) = turns.pop().expect("more than one turn");
        turns.last_mut().expect("one turn left").1.extend(others);
    }
    turns
}

fn ordinal_time(turn: usize, turns: usize) -> String {
    if turns == 1 {
        return "instead".into();
    }
    match turn {
        0 => "the first time".into(),
        1 => "the second time".into(),
        2 => "the third time".into(),
        n => format!("the {}th time", n + 1),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Mirrors `generalise::shape`, so a replay recognises what the recording
/// did. Long messages are matched exactly: a character loop over them would
/// cost more than one hook call may spend (--max-ops).
const SHAPE_FN: &str = r##"
// The message with each run of digits written "#": messages that differ
// only in their numbers (ids, ports, times) have the same form.
fn shape(msg) {
    if type_of(msg) != "string" || msg.len() > 10000 {
        return ();
    }
    let out = "";
    let in_number = false;
    for c in msg {
        let digit = c >= '0' && c <= '9';
        if !digit {
            out += c;
        } else if !in_number {
            out += "#";
        }
        in_number = digit;
    }
    out
}
"##;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Limits;
    use crate::server::hooks::{Action, ServerScript};
    use crate::transcript::Verbosity;
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    fn recording(exact: bool) -> ServerRecording {
        let mut r =
            ServerRecording::new("mock.rhai".into(), UNIX_EPOCH, "7777", Framing::Line, exact);
        r.listening("127.0.0.1:7777".into());
        r.connected("127.0.0.1:40001".into());
        for (message, reply) in [
            (&b"hello"[..], "hi"),
            (b"pid 4242", "ok pid"),
            (b"next", "one"),
            (b"add 2 3", "5"),
            (b"next", "two"),
            (b"add 4 5", "9"),
            (b"\xff\x00", "binary"),
            (b"bye", "exit"),
        ] {
            r.message(message);
            r.replied(reply);
        }
        r.connected("127.0.0.1:40002".into());
        for (message, reply) in [(&b"hello"[..], "hi again"), (b"next", "one")] {
            r.message(message);
            r.replied(reply);
        }
        r.message(b"left waiting");
        r
    }

    /// What the generated script answers, message by message, on one connection.
    fn replay(script: &str, messages: &[&[u8]]) -> Vec<(Vec<String>, bool)> {
        let script = Arc::new(
            ServerScript::from_source("mock.rhai", script, &Limits::default(), Verbosity::Quiet)
                .unwrap_or_else(|e| panic!("{}\n{script}", e.render())),
        );
        let mut hooks = script.connection(
            "127.0.0.1:1".parse().unwrap(),
            &crate::framing::Framing::Line,
            1 << 20,
        );
        messages
            .iter()
            .map(|m| {
                let reply = hooks.on_message(m).unwrap();
                let sent = reply
                    .actions
                    .iter()
                    .filter_map(|a| match a {
                        Action::Send(b) => Some(String::from_utf8_lossy(b.as_bytes()).into_owned()),
                        _ => None,
                    })
                    .collect();
                (sent, reply.close)
            })
            .collect()
    }

    fn said(text: &str) -> (Vec<String>, bool) {
        (vec![text.to_string()], false)
    }

    #[test]
    fn answers_as_recorded_in_turn_and_by_shape() {
        let script = recording(false).script();
        let replies = replay(
            &script,
            &[
                b"hello",
                b"next",
                b"next",
                b"next",
                b"pid 99",
                b"add 2 3",
                b"add 4 5",
                b"add 7 7",
                b"\xff\x00",
                b"unknown",
                b"bye",
            ],
        );
        assert_eq!(
            replies,
            vec![
                said("hi"),
                said("one"),
                said("two"),
                said("two"),
                said("ok pid"),
                said("5"),
                said("9"),
                (vec![], false),
                said("binary"),
                (vec![], false),
                (vec!["exit".to_string()], true),
            ],
            "{script}"
        );
        // Each connection counts its own turns.
        assert_eq!(replay(&script, &[b"next"]), vec![said("one")]);
        assert!(
            script.contains("// Connection 2 got \"hi again\" instead."),
            "{script}"
        );
        assert!(
            script.contains("\"left waiting\" from connection 2"),
            "{script}"
        );
    }

    #[test]
    fn exact_matches_numbers_literally() {
        let script = recording(true).script();
        assert!(!script.contains("fn shape"), "{script}");
        let replies = replay(&script, &[b"pid 4242", b"pid 99"]);
        assert_eq!(replies, vec![said("ok pid"), (vec![], false)]);
    }

    #[test]
    fn texts_of_one_shape_with_one_reply_share_a_block() {
        let mut r = ServerRecording::new(
            "m.rhai".into(),
            UNIX_EPOCH,
            "0",
            "raw".parse().unwrap(),
            false,
        );
        r.connected("a".into());
        r.message(b"hello from 4242");
        r.replied("hi");
        r.connected("b".into());
        r.message(b"hello from 5151");
        r.replied("hi");
        let script = r.script();
        assert!(script.contains("const FRAMING = \"raw\";"), "{script}");
        assert!(
            script.contains("recorded: \"hello from 4242\", \"hello from 5151\""),
            "{script}"
        );
        assert_eq!(replay(&script, &[b"hello from 1"]), vec![said("hi")]);
    }

    #[test]
    fn an_empty_recording_is_a_valid_script() {
        let r = ServerRecording::new("m.rhai".into(), UNIX_EPOCH, "0", Framing::Line, false);
        assert_eq!(replay(&r.script(), &[b"x"]), vec![(vec![], false)]);
    }
}
