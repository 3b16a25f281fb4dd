//! What each side of a proxied connection travels over: plain TCP, or TLS
//! over TCP (`--tls` toward clients, `--upstream-tls` toward the
//! upstream). The relays are written once, generic over [`Stream`]; this
//! holds only what differs, and the handshakes.

use std::io;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

/// The longest either handshake may take: a client that connects and
/// says nothing, or an upstream that never answers, must not hold a task
/// forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A byte stream over one TCP socket, in two halves that can be read and
/// written at once.
pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {
    type Reader<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    type Writer<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>);

    /// The socket underneath, for a reset (`SO_LINGER` 0).
    fn socket(&self) -> &TcpStream;
}

/// Plain TCP splits for free: each half borrows the socket.
impl Stream for TcpStream {
    type Reader<'a> = tcp::ReadHalf<'a>;
    type Writer<'a> = tcp::WriteHalf<'a>;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        self.split()
    }

    fn socket(&self) -> &TcpStream {
        self
    }
}

/// TLS reads and writes share one session, so its halves take turns
/// through tokio's lock. Boxed: a session is kilobytes, and a plain
/// connection's task should not carry room for one.
impl Stream for Box<TlsStream<TcpStream>> {
    type Reader<'a> = ReadHalf<&'a mut TlsStream<TcpStream>>;
    type Writer<'a> = WriteHalf<&'a mut TlsStream<TcpStream>>;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        tokio::io::split(&mut **self)
    }

    fn socket(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// One side, once its handshake (if any) is over.
pub(super) enum Link {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// `--upstream-tls`: what to verify the upstream against and the name to
/// send it.
#[derive(Clone)]
pub(crate) struct UpstreamTls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl UpstreamTls {
    pub(crate) fn new(
        options: &crate::tls::ClientTls,
        upstream: &str,
    ) -> Result<Self, crate::tls::TlsError> {
        Ok(UpstreamTls {
            connector: TlsConnector::from(crate::tls::client_config(options)?),
            name: crate::tls::server_name(options, upstream)?,
        })
    }
}

/// `--tls`: the client's handshake, or why it failed.
pub(super) async fn accept(stream: TcpStream, acceptor: &TlsAcceptor) -> Result<Link, String> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Ok(Link::Tls(Box::new(TlsStream::Server(stream)))),
        Ok(Err(e)) => Err(crate::tls::describe_io(&e)),
        Err(_) => Err(no_handshake()),
    }
}

/// `--upstream-tls`: the handshake with the upstream, or why it failed,
/// in the words of the proxy's own flags.
pub(super) async fn connect(stream: TcpStream, tls: &UpstreamTls) -> Result<Link, String> {
    let handshake = tls.connector.connect(tls.name.clone(), stream);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(stream)) => Ok(Link::Tls(Box::new(TlsStream::Client(stream)))),
        Ok(Err(e)) => Err(upstream_flags(&crate::tls::describe_io(&e))),
        Err(_) => Err(no_handshake()),
    }
}

fn no_handshake() -> String {
    format!(
        "no handshake within {}",
        humantime::format_duration(HANDSHAKE_TIMEOUT)
    )
}

/// The handshake's hints name the client's flags (`--tls-ca`,
/// `--insecure`); the proxy's upstream side has its own.
fn upstream_flags(reason: &str) -> String {
    reason
        .replace("--tls-", "--upstream-tls-")
        .replace("--insecure", "--upstream-insecure")
}

/// A TLS peer that closes without `close_notify` reads as
/// `UnexpectedEof`: for a proxy that is the peer closing, as it would be
/// over TCP.
pub(super) fn eof_as_close(read: io::Result<usize>) -> io::Result<usize> {
    match read {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_hints_name_the_proxy_flags() {
        assert_eq!(
            upstream_flags(
                "unknown issuer (trust its CA with --tls-ca FILE, or skip verification with --insecure)"
            ),
            "unknown issuer (trust its CA with --upstream-tls-ca FILE, or skip verification with --upstream-insecure)"
        );
    }
}
