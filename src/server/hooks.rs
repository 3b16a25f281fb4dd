//! Server scripts: the top level runs once, then every connection behaves
//! as if it had its own copy of the top-level variables (see `scope`) and
//! its hooks are called with them.
//!
//! Hooks never block. `send`, `sleep` and `close` inside a hook only record
//! what to do; the connection's task carries it out afterwards, so a
//! `sleep(1000)` delays that connection's replies and nobody else's. A hook
//! call is held to its limits at every operation: time, memory in bytes,
//! the native stack; one that computes long leaves its worker thread to it.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rhai::{Caches, Dynamic, Engine, EvalAltResult, EvalContext, GlobalRuntimeState, INT};
use rhai::{ImmutableString, Scope, ScriptFuncDef, Shared};

use crate::console;
use crate::engine::{self, Failure, Limits, NativeResult, Params, Script};
use crate::error::Error;
use crate::framing::Framing;
use crate::memory::{self, Budget};
use crate::message::{self, Outgoing};
use crate::server::room::{Room, SharedStore, StoreError};
use crate::stack;
use crate::transcript::Verbosity;

/// Defaults for the limits a single hook call runs under.
pub(crate) const DEFAULT_MAX_OPERATIONS: u64 = 1_000_000;
pub(crate) const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(1);

/// What a hook asked the connection to do, in order.
#[derive(Debug, Default)]
pub(crate) struct Reply {
    pub(crate) actions: Vec<Action>,
    /// Close the connection once the actions are done.
    pub(crate) close: bool,
    /// Start TLS once the actions are done (`starttls()`).
    pub(crate) starttls: bool,
    /// Proxy scripts: reset both sides at once (`reset()`), nothing
    /// pending written.
    pub(crate) reset: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Send(Outgoing),
    Sleep(Duration),
    /// To every other connection of the server.
    Broadcast(Bytes),
    /// Bytes as they are, no framing added (`send_raw`).
    SendRaw(Outgoing),
    /// The framing from the next message on (`set_framing`).
    Reframe(Framing),
    /// Proxy scripts: a message to the client or to the upstream, framed
    /// with that direction's framing (`to_client`, `to_server`).
    ToClient(Outgoing),
    ToServer(Outgoing),
}

/// How long a hook may hold its worker thread before the worker's other
/// connections are handed to another thread (see [`hand_off_worker`]).
const INLINE_BUDGET: Duration = Duration::from_millis(2);
/// How often a slow hook tries that again if a handoff did not take.
const HANDOFF_RETRY: Duration = Duration::from_millis(50);

/// The largest message the connection's framing can carry, for checking
/// sends when a hook makes them rather than when they are written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageLimit {
    pub(crate) max: usize,
    pub(crate) framing: &'static str,
    /// The limit is one UDP datagram's, not the framing's.
    pub(crate) datagram: bool,
}

impl MessageLimit {
    /// The largest message `framing` can carry, when it has a limit.
    pub(crate) fn of(framing: &Framing) -> Option<MessageLimit> {
        let (max, name) = match framing {
            Framing::Len { width, .. } => (width.max_len(), width.framing_name()),
            _ => return None,
        };
        Some(MessageLimit {
            max: usize::try_from(max).unwrap_or(usize::MAX),
            framing: name,
            datagram: false,
        })
    }

    /// The tighter of `limit` and one datagram of `datagram` bytes.
    fn within(limit: Option<MessageLimit>, datagram: Option<usize>) -> Option<MessageLimit> {
        match (limit, datagram) {
            (Some(limit), Some(max)) if limit.max <= max => Some(limit),
            (_, Some(max)) => Some(MessageLimit {
                max,
                framing: "",
                datagram: true,
            }),
            (limit, None) => limit,
        }
    }
}

#[cold]
fn too_long(size: usize, limit: MessageLimit) -> String {
    if limit.datagram {
        return format!(
            "a message of {size} bytes does not fit one datagram (at most {} bytes: \
             --max-frame, and {} for UDP)",
            limit.max,
            crate::framing::MAX_DATAGRAM
        );
    }
    format!(
        "a message of {size} bytes does not fit the framing {} (at most {} bytes)",
        limit.framing, limit.max
    )
}

/// The hook call running on this thread. Hooks run to completion without
/// yielding, so a thread runs at most one at a time. It stays in place
/// between calls, only its fields renewed: a call moves no big struct.
struct HookCall {
    /// Whether a hook is running: natives such as `send` work only then.
    running: bool,
    /// Whose hook is running, or last ran: kept between calls, so that a
    /// connection's next call on this thread takes no reference anew.
    peer: Option<Arc<str>>,
    reply: Reply,
    limit: Option<MessageLimit>,
    max_frame: usize,
    /// UDP: the largest datagram a send may make.
    datagram: Option<usize>,
    /// When the call began: one clock read per call, so that operations
    /// that each take long (a match over megabytes) count from the start.
    started: Option<Instant>,
    /// When to try handing the worker's other connections off again.
    next_handoff: Option<Instant>,
    /// The allocator's count for this thread when the call began.
    memory_start: isize,
    /// What the connection's variables held before the call (an estimate).
    kept: usize,
    /// `tls_info()` of a TLS connection, lent by it for the call.
    tls: Option<Box<rhai::Map>>,
    /// Whether the hook is a proxy script's: the proxy's natives refuse
    /// to run in a server's hooks, where they would mean nothing.
    proxy: bool,
}

impl HookCall {
    const IDLE: HookCall = HookCall {
        running: false,
        peer: None,
        reply: Reply {
            actions: Vec::new(),
            close: false,
            starttls: false,
            reset: false,
        },
        limit: None,
        max_frame: 0,
        datagram: None,
        started: None,
        next_handoff: None,
        memory_start: 0,
        kept: 0,
        tls: None,
        proxy: false,
    };

    /// Queues a message, refusing what the framing cannot carry.
    #[inline]
    fn send(&mut self, message: Outgoing) -> Result<(), String> {
        self.reply.send(self.limit, message)
    }

    /// Takes `framing` for the rest of the connection: later sends of this
    /// call, and the messages that follow.
    fn reframe(&mut self, framing: &str) -> Result<(), String> {
        let framing = framing.parse::<Framing>()?;
        framing.check_max_frame(self.max_frame)?;
        self.limit = MessageLimit::within(MessageLimit::of(&framing), self.datagram);
        self.reply.actions.push(Action::Reframe(framing));
        Ok(())
    }

    fn broadcast(&mut self, message: bytes::Bytes) -> Result<(), String> {
        fits(self.limit, message.len())?;
        self.reply.actions.push(Action::Broadcast(message));
        Ok(())
    }
}

impl Reply {
    /// Queues a message, refusing what the framing cannot carry. What a
    /// hook queues is held to the memory budget like all it allocates, and
    /// the connection writes it out with backpressure.
    #[inline]
    fn send(&mut self, limit: Option<MessageLimit>, message: Outgoing) -> Result<(), String> {
        fits(limit, message.as_bytes().len())?;
        self.actions.push(Action::Send(message));
        Ok(())
    }

    /// The hook's return value: a string or blob is one message, an array
    /// several, `()` none; other values are sent as their printed form.
    fn push_value(&mut self, limit: Option<MessageLimit>, value: Dynamic) -> Result<(), String> {
        if value.is_unit() {
            return Ok(());
        }
        if value.is_array() {
            for item in value.into_array().unwrap_or_default() {
                if !item.is_unit() {
                    self.send(limit, Outgoing::from_value(item))?;
                }
            }
            return Ok(());
        }
        self.send(limit, Outgoing::from_value(value))
    }
}

#[inline]
fn fits(limit: Option<MessageLimit>, size: usize) -> Result<(), String> {
    match limit {
        Some(limit) if size > limit.max => Err(too_long(size, limit)),
        _ => Ok(()),
    }
}

thread_local! {
    static CURRENT: RefCell<HookCall> = const { RefCell::new(HookCall::IDLE) };

    /// Rhai's runtime state for the hooks run on this thread, kept from one
    /// call to the next: `Engine::call_fn` builds it afresh for every call
    /// and resolves every function the hook calls all over again.
    static RUNTIME: RefCell<Option<HookRuntime>> = const { RefCell::new(None) };
}

/// The hooks a script may define.
#[derive(Debug, Clone, Copy)]
enum Hook {
    Connect,
    Message,
    Disconnect,
    ClientMessage,
    ServerMessage,
}

impl Hook {
    const ALL: [Hook; 5] = [
        Hook::Connect,
        Hook::Message,
        Hook::Disconnect,
        Hook::ClientMessage,
        Hook::ServerMessage,
    ];

    fn name(self) -> &'static str {
        match self {
            Hook::Connect => "on_connect",
            Hook::Message => "on_message",
            Hook::Disconnect => "on_disconnect",
            Hook::ClientMessage => "on_client_message",
            Hook::ServerMessage => "on_server_message",
        }
    }

    /// How many arguments it takes: the message, if it has one.
    fn arity(self) -> usize {
        match self {
            Hook::Connect | Hook::Disconnect => 0,
            Hook::Message | Hook::ClientMessage | Hook::ServerMessage => 1,
        }
    }
}

/// Resolved functions kept before the cache starts afresh: a script that
/// calls functions by names its peers send could otherwise grow it forever.
const MAX_CACHED_RESOLUTIONS: usize = 4096;

/// What [`RUNTIME`] keeps for one script.
struct HookRuntime {
    /// Held, not just compared by address, so a later script can never be
    /// mistaken for this one.
    script: Arc<ServerScript>,
    global: GlobalRuntimeState,
    caches: Caches,
}

impl HookRuntime {
    fn new(script: Arc<ServerScript>) -> Self {
        let mut global = script.engine.new_global_runtime_state();
        // What `call_fn` sets up for every call: the script's functions, and
        // its name for error messages.
        global.lib.push(script.script.ast.shared_lib().clone());
        global.source = script.script.ast.source().map(Into::into);
        HookRuntime {
            script,
            global,
            caches: Caches::new(),
        }
    }

    /// Calls `hook` with one connection's variables.
    fn call(
        &mut self,
        scope: &mut Scope<'static>,
        hook: Hook,
        args: &mut [&mut Dynamic],
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        // Limits count per hook call.
        self.global.num_operations = Default::default();
        let name = hook.name();
        let mut context = EvalContext::new(
            &self.script.engine,
            &mut self.global,
            &mut self.caches,
            scope,
            None,
        );
        // Straight to the function found at load: `call_fn_raw` would check,
        // hash and look up its name at every call. A hook the script lacks
        // still fails as `call_fn_raw` fails.
        // Rhai as published (a crates.io build, see build.rs) has no direct
        // call: there every hook is called by name.
        #[cfg(vendored_rhai)]
        let result = match &self.script.hook_fns[hook as usize] {
            Some(fn_def) => {
                context.call_script_fn_def(fn_def, self.script.fn_source.as_ref(), args)
            }
            None => context.call_fn_raw(name, false, false, args),
        };
        #[cfg(not(vendored_rhai))]
        let result = context.call_fn_raw(name, false, false, args);
        if self.caches.fn_resolution_caches_len() > 0
            && self.caches.fn_resolution_cache_mut().dict.len() > MAX_CACHED_RESOLUTIONS
        {
            self.caches = Caches::new();
        }
        // What `call_fn` does with these, too.
        result.or_else(|err| match *err {
            EvalAltResult::Exit(value, _) => Ok(value),
            EvalAltResult::ErrorInFunctionCall(called, _, inner, _) if called == name => Err(inner),
            _ => Err(err),
        })
    }
}

/// Calls `hook` of `script` on the runtime state this thread keeps for it.
fn call_on_this_thread(
    script: &Arc<ServerScript>,
    scope: &mut Scope<'static>,
    hook: Hook,
    args: &mut [&mut Dynamic],
) -> Result<Dynamic, Box<EvalAltResult>> {
    RUNTIME.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot
            .as_ref()
            .is_some_and(|r| !Arc::ptr_eq(&r.script, script))
        {
            *slot = None;
        }
        let result = slot
            .get_or_insert_with(|| HookRuntime::new(script.clone()))
            .call(scope, hook, args);
        if result.is_err() {
            // Whatever a failed call left half-done goes with it.
            *slot = None;
        }
        result
    })
}

fn with_current<T>(what: &str, f: impl FnOnce(&mut HookCall) -> T) -> NativeResult<T> {
    CURRENT.with(|current| {
        let mut call = current.borrow_mut();
        if !call.running {
            return Err(Failure::script(format!(
                "{what} can only be used inside a hook (on_connect, on_message, on_disconnect)"
            ))
            .into());
        }
        Ok(f(&mut call))
    })
}

/// [`with_current`] for the natives only a proxy script has.
fn with_proxy<T>(what: &str, f: impl FnOnce(&mut HookCall) -> T) -> NativeResult<T> {
    with_current(what, |call| {
        if !call.proxy {
            return Err(Failure::script(format!(
                "{what} can only be used in a proxy script (`tcpscript proxy SCRIPT`)"
            ))
            .into());
        }
        Ok(f(call))
    })?
}

/// A compiled server script whose top level has run.
pub(crate) struct ServerScript {
    engine: Engine,
    script: Script,
    /// The top-level variables each connection starts from a copy of; big
    /// ones are shared or copied on first use instead (see `scope`).
    scope: Scope<'static>,
    has_connect: bool,
    has_message: bool,
    has_disconnect: bool,
    /// A proxy script's hooks, one per direction.
    has_client_message: bool,
    has_server_message: bool,
    /// The function of each hook (by [`Hook`]) the script defines, and the
    /// source Rhai names them by: found once, called directly (by name
    /// against Rhai as published, see build.rs).
    #[cfg_attr(not(vendored_rhai), allow(dead_code))]
    hook_fns: [Option<Shared<ScriptFuncDef>>; Hook::ALL.len()],
    #[cfg_attr(not(vendored_rhai), allow(dead_code))]
    fn_source: Option<ImmutableString>,
    /// Loaded for `tcpscript proxy`: the proxy's natives work.
    proxy: bool,
    /// Who is connected, when the script broadcasts or lists peers.
    room: Option<Arc<Room>>,
    budget: Arc<Budget>,
}

impl ServerScript {
    /// Compiles `path` and runs its top level once.
    pub(crate) fn load(
        path: &Path,
        limits: &Limits,
        hook_timeout: Duration,
        params: Params,
        verbosity: Verbosity,
    ) -> Result<Self, Error> {
        let parts = server_engine(limits, hook_timeout, params, verbosity, path.parent());
        let script = engine::compile(&parts.engine, path)?;
        Self::start(parts, script)
    }

    /// The script behind `--echo`: every message comes straight back.
    pub(crate) fn echo(limits: &Limits, verbosity: Verbosity) -> Result<Self, Error> {
        Self::from_source("<echo>", "fn on_message(msg) { msg }", limits, verbosity)
    }

    /// Compiles a script given as text (tests, built-ins).
    pub(crate) fn from_source(
        name: &str,
        source: &str,
        limits: &Limits,
        verbosity: Verbosity,
    ) -> Result<Self, Error> {
        let parts = server_engine(
            limits,
            DEFAULT_HOOK_TIMEOUT,
            Params::default(),
            verbosity,
            None,
        );
        let script = engine::compile_source(&parts.engine, name.into(), source.into())?;
        Self::start(parts, script)
    }

    fn start(parts: EngineParts, script: Script) -> Result<Self, Error> {
        let EngineParts {
            mut engine,
            room,
            budget,
        } = parts;
        share_top_level_imports(&mut engine, &script)?;
        // Keeping a roster costs every connection a channel: only when used.
        let room = script.calls_any(&["broadcast", "peers"]).then_some(room);
        let mut top_level = Scope::new();
        engine
            .run_ast_with_scope(&mut top_level, &script.ast)
            .map_err(|err| engine::diagnose(&err, &script, Some("in the script's top level")))?;
        let scope = crate::server::scope::for_connections(&mut engine, &script.ast, &top_level);
        Ok(ServerScript {
            has_connect: script.has_fn("on_connect", 0),
            has_message: script.has_fn("on_message", 1),
            has_disconnect: script.has_fn("on_disconnect", 0),
            has_client_message: script.has_fn("on_client_message", 1),
            has_server_message: script.has_fn("on_server_message", 1),
            hook_fns: Hook::ALL.map(|hook| {
                let lib = script.ast.shared_lib();
                lib.get_script_fn(hook.name(), hook.arity()).cloned()
            }),
            fn_source: script.ast.shared_lib().id().map(Into::into),
            proxy: false,
            engine,
            script,
            scope,
            room,
            budget,
        })
    }

    /// The roster connections join, if the script needs one.
    pub(crate) fn room(&self) -> Option<&Arc<Room>> {
        self.room.as_ref()
    }

    /// Whether the script calls any of `names` (`starttls`, say).
    pub(crate) fn calls_any(&self, names: &[&str]) -> bool {
        self.script.calls_any(names)
    }

    /// The script's `const FRAMING`, if it declares one.
    pub(crate) fn declared_framing(
        &self,
        max_frame: usize,
    ) -> Result<Option<crate::framing::Framing>, Error> {
        self.script.declared_framing(max_frame)
    }

    /// Compiles a proxy script and runs its top level once. The server's
    /// machinery, with what has no meaning between two peers refused.
    pub(crate) fn load_proxy(
        path: &Path,
        limits: &Limits,
        hook_timeout: Duration,
        params: Params,
        verbosity: Verbosity,
    ) -> Result<Self, Error> {
        let mut script = Self::load(path, limits, hook_timeout, params, verbosity)?;
        for name in ["starttls", "broadcast", "peers", "set_framing", "tls_info"] {
            if script.calls_any(&[name]) {
                return Err(Error::Usage(format!(
                    "{}: {name}() is for server scripts; a proxy script cannot use it \
                     (its framings are UP_FRAMING, DOWN_FRAMING or FRAMING)",
                    path.display()
                )));
            }
        }
        script.proxy = true;
        script.room = None;
        Ok(script)
    }

    /// A proxy script that forwards every message of both directions as it
    /// is: what `proxy --record` runs, so that it sees whole messages.
    pub(crate) fn proxy_pass_through(limits: &Limits, verbosity: Verbosity) -> Result<Self, Error> {
        let mut script = Self::from_source(
            "<record>",
            "fn on_client_message(msg) { msg }\nfn on_server_message(msg) { msg }",
            limits,
            verbosity,
        )?;
        script.proxy = true;
        Ok(script)
    }

    /// Whether the script has `on_client_message` / `on_server_message`:
    /// a direction without its hook is forwarded as it comes.
    pub(crate) fn has_client_message(&self) -> bool {
        self.has_client_message
    }

    pub(crate) fn has_server_message(&self) -> bool {
        self.has_server_message
    }

    /// The framing a constant such as `UP_FRAMING` declares, if any.
    pub(crate) fn declared_framing_named(&self, name: &str) -> Result<Option<Framing>, Error> {
        self.script.declared_framing_named(name)
    }

    /// The hooks of one new connection, with its own copy of the variables.
    pub(crate) fn connection(
        self: &Arc<Self>,
        peer: SocketAddr,
        framing: &Framing,
        max_frame: usize,
    ) -> ConnectionHooks {
        self.budget.join();
        ConnectionHooks {
            limit: MessageLimit::of(framing),
            max_frame,
            datagram: None,
            kept: 0,
            unmeasured: 0,
            script: self.clone(),
            scope: self.scope.clone(),
            peer: peer.to_string().into(),
            spare: Vec::new(),
            spare_text: ImmutableString::new(),
            tls: None,
        }
    }
}

/// Makes modules imported at the top level usable inside hooks. Hooks are
/// called without re-running the top level, and Rhai keeps a top-level
/// `import` only for the run that executed it; registering each module
/// under its alias keeps `import "util" as u;` then `u::f()` in a hook
/// working as anyone would expect.
fn share_top_level_imports(engine: &mut Engine, script: &Script) -> Result<(), Error> {
    use rhai::{Expr, Stmt};
    for statement in script.ast.statements() {
        let Stmt::Import(import, position) = statement else {
            continue;
        };
        let (Expr::StringConstant(path, _), alias) = &import.as_ref() else {
            continue;
        };
        if alias.name.is_empty() {
            continue;
        }
        let module = engine
            .module_resolver()
            .resolve(engine, Some(script.path.as_str()), path, *position)
            .map_err(|err| engine::diagnose(&err, script, Some("in the script's imports")))?;
        engine.register_static_module(alias.name.as_str(), module);
    }
    Ok(())
}

/// A server script's engine, with what its functions share: the room of
/// connections and the memory budget.
struct EngineParts {
    engine: Engine,
    room: Arc<Room>,
    budget: Arc<Budget>,
}

fn server_engine(
    limits: &Limits,
    hook_timeout: Duration,
    params: Params,
    verbosity: Verbosity,
    script_dir: Option<&Path>,
) -> EngineParts {
    let mut engine = engine::new_engine(limits, params, script_dir);
    let room = Arc::new(Room::new(verbosity));
    let budget = Arc::new(Budget::new(limits.max_memory));
    let parts_budget = budget.clone();
    engine.on_progress(move |operations| {
        // One comparison per operation: the native stack, and whatever
        // interrupted the script (its memory past the ceiling, a failure
        // waiting to be raised).
        match stack::poll() {
            stack::Poll::Go => {}
            stack::Poll::Stop(too_deep) => return Some(too_deep),
            stack::Poll::Look => {
                if let Some(failure) = engine::take_pending_failure() {
                    return Some(failure);
                }
                if memory::past_ceiling()
                    && let Err(over) = check_memory(&budget)
                {
                    return Some(Dynamic::from(over));
                }
            }
        }
        // Reading the clock costs more than an operation: look every 256
        // operations, few enough that slow ones cannot run far past the limit.
        if operations % 256 != 0 {
            return None;
        }
        let (over, hand_off) = CURRENT.with(|current| {
            let mut call = current.borrow_mut();
            // The top level, run once at start, has no hook limits.
            if !call.running {
                return (false, false);
            }
            let now = Instant::now();
            let started = *call.started.get_or_insert(now);
            let next = *call.next_handoff.get_or_insert(started + INLINE_BUDGET);
            let hand_off = now >= next;
            if hand_off {
                call.next_handoff = Some(now + HANDOFF_RETRY);
            }
            (now.duration_since(started) > hook_timeout, hand_off)
        });
        if hand_off {
            hand_off_worker();
        }
        over.then(|| {
            Dynamic::from(format!(
                "hook ran longer than its wall-clock limit of {} (see --hook-timeout)",
                humantime::format_duration(hook_timeout)
            ))
        })
    });
    engine.register_fn("send", |value: Dynamic| -> NativeResult<()> {
        with_current("send()", |call| call.send(Outgoing::from_value(value)))?
            .map_err(|e| Failure::script(format!("send(): {e}")).into())
    });
    engine.register_fn("send_raw", |value: Dynamic| -> NativeResult<()> {
        with_current("send_raw()", |call| {
            call.reply
                .actions
                .push(Action::SendRaw(Outgoing::from_value(value)));
        })
    });
    engine.register_fn("set_framing", |framing: &str| -> NativeResult<()> {
        with_current("set_framing()", |call| call.reframe(framing))?
            .map_err(|e| Failure::script(format!("set_framing(): {e}")).into())
    });
    // Rhai's own `sleep` would block the worker thread: these only record
    // the pause, for the connection to wait it out afterwards. A float is
    // milliseconds too, as in client scripts.
    engine.register_fn("sleep", |ms: INT| -> NativeResult<()> {
        queue_sleep(Duration::from_millis(ms.max(0) as u64))
    });
    engine.register_fn("sleep", |ms: rhai::FLOAT| -> NativeResult<()> {
        let pause = Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(if ms > 0.0 {
            Duration::MAX
        } else {
            Duration::ZERO
        });
        queue_sleep(pause)
    });
    engine.register_fn("close", || {
        with_current("close()", |call| call.reply.close = true)
    });
    // After the hook's replies: the go-ahead ("220 Ready to start TLS")
    // must reach the peer in the clear before the handshake.
    engine.register_fn("starttls", || -> NativeResult<()> {
        with_current("starttls()", |call| match call.tls {
            Some(_) => Err(Failure::script("starttls(): the connection already speaks TLS").into()),
            None => {
                call.reply.starttls = true;
                Ok(())
            }
        })?
    });
    engine.register_fn("broadcast", |value: Dynamic| -> NativeResult<()> {
        with_current("broadcast()", |call| {
            call.broadcast(message::to_bytes(value))
        })?
        .map_err(|e: String| Failure::script(format!("broadcast(): {e}")).into())
    });
    let roster = room.clone();
    engine.register_fn("peers", move || -> rhai::Array {
        roster.peers().into_iter().map(Dynamic::from).collect()
    });
    register_proxy_natives(&mut engine);
    register_shared_store(&mut engine);
    engine.register_fn("peer", || {
        with_current("peer()", |call| {
            call.peer.as_deref().unwrap_or_default().to_string()
        })
    });
    engine.register_fn("tls_info", || {
        with_current("tls_info()", |call| {
            call.tls
                .as_deref()
                .map_or(Dynamic::UNIT, |map| Dynamic::from_map(map.clone()))
        })
    });
    engine.register_fn("log", move |value: Dynamic| {
        if verbosity >= Verbosity::Normal {
            let who = CURRENT
                .with(|c| {
                    let call = c.borrow();
                    call.peer.clone().filter(|_| call.running)
                })
                .unwrap_or_else(|| "script".into());
            console::err(&format!(
                "[{who}] {}",
                message::escape_controls(&crate::stack::display(&value))
            ));
        }
    });
    EngineParts {
        engine,
        room,
        budget: parts_budget,
    }
}

/// What only a proxy script's hooks do: inject into either direction,
/// delay, reset.
fn register_proxy_natives(engine: &mut Engine) {
    engine.register_fn("to_client", |value: Dynamic| -> NativeResult<()> {
        with_proxy("to_client()", |call| {
            call.reply
                .actions
                .push(Action::ToClient(Outgoing::from_value(value)))
        })
    });
    engine.register_fn("to_server", |value: Dynamic| -> NativeResult<()> {
        with_proxy("to_server()", |call| {
            call.reply
                .actions
                .push(Action::ToServer(Outgoing::from_value(value)))
        })
    });
    // A proxy's pause is the server's `sleep`, by the name the issue and
    // toxiproxy use for it.
    engine.register_fn("delay", |ms: INT| -> NativeResult<()> {
        with_proxy("delay()", |call| {
            call.reply
                .actions
                .push(Action::Sleep(Duration::from_millis(ms.max(0) as u64)))
        })
    });
    engine.register_fn("reset", || -> NativeResult<()> {
        with_proxy("reset()", |call| call.reply.reset = true)
    });
}

fn queue_sleep(pause: Duration) -> NativeResult<()> {
    with_current("sleep()", |call| {
        call.reply.actions.push(Action::Sleep(pause))
    })
}

/// How much a call may grow between two checks of the budget.
const MEMORY_STEP: isize = 64 * 1024;

/// The running call's memory against the budget; on success, the next
/// check waits for another [`MEMORY_STEP`] of growth.
fn check_memory(budget: &Budget) -> Result<(), String> {
    let now = memory::thread_net();
    let (start, kept) = CURRENT.with(|current| {
        let call = current.borrow();
        (call.memory_start, call.kept)
    });
    let grown = usize::try_from(now.wrapping_sub(start)).unwrap_or(0);
    budget.check(kept + grown, kept)?;
    memory::set_ceiling(now.saturating_add(MEMORY_STEP));
    Ok(())
}

/// Called when a hook has held its thread for [`INLINE_BUDGET`]: the
/// tokio worker it runs on hands its queue of other connections to a new
/// thread, and this one goes on with the hook alone. A fast hook (nearly
/// all of them) never gets here and costs nothing; a hook that spins until
/// its wall-clock limit delays the connections that shared its worker by
/// a couple of milliseconds, not by the whole limit.
fn hand_off_worker() {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let on_worker = Handle::try_current()
        .is_ok_and(|runtime| runtime.runtime_flavor() == RuntimeFlavor::MultiThread);
    if on_worker {
        // The new thread must take the worker's queue before this call
        // returns, or the queue comes back here: a pause lets it start.
        tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(1)));
    }
}

/// `shared_*`: state every connection of this server sees.
fn register_shared_store(engine: &mut Engine) {
    let store = Arc::new(SharedStore::default());
    let s = store.clone();
    engine.register_fn("shared_get", move |key: &str| -> Dynamic {
        s.get(key).unwrap_or(Dynamic::UNIT)
    });
    let s = store.clone();
    engine.register_fn(
        "shared_get",
        move |key: &str, default: Dynamic| -> Dynamic { s.get(key).unwrap_or(default) },
    );
    let s = store.clone();
    engine.register_fn(
        "shared_set",
        move |key: &str, value: Dynamic| -> NativeResult<()> { Ok(s.set(key, value.flatten())?) },
    );
    let s = store.clone();
    engine.register_fn(
        "shared_add",
        move |key: &str, by: INT| -> NativeResult<INT> { Ok(s.add(key, by)?) },
    );
    let s = store.clone();
    engine.register_fn(
        "shared_update",
        move |ctx: rhai::NativeCallContext,
              key: &str,
              update: rhai::FnPtr|
              -> NativeResult<Dynamic> {
            s.update(key, |current| {
                update.call_within_context::<Dynamic>(&ctx, (current,))
            })
        },
    );
    let s = store.clone();
    engine.register_fn("shared_remove", move |key: &str| -> Dynamic {
        s.remove(key).unwrap_or(Dynamic::UNIT)
    });
    engine.register_fn("shared_keys", move || -> rhai::Array {
        store.keys().into_iter().map(Dynamic::from).collect()
    });
}

impl From<StoreError> for Box<EvalAltResult> {
    fn from(error: StoreError) -> Self {
        Failure::script(error.to_string()).into()
    }
}

/// One connection's view of the script.
pub(crate) struct ConnectionHooks {
    script: Arc<ServerScript>,
    scope: Scope<'static>,
    peer: Arc<str>,
    /// The action list of the last reply, emptied and reused, so a hook
    /// call allocates no list of its own.
    spare: Vec<Action>,
    /// The last message's string, rewritten in place for the next message
    /// when the script kept no reference to it.
    spare_text: ImmutableString,
    limit: Option<MessageLimit>,
    /// `--max-frame`, which a framing set by the script must respect.
    max_frame: usize,
    /// UDP: the largest datagram a send may make.
    datagram: Option<usize>,
    /// Bytes this connection's variables held when last measured, and
    /// what its calls have grown (or shrunk) by since.
    kept: usize,
    unmeasured: isize,
    /// What a TLS handshake settled, for `tls_info()`; boxed, so a plain
    /// connection pays one pointer for it.
    tls: Option<Box<rhai::Map>>,
}

impl Drop for ConnectionHooks {
    fn drop(&mut self) {
        self.script.budget.leave(self.kept);
    }
}

impl ConnectionHooks {
    /// What `tls_info()` returns in this connection's hooks.
    pub(crate) fn set_tls_info(&mut self, info: rhai::Map) {
        self.tls = Some(Box::new(info));
    }

    /// UDP: every send is one datagram of at most `max` bytes.
    pub(crate) fn in_datagrams(&mut self, max: usize) {
        self.datagram = Some(max);
        self.limit = MessageLimit::within(self.limit, self.datagram);
    }

    /// Hands back a carried-out reply so the next call can reuse its list.
    pub(crate) fn recycle(&mut self, mut reply: Reply) {
        reply.actions.clear();
        if reply.actions.capacity() <= 16 {
            self.spare = reply.actions;
        }
    }

    pub(crate) fn on_connect(&mut self) -> Result<Reply, HookFailure> {
        if !self.script.has_connect {
            return Ok(Reply::default());
        }
        self.call(Hook::Connect, &mut [])
    }

    pub(crate) fn on_message(&mut self, message: &[u8]) -> Result<Reply, HookFailure> {
        if !self.script.has_message {
            return Ok(Reply::default());
        }
        let mut message = message::to_dynamic_reusing(message, &mut self.spare_text);
        self.call(Hook::Message, &mut [&mut message])
    }

    pub(crate) fn on_disconnect(&mut self) -> Result<Reply, HookFailure> {
        if !self.script.has_disconnect {
            return Ok(Reply::default());
        }
        self.call(Hook::Disconnect, &mut [])
    }

    /// A proxy's message from the client, on its way to the upstream.
    pub(crate) fn on_client_message(&mut self, message: &[u8]) -> Result<Reply, HookFailure> {
        let mut message = message::to_dynamic_reusing(message, &mut self.spare_text);
        self.call(Hook::ClientMessage, &mut [&mut message])
    }

    /// A proxy's message from the upstream, on its way to the client.
    pub(crate) fn on_server_message(&mut self, message: &[u8]) -> Result<Reply, HookFailure> {
        let mut message = message::to_dynamic_reusing(message, &mut self.spare_text);
        self.call(Hook::ServerMessage, &mut [&mut message])
    }

    fn call(&mut self, hook: Hook, args: &mut [&mut Dynamic]) -> Result<Reply, HookFailure> {
        let kept = self.estimate();
        let start = memory::thread_net();
        CURRENT.with(|current| {
            let mut call = current.borrow_mut();
            call.running = true;
            if !call
                .peer
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(p, &self.peer))
            {
                call.peer = Some(self.peer.clone());
            }
            std::mem::swap(&mut call.reply.actions, &mut self.spare);
            call.reply.close = false;
            call.reply.starttls = false;
            call.reply.reset = false;
            call.proxy = self.script.proxy;
            call.limit = self.limit;
            call.max_frame = self.max_frame;
            call.datagram = self.datagram;
            call.started = Some(Instant::now());
            call.next_handoff = None;
            call.memory_start = start;
            call.kept = kept;
            call.tls = self.tls.take();
        });
        memory::set_ceiling(start.saturating_add_unsigned(memory::FLOOR.saturating_sub(kept)));
        let result = call_on_this_thread(&self.script, &mut self.scope, hook, args);
        memory::set_ceiling(isize::MAX);
        let (mut reply, limit) = CURRENT.with(|current| {
            let mut call = current.borrow_mut();
            call.running = false;
            self.tls = call.tls.take();
            (std::mem::take(&mut call.reply), call.limit)
        });
        // `set_framing` holds for the calls that follow.
        self.limit = limit;
        self.account_memory(memory::thread_net().wrapping_sub(start));
        let hook = hook.name();
        let context = || format!("in hook `{hook}` for {}", self.peer);
        let error = match result {
            Ok(value) => match reply.push_value(limit, value) {
                Ok(()) => return Ok(reply),
                Err(e) => self.script.script.error_at_fn(
                    hook,
                    format!("the value returned by `{hook}` cannot be sent: {e}"),
                    context(),
                ),
            },
            Err(err) => engine::diagnose(&err, &self.script.script, Some(&context())),
        };
        reply.close = true;
        Err(HookFailure {
            error,
            before: reply,
        })
    }
}

impl ConnectionHooks {
    /// Measures the connection's variables again when its calls have
    /// changed them by more than a little (half of what they held): the
    /// measure costs a walk over them, so it is made rarely, and what the
    /// allocator counted between measures is only an estimate (a reply
    /// allocated in a call is freed after it, elsewhere).
    /// What the variables hold now, as far as is known without measuring:
    /// the last measure plus what calls have allocated since (an
    /// overestimate at worst, by what those calls allocated for replies).
    fn estimate(&self) -> usize {
        self.kept
            .saturating_add(usize::try_from(self.unmeasured).unwrap_or(0))
    }

    fn account_memory(&mut self, grown: isize) {
        self.unmeasured = self.unmeasured.saturating_add(grown);
        let threshold = (self.kept / 2).max(memory::FLOOR);
        if self.unmeasured.unsigned_abs() > threshold {
            let now = memory::scope_footprint(&self.scope);
            self.script.budget.kept(self.kept, now);
            self.kept = now;
            self.unmeasured = 0;
        }
    }
}

/// A hook that failed, with what it had asked for before it failed: those
/// messages are still sent, as a program's are when it crashes after
/// writing them.
#[derive(Debug)]
pub(crate) struct HookFailure {
    pub(crate) error: Error,
    pub(crate) before: Reply,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(source: &str) -> Arc<ServerScript> {
        Arc::new(
            ServerScript::from_source("t.rhai", source, &Limits::default(), Verbosity::Quiet)
                .unwrap(),
        )
    }

    fn script_with_max_ops(source: &str, max_operations: u64) -> Arc<ServerScript> {
        let limits = Limits {
            max_operations,
            ..Limits::default()
        };
        Arc::new(ServerScript::from_source("t.rhai", source, &limits, Verbosity::Quiet).unwrap())
    }

    fn sends(reply: &Reply) -> Vec<&[u8]> {
        reply
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(b) => Some(b.as_bytes()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn each_connection_has_its_own_variables() {
        let script = script("let n = 0; fn on_message(m) { n += 1; `${n} ${m}` }");
        let mut a = script.connection("127.0.0.1:1".parse().unwrap(), &Framing::Line, 1 << 20);
        let mut b = script.connection("127.0.0.1:2".parse().unwrap(), &Framing::Line, 1 << 20);
        assert_eq!(sends(&a.on_message(b"x").unwrap()), vec![b"1 x"]);
        assert_eq!(sends(&a.on_message(b"y").unwrap()), vec![b"2 y"]);
        assert_eq!(sends(&b.on_message(b"z").unwrap()), vec![b"1 z"]);
    }

    #[test]
    fn a_message_kept_in_a_variable_survives_the_next_one() {
        // Message strings are reused between calls: never one a script holds.
        let script =
            script(r#"let last = ""; fn on_message(m) { let prev = last; last = m; prev }"#);
        let mut c = script.connection("127.0.0.1:1".parse().unwrap(), &Framing::Line, 1 << 20);
        let first: &[u8] = b"the first message, long enough to live on the heap";
        c.on_message(first).unwrap();
        let reply = c
            .on_message(b"the second message, just as long as the first")
            .unwrap();
        assert_eq!(sends(&reply), vec![first]);
    }

    #[test]
    fn sends_sleeps_and_return_value_keep_their_order() {
        let script = script(r#"fn on_message(m) { send("a"); sleep(5); close(); ["b", (), "c"] }"#);
        let reply = script
            .connection("127.0.0.1:1".parse().unwrap(), &Framing::Line, 1 << 20)
            .on_message(b"x")
            .unwrap();
        assert_eq!(
            reply.actions,
            vec![
                Action::Send("a".into()),
                Action::Sleep(Duration::from_millis(5)),
                Action::Send("b".into()),
                Action::Send("c".into()),
            ]
        );
        assert!(reply.close);
    }

    #[test]
    fn a_runaway_hook_is_stopped_with_its_name() {
        let script = script_with_max_ops("fn on_message(m) { loop {} }", 10_000);
        let err = script
            .connection("127.0.0.1:1".parse().unwrap(), &Framing::Line, 1 << 20)
            .on_message(b"x")
            .unwrap_err()
            .error;
        let text = err.render();
        assert!(text.contains("operation limit"), "{text}");
        assert!(text.contains("`on_message`"), "{text}");
    }

    #[test]
    fn the_operation_limit_counts_each_call_afresh() {
        let script = script_with_max_ops(
            "fn on_message(m) { let n = 0; for i in 0..300 { n += i } n }",
            2_000,
        );
        let mut c = script.connection("127.0.0.1:1".parse().unwrap(), &Framing::Line, 1 << 20);
        for _ in 0..20 {
            assert_eq!(sends(&c.on_message(b"x").unwrap()), vec![b"44850"]);
        }
    }

    #[test]
    fn scripts_on_one_thread_keep_to_their_own_functions() {
        let a = script(r#"fn on_message(m) { helper() } fn helper() { "a" }"#);
        let b = script(r#"fn on_message(m) { helper() } fn helper() { "b" }"#);
        let mut ca = a.connection("127.0.0.1:1".parse().unwrap(), &Framing::Line, 1 << 20);
        let mut cb = b.connection("127.0.0.1:2".parse().unwrap(), &Framing::Line, 1 << 20);
        for _ in 0..3 {
            assert_eq!(sends(&ca.on_message(b"x").unwrap()), vec![b"a"]);
            assert_eq!(sends(&cb.on_message(b"x").unwrap()), vec![b"b"]);
        }
    }

    #[test]
    fn a_failed_call_leaves_the_next_one_unharmed() {
        let script = script(
            r#"let n = 0; fn on_message(m) { n += 1; if m == "bad" { throw "no" } `${n}` }"#,
        );
        let mut c = script.connection("127.0.0.1:1".parse().unwrap(), &Framing::Line, 1 << 20);
        assert_eq!(sends(&c.on_message(b"ok").unwrap()), vec![b"1"]);
        let text = c.on_message(b"bad").unwrap_err().error.render();
        assert!(text.contains("t.rhai:1:"), "{text}");
        assert_eq!(sends(&c.on_message(b"ok").unwrap()), vec![b"3"]);
    }

    #[test]
    fn functions_called_by_names_from_peers_do_not_grow_the_cache_without_end() {
        let script =
            script(r#"fn on_message(m) { let r = "none"; try { r = call(Fn(m)); } catch {} r }"#);
        let mut c = script.connection("127.0.0.1:1".parse().unwrap(), &Framing::Line, 1 << 20);
        for i in 0..3 * MAX_CACHED_RESOLUTIONS {
            let name = format!("f{i}");
            assert_eq!(
                sends(&c.on_message(name.as_bytes()).unwrap()),
                vec![b"none"]
            );
        }
        let cached = RUNTIME.with(|runtime| {
            let mut runtime = runtime.borrow_mut();
            let runtime = runtime.as_mut().unwrap();
            runtime.caches.fn_resolution_cache_mut().dict.len()
        });
        assert!(
            cached <= MAX_CACHED_RESOLUTIONS,
            "{cached} resolutions cached"
        );
    }

    #[test]
    fn send_outside_a_hook_is_an_error() {
        let result =
            ServerScript::from_source("t.rhai", "send(1);", &Limits::default(), Verbosity::Quiet);
        let text = result.err().unwrap().render();
        assert!(text.contains("only be used inside a hook"), "{text}");
        assert!(text.contains("t.rhai:1:1"), "{text}");
    }
}
