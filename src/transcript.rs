//! What was said on a connection: printed live with `-v`, and the last
//! messages kept so any failure can show them even without `-v`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How much a command prints to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// `-q`: errors only.
    Quiet,
    /// Errors, `log()` output and summaries.
    Normal,
    /// `-v`: also every message sent and received.
    Verbose,
}

impl Verbosity {
    pub fn from_flags(verbose: u8, quiet: bool) -> Self {
        match (quiet, verbose) {
            (true, _) => Verbosity::Quiet,
            (false, 0) => Verbosity::Normal,
            (false, _) => Verbosity::Verbose,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
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
pub const SHOWN_ON_FAILURE: usize = 8;

/// One message, kept raw: formatting happens only when it is shown, so a
/// busy server does not pay for it.
#[derive(Debug)]
struct Entry {
    at: Duration,
    /// Which connection, when a conversation has several (`#2`).
    label: Option<Arc<str>>,
    direction: Direction,
    bytes: Bytes,
}

/// The recent messages of one conversation.
#[derive(Debug)]
pub struct Transcript {
    start: Instant,
    verbosity: Verbosity,
    /// Shown before each live line, e.g. the peer's address on a server.
    prefix: String,
    keep: usize,
    recent: VecDeque<Entry>,
    /// Messages no longer kept, so a long report can say what it omits.
    dropped: u64,
}

impl Transcript {
    pub fn new(verbosity: Verbosity, prefix: String) -> Self {
        Self::keeping(SHOWN_ON_FAILURE, verbosity, prefix)
    }

    /// A transcript that keeps the last `keep` messages.
    pub fn keeping(keep: usize, verbosity: Verbosity, prefix: String) -> Self {
        Transcript {
            start: Instant::now(),
            verbosity,
            prefix,
            keep: keep.max(1),
            recent: VecDeque::new(),
            dropped: 0,
        }
    }

    pub fn record(&mut self, direction: Direction, bytes: &Bytes) {
        self.record_on(None, direction, bytes);
    }

    /// Records a message of the connection called `label`.
    pub fn record_on(&mut self, label: Option<&Arc<str>>, direction: Direction, bytes: &Bytes) {
        let entry = Entry {
            at: self.start.elapsed(),
            label: label.cloned(),
            direction,
            bytes: bytes.clone(),
        };
        if self.verbosity == Verbosity::Verbose {
            anstream::eprintln!("{}{}", self.prefix, entry.format());
        }
        if self.recent.len() == self.keep {
            self.recent.pop_front();
            self.dropped += 1;
        }
        self.recent.push_back(entry);
    }

    /// A line of the script's own output (`log()`), with the same prefix.
    pub fn log(&self, text: &str) {
        if self.verbosity >= Verbosity::Normal {
            anstream::eprintln!("{}{} {text}", self.prefix, self.offset());
        }
    }

    /// Time since the conversation began, as `+1.234s`.
    pub fn offset(&self) -> String {
        format!("+{:.3}s", self.start.elapsed().as_secs_f64())
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The last messages, formatted as `-v` shows them.
    pub fn recent(&self) -> Vec<String> {
        self.tail(SHOWN_ON_FAILURE)
    }

    /// The last `n` messages, formatted.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let skip = self.recent.len().saturating_sub(n);
        self.recent.iter().skip(skip).map(Entry::format).collect()
    }

    /// Every kept message, preceded by a note of those no longer kept.
    pub fn all(&self) -> Vec<String> {
        let mut lines = Vec::with_capacity(self.recent.len() + 1);
        if self.dropped > 0 {
            lines.push(format!("… {} earlier messages not kept", self.dropped));
        }
        lines.extend(self.recent.iter().map(Entry::format));
        lines
    }
}

impl Entry {
    fn format(&self) -> String {
        let label = match &self.label {
            Some(label) => format!("{label} "),
            None => String::new(),
        };
        format!(
            "+{:.3}s {label}{} {}",
            self.at.as_secs_f64(),
            self.direction.arrow(),
            crate::message::display_line(&self.bytes)
        )
    }
}
