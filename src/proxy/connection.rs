//! One proxied connection: connect to the upstream, carry each direction
//! through a fixed buffer (a slow reader slows the writer down: nothing
//! queues without bound), pass on each half-close on its own, and end the
//! way the peers did: a reset becomes a reset on the other side.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};

use super::Shared;
use super::toxics::{Plan, Shaper, SplitMix64, Verdict};
use super::transport::{self, Link, Stream, eof_as_close};
use crate::console;
use crate::transcript::Verbosity;

/// Each direction's buffer. One read's worth is all a direction holds;
/// 64 KiB reads move a bulk stream in an eighth of the system calls of
/// tokio's 8 KiB `copy`, for 128 KiB per connection.
const BUFFER: usize = 64 * 1024;

/// How one direction ended.
#[derive(Debug)]
pub(super) enum End {
    /// The source closed; the close was passed on.
    Closed,
    /// The source closed while blackholed; the close was kept back.
    Swallowed,
    /// The source reset the connection.
    Reset,
    /// The destination is gone (it reset, or closed and then got data).
    Gone,
    /// `--limit-data` forwarded its last byte.
    Limit,
    /// Another I/O error.
    Failed(io::Error),
}

/// How the whole connection ended, and what that does to each side.
pub(super) enum Ending {
    /// Both directions closed: the sockets are closed.
    Closed,
    /// RST to the sides marked.
    Reset {
        client: bool,
        upstream: bool,
        why: &'static str,
    },
    /// FIN to both sides at once.
    Close { why: &'static str },
    /// An I/O error other than a reset: RST to both sides.
    Failed(String),
}

impl Ending {
    fn describe(&self) -> &'static str {
        match self {
            Ending::Closed => "closed",
            Ending::Reset { why, .. } | Ending::Close { why } => why,
            Ending::Failed(_) => "reset after an I/O error",
        }
    }
}

pub(super) async fn proxy(
    client: TcpStream,
    peer: SocketAddr,
    index: u64,
    shared: &Shared,
    mut hard: watch::Receiver<bool>,
) {
    let options = &shared.options;
    let counts = &shared.counts;
    let connected = Instant::now();
    // Small request-reply exchanges must not wait on Nagle at either hop.
    let _ = client.set_nodelay(true);
    // The client's handshake first: a client that fails it costs the
    // upstream no connection.
    let client = match &options.tls {
        None => Link::Plain(client),
        Some(acceptor) => {
            let accepted = tokio::select! {
                accepted = Box::pin(transport::accept(client, acceptor)) => accepted,
                _ = hard.wait_for(|stopped| *stopped) => Err("the proxy stopped first".into()),
            };
            match accepted {
                Ok(link) => link,
                Err(why) => {
                    console::err(&format!("#{index} {peer}: TLS handshake failed: {why}"));
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                    counts.connections.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    };
    let connect = async {
        let stream = tokio::time::timeout(
            options.connect_timeout,
            TcpStream::connect(&shared.upstream[..]),
        )
        .await
        .map_err(|_| format!("no answer within {:?}", options.connect_timeout))?
        .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        match &options.upstream_tls {
            None => Ok(Link::Plain(stream)),
            Some(tls) => transport::connect(stream, tls)
                .await
                .map_err(|why| format!("TLS handshake failed: {why}")),
        }
    };
    let attempt = tokio::select! {
        attempt = Box::pin(connect) => attempt,
        // An upstream slow to answer must not hold the shutdown up.
        _ = hard.wait_for(|stopped| *stopped) => {
            counts.connections.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let upstream = match attempt {
        Ok(upstream) => upstream,
        Err(why) => {
            console::err(&format!(
                "#{index} {peer}: cannot connect to upstream {}: {why}; resetting the client",
                options.upstream
            ));
            // A reset, not a close: the client must not take the proxy
            // for an upstream that accepted and then had nothing to say.
            match client {
                Link::Plain(client) => {
                    let _ = client.set_zero_linger();
                }
                Link::Tls(client) => {
                    let _ = client.socket().set_zero_linger();
                }
            }
            counts.errors.fetch_add(1, Ordering::Relaxed);
            counts.connections.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let this = This {
        peer,
        index,
        connected,
    };
    // Each pair of transports is its own copy of the relays, as the
    // server's connection loop is per transport.
    match (client, upstream) {
        (Link::Plain(c), Link::Plain(u)) => carry(c, u, this, shared, hard).await,
        (Link::Plain(c), Link::Tls(u)) => carry(c, u, this, shared, hard).await,
        (Link::Tls(c), Link::Plain(u)) => carry(c, u, this, shared, hard).await,
        (Link::Tls(c), Link::Tls(u)) => carry(c, u, this, shared, hard).await,
    }
}

/// Which connection this is, for what it reports.
pub(super) struct This {
    pub(super) peer: SocketAddr,
    pub(super) index: u64,
    pub(super) connected: Instant,
}

/// Both sides are connected: the relay, then the ending passed on and
/// counted.
async fn carry<C: Stream, U: Stream>(
    mut client: C,
    mut upstream: U,
    this: This,
    shared: &Shared,
    hard: watch::Receiver<bool>,
) {
    let (peer, index, connected) = (this.peer, this.index, this.connected);
    let options = &shared.options;
    let counts = &shared.counts;
    let mut rng = SplitMix64::for_connection(shared.seed, index);
    let plan = options.toxics.plan(&mut rng, connected);
    if plan.is_some() {
        counts.faulted.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(events) = &shared.events {
        events.emit(
            "open",
            serde_json::json!({
                "connection": index,
                "peer": peer.to_string(),
                "toxics": plan.is_some(),
            }),
        );
    }
    let verbose = options.verbosity >= Verbosity::Verbose;
    if verbose {
        let toxics = if plan.is_some() { " (toxics)" } else { "" };
        console::err(&format!(
            "#{index} {peer} open to upstream {}{toxics}",
            options.upstream
        ));
    }
    let (ending, up, down) = match &shared.script {
        Some(script) => {
            super::scripted::relay(
                &mut client,
                &mut upstream,
                &this,
                script,
                plan,
                counts,
                hard,
            )
            .await
        }
        None => relay(&mut client, &mut upstream, plan, hard).await,
    };
    match &ending {
        Ending::Closed => {}
        Ending::Reset {
            client: reset_client,
            upstream: reset_upstream,
            ..
        } => {
            if *reset_client {
                let _ = client.socket().set_zero_linger();
            }
            if *reset_upstream {
                let _ = upstream.socket().set_zero_linger();
            }
        }
        Ending::Close { .. } => {
            let _ = client.shutdown().await;
            let _ = upstream.shutdown().await;
        }
        Ending::Failed(e) => {
            console::err(&format!("#{index} {peer}: {e}; resetting both sides"));
            counts.errors.fetch_add(1, Ordering::Relaxed);
            let _ = client.socket().set_zero_linger();
            let _ = upstream.socket().set_zero_linger();
        }
    }
    drop((client, upstream));
    counts.bytes_up.fetch_add(up, Ordering::Relaxed);
    counts.bytes_down.fetch_add(down, Ordering::Relaxed);
    counts.connections.fetch_add(1, Ordering::Relaxed);
    if let Some(events) = &shared.events {
        events.emit(
            "close",
            serde_json::json!({
                "connection": index,
                "how": ending.describe(),
                "seconds": connected.elapsed().as_secs_f64(),
                "bytes_up": up,
                "bytes_down": down,
            }),
        );
    }
    if verbose {
        console::err(&format!(
            "#{index} {peer} {} after {:.3}s: {up} bytes up, {down} down",
            ending.describe(),
            connected.elapsed().as_secs_f64()
        ));
    }
}

/// Carries both directions until the connection ends; returns how, and
/// the bytes forwarded up and down.
async fn relay<C: Stream, U: Stream>(
    client: &mut C,
    upstream: &mut U,
    plan: Option<Plan>,
    mut hard: watch::Receiver<bool>,
) -> (Ending, u64, u64) {
    let (mut up_bytes, mut down_bytes) = (0u64, 0u64);
    let (up_shaper, down_shaper, reset_at) = match plan {
        Some(plan) => (plan.up, plan.down, plan.reset_at),
        None => (None, None, None),
    };
    let ending = {
        let (mut client_read, mut client_write) = client.halves();
        let (mut upstream_read, mut upstream_write) = upstream.halves();
        let up = pump(
            &mut client_read,
            &mut upstream_write,
            up_shaper,
            &mut up_bytes,
        );
        let down = pump(
            &mut upstream_read,
            &mut client_write,
            down_shaper,
            &mut down_bytes,
        );
        let reset = async {
            match reset_at {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let stopping = stopping(&mut hard);
        tokio::pin!(up, down, reset, stopping);
        let (mut up_end, mut down_end) = (None, None);
        loop {
            tokio::select! {
                end = &mut up, if up_end.is_none() => up_end = Some(end),
                end = &mut down, if down_end.is_none() => down_end = Some(end),
                _ = &mut reset => break Ending::Reset {
                    client: true,
                    upstream: true,
                    why: "reset (--reset-after)",
                },
                () = &mut stopping => break Ending::Close {
                    why: "closed by the proxy's shutdown",
                },
            }
            if let Some(ending) = settle(up_end.as_ref(), down_end.as_ref()) {
                break ending;
            }
        }
    };
    (ending, up_bytes, down_bytes)
}

/// Completes once the proxy's hard stop is signalled (or its sender is
/// gone). Looked at on every wake-up of the connection, so it looks
/// cheaply: the channel's own future takes the channel's lock at every
/// poll, where the channel's version is one atomic read. The first poll
/// registers the task's waker with the channel, and a task's waker stays
/// the same, so a stop still wakes it; until the version moves there is
/// nothing new to see.
fn stopping(hard: &mut watch::Receiver<bool>) -> impl Future<Output = ()> + '_ {
    let probe = hard.clone();
    let mut wait = Box::pin(hard.wait_for(|stopped| *stopped));
    let mut registered = false;
    std::future::poll_fn(move |cx| {
        if registered && probe.has_changed().is_ok_and(|changed| !changed) {
            return std::task::Poll::Pending;
        }
        registered = true;
        wait.as_mut().poll(cx).map(|_| ())
    })
}

/// The connection's ending once one direction's end decides it; `None`
/// while the other direction still has to finish (a half-close).
fn settle(up: Option<&End>, down: Option<&End>) -> Option<Ending> {
    let quiet = |end: Option<&End>| matches!(end, Some(End::Closed | End::Swallowed));
    if quiet(up) && quiet(down) {
        return Some(Ending::Closed);
    }
    // A reset reaches the other side; so does a destination that is gone,
    // to the side still sending into it.
    let reset = |client, upstream, why| {
        Some(Ending::Reset {
            client,
            upstream,
            why,
        })
    };
    match (up, down) {
        (Some(End::Limit), _) | (_, Some(End::Limit)) => Some(Ending::Close {
            why: "closed (--limit-data)",
        }),
        (Some(End::Reset), _) => reset(false, true, "reset by the client"),
        (_, Some(End::Reset)) => reset(true, false, "reset by the upstream"),
        (Some(End::Gone), _) => reset(true, false, "upstream gone"),
        (_, Some(End::Gone)) => reset(false, true, "client gone"),
        (Some(End::Failed(e)), _) | (_, Some(End::Failed(e))) => {
            Some(Ending::Failed(e.to_string()))
        }
        _ => None,
    }
}

/// One direction: read into a fixed buffer, write out, until the source
/// closes or something breaks. Without toxics it is a plain copy.
async fn pump(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    shaper: Option<Shaper>,
    moved: &mut u64,
) -> End {
    if let Some(shaper) = shaper {
        return shaped_pump(from, to, shaper, moved).await;
    }
    let mut buffer = vec![0u8; BUFFER];
    loop {
        let n = match eof_as_close(from.read(&mut buffer).await) {
            Ok(0) => return close(to, None).await,
            Ok(n) => n,
            Err(e) if is_reset(&e) => return End::Reset,
            Err(e) => return End::Failed(e),
        };
        if let Err(e) = to.write_all(&buffer[..n]).await {
            return gone(e);
        }
        *moved += n as u64;
    }
}

/// Bytes a shaped direction holds read but not yet written: what arrives
/// while earlier chunks wait out their latency. Past it, reading stops
/// until the writes catch up, as a TCP window would: under `--latency L`
/// a stream moves at most 1 MiB per L (5 MiB/s at 200 ms).
const QUEUE_LIMIT: usize = 16 * BUFFER;

/// A direction with toxics. Reading goes on while chunks wait out their
/// latency, as on a long link: each chunk is due its latency after it was
/// read, not after the one before it was written, so `--latency` delays a
/// stream without capping its rate.
async fn shaped_pump(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    mut shaper: Shaper,
    moved: &mut u64,
) -> End {
    let mut buffer = vec![0u8; BUFFER];
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut queued = 0;
    // The source closed, or `--limit-data` took its last byte: the end
    // comes once the queue is written out.
    let mut ending: Option<bool> = None;
    loop {
        if queue.is_empty() {
            match ending {
                Some(true) => return End::Limit,
                Some(false) => return close(to, Some(&shaper)).await,
                None => {}
            }
        }
        let front_due = queue.front().map(|(due, _)| *due);
        tokio::select! {
            biased;
            _ = sleep_until(front_due.unwrap_or_else(Instant::now)), if front_due.is_some() => {
                let (_, chunk) = queue.pop_front().expect("a chunk is queued");
                queued -= chunk.len();
                if let Err(e) = write_shaped(to, &mut shaper, &chunk, moved).await {
                    return gone(e);
                }
            }
            read = from.read(&mut buffer), if ending.is_none() && queued < QUEUE_LIMIT => {
                let n = match eof_as_close(read) {
                    Ok(0) => {
                        ending = Some(false);
                        continue;
                    }
                    Ok(n) => n,
                    Err(e) if is_reset(&e) => return End::Reset,
                    Err(e) => return End::Failed(e),
                };
                let read_at = Instant::now();
                let len = match shaper.judge(n) {
                    Verdict::Discard => continue,
                    Verdict::Forward => n,
                    Verdict::Last(len) => {
                        ending = Some(true);
                        len
                    }
                };
                // Jitter may draw a shorter delay than the chunk before
                // had: it waits for that one, so order is kept.
                let due = shaper.chunk_due(read_at);
                let due = queue.back().map_or(due, |(before, _)| due.max(*before));
                queued += len;
                queue.push_back((due, buffer[..len].to_vec()));
            }
        }
    }
}

/// Writes one chunk in the pieces `--slice` and `--bandwidth` make of it.
async fn write_shaped(
    to: &mut (impl AsyncWrite + Unpin),
    shaper: &mut Shaper,
    chunk: &[u8],
    moved: &mut u64,
) -> io::Result<()> {
    let mut sent = 0;
    while sent < chunk.len() {
        let (size, pause) = shaper.piece(chunk.len() - sent);
        if let Some(due) = shaper.piece_due(size) {
            sleep_until(due).await;
        }
        to.write_all(&chunk[sent..sent + size]).await?;
        sent += size;
        *moved += size as u64;
        if sent < chunk.len() && !pause.is_zero() {
            sleep(pause).await;
        }
    }
    Ok(())
}

/// The source closed: pass the half-close on, after `--slow-close`;
/// blackholed, keep it back.
async fn close(to: &mut (impl AsyncWrite + Unpin), shaper: Option<&Shaper>) -> End {
    if let Some(shaper) = shaper {
        if shaper.blackholed() {
            return End::Swallowed;
        }
        if let Some(delay) = shaper.slow_close() {
            sleep(delay).await;
        }
    }
    match to.shutdown().await {
        Ok(()) => End::Closed,
        Err(e) => gone(e),
    }
}

pub(super) fn gone(e: io::Error) -> End {
    match e.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::NotConnected => End::Gone,
        _ => End::Failed(e),
    }
}

pub(super) fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset_sides(ending: Option<Ending>) -> Option<(bool, bool)> {
        match ending {
            Some(Ending::Reset {
                client, upstream, ..
            }) => Some((client, upstream)),
            _ => None,
        }
    }

    #[test]
    fn a_half_close_waits_for_the_other_direction() {
        assert!(settle(Some(&End::Closed), None).is_none());
        assert!(settle(None, Some(&End::Swallowed)).is_none());
        assert!(matches!(
            settle(Some(&End::Closed), Some(&End::Closed)),
            Some(Ending::Closed)
        ));
    }

    #[test]
    fn a_reset_reaches_the_other_side() {
        // up reads the client: its reset goes to the upstream.
        assert_eq!(
            reset_sides(settle(Some(&End::Reset), None)),
            Some((false, true))
        );
        assert_eq!(
            reset_sides(settle(None, Some(&End::Reset))),
            Some((true, false))
        );
        // A destination gone is reported to the side still sending.
        assert_eq!(
            reset_sides(settle(Some(&End::Gone), None)),
            Some((true, false))
        );
        assert_eq!(
            reset_sides(settle(Some(&End::Closed), Some(&End::Gone))),
            Some((false, true))
        );
    }

    #[test]
    fn limit_data_closes_both_sides_even_after_a_half_close() {
        assert!(matches!(
            settle(Some(&End::Closed), Some(&End::Limit)),
            Some(Ending::Close { .. })
        ));
    }
}
