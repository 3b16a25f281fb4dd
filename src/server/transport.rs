//! What a server connection's bytes travel over: plain TCP, or TLS over
//! TCP. The connection code is written once, generic over [`Transport`];
//! this trait holds only what differs between the two.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A byte stream over one TCP socket.
pub(super) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The socket underneath: its readiness, and what only the kernel
    /// knows (the count of bytes the peer has not acknowledged).
    fn socket(&self) -> &TcpStream;

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

impl Transport for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
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
