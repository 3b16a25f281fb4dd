//! TLS over a blocking socket, for the client's `Connection` and the manual
//! server: the handshake within a deadline, reads and writes through
//! rustls, a close_notify on close, and every failure told in one line.
//!
//! The session sits behind a mutex so that a second handle can read while
//! the first one writes (manual mode reads on a thread of its own, as it
//! does over plain TCP through a clone of the socket). Neither handle holds
//! the lock across socket I/O: a write blocked on a peer that is not
//! reading must not stop the reader from taking in what that peer sends,
//! or both ends could wait on each other for ever.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rhai::Map;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

use super::{ClientTls, TlsError, client_config, describe, info, server_name};
use crate::client::connection::Source;
use crate::error::Error;

/// Ciphertext asked for per socket read: one whole record of the largest
/// size TLS 1.2 allows, header included.
const READ_SIZE: usize = 16 * 1024 + 2048 + 5;

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
        let conn =
            ClientConnection::new(self.config.clone(), name).map_err(|e| failed(reason(&e)))?;
        let mut conn = rustls::Connection::Client(conn);
        shake(&mut conn, &mut socket, timeout).map_err(|e| failed(io_reason(&e, timeout)))?;
        Ok(TlsStream::new(conn, socket, sni))
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

/// The server side of a handshake on an accepted `socket` (manual mode's
/// clients, one at a time), giving up after `timeout`: a peer that
/// connects and says nothing must not hold the server.
pub(crate) fn accept(
    config: &Arc<ServerConfig>,
    mut socket: TcpStream,
    timeout: Duration,
) -> Result<TlsStream, Error> {
    let peer = socket
        .peer_addr()
        .map_or_else(|_| "the peer".to_string(), |a| a.to_string());
    let failed = |reason: String| Error::Handshake {
        addr: peer.clone(),
        reason,
    };
    let conn = ServerConnection::new(config.clone()).map_err(|e| failed(describe(&e)))?;
    let mut conn = rustls::Connection::Server(conn);
    shake(&mut conn, &mut socket, timeout).map_err(|e| failed(accept_reason(&e, timeout)))?;
    let sni = match &conn {
        rustls::Connection::Server(server) => server.server_name().map(str::to_string),
        rustls::Connection::Client(_) => None,
    };
    Ok(TlsStream::new(conn, socket, sni))
}

/// Runs the handshake to its end within `timeout`, then sends what it
/// left queued (a TLS 1.3 server's session tickets).
fn shake(
    conn: &mut rustls::Connection,
    socket: &mut TcpStream,
    timeout: Duration,
) -> io::Result<()> {
    let deadline = Instant::now().checked_add(timeout);
    while conn.is_handshaking() {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|left| left.is_zero()) {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let left = left.map(|left| left.max(Duration::from_millis(1)));
        socket.set_read_timeout(left)?;
        socket.set_write_timeout(left)?;
        conn.complete_io(socket)?;
    }
    while conn.wants_write() {
        conn.write_tls(socket)?;
    }
    // Reads set their own deadline; writes wait as plain TCP's do.
    let _ = socket.set_write_timeout(None);
    Ok(())
}

fn lock(session: &Mutex<rustls::Connection>) -> MutexGuard<'_, rustls::Connection> {
    // A panic elsewhere while holding it leaves rustls's state whole:
    // every step under the lock is one rustls call.
    session.lock().unwrap_or_else(|e| e.into_inner())
}

/// An established TLS session on its socket, client or server side.
#[derive(Debug)]
pub(crate) struct TlsStream {
    session: Arc<Mutex<rustls::Connection>>,
    sock: TcpStream,
    incoming: Incoming,
    /// Records taken out of the session, not yet all written.
    outgoing: Vec<u8>,
    written: usize,
    /// A [`TlsReader`] was made: reads are its alone.
    read_elsewhere: bool,
    /// The SNI name: sent by a client (`None` for an IP address), or
    /// received by a server.
    sni: Option<String>,
}

impl TlsStream {
    fn new(conn: rustls::Connection, sock: TcpStream, sni: Option<String>) -> Self {
        TlsStream {
            session: Arc::new(Mutex::new(conn)),
            sock,
            incoming: Incoming::default(),
            outgoing: Vec::new(),
            written: 0,
            read_elsewhere: false,
            sni,
        }
    }

    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.sock
    }

    /// What the handshake settled, for `tls_info()`.
    pub(crate) fn info(&self) -> Map {
        info::map(&lock(&self.session), self.sni.as_deref())
    }

    /// A handle that reads what arrives, for a thread of its own, while
    /// this one goes on writing. Reads through this one then fail: two
    /// readers would each take a share of the records.
    pub(crate) fn reader(&mut self) -> io::Result<TlsReader> {
        if self.read_elsewhere {
            return Err(io::Error::other("this TLS session already has a reader"));
        }
        let sock = self.sock.try_clone()?;
        self.read_elsewhere = true;
        Ok(TlsReader {
            session: self.session.clone(),
            sock,
            incoming: std::mem::take(&mut self.incoming),
        })
    }

    /// Tells the peer we are done (close_notify); it reads end of stream.
    pub(crate) fn close_notify(&mut self) {
        // Sent once however often it is asked for; a peer gone already
        // makes the write fail, which changes nothing here.
        lock(&self.session).send_close_notify();
        let _ = self.flush();
    }

    /// Takes every record the session has queued, then writes them: the
    /// only place anything is written, so records go out in order.
    fn send_queued(&mut self) -> io::Result<()> {
        {
            let mut conn = lock(&self.session);
            while conn.wants_write() {
                conn.write_tls(&mut self.outgoing)?;
            }
        }
        while self.written < self.outgoing.len() {
            match self.sock.write(&self.outgoing[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // What is left goes out first next time.
                Err(e) => return Err(e),
            }
        }
        self.outgoing.clear();
        self.written = 0;
        Ok(())
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read_elsewhere {
            return Err(io::Error::other(
                "this TLS session is read by another handle",
            ));
        }
        read_plaintext(&self.session, &mut self.sock, &mut self.incoming, buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = lock(&self.session).writer().write(buf).map_err(explained)?;
        self.send_queued().map_err(explained)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_queued().map_err(explained)
    }
}

impl Drop for TlsStream {
    fn drop(&mut self) {
        // A connection the script never closed still ends cleanly, but a
        // peer that reads nothing must not hold the process up.
        let _ = self.sock.set_write_timeout(Some(Duration::from_secs(1)));
        self.close_notify();
    }
}

/// The reading half of a [`TlsStream`], made by [`TlsStream::reader`].
/// It never writes: what reading makes rustls queue (a TLS 1.3 key update
/// answer) goes out with the writer's next record.
#[derive(Debug)]
pub(crate) struct TlsReader {
    session: Arc<Mutex<rustls::Connection>>,
    sock: TcpStream,
    incoming: Incoming,
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_plaintext(&self.session, &mut self.sock, &mut self.incoming, buf)
    }
}

impl Source for TlsReader {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(timeout)
    }
}

/// Ciphertext read from the socket and not yet handed to rustls: it takes
/// more only while it has no plaintext waiting, so that its own buffer
/// never fills.
#[derive(Debug, Default)]
struct Incoming {
    /// Allocated at the first read, then reused.
    buf: Vec<u8>,
    /// `buf[fed..filled]` is what rustls has not taken yet.
    fed: usize,
    filled: usize,
    eof: bool,
}

/// Plaintext for `buf`: what rustls already holds, else what the socket
/// brings (waiting as its read timeout allows, without the lock).
fn read_plaintext(
    session: &Mutex<rustls::Connection>,
    sock: &mut TcpStream,
    incoming: &mut Incoming,
    buf: &mut [u8],
) -> io::Result<usize> {
    match read_or_wait(session, sock, incoming, buf) {
        // The peer closed without a close_notify, as many servers do
        // (Python's `close()`, `openssl s_server`): for a test tool
        // that is the end of the stream, not an attack.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
        Err(e) => Err(explained(e)),
        read => read,
    }
}

fn read_or_wait(
    session: &Mutex<rustls::Connection>,
    sock: &mut TcpStream,
    incoming: &mut Incoming,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        {
            let mut conn = lock(session);
            while conn.wants_read() && incoming.fed < incoming.filled {
                let n = conn.read_tls(&mut &incoming.buf[incoming.fed..incoming.filled])?;
                if n == 0 {
                    break;
                }
                incoming.fed += n;
                conn.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
            if incoming.eof && incoming.fed == incoming.filled && conn.wants_read() {
                // Marks the end: rustls then tells a clean close_notify
                // from a bare TCP close.
                conn.read_tls(&mut io::empty())?;
            }
            match conn.reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                read => return read,
            }
        }
        if incoming.eof {
            return Ok(0);
        }
        incoming.buf.copy_within(incoming.fed..incoming.filled, 0);
        incoming.filled -= incoming.fed;
        incoming.fed = 0;
        incoming.buf.resize(READ_SIZE, 0);
        if incoming.filled == incoming.buf.len() {
            // rustls took none of a whole buffer: it will not take more.
            return Err(io::Error::other("TLS records the session does not take"));
        }
        match sock.read(&mut incoming.buf[incoming.filled..]) {
            Ok(n) => {
                incoming.filled += n;
                incoming.eof = n == 0;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
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

/// The server side's words for the same failures, as `server --tls` says
/// them.
fn accept_reason(error: &io::Error, timeout: Duration) -> String {
    if let Some(tls) = tls_error(error) {
        return describe(tls);
    }
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!(
                "no handshake within {}",
                humantime::format_duration(timeout)
            )
        }
        io::ErrorKind::UnexpectedEof => {
            "the peer closed the connection during the handshake".into()
        }
        io::ErrorKind::ConnectionReset => {
            "the peer reset the connection during the handshake".into()
        }
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// Bytes each side sends before it has read anything: far more than
    /// the sockets' buffers hold (see `small_buffers`).
    const LOAD: usize = 8 * 1024 * 1024;

    /// Socket buffers of 64 KiB at most: loopback's grow to tens of MiB,
    /// which would hide a deadlock behind sheer room.
    fn small_buffers(socket: &TcpStream) {
        use std::os::fd::AsRawFd;
        let size: libc::c_int = 64 * 1024;
        for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
            // SAFETY: a valid socket, and a c_int option of its size.
            let set = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(set, 0, "setsockopt");
        }
    }

    /// Writes `LOAD` bytes on `stream` while its reader takes in the
    /// peer's `LOAD` on another thread; returns how many were read.
    fn both_ways(mut stream: TlsStream) -> usize {
        let mut reader = stream.reader().unwrap();
        let reading = std::thread::spawn(move || {
            let mut total = 0;
            let mut buf = vec![0; 64 * 1024];
            while total < LOAD {
                match reader.read(&mut buf).unwrap() {
                    0 => break,
                    n => total += n,
                }
            }
            total
        });
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..LOAD / chunk.len() {
            stream.write_all(&chunk).unwrap();
        }
        reading.join().unwrap()
    }

    /// Were the lock held across a socket write, each writer would wait
    /// for a peer whose reader waits for that lock: neither end finishes.
    #[test]
    fn a_reader_takes_in_while_its_writer_waits_on_the_peer() {
        let setup = super::super::server_config(&Default::default()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let config = setup.config.clone();
        let (done_tx, done) = mpsc::channel();
        let server_done = done_tx.clone();
        std::thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            small_buffers(&socket);
            let stream = accept(&config, socket, Duration::from_secs(10)).unwrap();
            server_done.send(both_ways(stream)).unwrap();
        });
        let client = Client::new(ClientTls {
            trusted: vec![setup.ca.unwrap()],
            ..ClientTls::default()
        })
        .unwrap();
        std::thread::spawn(move || {
            let socket = TcpStream::connect(&addr).unwrap();
            small_buffers(&socket);
            let stream = client
                .handshake(socket, &addr, Duration::from_secs(10))
                .unwrap();
            done_tx.send(both_ways(stream)).unwrap();
        });
        for _ in 0..2 {
            let read = done
                .recv_timeout(Duration::from_secs(60))
                .expect("both ends finish");
            assert_eq!(read, LOAD);
        }
    }
}
