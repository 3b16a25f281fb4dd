//! TLS over a blocking socket, for the client's `Connection`: the
//! handshake within the connect timeout, reads and writes through rustls,
//! a close_notify on close, and every failure told in one line.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rhai::Map;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::{ClientTls, TlsError, client_config, describe, info, server_name};
use crate::error::Error;

/// A command's client TLS: its flags and the configuration built from them
/// once (reading the system's roots is not free), shared by every
/// connection the command opens.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    config: Arc<ClientConfig>,
    options: ClientTls,
}

impl Client {
    pub(crate) fn new(options: ClientTls) -> Result<Self, TlsError> {
        Ok(Client {
            config: client_config(&options)?,
            options,
        })
    }

    /// What it verifies and offers.
    pub(crate) fn options(&self) -> &ClientTls {
        &self.options
    }

    /// Shakes hands on `socket`, connected to `addr` (whose host is the
    /// name verified unless --tls-servername says otherwise), giving up
    /// after `timeout`.
    pub(crate) fn handshake(
        &self,
        mut socket: TcpStream,
        addr: &str,
        timeout: Duration,
    ) -> Result<TlsStream, Error> {
        let name = server_name(&self.options, addr)?;
        let sni = match &name {
            ServerName::DnsName(name) => Some(name.as_ref().to_string()),
            _ => None,
        };
        let failed = |reason: String| Error::Handshake {
            addr: addr.to_string(),
            reason,
        };
        let mut conn =
            ClientConnection::new(self.config.clone(), name).map_err(|e| failed(reason(&e)))?;
        let deadline = Instant::now().checked_add(timeout);
        while conn.is_handshaking() {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|left| left.is_zero()) {
                return Err(failed(silent(timeout)));
            }
            let left = left.map(|left| left.max(Duration::from_millis(1)));
            let set = socket
                .set_read_timeout(left)
                .and_then(|()| socket.set_write_timeout(left));
            if let Err(e) = set.and_then(|()| conn.complete_io(&mut socket).map(drop)) {
                return Err(failed(io_reason(&e, timeout)));
            }
        }
        // Reads set their own deadline; writes wait as plain TCP's do.
        let _ = socket.set_write_timeout(None);
        Ok(TlsStream {
            stream: StreamOwned::new(conn, socket),
            sni,
        })
    }
}

/// The TLS a later `starttls()` uses: what the command's flags built,
/// or, with none given, the system's roots, built on first use (reading
/// them is not free, and most conversations never upgrade).
#[derive(Debug, Default)]
pub(crate) struct Deferred {
    client: OnceLock<Client>,
}

impl Deferred {
    /// `client`: what the flags made; `None` builds the defaults later.
    pub(crate) fn new(client: Option<Client>) -> Self {
        Deferred {
            client: client.map(OnceLock::from).unwrap_or_default(),
        }
    }

    pub(crate) fn get(&self) -> Result<&Client, TlsError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let client = Client::new(ClientTls::default())?;
        Ok(self.client.get_or_init(|| client))
    }
}

/// An established TLS session on its socket.
#[derive(Debug)]
pub(crate) struct TlsStream {
    stream: StreamOwned<ClientConnection, TcpStream>,
    /// The SNI name sent; `None` for an IP address.
    sni: Option<String>,
}

impl TlsStream {
    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.stream.sock
    }

    /// What the handshake settled, for `tls_info()`.
    pub(crate) fn info(&self) -> Map {
        info::map(&self.stream.conn, self.sni.as_deref())
    }

    /// Tells the peer we are done (close_notify); it reads end of stream.
    pub(crate) fn close_notify(&mut self) {
        // Sent once however often it is asked for; a peer gone already
        // makes the write fail, which changes nothing here.
        self.stream.conn.send_close_notify();
        let _ = self.stream.flush();
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.stream.read(buf) {
            // The peer closed without a close_notify, as many servers do
            // (Python's `close()`, `openssl s_server`): for a test tool
            // that is the end of the stream, not an attack.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            Err(e) => Err(explained(e)),
            read => read,
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf).map_err(explained)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush().map_err(explained)
    }
}

impl Drop for TlsStream {
    fn drop(&mut self) {
        // A connection the script never closed still ends cleanly, but a
        // peer that reads nothing must not hold the process up.
        let _ = self
            .stream
            .sock
            .set_write_timeout(Some(Duration::from_secs(1)));
        self.close_notify();
    }
}

/// A rustls error in an I/O error, rewritten as the line a user needs:
/// with TLS 1.3 a server refuses a client certificate after the client's
/// handshake is over, so the first read is where that shows.
fn explained(error: io::Error) -> io::Error {
    match tls_error(&error) {
        Some(tls) => io::Error::new(error.kind(), format!("TLS: {}", reason(tls))),
        None => error,
    }
}

fn tls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// `describe`, and what a client alone meets: a plain TCP echo service
/// sends our own ClientHello back.
fn reason(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InappropriateHandshakeMessage { .. } => {
            "the peer does not speak TLS: it answered with a handshake message no TLS server sends (a plain TCP echo?)".into()
        }
        other => describe(other),
    }
}

fn io_reason(error: &io::Error, timeout: Duration) -> String {
    if let Some(tls) = tls_error(error) {
        return reason(tls);
    }
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => silent(timeout),
        io::ErrorKind::UnexpectedEof => {
            "the peer closed the connection during the handshake (a plain TCP service?)".into()
        }
        _ => error.to_string(),
    }
}

fn silent(timeout: Duration) -> String {
    format!(
        "no TLS answer within {:.1}s (a plain TCP service waiting for us to speak first?)",
        timeout.as_secs_f64()
    )
}
