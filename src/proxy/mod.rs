//! `tcpscript proxy --listen ADDR --upstream ADDR`: every accepted
//! connection opens one to the upstream and bytes flow both ways, with
//! half-close and reset passed on, and toxiproxy's faults when asked.
//!
//! Seams. Transport: either side is plain TCP or TLS (`transport`); the
//! relays are generic over it, so UDP would replace what they are given,
//! not the accept loop or the fault model. Scripts: each
//! direction is one `connection::pump` over bytes; a scripted proxy
//! (`scripted`) replaces both pumps with one loop over framed messages and
//! their hooks; there the toxics that delay, swallow or reset apply to
//! whole messages as they arrive, and those that cut bytes are refused.

mod connection; // one proxied connection: the upstream connect, both directions, how it ends
mod lanes; // connections on threads with a runtime of their own: unscripted ones by core, scripted ones alone
pub(crate) mod scripted; // `proxy SCRIPT`: each direction's messages through the script's hooks
pub(crate) mod toxics; // the fault model: which connections, which directions, what to each chunk
pub(crate) mod transport; // plain TCP or TLS on either side, and the handshakes
mod udp; // --udp: a session per client address, faults per datagram

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::console;
use crate::error::Error;
use crate::net::{FEW_FILES, bind, raise_open_file_limit, resolve};
use crate::server::shutdown;
use crate::transcript::Verbosity;
use toxics::Toxics;

#[derive(Clone)]
pub(crate) struct ProxyOptions {
    pub(crate) listen: String,
    pub(crate) upstream: String,
    /// How long each connection's connect to the upstream may take.
    pub(crate) connect_timeout: Duration,
    pub(crate) toxics: Toxics,
    /// `--tls`: each client's handshake starts from this.
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    /// `--upstream-tls`: each upstream connection's handshake.
    pub(crate) upstream_tls: Option<transport::UpstreamTls>,
    /// Printed after `listening on`, as the server does.
    pub(crate) fingerprint: Option<String>,
    /// `--udp`: datagrams, a session per client address.
    pub(crate) udp: bool,
    /// `--udp`: a session with no datagram either way this long ends.
    pub(crate) idle_timeout: Duration,
    /// `--udp`: live sessions at most; new clients past it are dropped.
    pub(crate) max_sessions: usize,
    /// `None`: a random seed, shown with `-v`.
    pub(crate) seed: Option<u64>,
    pub(crate) verbosity: Verbosity,
    /// `--json`: events on stdout, one object per line.
    pub(crate) json: bool,
}

/// What every connection task shares.
struct Shared {
    options: ProxyOptions,
    /// Resolved once, at start: a name that does not resolve is a usage
    /// error before anything listens, not a failure per connection.
    upstream: Vec<SocketAddr>,
    seed: u64,
    counts: Counts,
    /// `proxy SCRIPT`: the script every connection's messages go through.
    script: Option<scripted::ProxyScript>,
    /// `--json`: each connection's open and close (and, through a script
    /// or `--record`, each message) as events.
    events: Option<crate::report::events::TestEvents>,
}

/// Added to by each connection as it ends; every connection ends (or is
/// counted unfinished) before the summary.
#[derive(Debug, Default)]
struct Counts {
    connections: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    /// With a SCRIPT or `--record`: the messages cut for a hook (a side
    /// with no hook passes bytes and counts none).
    messages_up: AtomicU64,
    messages_down: AtomicU64,
    /// `--udp`: datagrams lost on purpose (`--loss`) or for want of room.
    dropped: AtomicU64,
    /// Connections the toxics applied to.
    faulted: AtomicU64,
    /// Upstream connects that failed, and I/O errors other than a reset.
    errors: AtomicU64,
    unfinished: AtomicU64,
}

impl Counts {
    /// `--udp`: sessions and datagrams rather than connections.
    fn udp_summary(&self) -> String {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        format!(
            "shut down: {} sessions, {} datagrams up ({} bytes), {} down ({} bytes), {} dropped, {} with faults, {} errors",
            load(&self.connections),
            load(&self.messages_up),
            load(&self.bytes_up),
            load(&self.messages_down),
            load(&self.bytes_down),
            load(&self.dropped),
            load(&self.faulted),
            load(&self.errors),
        )
    }

    fn summary(&self, framed: bool) -> String {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let mut line = format!(
            "shut down: {} connections, {} bytes up, {} down, {} with faults, {} errors",
            load(&self.connections),
            load(&self.bytes_up),
            load(&self.bytes_down),
            load(&self.faulted),
            load(&self.errors),
        );
        if framed {
            line += &format!(
                " (messages: {} up, {} down)",
                load(&self.messages_up),
                load(&self.messages_down)
            );
        }
        let unfinished = load(&self.unfinished);
        if unfinished > 0 {
            line += &format!(" ({unfinished} connections had not finished and are not counted)");
        }
        line
    }
}

/// `tcpscript proxy`: forwards until SIGINT or SIGTERM, then prints a summary.
pub(crate) fn run(
    options: ProxyOptions,
    mut script: Option<scripted::ProxyScript>,
) -> Result<(), Error> {
    let events = options
        .json
        .then(|| crate::report::events::Events::to_stdout().for_test("proxy"));
    if let Some(script) = &mut script {
        script.events = events.clone();
    }
    let upstream = resolve(&options.upstream)?;
    let runtime = crate::server::runtime()?;
    let result = runtime.block_on(async {
        let (listener, local) = if options.udp {
            let socket = crate::net::bind_udp(&options.listen).await?;
            let local = socket.local_addr();
            (Listener::Udp(socket), local)
        } else {
            let listener = bind(&options.listen).await?;
            let local = listener.local_addr();
            (Listener::Tcp(listener), local)
        };
        let local = local.map_err(|source| Error::Bind {
            addr: options.listen.clone(),
            source,
        })?;
        let stop = shutdown::signal()?;
        // Tests and CI wait for this exact line, as with the server.
        let udp = if options.udp { "udp " } else { "" };
        console::err(&format!("listening on {udp}{local}"));
        if let Some(fingerprint) = &options.fingerprint {
            console::err(&format!("tls fingerprint SHA256 {fingerprint}"));
        }
        let seed = options.seed.unwrap_or_else(toxics::random_seed);
        if options.verbosity >= Verbosity::Verbose && options.toxics.any() {
            console::err(&format!("seed {seed} (repeat this run with --seed {seed})"));
        }
        let fd_limit = raise_open_file_limit();
        if fd_limit < FEW_FILES && options.verbosity >= Verbosity::Normal {
            console::err(&format!(
                "note: the open-file limit is {fd_limit} and could not be raised: \
                 at most about {} connections at once, two files each (see `ulimit -n`)",
                fd_limit.saturating_sub(16) / 2
            ));
        }
        let shared = Arc::new(Shared {
            options,
            upstream,
            seed,
            counts: Counts::default(),
            script,
            events,
        });
        let summary = match listener {
            Listener::Tcp(listener) => serve(listener, shared.clone(), stop).await,
            Listener::Udp(socket) => udp::serve(socket, shared.clone(), stop).await,
        };
        if let Some(events) = &shared.events {
            events.emit("summary", serde_json::json!({ "summary": summary }));
        }
        console::err(&summary);
        Ok(())
    });
    console::flush(Duration::from_secs(2));
    result
}

enum Listener {
    Tcp(TcpListener),
    Udp(tokio::net::UdpSocket),
}

/// Gives `job` to the lanes if unscripted; if scripted, to a lane of its
/// own while one is free, else to the shared runtime (see `lanes`).
async fn hand_out(
    job: lanes::Job<tokio::net::TcpStream>,
    lanes: Option<&mut lanes::Lanes>,
    solos: Option<&lanes::Solos>,
    shared: &Arc<Shared>,
) {
    enum To<'a> {
        Lanes(&'a mut lanes::Lanes),
        Solo(&'a lanes::Solos, usize),
    }
    let to = match (lanes, solos.and_then(|solos| Some((solos, solos.claim()?)))) {
        (Some(lanes), _) => To::Lanes(lanes),
        (None, Some((solos, lane))) => To::Solo(solos, lane),
        (None, None) => return on_shared(job, shared),
    };
    let Some(job) = job.try_map(tokio::net::TcpStream::into_std, shared) else {
        return;
    };
    match to {
        To::Lanes(lanes) => lanes.hand(job).await,
        To::Solo(solos, lane) => {
            if let Err(job) = solos.hand(lane, job) {
                // That lane's thread is gone: the shared runtime takes it.
                if let Some(job) = job.try_map(tokio::net::TcpStream::from_std, shared) {
                    on_shared(job, shared);
                }
            }
        }
    }
}

/// Runs a connection as a task of the shared runtime.
fn on_shared(job: lanes::Job<tokio::net::TcpStream>, shared: &Arc<Shared>) {
    let shared = shared.clone();
    tokio::spawn(async move { job.carry(&shared).await });
}

/// Accepts until `stop`, then lets open connections go on for the
/// server's grace period before cutting them, and sums them up.
async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: impl std::future::Future<Output = ()>,
) -> String {
    let (hard_tx, hard_rx) = watch::channel(false);
    // Each connection holds a sender; when all are dropped, all are done.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    tokio::pin!(stop);
    let mut last_accept_error = None;
    let mut accepted_count = 0u64;
    let mut lanes = match shared.script {
        None => lanes::Lanes::start(&shared),
        Some(_) => None,
    };
    let solos = match shared.script {
        Some(_) => lanes::Solos::start(&shared),
        None => None,
    };

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    accepted_count += 1;
                    let index = accepted_count;
                    let hard = hard_rx.clone();
                    let done = done_tx.clone();
                    let job = lanes::Job { stream, peer, index, hard, done };
                    hand_out(job, lanes.as_mut(), solos.as_ref(), &shared).await;
                }
                Err(e) => crate::net::accept_failed(&e, &mut last_accept_error).await,
            },
            _ = &mut stop => break,
        }
    }

    drop(listener);
    drop(lanes);
    drop(solos);
    drop(done_tx);
    if tokio::time::timeout(shutdown::GRACE, done_rx.recv())
        .await
        .is_err()
    {
        hard_tx.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), done_rx.recv()).await;
    }
    let counts = &shared.counts;
    let ended = counts.connections.load(Ordering::Relaxed);
    counts
        .unfinished
        .store(accepted_count.saturating_sub(ended), Ordering::Relaxed);
    counts.summary(shared.script.is_some())
}
