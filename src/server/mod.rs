//! `tcpscript server SCRIPT`: accept connections and serve each one
//! concurrently with the script's hooks. A connection that misbehaves, or
//! whose hook fails, ends alone; the listener and everyone else go on.

mod alarm; // a wake-up at a time kept off the runtime's timers: --udp's idle limit
mod connection; // one connection's socket: framed reads, bounded writes, close
mod handler; // one connection's life: hooks called, replies carried out
mod handshake; // --tls: each connection's handshake, in its own task
pub(crate) mod hooks; // server scripts: per-connection state and hook calls
mod idle; // --idle-timeout for TCP: one thread looks over every connection, no timer each
pub(crate) mod room; // what connections share: the roster and the shared store
mod scope; // what each connection gets of the top-level variables: copied, shared, or copied on first use
pub(crate) mod shutdown; // signals, the grace period, the hard stop, the summary counts
mod transport; // plain TCP or TLS: what the one connection loop needs of each
pub(crate) mod udp; // --udp: a session per peer address, all driven by one receive loop

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::console;
use crate::error::Error;
use crate::framing::Framing;
use crate::net::{FEW_FILES, bind, raise_open_file_limit};
use crate::transcript::Verbosity;
use alarm::Alarm;
use hooks::ServerScript;
use idle::IdleClock;
use shutdown::{Counts, Stopping};

#[derive(Debug, Clone)]
pub(crate) struct ServerOptions {
    pub(crate) listen: String,
    pub(crate) framing: Framing,
    pub(crate) max_frame: usize,
    pub(crate) verbosity: Verbosity,
    /// Close a connection that sends nothing, or makes no progress reading
    /// its replies, for this long. Off by default: test peers may idle.
    pub(crate) idle_timeout: Option<Duration>,
    /// How long one hook call may run: bounds how long shutdown waits.
    pub(crate) hook_timeout: Duration,
    /// `--udp`: datagrams, a session per peer, instead of TCP.
    pub(crate) udp: Option<udp::UdpOptions>,
}

/// What every connection task shares.
struct Shared {
    script: Arc<ServerScript>,
    options: ServerOptions,
    counts: Counts,
    /// `--tls`: every connection's handshake starts from this.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// What `starttls()` in a hook upgrades a plain connection with.
    starttls: Option<tokio_rustls::TlsAcceptor>,
    /// `--idle-timeout`.
    idle: Option<IdleClock>,
}

/// How a server speaks TLS: its certificate, and when.
pub(crate) struct Tls {
    pub(crate) setup: crate::tls::ServerSetup,
    /// From the first byte (`--tls`); otherwise once a hook calls
    /// `starttls()`.
    pub(crate) on_accept: bool,
}

impl Tls {
    /// The acceptors of every connection, and of `starttls()`.
    fn acceptors(
        tls: Option<Tls>,
    ) -> (
        Option<tokio_rustls::TlsAcceptor>,
        Option<tokio_rustls::TlsAcceptor>,
    ) {
        match tls {
            None => (None, None),
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.setup.config);
                (tls.on_accept.then(|| acceptor.clone()), Some(acceptor))
            }
        }
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    build(
        tokio::runtime::Builder::new_multi_thread()
            // Hooks run on the workers: a stack sized for any script.
            .thread_stack_size(crate::stack::SIZE)
            .enable_io()
            .enable_time(),
    )
}

/// A UDP server's runtime: one thread, as its loop is one task. Waiting
/// on the socket and running the loop on the same thread spares a
/// wake-up of another thread for each datagram.
fn udp_runtime() -> Result<tokio::runtime::Runtime, Error> {
    // Without timers: the loop's deadlines are kept by its alarm thread,
    // and a runtime with a timer driver reads the clock and locks the
    // driver around every wait, one wait per datagram for a single peer.
    build(tokio::runtime::Builder::new_current_thread().enable_io())
}

fn build(builder: &mut tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, Error> {
    builder.build().map_err(|source| Error::System {
        action: "start the async runtime",
        source,
    })
}

/// `tcpscript server`: serves until SIGINT or SIGTERM, then prints a summary.
/// With `tls`, connections speak TLS from the start or after `starttls()`.
pub(crate) fn run(
    script: ServerScript,
    options: ServerOptions,
    tls: Option<Tls>,
) -> Result<(), Error> {
    if let Some(udp) = options.udp {
        return run_udp(&udp_runtime()?, script, options, udp);
    }
    let runtime = runtime()?;
    let result = runtime.block_on(async {
        let listener = bind(&options.listen).await?;
        let local = listener.local_addr().map_err(|source| Error::Bind {
            addr: options.listen.clone(),
            source,
        })?;
        let stop = shutdown::signal()?;
        let idle = idle_clock(&options)?;
        // Tests and CI wait for this exact line: it means connects will succeed.
        crate::console::err(&format!("listening on {local}"));
        if let Some(tls) = &tls {
            // For a peer to pin, or to compare with what it was shown.
            crate::console::err(&format!("tls fingerprint SHA256 {}", tls.setup.fingerprint));
        }
        let fd_limit = raise_open_file_limit();
        if fd_limit < FEW_FILES && options.verbosity >= Verbosity::Normal {
            console::err(&format!(
                "note: the open-file limit is {fd_limit} and could not be raised: \
                 at most about {} connections at once (see `ulimit -n`)",
                fd_limit.saturating_sub(16)
            ));
        }
        let summary = serve(listener, script, options, Tls::acceptors(tls), idle, stop).await;
        console::err(&summary);
        Ok(())
    });
    console::flush(Duration::from_secs(2));
    result
}

/// `tcpscript server --udp`: as [`run`], over datagrams.
fn run_udp(
    runtime: &tokio::runtime::Runtime,
    script: ServerScript,
    options: ServerOptions,
    udp: udp::UdpOptions,
) -> Result<(), Error> {
    let result = runtime.block_on(async {
        let (socket, local) = bind_udp(&options.listen).await?;
        let stop = shutdown::signal()?;
        let alarm = idle_alarm()?;
        // Tests and CI wait for this line, as for TCP: datagrams sent from
        // now on are received.
        console::err(&format!("listening on udp {local}"));
        let summary = serve_udp_on_worker(socket, script, options, udp, alarm, stop).await;
        console::err(&summary);
        Ok(())
    });
    console::flush(Duration::from_secs(2));
    result
}

/// A server running on a thread of its own, for `tcpscript test`.
pub(crate) struct Background {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Where clients connect: bound before `spawn` returns.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs `serve` on `runtime`, on a thread of its own, until [`stop`]:
    /// `serve` is handed the future that ends then.
    ///
    /// [`stop`]: Background::stop
    fn start<F: std::future::Future>(
        runtime: tokio::runtime::Runtime,
        addr: SocketAddr,
        serve: impl FnOnce(Stopped) -> F + Send + 'static,
    ) -> Result<Background, Error> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // Sized for scripts: the script's values may be dropped on it at the end.
        let thread = crate::stack::thread("tcpscript-server")
            .spawn(move || {
                runtime.block_on(serve(Box::pin(async {
                    let _ = stopped.await;
                })));
            })
            .map_err(|source| Error::System {
                action: "start the server thread",
                source,
            })?;
        Ok(Background {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops accepting, lets open connections finish, and waits for it.
    pub(crate) fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Ends when a [`Background`] server is asked to stop, or is dropped.
type Stopped = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Drop for Background {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Binds and starts serving on another thread; returns once bound. With
/// `tls`, every connection speaks TLS.
pub(crate) fn spawn(
    script: ServerScript,
    options: ServerOptions,
    tls: Option<Tls>,
) -> Result<Background, Error> {
    let runtime = runtime()?;
    if let Some(udp) = options.udp {
        return spawn_udp(runtime, script, options, udp);
    }
    let listener = runtime.block_on(bind(&options.listen))?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: options.listen.clone(),
        source,
    })?;
    raise_open_file_limit();
    let idle = idle_clock(&options)?;
    Background::start(runtime, addr, move |stopped| {
        serve(
            listener,
            script,
            options,
            Tls::acceptors(tls),
            idle,
            stopped,
        )
    })
}

/// The receive loop as a task of the runtime, not the future `block_on`
/// drives: a worker then waits on the socket itself and runs the loop as
/// soon as a datagram comes, where the thread in `block_on` had to be woken
/// by a worker for each one (measured: half again the CPU per datagram).
async fn serve_udp_on_worker(
    socket: crate::net::datagrams::Socket,
    script: ServerScript,
    options: ServerOptions,
    udp: udp::UdpOptions,
    alarm: Alarm,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> String {
    // The loop looks at whether to stop before every datagram: through its
    // alarm, which it looks at anyway. The signals' future, looked at
    // directly, registered anew with both signals' channels every time
    // (a sixth of an echoed datagram's instructions); a oneshot took a
    // hundred instructions more a datagram.
    let stopper = alarm.stopper();
    tokio::spawn(async move {
        stop.await;
        stopper.stop();
    });
    tokio::spawn(udp::serve(socket, script, options, udp, alarm))
        .await
        .unwrap_or_else(|e| format!("shut down: the server failed: {e}"))
}

/// The thread that keeps a TCP server's `--idle-timeout`, if it has one.
fn idle_clock(options: &ServerOptions) -> Result<Option<IdleClock>, Error> {
    options
        .idle_timeout
        .map(IdleClock::start)
        .transpose()
        .map_err(|source| Error::System {
            action: "start the idle-limit thread",
            source,
        })
}

/// A UDP server's socket, bound and registered with the runtime, and its
/// address.
async fn bind_udp(listen: &str) -> Result<(crate::net::datagrams::Socket, SocketAddr), Error> {
    let socket = crate::net::bind_udp(listen).await?;
    let local = socket.local_addr().map_err(|source| Error::Bind {
        addr: listen.to_string(),
        source,
    })?;
    let socket = crate::net::datagrams::Socket::new(socket).map_err(|source| Error::System {
        action: "register the UDP socket with the runtime",
        source,
    })?;
    Ok((socket, local))
}

/// The thread that keeps a UDP server's idle limit (see `alarm`).
fn idle_alarm() -> Result<Alarm, Error> {
    Alarm::new().map_err(|source| Error::System {
        action: "start the idle-limit thread",
        source,
    })
}

/// [`spawn`] over datagrams.
fn spawn_udp(
    runtime: tokio::runtime::Runtime,
    script: ServerScript,
    options: ServerOptions,
    udp: udp::UdpOptions,
) -> Result<Background, Error> {
    let (socket, addr) = runtime.block_on(bind_udp(&options.listen))?;
    let alarm = idle_alarm()?;
    Background::start(runtime, addr, move |stopped| {
        serve_udp_on_worker(socket, script, options, udp, alarm, stopped)
    })
}

/// Accepts until `stop` completes, then shuts down: a grace period for open
/// connections, then a hard stop, then the summary of every connection.
async fn serve(
    listener: TcpListener,
    script: ServerScript,
    options: ServerOptions,
    (tls, starttls): (
        Option<tokio_rustls::TlsAcceptor>,
        Option<tokio_rustls::TlsAcceptor>,
    ),
    idle: Option<IdleClock>,
    stop: impl std::future::Future<Output = ()>,
) -> String {
    let shared = Arc::new(Shared {
        script: Arc::new(script),
        options,
        counts: Counts::default(),
        tls,
        starttls,
        idle,
    });
    let stopping = Stopping::new();
    // Each connection holds a sender; when all are dropped, all are done.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    tokio::pin!(stop);
    let mut last_accept_error = None;
    let mut open = 0u64;

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    open += 1;
                    let shared = shared.clone();
                    let stop = stopping.watch();
                    let done = done_tx.clone();
                    // Two kinds of task: a plain connection's stays as small
                    // as if TLS did not exist.
                    match shared.tls.clone() {
                        None => tokio::spawn(async move {
                            handler::serve_connection(stream, peer, &shared, stop).await;
                            drop(done);
                        }),
                        Some(acceptor) => tokio::spawn(async move {
                            handshake::serve_tls_connection(stream, peer, &shared, stop, acceptor)
                                .await;
                            drop(done);
                        }),
                    };
                }
                Err(e) => crate::net::accept_failed(&e, &mut last_accept_error).await,
            },
            _ = &mut stop => break,
        }
    }

    drop(listener);
    stopping.stop_gracefully();
    drop(done_tx);
    if tokio::time::timeout(shutdown::GRACE, done_rx.recv())
        .await
        .is_err()
    {
        stopping.stop_now();
        // What is left is at most a hook running to its limit, then
        // `on_disconnect` doing the same.
        let hooks = shared.options.hook_timeout.saturating_mul(2);
        let _ = tokio::time::timeout(hooks + Duration::from_secs(5), done_rx.recv()).await;
    }
    let counts = &shared.counts;
    let ended = counts.connections.load(Ordering::Relaxed);
    counts
        .unfinished
        .store(open.saturating_sub(ended), Ordering::Relaxed);
    let dropped = shared
        .script
        .room()
        .map_or(0, |room| room.broadcasts_dropped());
    counts.summary(dropped)
}
