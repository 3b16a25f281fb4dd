//! Manual mode (no SCRIPT): the tutorial's two programs, minus the prompts.
//! The client sends each stdin line and prints what comes back; the server
//! prints what arrives and answers with the next stdin line.

use std::io::{self, BufRead, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::connection::{Connection, FrameReader, Received, RecvError, resolve};
use crate::error::Error;
use crate::framing::Framing;
use crate::message;
use crate::transcript::Verbosity;

/// The word that ends a session, as in the tutorial.
const EXIT_WORD: &str = "exit";

#[derive(Debug, Clone)]
pub struct ManualClientOptions {
    pub connect: String,
    pub timeout: Duration,
    pub connect_retry: Option<Duration>,
    pub framing: Framing,
    pub max_frame: usize,
    pub verbosity: Verbosity,
}

/// Prints a received message on stdout, one per line.
fn print_message(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(bytes)?;
    if !bytes.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Sends stdin line by line. Like the tutorial, it waits for an answer
/// (up to `--timeout`) before sending the next line, so piped input keeps
/// the rhythm of a typed session even with `raw` framing. Messages that
/// arrive at other times, such as a greeting, are printed as they come.
pub fn client(options: &ManualClientOptions) -> Result<(), Error> {
    let mut connection = Connection::connect(
        &options.connect,
        options.framing.clone(),
        options.max_frame,
        options.timeout,
        options.connect_retry,
    )?;
    if options.verbosity >= Verbosity::Normal {
        eprintln!("connected to {}", connection.peer());
    }
    let stream = connection
        .stream()
        .try_clone()
        .map_err(|e| Error::Usage(format!("cannot share the socket: {e}")))?;
    let framing = options.framing.clone();
    let max_frame = options.max_frame;
    let (arrived_tx, arrived) = mpsc::channel::<Result<(), String>>();
    let reader = thread::spawn(move || {
        let mut frames = FrameReader::new(framing, max_frame);
        let stdout = io::stdout();
        loop {
            match frames.next(&stream, None) {
                Ok(Received::Message(m)) => {
                    let _ = print_message(&mut stdout.lock(), &m);
                    if arrived_tx.send(Ok(())).is_err() {
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

    let mut failure = None;
    let mut peer_closed = false;
    for line in io::stdin().lock().lines() {
        let line = line.map_err(|e| Error::Usage(format!("cannot read stdin: {e}")))?;
        // Whatever arrived before this line was sent is not its answer.
        while let Ok(result) = arrived.try_recv() {
            if let Err(e) = result {
                failure = Some(e);
            }
        }
        if failure.is_some() {
            break;
        }
        if let Err(e) = connection.send(line.as_bytes()) {
            failure = Some(e.to_string());
            break;
        }
        if line == EXIT_WORD {
            break;
        }
        match arrived.recv_timeout(options.timeout) {
            Ok(Ok(())) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(Err(e)) => {
                failure = Some(e);
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                peer_closed = true;
                break;
            }
        }
    }

    // Let the last answers arrive: wait for the peer to close, at most --timeout.
    connection.shutdown_write();
    let deadline = Instant::now() + options.timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match arrived.recv_timeout(remaining) {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => {
                failure.get_or_insert(e);
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                peer_closed = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break,
        }
    }
    connection.close();
    let _ = reader.join();
    if options.verbosity >= Verbosity::Normal && peer_closed {
        eprintln!("connection closed by peer");
    }
    match failure {
        Some(e) => Err(Error::Connect {
            addr: options.connect.clone(),
            source: io::Error::other(e),
        }),
        None => Ok(()),
    }
}

#[derive(Debug, Clone)]
pub struct ManualServerOptions {
    pub listen: String,
    pub framing: Framing,
    pub max_frame: usize,
    pub verbosity: Verbosity,
}

/// Serves one client after another, as the tutorial does. Each received
/// message is printed with the peer's address and answered with the next
/// line of stdin; answering `exit` closes that client, and the end of
/// stdin ends the server.
pub fn server(options: &ManualServerOptions) -> Result<(), Error> {
    let mut bound = Err(io::Error::other("no address"));
    for addr in resolve(&options.listen)? {
        bound = TcpListener::bind(addr);
        if bound.is_ok() {
            break;
        }
    }
    let listener = bound.map_err(|source| Error::Bind {
        addr: options.listen.clone(),
        source,
    })?;
    let local = listener.local_addr().map_err(|source| Error::Bind {
        addr: options.listen.clone(),
        source,
    })?;
    eprintln!("listening on {local}");
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
            let Some(reply) = replies.next() else {
                connection.close();
                eprintln!("client {peer}: end of input, stopping");
                return Ok(());
            };
            let reply = reply.map_err(|e| Error::Usage(format!("cannot read stdin: {e}")))?;
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
