//! `tcpscript client SCRIPT`: a conversation written as a straight-line
//! script. Each script function blocks on the connection with a deadline,
//! so the script reads top to bottom like the conversation it checks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use regex::bytes::Regex;
use rhai::{Array, Blob, Dynamic, Engine, INT};

use crate::connection::{Connection, Received, RecvError};
use crate::engine::{self, Failure, FailureKind, Limits, NativeResult, Params};
use crate::error::Error;
use crate::framing::Framing;
use crate::message;
use crate::transcript::{Direction, Transcript, Verbosity};

/// Everything `tcpscript client SCRIPT` needs, parsed from the command line.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub script: PathBuf,
    pub connect: String,
    pub timeout: Duration,
    pub connect_retry: Option<Duration>,
    /// From `--framing`; `None` leaves it to the script, then `line`.
    pub framing: Option<Framing>,
    pub max_frame: usize,
    pub params: Params,
    pub verbosity: Verbosity,
    pub limits: Limits,
}

/// What a passing conversation did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub sent: u64,
    pub received: u64,
    pub elapsed: Duration,
}

/// Compiles the script, connects, and runs the conversation.
pub fn run(options: &ClientOptions) -> Result<Summary, Error> {
    let script_dir = options.script.parent().map(|p| p.to_path_buf());
    let mut engine = engine::new_engine(
        &options.limits,
        options.params.clone(),
        script_dir.as_deref(),
    );
    let script = engine::compile(&engine, &options.script)?;
    let framing = match &options.framing {
        Some(framing) => framing.clone(),
        None => script.declared_framing()?.unwrap_or(Framing::Line),
    };
    let started = Instant::now();
    let connection = Connection::connect(
        &options.connect,
        framing,
        options.max_frame,
        options.timeout,
        options.connect_retry,
    )?;
    let session = Arc::new(Mutex::new(Session {
        connection: Some(connection),
        timeout: options.timeout,
        transcript: Transcript::new(options.verbosity, String::new()),
        patterns: HashMap::new(),
        sent: 0,
        received: 0,
    }));
    register(&mut engine, &session);

    let outcome = engine.run_ast(&script.ast);
    let mut session = lock(&session);
    if let Some(connection) = session.connection.take() {
        connection.shutdown_write();
    }
    match outcome {
        Ok(()) => Ok(Summary {
            sent: session.sent,
            received: session.received,
            elapsed: started.elapsed(),
        }),
        Err(err) => {
            let mut error = engine::diagnose(&err, &script, None);
            if let Some(diagnostic) = error.diagnostic_mut() {
                diagnostic.transcript = session.transcript.recent();
            }
            Err(error)
        }
    }
}

/// The state script functions share: one conversation.
struct Session {
    /// `None` once the script called `close()`.
    connection: Option<Connection>,
    timeout: Duration,
    transcript: Transcript,
    /// Compiled `expect` patterns: a pattern in a loop is compiled once.
    patterns: HashMap<String, Regex>,
    sent: u64,
    received: u64,
}

type Shared = Arc<Mutex<Session>>;

fn lock(session: &Shared) -> MutexGuard<'_, Session> {
    // A panic cannot happen while the lock is held, but never make it fatal.
    session
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn millis(ms: INT) -> Duration {
    Duration::from_millis(ms.max(0) as u64)
}

impl Session {
    fn connection(&mut self) -> NativeResult<&mut Connection> {
        self.connection.as_mut().ok_or_else(|| {
            Failure::script("the connection is closed: close() was already called").into()
        })
    }

    fn send(&mut self, value: Dynamic) -> NativeResult<()> {
        let bytes = message::to_bytes(value);
        match self.connection()?.send(&bytes) {
            Ok(()) => {
                self.sent += 1;
                self.transcript.record(Direction::Sent, &bytes);
                Ok(())
            }
            Err(RecvError::Frame(e)) => Err(Failure::script(format!("cannot send: {e}")).into()),
            Err(RecvError::Io(e)) => {
                Err(Failure::new(FailureKind::Network, format!("cannot send: {e}")).into())
            }
        }
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
        match self.receive(timeout, what)? {
            Received::Message(m) => Ok(m),
            Received::Closed => Err(Failure::expectation(format!(
                "expected {what}, but the peer closed the connection"
            ))
            .with_values(what.to_string(), "the connection closed".into())
            .into()),
            Received::TimedOut => Err(Failure::expectation(format!(
                "timed out after {} waiting for {what}",
                humantime::format_duration(timeout)
            ))
            .with_values(what.to_string(), "nothing arrived".into())
            .into()),
        }
    }

    fn receive(&mut self, timeout: Duration, what: &str) -> NativeResult<Received> {
        let received = self.connection()?.recv(timeout);
        match received {
            Ok(Received::Message(m)) => {
                self.received += 1;
                self.transcript.record(Direction::Received, &m);
                Ok(Received::Message(m))
            }
            Ok(other) => Ok(other),
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

    fn expect(&mut self, pattern: &str, timeout: Duration) -> NativeResult<Array> {
        let regex = match self.patterns.get(pattern) {
            Some(regex) => regex.clone(),
            None => {
                let regex = Regex::new(pattern)
                    .map_err(|e| Failure::script(format!("invalid regular expression: {e}")))?;
                self.patterns.insert(pattern.to_string(), regex.clone());
                regex
            }
        };
        let what = format!("a message matching /{pattern}/");
        let message = self.expect_message(timeout, &what)?;
        match regex.captures(&message) {
            Some(captures) => Ok(captures
                .iter()
                .map(|group| group.map_or(Dynamic::UNIT, |g| message::to_dynamic(g.as_bytes())))
                .collect()),
            None => Err(Failure::expectation(format!("expected {what}"))
                .with_values(format!("/{pattern}/"), message::display(&message))
                .into()),
        }
    }

    fn expect_close(&mut self, timeout: Duration) -> NativeResult<()> {
        match self.receive(timeout, "the connection to close")? {
            Received::Closed => Ok(()),
            Received::Message(m) => Err(Failure::expectation(
                "expected the peer to close the connection, but a message arrived",
            )
            .with_values("the connection closed".into(), message::display(&m))
            .into()),
            Received::TimedOut => Err(Failure::expectation(format!(
                "expected the peer to close the connection, but it stayed open for {}",
                humantime::format_duration(timeout)
            ))
            .with_values("the connection closed".into(), "still open".into())
            .into()),
        }
    }
}

/// The conversation functions, bound to this run's session.
fn register(engine: &mut Engine, session: &Shared) {
    let s = session.clone();
    engine.register_fn("send", move |value: Dynamic| lock(&s).send(value));

    let s = session.clone();
    engine.register_fn("recv", move || -> NativeResult<Dynamic> {
        let mut session = lock(&s);
        let timeout = session.timeout;
        Ok(message::to_dynamic(
            &session.expect_message(timeout, "a message")?,
        ))
    });
    let s = session.clone();
    engine.register_fn("recv", move |ms: INT| -> NativeResult<Dynamic> {
        Ok(message::to_dynamic(
            &lock(&s).expect_message(millis(ms), "a message")?,
        ))
    });
    let s = session.clone();
    engine.register_fn("recv_blob", move || -> NativeResult<Blob> {
        let mut session = lock(&s);
        let timeout = session.timeout;
        Ok(session.expect_message(timeout, "a message")?.to_vec())
    });
    let s = session.clone();
    engine.register_fn("recv_blob", move |ms: INT| -> NativeResult<Blob> {
        Ok(lock(&s).expect_message(millis(ms), "a message")?.to_vec())
    });
    let s = session.clone();
    engine.register_fn("try_recv", move |ms: INT| -> NativeResult<Dynamic> {
        Ok(lock(&s)
            .try_receive(millis(ms))?
            .map_or(Dynamic::UNIT, |m| message::to_dynamic(&m)))
    });
    let s = session.clone();
    engine.register_fn("try_recv", move || -> NativeResult<Dynamic> {
        Ok(lock(&s)
            .try_receive(Duration::ZERO)?
            .map_or(Dynamic::UNIT, |m| message::to_dynamic(&m)))
    });

    let s = session.clone();
    engine.register_fn("expect", move |pattern: &str| -> NativeResult<Array> {
        let mut session = lock(&s);
        let timeout = session.timeout;
        session.expect(pattern, timeout)
    });
    let s = session.clone();
    engine.register_fn("expect", move |pattern: &str, ms: INT| {
        lock(&s).expect(pattern, millis(ms))
    });
    let s = session.clone();
    engine.register_fn("expect_close", move || -> NativeResult<()> {
        let mut session = lock(&s);
        let timeout = session.timeout;
        session.expect_close(timeout)
    });
    let s = session.clone();
    engine.register_fn("expect_close", move |ms: INT| {
        lock(&s).expect_close(millis(ms))
    });

    let s = session.clone();
    engine.register_fn("close", move || {
        if let Some(connection) = lock(&s).connection.take() {
            connection.close();
        }
    });
    engine.register_fn("sleep", |ms: INT| std::thread::sleep(millis(ms)));
    let s = session.clone();
    engine.register_fn("log", move |value: Dynamic| {
        lock(&s).transcript.log(&value.to_string());
    });
}
