//! `tcpscript proxy SCRIPT`: each direction is cut into messages by its
//! framing and each message goes through the script's hook for that
//! direction, whose return value is forwarded in its place.
//!
//! One task per connection owns both sockets. Hooks run inline and only
//! record what to do (see `server::hooks`); what they forward or inject
//! waits in one queue per direction, written out as the destination takes
//! it. A side is read only while both queues are under [`QUEUE_LIMIT`]:
//! a slow reader slows the writer down on either hop, and a hook that
//! injects into its own side cannot grow a queue without bound.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use super::Counts;
use super::connection::{Ending, This, gone, is_reset};
use super::toxics::{Plan, Shaper};
use super::transport::{Stream, eof_as_close};
use crate::console;
use crate::engine::Limits;
use crate::error::Error;
use crate::framing::{self, Decoder, Framing};
use crate::server::hooks::ServerScript;
use crate::server::hooks::{Action, ConnectionHooks, HookFailure, Reply};
use crate::transcript::Verbosity;

/// Bytes read at a time from either side.
const READ: usize = 64 * 1024;
/// Bytes a direction may hold queued before reading stops (see the top).
const QUEUE_LIMIT: usize = 16 * READ;
/// A loaded proxy script and the framing of each direction.
pub(crate) struct ProxyScript {
    script: Arc<ServerScript>,
    /// Client to upstream: `UP_FRAMING`, else `FRAMING`, else `raw`.
    up: Framing,
    /// Upstream to client: `DOWN_FRAMING`, else `FRAMING`, else `raw`.
    down: Framing,
    /// `--max-frame`: the largest message either direction's framing accepts.
    max_frame: usize,
    /// `--record DIR`: each connection written down as a client script and
    /// a mock server script.
    record: Option<Record>,
    /// `-v`: every message shown as it arrives, with its direction.
    verbose: bool,
    /// `--json`: every message an event too.
    pub(crate) events: Option<crate::report::events::TestEvents>,
}

/// `-v`: one line per message, `c>` from the client, `<s` from the
/// upstream, with the time since the connection opened.
struct Tap {
    prefix: String,
    start: std::time::Instant,
    verbose: bool,
    index: u64,
    events: Option<crate::report::events::TestEvents>,
}

impl Tap {
    fn show(&self, side: Side, message: &[u8]) {
        if let Some(events) = &self.events {
            let mut fields = crate::report::events::message_fields(message);
            fields.insert("connection".into(), self.index.into());
            let direction = match side {
                Side::Client => "up",
                Side::Upstream => "down",
            };
            fields.insert("direction".into(), direction.into());
            events.emit("message", serde_json::Value::Object(fields));
        }
        if !self.verbose {
            return;
        }
        let arrow = match side {
            Side::Client => "c>",
            Side::Upstream => "<s",
        };
        crate::console::err(&format!(
            "{} +{:.3}s {arrow} {}",
            self.prefix,
            self.start.elapsed().as_secs_f64(),
            crate::message::display_line(message)
        ));
    }
}

/// `proxy --record DIR`: where, and as what the upstream is reached.
pub(crate) struct Record {
    pub(crate) dir: std::path::PathBuf,
    pub(crate) upstream: String,
    pub(crate) exact: bool,
    pub(crate) verbosity: Verbosity,
}

/// One connection's two recordings: the client's side as a conversation
/// asserting the upstream's replies, and the upstream as a mock answering
/// as it did.
struct Recorders {
    client: crate::record::ClientRecorder,
    server: crate::record::ServerRecorder,
    client_ended: bool,
    index: u64,
    /// Messages and bytes written down so far: a recording is kept whole
    /// and rewritten after every message, so a connection that goes on
    /// and on is recorded up to a limit, then only forwarded.
    kept: usize,
    kept_bytes: usize,
    full: bool,
}

/// What `--record` keeps of one connection, at most.
const RECORD_MESSAGES: usize = 1_000;
const RECORD_BYTES: usize = 4 * 1024 * 1024;

impl Recorders {
    fn start(
        record: &Record,
        index: u64,
        peer: SocketAddr,
        up: &Framing,
        down: &Framing,
    ) -> Result<Self, Error> {
        let options = |name: &str| crate::record::RecordOptions {
            path: record.dir.join(format!("{index}-{name}.rhai")),
            exact: record.exact,
            tls: None,
            udp: false,
        };
        let client =
            crate::record::ClientRecorder::start(&options("client"), &record.upstream, up)?
                .by_proxy();
        let mut server =
            crate::record::ServerRecorder::start(&options("server"), "127.0.0.1:0", down)?
                .by_proxy();
        server.connected(peer);
        Ok(Recorders {
            client,
            server,
            client_ended: false,
            index,
            kept: 0,
            kept_bytes: 0,
            full: false,
        })
    }

    fn message(&mut self, side: Side, message: &[u8]) {
        if self.full {
            return;
        }
        if self.kept >= RECORD_MESSAGES || self.kept_bytes + message.len() > RECORD_BYTES {
            self.full = true;
            let why = format!(
                "the recording stopped after {} messages ({} bytes): --record keeps at most \
                 {RECORD_MESSAGES} messages or {RECORD_BYTES} bytes of a connection",
                self.kept, self.kept_bytes
            );
            crate::console::err(&format!("--record: connection #{}: {why}", self.index));
            self.client.failed(&why);
            self.client.checkpoint();
            return;
        }
        self.kept += 1;
        self.kept_bytes += message.len();
        match side {
            Side::Client => {
                self.client.sent(message);
                self.server.message(message);
                self.client.checkpoint();
            }
            Side::Upstream => {
                self.client.received(bytes::Bytes::copy_from_slice(message));
                self.server.replied(&String::from_utf8_lossy(message));
                self.client.checkpoint();
            }
        }
    }

    /// `side` ended its stream. The client ending first is the end of the
    /// conversation (the replay just stops); the upstream ending first is
    /// a close the replay expects.
    fn ended(&mut self, side: Side) {
        if self.full {
            return;
        }
        match side {
            Side::Client => {
                self.client_ended = true;
                self.client.input_ended();
                self.client.checkpoint();
            }
            Side::Upstream if !self.client_ended => self.client.closed(),
            Side::Upstream => {}
        }
    }

    fn finish(mut self, ended: &Ending, verbosity: Verbosity) {
        if !matches!(ended, Ending::Closed) {
            self.client
                .failed("the connection did not end with a close");
        }
        for result in [self.client.finish(verbosity), self.server.finish(verbosity)] {
            if let Err(e) = result {
                crate::console::err(&format!("--record: {e}"));
            }
        }
    }
}

/// What `proxy SCRIPT` takes from its flags.
pub(crate) struct ScriptOptions {
    pub(crate) params: crate::engine::Params,
    pub(crate) max_frame: usize,
    pub(crate) hook_timeout: std::time::Duration,
    pub(crate) verbosity: Verbosity,
}

impl ProxyScript {
    /// `proxy --udp`: one session's hooks, where a datagram is a message.
    pub(super) fn hooks_for(&self, peer: SocketAddr) -> ConnectionHooks {
        self.script.connection(peer, &Framing::Raw, self.max_frame)
    }

    /// Whether the script has `on_client_message`, `on_server_message`.
    pub(super) fn hooks_each_way(&self) -> (bool, bool) {
        (
            self.script.has_client_message(),
            self.script.has_server_message(),
        )
    }

    pub(crate) fn load(path: &Path, options: ScriptOptions) -> Result<Self, Error> {
        let max_frame = options.max_frame;
        let limits = Limits::default().with_max_frame(max_frame);
        let script = ServerScript::load_proxy(
            path,
            &limits,
            options.hook_timeout,
            options.params,
            options.verbosity,
        )?;
        let both = script.declared_framing(max_frame)?;
        let up = script.declared_framing_named("UP_FRAMING")?;
        let down = script.declared_framing_named("DOWN_FRAMING")?;
        let pick = |own: Option<Framing>| own.or_else(|| both.clone()).unwrap_or(Framing::Raw);
        let (up, down) = (pick(up), pick(down));
        for framing in [&up, &down] {
            framing
                .check_max_frame(max_frame)
                .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
        }
        Ok(ProxyScript {
            script: Arc::new(script),
            up,
            down,
            max_frame,
            record: None,
            verbose: options.verbosity >= Verbosity::Verbose,
            events: None,
        })
    }

    /// `proxy --record DIR`: every message passes as it is, and each
    /// connection is written down.
    pub(crate) fn recording(
        record: Record,
        framing: Framing,
        max_frame: usize,
    ) -> Result<Self, Error> {
        framing
            .check_max_frame(max_frame)
            .map_err(|e| Error::Usage(format!("--framing {e}")))?;
        std::fs::create_dir_all(&record.dir).map_err(|source| Error::WriteFile {
            path: record.dir.display().to_string(),
            source,
        })?;
        let limits = Limits::default().with_max_frame(max_frame);
        let script = ServerScript::proxy_pass_through(&limits, record.verbosity)?;
        let verbose = record.verbosity >= Verbosity::Verbose;
        Ok(ProxyScript {
            script: Arc::new(script),
            up: framing.clone(),
            down: framing,
            max_frame,
            record: Some(record),
            verbose,
            events: None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Upstream,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        }
    }
}

/// What one side sends, on its way to a hook.
struct Inbound {
    buf: BytesMut,
    /// `None` when the script has no hook for this side: its bytes are
    /// passed on as they arrive, untouched by any framing.
    decoder: Option<Decoder>,
    done: bool,
    /// Messages cut from this side, for the summary.
    messages: u64,
}

enum Item {
    Data(Vec<u8>),
    Pause(Duration),
    /// `--latency`: what follows is due then, counted from its arrival.
    Until(Instant),
    Fin,
}

/// What waits to be written to one side.
struct Outbound {
    framing: Framing,
    items: VecDeque<Item>,
    /// Bytes in `items` and the unwritten part of `current`.
    queued: usize,
    current: Vec<u8>,
    written: usize,
    paused: Option<Instant>,
    /// The toxics of this direction, when the connection drew them: they
    /// apply to whole messages as they arrive, not to chunks.
    shaper: Option<Shaper>,
    /// A FIN is queued: nothing more can follow it.
    fin: bool,
    /// The FIN went out.
    shut: bool,
    moved: u64,
}

impl Outbound {
    fn new(framing: Framing, shaper: Option<Shaper>) -> Self {
        Outbound {
            framing,
            items: VecDeque::new(),
            queued: 0,
            current: Vec::new(),
            written: 0,
            paused: None,
            shaper,
            fin: false,
            shut: false,
            moved: 0,
        }
    }

    fn push_data(&mut self, data: &[u8]) {
        // After a FIN the side cannot be written to: what a hook sends
        // there (a `to_server` after the client's close) has nowhere to go.
        if self.fin || data.is_empty() {
            return;
        }
        self.queued += data.len();
        self.tail(data.len()).extend_from_slice(data);
    }

    /// Frames `message` straight into the queue, with no buffer of its
    /// own on the way.
    fn push_framed(&mut self, message: &[u8]) -> Result<(), framing::FrameError> {
        if self.fin {
            return Ok(());
        }
        if message.is_empty() {
            // Framed, it may still be nothing (`raw`), and an empty chunk
            // would be a write of nothing.
            let mut data = Vec::new();
            framing::encode(&self.framing, message, &mut data)?;
            self.push_data(&data);
            return Ok(());
        }
        // Taken out for the call: `tail` borrows all of `self`.
        let framing = std::mem::replace(&mut self.framing, Framing::Raw);
        let tail = self.tail(message.len() + 4);
        let before = tail.len();
        let encoded = framing::encode(&framing, message, tail);
        let added = tail.len() - before;
        self.queued += added;
        self.framing = framing;
        encoded
    }

    /// Where the next `more` bytes of this direction go: after the bytes
    /// being written when nothing waits behind them, so that one write
    /// takes them all and a message needs no buffer of its own; else at
    /// the end of the last chunk queued while it is small, so that many
    /// small messages go out in few writes.
    fn tail(&mut self, more: usize) -> &mut Vec<u8> {
        if self.items.is_empty() {
            if self.written == self.current.len() {
                self.current.clear();
                self.written = 0;
            }
            // Bounded as the chunks are: what is written stays at the
            // front of `current` until all of it is.
            if self.current.is_empty() || self.current.len() + more <= READ {
                return &mut self.current;
            }
        }
        let fits = matches!(
            self.items.back(),
            Some(Item::Data(last)) if last.len() + more <= READ
        );
        if !fits {
            self.items.push_back(Item::Data(Vec::with_capacity(more)));
        }
        match self.items.back_mut() {
            Some(Item::Data(last)) => last,
            _ => unreachable!("a chunk is last in the queue"),
        }
    }

    /// Without a hook this way: what was read goes on as it is.
    fn pass(&mut self, buf: &mut BytesMut) {
        if !buf.is_empty() && self.arrived() {
            self.push_data(buf);
        }
        buf.clear();
    }

    /// A message (or, without a hook this way, a chunk) arrived for this
    /// direction: false when `--blackhole-after` has passed and it is to
    /// vanish; under `--latency`, what it becomes waits out its delay.
    fn arrived(&mut self) -> bool {
        let Some(shaper) = &mut self.shaper else {
            return true;
        };
        if shaper.blackholed() {
            return false;
        }
        let now = Instant::now();
        let due = shaper.chunk_due(now);
        if due > now {
            self.items.push_back(Item::Until(due));
        }
        true
    }

    /// The source closed: passed on after `--slow-close`, and not at all
    /// once blackholed (the side is then done, as if it had been).
    fn push_source_fin(&mut self) {
        if let Some(shaper) = &self.shaper {
            if shaper.blackholed() {
                self.fin = true;
                self.shut = true;
                return;
            }
            if let Some(delay) = shaper.slow_close() {
                self.items.push_back(Item::Pause(delay));
            }
        }
        self.push_fin();
    }

    fn push_fin(&mut self) {
        if !self.fin {
            self.fin = true;
            self.items.push_back(Item::Fin);
        }
    }

    /// Moves on once `current` is written; true when the next thing to
    /// do is the FIN. A pause starts when the queue reaches it.
    fn advance(&mut self) -> bool {
        while self.written == self.current.len() && self.paused.is_none() {
            self.current.clear();
            self.written = 0;
            match self.items.pop_front() {
                Some(Item::Data(data)) => self.current = data,
                Some(Item::Pause(pause)) => self.paused = Some(Instant::now() + pause),
                Some(Item::Until(due)) => self.paused = Some(due),
                Some(Item::Fin) => return true,
                None => {
                    // Kept for the next message, unless a burst grew it.
                    if self.current.capacity() > 2 * READ {
                        self.current = Vec::new();
                    }
                    return false;
                }
            }
        }
        false
    }

    fn wrote(&mut self, n: usize) {
        self.written += n;
        self.queued -= n;
        self.moved += n as u64;
    }

    fn writing(&self) -> bool {
        self.paused.is_none() && self.written < self.current.len()
    }
}

/// What a hook's reply, or a message that cannot be cut, does next.
enum Flow {
    Go,
    /// Close both sides once what is queued is written.
    Close(&'static str),
    Reset,
    Failed(String),
}

/// Both directions' queues: `up` is written to the upstream.
struct Outs {
    up: Outbound,
    down: Outbound,
}

impl Outs {
    /// Where what `side` sends goes.
    fn forward(&mut self, side: Side) -> &mut Outbound {
        match side {
            Side::Client => &mut self.up,
            Side::Upstream => &mut self.down,
        }
    }

    /// Carries out `reply`: `send` and the return value go the hook's way
    /// (`to`), `to_client`/`to_server` where they say. A `delay` holds
    /// back what the reply puts after it in each direction, and nothing
    /// already queued.
    fn apply(&mut self, reply: &mut Reply, to: Side) -> Result<(), framing::FrameError> {
        let mut pending = [Duration::ZERO; 2];
        for action in reply.actions.drain(..) {
            let (side, message, framed) = match action {
                Action::Send(message) => (to, message, true),
                Action::SendRaw(message) => (to, message, false),
                Action::ToServer(message) => (Side::Client, message, true),
                Action::ToClient(message) => (Side::Upstream, message, true),
                Action::Sleep(pause) => {
                    pending[0] += pause;
                    pending[1] += pause;
                    continue;
                }
                // Refused when a proxy script is loaded.
                Action::Broadcast(_) | Action::Reframe(_) => continue,
            };
            let slot = &mut pending[side as usize];
            let out = self.forward(side);
            if !slot.is_zero() && !out.fin {
                out.items.push_back(Item::Pause(std::mem::take(slot)));
            }
            if framed {
                out.push_framed(message.as_bytes())?;
            } else {
                out.push_data(message.as_bytes());
            }
        }
        Ok(())
    }

    /// Carries out a hook's outcome; a failed hook's error is reported
    /// and what it queued before failing still goes out.
    fn take(
        &mut self,
        result: Result<Reply, HookFailure>,
        to: Side,
        hooks: &mut ConnectionHooks,
        errors: &mut u64,
    ) -> Flow {
        let (mut reply, failed) = match result {
            Ok(reply) => (reply, false),
            Err(failure) => {
                failure.error.eprint();
                *errors += 1;
                (failure.before, true)
            }
        };
        let flow = match self.apply(&mut reply, to) {
            Err(e) => {
                console::err(&format!("a hook's message cannot be sent: {e}"));
                *errors += 1;
                Flow::Close("closed after a hook error")
            }
            Ok(()) if failed => Flow::Close("closed after a hook error"),
            Ok(()) if reply.reset => Flow::Reset,
            Ok(()) if reply.close => Flow::Close("closed by the script"),
            Ok(()) => Flow::Go,
        };
        hooks.recycle(reply);
        flow
    }
}

/// Every complete message `side` has sent, through its hook; at the end
/// of the stream the last one too, and the FIN passed on.
fn deliver(
    side: Side,
    inbound: &mut Inbound,
    hooks: &mut ConnectionHooks,
    outs: &mut Outs,
    errors: &mut u64,
    recorders: &mut Option<Recorders>,
    tap: Option<&Tap>,
) -> Flow {
    let eof = inbound.done;
    loop {
        let Some(decoder) = &mut inbound.decoder else {
            outs.forward(side).pass(&mut inbound.buf);
            break;
        };
        let next = if eof {
            decoder.last_frame(&mut inbound.buf)
        } else {
            decoder.next_frame(&mut inbound.buf)
        };
        let frame = match next {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            // A stream that ends in the middle of a message: the rest is
            // passed on as it is, as a plain proxy would.
            Err(_) if eof => {
                let out = outs.forward(side);
                out.push_data(&inbound.buf);
                inbound.buf.clear();
                break;
            }
            Err(e) => return Flow::Failed(format!("a message from the {}: {e}", side.name())),
        };
        inbound.messages += 1;
        // The hook reads the message where it was read into, and it is
        // dropped from there after.
        let flow = if outs.forward(side).arrived() {
            let message = frame.message(&inbound.buf);
            if let Some(recorders) = recorders.as_mut() {
                recorders.message(side, message);
            }
            if let Some(tap) = tap {
                tap.show(side, message);
            }
            let result = match side {
                Side::Client => hooks.on_client_message(message),
                Side::Upstream => hooks.on_server_message(message),
            };
            outs.take(result, side, hooks, errors)
        } else {
            Flow::Go
        };
        frame.consume(&mut inbound.buf);
        if !matches!(flow, Flow::Go) {
            return flow;
        }
    }
    if eof {
        if let Some(recorders) = recorders {
            recorders.ended(side);
        }
        outs.forward(side).push_source_fin();
    }
    Flow::Go
}

/// Carries both directions through the script until the connection ends;
/// returns how, and the bytes written up and down.
pub(super) async fn relay<C: Stream, U: Stream>(
    client: &mut C,
    upstream: &mut U,
    this: &This,
    script: &ProxyScript,
    mut plan: Option<Plan>,
    counts: &Counts,
    mut hard: watch::Receiver<bool>,
) -> (Ending, u64, u64) {
    let (peer, index) = (this.peer, this.index);
    let mut errors = 0;
    let tap = (script.verbose || script.events.is_some()).then(|| Tap {
        prefix: format!("#{index} {peer}"),
        start: std::time::Instant::now(),
        verbose: script.verbose,
        index,
        events: script.events.clone(),
    });
    let mut recorders = match &script.record {
        Some(record) => match Recorders::start(record, index, peer, &script.up, &script.down) {
            Ok(recorders) => Some(recorders),
            Err(e) => {
                crate::console::err(&format!("--record: {e}"));
                errors += 1;
                None
            }
        },
        None => None,
    };
    // The framing only matters to the limit on what hooks send, which the
    // proxy checks when it frames them, per direction.
    let mut hooks = script
        .script
        .connection(peer, &Framing::Raw, script.max_frame);
    let inbound = |has_hook: bool, framing: &Framing| Inbound {
        buf: BytesMut::new(),
        decoder: has_hook.then(|| Decoder::new(framing.clone(), script.max_frame)),
        done: false,
        messages: 0,
    };
    let mut from_client = inbound(script.script.has_client_message(), &script.up);
    let mut from_upstream = inbound(script.script.has_server_message(), &script.down);
    let mut outs = Outs {
        up: Outbound::new(script.up.clone(), plan.as_mut().and_then(|p| p.up.take())),
        down: Outbound::new(
            script.down.clone(),
            plan.as_mut().and_then(|p| p.down.take()),
        ),
    };
    let mut closing: Option<&'static str> = None;
    let reset_at = plan.as_ref().and_then(|p| p.reset_at);
    let result = hooks.on_connect();
    let mut flow = outs.take(result, Side::Upstream, &mut hooks, &mut errors);

    let ending = {
        let (mut client_read, mut client_write) = client.halves();
        let (mut upstream_read, mut upstream_write) = upstream.halves();
        let relay = async {
            loop {
                match std::mem::replace(&mut flow, Flow::Go) {
                    Flow::Go => {}
                    Flow::Close(why) => {
                        closing.get_or_insert(why);
                        outs.up.push_fin();
                        outs.down.push_fin();
                    }
                    Flow::Reset => {
                        break Ending::Reset {
                            client: true,
                            upstream: true,
                            why: "reset by the script",
                        };
                    }
                    Flow::Failed(e) => break Ending::Failed(e),
                }
                if outs.up.advance() {
                    if let Err(e) = upstream_write.shutdown().await {
                        break write_failed(Side::Upstream, e);
                    }
                    outs.up.shut = true;
                }
                if outs.down.advance() {
                    if let Err(e) = client_write.shutdown().await {
                        break write_failed(Side::Client, e);
                    }
                    outs.down.shut = true;
                }
                if outs.up.shut && outs.down.shut {
                    break match closing {
                        Some(why) => Ending::Close { why },
                        None => Ending::Closed,
                    };
                }
                // What a hook just forwarded goes out in this turn, without a
                // trip through `select!` (which polls every branch again) when
                // the side takes it at once, as it mostly does.
                if outs.up.writing() {
                    let out = &mut outs.up;
                    match write_now(&mut upstream_write, &out.current[out.written..]).await {
                        Some(Ok(n)) if n > 0 => {
                            out.wrote(n);
                            continue;
                        }
                        Some(Err(e)) => break write_failed(Side::Upstream, e),
                        _ => {}
                    }
                }
                if outs.down.writing() {
                    let out = &mut outs.down;
                    match write_now(&mut client_write, &out.current[out.written..]).await {
                        Some(Ok(n)) if n > 0 => {
                            out.wrote(n);
                            continue;
                        }
                        Some(Err(e)) => break write_failed(Side::Client, e),
                        _ => {}
                    }
                }
                let room = outs.up.queued < QUEUE_LIMIT && outs.down.queued < QUEUE_LIMIT;
                let read_client = room && closing.is_none() && !from_client.done;
                let read_upstream = room && closing.is_none() && !from_upstream.done;
                if read_client {
                    from_client.buf.reserve(READ);
                }
                if read_upstream {
                    from_upstream.buf.reserve(READ);
                }
                tokio::select! {
                    read = client_read.read_buf(&mut from_client.buf), if read_client => {
                        match eof_as_close(read) {
                            Ok(0) => from_client.done = true,
                            Ok(_) => {}
                            Err(e) => break read_failed(Side::Client, e),
                        }
                        flow = deliver(Side::Client, &mut from_client, &mut hooks, &mut outs, &mut errors, &mut recorders, tap.as_ref());
                    }
                    read = upstream_read.read_buf(&mut from_upstream.buf), if read_upstream => {
                        match eof_as_close(read) {
                            Ok(0) => from_upstream.done = true,
                            Ok(_) => {}
                            Err(e) => break read_failed(Side::Upstream, e),
                        }
                        flow = deliver(Side::Upstream, &mut from_upstream, &mut hooks, &mut outs, &mut errors, &mut recorders, tap.as_ref());
                    }
                    wrote = upstream_write.write(&outs.up.current[outs.up.written..]), if outs.up.writing() => {
                        match wrote {
                            Ok(n) => outs.up.wrote(n),
                            Err(e) => break write_failed(Side::Upstream, e),
                        }
                    }
                    wrote = client_write.write(&outs.down.current[outs.down.written..]), if outs.down.writing() => {
                        match wrote {
                            Ok(n) => outs.down.wrote(n),
                            Err(e) => break write_failed(Side::Client, e),
                        }
                    }
                    _ = until(outs.up.paused), if outs.up.paused.is_some() => {
                        outs.up.paused = None;
                    }
                    _ = until(outs.down.paused), if outs.down.paused.is_some() => {
                        outs.down.paused = None;
                    }
                    _ = until(reset_at), if reset_at.is_some() => break Ending::Reset {
                        client: true,
                        upstream: true,
                        why: "reset (--reset-after)",
                    },
                }
            }
        };
        // Outside the loop: polled once per wake-up of the task rather than
        // on every turn, as each poll of a watch takes its lock.
        let stopped = hard.wait_for(|stopped| *stopped);
        tokio::select! {
            biased;
            ending = relay => ending,
            _ = stopped => Ending::Close {
                why: "closed by the proxy's shutdown",
            },
        }
    };
    // The sockets are closing or closed: what it sends goes nowhere, but
    // it may log or keep count in the shared store.
    let result = hooks.on_disconnect();
    let mut farewell = match result {
        Ok(reply) => reply,
        Err(failure) => {
            failure.error.eprint();
            errors += 1;
            failure.before
        }
    };
    farewell.actions.clear();
    if let (Some(recorders), Some(record)) = (recorders, &script.record) {
        recorders.finish(&ending, record.verbosity);
    }
    counts.errors.fetch_add(errors, Ordering::Relaxed);
    counts
        .messages_up
        .fetch_add(from_client.messages, Ordering::Relaxed);
    counts
        .messages_down
        .fetch_add(from_upstream.messages, Ordering::Relaxed);
    (ending, outs.up.moved, outs.down.moved)
}

/// One write, if `to` takes bytes now: `None` when it would wait.
async fn write_now<W: AsyncWrite + Unpin>(to: &mut W, bytes: &[u8]) -> Option<io::Result<usize>> {
    std::future::poll_fn(|cx| match Pin::new(&mut *to).poll_write(cx, bytes) {
        Poll::Ready(result) => Poll::Ready(Some(result)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Sleeps until `at`. `select!` builds every branch's future on each
/// turn, the disabled ones too: this one costs nothing until polled,
/// where a `Sleep` looks up the runtime's timer as it is made.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reading `side` failed: a reset reaches the other side.
fn read_failed(side: Side, e: std::io::Error) -> Ending {
    if !is_reset(&e) {
        return Ending::Failed(e.to_string());
    }
    match side {
        Side::Client => Ending::Reset {
            client: false,
            upstream: true,
            why: "reset by the client",
        },
        Side::Upstream => Ending::Reset {
            client: true,
            upstream: false,
            why: "reset by the upstream",
        },
    }
}

/// Writing to `side` failed: when it is gone, the other side hears so.
fn write_failed(side: Side, e: std::io::Error) -> Ending {
    match (gone(e), side) {
        (super::connection::End::Gone, Side::Upstream) => Ending::Reset {
            client: true,
            upstream: false,
            why: "upstream gone",
        },
        (super::connection::End::Gone, Side::Client) => Ending::Reset {
            client: false,
            upstream: true,
            why: "client gone",
        },
        (super::connection::End::Failed(e), _) => Ending::Failed(e.to_string()),
        (_, _) => Ending::Failed("write failed".into()),
    }
}
