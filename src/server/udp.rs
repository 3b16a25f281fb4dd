//! `tcpscript server --udp`: a session per source address, with the same
//! hooks as a TCP connection: `on_connect` at a peer's first datagram,
//! `on_message` for each message, `on_disconnect` when the session ends
//! (idle past `--idle-timeout`, `close()`, evicted at `--max-sessions`, or
//! the server stopping).
//!
//! One task drives every session: one receive loop, a map from address to
//! session, and a queue of activity for the idle limit and eviction. It
//! takes the datagrams waiting in one call and sends their replies a few
//! at a time in one call (see `net::datagrams`). Hooks never block (see
//! `hooks`), so a task per session would buy nothing but a stack and a
//! channel each; a session here is its hooks and a few words, which keeps
//! 10,000 live sessions within a few MiB.
//!
//! What differs from TCP: nothing closes under a session, so the replies
//! of `on_disconnect` always go out; nothing orders or delivers for us, so
//! a reply after a `sleep()` may pass the replies of later messages, and a
//! broadcast to a peer whose socket buffer is full is dropped.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::ServerOptions;
use super::alarm::Alarm;
use super::hooks::{Action, ConnectionHooks, HookFailure, Reply, ServerScript};
use super::room::Room;
use super::shutdown::Counts;
use crate::console;
use crate::framing::{self, DatagramLimit, Framing};
use crate::net::datagrams::{Outgoing, Received, Socket};
use crate::transcript::{Direction, Transcript, Verbosity};

/// `--idle-timeout` of a UDP server unless given: a peer never says it
/// has gone, so a session must end by itself.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// `--max-sessions` unless given.
pub(crate) const DEFAULT_MAX_SESSIONS: usize = 10_000;
/// Batches taken in a row before the loop looks at whether to stop, at
/// its alarm (idle sessions, pauses that ended): a flood must not starve
/// them.
const BATCHES_PER_TURN: usize = 8;
/// Datagrams of a batch whose replies are sent together. Waiting for a
/// whole batch of 32 held the first peer's reply back until the 32nd
/// hook had run: at 50 peers, 0.85x the floor's rate against 0.92x to
/// 1.00x for replies sent every 2 to 4 datagrams, for the same CPU.
const REPLIES_PER_SEND: usize = 4;

/// What woke the loop, in the order it looks.
enum Turn {
    Stop,
    /// The alarm rang: a session may have been idle too long, or a pause
    /// may be over.
    Due,
    Receive(std::io::Result<()>),
}

/// What only a UDP server has.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UdpOptions {
    /// Live sessions at most; a new peer past it evicts the idlest.
    pub(crate) max_sessions: usize,
}

/// One peer's session.
struct Session {
    peer: SocketAddr,
    hooks: ConnectionHooks,
    /// The script's `set_framing()`, when it changed the server's.
    framing: Option<Box<Framing>>,
    /// Its latest entry in the queue of activity.
    stamp: u64,
    transcript: Transcript,
    /// Its place in `peers()`, when the script lists peers: held until
    /// the session ends.
    _roster: Option<Roster>,
}

/// The live sessions: found by address once per datagram, then reached
/// by their slot. Looking a session up by address at each step of a
/// datagram (its activity, its hook, each reply's transcript, the reply's
/// recycling) cost four hashes and probes a datagram.
#[derive(Default)]
struct Sessions {
    slots: HashMap<SocketAddr, usize, ahash::RandomState>,
    sessions: Vec<Option<Session>>,
    /// Slots of ended sessions, taken again first.
    free: Vec<usize>,
}

impl Sessions {
    fn len(&self) -> usize {
        self.slots.len()
    }

    fn slot(&self, peer: &SocketAddr) -> Option<usize> {
        self.slots.get(peer).copied()
    }

    /// The session in `slot`, if it is still `peer`'s: a slot is taken
    /// again once its session ends.
    fn at(&mut self, slot: usize, peer: SocketAddr) -> Option<&mut Session> {
        self.sessions
            .get_mut(slot)
            .and_then(Option::as_mut)
            .filter(|session| session.peer == peer)
    }

    fn get(&self, peer: &SocketAddr) -> Option<&Session> {
        let slot = self.slot(peer)?;
        self.sessions[slot].as_ref()
    }

    fn get_mut(&mut self, peer: &SocketAddr) -> Option<&mut Session> {
        let slot = self.slot(peer)?;
        self.sessions[slot].as_mut()
    }

    fn insert(&mut self, session: Session) -> usize {
        let peer = session.peer;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.sessions[slot] = Some(session);
                slot
            }
            None => {
                self.sessions.push(Some(session));
                self.sessions.len() - 1
            }
        };
        self.slots.insert(peer, slot);
        slot
    }

    fn remove(&mut self, peer: &SocketAddr) -> Option<Session> {
        let slot = self.slots.remove(peer)?;
        self.free.push(slot);
        self.sessions[slot].take()
    }

    fn peers(&self) -> Vec<SocketAddr> {
        self.slots.keys().copied().collect()
    }
}

/// Why a session ended.
enum End {
    ScriptClosed,
    Idle,
    Evicted(Duration),
    Shutdown,
    HookFailed,
}

/// The actions of a reply that follow a `sleep()`: carried out by the
/// loop once the pause is over, so that one session's pause delays no one
/// else.
struct Delayed {
    due: Instant,
    /// Pauses due at the same time end in the order they began.
    order: u64,
    peer: SocketAddr,
    reply: Reply,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    /// Reversed, so that the max-heap's top is the pause due first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.order).cmp(&(self.due, self.order))
    }
}

struct Server {
    socket: Arc<Socket>,
    script: Arc<ServerScript>,
    options: ServerOptions,
    udp: UdpOptions,
    idle: Duration,
    limit: DatagramLimit,
    sessions: Sessions,
    /// Who was active when, oldest first: a peer, the stamp it had then,
    /// and the time. An entry whose stamp is no longer its session's is
    /// stale, and skipped; the queue is compacted when they pile up.
    activity: VecDeque<(SocketAddr, u64, Instant)>,
    next_stamp: u64,
    /// Datagrams framed and waiting to be sent with the batch.
    outgoing: Outgoing,
    /// A framed datagram's bytes, and where its messages lie in them.
    scratch: BytesMut,
    records: Vec<Range<usize>>,
    /// Replies waiting for their `sleep()` to end, the one due first on
    /// top: kept by the loop under its alarm rather than a task each, so
    /// that a loop with no pause looks at nothing for them.
    paused: BinaryHeap<Delayed>,
    pauses: u64,
    ended: u64,
    messages_in: u64,
    messages_out: u64,
    errors: u64,
    broadcasts_dropped: u64,
}

/// Serves datagrams on `socket` until its alarm's stopper stops it; then every
/// session ends through `on_disconnect`. `alarm` keeps the loop's
/// deadlines: the idle limit's and the first pause's. Returns the summary
/// line.
pub(super) async fn serve(
    socket: Socket,
    script: ServerScript,
    options: ServerOptions,
    udp: UdpOptions,
    mut alarm: Alarm,
) -> String {
    let socket = Arc::new(socket);
    let mut server = Server {
        socket: socket.clone(),
        script: Arc::new(script),
        idle: options.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
        limit: DatagramLimit::new(options.max_frame),
        options,
        udp,
        sessions: Sessions::default(),
        activity: VecDeque::new(),
        next_stamp: 0,
        outgoing: Outgoing::default(),
        scratch: BytesMut::new(),
        records: Vec::new(),
        paused: BinaryHeap::new(),
        pauses: 0,
        ended: 0,
        messages_in: 0,
        messages_out: 0,
        errors: 0,
        broadcasts_dropped: 0,
    };
    let mut received = Received::new();
    loop {
        // Datagrams last: a flood that always has one waiting must not keep
        // the server from stopping, sessions from expiring or a pause from
        // ending. Polled by hand rather than through `select!`:
        // `readable()` puts a waiter in a locked list and takes it out
        // again at every wait, where `poll_recv_ready` keeps one waker.
        let turn = std::future::poll_fn(|cx| {
            if alarm.poll_rung(cx).is_ready() {
                return Poll::Ready(if alarm.stopped() {
                    Turn::Stop
                } else {
                    Turn::Due
                });
            }
            socket.poll_recv_ready(cx).map(Turn::Receive)
        })
        .await;
        match turn {
            Turn::Stop => break,
            // Each looks at the time itself: a ring may be for a deadline
            // that has moved since.
            Turn::Due => {
                server.expire().await;
                server.resume().await;
            }
            Turn::Receive(Ok(())) => server.drain(&mut received).await,
            Turn::Receive(Err(e)) => console::err(&format!("udp receive failed: {e}")),
        }
        server.flush().await;
        // The oldest activity decides the next expiry. One busy peer moves
        // it at every datagram, but only later: the alarm keeps its
        // earlier ring, and `expire` sets it again once it has looked.
        let expiry = server.activity.front().map(|&(_, _, at)| at + server.idle);
        let resume = server.paused.peek().map(|first| first.due);
        alarm.set_by(match (expiry, resume) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        });
    }
    server.finish_pauses(super::shutdown::GRACE).await;
    server.shut_down().await;
    let counts = Counts::default();
    counts.connections.store(server.ended, Ordering::Relaxed);
    counts
        .messages_in
        .store(server.messages_in, Ordering::Relaxed);
    counts
        .messages_out
        .store(server.messages_out, Ordering::Relaxed);
    counts.errors.store(server.errors, Ordering::Relaxed);
    counts.summary_of("sessions", server.broadcasts_dropped)
}

impl Server {
    /// Takes the datagrams waiting, a batch at a time, each batch's
    /// replies sent before the next is taken. It goes on until the socket
    /// has nothing (which clears its readiness, so the loop then waits
    /// at once instead of coming back for nothing) or for at most
    /// [`BATCHES_PER_TURN`] batches.
    async fn drain(&mut self, received: &mut Received) {
        for _ in 0..BATCHES_PER_TURN {
            let count = match received.take(&self.socket) {
                Ok(count) => count,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                // A Linux socket with no peer of its own hears of no ICMP
                // error; what is left is rare and passes.
                Err(e) => {
                    console::err(&format!("udp receive failed: {e}"));
                    return;
                }
            };
            let now = Instant::now();
            for index in 0..count {
                let (peer, datagram) = received.get(index);
                self.datagram(peer, datagram, now).await;
                if (index + 1) % REPLIES_PER_SEND == 0 {
                    self.flush().await;
                }
            }
            self.flush().await;
        }
    }

    /// Sends the replies queued.
    async fn flush(&mut self) {
        if self.outgoing.is_empty() {
            return;
        }
        let (errors, verbosity) = (&mut self.errors, self.options.verbosity);
        let flushed = self
            .outgoing
            .send(&self.socket, |peer, e| {
                *errors += 1;
                if verbosity >= Verbosity::Normal {
                    console::err(&format!("{peer} cannot send: {e}"));
                }
            })
            .await;
        self.messages_out += flushed.sent;
        self.broadcasts_dropped += flushed.dropped;
    }

    /// One datagram: its session found or started, each of its messages
    /// handed to `on_message`, and the replies queued.
    async fn datagram(&mut self, peer: SocketAddr, datagram: &[u8], now: Instant) {
        // One lookup of the session for the whole datagram when it exists.
        let slot = match self.sessions.slot(&peer) {
            Some(slot) => slot,
            None => {
                if !self.open(peer).await {
                    return;
                }
                let Some(slot) = self.sessions.slot(&peer) else {
                    return;
                };
                slot
            }
        };
        let Some(framing) = self.touch(slot, peer, now) else {
            return;
        };
        let mut records = std::mem::take(&mut self.records);
        records.clear();
        let split = framing::datagram_records(
            &framing,
            self.options.max_frame,
            datagram,
            &mut self.scratch,
            &mut records,
        );
        if let Err(e) = split {
            self.errors += 1;
            if self.options.verbosity >= Verbosity::Normal {
                console::err(&format!("{peer} {e}"));
            }
        }
        for range in records.drain(..) {
            // Gone if a message before ended it.
            let Some(session) = self.sessions.at(slot, peer) else {
                break;
            };
            let message = &datagram[range];
            self.messages_in += 1;
            session.transcript.record(Direction::Received, message);
            match session.hooks.on_message(message) {
                Ok(reply) => {
                    if self.perform_in(Some(slot), peer, &framing, reply).await {
                        self.end(peer, End::ScriptClosed).await;
                    }
                }
                Err(failure) => self.failed(peer, failure).await,
            }
        }
        self.records = records;
    }

    /// Starts a session at a peer's first datagram, evicting the idlest
    /// when there are `--max-sessions` already. False when `on_connect`
    /// ended it at once (it failed, or closed).
    async fn open(&mut self, peer: SocketAddr) -> bool {
        if self.sessions.len() >= self.udp.max_sessions {
            self.evict().await;
        }
        let options = &self.options;
        let mut hooks = self
            .script
            .connection(peer, &options.framing, options.max_frame);
        hooks.in_datagrams(self.limit.max);
        let session = Session {
            peer,
            hooks,
            framing: None,
            stamp: 0,
            transcript: Transcript::new(options.verbosity, format!("{peer} ")),
            _roster: self.script.room().map(|room| Roster::join(room, peer)),
        };
        if options.verbosity == Verbosity::Verbose {
            console::err(&format!("{peer} session started"));
        }
        let slot = self.sessions.insert(session);
        let Some(session) = self.sessions.at(slot, peer) else {
            return false;
        };
        match session.hooks.on_connect() {
            Ok(reply) => {
                let framing = self.options.framing.clone();
                if self.perform(peer, &framing, reply).await {
                    self.end(peer, End::ScriptClosed).await;
                    return false;
                }
                true
            }
            Err(failure) => {
                self.failed(peer, failure).await;
                false
            }
        }
    }

    /// The session's framing: the server's, or what its script set.
    fn framing_of(&self, peer: SocketAddr) -> Framing {
        match self.sessions.get(&peer).and_then(|s| s.framing.as_deref()) {
            Some(framing) => framing.clone(),
            None => self.options.framing.clone(),
        }
    }

    /// Marks the session active now; its framing, or `None` when there is
    /// no session.
    fn touch(&mut self, slot: usize, peer: SocketAddr, now: Instant) -> Option<Framing> {
        let session = self.sessions.at(slot, peer)?;
        let last = session.stamp;
        self.next_stamp += 1;
        session.stamp = self.next_stamp;
        let framing = match session.framing.as_deref() {
            Some(framing) => framing.clone(),
            None => self.options.framing.clone(),
        };
        // A peer that was also the last one active moves its own entry,
        // still the newest: one busy peer leaves no stale entries behind.
        match self.activity.back_mut() {
            Some(back) if back.0 == peer && back.1 == last => {
                *back = (peer, self.next_stamp, now);
            }
            _ => self.activity.push_back((peer, self.next_stamp, now)),
        }
        // Each busy session leaves stale entries behind; dropping them
        // once they outnumber the sessions keeps the queue's cost per
        // datagram constant.
        if self.activity.len() > 2 * self.sessions.len() + 1024 {
            let sessions = &self.sessions;
            self.activity
                .retain(|(peer, stamp, _)| sessions.get(peer).is_some_and(|s| s.stamp == *stamp));
        }
        Some(framing)
    }

    /// The session idle the longest, and since when: the queue's front
    /// once stale entries are dropped.
    fn idlest(&mut self) -> Option<(SocketAddr, Instant)> {
        while let Some(&(peer, stamp, at)) = self.activity.front() {
            if self.sessions.get(&peer).is_some_and(|s| s.stamp == stamp) {
                return Some((peer, at));
            }
            self.activity.pop_front();
        }
        None
    }

    /// Ends every session idle past the limit.
    async fn expire(&mut self) {
        let now = Instant::now();
        while let Some((peer, at)) = self.idlest() {
            if at + self.idle > now {
                break;
            }
            self.activity.pop_front();
            self.end(peer, End::Idle).await;
        }
    }

    /// Makes room for a new peer: the session idle the longest ends.
    async fn evict(&mut self) {
        if let Some((peer, at)) = self.idlest() {
            self.activity.pop_front();
            self.end(peer, End::Evicted(at.elapsed())).await;
        }
    }

    /// Ends a session: `on_disconnect`, whose replies still reach the
    /// peer (nothing closed under it), and its counts.
    async fn end(&mut self, peer: SocketAddr, end: End) {
        let Some(mut session) = self.sessions.remove(&peer) else {
            return;
        };
        let verbosity = self.options.verbosity;
        let reason = match end {
            End::ScriptClosed => "closed by script".to_string(),
            End::Shutdown => "ended: server shutting down".to_string(),
            End::HookFailed => "ended after a script error".to_string(),
            End::Idle => format!(
                "ended: idle for {} (--idle-timeout)",
                humantime::format_duration(self.idle)
            ),
            End::Evicted(idle) => format!(
                "evicted: {} sessions are live (--max-sessions), and it was idle the longest ({})",
                self.udp.max_sessions,
                humantime::format_duration(round_to_millis(idle))
            ),
        };
        // Idle ends and evictions are the server's own decisions: said
        // unless --quiet. The others are said with -v, as for TCP.
        let said = match end {
            End::Idle | End::Evicted(_) => verbosity >= Verbosity::Normal,
            _ => verbosity == Verbosity::Verbose,
        };
        if said {
            console::err(&format!("{peer} {reason}"));
        }
        let framing = session
            .framing
            .take()
            .map_or_else(|| self.options.framing.clone(), |f| *f);
        let farewell = match session.hooks.on_disconnect() {
            Ok(reply) => reply,
            Err(failure) => {
                failure.error.eprint();
                self.errors += 1;
                failure.before
            }
        };
        drop(session);
        // A `close()` here has nothing left to close.
        let _ = Box::pin(self.perform(peer, &framing, farewell)).await;
        self.ended += 1;
    }

    /// A hook failed: its error is reported, what it sent before failing
    /// goes out, and the session ends.
    async fn failed(&mut self, peer: SocketAddr, mut failure: HookFailure) {
        self.errors += 1;
        if let (Some(diagnostic), Some(session)) =
            (failure.error.diagnostic_mut(), self.sessions.get(&peer))
        {
            diagnostic.transcript = session.transcript.recent();
        }
        failure.error.eprint();
        let framing = self.framing_of(peer);
        let _ = self.perform(peer, &framing, failure.before).await;
        Box::pin(self.end(peer, End::HookFailed)).await;
    }

    /// Carries out what followed each `sleep()` that is over.
    async fn resume(&mut self) {
        let now = Instant::now();
        while self.paused.peek().is_some_and(|first| first.due <= now) {
            let Some(delayed) = self.paused.pop() else {
                break;
            };
            let framing = self.framing_of(delayed.peer);
            if self.perform(delayed.peer, &framing, delayed.reply).await {
                self.end(delayed.peer, End::ScriptClosed).await;
            }
        }
    }

    /// Carries out a hook's reply, each send one datagram; true when the
    /// script asked to close. What follows a `sleep()` is carried out once
    /// the pause is over, the close with it.
    async fn perform(&mut self, peer: SocketAddr, framing: &Framing, reply: Reply) -> bool {
        let slot = self.sessions.slot(&peer);
        self.perform_in(slot, peer, framing, reply).await
    }

    /// [`Server::perform`] for the session in `slot`, when it has one.
    async fn perform_in(
        &mut self,
        slot: Option<usize>,
        peer: SocketAddr,
        framing: &Framing,
        mut reply: Reply,
    ) -> bool {
        let mut framing = std::borrow::Cow::Borrowed(framing);
        let mut actions = std::mem::take(&mut reply.actions);
        let mut pending = actions.drain(..);
        while let Some(action) = pending.next() {
            match action {
                Action::Send(message) => {
                    self.send(slot, peer, Some(&framing), message.as_bytes())
                        .await;
                }
                Action::SendRaw(bytes) => self.send(slot, peer, None, bytes.as_bytes()).await,
                Action::Reframe(new) => {
                    if let Some(session) = slot.and_then(|slot| self.sessions.at(slot, peer)) {
                        session.framing = Some(Box::new(new.clone()));
                    }
                    framing = std::borrow::Cow::Owned(new);
                }
                Action::Sleep(pause) => {
                    let rest = Reply {
                        actions: pending.collect(),
                        close: reply.close,
                        ..Reply::default()
                    };
                    self.pauses += 1;
                    self.paused.push(Delayed {
                        due: Instant::now() + pause,
                        order: self.pauses,
                        peer,
                        reply: rest,
                    });
                    return false;
                }
                Action::Broadcast(message) => self.broadcast(peer, &message).await,
                // `to_client` and `to_server` refuse to run in a server's hooks.
                Action::ToClient(_) | Action::ToServer(_) => {}
            }
        }
        drop(pending);
        let close = reply.close;
        reply.actions = actions;
        if let Some(session) = slot.and_then(|slot| self.sessions.at(slot, peer)) {
            session.hooks.recycle(reply);
        }
        close
    }

    /// One message to `peer` as one datagram, framed unless `framing` is
    /// `None` (`send_raw`), queued to go with the batch's other replies.
    /// A datagram too large is refused, and said.
    async fn send(
        &mut self,
        slot: Option<usize>,
        peer: SocketAddr,
        framing: Option<&Framing>,
        message: &[u8],
    ) {
        let out = self.outgoing.next();
        let framed = match framing {
            Some(framing) => framing::encode(framing, message, out),
            None => {
                out.extend_from_slice(message);
                Ok(())
            }
        };
        if let Err(e) = framed.and_then(|()| self.limit.check(self.outgoing.next_len())) {
            self.outgoing.abandon();
            self.errors += 1;
            console::err(&format!("{peer} cannot send: {e}"));
            return;
        }
        self.outgoing.queue(peer, false);
        // Shown as it is queued, so that a session's transcript keeps the
        // order of its messages; a send that fails is said when it does.
        if let Some(session) = slot.and_then(|slot| self.sessions.at(slot, peer)) {
            session.transcript.record(Direction::Sent, message);
        }
        if self.outgoing.is_full() {
            self.flush().await;
        }
    }

    /// `broadcast()`: to every other live session, in its own framing.
    /// A peer whose datagrams the socket cannot take now misses it, as a
    /// TCP member that reads too slowly does.
    async fn broadcast(&mut self, from: SocketAddr, message: &[u8]) {
        let peers = self.sessions.peers();
        for peer in peers {
            let Some(session) = self.sessions.get_mut(&peer).filter(|_| peer != from) else {
                continue;
            };
            let framing = session.framing.as_deref().unwrap_or(&self.options.framing);
            let framed = framing::encode(framing, message, self.outgoing.next())
                .and_then(|()| self.limit.check(self.outgoing.next_len()));
            if framed.is_err() {
                self.outgoing.abandon();
                self.broadcasts_dropped += 1;
                continue;
            }
            self.outgoing.queue(peer, true);
            session.transcript.record(Direction::Sent, message);
            if self.outgoing.is_full() {
                self.flush().await;
            }
        }
    }

    /// The server stops: replies still waiting out a `sleep()` go out as
    /// they fall due, within the grace a TCP connection gets to finish;
    /// what falls due later is cut short.
    async fn finish_pauses(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while let Some(due) = self.paused.peek().map(|first| first.due) {
            if due > deadline {
                break;
            }
            // Nothing else runs on this loop any more, and its runtime
            // has no timer (see `udp_runtime`): a plain sleep it is.
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            self.resume().await;
            self.flush().await;
        }
    }

    /// The server stops: every session ends through `on_disconnect`.
    async fn shut_down(&mut self) {
        let peers = self.sessions.peers();
        for peer in peers {
            self.end(peer, End::Shutdown).await;
        }
        self.flush().await;
    }
}

/// An eviction says how long the session was idle; sub-millisecond digits
/// are noise.
fn round_to_millis(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// A session's place in the room, for `peers()`; it leaves when dropped.
/// Broadcasts do not go through the room's inboxes: the loop sends them.
struct Roster {
    room: Arc<Room>,
    id: u64,
}

impl Roster {
    fn join(room: &Arc<Room>, peer: SocketAddr) -> Self {
        let (id, _inbox) = room.join(peer.to_string());
        Roster {
            room: room.clone(),
            id,
        }
    }
}

impl Drop for Roster {
    fn drop(&mut self) {
        self.room.leave(self.id);
    }
}
