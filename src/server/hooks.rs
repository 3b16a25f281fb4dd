//! Server scripts: the top level runs once, then every connection gets its
//! own copy of the top-level variables and its hooks are called with them.
//!
//! Hooks never block. `send`, `sleep` and `close` inside a hook only record
//! what to do; the connection's task carries it out afterwards, so a
//! `sleep(1000)` delays that connection's replies and nobody else's.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rhai::{Caches, Dynamic, Engine, EvalAltResult, EvalContext, GlobalRuntimeState, INT};
use rhai::{ImmutableString, Scope};

use crate::engine::{self, Failure, Limits, NativeResult, Params, Script};
use crate::error::Error;
use crate::message::{self, Outgoing};
use crate::server::room::{Room, SharedStore};
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
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Send(Outgoing),
    Sleep(Duration),
    /// To every other connection of the server.
    Broadcast(Bytes),
}

impl Reply {
    /// The hook's return value: a string or blob is one message, an array
    /// several, `()` none; other values are sent as their printed form.
    fn push_value(&mut self, value: Dynamic) {
        if value.is_unit() {
            return;
        }
        if value.is_array() {
            for item in value.into_array().unwrap_or_default() {
                if !item.is_unit() {
                    self.actions.push(Action::Send(Outgoing::from_value(item)));
                }
            }
            return;
        }
        self.actions.push(Action::Send(Outgoing::from_value(value)));
    }
}

/// The hook call running on this thread. Hooks run to completion without
/// yielding, so a thread runs at most one at a time.
struct HookCall {
    peer: Arc<str>,
    reply: Reply,
    /// When the wall-clock limit runs out, set at the first clock check:
    /// most hooks finish long before it and never read the clock at all.
    deadline: Option<Instant>,
}

thread_local! {
    static CURRENT: RefCell<Option<HookCall>> = const { RefCell::new(None) };
    /// Rhai's runtime state for the hooks run on this thread, kept from one
    /// call to the next: `Engine::call_fn` builds it afresh for every call
    /// and resolves every function the hook calls all over again.
    static RUNTIME: RefCell<Option<HookRuntime>> = const { RefCell::new(None) };
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
        hook: &str,
        args: &mut [&mut Dynamic],
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        // Limits count per hook call.
        self.global.num_operations = Default::default();
        let result = EvalContext::new(
            &self.script.engine,
            &mut self.global,
            &mut self.caches,
            scope,
            None,
        )
        .call_fn_raw(hook, false, false, args);
        if self.caches.fn_resolution_caches_len() > 0
            && self.caches.fn_resolution_cache_mut().dict.len() > MAX_CACHED_RESOLUTIONS
        {
            self.caches = Caches::new();
        }
        // What `call_fn` does with these, too.
        result.or_else(|err| match *err {
            EvalAltResult::Exit(value, _) => Ok(value),
            EvalAltResult::ErrorInFunctionCall(name, _, inner, _) if name == hook => Err(inner),
            _ => Err(err),
        })
    }
}

/// Calls `hook` of `script` on the runtime state this thread keeps for it.
fn call_on_this_thread(
    script: &Arc<ServerScript>,
    scope: &mut Scope<'static>,
    hook: &str,
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
    CURRENT.with(|current| match current.borrow_mut().as_mut() {
        Some(call) => Ok(f(call)),
        None => Err(Failure::script(format!(
            "{what} can only be used inside a hook (on_connect, on_message, on_disconnect)"
        ))
        .into()),
    })
}

/// A compiled server script whose top level has run.
pub(crate) struct ServerScript {
    engine: Engine,
    script: Script,
    /// The scope the top level ran in: each connection starts from a copy.
    scope: Scope<'static>,
    has_connect: bool,
    has_message: bool,
    has_disconnect: bool,
    /// Who is connected, when the script broadcasts or lists peers.
    room: Option<Arc<Room>>,
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
        let room = Arc::new(Room::default());
        let engine = server_engine(
            limits,
            hook_timeout,
            params,
            verbosity,
            path.parent(),
            &room,
        );
        let script = engine::compile(&engine, path)?;
        Self::start(engine, script, room)
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
        let room = Arc::new(Room::default());
        let engine = server_engine(
            limits,
            DEFAULT_HOOK_TIMEOUT,
            Params::default(),
            verbosity,
            None,
            &room,
        );
        let script = engine::compile_source(&engine, name.into(), source.into())?;
        Self::start(engine, script, room)
    }

    fn start(mut engine: Engine, script: Script, room: Arc<Room>) -> Result<Self, Error> {
        share_top_level_imports(&mut engine, &script)?;
        // Keeping a roster costs every connection a channel: only when used.
        let room = calls_any(&script, &["broadcast", "peers"]).then_some(room);
        let mut scope = Scope::new();
        engine
            .run_ast_with_scope(&mut scope, &script.ast)
            .map_err(|err| engine::diagnose(&err, &script, Some("in the script's top level")))?;
        Ok(ServerScript {
            has_connect: script.has_fn("on_connect", 0),
            has_message: script.has_fn("on_message", 1),
            has_disconnect: script.has_fn("on_disconnect", 0),
            engine,
            script,
            scope,
            room,
        })
    }

    /// The roster connections join, if the script needs one.
    pub(crate) fn room(&self) -> Option<&Arc<Room>> {
        self.room.as_ref()
    }

    /// The script's `const FRAMING`, if it declares one.
    pub(crate) fn declared_framing(&self) -> Result<Option<crate::framing::Framing>, Error> {
        self.script.declared_framing()
    }

    /// The hooks of one new connection, with its own copy of the variables.
    pub(crate) fn connection(self: &Arc<Self>, peer: SocketAddr) -> ConnectionHooks {
        ConnectionHooks {
            script: self.clone(),
            scope: self.scope.clone(),
            peer: peer.to_string().into(),
            spare: Vec::new(),
            spare_text: ImmutableString::new(),
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

/// Whether the script calls any of `names` anywhere, hooks included.
fn calls_any(script: &Script, names: &[&str]) -> bool {
    use rhai::{ASTNode, Expr, Stmt};
    let mut found = false;
    script.ast.walk(&mut |path: &[ASTNode]| {
        let name = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(call, _))) => Some(&call.name),
            Some(ASTNode::Stmt(Stmt::FnCall(call, _))) => Some(&call.name),
            _ => None,
        };
        found |= name.is_some_and(|n| names.contains(&n.as_str()));
        !found
    });
    found
}

fn server_engine(
    limits: &Limits,
    hook_timeout: Duration,
    params: Params,
    verbosity: Verbosity,
    script_dir: Option<&Path>,
    room: &Arc<Room>,
) -> Engine {
    let mut engine = engine::new_engine(limits, params, script_dir);
    engine.on_progress(move |operations| {
        if let Some(too_deep) = crate::stack::check() {
            return Some(too_deep);
        }
        // Reading the clock costs more than an operation: look every 1024
        // operations, starting the limit at the first look (the operations
        // before it take microseconds).
        if operations % 1024 != 0 {
            return None;
        }
        CURRENT.with(|current| {
            let mut current = current.borrow_mut();
            let call = current.as_mut()?;
            let now = Instant::now();
            let deadline = *call.deadline.get_or_insert(now + hook_timeout);
            (now > deadline).then(|| {
                Dynamic::from(format!(
                    "hook ran longer than its wall-clock limit of {} (see --hook-timeout)",
                    humantime::format_duration(hook_timeout)
                ))
            })
        })
    });
    engine.register_fn("send", |value: Dynamic| {
        with_current("send()", |call| {
            call.reply
                .actions
                .push(Action::Send(Outgoing::from_value(value)));
        })
    });
    engine.register_fn("sleep", |ms: INT| {
        with_current("sleep()", |call| {
            let pause = Duration::from_millis(ms.max(0) as u64);
            call.reply.actions.push(Action::Sleep(pause));
        })
    });
    engine.register_fn("close", || {
        with_current("close()", |call| call.reply.close = true)
    });
    engine.register_fn("broadcast", |value: Dynamic| {
        with_current("broadcast()", |call| {
            let message = message::to_bytes(value);
            call.reply.actions.push(Action::Broadcast(message));
        })
    });
    let roster = room.clone();
    engine.register_fn("peers", move || -> rhai::Array {
        roster.peers().into_iter().map(Dynamic::from).collect()
    });
    register_shared_store(&mut engine);
    engine.register_fn("peer", || {
        with_current("peer()", |call| call.peer.to_string())
    });
    engine.register_fn("log", move |value: Dynamic| {
        if verbosity >= Verbosity::Normal {
            let who = CURRENT
                .with(|c| c.borrow().as_ref().map(|call| call.peer.to_string()))
                .unwrap_or_else(|| "script".into());
            anstream::eprintln!("[{who}] {}", crate::stack::display(&value));
        }
    });
    engine
}

thread_local! {
    /// Set while a `shared_update` closure runs: the store's lock is held,
    /// and taking it again from the same thread would deadlock.
    static UPDATING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn store_free() -> NativeResult<()> {
    if UPDATING.with(|u| u.get()) {
        return Err(Failure::script(
            "the shared store cannot be used inside a shared_update() function: use its argument",
        )
        .into());
    }
    Ok(())
}

/// `shared_*`: state every connection of this server sees.
fn register_shared_store(engine: &mut Engine) {
    let store = Arc::new(SharedStore::default());
    let s = store.clone();
    engine.register_fn("shared_get", move |key: &str| -> NativeResult<Dynamic> {
        store_free()?;
        Ok(s.get(key).unwrap_or(Dynamic::UNIT))
    });
    let s = store.clone();
    engine.register_fn(
        "shared_get",
        move |key: &str, default: Dynamic| -> NativeResult<Dynamic> {
            store_free()?;
            Ok(s.get(key).unwrap_or(default))
        },
    );
    let s = store.clone();
    engine.register_fn("shared_set", move |key: &str, value: Dynamic| {
        store_free()?;
        s.set(key, value.flatten());
        Ok::<_, Box<rhai::EvalAltResult>>(())
    });
    let s = store.clone();
    engine.register_fn(
        "shared_add",
        move |key: &str, by: INT| -> NativeResult<INT> {
            store_free()?;
            let mut values = s.lock();
            let current = match values.get(key) {
                None => 0,
                Some(value) => value.as_int().map_err(|kind| {
                    Failure::script(format!(
                        "shared_add: `{key}` holds a {kind}, not an integer"
                    ))
                })?,
            };
            let sum = current
                .checked_add(by)
                .ok_or_else(|| Failure::script("shared_add overflowed"))?;
            values.insert(key.into(), Dynamic::from(sum));
            Ok(sum)
        },
    );
    let s = store.clone();
    engine.register_fn(
        "shared_update",
        move |ctx: rhai::NativeCallContext,
              key: &str,
              update: rhai::FnPtr|
              -> NativeResult<Dynamic> {
            store_free()?;
            let mut values = s.lock();
            let current = values.get(key).cloned().unwrap_or(Dynamic::UNIT);
            UPDATING.with(|u| u.set(true));
            let updated = update.call_within_context::<Dynamic>(&ctx, (current,));
            UPDATING.with(|u| u.set(false));
            let updated = updated?.flatten();
            values.insert(key.into(), updated.clone());
            Ok(updated)
        },
    );
    let s = store.clone();
    engine.register_fn("shared_remove", move |key: &str| -> NativeResult<Dynamic> {
        store_free()?;
        Ok(s.remove(key).unwrap_or(Dynamic::UNIT))
    });
    engine.register_fn("shared_keys", move || -> NativeResult<rhai::Array> {
        store_free()?;
        Ok(store.keys().into_iter().map(Dynamic::from).collect())
    });
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
}

impl ConnectionHooks {
    pub(crate) fn peer(&self) -> &str {
        &self.peer
    }

    /// Hands back a carried-out reply so the next call can reuse its list.
    pub(crate) fn recycle(&mut self, mut reply: Reply) {
        reply.actions.clear();
        if reply.actions.capacity() <= 16 {
            self.spare = reply.actions;
        }
    }

    pub(crate) fn on_connect(&mut self) -> Result<Reply, Error> {
        if !self.script.has_connect {
            return Ok(Reply::default());
        }
        self.call("on_connect", &mut [])
    }

    pub(crate) fn on_message(&mut self, message: &[u8]) -> Result<Reply, Error> {
        if !self.script.has_message {
            return Ok(Reply::default());
        }
        let mut message = message::to_dynamic_reusing(message, &mut self.spare_text);
        self.call("on_message", &mut [&mut message])
    }

    pub(crate) fn on_disconnect(&mut self) -> Result<Reply, Error> {
        if !self.script.has_disconnect {
            return Ok(Reply::default());
        }
        self.call("on_disconnect", &mut [])
    }

    fn call(&mut self, hook: &str, args: &mut [&mut Dynamic]) -> Result<Reply, Error> {
        CURRENT.with(|current| {
            *current.borrow_mut() = Some(HookCall {
                peer: self.peer.clone(),
                reply: Reply {
                    actions: std::mem::take(&mut self.spare),
                    close: false,
                },
                deadline: None,
            });
        });
        let result = call_on_this_thread(&self.script, &mut self.scope, hook, args);
        let call = CURRENT.with(|current| current.borrow_mut().take());
        let mut reply = call.map(|c| c.reply).unwrap_or_default();
        match result {
            Ok(value) => {
                reply.push_value(value);
                Ok(reply)
            }
            Err(err) => {
                let context = format!("in hook `{hook}` for {}", self.peer);
                Err(engine::diagnose(&err, &self.script.script, Some(&context)))
            }
        }
    }
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
        let mut a = script.connection("127.0.0.1:1".parse().unwrap());
        let mut b = script.connection("127.0.0.1:2".parse().unwrap());
        assert_eq!(sends(&a.on_message(b"x").unwrap()), vec![b"1 x"]);
        assert_eq!(sends(&a.on_message(b"y").unwrap()), vec![b"2 y"]);
        assert_eq!(sends(&b.on_message(b"z").unwrap()), vec![b"1 z"]);
    }

    #[test]
    fn a_message_kept_in_a_variable_survives_the_next_one() {
        // Message strings are reused between calls: never one a script holds.
        let script =
            script(r#"let last = ""; fn on_message(m) { let prev = last; last = m; prev }"#);
        let mut c = script.connection("127.0.0.1:1".parse().unwrap());
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
            .connection("127.0.0.1:1".parse().unwrap())
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
            .connection("127.0.0.1:1".parse().unwrap())
            .on_message(b"x")
            .unwrap_err();
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
        let mut c = script.connection("127.0.0.1:1".parse().unwrap());
        for _ in 0..20 {
            assert_eq!(sends(&c.on_message(b"x").unwrap()), vec![b"44850"]);
        }
    }

    #[test]
    fn scripts_on_one_thread_keep_to_their_own_functions() {
        let a = script(r#"fn on_message(m) { helper() } fn helper() { "a" }"#);
        let b = script(r#"fn on_message(m) { helper() } fn helper() { "b" }"#);
        let mut ca = a.connection("127.0.0.1:1".parse().unwrap());
        let mut cb = b.connection("127.0.0.1:2".parse().unwrap());
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
        let mut c = script.connection("127.0.0.1:1".parse().unwrap());
        assert_eq!(sends(&c.on_message(b"ok").unwrap()), vec![b"1"]);
        let text = c.on_message(b"bad").unwrap_err().render();
        assert!(text.contains("t.rhai:1:"), "{text}");
        assert_eq!(sends(&c.on_message(b"ok").unwrap()), vec![b"3"]);
    }

    #[test]
    fn functions_called_by_names_from_peers_do_not_grow_the_cache_without_end() {
        let script =
            script(r#"fn on_message(m) { let r = "none"; try { r = call(Fn(m)); } catch {} r }"#);
        let mut c = script.connection("127.0.0.1:1".parse().unwrap());
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
