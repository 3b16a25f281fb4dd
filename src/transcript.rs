//! What was said on a connection: printed live with `-v`, and the last
//! messages kept so any failure can show them even without `-v`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How much a command prints to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verbosity {
    /// `-q`: errors only.
    Quiet,
    /// Errors, `log()` output and summaries.
    Normal,
    /// `-v`: also every message sent and received.
    Verbose,
}

impl Verbosity {
    pub(crate) fn from_flags(verbose: u8, quiet: bool) -> Self {
        match (quiet, verbose) {
            (true, _) => Verbosity::Quiet,
            (false, 0) => Verbosity::Normal,
            (false, _) => Verbosity::Verbose,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Sent,
    Received,
}

impl Direction {
    fn arrow(self) -> char {
        match self {
            Direction::Sent => '>',
            Direction::Received => '<',
        }
    }
}

/// How many messages a failure report shows.
pub(crate) const SHOWN_ON_FAILURE: usize = 8;

/// Bytes of each message a server keeps for its error reports.
const HEAD: usize = 48;

/// Bytes of each message a client keeps for its reports: a line of a
/// report, not the message. Three test cases that each received 300
/// replies of 1 MB used to keep all 900 MB until the JUnit file was
/// written; the length shown beside each head says what was cut.
pub(crate) const REPORT_HEAD: usize = 512;

/// Head bytes one client transcript keeps in all: the oldest messages go
/// first once either this or the message count is reached.
const KEPT_BYTES: usize = 64 * 1024;

/// One message, kept raw: formatting happens only when it is shown, so a
/// busy server does not pay for it.
#[derive(Debug)]
struct Entry {
    /// Since the conversation began; servers skip reading the clock for
    /// every message unless `-v` shows it.
    at: Option<Duration>,
    /// Which connection, when a conversation has several (`#2`).
    label: Option<Arc<str>>,
    direction: Direction,
    kept: Kept,
}

#[derive(Debug)]
enum Kept {
    /// Its first [`REPORT_HEAD`] bytes, copied (clients: a copy, so no
    /// read buffer is held alive by a kept message).
    Start { len: usize, start: Box<[u8]> },
    /// Its first bytes, copied inline (servers: no allocation per message,
    /// and no read buffer held alive by a kept message).
    Head {
        len: usize,
        used: u8,
        bytes: [u8; HEAD],
    },
}

impl Kept {
    fn start(message: &[u8]) -> Kept {
        Kept::Start {
            len: message.len(),
            start: message[..message.len().min(REPORT_HEAD)].into(),
        }
    }

    /// Bytes this entry holds.
    fn held(&self) -> usize {
        match self {
            Kept::Start { start, .. } => start.len(),
            Kept::Head { .. } => HEAD,
        }
    }

    fn head(message: &[u8]) -> Kept {
        let used = message.len().min(HEAD);
        let mut bytes = [0; HEAD];
        bytes[..used].copy_from_slice(&message[..used]);
        Kept::Head {
            len: message.len(),
            used: used as u8,
            bytes,
        }
    }

    fn display(&self) -> String {
        match self {
            Kept::Start { len, start } => display_head(start, *len),
            Kept::Head { len, used, bytes } => display_head(&bytes[..*used as usize], *len),
        }
    }
}

/// The transcript form of a message of `len` bytes of which `head` was kept.
fn display_head(head: &[u8], len: usize) -> String {
    let mut head = head;
    // A cut inside a character: drop its start so the rest still reads as text.
    if len > head.len()
        && let Err(e) = std::str::from_utf8(head)
        && e.error_len().is_none()
    {
        head = &head[..e.valid_up_to()];
    }
    let shown = crate::message::display_line(head);
    if len > head.len() {
        format!("{shown}… ({len} bytes)")
    } else {
        shown
    }
}

/// A server connection's last messages, first bytes only, in slots
/// allocated once: recording a message is one small copy into a slot.
#[derive(Debug)]
struct HeadRing {
    slots: [HeadSlot; SHOWN_ON_FAILURE],
    /// The slot the next message goes to.
    next: usize,
    filled: usize,
}

#[derive(Debug, Clone, Copy)]
struct HeadSlot {
    direction: Direction,
    len: usize,
    used: u8,
    bytes: [u8; HEAD],
}

impl HeadRing {
    fn new() -> Self {
        HeadRing {
            slots: [HeadSlot {
                direction: Direction::Received,
                len: 0,
                used: 0,
                bytes: [0; HEAD],
            }; SHOWN_ON_FAILURE],
            next: 0,
            filled: 0,
        }
    }

    /// Records a message; true when an older one was overwritten.
    #[inline]
    fn record(&mut self, direction: Direction, message: &[u8]) -> bool {
        let slot = &mut self.slots[self.next];
        let used = message.len().min(HEAD);
        slot.direction = direction;
        slot.len = message.len();
        slot.used = used as u8;
        slot.bytes[..used].copy_from_slice(&message[..used]);
        self.next = (self.next + 1) % SHOWN_ON_FAILURE;
        let overwrote = self.filled == SHOWN_ON_FAILURE;
        self.filled = (self.filled + 1).min(SHOWN_ON_FAILURE);
        overwrote
    }

    /// Oldest first.
    fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        let first = (self.next + SHOWN_ON_FAILURE - self.filled) % SHOWN_ON_FAILURE;
        (0..self.filled).map(move |i| {
            let slot = &self.slots[(first + i) % SHOWN_ON_FAILURE];
            Entry {
                at: None,
                label: None,
                direction: slot.direction,
                kept: Kept::Head {
                    len: slot.len,
                    used: slot.used,
                    bytes: slot.bytes,
                },
            }
        })
    }
}

/// The recent messages of one conversation.
#[derive(Debug)]
pub(crate) struct Transcript {
    start: Instant,
    verbosity: Verbosity,
    /// Shown before each live line, e.g. the peer's address on a server.
    prefix: String,
    keep: usize,
    /// Keep [`REPORT_HEAD`] bytes of each message and time them (clients),
    /// or [`HEAD`] bytes untimed (servers).
    client: bool,
    recent: VecDeque<Entry>,
    /// Bytes held by `recent`, bounded by [`KEPT_BYTES`].
    held: usize,
    /// Where a server keeps its messages when `-v` is off (made at the
    /// first message, so a connection that says nothing costs nothing).
    ring: Option<Box<HeadRing>>,
    /// Messages no longer kept, so a long report can say what it omits.
    dropped: u64,
}

impl Transcript {
    /// A server connection's transcript: the last few messages, each cut
    /// to its first bytes.
    pub(crate) fn new(verbosity: Verbosity, prefix: String) -> Self {
        Transcript {
            client: false,
            ..Self::keeping(SHOWN_ON_FAILURE, verbosity, prefix)
        }
    }

    /// A transcript that keeps the last `keep` messages (at most
    /// [`KEPT_BYTES`] of their heads).
    pub(crate) fn keeping(keep: usize, verbosity: Verbosity, prefix: String) -> Self {
        Transcript {
            start: Instant::now(),
            verbosity,
            prefix,
            keep: keep.max(1),
            client: true,
            recent: VecDeque::new(),
            held: 0,
            ring: None,
            dropped: 0,
        }
    }

    /// Records a message (servers: only its first bytes are kept).
    /// Inline, as a server records every message it sends or receives:
    /// once its ring exists, recording is a copy into it.
    #[inline]
    pub(crate) fn record(&mut self, direction: Direction, bytes: &[u8]) {
        if let Some(ring) = &mut self.ring {
            if ring.record(direction, bytes) {
                self.dropped += 1;
            }
            return;
        }
        self.record_first(direction, bytes);
    }

    /// [`Transcript::record`] without a ring: a server's first message
    /// makes it; `-v` and clients keep their messages the other way.
    #[inline(never)]
    fn record_first(&mut self, direction: Direction, bytes: &[u8]) {
        if !self.client && self.verbosity != Verbosity::Verbose {
            let ring = self.ring.insert(Box::new(HeadRing::new()));
            if ring.record(direction, bytes) {
                self.dropped += 1;
            }
            return;
        }
        self.record_on(None, direction, bytes);
    }

    /// Records a message of the connection called `label`.
    pub(crate) fn record_on(
        &mut self,
        label: Option<&Arc<str>>,
        direction: Direction,
        bytes: &[u8],
    ) {
        let kept = if self.client {
            Kept::start(bytes)
        } else {
            Kept::head(bytes)
        };
        let timed = self.client || self.verbosity == Verbosity::Verbose;
        let entry = Entry {
            at: timed.then(|| self.start.elapsed()),
            label: label.cloned(),
            direction,
            kept,
        };
        if self.verbosity == Verbosity::Verbose {
            // A client shows the whole message live: it is printed, not kept.
            let shown = if self.client {
                crate::message::display_line(bytes)
            } else {
                entry.kept.display()
            };
            let line = entry.format_with(shown);
            crate::console::err(&format!("{}{line}", self.prefix));
        }
        self.held += entry.kept.held();
        self.recent.push_back(entry);
        while self.recent.len() > self.keep || (self.held > KEPT_BYTES && self.recent.len() > 1) {
            if let Some(old) = self.recent.pop_front() {
                self.held -= old.kept.held();
                self.dropped += 1;
            }
        }
    }

    /// A line of the script's own output (`log()`), with the same prefix;
    /// control characters escaped, as the text may come from the peer.
    pub(crate) fn log(&self, text: &str) {
        if self.verbosity >= Verbosity::Normal {
            crate::console::err(&format!(
                "{}{} {}",
                self.prefix,
                self.offset(),
                crate::message::escape_controls(text)
            ));
        }
    }

    /// Time since the conversation began, as `+1.234s`.
    pub(crate) fn offset(&self) -> String {
        format!("+{:.3}s", self.start.elapsed().as_secs_f64())
    }

    /// The last messages, formatted as `-v` shows them.
    pub(crate) fn recent(&self) -> Vec<String> {
        self.tail(SHOWN_ON_FAILURE)
    }

    /// The last `n` messages, formatted.
    pub(crate) fn tail(&self, n: usize) -> Vec<String> {
        if let Some(ring) = &self.ring {
            let skip = ring.filled.saturating_sub(n);
            return ring.entries().skip(skip).map(|e| e.format()).collect();
        }
        let skip = self.recent.len().saturating_sub(n);
        self.recent.iter().skip(skip).map(Entry::format).collect()
    }

    /// Every kept message, preceded by a note of those no longer kept.
    pub(crate) fn all(&self) -> Vec<String> {
        let mut lines = Vec::with_capacity(self.recent.len() + 1);
        if self.dropped > 0 {
            lines.push(format!("… {} earlier messages not kept", self.dropped));
        }
        match &self.ring {
            Some(ring) => lines.extend(ring.entries().map(|e| e.format())),
            None => lines.extend(self.recent.iter().map(Entry::format)),
        }
        lines
    }
}

impl Entry {
    fn format(&self) -> String {
        self.format_with(self.kept.display())
    }

    /// The line for this entry, showing the message as `shown`.
    fn format_with(&self, shown: String) -> String {
        let label = match &self.label {
            Some(label) => format!("{label} "),
            None => String::new(),
        };
        let at = match self.at {
            Some(at) => format!("+{:.3}s ", at.as_secs_f64()),
            None => String::new(),
        };
        format!("{at}{label}{} {shown}", self.direction.arrow())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Transcript {
        Transcript::keeping(1000, Verbosity::Quiet, String::new())
    }

    #[test]
    fn a_client_keeps_the_head_of_a_big_message_and_its_length() {
        let mut transcript = client();
        transcript.record(Direction::Received, &vec![b'x'; 1_000_000]);
        let lines = transcript.all();
        assert_eq!(lines.len(), 1);
        let shown = format!("< {}… (1000000 bytes)", "x".repeat(REPORT_HEAD));
        assert!(lines[0].ends_with(&shown), "{}", lines[0]);
    }

    #[test]
    fn a_client_transcript_drops_the_oldest_past_its_byte_bound() {
        let mut transcript = client();
        for _ in 0..300 {
            transcript.record(Direction::Received, &vec![b'x'; 1 << 20]);
        }
        let kept = KEPT_BYTES / REPORT_HEAD;
        let lines = transcript.all();
        assert_eq!(lines.len(), kept + 1);
        assert_eq!(
            lines[0],
            format!("… {} earlier messages not kept", 300 - kept)
        );
    }

    #[test]
    fn small_messages_are_bounded_by_count() {
        let mut transcript = Transcript::keeping(3, Verbosity::Quiet, String::new());
        for message in ["one", "two", "three", "four"] {
            transcript.record(Direction::Sent, message.as_bytes());
        }
        let lines = transcript.all();
        assert_eq!(lines[0], "… 1 earlier messages not kept");
        assert!(lines[1].ends_with("> two") && lines[3].ends_with("> four"));
    }

    #[test]
    fn a_head_cut_inside_a_character_drops_its_start() {
        let mut message = "a".repeat(REPORT_HEAD - 1).into_bytes();
        message.extend_from_slice("你好".as_bytes());
        let mut transcript = client();
        transcript.record(Direction::Received, &message);
        let line = &transcript.all()[0];
        let shown = format!(
            "< {}… ({} bytes)",
            "a".repeat(REPORT_HEAD - 1),
            message.len()
        );
        assert!(line.ends_with(&shown), "{line}");
    }

    #[test]
    fn a_server_ring_keeps_the_last_few_heads() {
        let mut transcript = Transcript::new(Verbosity::Quiet, String::new());
        for i in 0..SHOWN_ON_FAILURE + 2 {
            transcript.record(Direction::Received, format!("m{i}").as_bytes());
        }
        let lines = transcript.all();
        assert_eq!(lines[0], "… 2 earlier messages not kept");
        assert_eq!(lines[1], "< m2");
        assert_eq!(lines.len(), SHOWN_ON_FAILURE + 1);
    }
}
