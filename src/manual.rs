//! Manual mode (no SCRIPT): the tutorial's two programs, minus the prompts.
//! The client sends each stdin line and prints what comes back; the server
//! prints what arrives and answers with the next stdin line. With
//! `--record FILE`, either one writes the session down as a script
//! (see `record`).

use std::io::{self, BufRead, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::ServerConfig;

use crate::client::connection::{Connection, FrameReader, Received, RecvError};
use crate::diagnostic::Diagnostic;
use crate::error::Error;
use crate::framing::Framing;
use crate::message;
use crate::net;
use crate::record::{ClientRecorder, RecordOptions, ServerRecorder};
use crate::tls;
use crate::transcript::Verbosity;

/// The word that ends a session, as in the tutorial.
const EXIT_WORD: &str = "exit";

#[derive(Debug, Clone)]
pub(crate) struct ManualClientOptions {
    pub(crate) connect: String,
    pub(crate) timeout: Duration,
    pub(crate) connect_retry: Option<Duration>,
    /// `--udp`: each line one datagram, each datagram back printed.
    pub(crate) udp: bool,
    pub(crate) framing: Framing,
    pub(crate) max_frame: usize,
    pub(crate) verbosity: Verbosity,
    /// `--record FILE`: write the session down as a script.
    pub(crate) record: Option<RecordOptions>,
    /// `--tls`: the session speaks TLS.
    pub(crate) tls: Option<tls::blocking::Client>,
}

/// While recording, how long the peer must stay quiet before what came back
/// counts as the whole answer. It only decides how messages are grouped into
/// blocks, and whether the peer closed before our input ended (so the script
/// ends with `expect_close()`); a replay waits on messages, never on this.
const RECORD_QUIET: Duration = Duration::from_millis(200);

/// Prints a received message on stdout: a text message line by line, a
/// binary one (or one with terminal controls in it) as hex, as the manual
/// server shows them. A peer's bytes never reach the terminal raw.
fn print_message(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    match std::str::from_utf8(bytes) {
        Ok(text) if message::is_text(bytes) => {
            let text = text.strip_suffix('\n').unwrap_or(text);
            for line in text.split('\n') {
                let line = line.strip_suffix('\r').unwrap_or(line);
                writeln!(out, "{}", message::escape_controls(line))?;
            }
        }
        _ => writeln!(out, "{}", message::display_line(bytes))?,
    }
    out.flush()
}

/// Why a manual client's session ended early, as an error with the exit
/// code of the same event in a scripted client: a peer that breaks the
/// framing sent something wrong (1, like a wrong reply); a connection that
/// fails is a network error (4).
fn session_error(addr: &str, error: RecvError) -> Error {
    match error {
        RecvError::Frame(e) => Error::Failed(Box::new(Diagnostic::new(format!(
            "the peer {addr} broke the framing: {e}"
        )))),
        RecvError::Io(e) => Error::Network(Box::new(Diagnostic::new(format!(
            "the connection to {addr} failed: {e}"
        )))),
    }
}

/// What the reader thread reports, as the main thread takes it in: the
/// order it is taken in is the order the recording keeps.
struct Arrivals {
    arrived: mpsc::Receiver<Result<Bytes, RecvError>>,
    recorder: Option<ClientRecorder>,
    addr: String,
    failure: Option<Error>,
    peer_closed: bool,
}

impl Arrivals {
    fn take(&mut self, result: Result<Bytes, RecvError>) {
        match result {
            Ok(message) => {
                if let Some(recorder) = &mut self.recorder {
                    recorder.received(message);
                }
            }
            Err(e) => {
                let error = session_error(&self.addr, e);
                self.failure.get_or_insert(error);
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
    let mut connection = if options.udp {
        Connection::connect_udp(&options.connect, options.framing.clone(), options.max_frame)?
    } else {
        Connection::connect(
            &options.connect,
            options.framing.clone(),
            options.max_frame,
            options.timeout,
            options.connect_retry,
            options.tls.as_ref(),
        )?
    };
    if options.verbosity >= Verbosity::Normal {
        let to = if options.udp {
            "sending to udp"
        } else {
            "connected to"
        };
        crate::console::err(&format!("{to} {}", connection.peer()));
        if let Some(record) = &options.record {
            crate::console::err(&format!("recording to {}", record.path.display()));
        }
    }
    let mut stream = connection.reader().map_err(|source| Error::System {
        action: "share the socket with the reader thread",
        source,
    })?;
    let framing = options.framing.clone();
    let max_frame = options.max_frame;
    let (arrived_tx, arrived) = mpsc::channel::<Result<Bytes, RecvError>>();
    let reader = thread::Builder::new().spawn(move || {
        let mut frames = FrameReader::new(framing, max_frame);
        let stdout = io::stdout();
        loop {
            match frames.next(&mut stream, None) {
                Ok(Received::Message(m)) => {
                    let _ = print_message(&mut stdout.lock(), &m);
                    if arrived_tx.send(Ok(m)).is_err() {
                        return;
                    }
                }
                Ok(Received::Closed) => return,
                Ok(Received::TimedOut) => {}
                Err(e) => {
                    let _ = arrived_tx.send(Err(e));
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
        addr: connection.peer().to_string(),
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
    let mut input = InputLines::new(io::stdin().lock(), options.max_frame);
    loop {
        let line = match input.next() {
            Input::Line(line) => line,
            Input::End => break,
            Input::Failed(e) => {
                input_error = Some(Error::Usage(format!("cannot read stdin: {e}")));
                break;
            }
        };
        // Whatever arrived before this line was sent is not its answer.
        session.drain();
        if session.stopped() {
            break;
        }
        match connection.send(line.as_bytes()) {
            Ok(()) => {}
            // Our own line cannot be framed (too long for a length prefix).
            Err(RecvError::Frame(e)) => {
                input_error = Some(Error::Usage(format!("cannot send that line: {e}")));
                break;
            }
            Err(e) => {
                session.failure = Some(session_error(&session.addr, e));
                break;
            }
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
        crate::console::err("connection closed by peer");
    }
    let saved = match session.recorder.take() {
        Some(mut recorder) => {
            if let Some(e) = &session.failure {
                recorder.failed(&e.to_string());
            }
            recorder.finish(options.verbosity)
        }
        None => Ok(()),
    };
    if let Some(e) = input_error {
        return Err(e);
    }
    match session.failure {
        Some(e) => Err(e),
        None => saved,
    }
}

/// One line of input, as typed.
enum Input {
    Line(String),
    End,
    Failed(io::Error),
}

/// Lines of input, each cut at `max` bytes (`--max-frame`): what is past
/// the cut is read and dropped, so a gigabyte without a newline is never
/// held whole. A cut is said on stderr.
struct InputLines<R> {
    input: R,
    max: usize,
}

impl<R: BufRead> InputLines<R> {
    fn new(input: R, max: usize) -> Self {
        InputLines { input, max }
    }

    fn next(&mut self) -> Input {
        let mut line = Vec::new();
        let mut total = 0usize;
        loop {
            let chunk = match self.input.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Input::Failed(e),
            };
            if chunk.is_empty() {
                // A last line without a newline is still a line.
                if total == 0 {
                    return Input::End;
                }
                break;
            }
            let (len, newline) = match memchr::memchr(b'\n', chunk) {
                Some(at) => (at, true),
                None => (chunk.len(), false),
            };
            let room = self.max.saturating_sub(line.len());
            line.extend_from_slice(&chunk[..len.min(room)]);
            total += len;
            self.input.consume(len + usize::from(newline));
            if newline {
                break;
            }
        }
        if total > self.max {
            crate::console::err(&format!(
                "a line of input of {total} bytes is longer than --max-frame: only its first {} bytes are used",
                self.max
            ));
            // Cut where a character ends, so the rest is still text.
            if let Err(e) = std::str::from_utf8(&line)
                && e.error_len().is_none()
            {
                line.truncate(e.valid_up_to());
            }
        } else if line.last() == Some(&b'\r') {
            line.pop();
        }
        match String::from_utf8(line) {
            Ok(line) => Input::Line(line),
            Err(_) => Input::Failed(io::Error::new(
                io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            )),
        }
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
    /// `--tls`: every client's session speaks TLS.
    pub(crate) tls: Option<tls::ServerSetup>,
}

/// The longest a client may take over its TLS handshake, as with a
/// scripted server: one that connects and says nothing must not keep the
/// clients after it waiting for ever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one client after another, as the tutorial does. Each received
/// message is printed with the peer's address and answered with the next
/// line of stdin; answering `exit` closes that client. The end of stdin,
/// once no typed reply is left, stops the server: at once when no client
/// is connected, else when the client's next message needs a reply.
pub(crate) fn server(options: &ManualServerOptions) -> Result<(), Error> {
    let mut recorder = start_recording(options)?;
    let listener = net::bind_blocking(&options.listen)?;
    let local = listener.local_addr().map_err(|source| Error::Bind {
        addr: options.listen.clone(),
        source,
    })?;
    crate::console::err(&format!("listening on {local}"));
    if let Some(tls) = &options.tls {
        crate::console::err(&format!("tls fingerprint SHA256 {}", tls.fingerprint));
    }
    recording_from(&mut recorder, local, options);
    let (idle_tx, idle) = mpsc::sync_channel::<Idle>(0);
    let mut replies = Replies::from_stdin(options.max_frame, idle_tx.clone());
    accept_in_background(
        listener,
        idle_tx,
        Handover {
            tls: options.tls.as_ref().map(|tls| tls.config.clone()),
            framing: options.framing.clone(),
            max_frame: options.max_frame,
        },
    );
    loop {
        let Some(mut connection) = next_client(&idle, &mut replies) else {
            let ended = replies.next();
            if matches!(ended, Input::End) {
                crate::console::err("end of input, stopping");
            }
            return stop(recorder, ended, options.verbosity);
        };
        let peer = connection.peer();
        crate::console::err(&format!("client {peer} connected"));
        if let Some(recorder) = &mut recorder {
            recorder.connected(peer);
        }
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
                Input::Line(reply) => reply,
                ended => {
                    connection.close();
                    if matches!(ended, Input::End) {
                        crate::console::err(&format!("client {peer}: end of input, stopping"));
                    }
                    return stop(recorder, ended, options.verbosity);
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
        crate::console::err(&format!("client {peer} {outcome}"));
    }
}

/// `server --udp` by hand: each datagram is printed with its sender's
/// address and answered, to that sender, with the next line of stdin (the
/// tutorial's server, over UDP). The end of stdin stops it: at once when
/// no datagram waits for a reply.
pub(crate) fn udp_server(options: &ManualServerOptions) -> Result<(), Error> {
    let mut recorder = start_recording(options)?;
    let socket = net::bind_udp_blocking(&options.listen)?;
    let local = socket.local_addr().map_err(|source| Error::Bind {
        addr: options.listen.clone(),
        source,
    })?;
    crate::console::err(&format!("listening on udp {local}"));
    recording_from(&mut recorder, local, options);
    // No client to hand over: the input thread's word that stdin ended
    // is not needed, as `exhausted` is looked at between waits.
    let (idle_tx, _) = mpsc::sync_channel::<Idle>(0);
    let mut replies = Replies::from_stdin(options.max_frame, idle_tx);
    // Short waits, so that the end of stdin is seen while no one sends.
    let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
    let stdout = io::stdout();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(received) => received,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if replies.exhausted() {
                    crate::console::err("end of input, stopping");
                    return stop(recorder, replies.next(), options.verbosity);
                }
                continue;
            }
            // An ICMP error for an earlier reply: that peer is gone.
            Err(e) => {
                crate::console::err(&format!("udp: {e}"));
                continue;
            }
        };
        let _ = writeln!(
            stdout.lock(),
            "[{peer}] {}",
            message::display_line(&buf[..n])
        );
        if let Some(recorder) = &mut recorder {
            recorder.datagram_from(peer);
            recorder.message(&buf[..n]);
        }
        let reply = match replies.next() {
            Input::Line(reply) => reply,
            ended => {
                if matches!(ended, Input::End) {
                    crate::console::err("end of input, stopping");
                }
                return stop(recorder, ended, options.verbosity);
            }
        };
        // Saved before it is sent, as over TCP.
        if let Some(recorder) = &mut recorder {
            recorder.replied(&reply);
        }
        let mut datagram = Vec::with_capacity(reply.len() + 1);
        if let Err(e) = crate::framing::encode(&options.framing, reply.as_bytes(), &mut datagram) {
            crate::console::err(&format!("reply not sent: {e}"));
            continue;
        }
        if let Err(e) = socket.send_to(&datagram, peer) {
            crate::console::err(&format!("reply to {peer} not sent: {e}"));
        }
    }
}

/// `--record FILE`: the manual server's recording, begun before it binds
/// so that an unwritable file stops it before any client is answered.
fn start_recording(options: &ManualServerOptions) -> Result<Option<ServerRecorder>, Error> {
    options
        .record
        .as_ref()
        .map(|record| ServerRecorder::start(record, &options.listen, &options.framing))
        .transpose()
}

/// The recording learns where the server listens, and says where it goes.
fn recording_from(
    recorder: &mut Option<ServerRecorder>,
    local: std::net::SocketAddr,
    options: &ManualServerOptions,
) {
    if let Some(recorder) = recorder {
        recorder.listening(local);
        if options.verbosity >= Verbosity::Normal
            && let Some(record) = &options.record
        {
            crate::console::err(&format!("recording to {}", record.path.display()));
        }
    }
}

/// Ends the manual server once its input has: the recording is saved,
/// and a read error is the command's error.
fn stop(recorder: Option<ServerRecorder>, ended: Input, verbosity: Verbosity) -> Result<(), Error> {
    let saved = recorder.map_or(Ok(()), |r| r.finish(verbosity));
    if let Input::Failed(e) = ended {
        return Err(Error::Usage(format!("cannot read stdin: {e}")));
    }
    saved
}

/// What the manual server waits for between clients.
enum Idle {
    /// Connected, and over TLS done with its handshake.
    Client(Box<Connection>),
    /// Stdin has ended (its lines may still be queued).
    InputEnded,
}

/// The next client, or `None` once stdin has ended with no reply left.
fn next_client(idle: &mpsc::Receiver<Idle>, replies: &mut Replies) -> Option<Box<Connection>> {
    loop {
        // The input thread queues its end before it says so here, so an
        // end is never missed between this look and the wait below.
        if replies.exhausted() {
            return None;
        }
        match idle.recv() {
            Ok(Idle::Client(connection)) => return Some(connection),
            Ok(Idle::InputEnded) => {}
            Err(_) => return None,
        }
    }
}

/// How the accepting thread makes a session of each client.
struct Handover {
    tls: Option<Arc<ServerConfig>>,
    framing: Framing,
    max_frame: usize,
}

impl Handover {
    /// The client's connection, over TLS once its handshake is done; a
    /// client that fails is said on stderr and never reaches the session.
    fn connection(&self, stream: TcpStream, peer: SocketAddr) -> Option<Connection> {
        let framing = self.framing.clone();
        let made = match &self.tls {
            None => Connection::from_stream(stream, framing, self.max_frame),
            Some(config) => tls::blocking::accept(config, stream, HANDSHAKE_TIMEOUT)
                .and_then(|tls| Connection::from_tls(tls, framing, self.max_frame)),
        };
        match made {
            Ok(connection) => Some(connection),
            // The same line as `server --tls` prints.
            Err(Error::Handshake { reason, .. }) => {
                crate::console::err(&format!("client {peer} TLS handshake failed: {reason}"));
                None
            }
            Err(e) => {
                crate::console::err(&format!("client {peer}: {e}"));
                None
            }
        }
    }
}

/// Accepts clients on a thread, handing over one at a time: the next one
/// waits, connected, until the current session ends, as in the tutorial.
/// Over TLS it shakes hands before the handover, so the client waiting
/// has its session, as a TLS client expects once connected.
fn accept_in_background(listener: TcpListener, idle: mpsc::SyncSender<Idle>, handover: Handover) {
    thread::spawn(move || {
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let Some(connection) = handover.connection(stream, peer) else {
                        continue;
                    };
                    if idle.send(Idle::Client(Box::new(connection))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    crate::console::err(&format!("accept failed: {e}"));
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    });
}

/// Typed replies queued ahead of the session: enough to paste a few.
const REPLY_QUEUE: usize = 16;

/// Stdin, read on its own thread into a short queue, so the server sees
/// its end while it waits for a client.
struct Replies {
    lines: mpsc::Receiver<Input>,
    /// Taken from the queue to look at, not used yet.
    peeked: Option<Input>,
}

impl Replies {
    fn from_stdin(max_frame: usize, idle: mpsc::SyncSender<Idle>) -> Self {
        let (lines_tx, lines) = mpsc::sync_channel(REPLY_QUEUE);
        thread::spawn(move || {
            let mut input = InputLines::new(io::stdin().lock(), max_frame);
            loop {
                let line = input.next();
                let last = !matches!(line, Input::Line(_));
                if lines_tx.send(line).is_err() {
                    return;
                }
                if last {
                    let _ = idle.send(Idle::InputEnded);
                    return;
                }
            }
        });
        Replies {
            lines,
            peeked: None,
        }
    }

    /// The next line, waiting for it.
    fn next(&mut self) -> Input {
        match self.peeked.take() {
            Some(input) => input,
            None => self.lines.recv().unwrap_or(Input::End),
        }
    }

    /// Whether input has ended with no reply left, without waiting.
    fn exhausted(&mut self) -> bool {
        if self.peeked.is_none() {
            match self.lines.try_recv() {
                Ok(input) => self.peeked = Some(input),
                Err(mpsc::TryRecvError::Empty) => return false,
                Err(mpsc::TryRecvError::Disconnected) => self.peeked = Some(Input::End),
            }
        }
        !matches!(self.peeked, Some(Input::Line(_)))
    }
}
