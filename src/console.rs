//! Output that never blocks the code producing it. A server's connections
//! and hooks write lines to stdout and stderr through a bounded queue each,
//! drained by a writer thread of its own: a reader that stops reading costs
//! dropped lines (counted, and reported once the stream moves again), never
//! a stuck worker; a stdout whose reader went away is an error scripts see,
//! never a panic.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Condvar, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes queued per stream before further lines are dropped.
const QUEUE_BYTES: usize = 1024 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Out,
    Err,
}

/// The stream's reader is gone (a closed pipe): nothing more can be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} is closed: its reader went away")]
pub(crate) struct Closed(&'static str);

struct Stream {
    which: Which,
    state: Mutex<State>,
    /// Signalled when lines arrive (for the writer) and when the queue
    /// empties (for `flush`).
    changed: Condvar,
}

#[derive(Default)]
struct State {
    lines: VecDeque<Vec<u8>>,
    bytes: usize,
    /// Lines dropped since the last note about it.
    dropped: u64,
    /// The writer is writing a line taken off the queue.
    busy: bool,
    closed: bool,
    started: bool,
}

static STDOUT: LazyLock<Stream> = LazyLock::new(|| Stream::new(Which::Out));
static STDERR: LazyLock<Stream> = LazyLock::new(|| Stream::new(Which::Err));

/// A line for stdout (`print()` in scripts).
pub(crate) fn out(line: &str) -> Result<(), Closed> {
    STDOUT.push(line)
}

/// A line for stderr (logs, connection notes, errors). ANSI styles in it are
/// removed unless stderr is a colour terminal.
pub(crate) fn err(line: &str) {
    let line = if colour_on_stderr() {
        std::borrow::Cow::Borrowed(line)
    } else {
        std::borrow::Cow::Owned(anstream::adapter::strip_str(line).to_string())
    };
    // A closed stderr has nowhere to report itself.
    let _ = STDERR.push(&line);
}

/// Waits until both queues are written out, at most `timeout`.
pub(crate) fn flush(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    STDOUT.wait_drained(deadline);
    STDERR.wait_drained(deadline);
}

fn colour_on_stderr() -> bool {
    static CHOICE: LazyLock<bool> = LazyLock::new(|| {
        matches!(
            anstream::AutoStream::choice(&io::stderr()),
            anstream::ColorChoice::Always | anstream::ColorChoice::AlwaysAnsi
        )
    });
    *CHOICE
}

impl Stream {
    fn new(which: Which) -> Self {
        Stream {
            which,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    fn name(&self) -> &'static str {
        match self.which {
            Which::Out => "stdout",
            Which::Err => "stderr",
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&'static self, line: &str) -> Result<(), Closed> {
        let mut state = self.lock();
        if state.closed {
            return Err(Closed(self.name()));
        }
        if !state.started {
            state.started = true;
            let spawned = std::thread::Builder::new()
                .name(format!("tcpscript-{}", self.name()))
                .spawn(move || self.write_out());
            if spawned.is_err() {
                // No thread for it: write in place rather than lose output.
                state.started = false;
                drop(state);
                return self.write_now(line);
            }
        }
        // One line never takes more than the whole queue: a script may
        // print a string as long as the largest message.
        let mut cut = line.len().min(QUEUE_BYTES);
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        let note = (cut < line.len()).then(|| format!("… ({} bytes in all)", line.len()));
        let size = cut + note.as_ref().map_or(0, String::len) + 1;
        if state.bytes + size > QUEUE_BYTES && !state.lines.is_empty() {
            state.dropped += 1;
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(&line.as_bytes()[..cut]);
        if let Some(note) = note {
            bytes.extend_from_slice(note.as_bytes());
        }
        bytes.push(b'\n');
        state.bytes += size;
        state.lines.push_back(bytes);
        self.changed.notify_all();
        Ok(())
    }

    /// Without a writer thread (none could be started).
    fn write_now(&self, line: &str) -> Result<(), Closed> {
        let written = match self.which {
            Which::Out => writeln!(io::stdout().lock(), "{line}"),
            Which::Err => writeln!(io::stderr().lock(), "{line}"),
        };
        written.map_err(|_| Closed(self.name()))
    }

    fn write_out(&self) {
        loop {
            let (line, dropped) = {
                let mut state = self.lock();
                while state.lines.is_empty() {
                    state.busy = false;
                    self.changed.notify_all();
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                let line = state.lines.pop_front().unwrap_or_default();
                state.bytes -= line.len();
                state.busy = true;
                (line, std::mem::take(&mut state.dropped))
            };
            if dropped > 0 {
                let note = format!(
                    "tcpscript: {dropped} lines of output dropped: {} was not being read\n",
                    self.name()
                );
                let _ = io::stderr().lock().write_all(note.as_bytes());
            }
            let written = match self.which {
                Which::Out => {
                    let mut out = io::stdout().lock();
                    out.write_all(&line).and_then(|()| out.flush())
                }
                Which::Err => io::stderr().lock().write_all(&line),
            };
            if written.is_err() {
                let mut state = self.lock();
                state.closed = true;
                state.lines.clear();
                state.bytes = 0;
                state.busy = false;
                self.changed.notify_all();
                return;
            }
        }
    }

    fn wait_drained(&self, deadline: Instant) {
        let mut state = self.lock();
        while state.started && !state.closed && (state.busy || !state.lines.is_empty()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
