//! `proxy --udp`: a session per client address, each with a socket of its
//! own connected to the upstream, so that the upstream's replies come back
//! to the client they answer. A session ends after `--idle-timeout` with
//! no datagram either way, or at shutdown.
//!
//! One datagram is one message. The faults that matter for UDP apply to
//! every datagram sent in a direction (what the client or upstream sent,
//! what a hook made of it, what a hook injected): `--loss`, `--duplicate`,
//! `--reorder`, `--latency`/`--jitter`, `--blackhole-after`, all seeded.
//! Datagrams waiting out a delay are bounded per session in bytes, and
//! those waiting for their session's task in all inboxes together; past
//! either bound they are dropped, as a full router queue would.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use super::Shared;
use super::toxics::{Fate, Shaper, SplitMix64, Way};
use crate::console;
use crate::server::hooks::{Action, ConnectionHooks, HookFailure, Reply};
use crate::transcript::Verbosity;

/// The largest UDP payload over IPv4; a buffer one larger tells a
/// datagram that did not fit (none can, but the check costs nothing).
const DATAGRAM: usize = 65_507;
/// Datagrams from one client waiting for its session's task.
const INBOX: usize = 256;
/// Bytes of datagrams waiting in all sessions' inboxes together: a flood
/// of large datagrams from many addresses is dropped past it, not queued.
const INBOX_BYTES: usize = 16 << 20;
/// Bytes one session may hold waiting out delays.
const HELD_LIMIT: usize = 1 << 20;
/// How long a reordered datagram waits for one to overtake it.
const REORDER_HOLD: Duration = Duration::from_millis(100);

/// Serves until `stop`; returns the summary.
pub(super) async fn serve(
    socket: UdpSocket,
    shared: Arc<Shared>,
    stop: impl std::future::Future<Output = ()>,
) -> String {
    let socket = Arc::new(socket);
    let (hard_tx, hard_rx) = watch::channel(false);
    // A session that ends says which it was: by then the client's next
    // datagram may have started another under the same address.
    let (ended_tx, mut ended_rx) = mpsc::channel::<(SocketAddr, u64)>(INBOX);
    // ahash, keyed per process as SipHash is, at a fraction of its cost per
    // datagram: clients still cannot aim at collisions.
    let mut sessions: HashMap<SocketAddr, (u64, mpsc::Sender<Vec<u8>>), ahash::RandomState> =
        HashMap::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; DATAGRAM + 1];
    let mut index = 0u64;
    let mut full_warned = false;
    let waiting = Arc::new(AtomicUsize::new(0));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            Some((peer, ended)) = ended_rx.recv() => {
                if sessions.get(&peer).is_some_and(|(index, _)| *index == ended) {
                    sessions.remove(&peer);
                }
                // A finished task's entry stays in the set until taken.
                while tasks.try_join_next().is_some() {}
            }
            received = socket.recv_from(&mut buf) => {
                let (n, peer) = match received {
                    Ok(received) => received,
                    // An ICMP error for an earlier send_to: nothing to do
                    // with the datagrams still coming.
                    Err(_) => continue,
                };
                let datagram = buf[..n.min(DATAGRAM)].to_vec();
                let len = datagram.len();
                // Sessions behind on their inboxes: the datagram is lost,
                // as on a congested link.
                if waiting.fetch_add(len, Ordering::Relaxed) + len > INBOX_BYTES {
                    waiting.fetch_sub(len, Ordering::Relaxed);
                    shared.counts.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let datagram = match sessions.get(&peer) {
                    None => datagram,
                    Some((_, inbox)) => match inbox.try_send(datagram) {
                        Ok(()) => continue,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            waiting.fetch_sub(len, Ordering::Relaxed);
                            shared.counts.dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        // The session ended (idle) and is not removed yet:
                        // this datagram starts the client's next one.
                        Err(mpsc::error::TrySendError::Closed(datagram)) => {
                            sessions.remove(&peer);
                            datagram
                        }
                    },
                };
                if sessions.len() >= shared.options.max_sessions {
                    waiting.fetch_sub(len, Ordering::Relaxed);
                    shared.counts.dropped.fetch_add(1, Ordering::Relaxed);
                    if !full_warned {
                        full_warned = true;
                        console::err(&format!(
                            "{} sessions are live (--max-sessions): datagrams from new clients are dropped until one ends",
                            sessions.len()
                        ));
                    }
                    continue;
                }
                full_warned = false;
                index += 1;
                let (inbox, rx) = mpsc::channel(INBOX);
                let _ = inbox.try_send(datagram);
                sessions.insert(peer, (index, inbox));
                let session = Session {
                    peer,
                    index,
                    client: socket.clone(),
                    shared: shared.clone(),
                    waiting: waiting.clone(),
                };
                let hard = hard_rx.clone();
                let ended = ended_tx.clone();
                tasks.spawn(async move {
                    session.run(rx, hard).await;
                    let _ = ended.send((peer, index)).await;
                });
            }
        }
    }
    // Each session's on_disconnect runs: closing the inboxes ends them.
    drop(sessions);
    if tokio::time::timeout(crate::server::shutdown::GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        hard_tx.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
    }
    shared.counts.udp_summary()
}

/// Which way a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dest {
    Upstream,
    Client,
}

impl Dest {
    fn way(self) -> Way {
        match self {
            Dest::Upstream => Way::Up,
            Dest::Client => Way::Down,
        }
    }
}

struct Session {
    peer: SocketAddr,
    index: u64,
    /// The proxy's listening socket: what the client sees answer it.
    client: Arc<UdpSocket>,
    shared: Arc<Shared>,
    /// Bytes in every session's inbox: this one takes off what it reads.
    waiting: Arc<AtomicUsize>,
}

/// One direction's faults, and a datagram held back to be overtaken.
struct Lane {
    shaper: Option<Shaper>,
    held: Option<(Instant, Vec<u8>)>,
}

/// A datagram waiting: when it is due, its place in line (so that equal
/// times keep their order), where it goes.
type Waiting = Reverse<(Instant, u64, Dest, Vec<u8>)>;

/// What waits to be sent, by when it is due.
struct Outbox {
    queue: BinaryHeap<Waiting>,
    seq: u64,
    bytes: usize,
    up: Lane,
    down: Lane,
}

impl Outbox {
    fn lane(&mut self, dest: Dest) -> &mut Lane {
        match dest {
            Dest::Upstream => &mut self.up,
            Dest::Client => &mut self.down,
        }
    }

    /// Queues `data` for `dest` after `extra`, through that direction's
    /// faults; false when it was dropped for want of room.
    fn send(&mut self, dest: Dest, data: Vec<u8>, extra: Duration, counts: &super::Counts) {
        let now = Instant::now();
        let lane = self.lane(dest);
        let mut due = now + extra;
        let mut copies = 1;
        if let Some(shaper) = &mut lane.shaper {
            if shaper.blackholed() {
                counts.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            match shaper.datagram_fate() {
                Fate::Lost => {
                    counts.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Fate::Twice => copies = 2,
                Fate::Held if lane.held.is_none() => {
                    lane.held = Some((shaper.chunk_due(now) + extra + REORDER_HOLD, data));
                    return;
                }
                Fate::Held | Fate::Once => {}
            }
            due = shaper.chunk_due(now) + extra;
        }
        let overtaken = lane.held.take();
        for _ in 0..copies {
            self.push(due, dest, data.clone(), counts);
        }
        if let Some((_, held)) = overtaken {
            self.push(due, dest, held, counts);
        }
    }

    /// Queues `data`, or drops it (counted) when the session holds
    /// [`HELD_LIMIT`] already.
    fn push(&mut self, due: Instant, dest: Dest, data: Vec<u8>, counts: &super::Counts) {
        if self.bytes + data.len() > HELD_LIMIT {
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.bytes += data.len();
        self.seq += 1;
        self.queue.push(Reverse((due, self.seq, dest, data)));
    }

    /// The earliest time something is due: a queued datagram, or a held
    /// one that nothing overtook.
    fn next_due(&self) -> Option<Instant> {
        let queued = self.queue.peek().map(|Reverse((due, ..))| *due);
        [
            queued,
            self.up.held.as_ref().map(|h| h.0),
            self.down.held.as_ref().map(|h| h.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// What is due now, in order.
    fn take_due(&mut self, now: Instant, counts: &super::Counts) -> Vec<(Dest, Vec<u8>)> {
        let mut out = Vec::new();
        for dest in [Dest::Upstream, Dest::Client] {
            let lane = self.lane(dest);
            if lane.held.as_ref().is_some_and(|(due, _)| *due <= now)
                && let Some((due, data)) = lane.held.take()
            {
                self.push(due, dest, data, counts);
            }
        }
        while let Some(Reverse((due, ..))) = self.queue.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((_, _, dest, data))) = self.queue.pop() else {
                break;
            };
            self.bytes -= data.len();
            out.push((dest, data));
        }
        out
    }
}

impl Session {
    async fn run(self, mut inbox: mpsc::Receiver<Vec<u8>>, mut hard: watch::Receiver<bool>) {
        let Session {
            peer,
            index,
            ref shared,
            ..
        } = self;
        let options = &shared.options;
        let counts = &shared.counts;
        let upstream = match connect(&shared.upstream).await {
            Ok(upstream) => upstream,
            Err(e) => {
                console::err(&format!(
                    "#{index} {peer}: cannot open a socket to upstream {}: {e}",
                    options.upstream
                ));
                counts.errors.fetch_add(1, Ordering::Relaxed);
                counts.connections.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let started = Instant::now();
        let mut rng = SplitMix64::for_connection(shared.seed, index);
        let plan = options.toxics.plan(&mut rng, started);
        if plan.is_some() {
            counts.faulted.fetch_add(1, Ordering::Relaxed);
        }
        let (up, down) = match plan {
            Some(plan) => (plan.up, plan.down),
            None => (None, None),
        };
        let mut outbox = Outbox {
            queue: BinaryHeap::new(),
            seq: 0,
            bytes: 0,
            up: Lane {
                shaper: up,
                held: None,
            },
            down: Lane {
                shaper: down,
                held: None,
            },
        };
        let verbose = options.verbosity >= Verbosity::Verbose;
        if verbose {
            console::err(&format!(
                "#{index} {peer} session open to upstream {}",
                options.upstream
            ));
        }
        let script = shared.script.as_ref();
        let mut hooks = script.map(|script| script.hooks_for(peer));
        let (client_hook, server_hook) =
            script.map_or((false, false), |script| script.hooks_each_way());
        let mut ending = "ended (--idle-timeout)";
        if let Some(hooks) = &mut hooks
            && !apply(hooks.on_connect(), Dest::Client, &mut outbox, counts)
        {
            ending = "ended by the script";
        }
        let idle = options.idle_timeout;
        let mut last = Instant::now();
        let mut buf = vec![0u8; DATAGRAM + 1];
        let (mut up_count, mut down_count) = (0u64, 0u64);
        if ending != "ended by the script" {
            loop {
                let due = outbox.next_due();
                tokio::select! {
                    received = inbox.recv() => {
                        let Some(datagram) = received else {
                            ending = "ended by the proxy's shutdown";
                            break;
                        };
                        self.waiting.fetch_sub(datagram.len(), Ordering::Relaxed);
                        last = Instant::now();
                        up_count += 1;
                        if !forward(&mut hooks, client_hook, Dest::Upstream, datagram, &mut outbox, counts) {
                            ending = "ended by the script";
                            break;
                        }
                    }
                    received = upstream.recv(&mut buf) => {
                        let n = match received {
                            Ok(n) => n,
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                                // ICMP port unreachable: the upstream is not
                                // there (yet); later datagrams may find it.
                                counts.errors.fetch_add(1, Ordering::Relaxed);
                                console::err(&format!(
                                    "#{index} {peer}: nothing listens on upstream udp {}",
                                    options.upstream
                                ));
                                continue;
                            }
                            Err(e) => {
                                console::err(&format!("#{index} {peer}: upstream: {e}"));
                                counts.errors.fetch_add(1, Ordering::Relaxed);
                                ending = "ended by an error";
                                break;
                            }
                        };
                        last = Instant::now();
                        down_count += 1;
                        let datagram = buf[..n.min(DATAGRAM)].to_vec();
                        if !forward(&mut hooks, server_hook, Dest::Client, datagram, &mut outbox, counts) {
                            ending = "ended by the script";
                            break;
                        }
                    }
                    _ = sleep_until(due.unwrap_or(last)), if due.is_some() => {}
                    _ = sleep_until(last + idle) => break,
                    _ = hard.wait_for(|stopped| *stopped) => {
                        ending = "ended by the proxy's shutdown";
                        break;
                    }
                }
                for (dest, data) in outbox.take_due(Instant::now(), counts) {
                    deliver(dest, &data, &upstream, &self.client, (index, peer), counts).await;
                }
            }
        }
        // What waits unread leaves the inboxes' budget with the session.
        inbox.close();
        while let Ok(datagram) = inbox.try_recv() {
            self.waiting.fetch_sub(datagram.len(), Ordering::Relaxed);
        }
        if let Some(hooks) = &mut hooks {
            // Its sends go nowhere: the session is over.
            let _ = hooks.on_disconnect().map(|mut reply| reply.actions.clear());
        }
        counts.connections.fetch_add(1, Ordering::Relaxed);
        if verbose {
            console::err(&format!(
                "#{index} {peer} {ending} after {:.3}s: {up_count} datagrams up, {down_count} down",
                started.elapsed().as_secs_f64()
            ));
        }
    }
}

/// A socket of the session's own, connected to the upstream: its replies
/// are this client's.
async fn connect(upstream: &[SocketAddr]) -> std::io::Result<UdpSocket> {
    let mut last = None;
    for addr in upstream {
        // Any port, on loopback for a loopback upstream: nothing else
        // needs to reach this socket.
        let ip: std::net::IpAddr = match (addr.is_ipv4(), addr.ip().is_loopback()) {
            (true, true) => std::net::Ipv4Addr::LOCALHOST.into(),
            (true, false) => std::net::Ipv4Addr::UNSPECIFIED.into(),
            (false, true) => std::net::Ipv6Addr::LOCALHOST.into(),
            (false, false) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        };
        let bind = SocketAddr::new(ip, 0);
        match UdpSocket::bind(bind).await {
            Ok(socket) => match socket.connect(addr).await {
                Ok(()) => return Ok(socket),
                Err(e) => last = Some(e),
            },
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no upstream address")))
}

/// A datagram arrived for `dest`: through the hook when there is one,
/// then into the outbox. False when the script ended the session.
fn forward(
    hooks: &mut Option<ConnectionHooks>,
    has_hook: bool,
    dest: Dest,
    datagram: Vec<u8>,
    outbox: &mut Outbox,
    counts: &super::Counts,
) -> bool {
    let Some(hooks) = hooks.as_mut().filter(|_| has_hook) else {
        outbox.send(dest, datagram, Duration::ZERO, counts);
        return true;
    };
    let result = match dest {
        Dest::Upstream => hooks.on_client_message(&datagram),
        Dest::Client => hooks.on_server_message(&datagram),
    };
    apply(result, dest, outbox, counts)
}

/// Carries out a hook's reply: each message one datagram, `delay()`
/// holding back what follows it. False when the session is to end.
fn apply(
    result: Result<Reply, HookFailure>,
    to: Dest,
    outbox: &mut Outbox,
    counts: &super::Counts,
) -> bool {
    let (mut reply, failed) = match result {
        Ok(reply) => (reply, false),
        Err(failure) => {
            failure.error.eprint();
            counts.errors.fetch_add(1, Ordering::Relaxed);
            (failure.before, true)
        }
    };
    let mut extra = Duration::ZERO;
    for action in reply.actions.drain(..) {
        let (dest, message) = match action {
            Action::Send(m) | Action::SendRaw(m) => (to, m),
            Action::ToServer(m) => (Dest::Upstream, m),
            Action::ToClient(m) => (Dest::Client, m),
            Action::Sleep(pause) => {
                extra += pause;
                continue;
            }
            Action::Broadcast(_) | Action::Reframe(_) => continue,
        };
        outbox.send(dest, message.as_bytes().to_vec(), extra, counts);
    }
    !(failed || reply.close || reply.reset)
}

/// Sends a datagram due, and counts it. A datagram is forwarded whole or
/// not at all: one a script made too large for UDP is refused, said, and
/// counted as an error.
async fn deliver(
    dest: Dest,
    data: &[u8],
    upstream: &UdpSocket,
    client: &UdpSocket,
    (index, peer): (u64, SocketAddr),
    counts: &super::Counts,
) {
    if data.len() > DATAGRAM {
        counts.errors.fetch_add(1, Ordering::Relaxed);
        let to = match dest {
            Dest::Upstream => "the upstream",
            Dest::Client => "the client",
        };
        console::err(&format!(
            "#{index} {peer}: cannot send a datagram of {} bytes to {to}: \
             larger than the most one UDP datagram carries ({DATAGRAM} bytes); not sent",
            data.len()
        ));
        return;
    }
    let sent = match dest {
        Dest::Upstream => upstream.send(data).await,
        Dest::Client => client.send_to(data, peer).await,
    };
    // An error is the upstream's ICMP unreachable for an earlier
    // datagram, which the receive side reports.
    if let Ok(n) = sent {
        let (datagrams, bytes) = match dest.way() {
            Way::Up => (&counts.messages_up, &counts.bytes_up),
            Way::Down => (&counts.messages_down, &counts.bytes_down),
        };
        datagrams.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}
