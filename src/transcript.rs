//! What was said on a connection: printed live with `-v`, and the last few
//! messages kept so any failure can show them even without `-v`.

use std::collections::VecDeque;
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
const KEPT: usize = 8;

/// The recent messages of one conversation.
#[derive(Debug)]
pub struct Transcript {
    start: Instant,
    verbosity: Verbosity,
    /// Shown before each live line, e.g. the peer's address on a server.
    prefix: String,
    /// Kept raw and formatted only when shown: the server records every
    /// message and must not pay for formatting it.
    recent: VecDeque<(Duration, Direction, Bytes)>,
}

impl Transcript {
    pub fn new(verbosity: Verbosity, prefix: String) -> Self {
        Transcript {
            start: Instant::now(),
            verbosity,
            prefix,
            recent: VecDeque::with_capacity(KEPT),
        }
    }

    pub fn record(&mut self, direction: Direction, bytes: &Bytes) {
        let at = self.start.elapsed();
        if self.verbosity == Verbosity::Verbose {
            anstream::eprintln!("{}{}", self.prefix, format_line(at, direction, bytes));
        }
        if self.recent.len() == KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back((at, direction, bytes.clone()));
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

    /// The last messages, formatted as `-v` shows them.
    pub fn recent(&self) -> Vec<String> {
        self.recent
            .iter()
            .map(|(at, direction, bytes)| format_line(*at, *direction, bytes))
            .collect()
    }
}

fn format_line(at: Duration, direction: Direction, bytes: &[u8]) -> String {
    format!(
        "+{:.3}s {} {}",
        at.as_secs_f64(),
        direction.arrow(),
        crate::message::display_line(bytes)
    )
}
