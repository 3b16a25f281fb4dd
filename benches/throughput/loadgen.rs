//! Load generator: opens connections and ping-pongs on them from this
//! process's runtime, for the echo, idle and TLS sections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// One ping: 31 bytes and a newline. The first 20 bytes carry a sequence
/// number so a stale or mixed-up reply is caught.
pub(crate) const MESSAGE: &[u8; 32] = b"00000000000000000000 ping-pong!\n";

/// Connects in flight at once when opening many connections.
const CONNECT_CONCURRENCY: usize = 256;
/// A connection that cannot finish its round trip this long after the
/// measurement stops is counted as an error (stalled).
pub(crate) const STALL_LIMIT: Duration = Duration::from_secs(10);

pub(crate) const WARMUP: u8 = 0;
pub(crate) const MEASURE: u8 = 1;
pub(crate) const STOP: u8 = 2;

pub(crate) fn new_histogram() -> Histogram<u64> {
    // Nanoseconds, 100 ns to 60 s, two significant digits (under 1% error):
    // small enough to keep one per connection.
    Histogram::new_with_bounds(100, 60_000_000_000, 2).expect("histogram bounds")
}

/// What one connection did in the measured window.
pub(crate) struct ConnStats {
    pub(crate) round_trips: u64,
    pub(crate) hist: Histogram<u64>,
    pub(crate) error: Option<String>,
}

/// Writes `seq` as 20 decimal digits at the front of `msg`.
pub(crate) fn stamp(msg: &mut [u8; 32], mut seq: u64) {
    for i in (0..20).rev() {
        msg[i] = b'0' + (seq % 10) as u8;
        seq /= 10;
    }
}

/// Any stream the echo measures: a `TcpStream` or a TLS stream over one.
pub(crate) trait EchoStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> EchoStream for S {}

pub(crate) async fn round_trip<S: EchoStream>(
    stream: &mut S,
    msg: &[u8; 32],
) -> Result<(), String> {
    let mut reply = [0u8; 32];
    stream
        .write_all(msg)
        .await
        .map_err(|e| format!("write: {e}"))?;
    // A no-op on TCP; pushes a TLS record out.
    stream.flush().await.map_err(|e| format!("flush: {e}"))?;
    stream
        .read_exact(&mut reply)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if &reply != msg {
        return Err(format!(
            "wrong reply: sent {:?}, got {:?}",
            String::from_utf8_lossy(msg),
            String::from_utf8_lossy(&reply)
        ));
    }
    Ok(())
}

pub(crate) async fn ping_pong<S: EchoStream>(mut stream: S, phase: Arc<AtomicU8>) -> ConnStats {
    let mut stats = ConnStats {
        round_trips: 0,
        hist: new_histogram(),
        error: None,
    };
    let mut msg = *MESSAGE;
    let mut seq = 0u64;
    while phase.load(Ordering::Relaxed) != STOP {
        stamp(&mut msg, seq);
        seq += 1;
        let start = Instant::now();
        if let Err(e) = round_trip(&mut stream, &msg).await {
            stats.error = Some(e);
            break;
        }
        if phase.load(Ordering::Relaxed) == MEASURE {
            stats.round_trips += 1;
            stats
                .hist
                .saturating_record(start.elapsed().as_nanos() as u64);
        }
    }
    stats
}

/// Opens `n` connections (`CONNECT_CONCURRENCY` at a time); each does one
/// round trip first when `exchange` is set. Returns the streams and errors.
pub(crate) async fn connect_many(
    addr: SocketAddr,
    n: usize,
    exchange: bool,
) -> (Vec<TcpStream>, Vec<String>) {
    let mut streams = Vec::with_capacity(n);
    let mut errors = Vec::new();
    let mut set = JoinSet::new();
    let mut started = 0;
    loop {
        while started < n && set.len() < CONNECT_CONCURRENCY {
            started += 1;
            set.spawn(async move {
                let mut stream = TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                if exchange {
                    tokio::time::timeout(STALL_LIMIT, round_trip(&mut stream, MESSAGE))
                        .await
                        .map_err(|_| "first round trip timed out".to_string())??;
                }
                Ok::<_, String>(stream)
            });
        }
        match set.join_next().await {
            Some(Ok(Ok(stream))) => streams.push(stream),
            Some(Ok(Err(e))) => errors.push(e),
            Some(Err(e)) => errors.push(format!("task: {e}")),
            None => break,
        }
    }
    (streams, errors)
}
