//! A blocking, framed TCP connection: what client scripts and manual mode
//! talk through; or, with `--udp`, a connected UDP socket behind the same
//! functions. Every read has a deadline; nothing here waits forever.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use regex::bytes::Regex;
use thiserror::Error;

use crate::error::Error;
use crate::framing::{self, DatagramLimit, Decoder, FrameError, Framing};
use crate::net::resolve;
use crate::protocols::ProtocolError;
use crate::tls::{self, blocking::TlsStream};

/// Bytes asked for per read. With `raw` framing this is the largest
/// message one read can deliver (the tutorial reads 1024).
const READ_SIZE: usize = 64 * 1024;

thread_local! {
    /// What reads land in before they join a connection's buffer: one per
    /// thread, allocated once and kept. A load-mode user is a thread, and
    /// with a buffer per connection each of ten thousand users would hold
    /// 64 KiB written over with zeros again at every conversation; a kept
    /// one is touched only as far as reads reach.
    static READ_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's read buffer, `len` bytes of it. `f` must not
/// read through another connection.
fn with_read_buffer<T>(len: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
    READ_BUFFER.with_borrow_mut(|buffer| {
        if buffer.len() < len {
            *buffer = vec![0; len];
        }
        f(&mut buffer[..len])
    })
}

/// Pause between attempts while `--connect-retry` waits for a server.
pub(crate) const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The outcome of waiting for one message.
#[derive(Debug)]
pub(crate) enum Received<T = Bytes> {
    Message(T),
    /// The peer closed its side and every message before that was read.
    Closed,
    TimedOut,
}

/// Why `starttls()` could not upgrade the connection.
#[derive(Debug, Error)]
pub(crate) enum StartTlsError {
    #[error("the connection already speaks TLS")]
    AlreadyTls,
    #[error(
        "{0} bytes arrived after the go-ahead and before the TLS handshake; \
         refusing to read them as if they came over TLS (a STARTTLS injection?)"
    )]
    Early(usize),
    #[error("{0}")]
    Io(io::Error),
    #[error(transparent)]
    Handshake(#[from] Error),
}

#[derive(Debug, Error)]
pub(crate) enum RecvError {
    #[error("{0}")]
    Io(io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
}

impl From<io::Error> for RecvError {
    /// A datagram too large for a stream read is refused inside `Read`,
    /// so it comes as an `io::Error`; it is still the peer breaking the
    /// framing (a failed expectation), not the network failing.
    fn from(e: io::Error) -> Self {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<FrameError>())
        {
            Some(frame) => RecvError::Frame(frame.clone()),
            None => RecvError::Io(e),
        }
    }
}

/// The bytes a match consumed, and where its groups lie in them.
pub(crate) type Matched = (Bytes, Vec<Option<Range<usize>>>);

/// What a stream read (`recv_until`, `expect_stream`) found at the front
/// of the buffer: the bytes it takes, and how far it consumed.
pub(crate) struct Taken<T> {
    pub(crate) value: T,
    pub(crate) consumed: usize,
}

/// Cuts messages out of what a stream delivers. Framed receives and stream
/// reads take from the same buffer, so mixing them never loses, repeats or
/// reorders a byte.
#[derive(Debug)]
pub(crate) struct FrameReader {
    decoder: Decoder,
    max_frame: usize,
    buf: BytesMut,
    eof: bool,
    /// The socket's read timeout as last set: each receive starts with the
    /// same full timeout, so most receives need no `setsockopt` at all.
    read_timeout: Option<Option<Duration>>,
}

impl FrameReader {
    pub(crate) fn new(framing: Framing, max_frame: usize) -> Self {
        FrameReader {
            decoder: Decoder::new(framing, max_frame),
            max_frame,
            buf: BytesMut::new(),
            eof: false,
            read_timeout: None,
        }
    }

    /// Cuts what follows with `framing`; bytes already here are its start.
    pub(crate) fn reframe(&mut self, framing: Framing) {
        self.decoder.reframe(framing);
    }

    /// Starts over on a new byte stream (after STARTTLS), same framing.
    fn restart(&mut self) {
        self.decoder.reset();
        self.eof = false;
    }

    /// The next message, waiting at most `timeout` (`None`: wait for ever,
    /// used only where a person is at the other end).
    pub(crate) fn next(
        &mut self,
        stream: &mut impl Source,
        timeout: Option<Duration>,
    ) -> Result<Received, RecvError> {
        self.read(stream, timeout, |decoder, buf, eof| {
            Ok(match eof {
                false => decoder.decode(buf)?,
                true => decoder.decode_eof(buf)?,
            })
        })
    }

    /// Exactly `n` bytes, whatever the framing.
    pub(crate) fn exact(
        &mut self,
        stream: &mut impl Source,
        n: usize,
        timeout: Duration,
    ) -> Result<Received, RecvError> {
        check_size(n, self.max_frame)?;
        self.take(stream, timeout, 0, |buf| {
            (buf.len() >= n).then_some(Taken {
                value: n,
                consumed: n,
            })
        })
        .map(|received| match received {
            Received::Message((bytes, _)) => Received::Message(bytes),
            Received::Closed => Received::Closed,
            Received::TimedOut => Received::TimedOut,
        })
    }

    /// The bytes before the first `seq`, which is consumed too.
    pub(crate) fn until(
        &mut self,
        stream: &mut impl Source,
        seq: &[u8],
        timeout: Duration,
    ) -> Result<Received, RecvError> {
        let finder = memchr::memmem::Finder::new(seq);
        // Bytes already known to hold no `seq`: a long message arriving in
        // pieces is searched once.
        let mut scanned = 0usize;
        let received = self.take(stream, timeout, seq.len(), |buf| {
            let start = scanned.saturating_sub(seq.len().saturating_sub(1));
            match finder.find(&buf[start..]) {
                Some(at) => Some(Taken {
                    value: start + at,
                    consumed: start + at + seq.len(),
                }),
                None => {
                    scanned = buf.len();
                    None
                }
            }
        })?;
        Ok(match received {
            Received::Message((bytes, end)) => Received::Message(bytes.slice(..end)),
            Received::Closed => Received::Closed,
            Received::TimedOut => Received::TimedOut,
        })
    }

    /// The first match of `regex` in the unread bytes, and everything
    /// before it: consumed through the end of the match.
    pub(crate) fn matching(
        &mut self,
        stream: &mut impl Source,
        regex: &Regex,
        timeout: Duration,
    ) -> Result<Received<Matched>, RecvError> {
        let mut locations = regex.capture_locations();
        self.take(stream, timeout, 0, |buf| {
            let whole = regex.captures_read(&mut locations, buf)?;
            let groups = (0..locations.len())
                .map(|i| locations.get(i).map(|(start, end)| start..end))
                .collect::<Vec<_>>();
            Some(Taken {
                value: groups,
                consumed: whole.end(),
            })
        })
    }

    /// One whole message of a protocol, its length told by `len` from the
    /// bytes at the front (and whether the peer has closed).
    pub(crate) fn parsed(
        &mut self,
        stream: &mut impl Source,
        timeout: Duration,
        mut len: impl FnMut(&[u8], bool) -> Result<Option<usize>, ProtocolError>,
    ) -> Result<Received, RecvError> {
        self.read(stream, Some(timeout), |decoder, buf, eof| {
            let Some(n) = len(buf, eof).map_err(FrameError::from)? else {
                return Ok(None);
            };
            decoder.reset();
            Ok(Some(buf.split_to(n).freeze()))
        })
    }

    /// Waits until `find` finds what it looks for at the front of the
    /// buffer, then takes the bytes it consumed. Looking never holds more
    /// than --max-frame unread bytes, and `slack` for a terminator.
    fn take<T>(
        &mut self,
        stream: &mut impl Source,
        timeout: Duration,
        slack: usize,
        mut find: impl FnMut(&[u8]) -> Option<Taken<T>>,
    ) -> Result<Received<(Bytes, T)>, RecvError> {
        let limit = self.max_frame.saturating_add(slack);
        let max_frame = self.max_frame;
        self.read(stream, Some(timeout), |decoder, buf, _eof| {
            if let Some(Taken { value, consumed }) = find(buf) {
                // The end may come in the read that also took the bytes
                // past the limit: what it ends is too large all the same.
                if consumed > limit {
                    return Err(FrameError::TooLarge {
                        size: consumed - slack,
                        max: max_frame,
                    }
                    .into());
                }
                // The decoder had searched bytes that are now gone.
                decoder.reset();
                return Ok(Some((buf.split_to(consumed).freeze(), value)));
            }
            if buf.len() > limit {
                return Err(FrameError::TooLarge {
                    size: buf.len() - slack,
                    max: max_frame,
                }
                .into());
            }
            Ok(None)
        })
    }

    /// Reads until `cut` cuts something out of the buffer, the peer closes
    /// (then `cut` has a last look, told so) or `timeout` passes.
    fn read<T>(
        &mut self,
        stream: &mut impl Source,
        timeout: Option<Duration>,
        mut cut: impl FnMut(&mut Decoder, &mut BytesMut, bool) -> Result<Option<T>, RecvError>,
    ) -> Result<Received<T>, RecvError> {
        // A timeout too large for the clock (`--timeout 100y`) means no deadline.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        // Even a zero timeout (`try_recv()`) looks at what has already arrived.
        let mut first_read = true;
        loop {
            if let Some(found) = cut(&mut self.decoder, &mut self.buf, false)? {
                return Ok(Received::Message(found));
            }
            if self.eof {
                return Ok(match cut(&mut self.decoder, &mut self.buf, true)? {
                    Some(found) => Received::Message(found),
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
            // One read is one `raw` message: never more than --max-frame.
            let read: io::Result<usize> =
                with_read_buffer(self.max_frame.min(READ_SIZE), |scratch| {
                    let n = stream.read(scratch)?;
                    self.buf.extend_from_slice(&scratch[..n]);
                    Ok(n)
                });
            match read {
                Ok(0) => self.eof = true,
                Ok(_) => {}
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

fn check_size(size: usize, max_frame: usize) -> Result<(), FrameError> {
    if size > max_frame {
        return Err(FrameError::TooLarge {
            size,
            max: max_frame,
        });
    }
    Ok(())
}

/// What a framed read reads from: a byte stream whose reads can be given
/// a deadline.
pub(crate) trait Source: Read {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()>;
}

impl Source for TcpStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
}

impl<S: Source + ?Sized> Source for Box<S> {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        (**self).set_read_timeout(timeout)
    }
}

/// The seam between plain TCP, TLS and UDP: a `Connection` reads and
/// writes through this, and reaches the socket under it for deadlines and
/// shutdown.
#[derive(Debug)]
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
    Udp(Box<Datagrams>),
}

impl Transport {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Transport::Plain(stream) => Some(stream),
            Transport::Tls(tls) => Some(tls.tcp()),
            Transport::Udp(_) => None,
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.read(buf),
            Transport::Tls(tls) => tls.read(buf),
            Transport::Udp(datagrams) => datagrams.read_stream(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.write(buf),
            Transport::Tls(tls) => tls.write(buf),
            Transport::Udp(datagrams) => {
                datagrams.send(buf).map_err(io::Error::other)?;
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) | Transport::Udp(_) => Ok(()),
            Transport::Tls(tls) => tls.flush(),
        }
    }
}

impl Source for Transport {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Transport::Udp(datagrams) => datagrams.socket.set_read_timeout(timeout),
            tcp => tcp.tcp().expect("TCP or TLS").set_read_timeout(timeout),
        }
    }
}

/// Bytes asked for per datagram: more than any UDP payload, so the kernel
/// never cuts one, and one larger than --max-frame is seen whole and
/// refused rather than cut.
const DATAGRAM_BUFFER: usize = 65_536;

/// A connected UDP socket, read a datagram at a time: one datagram is one
/// message, or the records a framing packs in it.
#[derive(Debug)]
struct Datagrams {
    socket: UdpSocket,
    peer: SocketAddr,
    /// The messages of the last datagram not yet taken.
    queue: VecDeque<Bytes>,
    /// What was wrong with that datagram past its whole messages: said
    /// once they are taken, as a server hands them to its hook first.
    spoiled: Option<FrameError>,
    buf: Vec<u8>,
    scratch: BytesMut,
    records: Vec<Range<usize>>,
    /// The socket's read timeout as last set (see [`FrameReader`]).
    read_timeout: Option<Option<Duration>>,
    limit: DatagramLimit,
    /// Set by `close()`: a reader on another thread (manual mode) stops,
    /// where a TCP reader would see the connection end.
    closed: Arc<AtomicBool>,
}

impl Datagrams {
    /// The next message, waiting at most `timeout` (`None`: for ever).
    fn next(
        &mut self,
        framing: &Framing,
        max_frame: usize,
        timeout: Option<Duration>,
    ) -> Result<Received, RecvError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        // Even a zero timeout (`try_recv()`) looks at what has arrived.
        let mut first_read = true;
        loop {
            if let Some(message) = self.queue.pop_front() {
                return Ok(Received::Message(message));
            }
            if let Some(spoiled) = self.spoiled.take() {
                return Err(spoiled.into());
            }
            let wait = match deadline {
                Some(deadline) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() && !first_read {
                        return Ok(Received::TimedOut);
                    }
                    Some(remaining.max(Duration::from_millis(1)))
                }
                None => None,
            };
            first_read = false;
            if self.read_timeout != Some(wait) {
                self.socket.set_read_timeout(wait)?;
                self.read_timeout = Some(wait);
            }
            let n = match self.socket.recv(&mut self.buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(Received::TimedOut);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(refused(self.peer, e).into()),
            };
            let datagram = std::mem::take(&mut self.buf);
            let split = self.push(framing, max_frame, &datagram[..n]);
            self.buf = datagram;
            split?;
        }
    }

    /// Queues the messages `framing` cuts out of `datagram`.
    fn push(
        &mut self,
        framing: &Framing,
        max_frame: usize,
        datagram: &[u8],
    ) -> Result<(), FrameError> {
        self.records.clear();
        let split = framing::datagram_records(
            framing,
            max_frame,
            datagram,
            &mut self.scratch,
            &mut self.records,
        );
        self.queue.extend(
            self.records
                .iter()
                .map(|range| Bytes::copy_from_slice(&datagram[range.clone()])),
        );
        match split {
            Err(e) if !self.queue.is_empty() => {
                self.spoiled = Some(e);
                Ok(())
            }
            split => split,
        }
    }

    /// The stream reads (`recv_until`, `expect_stream`...) see the
    /// datagrams' bytes one after another.
    fn read_stream(&mut self, out: &mut [u8]) -> io::Result<usize> {
        // Messages a `recv()` cut from a datagram and left come first.
        while let Some(message) = self.queue.pop_front() {
            if let Some(n) = stream_datagram(&message, out)? {
                return Ok(n);
            }
        }
        loop {
            let n = self
                .socket
                .recv(&mut self.buf)
                .map_err(|e| refused(self.peer, e))?;
            if let Some(n) = stream_datagram(&self.buf[..n], out)? {
                return Ok(n);
            }
        }
    }

    /// One datagram, even an empty one (`write_all` would send nothing),
    /// refused whole when too large.
    fn send(&mut self, datagram: &[u8]) -> Result<(), RecvError> {
        self.limit.check(datagram.len())?;
        self.socket
            .send(datagram)
            .map_err(|e| refused(self.peer, e))?;
        Ok(())
    }
}

/// How often manual mode's reader looks whether the socket was closed.
const CLOSED_POLL: Duration = Duration::from_millis(100);

/// Manual mode's reader of a UDP socket, on a thread of its own: the
/// datagrams' bytes as a stream, ending when the connection is closed.
struct UdpReader {
    socket: UdpSocket,
    peer: SocketAddr,
    closed: Arc<AtomicBool>,
    buf: Vec<u8>,
}

impl Read for UdpReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return Ok(0);
            }
            let n = match self.socket.recv(&mut self.buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(refused(self.peer, e)),
            };
            if let Some(n) = stream_datagram(&self.buf[..n], out)? {
                return Ok(n);
            }
        }
    }
}

/// `datagram` as the next bytes of a stream read into `out`: an error when
/// it does not fit, `None` when it is empty, as it adds nothing to the
/// stream (and a read of 0 would say the connection ended).
fn stream_datagram(datagram: &[u8], out: &mut [u8]) -> io::Result<Option<usize>> {
    if datagram.len() > out.len() {
        let too_large = FrameError::DatagramTooLarge {
            size: datagram.len(),
            max: out.len(),
        };
        return Err(io::Error::new(io::ErrorKind::InvalidData, too_large));
    }
    if datagram.is_empty() {
        return Ok(None);
    }
    out[..datagram.len()].copy_from_slice(datagram);
    Ok(Some(datagram.len()))
}

impl Source for UdpReader {
    /// Its own short timeout stays: the reader must look at `closed`.
    fn set_read_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}

/// What a connected UDP socket reports after an ICMP port unreachable,
/// said plainly.
fn refused(peer: SocketAddr, error: io::Error) -> io::Error {
    if error.kind() != io::ErrorKind::ConnectionRefused {
        return error;
    }
    io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!(
            "nothing listens on udp {peer}: its host answered an earlier datagram \
             with ICMP port unreachable"
        ),
    )
}

/// A connected, framed stream, over plain TCP or TLS.
#[derive(Debug)]
pub(crate) struct Connection {
    transport: Transport,
    reader: FrameReader,
    framing: Framing,
    peer: SocketAddr,
    /// How long the TLS handshake took; `None` on plain TCP.
    handshake: Option<Duration>,
    /// Reused for every send so a conversation does not allocate per message.
    out: Vec<u8>,
}

impl Connection {
    /// Connects to `addr`; while `retry` lasts, a refused connect is tried
    /// again. With `tls`, the handshake follows within what is left of
    /// `timeout`.
    pub(crate) fn connect(
        addr: &str,
        framing: Framing,
        max_frame: usize,
        timeout: Duration,
        retry: Option<Duration>,
        tls: Option<&tls::blocking::Client>,
    ) -> Result<Self, Error> {
        let targets = resolve(addr)?;
        let give_up = Instant::now() + retry.unwrap_or_default();
        loop {
            let mut last_error = None;
            for target in &targets {
                let started = Instant::now();
                match TcpStream::connect_timeout(target, timeout) {
                    Ok(stream) => {
                        let peer = peer_of(&stream)?;
                        // Conversations are many small messages: never
                        // wait to coalesce them.
                        let _ = stream.set_nodelay(true);
                        let Some(tls) = tls else {
                            let transport = Transport::Plain(stream);
                            return Ok(Self::over(transport, peer, framing, max_frame));
                        };
                        let shaking = Instant::now();
                        let left = timeout.saturating_sub(shaking - started);
                        let session = tls.handshake(stream, addr, left)?;
                        let transport = Transport::Tls(Box::new(session));
                        return Ok(Connection {
                            handshake: Some(shaking.elapsed()),
                            ..Self::over(transport, peer, framing, max_frame)
                        });
                    }
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

    /// A connected UDP socket to `addr`: a connect only picks the peer, so
    /// nothing is known about it until a datagram comes back or is refused.
    pub(crate) fn connect_udp(
        addr: &str,
        framing: Framing,
        max_frame: usize,
    ) -> Result<Self, Error> {
        let mut last_error = None;
        for target in resolve(addr)? {
            let any: SocketAddr = match target {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let connected = UdpSocket::bind(any).and_then(|socket| {
                socket.connect(target)?;
                Ok(socket)
            });
            match connected {
                Ok(socket) => {
                    let datagrams = Datagrams {
                        socket,
                        peer: target,
                        queue: VecDeque::new(),
                        spoiled: None,
                        buf: vec![0; DATAGRAM_BUFFER],
                        scratch: BytesMut::new(),
                        records: Vec::new(),
                        read_timeout: None,
                        limit: DatagramLimit::new(max_frame),
                        closed: Arc::default(),
                    };
                    let transport = Transport::Udp(Box::new(datagrams));
                    return Ok(Self::over(transport, target, framing, max_frame));
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(Error::Connect {
            addr: addr.to_string(),
            source: last_error.unwrap_or_else(|| io::Error::other("no address")),
        })
    }

    /// A plain TCP connection already made (manual mode's accepted client).
    pub(crate) fn from_stream(
        stream: TcpStream,
        framing: Framing,
        max_frame: usize,
    ) -> Result<Self, Error> {
        let peer = peer_of(&stream)?;
        let _ = stream.set_nodelay(true);
        Ok(Self::over(
            Transport::Plain(stream),
            peer,
            framing,
            max_frame,
        ))
    }

    /// A TLS session already established (manual mode's accepted client).
    pub(crate) fn from_tls(
        tls: TlsStream,
        framing: Framing,
        max_frame: usize,
    ) -> Result<Self, Error> {
        let peer = peer_of(tls.tcp())?;
        let transport = Transport::Tls(Box::new(tls));
        Ok(Self::over(transport, peer, framing, max_frame))
    }

    /// A second handle that reads what arrives, for a thread of its own
    /// (manual mode reads while a person types). Sends stay with this
    /// connection, whose own receives must not be used from then on.
    pub(crate) fn reader(&mut self) -> io::Result<Box<dyn Source + Send>> {
        Ok(match &mut self.transport {
            Transport::Plain(stream) => Box::new(stream.try_clone()?),
            Transport::Tls(tls) => Box::new(tls.reader()?),
            Transport::Udp(datagrams) => {
                let socket = datagrams.socket.try_clone()?;
                socket.set_read_timeout(Some(CLOSED_POLL))?;
                Box::new(UdpReader {
                    socket,
                    peer: datagrams.peer,
                    closed: datagrams.closed.clone(),
                    buf: vec![0; DATAGRAM_BUFFER],
                })
            }
        })
    }

    fn over(transport: Transport, peer: SocketAddr, framing: Framing, max_frame: usize) -> Self {
        Connection {
            reader: FrameReader::new(framing.clone(), max_frame),
            transport,
            framing,
            peer,
            handshake: None,
            out: Vec::new(),
        }
    }

    /// How long the TLS handshake took; `None` on plain TCP.
    pub(crate) fn handshake_time(&self) -> Option<Duration> {
        self.handshake
    }

    /// `starttls()`: the same socket, from now on under TLS, the
    /// handshake within `timeout`. `addr` is the name verified unless
    /// `--tls-servername` says otherwise.
    pub(crate) fn starttls(
        &mut self,
        tls: &tls::blocking::Client,
        addr: &str,
        timeout: Duration,
    ) -> Result<(), StartTlsError> {
        let Transport::Plain(stream) = &self.transport else {
            return Err(StartTlsError::AlreadyTls);
        };
        // What arrived before the handshake came in the clear: an attacker
        // in the middle can append it to the server's go-ahead so that it
        // reads as if it came over TLS (CVE-2011-0411 and its kin). Refused
        // rather than dropped: a server that pipelines there is broken too.
        let early = self.reader.buf.len();
        if early > 0 {
            return Err(StartTlsError::Early(early));
        }
        let socket = stream.try_clone().map_err(StartTlsError::Io)?;
        let started = Instant::now();
        let session = tls.handshake(socket, addr, timeout)?;
        self.handshake = Some(started.elapsed());
        // The plain handle is only a second descriptor of the same socket:
        // dropping it leaves the connection open.
        self.transport = Transport::Tls(Box::new(session));
        self.reader.restart();
        Ok(())
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// `tls_info()`: what the handshake settled; `None` on plain TCP.
    pub(crate) fn tls_info(&self) -> Option<rhai::Map> {
        match &self.transport {
            Transport::Plain(_) | Transport::Udp(_) => None,
            Transport::Tls(tls) => Some(tls.info()),
        }
    }

    pub(crate) fn send(&mut self, message: &[u8]) -> Result<(), RecvError> {
        self.out.clear();
        framing::encode(&self.framing, message, &mut self.out)?;
        if let Transport::Udp(datagrams) = &mut self.transport {
            return datagrams.send(&self.out);
        }
        self.transport.write_all(&self.out)?;
        self.transport.flush()?;
        Ok(())
    }

    /// Sends the bytes as they are, no framing added.
    pub(crate) fn send_raw(&mut self, bytes: &[u8]) -> Result<(), RecvError> {
        if let Transport::Udp(datagrams) = &mut self.transport {
            return datagrams.send(bytes);
        }
        self.transport.write_all(bytes)?;
        self.transport.flush()?;
        Ok(())
    }

    pub(crate) fn framing(&self) -> &Framing {
        &self.framing
    }

    /// The framing of every send and receive from now on.
    pub(crate) fn set_framing(&mut self, framing: Framing) {
        self.reader.reframe(framing.clone());
        self.framing = framing;
    }

    pub(crate) fn recv_exact(
        &mut self,
        n: usize,
        timeout: Duration,
    ) -> Result<Received, RecvError> {
        self.reader.exact(&mut self.transport, n, timeout)
    }

    pub(crate) fn recv_until(
        &mut self,
        seq: &[u8],
        timeout: Duration,
    ) -> Result<Received, RecvError> {
        self.reader.until(&mut self.transport, seq, timeout)
    }

    /// One whole protocol message, as `len` measures it.
    pub(crate) fn recv_parsed(
        &mut self,
        timeout: Duration,
        len: impl FnMut(&[u8], bool) -> Result<Option<usize>, ProtocolError>,
    ) -> Result<Received, RecvError> {
        self.reader.parsed(&mut self.transport, timeout, len)
    }

    pub(crate) fn max_frame(&self) -> usize {
        self.reader.max_frame
    }

    /// The bytes through the first match of `regex`, and where its groups
    /// lie in them.
    pub(crate) fn recv_match(
        &mut self,
        regex: &Regex,
        timeout: Duration,
    ) -> Result<Received<Matched>, RecvError> {
        self.reader.matching(&mut self.transport, regex, timeout)
    }

    /// Bytes received that do not make a whole message yet.
    pub(crate) fn pending(&self) -> &[u8] {
        &self.reader.buf
    }

    pub(crate) fn recv(&mut self, timeout: Duration) -> Result<Received, RecvError> {
        self.next(Some(timeout))
    }

    /// Waits with no deadline: only for a person at the other end.
    pub(crate) fn recv_untimed(&mut self) -> Result<Received, RecvError> {
        self.next(None)
    }

    fn next(&mut self, timeout: Option<Duration>) -> Result<Received, RecvError> {
        match &mut self.transport {
            Transport::Udp(datagrams) => {
                // What a stream read took of a datagram and left over
                // comes first, as one datagram would: never after later
                // datagrams, never stuck.
                if !self.reader.buf.is_empty() {
                    let leftover = self.reader.buf.split();
                    self.reader.decoder.reset();
                    datagrams.push(&self.framing, self.reader.max_frame, &leftover)?;
                }
                datagrams.next(&self.framing, self.reader.max_frame, timeout)
            }
            transport => self.reader.next(transport, timeout),
        }
    }

    /// Ends our side (the peer reads end of stream) but keeps reading.
    pub(crate) fn shutdown_write(&mut self) {
        if let Transport::Tls(tls) = &mut self.transport {
            tls.close_notify();
        }
        if let Some(stream) = self.transport.tcp() {
            let _ = stream.shutdown(Shutdown::Write);
        }
    }

    pub(crate) fn close(&mut self) {
        if let Transport::Tls(tls) = &mut self.transport {
            tls.close_notify();
        }
        if let Transport::Udp(datagrams) = &self.transport {
            datagrams.closed.store(true, Ordering::Relaxed);
        }
        if let Some(stream) = self.transport.tcp() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn peer_of(stream: &TcpStream) -> Result<SocketAddr, Error> {
    stream.peer_addr().map_err(|source| Error::Connect {
        addr: "peer".into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::TcpListener;

    /// One read of a script, as the property below drives it.
    #[derive(Debug, Clone)]
    enum Op {
        Framed(Framing),
        Exact(usize),
        Until(Vec<u8>),
        Match(&'static str),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Framed(Framing::Line)),
            (1usize..20).prop_map(|n| Op::Framed(Framing::Fixed(n))),
            Just(Op::Framed(Framing::Delim(b"ab".to_vec()))),
            (0usize..20).prop_map(Op::Exact),
            prop_oneof![Just(b"\n".to_vec()), Just(b"ba".to_vec()), Just(vec![0xff])]
                .prop_map(Op::Until),
            prop_oneof![Just("b+\n"), Just("a(b|\\xff)"), Just("(?-u:\\xff)+")].prop_map(Op::Match),
        ]
    }

    /// A connected pair: the reader's end, and the writer's.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let writer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (reader, _) = listener.accept().unwrap();
        writer.set_nodelay(true).unwrap();
        (reader, writer)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// However framed receives and stream reads are mixed, and however
        /// the bytes arrive, what they consume is the stream, in order.
        #[test]
        fn mixed_reads_take_every_byte_once_in_order(
            // No `\r`: a line's consumed bytes are then exactly it and `\n`.
            stream_bytes in proptest::collection::vec(
                prop_oneof![Just(b'a'), Just(b'b'), Just(b'\n'), Just(0xff)], 0..400),
            chunk in 1usize..50,
            ops in proptest::collection::vec(op(), 0..40),
        ) {
            let (mut reader, mut writer) = pair();
            let sent = stream_bytes.clone();
            let writing = std::thread::spawn(move || {
                for piece in sent.chunks(chunk) {
                    writer.write_all(piece).unwrap();
                    std::thread::sleep(Duration::from_millis(1));
                }
                // Kept open: every read ends by its timeout, never by a close.
                writer
            });
            let mut frames = FrameReader::new(Framing::Line, 1024);
            let mut current = Framing::Line;
            let wait = Duration::from_millis(3);
            let mut consumed = Vec::new();
            for op in ops {
                match op {
                    Op::Framed(framing) => {
                        // Only a change: a framing kept must carry on where it was.
                        if framing != current {
                            frames.reframe(framing.clone());
                            current = framing.clone();
                        }
                        if let Received::Message(m) = frames.next(&mut reader, Some(wait)).unwrap() {
                            consumed.extend_from_slice(&m);
                            match framing {
                                Framing::Line => consumed.push(b'\n'),
                                Framing::Delim(d) => consumed.extend_from_slice(&d),
                                _ => {}
                            }
                        }
                    }
                    Op::Exact(n) => {
                        if let Received::Message(m) = frames.exact(&mut reader, n, wait).unwrap() {
                            prop_assert_eq!(m.len(), n);
                            consumed.extend_from_slice(&m);
                        }
                    }
                    Op::Until(seq) => {
                        if let Received::Message(m) = frames.until(&mut reader, &seq, wait).unwrap() {
                            prop_assert!(memchr::memmem::find(&m, &seq).is_none());
                            consumed.extend_from_slice(&m);
                            consumed.extend_from_slice(&seq);
                        }
                    }
                    Op::Match(pattern) => {
                        let regex = Regex::new(pattern).unwrap();
                        if let Received::Message((m, groups)) =
                            frames.matching(&mut reader, &regex, wait).unwrap()
                        {
                            let whole = groups[0].clone().unwrap();
                            prop_assert_eq!(whole.end, m.len());
                            prop_assert!(regex.is_match(&m[whole]));
                            consumed.extend_from_slice(&m);
                        }
                    }
                }
            }
            let _writer = writing.join().unwrap();
            let rest = stream_bytes.len() - consumed.len();
            match frames.exact(&mut reader, rest, Duration::from_secs(5)).unwrap() {
                Received::Message(m) => consumed.extend_from_slice(&m),
                other => panic!("the rest did not arrive: {other:?}"),
            }
            prop_assert_eq!(consumed, stream_bytes);
        }
    }
}
