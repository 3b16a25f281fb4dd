//! What a server connection's bytes travel over: plain TCP, or TLS over
//! TCP. The connection code is written once, generic over [`Transport`];
//! this trait holds only what differs between the two.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::BytesMut;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A byte stream over one TCP socket.
pub(super) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The socket underneath: its readiness, and what only the kernel
    /// knows (the count of bytes the peer has not acknowledged).
    fn socket(&self) -> &TcpStream;

    /// One read of at most `limit` bytes, appended to `buf`; `Ok(0)` at
    /// the end of the stream.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        limit: usize,
    ) -> Poll<io::Result<usize>>;

    /// Writes what the socket takes now, without waiting and without a
    /// task context; `WouldBlock` when it takes nothing. Once this has
    /// taken every byte, [`Transport::flushed_now`] says whether they all
    /// reached the socket.
    fn write_now(&mut self, bytes: &[u8]) -> io::Result<usize>;

    /// Whether what [`Transport::write_now`] accepted is all in the
    /// socket, pushing more of it there if not.
    fn flushed_now(&mut self) -> io::Result<bool>;

    /// What `tls_info()` returns: `None` over plain TCP.
    fn tls_info(&self) -> Option<rhai::Map>;

    /// The plain socket, for `starttls()`; a TLS stream gives itself back.
    fn into_plain(self) -> Result<TcpStream, Self>
    where
        Self: Sized;
}

/// Bytes asked for per read; also the largest `raw` message.
pub(super) const READ_SIZE: usize = 64 * 1024;

thread_local! {
    /// One read buffer per worker thread rather than per connection: an
    /// idle connection then costs only the bytes it has not finished.
    pub(super) static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_SIZE]);
}

impl Transport for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }

    /// `poll_read` rather than `readable()` + `try_read`: after a short
    /// read it clears the socket's readiness, where `try_read` would leave
    /// it set and cost an extra, empty `recv` per message.
    #[inline]
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        limit: usize,
    ) -> Poll<io::Result<usize>> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut read = ReadBuf::new(&mut scratch[..limit.min(READ_SIZE)]);
            ready!(Pin::new(self).poll_read(cx, &mut read))?;
            let filled = read.filled();
            buf.extend_from_slice(filled);
            Poll::Ready(Ok(filled.len()))
        })
    }

    /// `try_write`: no future and no waker on the hot path; a wait, when
    /// needed, is `writable()` on the socket.
    #[inline]
    fn write_now(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.try_write(bytes)
    }

    #[inline]
    fn flushed_now(&mut self) -> io::Result<bool> {
        Ok(true)
    }

    #[inline]
    fn tls_info(&self) -> Option<rhai::Map> {
        None
    }

    fn into_plain(self) -> Result<TcpStream, Self> {
        Ok(self)
    }
}

/// TLS keeps records it could not write yet in rustls's own buffer. Its
/// writes are polled with a waker that does nothing: a write that would
/// block leaves the socket's readiness cleared, and the wait that follows
/// (`writable()` on the socket) registers the task's real waker.
impl Transport for TlsStream<TcpStream> {
    fn socket(&self) -> &TcpStream {
        self.get_ref().0
    }

    /// Straight from rustls's plaintext, one record's worth at a time:
    /// no scratch buffer to copy through, and none of `poll_read`'s
    /// attempts to fill the rest of a big buffer, each a trip down to the
    /// socket that finds nothing more after a message.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        limit: usize,
    ) -> Poll<io::Result<usize>> {
        // After each message the next read finds nothing, and rustls's way
        // to that answer (its read buffer made ready, a read, an error made
        // and dropped) costs several times this look at the socket. It
        // answers the same: rustls wanting to read means it holds no
        // plaintext, and its records are all processed after every read,
        // so only the socket can bring more. The waker is registered alike.
        let (socket, session) = self.get_ref();
        if session.wants_read() && socket.poll_read_ready(cx).is_pending() {
            return Poll::Pending;
        }
        let mut stream = Pin::new(self);
        let data = ready!(stream.as_mut().poll_fill_buf(cx))?;
        let taken = data.len().min(limit);
        buf.extend_from_slice(&data[..taken]);
        stream.consume(taken);
        Poll::Ready(Ok(taken))
    }

    fn write_now(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(self).poll_write(&mut cx, bytes) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flushed_now(&mut self) -> io::Result<bool> {
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(self).poll_flush(&mut cx) {
            Poll::Ready(result) => result.map(|()| true),
            Poll::Pending => Ok(false),
        }
    }

    fn tls_info(&self) -> Option<rhai::Map> {
        let session = self.get_ref().1;
        Some(crate::tls::info::map(session, session.server_name()))
    }

    fn into_plain(self) -> Result<TcpStream, Self> {
        Err(self)
    }
}
