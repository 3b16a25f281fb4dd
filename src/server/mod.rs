//! `tcpscript server SCRIPT`: accept connections and serve each one
//! concurrently with the script's hooks. A connection that misbehaves, or
//! whose hook fails, ends alone; the listener and everyone else go on.

pub(crate) mod hooks; // server scripts: per-connection state and hook calls
pub(crate) mod room; // what connections share: the roster and the shared store

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::framing::{self, Decoder, Frame, FrameError, Framing};
use crate::message;
use crate::net::{FEW_FILES, bind, raise_open_file_limit};
use crate::server::hooks::{Action, ConnectionHooks, Reply, ServerScript};
use crate::server::room::{BROADCAST_BACKLOG, Room};
use crate::transcript::{Direction, Transcript, Verbosity};

/// Bytes asked for per read; also the largest `raw` message.
const READ_SIZE: usize = 64 * 1024;
/// How long shutdown waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a closing connection keeps draining what the peer still sends,
/// so that closing with unread input does not reset our last replies.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// A write buffer grown past this by one big reply is given back.
const KEEP_WRITE_CAPACITY: usize = 64 * 1024;

thread_local! {
    /// One read buffer per worker thread rather than per connection: an
    /// idle connection then costs only the bytes it has not finished.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_SIZE]);
}

#[derive(Debug, Clone)]
pub(crate) struct ServerOptions {
    pub(crate) listen: String,
    pub(crate) framing: Framing,
    pub(crate) max_frame: usize,
    pub(crate) verbosity: Verbosity,
    /// Print each received message on stdout (manual `--echo`).
    pub(crate) print_messages: bool,
    /// Close a connection that sends nothing, or does not read its
    /// replies, for this long. Off by default: test peers may idle.
    pub(crate) idle_timeout: Option<Duration>,
}

/// Counts for the summary printed at shutdown.
#[derive(Debug, Default)]
struct Stats {
    connections: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    errors: AtomicU64,
}

/// What every connection task shares.
struct Shared {
    script: Arc<ServerScript>,
    options: ServerOptions,
    stats: Arc<Stats>,
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        // Hooks run on the workers: a stack sized for any script.
        .thread_stack_size(crate::stack::SIZE)
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the runtime: {e}")))
}

/// `tcpscript server`: serves until SIGINT or SIGTERM, then prints a summary.
pub(crate) fn run(script: ServerScript, options: ServerOptions) -> Result<(), Error> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let listener = bind(&options.listen).await?;
        let local = listener.local_addr().map_err(|source| Error::Bind {
            addr: options.listen.clone(),
            source,
        })?;
        let stop = shutdown_signal()?;
        // Tests and CI wait for this exact line: it means connects will succeed.
        eprintln!("listening on {local}");
        let fd_limit = raise_open_file_limit();
        if fd_limit < FEW_FILES && options.verbosity >= Verbosity::Normal {
            eprintln!(
                "note: the open-file limit is {fd_limit} and could not be raised: \
                 at most about {} connections at once (see `ulimit -n`)",
                fd_limit.saturating_sub(16)
            );
        }
        let stats = serve(listener, script, options, stop).await;
        eprintln!(
            "shut down: {} connections, {} messages in, {} out, {} errors",
            stats.connections.load(Ordering::Relaxed),
            stats.messages_in.load(Ordering::Relaxed),
            stats.messages_out.load(Ordering::Relaxed),
            stats.errors.load(Ordering::Relaxed),
        );
        Ok(())
    })
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

impl Drop for Background {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Binds and starts serving on another thread; returns once bound.
pub(crate) fn spawn(script: ServerScript, options: ServerOptions) -> Result<Background, Error> {
    let runtime = runtime()?;
    let listener = runtime.block_on(bind(&options.listen))?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: options.listen.clone(),
        source,
    })?;
    raise_open_file_limit();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // Sized for scripts: the script's values may be dropped on it at the end.
    let thread = crate::stack::thread("tcpscript-server")
        .spawn(move || {
            runtime.block_on(serve(listener, script, options, async {
                let _ = stopped.await;
            }));
        })
        .map_err(|e| Error::Usage(format!("cannot start the server thread: {e}")))?;
    Ok(Background {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Accepts until `stop` completes, then shuts down gracefully.
async fn serve(
    listener: TcpListener,
    script: ServerScript,
    options: ServerOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Arc<Stats> {
    let shared = Arc::new(Shared {
        script: Arc::new(script),
        options,
        stats: Arc::new(Stats::default()),
    });
    let stopping = Arc::new(Stopping::default());
    // Each connection holds a sender; when all are dropped, all are done.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    tokio::pin!(stop);
    let mut last_accept_error = None;

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let shared = shared.clone();
                    let stop = stopping.watch();
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        serve_connection(stream, peer, &shared, stop).await;
                        drop(done);
                    });
                }
                Err(e) => {
                    // Out of file descriptors, usually: wait for some to free
                    // rather than spin on an error that repeats at once, and
                    // say so once a second rather than fifty times.
                    if last_accept_error.is_none_or(|at: Instant| at.elapsed() >= Duration::from_secs(1)) {
                        eprintln!("accept failed: {e}");
                        last_accept_error = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            _ = &mut stop => break,
        }
    }

    drop(listener);
    stopping.stop_all();
    drop(done_tx);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, done_rx.recv()).await;
    shared.stats.clone()
}

/// Tells every open connection that the server is stopping. Each one waits
/// on a oneshot of its own: with one shared `watch` or `Notify`, every
/// connection would take the same lock once per message to re-arm its
/// waiter, and connections on different threads would queue on it.
#[derive(Default)]
struct Stopping {
    waiting: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_id: AtomicU64,
}

/// One connection's side of [`Stopping`]; leaving the roster when dropped.
struct StopSignal {
    stopping: Arc<Stopping>,
    id: u64,
    receiver: oneshot::Receiver<()>,
}

impl Stopping {
    fn watch(self: &Arc<Self>) -> StopSignal {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        self.roster().insert(id, sender);
        StopSignal {
            stopping: self.clone(),
            id,
            receiver,
        }
    }

    fn stop_all(&self) {
        for (_, sender) in self.roster().drain() {
            let _ = sender.send(());
        }
    }

    fn roster(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<()>>> {
        // A panic elsewhere cannot leave the map half-updated: use it anyway.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for StopSignal {
    fn drop(&mut self) {
        self.stopping.roster().remove(&self.id);
    }
}

/// Completes at SIGINT or SIGTERM. The handlers are installed here, when
/// called, not when the future is first polled: a signal sent as soon as
/// `listening on` is printed must already stop the server gracefully
/// rather than kill it with replies still unsent.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, Error> {
    let failed = |e: io::Error| Error::Usage(format!("cannot watch for signals: {e}"));
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).map_err(failed)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(failed)?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        let _ = failed;
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// Why a connection ended.
enum End {
    PeerClosed,
    ScriptClosed,
    Shutdown,
    Idle(Duration),
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error(transparent)]
    Hook(Error),
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error("bad framing from peer: {0}")]
    Frame(#[from] FrameError),
    #[error("the peer read none of its replies for {}; closing", humantime::format_duration(*.0))]
    NotReading(Duration),
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    mut stop: StopSignal,
) {
    let options = &shared.options;
    let _ = stream.set_nodelay(true);
    let mut connection = ServerConnection {
        stream,
        decoder: Decoder::new(options.framing.clone(), options.max_frame),
        framing: options.framing.clone(),
        buf: BytesMut::new(),
        out: Vec::new(),
        eof: false,
        read_size: options.max_frame.min(READ_SIZE),
        write_timeout: options.idle_timeout,
        transcript: Transcript::new(options.verbosity, format!("{peer} ")),
        messages_in: 0,
        messages_out: 0,
        member: None,
    };
    let mut hooks = shared.script.connection(peer);
    if options.verbosity == Verbosity::Verbose {
        eprintln!("{peer} connected");
    }
    let mut inbox = None;
    if let Some(room) = shared.script.room() {
        let (id, receiver) = room.join(peer.to_string());
        connection.member = Some((room.clone(), id));
        inbox = Some(receiver);
    }

    let result = converse(
        &mut connection,
        &mut hooks,
        options,
        &mut stop.receiver,
        &mut inbox,
    )
    .await;
    // on_disconnect's replies go out when the connection can still carry
    // them: the script closed it, or the server is shutting down.
    let farewell = matches!(result, Ok(End::ScriptClosed | End::Shutdown));
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
                eprintln!("{peer} {reason}");
            }
            reason
        }
        Err(ConnError::Hook(mut error)) => {
            errors += 1;
            if let Some(diagnostic) = error.diagnostic_mut() {
                diagnostic.transcript = connection.transcript.recent();
            }
            error.eprint();
            "closed after a script error".to_string()
        }
        Err(other) => {
            errors += 1;
            eprintln!("{peer} {other}");
            "closed after an error".to_string()
        }
    };
    match hooks.on_disconnect() {
        Ok(mut reply) if farewell => {
            let _ = connection.perform(&mut reply).await;
        }
        // The peer cannot hear it, but the others can.
        Ok(reply) => connection.broadcast_only(reply),
        Err(e) => {
            errors += 1;
            e.eprint();
        }
    }
    if let Some((room, id)) = &connection.member {
        room.leave(*id);
    }
    connection.close().await;
    if options.verbosity == Verbosity::Verbose {
        eprintln!("{peer} {reason}");
    }
    let stats = &shared.stats;
    stats.connections.fetch_add(1, Ordering::Relaxed);
    stats
        .messages_in
        .fetch_add(connection.messages_in, Ordering::Relaxed);
    stats
        .messages_out
        .fetch_add(connection.messages_out, Ordering::Relaxed);
    stats.errors.fetch_add(errors, Ordering::Relaxed);
}

/// What woke a connection up.
enum Event {
    Message(Option<Frame>),
    Broadcast(Bytes),
    Shutdown,
    Idle,
}

async fn converse(
    connection: &mut ServerConnection,
    hooks: &mut ConnectionHooks,
    options: &ServerOptions,
    stopping: &mut oneshot::Receiver<()>,
    inbox: &mut Option<mpsc::Receiver<Bytes>>,
) -> Result<End, ConnError> {
    let mut greeting = hooks.on_connect().map_err(ConnError::Hook)?;
    let closed = connection.perform(&mut greeting).await?;
    hooks.recycle(greeting);
    if closed {
        return Ok(End::ScriptClosed);
    }
    // One timer for the whole connection, restarted at every wait: the
    // peer's idle time counts from when we are ready for it again.
    let mut idle = options
        .idle_timeout
        .map(|limit| (limit, Box::pin(tokio::time::sleep(limit))));
    loop {
        if let Some((limit, timer)) = idle.as_mut() {
            timer.as_mut().reset(tokio::time::Instant::now() + *limit);
        }
        let event = std::future::poll_fn(|cx| {
            let timer = idle.as_mut().map(|(_, timer)| timer.as_mut());
            connection.poll_event(cx, inbox, stopping, timer)
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
            Event::Idle => return Ok(End::Idle(options.idle_timeout.unwrap_or_default())),
        };
        let mut reply = connection
            .handle(frame, |message| {
                if options.print_messages {
                    println!("[{}] {}", hooks.peer(), message::display_line(message));
                }
                hooks.on_message(message)
            })
            .map_err(ConnError::Hook)?;
        let closed = connection.perform(&mut reply).await?;
        hooks.recycle(reply);
        if closed {
            return Ok(End::ScriptClosed);
        }
    }
}

/// The socket of one connection with its framing state.
struct ServerConnection {
    stream: TcpStream,
    decoder: Decoder,
    framing: Framing,
    /// Received bytes not yet cut into a message.
    buf: BytesMut,
    /// Framed replies waiting to be written, reused between replies.
    out: Vec<u8>,
    eof: bool,
    /// Largest single read: a `raw` message never exceeds `--max-frame`.
    read_size: usize,
    /// How long a write may stall on a peer that does not read.
    write_timeout: Option<Duration>,
    transcript: Transcript,
    messages_in: u64,
    messages_out: u64,
    /// The room this connection is in, and its id there.
    member: Option<(Arc<Room>, u64)>,
}

impl ServerConnection {
    /// What to do next: a message (or the peer's end), a broadcast, the
    /// server stopping, or the idle limit. Input comes first, as the peer
    /// is the one waiting. One plain function rather than a `select!` over
    /// four futures made anew per message: the code a message runs through
    /// stays small enough to stay in the CPU's instruction cache.
    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
        inbox: &mut Option<mpsc::Receiver<Bytes>>,
        stopping: &mut oneshot::Receiver<()>,
        idle: Option<Pin<&mut tokio::time::Sleep>>,
    ) -> Poll<Result<Event, ConnError>> {
        loop {
            if let Some(frame) = self.decoder.next_frame(&mut self.buf)? {
                return Poll::Ready(Ok(Event::Message(Some(frame))));
            }
            if self.eof {
                let last = self.decoder.last_frame(&mut self.buf)?;
                return Poll::Ready(Ok(Event::Message(last)));
            }
            match self.poll_read_some(cx) {
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => break,
            }
        }
        // A closed inbox (the room gone) just never delivers again.
        if let Some(Poll::Ready(Some(message))) = inbox.as_mut().map(|r| r.poll_recv(cx)) {
            return Poll::Ready(Ok(Event::Broadcast(message)));
        }
        if Pin::new(stopping).poll(cx).is_ready() {
            return Poll::Ready(Ok(Event::Shutdown));
        }
        if idle.is_some_and(|idle| idle.poll(cx).is_ready()) {
            return Poll::Ready(Ok(Event::Idle));
        }
        Poll::Pending
    }

    /// Hands a received message to `hook` straight from the read buffer,
    /// then drops it from there.
    fn handle<T>(&mut self, frame: Frame, hook: impl FnOnce(&[u8]) -> T) -> T {
        let message = frame.message(&self.buf);
        self.messages_in += 1;
        self.transcript.record(Direction::Received, message);
        let result = hook(message);
        frame.consume(&mut self.buf);
        result
    }

    /// One read into the worker's scratch buffer, appended to `buf`.
    /// `poll_read` rather than `readable()` + `try_read`: after a short
    /// read it clears the socket's readiness, where `try_read` would leave
    /// it set and cost an extra, empty `recv` per message.
    fn poll_read_some(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut read = ReadBuf::new(&mut scratch[..self.read_size]);
            match Pin::new(&mut self.stream).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let filled = read.filled();
                    self.buf.extend_from_slice(filled);
                    Poll::Ready(Ok(filled.len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    }

    /// Carries out a hook's reply; true when the script asked to close.
    async fn perform(&mut self, reply: &mut Reply) -> Result<bool, ConnError> {
        for action in reply.actions.drain(..) {
            match action {
                Action::Send(message) => self.queue(message.as_bytes())?,
                Action::Sleep(pause) => {
                    self.flush().await?;
                    tokio::time::sleep(pause).await;
                }
                Action::Broadcast(message) => self.broadcast(&message),
            }
        }
        self.flush().await?;
        Ok(reply.close)
    }

    /// Frames a message into the write buffer.
    fn queue(&mut self, message: &[u8]) -> Result<(), ConnError> {
        framing::encode(&self.framing, message, &mut self.out)?;
        self.messages_out += 1;
        self.transcript.record(Direction::Sent, message);
        Ok(())
    }

    fn broadcast(&self, message: &Bytes) {
        if let Some((room, id)) = &self.member {
            for peer in room.broadcast(*id, message) {
                eprintln!("{peer}: a broadcast was dropped: more than {BROADCAST_BACKLOG} waiting");
            }
        }
    }

    /// The broadcasts of a reply that can no longer be sent to its peer.
    fn broadcast_only(&self, reply: Reply) {
        for action in reply.actions {
            if let Action::Broadcast(message) = action {
                self.broadcast(&message);
            }
        }
    }

    /// Writes the pending replies. Memory stays bounded when the peer does
    /// not read: this waits, and the connection reads nothing more until
    /// the kernel's buffers drain (or `--idle-timeout` gives up on it).
    async fn flush(&mut self) -> Result<(), ConnError> {
        if self.out.is_empty() {
            return Ok(());
        }
        // Usually the socket takes it all at once: no future, no timer.
        let written = match self.stream.try_write(&self.out) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e.into()),
        };
        if written < self.out.len() {
            let write = self.stream.write_all(&self.out[written..]);
            match self.write_timeout {
                Some(limit) => tokio::time::timeout(limit, write)
                    .await
                    .map_err(|_| ConnError::NotReading(limit))??,
                None => write.await?,
            }
        }
        self.out.clear();
        if self.out.capacity() > KEEP_WRITE_CAPACITY {
            self.out = Vec::new();
        }
        Ok(())
    }

    /// Sends our FIN, then drains briefly so unread input does not turn
    /// the close into a reset that could destroy replies still in flight.
    async fn close(&mut self) {
        let _ = self.stream.shutdown().await;
        if self.eof {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            loop {
                if self.stream.readable().await.is_err() {
                    return;
                }
                let read = SCRATCH.with(|scratch| self.stream.try_read(&mut scratch.borrow_mut()));
                match read {
                    Ok(0) => return,
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => return,
                    _ => {}
                }
            }
        })
        .await;
    }
}
