//! Manual mode (no SCRIPT): the tutorial's two programs, minus the prompts.
//! The client sends each stdin line and prints what comes back; the server
//! prints what arrives and answers with the next stdin line. With
//! `--record FILE`, either one writes the session down as a script
//! (see `record`).

use std::io::{self, BufRead, Write};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::client::connection::{Connection, FrameReader, Received, RecvError};
use crate::error::Error;
use crate::framing::Framing;
use crate::message;
use crate::net;
use crate::record::{ClientRecorder, RecordOptions, ServerRecorder};
use crate::transcript::Verbosity;

/// The word that ends a session, as in the tutorial.
const EXIT_WORD: &str = "exit";

#[derive(Debug, Clone)]
pub(crate) struct ManualClientOptions {
    pub(crate) connect: String,
    pub(crate) timeout: Duration,
    pub(crate) connect_retry: Option<Duration>,
    pub(crate) framing: Framing,
    pub(crate) max_frame: usize,
    pub(crate) verbosity: Verbosity,
    /// `--record FILE`: write the session down as a script.
    pub(crate) record: Option<RecordOptions>,
}

/// While recording, how long the peer must stay quiet before what came back
/// counts as the whole answer. It only decides how messages are grouped into
/// blocks, and whether the peer closed before our input ended (so the script
/// ends with `expect_close()`); a replay waits on messages, never on this.
const RECORD_QUIET: Duration = Duration::from_millis(200);

/// Prints a received message on stdout, one per line.
fn print_message(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(bytes)?;
    if !bytes.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// What the reader thread reports, as the main thread takes it in: the
/// order it is taken in is the order the recording keeps.
struct Arrivals {
    arrived: mpsc::Receiver<Result<Bytes, String>>,
    recorder: Option<ClientRecorder>,
    failure: Option<String>,
    peer_closed: bool,
}

impl Arrivals {
    fn take(&mut self, result: Result<Bytes, String>) {
        match result {
            Ok(message) => {
                if let Some(recorder) = &mut self.recorder {
                    recorder.received(message);
                }
            }
            Err(e) => {
                self.failure.get_or_insert(e);
            }
        }
    }

    /// The reader thread ends when the peer closes, or after reporting an error.
    fn ended(&mut self) {
        if !self.peer_closed
            && self.failure.is_none()
            && let Some(recorder) = &mut self.recorder
        {
            recorder.closed();
        }
        self.peer_closed = true;
    }

    /// Takes in whatever has already arrived.
    fn drain(&mut self) {
        loop {
            match self.arrived.try_recv() {
                Ok(result) => self.take(result),
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => return self.ended(),
            }
        }
    }

    /// Waits up to `first` for an answer; with `quiet`, then goes on taking
    /// messages until none has come for that long.
    fn wait(&mut self, first: Duration, quiet: Option<Duration>) {
        let mut timeout = first;
        loop {
            match self.arrived.recv_timeout(timeout) {
                Ok(result) => self.take(result),
                Err(mpsc::RecvTimeoutError::Timeout) => return,
                Err(mpsc::RecvTimeoutError::Disconnected) => return self.ended(),
            }
            match quiet {
                Some(quiet) if self.failure.is_none() => timeout = quiet,
                _ => return,
            }
        }
    }

    /// Takes in messages until the peer closes or `deadline` passes.
    fn wait_until(&mut self, deadline: Instant) {
        while self.failure.is_none() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.arrived.recv_timeout(remaining) {
                Ok(result) => self.take(result),
                Err(mpsc::RecvTimeoutError::Timeout) => return,
                Err(mpsc::RecvTimeoutError::Disconnected) => return self.ended(),
            }
        }
    }

    fn stopped(&self) -> bool {
        self.failure.is_some() || self.peer_closed
    }
}

/// Sends stdin line by line. Like the tutorial, it waits for an answer
/// (up to `--timeout`) before sending the next line, so piped input keeps
/// the rhythm of a typed session even with `raw` framing. Messages that
/// arrive at other times, such as a greeting, are printed as they come.
pub(crate) fn client(options: &ManualClientOptions) -> Result<(), Error> {
    let recorder = match &options.record {
        Some(record) => Some(ClientRecorder::start(
            record,
            &options.connect,
            &options.framing,
        )?),
        None => None,
    };
    let mut connection = Connection::connect(
        &options.connect,
        options.framing.clone(),
        options.max_frame,
        options.timeout,
        options.connect_retry,
    )?;
    if options.verbosity >= Verbosity::Normal {
        eprintln!("connected to {}", connection.peer());
        if let Some(record) = &options.record {
            eprintln!("recording to {}", record.path.display());
        }
    }
    let stream = connection
        .stream()
        .try_clone()
        .map_err(|source| Error::System {
            action: "share the socket with the reader thread",
            source,
        })?;
    let framing = options.framing.clone();
    let max_frame = options.max_frame;
    let (arrived_tx, arrived) = mpsc::channel::<Result<Bytes, String>>();
    let reader = thread::Builder::new().spawn(move || {
        let mut frames = FrameReader::new(framing, max_frame);
        let stdout = io::stdout();
        loop {
            match frames.next(&stream, None) {
                Ok(Received::Message(m)) => {
                    let _ = print_message(&mut stdout.lock(), &m);
                    if arrived_tx.send(Ok(m)).is_err() {
                        return;
                    }
                }
                Ok(Received::Closed) => return,
                Ok(Received::TimedOut) => {}
                Err(e) => {
                    let _ = arrived_tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    let reader = reader.map_err(|source| Error::System {
        action: "start the thread that reads from the peer",
        source,
    })?;

    let recording = recorder.is_some();
    let quiet = recording.then_some(RECORD_QUIET);
    let mut session = Arrivals {
        arrived,
        recorder,
        failure: None,
        peer_closed: false,
    };
    if let Some(recorder) = &mut session.recorder {
        recorder.connected(connection.peer());
        // A greeting is asserted before the first send, even when piped
        // input would otherwise be sent before it arrives.
        session.wait(RECORD_QUIET, quiet);
    }
    let mut input_error = None;
    for line in io::stdin().lock().lines() {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                input_error = Some(Error::Usage(format!("cannot read stdin: {e}")));
                break;
            }
        };
        // Whatever arrived before this line was sent is not its answer.
        session.drain();
        if session.stopped() {
            break;
        }
        if let Err(e) = connection.send(line.as_bytes()) {
            session.failure = Some(e.to_string());
            break;
        }
        if let Some(recorder) = &mut session.recorder {
            recorder.sent(line.as_bytes());
        }
        let exit = line == EXIT_WORD;
        // A recording waits for the answer to `exit` too, to see whether
        // the peer hangs up by itself.
        if exit && !recording {
            break;
        }
        session.wait(options.timeout, quiet);
        if let Some(recorder) = &mut session.recorder {
            recorder.checkpoint();
        }
        if exit || session.stopped() {
            break;
        }
    }

    // Let the last answers arrive: wait for the peer to close, at most --timeout.
    if !session.stopped()
        && let Some(recorder) = &mut session.recorder
    {
        recorder.input_ended();
    }
    connection.shutdown_write();
    session.wait_until(Instant::now() + options.timeout);
    connection.close();
    let _ = reader.join();
    if options.verbosity >= Verbosity::Normal && session.peer_closed && session.failure.is_none() {
        eprintln!("connection closed by peer");
    }
    let saved = match session.recorder.take() {
        Some(mut recorder) => {
            if let Some(e) = &session.failure {
                recorder.failed(e);
            }
            recorder.finish(options.verbosity)
        }
        None => Ok(()),
    };
    if let Some(e) = input_error {
        return Err(e);
    }
    match session.failure {
        Some(e) => Err(Error::Connect {
            addr: options.connect.clone(),
            source: io::Error::other(e),
        }),
        None => saved,
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ManualServerOptions {
    pub(crate) listen: String,
    pub(crate) framing: Framing,
    pub(crate) max_frame: usize,
    pub(crate) verbosity: Verbosity,
    /// `--record FILE`: write the session down as a server script.
    pub(crate) record: Option<RecordOptions>,
}

/// Serves one client after another, as the tutorial does. Each received
/// message is printed with the peer's address and answered with the next
/// line of stdin; answering `exit` closes that client, and the end of
/// stdin ends the server.
pub(crate) fn server(options: &ManualServerOptions) -> Result<(), Error> {
    let mut recorder = match &options.record {
        Some(record) => Some(ServerRecorder::start(
            record,
            &options.listen,
            &options.framing,
        )?),
        None => None,
    };
    let listener = net::bind_blocking(&options.listen)?;
    let local = listener.local_addr().map_err(|source| Error::Bind {
        addr: options.listen.clone(),
        source,
    })?;
    eprintln!("listening on {local}");
    if let Some(recorder) = &mut recorder {
        recorder.listening(local);
        if options.verbosity >= Verbosity::Normal
            && let Some(record) = &options.record
        {
            eprintln!("recording to {}", record.path.display());
        }
    }
    let mut replies = io::stdin().lock().lines();
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        eprintln!("client {peer} connected");
        if let Some(recorder) = &mut recorder {
            recorder.connected(peer);
        }
        let mut connection =
            Connection::from_stream(stream, options.framing.clone(), options.max_frame)?;
        let stdout = io::stdout();
        let outcome = loop {
            // A person answers: no deadline on either side of the conversation.
            let message = match connection.recv_untimed() {
                Ok(Received::Message(m)) => m,
                Ok(Received::Closed) => break "closed by peer".to_string(),
                Ok(Received::TimedOut) => continue,
                Err(RecvError::Io(e)) => break format!("connection error: {e}"),
                Err(RecvError::Frame(e)) => break format!("bad framing: {e}"),
            };
            let _ = writeln!(
                stdout.lock(),
                "[{peer}] {}",
                message::display_line(&message)
            );
            if let Some(recorder) = &mut recorder {
                recorder.message(&message);
            }
            let reply = match replies.next() {
                Some(Ok(reply)) => reply,
                end => {
                    connection.close();
                    if !matches!(end, Some(Err(_))) {
                        eprintln!("client {peer}: end of input, stopping");
                    }
                    let saved = recorder.map_or(Ok(()), |r| r.finish(options.verbosity));
                    if let Some(Err(e)) = end {
                        return Err(Error::Usage(format!("cannot read stdin: {e}")));
                    }
                    return saved;
                }
            };
            // Saved before it is sent: whatever a client saw is in the file,
            // even if the session is killed the moment after.
            if let Some(recorder) = &mut recorder {
                recorder.replied(&reply);
            }
            if let Err(e) = connection.send(reply.as_bytes()) {
                break format!("connection error: {e}");
            }
            if reply == EXIT_WORD {
                break "closed after exit".to_string();
            }
        };
        connection.close();
        eprintln!("client {peer} {outcome}");
    }
}
