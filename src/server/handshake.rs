//! `server --tls`: each connection's handshake, in the connection's own
//! task (a slow or silent peer never holds up the accept loop), then the
//! same conversation as over plain TCP.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::Shared;
use super::handler::serve_connection;
use super::shutdown::StopSignal;
use crate::console;

/// The longest a peer may take over its handshake (less with a shorter
/// `--idle-timeout`): a peer that connects and says nothing must not hold
/// its socket forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn serve_tls_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    mut stop: StopSignal,
    acceptor: TlsAcceptor,
) {
    let _ = stream.set_nodelay(true);
    // Boxed: the handshake's state is gone once it is over, and the task
    // then holds only the conversation.
    let handshake = Box::pin(handshake(stream, acceptor, &shared.options, &mut stop)).await;
    match handshake {
        Ok(stream) => serve_connection(stream, peer, shared, stop).await,
        Err(reason) => {
            // One line, whatever the verbosity: the peer never got a
            // conversation, and the summary counts it as an error.
            console::err(&format!("{peer} TLS handshake failed: {reason}"));
            let counts = &shared.counts;
            counts.connections.fetch_add(1, Ordering::Relaxed);
            counts.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub(super) async fn handshake(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    options: &super::ServerOptions,
    stop: &mut StopSignal,
) -> Result<TlsStream<TcpStream>, String> {
    let limit = options
        .idle_timeout
        .map_or(HANDSHAKE_TIMEOUT, |idle| idle.min(HANDSHAKE_TIMEOUT));
    if stop.is_hard() {
        return Err("the server stopped first".into());
    }
    tokio::select! {
        accepted = tokio::time::timeout(limit, acceptor.accept(stream)) => match accepted {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(crate::tls::describe_io(&error)),
            Err(_) => Err(format!(
                "no handshake within {}",
                humantime::format_duration(limit)
            )),
        },
        _ = stop.hard() => Err("the server stopped first".into()),
    }
}
