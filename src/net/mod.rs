//! Addresses, listening sockets and the open-file limit: what every role
//! needs from the network before it talks.

pub(crate) mod datagrams;

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

use tokio::net::{TcpListener, TcpSocket};

use crate::error::Error;

/// Resolves `127.0.0.1:7777`, `localhost:7777`, or a bare port (loopback).
pub(crate) fn resolve(addr: &str) -> Result<Vec<SocketAddr>, Error> {
    let candidate = if addr.parse::<u16>().is_ok() {
        format!("127.0.0.1:{addr}")
    } else {
        addr.to_string()
    };
    let addrs: Vec<SocketAddr> = candidate
        .to_socket_addrs()
        .map_err(|e| Error::Usage(format!("bad address `{addr}`: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(Error::Usage(format!(
            "address `{addr}` resolves to nothing"
        )));
    }
    Ok(addrs)
}

/// Connections a burst of clients may queue before we accept them; the
/// usual 128 or 1024 makes a thousand simultaneous connects stall on SYN
/// retries.
const BACKLOG: u32 = 4096;

/// After a failed `accept` (out of file descriptors, usually): waits for
/// some to free rather than spin on an error that repeats at once, and
/// says so once a second rather than fifty times.
pub(crate) async fn accept_failed(error: &io::Error, last_said: &mut Option<std::time::Instant>) {
    let now = std::time::Instant::now();
    if last_said.is_none_or(|at| now.duration_since(at) >= std::time::Duration::from_secs(1)) {
        crate::console::err(&format!("accept failed: {error}"));
        *last_said = Some(now);
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
}

pub(crate) async fn bind(listen: &str) -> Result<TcpListener, Error> {
    let mut last_error = None;
    for addr in resolve(listen)? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        };
        let bound = socket.and_then(|socket| {
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(BACKLOG)
        });
        match bound {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(Error::Bind {
        addr: listen.to_string(),
        source: last_error.unwrap_or_else(|| io::Error::other("no address")),
    })
}

/// A UDP socket bound to `listen`, for `server --udp`.
pub(crate) async fn bind_udp(listen: &str) -> Result<tokio::net::UdpSocket, Error> {
    let mut last_error = None;
    for addr in resolve(listen)? {
        match tokio::net::UdpSocket::bind(addr).await {
            Ok(socket) => return Ok(socket),
            Err(e) => last_error = Some(e),
        }
    }
    Err(Error::Bind {
        addr: listen.to_string(),
        source: last_error.unwrap_or_else(|| io::Error::other("no address")),
    })
}

/// A blocking UDP socket bound to `listen`, for the manual `server --udp`.
pub(crate) fn bind_udp_blocking(listen: &str) -> Result<std::net::UdpSocket, Error> {
    let mut last_error = None;
    for addr in resolve(listen)? {
        match std::net::UdpSocket::bind(addr) {
            Ok(socket) => return Ok(socket),
            Err(e) => last_error = Some(e),
        }
    }
    Err(Error::Bind {
        addr: listen.to_string(),
        source: last_error.unwrap_or_else(|| io::Error::other("no address")),
    })
}

/// A blocking listener, for manual mode's one-client-at-a-time server.
pub(crate) fn bind_blocking(listen: &str) -> Result<std::net::TcpListener, Error> {
    let mut last_error = None;
    for addr in resolve(listen)? {
        match std::net::TcpListener::bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(Error::Bind {
        addr: listen.to_string(),
        source: last_error.unwrap_or_else(|| io::Error::other("no address")),
    })
}

/// Below this many open files, say that the server cannot take many clients.
pub(crate) const FEW_FILES: u64 = 4096;

/// Raises the soft open-file limit to the hard one (each connection is a
/// file descriptor; the usual soft limit of 1024 caps a server at about a
/// thousand clients). Returns the limit now in force.
pub(crate) fn raise_open_file_limit() -> u64 {
    #[cfg(unix)]
    {
        let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
        rlimit::increase_nofile_limit(hard).unwrap_or(soft)
    }
    #[cfg(not(unix))]
    {
        u64::MAX
    }
}

/// Bytes written to `stream` that the peer has not yet acknowledged, where
/// the system tells (Linux). A peer reading slowly takes them in steps the
/// size of a third of a socket buffer, seconds apart: this shows progress
/// between those steps.
pub(crate) fn unacknowledged_bytes(stream: &tokio::net::TcpStream) -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ writes one int through the pointer it is given,
        // which points at a live local; the descriptor is the stream's own.
        let status = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        (status == 0).then_some(usize::try_from(queued).unwrap_or(0))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = stream;
        None
    }
}
