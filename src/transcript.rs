//! What was said on a connection: printed live with `-v`, and the last
//! messages kept so any failure can show them even without `-v`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

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
    /// The whole message (clients: reports show full transcripts).
    Whole(Bytes),
    /// Its first bytes, copied inline (servers: no allocation per message,
    /// and no read buffer held alive by a kept message).
    Head {
        len: usize,
        used: u8,
        bytes: [u8; HEAD],
    },
}

impl Kept {
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
            Kept::Whole(bytes) => crate::message::display_line(bytes),
            Kept::Head { len, used, bytes } => {
                let mut head = &bytes[..*used as usize];
                // A cut inside a character: drop its start so the rest
                // still reads as text.
                if *len > head.len()
                    && let Err(e) = std::str::from_utf8(head)
                    && e.error_len().is_none()
                {
                    head = &head[..e.valid_up_to()];
                }
                let shown = crate::message::display_line(head);
                if *len > head.len() {
                    format!("{shown}… ({len} bytes)")
                } else {
                    shown
                }
            }
        }
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
    /// Keep whole messages, or only their first bytes.
    whole: bool,
    recent: VecDeque<Entry>,
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
            whole: false,
            ..Self::keeping(SHOWN_ON_FAILURE, verbosity, prefix)
        }
    }

    /// A transcript that keeps the last `keep` messages.
    pub(crate) fn keeping(keep: usize, verbosity: Verbosity, prefix: String) -> Self {
        Transcript {
            start: Instant::now(),
            verbosity,
            prefix,
            keep: keep.max(1),
            whole: true,
            recent: VecDeque::new(),
            ring: None,
            dropped: 0,
        }
    }

    /// Records a message (servers: only its first bytes are kept).
    pub(crate) fn record(&mut self, direction: Direction, bytes: &[u8]) {
        if !self.whole && self.verbosity != Verbosity::Verbose {
            let ring = self.ring.get_or_insert_with(|| Box::new(HeadRing::new()));
            if ring.record(direction, bytes) {
                self.dropped += 1;
            }
            return;
        }
        let kept = if self.whole {
            Kept::Whole(Bytes::copy_from_slice(bytes))
        } else {
            Kept::head(bytes)
        };
        self.push(None, direction, kept);
    }

    /// Records a message of the connection called `label`, sharing its bytes.
    pub(crate) fn record_on(
        &mut self,
        label: Option<&Arc<str>>,
        direction: Direction,
        bytes: &Bytes,
    ) {
        let kept = if self.whole {
            Kept::Whole(bytes.clone())
        } else {
            Kept::head(bytes)
        };
        self.push(label.cloned(), direction, kept);
    }

    fn push(&mut self, label: Option<Arc<str>>, direction: Direction, kept: Kept) {
        let timed = self.whole || self.verbosity == Verbosity::Verbose;
        let entry = Entry {
            at: timed.then(|| self.start.elapsed()),
            label,
            direction,
            kept,
        };
        if self.verbosity == Verbosity::Verbose {
            crate::console::err(&format!("{}{}", self.prefix, entry.format()));
        }
        if self.recent.len() == self.keep {
            self.recent.pop_front();
            self.dropped += 1;
        }
        self.recent.push_back(entry);
    }

    /// A line of the script's own output (`log()`), with the same prefix.
    pub(crate) fn log(&self, text: &str) {
        if self.verbosity >= Verbosity::Normal {
            crate::console::err(&format!("{}{} {text}", self.prefix, self.offset()));
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
        let label = match &self.label {
            Some(label) => format!("{label} "),
            None => String::new(),
        };
        let at = match self.at {
            Some(at) => format!("+{:.3}s ", at.as_secs_f64()),
            None => String::new(),
        };
        format!(
            "{at}{label}{} {}",
            self.direction.arrow(),
            self.kept.display()
        )
    }
}
