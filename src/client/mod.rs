//! `tcpscript client SCRIPT`: a conversation written as a straight-line
//! script. Each script function blocks on the connection with a deadline,
//! so the script reads top to bottom like the conversation it checks.
//!
//! A script talks on one connection by default; `connect()` opens more
//! (a chat between several clients), each a `Connection` value with the
//! same functions as methods.

mod connect_options; // `connect(addr, options)`: one connection's TLS settings
pub(crate) mod connection; // blocking framed connection, also used by manual mode

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use regex::bytes::Regex;
use rhai::{
    Array, Blob, Dynamic, Engine, EvalAltResult, FLOAT, INT, Map, NativeCallContext, Position,
};
use serde_json::{Value, json};

use crate::client::connect_options::ConnectOptions;
use crate::client::connection::{Connection, RETRY_PAUSE, Received, RecvError, StartTlsError};
use crate::diagnostic::Diagnostic;
use crate::engine::{self, Failure, FailureKind, Limits, NativeResult, Params, Script};
use crate::error::Error;
use crate::framing::Framing;
use crate::message;
use crate::protocols::{self, ProtocolError, http, resp, smtp};
use crate::report::events::{TestEvents, message_fields};
use crate::tls;
use crate::transcript::{Direction, Transcript, Verbosity};

/// Everything `tcpscript client SCRIPT` needs, parsed from the command line.
#[derive(Debug, Clone)]
pub(crate) struct ClientOptions {
    pub(crate) script: PathBuf,
    pub(crate) connect: String,
    pub(crate) timeout: Duration,
    pub(crate) connect_retry: Option<Duration>,
    /// `--udp`: every connection is a connected UDP socket.
    pub(crate) udp: bool,
    /// From `--framing`; `None` leaves it to the script, then `line`
    /// (over UDP: the whole datagram).
    pub(crate) framing: Option<Framing>,
    pub(crate) max_frame: usize,
    pub(crate) params: Params,
    pub(crate) verbosity: Verbosity,
    pub(crate) limits: Limits,
    /// `--case-timeout`: how long one run may take in all; `None`: no limit.
    pub(crate) case_timeout: Option<Duration>,
    /// `--tls`: every connection of a run speaks TLS, `connect()`'s too.
    pub(crate) tls: Option<tls::blocking::Client>,
    /// What `starttls()` upgrades with: the same TLS flags, `--tls` or not.
    pub(crate) starttls: Arc<tls::blocking::Deferred>,
    /// The `--tls-*` flags, with or without `--tls`: what
    /// `connect(addr, options)` changes for its connection.
    pub(crate) tls_flags: Arc<tls::ClientTls>,
}

/// What a passing conversation did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Summary {
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) elapsed: Duration,
}

/// One run of a conversation, passed or not, with what was said.
#[derive(Debug)]
pub(crate) struct Conversed {
    pub(crate) result: Result<Summary, Error>,
    /// The kept part of the transcript, formatted.
    pub(crate) transcript: Vec<String>,
    pub(crate) elapsed: Duration,
    /// Each TLS handshake's time, apart from the conversation (load mode).
    pub(crate) handshakes: Vec<Duration>,
}

/// A compiled client script and an engine to run it, as many times as
/// wanted: each run is a fresh conversation on fresh connections. Clones
/// share the engine and the compiled script, so that load mode's users
/// cost a thread each, not an engine each: the script functions find their
/// conversation through [`CURRENT`], never through the engine.
#[derive(Clone)]
pub(crate) struct ClientScript {
    program: Arc<Program>,
}

struct Program {
    engine: Engine,
    script: Script,
    framing: Framing,
    options: ClientOptions,
    patterns: Patterns,
}

thread_local! {
    /// The conversation the script functions act on: a run stays on the
    /// thread that started it, and one engine serves many threads.
    static CURRENT: RefCell<Option<Arc<Conversation>>> = const { RefCell::new(None) };
}

/// The conversation running on this thread.
fn current() -> Option<Arc<Conversation>> {
    CURRENT.with_borrow(Clone::clone)
}

impl ClientScript {
    pub(crate) fn load(options: &ClientOptions) -> Result<Self, Error> {
        let script_dir = options.script.parent().map(|p| p.to_path_buf());
        let mut engine = engine::new_engine(
            &options.limits,
            options.params.clone(),
            script_dir.as_deref(),
        );
        let script = engine::compile(&engine, &options.script)?;
        let framing = match &options.framing {
            Some(framing) => framing.clone(),
            None => script
                .declared_framing(options.max_frame)?
                .unwrap_or(crate::cli::default_framing(options.udp)),
        };
        // Rhai keeps one progress callback: the native stack, a failure
        // waiting to be raised (print to a closed stdout), the time limit.
        engine.on_progress(move |operations| {
            match crate::stack::poll() {
                crate::stack::Poll::Go => {}
                crate::stack::Poll::Stop(too_deep) => return Some(too_deep),
                crate::stack::Poll::Look => {
                    if let Some(failure) = engine::take_pending_failure() {
                        return Some(failure);
                    }
                }
            }
            past_deadline(operations)
        });
        register(&mut engine);
        Ok(ClientScript {
            program: Arc::new(Program {
                engine,
                script,
                framing,
                options: options.clone(),
                patterns: Patterns::default(),
            }),
        })
    }

    /// Connects and runs the conversation; `keep` is how many messages of
    /// the transcript to keep for the outcome.
    pub(crate) fn run(&self, events: Option<TestEvents>, keep: usize) -> Conversed {
        let program = &*self.program;
        let started = Instant::now();
        let conversation = Arc::new(Conversation {
            deadline: program
                .options
                .case_timeout
                .and_then(|limit| Deadline::after(started, limit)),
            addr: program.options.connect.clone(),
            timeout: program.options.timeout,
            connect_retry: program.options.connect_retry,
            udp: program.options.udp,
            framing: program.framing.clone(),
            max_frame: program.options.max_frame,
            tls: program.options.tls.clone(),
            starttls: program.options.starttls.clone(),
            tls_flags: program.options.tls_flags.clone(),
            log: Mutex::new(Log {
                transcript: Transcript::keeping(keep, program.options.verbosity, String::new()),
                sent: 0,
                received: 0,
                opened: 0,
                handshakes: Vec::new(),
            }),
            patterns: program.patterns.clone(),
            events: events.clone(),
            default: Arc::new(Mutex::new(PeerState::closed())),
        });
        let result = conversation
            .open_default()
            .and_then(|()| self.converse(&conversation, events));
        let mut log = lock(&conversation.log);
        let result = result.map(|()| Summary {
            sent: log.sent,
            received: log.received,
            elapsed: started.elapsed(),
        });
        Conversed {
            result,
            transcript: log.transcript.all(),
            elapsed: started.elapsed(),
            handshakes: std::mem::take(&mut log.handshakes),
        }
    }

    fn converse(
        &self,
        conversation: &Arc<Conversation>,
        events: Option<TestEvents>,
    ) -> Result<(), Error> {
        let program = &*self.program;
        CURRENT.set(Some(conversation.clone()));
        let outcome = engine::with_events(events, || program.engine.run_ast(&program.script.ast));
        CURRENT.set(None);
        conversation.close_all();
        outcome.map_err(|err| {
            let mut error = engine::diagnose(&err, &program.script, None);
            if let Some(diagnostic) = error.diagnostic_mut() {
                // Reports of every case are kept until the run ends.
                diagnostic.bound();
                diagnostic.transcript = lock(&conversation.log).transcript.recent();
            }
            error
        })
    }
}

/// When a run must end (`--case-timeout`).
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    limit: Duration,
}

impl Deadline {
    /// `None` when the limit is beyond the clock's reach (`100y`): no limit.
    fn after(start: Instant, limit: Duration) -> Option<Self> {
        Some(Deadline {
            at: start.checked_add(limit)?,
            limit,
        })
    }

    fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    fn message(&self) -> String {
        format!(
            "the conversation ran longer than its time limit of {} (see --case-timeout)",
            humantime::format_duration(self.limit)
        )
    }

    /// Ends the script wherever it is: a termination, unlike a runtime
    /// error, cannot be caught by `try`, and Rhai gives it the position
    /// of the call that was waiting.
    fn terminate(&self) -> Box<EvalAltResult> {
        Box::new(EvalAltResult::ErrorTerminated(
            Dynamic::from(self.message()),
            Position::NONE,
        ))
    }
}

/// The time limit of a run, checked from Rhai's progress callback: a
/// script that loops without waiting is stopped here, and every wait is
/// cut to the time left by the function that waits.
fn past_deadline(operations: u64) -> Option<Dynamic> {
    // Reading the clock costs more than an operation: look every 1024
    // operations, as the server's hooks do.
    if !operations.is_multiple_of(1024) {
        return None;
    }
    let deadline = CURRENT.with_borrow(|c| c.as_ref().map(|c| c.deadline))??;
    deadline
        .remaining()
        .is_zero()
        .then(|| Dynamic::from(deadline.message()))
}

/// What the connections of one run share.
struct Conversation {
    deadline: Option<Deadline>,
    addr: String,
    timeout: Duration,
    connect_retry: Option<Duration>,
    udp: bool,
    framing: Framing,
    max_frame: usize,
    tls: Option<tls::blocking::Client>,
    starttls: Arc<tls::blocking::Deferred>,
    tls_flags: Arc<tls::ClientTls>,
    log: Mutex<Log>,
    /// Compiled `expect` patterns: a pattern in a loop, or in every run of
    /// load mode's users, is compiled once.
    patterns: Patterns,
    events: Option<TestEvents>,
    /// The connection made before the script starts.
    default: Arc<Mutex<PeerState>>,
}

struct Log {
    transcript: Transcript,
    sent: u64,
    received: u64,
    /// Connections opened so far, to number the next one.
    opened: usize,
    handshakes: Vec<Duration>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic cannot happen while these locks are held; never make it fatal.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn millis(ms: INT) -> Duration {
    Duration::from_millis(ms.max(0) as u64)
}

/// Compiled `expect` patterns, by pattern, shared by every run of a script.
type Patterns = Arc<Mutex<HashMap<String, Regex>>>;

/// Compiled `expect` patterns kept.
const PATTERNS_KEPT: usize = 256;

/// Bytes of a partly received message shown when a receive times out.
const PENDING_SHOWN: usize = 64;

/// `sleep(ms)`, no longer than the run's time left.
fn pause(wanted: Duration) -> NativeResult<()> {
    let (wait, cut) = match current() {
        Some(conversation) => conversation.clamp(wanted),
        None => (wanted, None),
    };
    std::thread::sleep(wait);
    match cut {
        Some(deadline) => Err(deadline.terminate()),
        None => Ok(()),
    }
}

impl Conversation {
    fn emit(&self, event: &str, fields: Value) {
        if let Some(events) = &self.events {
            events.emit(event, fields);
        }
    }

    /// The compiled `pattern`, compiled once per run.
    fn regex(&self, pattern: &str) -> NativeResult<Regex> {
        let mut patterns = lock(&self.patterns);
        if let Some(regex) = patterns.get(pattern) {
            return Ok(regex.clone());
        }
        let regex = Regex::new(pattern)
            .map_err(|e| Failure::script(format!("invalid regular expression: {e}")))?;
        // A script that builds patterns from what it receives must not
        // grow this for ever.
        if patterns.len() >= PATTERNS_KEPT {
            patterns.clear();
        }
        patterns.insert(pattern.to_string(), regex.clone());
        Ok(regex)
    }

    /// `wait` cut to the time left, and the deadline when that cut it.
    fn clamp(&self, wait: Duration) -> (Duration, Option<Deadline>) {
        match self.deadline {
            Some(deadline) => {
                let remaining = deadline.remaining();
                (wait.min(remaining), (remaining < wait).then_some(deadline))
            }
            None => (wait, None),
        }
    }

    /// The deadline, when a failed connect ran into it: its retries give
    /// up a pause short of the time left.
    fn over_time(&self) -> Option<Deadline> {
        self.deadline.filter(|d| d.remaining() <= RETRY_PAUSE)
    }

    fn open_default(self: &Arc<Self>) -> Result<(), Error> {
        let state = self
            .open(&self.addr, &ConnectTls::default())
            .map_err(|error| match self.over_time() {
                Some(deadline) => Error::Script(Box::new(
                    Diagnostic::new(deadline.message())
                        .with_note(format!("while connecting to {}", self.addr)),
                )),
                None => error,
            })?;
        *lock(&self.default) = state;
        Ok(())
    }

    /// A new connection, numbered; the default one is unlabelled. The
    /// connect and its retries wait no longer than the time left.
    fn open(&self, addr: &str, tls: &ConnectTls) -> Result<PeerState, Error> {
        let (timeout, _) = self.clamp(self.timeout);
        let connection = if self.udp {
            Connection::connect_udp(addr, self.framing.clone(), self.max_frame)?
        } else {
            self.connect_tcp(addr, tls, timeout)?
        };
        let number = {
            let mut log = lock(&self.log);
            log.opened += 1;
            log.handshakes.extend(connection.handshake_time());
            log.opened
        };
        self.emit(
            "connect",
            json!({ "connection": number, "addr": connection.peer().to_string() }),
        );
        Ok(PeerState {
            connection: Some(connection),
            addr: Arc::from(addr),
            head_sent: false,
            label: (number > 1).then(|| Arc::from(format!("#{number}"))),
            number,
            starttls: tls.later.clone(),
        })
    }

    fn connect_tcp(
        &self,
        addr: &str,
        tls: &ConnectTls,
        timeout: Duration,
    ) -> Result<Connection, Error> {
        // A zero wait is refused by `connect_timeout`.
        Connection::connect(
            addr,
            self.framing.clone(),
            self.max_frame,
            timeout.max(Duration::from_millis(1)),
            self.connect_retry.map(|retry| self.clamp(retry).0),
            tls.now
                .as_ref()
                .or(if tls.own { None } else { self.tls.as_ref() }),
        )
    }

    /// The TLS of `connect(addr, options)`, now and for a later
    /// `starttls()`. Bad options, or files they name that cannot be used,
    /// are the script's mistake.
    fn tls_for(&self, options: &Map) -> NativeResult<ConnectTls> {
        let options = ConnectOptions::parse(options).map_err(Failure::script)?;
        let failed = |e: tls::TlsError| Failure::script(format!("connect(): {e}"));
        Ok(ConnectTls {
            own: true,
            now: options
                .client(self.tls.as_ref(), &self.tls_flags)
                .map_err(failed)?,
            later: options.later(&self.tls_flags).map_err(failed)?,
        })
    }

    fn default_peer(self: &Arc<Self>) -> Peer {
        Peer {
            conversation: self.clone(),
            state: self.default.clone(),
        }
    }

    fn close_all(&self) {
        if let Some(mut connection) = lock(&self.default).connection.take() {
            connection.shutdown_write();
        }
    }

    fn record(&self, state: &PeerState, direction: Direction, bytes: &Bytes) {
        let mut log = lock(&self.log);
        match direction {
            Direction::Sent => log.sent += 1,
            Direction::Received => log.received += 1,
        }
        log.transcript
            .record_on(state.label.as_ref(), direction, bytes);
        drop(log);
        if self.events.is_some() {
            let mut fields = message_fields(bytes);
            fields.insert("connection".into(), json!(state.number));
            let kind = match direction {
                Direction::Sent => "sent",
                Direction::Received => "received",
            };
            self.emit(kind, Value::Object(fields));
        }
    }
}

/// One connection of a conversation, as scripts see it (`Connection`).
#[derive(Clone)]
pub(crate) struct Peer {
    conversation: Arc<Conversation>,
    state: Arc<Mutex<PeerState>>,
}

/// The TLS of one connection: what it speaks from the start (`None`:
/// plain TCP, or the command's `--tls` unless `own`), and what a later
/// `starttls()` uses (`None`: the command's).
#[derive(Default)]
struct ConnectTls {
    own: bool,
    now: Option<tls::blocking::Client>,
    later: Option<tls::blocking::Client>,
}

struct PeerState {
    /// `None` once the script called `close()`.
    connection: Option<Connection>,
    /// The address as the script or `--connect` gave it: an HTTP request's Host.
    addr: Arc<str>,
    /// The last request `send_http` sent was a HEAD: its reply has no body.
    head_sent: bool,
    /// `#2`, `#3`... in the transcript; the default connection has none.
    label: Option<Arc<str>>,
    number: usize,
    /// What `starttls()` upgrades with, when `connect(addr, options)`
    /// changed it; `None`: the command's TLS flags.
    starttls: Option<tls::blocking::Client>,
}

impl PeerState {
    fn closed() -> Self {
        PeerState {
            connection: None,
            addr: Arc::from(""),
            head_sent: false,
            label: None,
            number: 0,
            starttls: None,
        }
    }

    fn connection(&mut self) -> NativeResult<&mut Connection> {
        self.connection.as_mut().ok_or_else(|| {
            Failure::script("the connection is closed: close() was already called").into()
        })
    }
}

impl Peer {
    fn send(&mut self, value: Dynamic) -> NativeResult<()> {
        let bytes = message::to_bytes(value);
        let mut state = lock(&self.state);
        match state.connection()?.send(&bytes) {
            Ok(()) => {
                self.conversation.record(&state, Direction::Sent, &bytes);
                Ok(())
            }
            Err(RecvError::Frame(e)) => Err(Failure::script(format!("cannot send: {e}")).into()),
            Err(RecvError::Io(e)) => {
                Err(Failure::new(FailureKind::Network, format!("cannot send: {e}")).into())
            }
        }
    }

    /// Waits with `read`, recording what it took. A wait is cut to the
    /// run's time left, and then the run ends.
    fn receive_with<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        read: impl FnOnce(&mut Connection, Duration) -> Result<Received<T>, RecvError>,
        bytes_of: impl Fn(&T) -> &Bytes,
    ) -> NativeResult<Received<T>> {
        let (wait, cut) = self.conversation.clamp(timeout);
        let mut state = lock(&self.state);
        let received = read(state.connection()?, wait);
        match received {
            Ok(Received::Message(m)) => {
                self.conversation
                    .record(&state, Direction::Received, bytes_of(&m));
                Ok(Received::Message(m))
            }
            Ok(Received::TimedOut) => match cut {
                Some(deadline) => Err(deadline.terminate()),
                None => Ok(Received::TimedOut),
            },
            Ok(Received::Closed) => Ok(Received::Closed),
            Err(RecvError::Io(e)) => Err(Failure::new(
                FailureKind::Network,
                format!("connection error while waiting for {what}: {e}"),
            )
            .into()),
            Err(RecvError::Frame(e)) => Err(Failure::expectation(format!(
                "the peer broke the framing while we waited for {what}: {e}"
            ))
            .into()),
        }
    }

    fn receive(&mut self, timeout: Duration, what: &str) -> NativeResult<Received> {
        self.receive_with(timeout, what, |c, wait| c.recv(wait), |m| m)
    }

    /// The next message, or `None` when the wait timed out or the peer closed.
    fn try_receive(&mut self, timeout: Duration) -> NativeResult<Option<Bytes>> {
        match self.receive(timeout, "a message")? {
            Received::Message(m) => Ok(Some(m)),
            Received::Closed | Received::TimedOut => Ok(None),
        }
    }

    /// The next message; a timeout or a close is a failed expectation.
    fn expect_message(&mut self, timeout: Duration, what: &str) -> NativeResult<Bytes> {
        self.expect_with(timeout, what, None, |c, wait| c.recv(wait), |m| m)
    }

    /// What `read` waits for; a timeout or a close is a failed
    /// expectation that shows the bytes that did arrive. `missing` says
    /// what they lack; `None`: the rest of a framed message.
    fn expect_with<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        missing: Option<&str>,
        read: impl FnOnce(&mut Connection, Duration) -> Result<Received<T>, RecvError>,
        bytes_of: impl Fn(&T) -> &Bytes,
    ) -> NativeResult<T> {
        match self.receive_with(timeout, what, read, bytes_of)? {
            Received::Message(m) => Ok(m),
            Received::Closed => Err(Failure::expectation(format!(
                "expected {what}, but the peer closed the connection"
            ))
            .with_values(
                what.to_string(),
                match self.pending(missing) {
                    Some(pending) => format!("the connection closed after {pending}"),
                    None => "the connection closed".into(),
                },
            )
            .into()),
            Received::TimedOut => {
                let waited = humantime::format_duration(timeout);
                Err(match self.pending(missing) {
                    Some(pending) => Failure::expectation(format!(
                        "timed out after {waited} waiting for {what}: only part of {} arrived",
                        if missing.is_none() { "one" } else { "it" }
                    ))
                    .with_values(what.to_string(), pending),
                    None => {
                        Failure::expectation(format!("timed out after {waited} waiting for {what}"))
                            .with_values(what.to_string(), "nothing arrived".into())
                    }
                }
                .into())
            }
        }
    }

    /// Bytes received and not yet read, described for a report:
    /// `12 bytes without a line end: "HTTP/1.1 200"`.
    fn pending(&self, missing: Option<&str>) -> Option<String> {
        let state = lock(&self.state);
        let connection = state.connection.as_ref()?;
        let pending = connection.pending();
        if pending.is_empty() {
            return None;
        }
        let missing = match (missing, connection.framing()) {
            (Some(missing), _) => missing.to_string(),
            (None, Framing::Line) => "without a line end".to_string(),
            (None, framing @ Framing::Delim(_)) => format!("without its delimiter ({framing})"),
            (None, Framing::Len { .. }) => {
                "of a length-prefixed frame not yet complete".to_string()
            }
            (None, framing @ Framing::Fixed(_)) => format!("of a {framing} message"),
            (None, Framing::Resp) => "of a RESP value not yet complete".to_string(),
            (None, Framing::Http) => "of an HTTP message not yet complete".to_string(),
            (None, Framing::Raw) => "not yet delivered".to_string(),
        };
        let head = message::head(pending, PENDING_SHOWN);
        let cut = if head.len() < pending.len() {
            "…"
        } else {
            ""
        };
        Some(format!(
            "{} {missing}: {}{cut}",
            message::byte_count(pending.len()),
            message::display(head)
        ))
    }

    fn recv(&mut self, timeout: Option<Duration>) -> NativeResult<Dynamic> {
        let timeout = timeout.unwrap_or(self.conversation.timeout);
        Ok(message::to_dynamic(
            &self.expect_message(timeout, "a message")?,
        ))
    }

    fn recv_blob(&mut self, timeout: Option<Duration>) -> NativeResult<Blob> {
        let timeout = timeout.unwrap_or(self.conversation.timeout);
        Ok(self.expect_message(timeout, "a message")?.to_vec())
    }

    fn try_recv(&mut self, timeout: Duration) -> NativeResult<Dynamic> {
        Ok(self
            .try_receive(timeout)?
            .map_or(Dynamic::UNIT, |m| message::to_dynamic(&m)))
    }

    fn expect(
        &mut self,
        ctx: &NativeCallContext,
        pattern: &str,
        timeout: Option<Duration>,
    ) -> NativeResult<Array> {
        let timeout = timeout.unwrap_or(self.conversation.timeout);
        let regex = self.conversation.regex(pattern)?;
        let what = format!("a message matching /{pattern}/");
        let message = self.expect_message(timeout, &what)?;
        let matched = regex.captures(&message).map(|captures| {
            captures
                .iter()
                .map(|group| group.map_or(Dynamic::UNIT, |g| message::to_dynamic(g.as_bytes())))
                .collect()
        });
        engine::note_assertion(ctx, "expect", matched.is_some());
        matched.ok_or_else(|| {
            Failure::expectation(format!("expected {what}"))
                .with_values(format!("/{pattern}/"), message::display(&message))
                .into()
        })
    }

    fn timeout(&self, ms: Option<INT>) -> Duration {
        ms.map_or(self.conversation.timeout, millis)
    }

    fn send_raw(&mut self, value: Dynamic) -> NativeResult<()> {
        let bytes = message::to_bytes(value);
        let mut state = lock(&self.state);
        match state.connection()?.send_raw(&bytes) {
            Ok(()) => {
                self.conversation.record(&state, Direction::Sent, &bytes);
                Ok(())
            }
            Err(RecvError::Frame(e)) => Err(Failure::script(format!("cannot send: {e}")).into()),
            Err(e) => Err(Failure::new(FailureKind::Network, format!("cannot send: {e}")).into()),
        }
    }

    fn set_framing(&mut self, framing: &str) -> NativeResult<()> {
        let framing = framing
            .parse::<Framing>()
            .and_then(|f| f.check_max_frame(self.conversation.max_frame).map(|()| f))
            .map_err(|e| Failure::script(format!("set_framing: {e}")))?;
        lock(&self.state).connection()?.set_framing(framing);
        Ok(())
    }

    fn recv_exact(&mut self, n: INT, ms: Option<INT>) -> NativeResult<Dynamic> {
        let max_frame = self.conversation.max_frame;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= max_frame)
            .ok_or_else(|| {
                Failure::script(format!(
                    "recv_exact({n}): the size must be from 0 to --max-frame ({max_frame} bytes)"
                ))
            })?;
        let timeout = self.timeout(ms);
        let what = message::byte_count(n);
        let missing = format!("of the {what} asked for");
        let bytes = self.expect_with(
            timeout,
            &what,
            Some(&missing),
            |c, wait| c.recv_exact(n, wait),
            |m| m,
        )?;
        Ok(message::to_dynamic(&bytes))
    }

    fn recv_until(&mut self, seq: Dynamic, ms: Option<INT>) -> NativeResult<Dynamic> {
        let seq = message::to_bytes(seq);
        if seq.is_empty() {
            return Err(Failure::script("recv_until: the sequence to wait for is empty").into());
        }
        let timeout = self.timeout(ms);
        let what = format!("bytes up to {}", message::display(&seq));
        let missing = format!("without {}", message::display(&seq));
        let bytes = self.expect_with(
            timeout,
            &what,
            Some(&missing),
            |c, wait| c.recv_until(&seq, wait),
            |m| m,
        )?;
        Ok(message::to_dynamic(&bytes))
    }

    fn recv_line(&mut self, ms: Option<INT>) -> NativeResult<Dynamic> {
        let timeout = self.timeout(ms);
        let line = self.expect_with(
            timeout,
            "a line",
            Some("without a line end"),
            |c, wait| c.recv_until(b"\n", wait),
            |m| m,
        )?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        Ok(message::to_dynamic(line))
    }

    fn expect_stream(
        &mut self,
        ctx: &NativeCallContext,
        pattern: &str,
        ms: Option<INT>,
    ) -> NativeResult<Array> {
        let timeout = self.timeout(ms);
        let regex = self.conversation.regex(pattern)?;
        let what = format!("bytes matching /{pattern}/");
        let outcome = self.expect_with(
            timeout,
            &what,
            Some("with no match"),
            |c, wait| c.recv_match(&regex, wait),
            |(bytes, _)| bytes,
        );
        engine::note_assertion(ctx, "expect_stream", outcome.is_ok());
        let (bytes, groups) = outcome?;
        Ok(groups
            .into_iter()
            .map(|group| group.map_or(Dynamic::UNIT, |g| message::to_dynamic(&bytes[g])))
            .collect())
    }

    /// One whole message of a protocol, measured by `len` from the bytes
    /// at the front (with --max-frame, and whether the peer closed).
    fn recv_protocol(
        &mut self,
        ms: Option<INT>,
        what: &str,
        mut len: impl FnMut(&[u8], bool, usize) -> Result<Option<usize>, ProtocolError>,
    ) -> NativeResult<Bytes> {
        let timeout = self.timeout(ms);
        let missing = format!("of {what} not yet complete");
        self.expect_with(
            timeout,
            what,
            Some(&missing),
            |c, wait| {
                let max = c.max_frame();
                c.recv_parsed(wait, |buf, eof| len(buf, eof, max))
            },
            |m| m,
        )
    }

    fn recv_resp(&mut self, ctx: &NativeCallContext, ms: Option<INT>) -> NativeResult<Dynamic> {
        let bytes =
            self.recv_protocol(ms, "a RESP value", |buf, _, max| resp::frame_len(buf, max))?;
        protocols::decode_resp("recv_resp", ctx, &bytes)
    }

    fn recv_smtp(&mut self, ms: Option<INT>) -> NativeResult<Map> {
        let bytes =
            self.recv_protocol(ms, "an SMTP reply", |buf, _, max| smtp::reply_len(buf, max))?;
        smtp::parse_reply(&bytes).map_err(|e| protocols::peer("recv_smtp", &e))
    }

    fn recv_http(&mut self, ms: Option<INT>) -> NativeResult<Map> {
        let head = std::mem::take(&mut lock(&self.state).head_sent);
        let mut resume = http::Resume::default();
        let bytes = self.recv_protocol(ms, "an HTTP response", |buf, eof, max| {
            http::response_len_resuming(buf, eof, max, head, &mut resume)
        })?;
        http::parse_response(&bytes).map_err(|e| protocols::peer("recv_http", &e))
    }

    /// A request with Host (the address connected to) and Content-Length
    /// filled in, unless `headers` has them.
    fn send_http(
        &mut self,
        method: &str,
        path: &str,
        headers: &Map,
        body: Dynamic,
    ) -> NativeResult<()> {
        let host = {
            let mut state = lock(&self.state);
            state.head_sent = method.eq_ignore_ascii_case("HEAD");
            state.addr.clone()
        };
        let request = protocols::http_request(method, path, &host, headers, body)?;
        self.send_raw(Dynamic::from_blob(request))
    }

    fn expect_close(
        &mut self,
        ctx: &NativeCallContext,
        timeout: Option<Duration>,
    ) -> NativeResult<()> {
        if self.conversation.udp {
            return Err(Failure::script(
                "expect_close() means nothing over UDP: a peer never closes, it falls silent; \
                 check for silence with `assert_eq(try_recv(ms), ())`",
            )
            .into());
        }
        let timeout = timeout.unwrap_or(self.conversation.timeout);
        let read = |c: &mut Connection, wait| match c.recv(wait) {
            // A peer that closes with bytes of ours unread (a last message
            // sent as it closed) resets rather than closes: it closed all
            // the same, and what it sent before is already taken.
            Err(RecvError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                Ok(Received::Closed)
            }
            other => other,
        };
        let outcome = match self.receive_with(timeout, "the connection to close", read, |m| m)? {
            Received::Closed => Ok(()),
            Received::Message(m) => Err(Failure::expectation(
                "expected the peer to close the connection, but a message arrived",
            )
            .with_values("the connection closed".into(), message::display(&m))),
            Received::TimedOut => Err(Failure::expectation(format!(
                "expected the peer to close the connection, but it stayed open for {}",
                humantime::format_duration(timeout)
            ))
            .with_values(
                "the connection closed".into(),
                match self.pending(None) {
                    Some(pending) => format!("still open, with {pending}"),
                    None => "still open".into(),
                },
            )),
        };
        engine::note_assertion(ctx, "expect_close", outcome.is_ok());
        outcome.map_err(Into::into)
    }

    fn close(&mut self) {
        if let Some(mut connection) = lock(&self.state).connection.take() {
            connection.close();
        }
    }

    /// `tls_info()`: what the handshake settled, `()` on plain TCP.
    /// `starttls()`: the rest of this connection speaks TLS.
    fn starttls(&mut self) -> NativeResult<()> {
        if self.conversation.udp {
            return Err(Failure::script(
                "starttls() upgrades a TCP connection, and --udp has none",
            )
            .into());
        }
        let network = |message: String| Failure::new(FailureKind::Network, message);
        let (wait, cut) = self.conversation.clamp(self.conversation.timeout);
        let mut state = lock(&self.state);
        let own = state.starttls.clone();
        let tls = match &own {
            Some(own) => own,
            None => self
                .conversation
                .starttls
                .get()
                .map_err(|e| network(format!("starttls(): {e}")))?,
        };
        let addr = state.addr.clone();
        let connection = state.connection()?;
        match connection.starttls(tls, &addr, wait.max(Duration::from_millis(1))) {
            Ok(()) => {}
            Err(StartTlsError::AlreadyTls) => {
                return Err(
                    Failure::script("starttls(): the connection already speaks TLS").into(),
                );
            }
            Err(StartTlsError::Handshake(_)) if cut.is_some() => {
                return Err(cut.expect("checked").terminate());
            }
            Err(e) => return Err(network(format!("starttls(): {e}")).into()),
        }
        // Load mode reports handshakes apart from the conversation.
        let handshake = connection.handshake_time();
        lock(&self.conversation.log).handshakes.extend(handshake);
        Ok(())
    }

    fn tls_info(&mut self) -> NativeResult<Dynamic> {
        let mut state = lock(&self.state);
        Ok(state
            .connection()?
            .tls_info()
            .map_or(Dynamic::UNIT, Dynamic::from_map))
    }

    fn describe(&mut self) -> String {
        let state = lock(&self.state);
        match &state.connection {
            Some(connection) => format!("connection #{} to {}", state.number, connection.peer()),
            None => format!("connection #{} (closed)", state.number),
        }
    }
}

/// Registers a conversation function twice: as a method of `Connection`
/// values, and as a global function acting on the default connection.
/// `ctx` first when the function needs the call's context.
macro_rules! conversation_fn {
    ($engine:ident, $default:ident, $name:literal, ctx $ctx:ident, |$p:ident $(, $arg:ident : $ty:ty)*| $body:expr) => {{
        $engine.register_fn(
            $name,
            |$ctx: NativeCallContext, $p: &mut Peer $(, $arg: $ty)*| $body,
        );
        let default = $default.clone();
        $engine.register_fn($name, move |$ctx: NativeCallContext $(, $arg: $ty)*| {
            let $p = &mut default()?;
            $body
        });
    }};
    ($engine:ident, $default:ident, $name:literal, |$p:ident $(, $arg:ident : $ty:ty)*| $body:expr) => {{
        $engine.register_fn($name, |$p: &mut Peer $(, $arg: $ty)*| $body);
        let default = $default.clone();
        $engine.register_fn($name, move |$($arg: $ty),*| {
            let $p = &mut default()?;
            $body
        });
    }};
}

/// The conversation functions. Global ones act on the default connection;
/// the same names are methods of `Connection` values from `connect()`.
fn register(engine: &mut Engine) {
    engine
        .register_type_with_name::<Peer>("Connection")
        .register_fn("to_string", Peer::describe);

    // The default connection, for the global forms.
    let default = || -> NativeResult<Peer> {
        current()
            .as_ref()
            .map(Conversation::default_peer)
            .ok_or_else(|| Failure::script("no conversation is running").into())
    };

    conversation_fn!(engine, default, "send", |p, value: Dynamic| p.send(value));
    conversation_fn!(engine, default, "send_raw", |p, value: Dynamic| p
        .send_raw(value));
    conversation_fn!(engine, default, "set_framing", |p, framing: &str| p
        .set_framing(framing));
    conversation_fn!(engine, default, "recv", |p| p.recv(None));
    conversation_fn!(engine, default, "recv", |p, ms: INT| p
        .recv(Some(millis(ms))));
    conversation_fn!(engine, default, "recv_blob", |p| p.recv_blob(None));
    conversation_fn!(engine, default, "recv_blob", |p, ms: INT| p
        .recv_blob(Some(millis(ms))));
    conversation_fn!(engine, default, "try_recv", |p| p.try_recv(Duration::ZERO));
    conversation_fn!(engine, default, "try_recv", |p, ms: INT| p
        .try_recv(millis(ms)));
    conversation_fn!(engine, default, "recv_exact", |p, n: INT| p
        .recv_exact(n, None));
    conversation_fn!(engine, default, "recv_exact", |p, n: INT, ms: INT| p
        .recv_exact(n, Some(ms)));
    conversation_fn!(engine, default, "recv_until", |p, seq: Dynamic| p
        .recv_until(seq, None));
    conversation_fn!(engine, default, "recv_until", |p, seq: Dynamic, ms: INT| p
        .recv_until(seq, Some(ms)));
    conversation_fn!(engine, default, "recv_line", |p| p.recv_line(None));
    conversation_fn!(engine, default, "recv_line", |p, ms: INT| p
        .recv_line(Some(ms)));
    conversation_fn!(engine, default, "expect", ctx ctx, |p, pattern: &str| p
        .expect(&ctx, pattern, None));
    conversation_fn!(engine, default, "expect", ctx ctx, |p, pattern: &str, ms: INT| p
        .expect(&ctx, pattern, Some(millis(ms))));
    conversation_fn!(engine, default, "expect_stream", ctx ctx, |p, pattern: &str| p
        .expect_stream(&ctx, pattern, None));
    conversation_fn!(engine, default, "expect_stream", ctx ctx, |p, pattern: &str, ms: INT| p
        .expect_stream(&ctx, pattern, Some(ms)));
    conversation_fn!(engine, default, "expect_close", ctx ctx, |p| p
        .expect_close(&ctx, None));
    conversation_fn!(engine, default, "expect_close", ctx ctx, |p, ms: INT| p
        .expect_close(&ctx, Some(millis(ms))));
    conversation_fn!(engine, default, "recv_resp", ctx ctx, |p| p.recv_resp(&ctx, None));
    conversation_fn!(engine, default, "recv_resp", ctx ctx, |p, ms: INT| p
        .recv_resp(&ctx, Some(ms)));
    conversation_fn!(engine, default, "recv_smtp", |p| p.recv_smtp(None));
    conversation_fn!(engine, default, "recv_smtp", |p, ms: INT| p
        .recv_smtp(Some(ms)));
    conversation_fn!(engine, default, "recv_http", |p| p.recv_http(None));
    conversation_fn!(engine, default, "recv_http", |p, ms: INT| p
        .recv_http(Some(ms)));
    conversation_fn!(
        engine,
        default,
        "send_http",
        |p, method: &str, path: &str| p.send_http(method, path, &Map::new(), Dynamic::from(""))
    );
    conversation_fn!(
        engine,
        default,
        "send_http",
        |p, method: &str, path: &str, headers: Map, body: Dynamic| p
            .send_http(method, path, &headers, body)
    );
    conversation_fn!(engine, default, "tls_info", |p| p.tls_info());
    conversation_fn!(engine, default, "starttls", |p| p.starttls());
    conversation_fn!(engine, default, "close", |p| {
        p.close();
        NativeResult::Ok(())
    });

    let open = |addr: Option<&str>, options: Option<Map>| -> NativeResult<Peer> {
        let conversation =
            current().ok_or_else(|| Failure::script("no conversation is running"))?;
        let addr = addr.unwrap_or(&conversation.addr).to_string();
        if conversation.udp && options.is_some() {
            return Err(Failure::script(
                "connect(addr, options): the options set up TLS, and --udp speaks no TLS",
            )
            .into());
        }
        let tls = match options {
            Some(options) => conversation.tls_for(&options)?,
            None => ConnectTls::default(),
        };
        let state =
            conversation
                .open(&addr, &tls)
                .map_err(|e| match (conversation.over_time(), e) {
                    (Some(deadline), _) => deadline.terminate(),
                    // An address that is no address never reached the network:
                    // the script's mistake, as the same one by `--connect` is
                    // the command line's.
                    (None, e @ crate::error::Error::Usage(_)) => {
                        Failure::script(e.to_string()).into()
                    }
                    (None, e) => Failure::new(FailureKind::Network, e.to_string()).into(),
                })?;
        Ok(Peer {
            conversation,
            state: Arc::new(Mutex::new(state)),
        })
    };
    engine.register_fn("connect", move || open(None, None));
    engine.register_fn("connect", move |addr: &str| open(Some(addr), None));
    engine.register_fn("connect", move |addr: &str, options: Map| {
        open(Some(addr), Some(options))
    });

    // Rhai's own `sleep` takes seconds and knows no time limit; a float
    // is milliseconds here too.
    engine.register_fn("sleep", |ms: INT| pause(millis(ms)));
    engine.register_fn("sleep", |ms: FLOAT| {
        let pause_for = Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(if ms > 0.0 {
            Duration::MAX
        } else {
            Duration::ZERO
        });
        pause(pause_for)
    });
    engine.register_fn("log", |value: Dynamic| {
        if let Some(conversation) = current() {
            lock(&conversation.log)
                .transcript
                .log(&crate::stack::display(&value));
        }
    });
}
