//! The socket of one server connection: messages cut out of what arrives,
//! replies framed and written with backpressure, and a close that does not
//! destroy replies still in flight. Every wait here gives way to the
//! server's hard stop. Written once for plain TCP and TLS alike: see
//! [`Transport`] for the little that differs.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::transport::{READ_SIZE, SCRATCH, Transport};

use super::ServerOptions;
use super::room::Inbox;
use super::shutdown::StopSignal;
use crate::framing::{self, Decoder, Frame, FrameError, Framing};
use crate::net;
use crate::transcript::{Direction, Transcript};

/// How long a closing connection keeps draining what the peer still sends,
/// so that closing with unread input does not reset our last replies.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// A write buffer grown past this by one big reply is given back.
const KEEP_WRITE_CAPACITY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    /// A hook failed; its error has been reported.
    #[error("closed after a script error")]
    HookFailed,
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error("bad framing from peer: {0}")]
    Frame(#[from] FrameError),
    #[error(
        "the peer read none of its replies for {}; closing (--idle-timeout)",
        humantime::format_duration(*.0)
    )]
    NotReading(Duration),
    /// The grace period of a shutdown ended while this connection waited.
    #[error("closed: the server stopped before this connection finished")]
    Stopped,
    #[error("starttls(): {0}")]
    StartTls(&'static str),
    /// Bytes that came in the clear after the go-ahead: read as if they
    /// came over TLS, they would let anyone in the middle speak for the
    /// peer (CVE-2011-0411 and its kin).
    #[error(
        "starttls(): {0} bytes arrived in the clear after the command, before the handshake; \
         closing rather than reading them as if they came over TLS (a STARTTLS injection?)"
    )]
    EarlyBytes(usize),
}

/// What woke a connection up.
pub(super) enum Event {
    Message(Option<Frame>),
    Broadcast(bytes::Bytes),
    Shutdown,
    Idle,
}

pub(super) struct ServerConnection<S> {
    stream: S,
    decoder: Decoder,
    framing: Framing,
    /// Received bytes not yet cut into a message.
    buf: BytesMut,
    /// Framed replies waiting to be written, reused between replies.
    out: Vec<u8>,
    /// How much of `out` is written already.
    out_sent: usize,
    eof: bool,
    /// Largest single read: a `raw` message never exceeds `--max-frame`.
    read_size: usize,
    /// How long a write may make no progress on a peer that does not read.
    write_timeout: Option<Duration>,
    pub(super) stop: StopSignal,
    pub(super) transcript: Transcript,
    pub(super) messages_in: u64,
    pub(super) messages_out: u64,
}

impl<S: Transport> ServerConnection<S> {
    pub(super) fn new(
        stream: S,
        peer: SocketAddr,
        options: &ServerOptions,
        stop: StopSignal,
    ) -> Self {
        let _ = stream.socket().set_nodelay(true);
        ServerConnection {
            stream,
            decoder: Decoder::new(options.framing.clone(), options.max_frame),
            framing: options.framing.clone(),
            buf: BytesMut::new(),
            out: Vec::new(),
            out_sent: 0,
            eof: false,
            read_size: options.max_frame.min(READ_SIZE),
            write_timeout: options.idle_timeout,
            stop,
            transcript: Transcript::new(options.verbosity, format!("{peer} ")),
            messages_in: 0,
            messages_out: 0,
        }
    }

    /// What to do next: a message (or the peer's end), a broadcast, the
    /// server stopping, or the idle limit. Input comes first, as the peer
    /// is the one waiting. One plain function rather than a `select!` over
    /// four futures made anew per message: the code a message runs through
    /// stays small enough to stay in the CPU's instruction cache.
    pub(super) fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
        inbox: Option<&mut Inbox>,
        idle: Option<Pin<&mut tokio::sync::futures::Notified<'_>>>,
    ) -> Poll<Result<Event, ConnError>> {
        loop {
            if let Some(frame) = self.decoder.next_frame(&mut self.buf)? {
                return Poll::Ready(Ok(Event::Message(Some(frame))));
            }
            if self.eof {
                let last = self.decoder.last_frame(&mut self.buf)?;
                return Poll::Ready(Ok(Event::Message(last)));
            }
            match self.poll_read_some(cx) {
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => break,
            }
        }
        // A closed inbox (the room gone) just never delivers again.
        if let Some(Poll::Ready(Some(message))) = inbox.map(|i| i.poll_recv(cx)) {
            return Poll::Ready(Ok(Event::Broadcast(message)));
        }
        if self.stop.poll_stopping(cx).is_ready() {
            return Poll::Ready(Ok(Event::Shutdown));
        }
        if idle.is_some_and(|idle| idle.poll(cx).is_ready()) {
            return Poll::Ready(Ok(Event::Idle));
        }
        Poll::Pending
    }

    /// Takes the stream out, keeping the rest (the buffers, the framing,
    /// the counts) for [`ServerConnection::over`].
    pub(super) fn detach(self) -> (S, ServerConnection<()>) {
        self.swap_stream(())
    }

    /// What `tls_info()` returns to this connection's hooks.
    pub(super) fn tls_info(&self) -> Option<rhai::Map> {
        self.stream.tls_info()
    }

    /// Hands a received message to `hook` straight from the read buffer,
    /// then drops it from there.
    pub(super) fn handle<T>(&mut self, frame: Frame, hook: impl FnOnce(&[u8]) -> T) -> T {
        let message = frame.message(&self.buf);
        self.messages_in += 1;
        self.transcript.record(Direction::Received, message);
        let result = hook(message);
        frame.consume(&mut self.buf);
        result
    }

    /// One read, appended to `buf`.
    fn poll_read_some(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match self
            .stream
            .poll_read_into(cx, &mut self.buf, self.read_size)
        {
            // TLS: a peer that closes without close_notify (Python's
            // `ssl`, many HTTP clients) has simply closed; a message it
            // cut short is still caught by the framing at the end.
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(0)),
            other => other,
        }
    }

    /// Frames a message into the write buffer. Hooks have checked that
    /// the framing can carry what they send.
    pub(super) fn queue(&mut self, message: &[u8]) -> Result<(), ConnError> {
        framing::encode(&self.framing, message, &mut self.out)?;
        self.messages_out += 1;
        self.transcript.record(Direction::Sent, message);
        Ok(())
    }

    /// Queues bytes as they are, no framing added.
    pub(super) fn queue_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
        self.messages_out += 1;
        self.transcript.record(Direction::Sent, bytes);
    }

    /// Cuts the rest of the stream, and frames later sends, with `framing`.
    pub(super) fn reframe(&mut self, framing: Framing) {
        self.decoder.reframe(framing.clone());
        self.framing = framing;
    }

    /// Whether the write buffer has grown past what it keeps between replies.
    pub(super) fn has_much_to_write(&self) -> bool {
        self.out.len() - self.out_sent > KEEP_WRITE_CAPACITY
    }

    /// A pause asked for by `sleep()`, cut short by the hard stop.
    pub(super) async fn pause(&mut self, pause: Duration) {
        if self.stop.is_hard() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = self.stop.hard() => {}
        }
    }

    /// Writes the pending replies. Memory stays bounded when the peer does
    /// not read: this waits, and the connection reads nothing more until
    /// the kernel's buffers drain. `--idle-timeout` gives up on a peer that
    /// takes none of the bytes for that long (a slow but steady reader is
    /// making progress and is not cut off), and the hard stop of a
    /// shutdown gives up at once, as does any write after it.
    pub(super) async fn flush(&mut self) -> Result<(), ConnError> {
        if self.write_now()? {
            return Ok(());
        }
        // Boxed, as every rarely taken wait of a connection: its task
        // holds room for its largest wait, and ten thousand idle
        // connections each hold one.
        Box::pin(self.flush_waiting()).await
    }

    /// Writes what the socket takes without waiting; true once all of it
    /// is written. Usually the socket takes it all at once: callers on the
    /// hot path try this first and build no future unless something is
    /// left.
    pub(super) fn write_now(&mut self) -> Result<bool, ConnError> {
        while self.out_sent < self.out.len() {
            match self.stream.write_now(&self.out[self.out_sent..]) {
                Ok(0) => break,
                Ok(n) => self.out_sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        if self.out_sent < self.out.len() {
            return Ok(false);
        }
        self.discard_output();
        // TLS records made of it may still wait for room in the socket.
        Ok(self.stream.flushed_now()?)
    }

    /// Forgets what is queued (written, or given up on).
    fn discard_output(&mut self) {
        self.out.clear();
        self.out_sent = 0;
        if self.out.capacity() > KEEP_WRITE_CAPACITY {
            self.out = Vec::new();
        }
    }

    /// [`ServerConnection::flush`] once [`ServerConnection::write_now`]
    /// has left something.
    #[cold]
    pub(super) async fn flush_waiting(&mut self) -> Result<(), ConnError> {
        while !self.write_now()? {
            if self.stop.is_hard() {
                self.discard_output();
                return Err(ConnError::Stopped);
            }
            let stalled = tokio::select! {
                ready = self.stream.socket().writable() => {
                    ready?;
                    false
                }
                _ = self.stop.hard() => {
                    self.discard_output();
                    return Err(ConnError::Stopped);
                }
                stalled = stall(self.stream.socket(), self.write_timeout) => stalled,
            };
            if stalled {
                return Err(ConnError::NotReading(
                    self.write_timeout.unwrap_or_default(),
                ));
            }
        }
        Ok(())
    }

    /// Sends our FIN (TLS: close_notify first), then drains briefly so
    /// unread input does not turn the close into a reset that could destroy
    /// replies still in flight.
    pub(super) async fn close(&mut self) {
        // Plain TCP shuts down at once; TLS may wait to write close_notify.
        tokio::select! {
            biased;
            _ = tokio::time::timeout(CLOSE_LINGER, self.stream.shutdown()) => {}
            _ = self.stop.hard() => {}
        }
        if self.eof || self.stop.is_hard() {
            return;
        }
        let stream = self.stream.socket();
        let drain = async {
            loop {
                if stream.readable().await.is_err() {
                    return;
                }
                let read = SCRATCH.with(|scratch| stream.try_read(&mut scratch.borrow_mut()));
                match read {
                    Ok(0) => return,
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => return,
                    _ => {}
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(CLOSE_LINGER, drain) => {}
            _ = self.stop.hard() => {}
        }
    }
}

impl<S> ServerConnection<S> {
    /// The same connection over `stream`, and the stream it had.
    fn swap_stream<T>(self, stream: T) -> (S, ServerConnection<T>) {
        let ServerConnection {
            stream: old,
            decoder,
            framing,
            buf,
            out,
            out_sent,
            eof,
            read_size,
            write_timeout,
            stop,
            transcript,
            messages_in,
            messages_out,
        } = self;
        let swapped = ServerConnection {
            stream,
            decoder,
            framing,
            buf,
            out,
            out_sent,
            eof,
            read_size,
            write_timeout,
            stop,
            transcript,
            messages_in,
            messages_out,
        };
        (old, swapped)
    }
}

impl ServerConnection<()> {
    /// Bytes received and not yet taken as a message.
    pub(super) fn unread(&self) -> usize {
        self.buf.len()
    }

    /// Carries on over `stream` (TLS, after `starttls()`), its framing
    /// starting afresh.
    pub(super) fn over<S: Transport>(mut self, stream: S) -> ServerConnection<S> {
        self.decoder.reset();
        self.swap_stream(stream).1
    }
}

/// Completes once the peer has taken none of our bytes for `limit` (never,
/// without one). The kernel's count of unacknowledged bytes shows progress
/// that writes cannot: a socket becomes writable again only once a third of
/// its buffer is free, which takes a slow reader seconds.
async fn stall(stream: &TcpStream, limit: Option<Duration>) -> bool {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    let look_every = (limit / 4).max(Duration::from_millis(10));
    let mut queued = net::unacknowledged_bytes(stream);
    let mut progress = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(look_every).await;
        let now_queued = net::unacknowledged_bytes(stream);
        if now_queued < queued {
            progress = tokio::time::Instant::now();
        }
        queued = now_queued;
        if progress.elapsed() >= limit {
            return true;
        }
    }
}
