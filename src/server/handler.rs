//! One connection from accept to close: `on_connect`, then each message to
//! `on_message` and its reply carried out, then `on_disconnect`, whatever
//! ended the connection, and its counts added to the server's summary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::connection::{ConnError, Event, ServerConnection};
use super::hooks::{Action, ConnectionHooks, HookFailure, Reply};
use super::idle::IdleClock;
use super::room::{Inbox, Room};
use super::shutdown::StopSignal;
use super::transport::Transport;
use super::{Shared, handshake};
use crate::console;
use crate::transcript::Verbosity;

/// Why a connection ended.
enum End {
    PeerClosed,
    ScriptClosed,
    Shutdown,
    Idle(Duration),
    /// A hook called `starttls()`: the conversation goes on under TLS.
    StartTls,
}

/// What a connection's script side holds, whatever its stream.
struct Session<'a> {
    peer: SocketAddr,
    hooks: ConnectionHooks,
    member: Option<Member>,
    shared: &'a Shared,
}

/// Serves one connection, plain or TLS (its handshake done).
pub(super) async fn serve_connection<S: Transport>(
    stream: S,
    peer: SocketAddr,
    shared: &Shared,
    stop: StopSignal,
) {
    let options = &shared.options;
    let mut connection = ServerConnection::new(stream, peer, options, stop);
    let mut hooks = shared
        .script
        .connection(peer, &options.framing, options.max_frame);
    if let Some(tls) = connection.tls_info() {
        hooks.set_tls_info(tls);
    }
    if options.verbosity == Verbosity::Verbose {
        console::err(&format!("{peer} connected"));
    }
    let member = shared.script.room().map(|room| Member::join(room, peer));
    let mut session = Session {
        peer,
        hooks,
        member,
        shared,
    };
    let result = converse(&mut connection, &mut session).await;
    if let Ok(End::StartTls) = result {
        // Boxed: rare, and a plain connection's task stays as small as if
        // TLS did not exist.
        return Box::pin(start_tls(connection, session)).await;
    }
    finish(connection, session, result).await;
}

/// `starttls()`: the handshake on the same socket, then the rest of the
/// conversation over TLS, its hooks and variables carried over.
async fn start_tls<S: Transport>(connection: ServerConnection<S>, mut session: Session<'_>) {
    let (stream, mut rest) = connection.detach();
    let plain = match stream.into_plain() {
        Ok(plain) => plain,
        Err(tls) => {
            let already = Err(ConnError::StartTls("the connection already speaks TLS"));
            return finish(rest.over(tls), session, already).await;
        }
    };
    let Some(acceptor) = session.shared.starttls.clone() else {
        let none = Err(ConnError::StartTls(
            "the server has no certificate: give it --tls-ca-out FILE, or --tls-cert and --tls-key",
        ));
        return finish(rest.over(plain), session, none).await;
    };
    if rest.unread() > 0 {
        let early = Err(ConnError::EarlyBytes(rest.unread()));
        return finish(rest.over(plain), session, early).await;
    }
    let options = &session.shared.options;
    match handshake::handshake(plain, acceptor, options, &mut rest.stop).await {
        Ok(tls) => {
            let mut connection = rest.over(tls);
            if let Some(info) = connection.tls_info() {
                session.hooks.set_tls_info(info);
            }
            if options.verbosity == Verbosity::Verbose {
                console::err(&format!("{} TLS started", session.peer));
            }
            let result = exchange(&mut connection, &mut session).await;
            finish(connection, session, result).await;
        }
        Err(reason) => {
            console::err(&format!("{} TLS handshake failed: {reason}", session.peer));
            // The socket went with the handshake: no farewell can reach
            // the peer, but on_disconnect still runs and others hear it.
            let (farewell, errors) = disconnect(&mut session.hooks);
            broadcast_only(session.member.as_ref(), farewell);
            drop(session.member.take());
            tally(session.shared, &rest, errors + 1);
        }
    }
}

/// Ends a connection: `on_disconnect`, its farewell when the peer can
/// still hear it, the close, and the connection's counts.
async fn finish<S: Transport>(
    mut connection: ServerConnection<S>,
    mut session: Session<'_>,
    result: Result<End, ConnError>,
) {
    let options = &session.shared.options;
    let peer = session.peer;
    // on_disconnect's replies go out when the connection can still carry
    // them: the script closed it, or the server is shutting down.
    let farewell = matches!(
        result,
        Ok(End::ScriptClosed | End::Shutdown) | Err(ConnError::Stopped)
    );
    let mut errors = 0;
    let reason = match result {
        Ok(End::PeerClosed) => "closed by peer".to_string(),
        Ok(End::ScriptClosed) => "closed by script".to_string(),
        Ok(End::Shutdown) => "closed: server shutting down".to_string(),
        Ok(End::Idle(idle)) => {
            let reason = format!(
                "closed: idle for {} (--idle-timeout)",
                humantime::format_duration(idle)
            );
            if options.verbosity == Verbosity::Normal {
                console::err(&format!("{peer} {reason}"));
            }
            reason
        }
        Ok(End::StartTls) => unreachable!("starttls() is carried out before the end"),
        Err(ConnError::Stopped) => "closed: the server stopped before it finished".to_string(),
        Err(ConnError::HookFailed) => {
            errors += 1;
            "closed after a script error".to_string()
        }
        Err(other) => {
            errors += 1;
            console::err(&format!("{peer} {other}"));
            "closed after an error".to_string()
        }
    };
    let (mut farewell_reply, failed) = disconnect(&mut session.hooks);
    errors += failed;
    if farewell {
        let _ = Box::pin(perform(
            &mut connection,
            session.member.as_ref(),
            &mut farewell_reply,
        ))
        .await;
    } else {
        // The peer cannot hear it, but the others can.
        broadcast_only(session.member.as_ref(), farewell_reply);
    }
    drop(session.member.take());
    Box::pin(connection.close()).await;
    if options.verbosity == Verbosity::Verbose {
        console::err(&format!("{peer} {reason}"));
    }
    tally(session.shared, &connection, errors);
}

/// `on_disconnect`'s reply, and whether it failed (its error reported).
fn disconnect(hooks: &mut ConnectionHooks) -> (Reply, u64) {
    match hooks.on_disconnect() {
        Ok(reply) => (reply, 0),
        Err(failure) => {
            failure.error.eprint();
            (failure.before, 1)
        }
    }
}

/// Adds an ended connection to the server's summary.
fn tally<S>(shared: &Shared, connection: &ServerConnection<S>, errors: u64) {
    let counts = &shared.counts;
    counts.connections.fetch_add(1, Ordering::Relaxed);
    counts
        .messages_in
        .fetch_add(connection.messages_in, Ordering::Relaxed);
    counts
        .messages_out
        .fetch_add(connection.messages_out, Ordering::Relaxed);
    counts.errors.fetch_add(errors, Ordering::Relaxed);
}

/// `on_connect`, then the exchange of messages.
async fn converse<S: Transport>(
    connection: &mut ServerConnection<S>,
    session: &mut Session<'_>,
) -> Result<End, ConnError> {
    let member = session.member.as_ref();
    let mut greeting = match session.hooks.on_connect() {
        Ok(reply) => reply,
        Err(failure) => return Err(Box::pin(failed(connection, member, failure)).await),
    };
    let closed = perform(connection, member, &mut greeting).await?;
    let starttls = greeting.starttls;
    session.hooks.recycle(greeting);
    if closed {
        return Ok(End::ScriptClosed);
    }
    if starttls {
        return Ok(End::StartTls);
    }
    exchange(connection, session).await
}

/// Each message to `on_message` and its reply carried out, until the
/// connection ends or a hook calls `starttls()`.
async fn exchange<S: Transport>(
    connection: &mut ServerConnection<S>,
    session: &mut Session<'_>,
) -> Result<End, ConnError> {
    let idle = session.shared.idle.as_ref();
    let hooks = &mut session.hooks;
    let member = &mut session.member;
    let watch = idle.map(|clock| clock.watch());
    let mut rung = watch.as_ref().map(|watch| Box::pin(watch.rung.notified()));
    loop {
        // The peer's idle time counts from when we are ready for it again.
        if let (Some(clock), Some(watch)) = (idle, &watch) {
            clock.ready(watch);
        }
        let event = std::future::poll_fn(|cx| {
            let rung = rung.as_mut().map(|rung| rung.as_mut());
            let inbox = member.as_mut().map(|m| &mut m.inbox);
            connection.poll_event(cx, inbox, rung)
        })
        .await?;
        let frame = match event {
            Event::Message(Some(frame)) => frame,
            Event::Message(None) => return Ok(End::PeerClosed),
            Event::Broadcast(message) => {
                connection.queue(&message)?;
                connection.flush().await?;
                continue;
            }
            Event::Shutdown => return Ok(End::Shutdown),
            Event::Idle => match (idle, &watch) {
                (Some(clock), Some(watch)) if !clock.expired(watch) => {
                    // Told while it was busy, or before it was last ready.
                    rung = Some(Box::pin(watch.rung.notified()));
                    continue;
                }
                _ => return Ok(End::Idle(idle.map(IdleClock::limit).unwrap_or_default())),
            },
        };
        let mut reply = match connection.handle(frame, |message| hooks.on_message(message)) {
            Ok(reply) => reply,
            Err(failure) => {
                return Err(Box::pin(failed(connection, member.as_ref(), failure)).await);
            }
        };
        let closed = perform(connection, member.as_ref(), &mut reply).await?;
        let starttls = reply.starttls;
        hooks.recycle(reply);
        if closed {
            return Ok(End::ScriptClosed);
        }
        if starttls {
            return Ok(End::StartTls);
        }
    }
}

/// A hook failed: its error is reported at once, then what it had sent
/// before failing still goes out, and the connection ends.
async fn failed<S: Transport>(
    connection: &mut ServerConnection<S>,
    member: Option<&Member>,
    mut failure: HookFailure,
) -> ConnError {
    if let Some(diagnostic) = failure.error.diagnostic_mut() {
        diagnostic.transcript = connection.transcript.recent();
    }
    failure.error.eprint();
    let _ = perform(connection, member, &mut failure.before).await;
    ConnError::HookFailed
}

/// Carries out a hook's reply; true when the script asked to close.
async fn perform<S: Transport>(
    connection: &mut ServerConnection<S>,
    member: Option<&Member>,
    reply: &mut Reply,
) -> Result<bool, ConnError> {
    for action in reply.actions.drain(..) {
        match action {
            Action::Send(message) => {
                connection.queue(message.as_bytes())?;
                // A hook's many big replies go out as they are framed, not
                // all copied into the write buffer first.
                if connection.has_much_to_write() {
                    connection.flush().await?;
                }
            }
            Action::SendRaw(bytes) => {
                connection.queue_raw(bytes.as_bytes());
                if connection.has_much_to_write() {
                    connection.flush().await?;
                }
            }
            Action::Reframe(framing) => connection.reframe(framing),
            Action::Sleep(pause) => {
                connection.flush().await?;
                Box::pin(connection.pause(pause)).await;
            }
            // `to_client` and `to_server` refuse to run in a server's hooks.
            Action::ToClient(_) | Action::ToServer(_) => {}
            Action::Broadcast(message) => {
                if let Some(member) = member {
                    member.room.broadcast(member.id, message);
                }
            }
        }
    }
    if !connection.write_now()? {
        Box::pin(connection.flush_waiting()).await?;
    }
    Ok(reply.close)
}

/// The broadcasts of a reply that can no longer be sent to its peer.
fn broadcast_only(member: Option<&Member>, reply: Reply) {
    let Some(member) = member else { return };
    for action in reply.actions {
        if let Action::Broadcast(message) = action {
            member.room.broadcast(member.id, message);
        }
    }
}

/// This connection's place in the room; it leaves when dropped.
struct Member {
    room: Arc<Room>,
    id: u64,
    inbox: Inbox,
}

impl Member {
    fn join(room: &Arc<Room>, peer: SocketAddr) -> Self {
        let (id, inbox) = room.join(peer.to_string());
        Member {
            room: room.clone(),
            id,
            inbox,
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.room.leave(self.id);
    }
}
