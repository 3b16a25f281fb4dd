//! A blocking, framed TCP connection: what client scripts and manual mode
//! talk through. Every read has a deadline; nothing here waits forever.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::error::Error;
use crate::framing::{self, Decoder, FrameError, Framing};
use crate::net::resolve;

/// Bytes asked for per read. With `raw` framing this is the largest
/// message one read can deliver (the tutorial reads 1024).
const READ_SIZE: usize = 64 * 1024;

/// Pause between attempts while `--connect-retry` waits for a server.
pub(crate) const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The outcome of waiting for one message.
#[derive(Debug)]
pub(crate) enum Received {
    Message(Bytes),
    /// The peer closed its side and every message before that was read.
    Closed,
    TimedOut,
}

#[derive(Debug, Error)]
pub(crate) enum RecvError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
}

/// Cuts messages out of what a stream delivers.
#[derive(Debug)]
pub(crate) struct FrameReader {
    decoder: Decoder,
    buf: BytesMut,
    scratch: Vec<u8>,
    eof: bool,
    /// The socket's read timeout as last set: each receive starts with the
    /// same full timeout, so most receives need no `setsockopt` at all.
    read_timeout: Option<Option<Duration>>,
}

impl FrameReader {
    pub(crate) fn new(framing: Framing, max_frame: usize) -> Self {
        FrameReader {
            decoder: Decoder::new(framing, max_frame),
            buf: BytesMut::new(),
            // One read is one `raw` message: never more than --max-frame.
            scratch: vec![0; max_frame.min(READ_SIZE)],
            eof: false,
            read_timeout: None,
        }
    }

    /// The next message, waiting at most `timeout` (`None`: wait for ever,
    /// used only where a person is at the other end).
    pub(crate) fn next(
        &mut self,
        mut stream: &TcpStream,
        timeout: Option<Duration>,
    ) -> Result<Received, RecvError> {
        // A timeout too large for the clock (`--timeout 100y`) means no deadline.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        // Even a zero timeout (`try_recv()`) looks at what has already arrived.
        let mut first_read = true;
        loop {
            if let Some(message) = self.decoder.decode(&mut self.buf)? {
                return Ok(Received::Message(message));
            }
            if self.eof {
                return Ok(match self.decoder.decode_eof(&mut self.buf)? {
                    Some(message) => Received::Message(message),
                    None => Received::Closed,
                });
            }
            let wait = match (deadline, timeout) {
                // The first read waits the whole timeout: the same value
                // each time, so the socket option rarely needs setting.
                (Some(_), Some(timeout)) if first_read => {
                    Some(timeout.max(Duration::from_millis(1)))
                }
                (Some(deadline), _) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return Ok(Received::TimedOut);
                    }
                    Some(remaining.max(Duration::from_millis(1)))
                }
                (None, _) => None,
            };
            first_read = false;
            if self.read_timeout != Some(wait) {
                stream.set_read_timeout(wait)?;
                self.read_timeout = Some(wait);
            }
            match stream.read(&mut self.scratch) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&self.scratch[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(Received::TimedOut);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A connected, framed stream.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: TcpStream,
    reader: FrameReader,
    framing: Framing,
    peer: SocketAddr,
    /// Reused for every send so a conversation does not allocate per message.
    out: Vec<u8>,
}

impl Connection {
    /// Connects to `addr`; while `retry` lasts, a refused connect is tried again.
    pub(crate) fn connect(
        addr: &str,
        framing: Framing,
        max_frame: usize,
        timeout: Duration,
        retry: Option<Duration>,
    ) -> Result<Self, Error> {
        let targets = resolve(addr)?;
        let give_up = Instant::now() + retry.unwrap_or_default();
        loop {
            let mut last_error = None;
            for target in &targets {
                match TcpStream::connect_timeout(target, timeout) {
                    Ok(stream) => return Self::from_stream(stream, framing, max_frame),
                    Err(e) => last_error = Some(e),
                }
            }
            let error = last_error.expect("resolve returns at least one address");
            let retryable = matches!(
                error.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
            );
            if !retryable || Instant::now() + RETRY_PAUSE > give_up {
                return Err(Error::Connect {
                    addr: addr.to_string(),
                    source: error,
                });
            }
            std::thread::sleep(RETRY_PAUSE);
        }
    }

    pub(crate) fn from_stream(
        stream: TcpStream,
        framing: Framing,
        max_frame: usize,
    ) -> Result<Self, Error> {
        let peer = stream.peer_addr().map_err(|source| Error::Connect {
            addr: "peer".into(),
            source,
        })?;
        // Conversations are many small messages: never wait to coalesce them.
        let _ = stream.set_nodelay(true);
        Ok(Connection {
            reader: FrameReader::new(framing.clone(), max_frame),
            stream,
            framing,
            peer,
            out: Vec::new(),
        })
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub(crate) fn send(&mut self, message: &[u8]) -> Result<(), RecvError> {
        self.out.clear();
        framing::encode(&self.framing, message, &mut self.out)?;
        self.stream.write_all(&self.out)?;
        Ok(())
    }

    /// Bytes received that do not make a whole message yet.
    pub(crate) fn pending(&self) -> &[u8] {
        &self.reader.buf
    }

    pub(crate) fn recv(&mut self, timeout: Duration) -> Result<Received, RecvError> {
        self.reader.next(&self.stream, Some(timeout))
    }

    /// Waits with no deadline: only for a person at the other end.
    pub(crate) fn recv_untimed(&mut self) -> Result<Received, RecvError> {
        self.reader.next(&self.stream, None)
    }

    /// Ends our side (the peer reads end of stream) but keeps reading.
    pub(crate) fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    pub(crate) fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}
