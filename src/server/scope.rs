//! What each connection gets of a server script's top-level variables.
//!
//! The top level runs once; every connection then behaves as if it had its
//! own copy of the variables it left. Copying them all for every connection
//! made a 100,000-item top-level array cost 1.7 MiB per connection (3.3 GiB
//! for 2,000 idle ones), and a new client waited for everyone else's copy
//! (7 s).
//! So the variables are sorted once, when the server starts, by reading
//! what the hooks do with each:
//!
//! - **Unused** by every hook: left out; no connection can see it anyway.
//! - **Small** (under [`BIG`] bytes to copy): copied for each connection,
//!   as before. A counter, a name, a short list.
//! - **Shared**: big, and every hook only reads it (`t[i]`, `t.len()`,
//!   `for x in t`, `let y = t`, `f(t)` for a script function `f`, ...).
//!   It lives once per worker thread that reads it, never per connection.
//! - **Copied on first use**: big, and some hook may change it. A connection
//!   gets its own copy the first time one of its hooks uses it, so idle
//!   connections cost nothing.
//!
//! A connection's scope holds an [`Unset`] marker for a shared or
//! copied-on-first-use variable, and Rhai's variable resolver fills it in:
//! shared ones with this thread's copy (held as a Rhai shared value, so
//! handing it out costs a reference count), the others by writing the
//! connection's own copy into the connection's scope. The scope is cloned
//! per connection exactly as before; only the markers are cheaper to clone.
//!
//! Why one copy per thread and not one for the whole server: Rhai locks a
//! shared value for writing on every read of a variable that holds it, and
//! under contention it sleeps 10 ms between tries, then fails with a data
//! race. Two worker threads reading one table would stall each other. A
//! thread runs one hook at a time, so its own copy is never contended.
//!
//! A shared copy is itself a constant, so a change the reading below missed
//! fails loudly (Rhai's "constant" errors) instead of showing in another
//! connection. Only its top level is constant: its items are not, so that
//! the copies scripts take of them (`for x in t`, `let row = t[0]`) can be
//! changed as before. Changes to items are found by the reading below.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;

use crate::memory;
use rhai::{AST, ASTFlags, ASTNode, Array, Dynamic, Engine, EvalContext, Expr, FnCallExpr, FnPtr};
use rhai::{ImmutableString, Map, Scope, Stmt};

/// A value that costs more than this many bytes to copy is shared or copied
/// on first use; smaller ones are copied for every connection, as before.
const BIG: usize = 4 * 1024;

/// The hooks, by name and number of parameters: the functions called with
/// a connection's variables (a server's, then a proxy's).
const HOOKS: [(&str, usize); 5] = [
    ("on_connect", 0),
    ("on_message", 1),
    ("on_disconnect", 0),
    ("on_client_message", 1),
    ("on_server_message", 1),
];

/// Native methods that change neither their object nor anything they are
/// given, and that Rhai lets a constant array, map and blob call (checked
/// by a test): `t.len()` leaves `t` shareable. Not `get` nor `extract`:
/// Rhai does not mark them pure for arrays, so a shared array would refuse
/// them.
const PURE_METHODS: &[&str] = &[
    "all",
    "as_string",
    "contains",
    "filter",
    "find",
    "find_map",
    "index_of",
    "is_empty",
    "keys",
    "len",
    "map",
    "reduce",
    "reduce_rev",
    "some",
    "to_array",
    "to_debug",
    "to_json",
    "to_string",
    "values",
];

/// Native functions that take their arguments by value and keep nothing of
/// them: `send(t)` reads `t`.
const CONSUMERS: &[&str] = &["send", "broadcast", "log"];

/// Where a shared or copied-on-first-use variable belongs in a connection's
/// scope until the resolver fills it in. Scripts cannot make one.
#[derive(Debug, Clone)]
struct Unset;

/// How a top-level variable reaches each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No hook uses it: left out.
    Unused,
    /// Copied for each connection when it connects.
    Small,
    /// One read-only copy per worker thread.
    Shared,
    /// Copied for a connection when one of its hooks first uses it.
    CopiedOnFirstUse,
}

/// Sorts the variables the top level left in `top_level` and returns the
/// scope each connection starts from (cloned per connection). When any
/// variable is shared or copied on first use, `engine` gets the variable
/// resolver that fills them in.
pub(crate) fn for_connections(
    engine: &mut Engine,
    ast: &AST,
    top_level: &Scope<'static>,
) -> Scope<'static> {
    #[cfg(test)]
    if !tests::SHARING.get() {
        return top_level.clone();
    }
    let mut scope = Scope::new();
    let mut tables = Tables::default();
    for (name, kind, value) in plan(ast, top_level) {
        match kind {
            Kind::Unused => {}
            Kind::Small => {
                scope.push_dynamic(name, own_copy(value));
            }
            Kind::Shared | Kind::CopiedOnFirstUse => {
                scope.push_dynamic(name.clone(), Dynamic::from(Unset));
                tables.names.push(name);
                tables.values.push(own_copy(value));
                tables.shared.push(kind == Kind::Shared);
            }
        }
    }
    if !tables.names.is_empty() {
        let tables = Arc::new(tables);
        // "Volatile, not deprecated", says Rhai; the version is pinned.
        #[allow(deprecated)]
        engine.on_var(move |name, index, context| Tables::resolve(&tables, name, index, context));
    }
    scope
}

/// Each visible top-level variable (the last of any that share a name),
/// in order, with how it reaches connections.
fn plan<'s>(ast: &AST, top_level: &'s Scope<'static>) -> Vec<(ImmutableString, Kind, &'s Dynamic)> {
    let uses = Uses::of_hooks(ast);
    // Newest first: the first of a name is the one the hooks see.
    let mut seen = HashSet::new();
    let mut visible: Vec<_> = top_level
        .iter_raw()
        .filter(|(name, ..)| seen.insert(*name))
        .collect();
    visible.reverse();
    visible
        .into_iter()
        .map(|(name, _, value)| {
            let kind = if !uses.sees(name) {
                Kind::Unused
            } else if copy_size(value, BIG) < BIG {
                Kind::Small
            } else if uses.may_change(name) {
                Kind::CopiedOnFirstUse
            } else {
                Kind::Shared
            };
            (name.into(), kind, value)
        })
        .collect()
}

/// Roughly what copying `value` allocates, counted up to `limit`. Strings
/// count nothing: Rhai's are reference counted.
fn copy_size(value: &Dynamic, limit: usize) -> usize {
    // Already shared with a closure: a copy shares it too.
    if value.is_shared() {
        return 0;
    }
    let mut size = 0;
    if let Ok(array) = value.as_array_ref() {
        size += array.len() * size_of::<Dynamic>();
        for item in array.iter() {
            if size >= limit {
                break;
            }
            size += copy_size(item, limit - size);
        }
    } else if let Ok(map) = value.as_map_ref() {
        // A key, a value and a share of a B-tree node each.
        size += map.len() * (size_of::<Dynamic>() + 2 * size_of::<ImmutableString>() + 16);
        for item in map.values() {
            if size >= limit {
                break;
            }
            size += copy_size(item, limit - size);
        }
    } else if let Ok(blob) = value.as_blob_ref() {
        size += blob.len();
    } else if let Some(function) = value.read_lock::<FnPtr>() {
        for item in function.curry() {
            if size >= limit {
                break;
            }
            size += copy_size(item, limit - size);
        }
    }
    size
}

/// The big variables of one script: their top-level values, and each worker
/// thread's copies of the shared ones.
#[derive(Default)]
struct Tables {
    names: Vec<ImmutableString>,
    /// As the top level left them.
    values: Vec<Dynamic>,
    /// Shared, or else copied on first use.
    shared: Vec<bool>,
}

/// This thread's read-only copies of one script's shared variables, made
/// when first read here.
struct ThreadCopies {
    /// Held, not just compared by address, so another script's tables can
    /// never be mistaken for these.
    tables: Arc<Tables>,
    copies: Vec<Option<Dynamic>>,
}

thread_local! {
    static THREAD_COPIES: RefCell<Option<ThreadCopies>> = const { RefCell::new(None) };
}

impl Tables {
    /// Rhai's variable resolver: asked first, for every variable read.
    fn resolve(
        tables: &Arc<Tables>,
        name: &str,
        index: usize,
        mut context: EvalContext,
    ) -> Result<Option<Dynamic>, Box<rhai::EvalAltResult>> {
        // A variable declared in the function itself: Rhai knows where.
        if index > 0 {
            return Ok(None);
        }
        let Some(i) = tables.names.iter().position(|n| n == name) else {
            return Ok(None);
        };
        // Only a connection's own variable, never a local of the same name
        // (found first), nor a name in a function called without them.
        if !context.scope().get(name).is_some_and(Dynamic::is::<Unset>) {
            return Ok(None);
        }
        if tables.shared[i] {
            return Ok(Some(Tables::thread_copy(tables, i)));
        }
        // The connection's own copy, in place of the marker; Rhai then finds
        // it in the scope like any variable.
        if let Some(slot) = context.scope_mut().get_mut(name) {
            *slot = own_copy(&tables.values[i]);
        }
        Ok(None)
    }

    fn thread_copy(tables: &Arc<Tables>, i: usize) -> Dynamic {
        THREAD_COPIES.with(|slot| {
            let mut slot = slot.borrow_mut();
            if slot
                .as_ref()
                .is_none_or(|c| !Arc::ptr_eq(&c.tables, tables))
            {
                *slot = Some(ThreadCopies {
                    tables: tables.clone(),
                    copies: vec![None; tables.values.len()],
                });
            }
            let copies = &mut slot.as_mut().expect("just set").copies;
            copies[i]
                .get_or_insert_with(|| memory::uncounted(|| read_only_copy(&tables.values[i])))
                .clone()
        })
    }
}

/// A copy as each connection's used to be: `Dynamic::clone` makes every
/// part of it writable, and `Scope::clone` then marked it all constant again
/// when the original was a `const`.
fn own_copy(value: &Dynamic) -> Dynamic {
    if value.is_read_only() {
        value.clone().into_read_only()
    } else {
        value.clone()
    }
}

/// A copy whose top level is constant (its items are not), as a Rhai shared
/// value so that handing it out costs a reference count. A `const` stays
/// constant throughout, as each connection's copy of it always was.
fn read_only_copy(value: &Dynamic) -> Dynamic {
    let mut copy = if value.is_read_only() {
        value.clone().into_read_only()
    } else if let Ok(array) = value.as_array_ref() {
        let items = array.clone();
        let mut copy = Dynamic::from_array(Array::new()).into_read_only();
        *copy.write_lock::<Array>().expect("an array") = items;
        copy
    } else if let Ok(map) = value.as_map_ref() {
        let entries = map.clone();
        let mut copy = Dynamic::from_map(Map::new()).into_read_only();
        *copy.write_lock::<Map>().expect("a map") = entries;
        copy
    } else {
        value.clone().into_read_only()
    };
    copy.set_tag(value.tag());
    copy.into_shared()
}

/// What the hooks do with top-level variables, read from their code.
#[derive(Debug, Default)]
struct Uses {
    /// Read, in ways that copy or leave the value as it is.
    read: HashSet<ImmutableString>,
    /// Possibly changed or kept as it is (so not shareable).
    changed: HashSet<ImmutableString>,
    /// A hook runs code this reading does not follow with its variables
    /// (`f!()`, an unknown kind of statement): assume it uses and may change
    /// every variable.
    opaque: bool,
    /// `is_def_var` asks for variables by name: keep every name.
    asks_by_name: bool,
}

/// How an expression's value is used, for a variable standing alone there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Copied on the spot and never kept as it is (`let y = t`, `t == u`,
    /// `for x in t`, `${t}`, a script function's argument, a hook's reply).
    Copied,
    /// Passed by reference, or possibly kept as it is (`a.push(t)`, `[t]`,
    /// `push(t, x)`, `throw t`): a shared copy there would be changed or
    /// escape its thread.
    Kept,
}

impl Uses {
    fn of_hooks(ast: &AST) -> Uses {
        let script_fns: HashSet<(String, usize)> = ast
            .iter_functions()
            .map(|f| (f.name.to_string(), f.params.len()))
            .collect();
        let mut reader = Reader {
            uses: Uses::default(),
            script_fns,
        };
        for (hook, params) in HOOKS {
            // (`clone_functions_only_filtered` keeps every function when the
            // AST has no other: filter afterwards.)
            let mut body = ast.clone_functions_only();
            body.retain_functions(|_, _, name, arity| name == hook && arity == params);
            let mut statements = Vec::new();
            body.walk(&mut |path: &[ASTNode]| {
                if let [ASTNode::Stmt(statement)] = path {
                    statements.push((*statement).clone());
                }
                true
            });
            reader.hook_body(&statements);
        }
        reader.uses
    }

    fn sees(&self, name: &str) -> bool {
        self.opaque || self.asks_by_name || self.read.contains(name) || self.may_change(name)
    }

    fn may_change(&self, name: &str) -> bool {
        self.opaque || self.changed.contains(name)
    }
}

/// Reads hook bodies statement by statement into [`Uses`].
struct Reader {
    uses: Uses,
    /// Script functions by name and arity: they get copies of arguments.
    script_fns: HashSet<(String, usize)>,
}

impl Reader {
    fn hook_body(&mut self, statements: &[Stmt]) {
        for (i, statement) in statements.iter().enumerate() {
            // The last expression is the reply, converted straight away.
            self.statement(statement, i + 1 == statements.len());
        }
    }

    fn block(&mut self, statements: &[Stmt]) {
        for statement in statements {
            self.statement(statement, false);
        }
    }

    fn statement(&mut self, statement: &Stmt, reply: bool) {
        match statement {
            Stmt::Noop(..) | Stmt::Export(..) => {}
            Stmt::If(flow, ..) | Stmt::While(flow, ..) | Stmt::Do(flow, ..) => {
                self.expr(&flow.expr, Use::Copied);
                self.block(flow.body.statements());
                self.block(flow.branch.statements());
            }
            Stmt::Switch(switch, ..) => {
                let (value, cases) = &**switch;
                self.expr(value, Use::Copied);
                for case in &cases.expressions {
                    self.expr(&case.lhs, Use::Copied);
                    self.expr(&case.rhs, Use::Kept);
                }
            }
            Stmt::For(for_loop, ..) => {
                let (_, _, flow) = &**for_loop;
                self.expr(&flow.expr, Use::Copied);
                self.block(flow.body.statements());
            }
            // `let` copies, and its copy is the new variable's own.
            Stmt::Var(var, ..) => self.expr(&var.1, Use::Copied),
            Stmt::Assignment(assignment) => {
                let (op, target) = &**assignment;
                // `=` copies and makes the copy the target's own; `+=` and
                // the like hand the value to an operator as it is.
                let value_use = if op.is_op_assignment() {
                    Use::Kept
                } else {
                    Use::Copied
                };
                self.expr(&target.rhs, value_use);
                self.assigned(&target.lhs);
            }
            Stmt::FnCall(call, ..) => self.call(call),
            Stmt::Block(block) => self.block(block.statements()),
            // Its expression declares the catch variable: nothing to read.
            Stmt::TryCatch(flow, ..) => {
                self.block(flow.body.statements());
                self.block(flow.branch.statements());
            }
            Stmt::Expr(expr) => self.expr(expr, if reply { Use::Copied } else { Use::Kept }),
            Stmt::BreakLoop(value, ..) => {
                if let Some(value) = value {
                    self.expr(value, Use::Kept);
                }
            }
            // `return x` is the reply; `throw x` (flagged BREAK) may be caught
            // and kept.
            Stmt::Return(value, flags, ..) => {
                if let Some(value) = value {
                    let thrown = flags.contains(ASTFlags::BREAK);
                    self.expr(value, if thrown { Use::Kept } else { Use::Copied });
                }
            }
            Stmt::Import(import, ..) => self.expr(&import.0, Use::Copied),
            // A closure captures these: they become shared with it.
            Stmt::Share(captured) => {
                for (name, index) in captured.iter() {
                    if index.is_none() {
                        self.uses.changed.insert(name.name.clone());
                    }
                }
            }
            _ => self.uses.opaque = true,
        }
    }

    fn expr(&mut self, expr: &Expr, value_use: Use) {
        match expr {
            Expr::DynamicConstant(..)
            | Expr::BoolConstant(..)
            | Expr::IntegerConstant(..)
            | Expr::FloatConstant(..)
            | Expr::CharConstant(..)
            | Expr::StringConstant(..)
            | Expr::Unit(..)
            | Expr::ThisPtr(..) => {}
            Expr::InterpolatedString(parts, ..) => {
                for part in parts.iter() {
                    self.expr(part, Use::Copied);
                }
            }
            Expr::Array(items, ..) => {
                for item in items.iter() {
                    self.expr(item, Use::Kept);
                }
            }
            Expr::Map(map, ..) => {
                for (_, item) in map.0.iter() {
                    self.expr(item, Use::Kept);
                }
            }
            Expr::Variable(..) => {
                if let Some(name) = top_level_name(expr) {
                    self.used(name, value_use == Use::Copied);
                }
            }
            Expr::Stmt(block) => self.block(block.statements()),
            Expr::FnCall(call, ..) => self.call(call),
            Expr::Index(..) | Expr::Dot(..) => self.chain(expr, false),
            Expr::And(operands, ..) | Expr::Or(operands, ..) => {
                for operand in operands.iter() {
                    self.expr(operand, Use::Copied);
                }
            }
            // The first that is not `()` is the value itself.
            Expr::Coalesce(operands, ..) => {
                for operand in operands.iter() {
                    self.expr(operand, value_use);
                }
            }
            _ => self.uses.opaque = true,
        }
    }

    fn used(&mut self, name: &ImmutableString, read_only: bool) {
        if read_only {
            self.uses.read.insert(name.clone());
        } else {
            self.uses.changed.insert(name.clone());
        }
    }

    /// The target of `=` or `op=`.
    fn assigned(&mut self, target: &Expr) {
        match target {
            Expr::Index(..) | Expr::Dot(..) => self.chain(target, true),
            _ => {
                if let Some(name) = top_level_name(target) {
                    self.used(name, false);
                }
            }
        }
    }

    /// `t[i].p.m(x)`: the root `t` is read only when nothing along the chain
    /// can change it and the chain is not assigned to. Its result is a
    /// fresh copy of an item, or a method's new value, wherever it goes.
    fn chain(&mut self, chain: &Expr, assigned: bool) {
        let (Expr::Index(links, ..) | Expr::Dot(links, ..)) = chain else {
            return;
        };
        let unchanged = self.links(&links.rhs, chain);
        match top_level_name(&links.lhs) {
            Some(name) => self.used(name, unchanged && !assigned),
            // Another expression's value, copied first.
            None => self.expr(&links.lhs, Use::Copied),
        }
    }

    /// The links after a chain's root; whether none of them changes it.
    fn links(&mut self, link: &Expr, parent: &Expr) -> bool {
        let dotting = matches!(parent, Expr::Dot(..));
        match link {
            Expr::Index(next, ..) | Expr::Dot(next, ..)
                if !parent.options().contains(ASTFlags::BREAK) =>
            {
                let here = self.link(&next.lhs, dotting);
                self.links(&next.rhs, link) && here
            }
            _ => self.link(link, dotting),
        }
    }

    fn link(&mut self, link: &Expr, dotting: bool) -> bool {
        match link {
            Expr::Property(..) if dotting => true,
            Expr::MethodCall(call, ..) if dotting => {
                let pure = self.is_pure_method(&call.name);
                let arguments = if pure { Use::Copied } else { Use::Kept };
                for argument in call.args.iter() {
                    self.expr(argument, arguments);
                }
                pure
            }
            index if !dotting => {
                self.expr(index, Use::Copied);
                true
            }
            _ => {
                self.uses.opaque = true;
                false
            }
        }
    }

    fn is_pure_method(&self, name: &str) -> bool {
        PURE_METHODS.contains(&name) && !self.script_fns.iter().any(|(f, _)| f == name)
    }

    fn call(&mut self, call: &FnCallExpr) {
        let name = call.name.as_str();
        let arity = call.args.len();
        // `f!()` runs `f` with the hook's own variables.
        if call.capture_parent_scope {
            self.uses.opaque = true;
        }
        if name == "is_def_var" {
            self.uses.asks_by_name = true;
        }
        let by_value = call.namespace.is_empty()
            && (call.op_token.is_some()
                || self.script_fns.contains(&(name.to_string(), arity))
                || CONSUMERS.contains(&name)
                || name == "is_def_var"
                || name == "Fn");
        // A pure native gets its first argument by reference (a shared copy
        // would be copied on every call) and keeps none of the others.
        let pure = call.namespace.is_empty() && self.is_pure_method(name);
        for (i, argument) in call.args.iter().enumerate() {
            let copied = by_value || (pure && i > 0);
            self.expr(argument, if copied { Use::Copied } else { Use::Kept });
        }
    }
}

/// The name of a variable of the top level: not declared in the function
/// (Rhai then knows its place) and not a module's.
fn top_level_name(expr: &Expr) -> Option<&ImmutableString> {
    match expr {
        Expr::Variable(var, short_index, ..) => {
            let (long_index, name, namespace, _) = &**var;
            (short_index.is_none() && long_index.is_none() && namespace.is_empty()).then_some(name)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::{Duration, Instant};

    use rhai::{EvalAltResult, INT};

    use super::*;
    use crate::engine::{self, Limits, Params};
    use crate::server::hooks::{Action, HookFailure, Reply, ServerScript};
    use crate::transcript::Verbosity;

    thread_local! {
        /// Off: every connection gets a copy of the whole top level, as it
        /// used to. What sharing must be indistinguishable from.
        pub(super) static SHARING: Cell<bool> = const { Cell::new(true) };
    }

    /// Big tables and a small counter, above every case's hooks.
    const TOP: &str = r#"
let table = [];
for i in 0..300 { table.push([i, `${i}`]); }
let index = #{};
for i in 0..300 { index["k" + i] = #{ n: i }; }
let bytes = blob(8000, 7);
const FIXED = table;
let count = 0;
let spare = table;
"#;

    /// How `source` sorts its top-level variables.
    fn kinds(source: &str) -> Vec<(String, Kind)> {
        let engine = engine::new_engine(&Limits::default(), Params::default(), None);
        let script = engine::compile_source(&engine, "t.rhai".into(), source.into()).unwrap();
        let mut top_level = Scope::new();
        engine
            .run_ast_with_scope(&mut top_level, &script.ast)
            .unwrap();
        plan(&script.ast, &top_level)
            .into_iter()
            .map(|(name, kind, _)| (name.to_string(), kind))
            .collect()
    }

    fn describe(result: Result<Reply, HookFailure>) -> String {
        match result {
            Ok(reply) => {
                let sends: Vec<String> = reply
                    .actions
                    .iter()
                    .map(|action| match action {
                        Action::Send(out) => String::from_utf8_lossy(out.as_bytes()).into(),
                        other => format!("{other:?}"),
                    })
                    .collect();
                format!("{sends:?}{}", if reply.close { " close" } else { "" })
            }
            Err(failure) => format!("error: {}", failure.error.render()),
        }
    }

    /// Two connections taking turns, then a third: every reply and error.
    fn transcript(source: &str, sharing: bool) -> Vec<String> {
        SHARING.set(sharing);
        let script =
            ServerScript::from_source("t.rhai", source, &Limits::default(), Verbosity::Quiet);
        SHARING.set(true);
        let script = Arc::new(script.unwrap());
        let peer = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let (mut a, mut b) = (
            script.connection(peer(1), &crate::framing::Framing::Line, 1 << 20),
            script.connection(peer(2), &crate::framing::Framing::Line, 1 << 20),
        );
        let mut out = vec![
            describe(a.on_connect()),
            describe(a.on_message(b"1")),
            describe(a.on_message(b"2")),
            describe(b.on_connect()),
            describe(b.on_message(b"3")),
            describe(a.on_message(b"4")),
            describe(a.on_disconnect()),
            describe(b.on_disconnect()),
        ];
        let mut c = script.connection(peer(3), &crate::framing::Framing::Line, 1 << 20);
        out.push(describe(c.on_message(b"5")));
        out
    }

    /// Sorts the variables of `TOP` + `hooks` as `expected` says, and runs
    /// exactly as when every connection had a copy of the whole top level.
    fn check(hooks: &str, expected: &[(&str, Kind)]) {
        let source = format!("{TOP}\n{hooks}\n");
        let kinds = kinds(&source);
        for (name, kind) in expected {
            let found = kinds.iter().find(|(n, _)| n == name).map(|(_, k)| *k);
            assert_eq!(found, Some(*kind), "`{name}` in {kinds:?}");
        }
        assert_eq!(transcript(&source, true), transcript(&source, false));
    }

    macro_rules! as_if_each_had_a_copy {
        ($($name:ident: [$($var:ident: $kind:ident),*] $hooks:expr;)*) => {$(
            #[test]
            fn $name() {
                check($hooks, &[$((stringify!($var), Kind::$kind)),*]);
            }
        )*};
    }

    as_if_each_had_a_copy! {
        items_read_by_index: [table: Shared, index: Shared, bytes: Shared, count: Unused]
            "fn on_message(m) { `${table[parse_int(m)][1]} ${index[`k${m}`].n} ${bytes[3]}` }";
        pure_methods_and_properties: [table: Shared, index: Shared]
            "fn on_message(m) { `${table.len()} ${table.contains([1, \"1\"])} ${index.keys().len()} ${index.k1.n} ${table.len}` }";
        get_is_not_pure_for_arrays: [table: CopiedOnFirstUse]
            "fn on_message(m) { table.get(parse_int(m)) }";
        a_counter_stays_per_connection: [count: Small, table: Shared]
            "fn on_message(m) { count += 1; `${count}: ${table[count][0]}` }";
        loop_variables_can_be_changed: [table: Shared]
            "fn on_message(m) { let s = 0; for row in table { row.push(1); row[0] += 1; s += row[0]; } s }";
        a_let_copy_is_its_own: [table: Shared]
            "fn on_message(m) { let t = table; t.push(m); t[0] = m; `${t.len()} ${table.len()} ${table[0]}` }";
        an_assigned_copy_is_its_own: [table: Shared]
            "let mine = (); fn on_message(m) { mine = table; mine[0][0] = m; mine.push(m); `${mine.len()} ${mine[0]} ${table[0]}` }";
        an_item_kept_elsewhere_can_be_changed: [table: Shared]
            "let mine = []; fn on_message(m) { mine.push(table[1]); mine[0].push(m); `${mine[0]} ${table[1]}` }";
        a_script_function_gets_a_copy: [table: Shared]
            "fn change(t) { t.push(1); t[0] = 7; t.len() } fn on_message(m) { `${change(table)} ${table.len()} ${table[0]}` }";
        callbacks_of_pure_methods: [table: Shared]
            "fn on_message(m) { table.filter(|r| r[0] < 3).map(|r| r[1]) }";
        comparisons_and_interpolation: [table: Shared, index: Shared]
            "fn on_message(m) { `${table == table} ${table[0] == [0, \"0\"]} ${index.k1} ${bytes.len()}` }";
        switch_on_a_table: [table: Shared]
            "fn on_message(m) { switch table { [] => \"empty\", _ => \"full\" } }";
        the_whole_table_as_the_reply: [table: Shared]
            "fn on_connect() { return table; } fn on_message(m) { if m == \"2\" { return table.len(); } table }";
        a_small_const: [count: Small]
            "const LIMIT = 3; fn on_message(m) { if m == \"2\" { LIMIT = 4 } else if m == \"3\" { count.push(1) } `${LIMIT} ${count}` }";
        a_const_table_read: [FIXED: Shared]
            "fn on_message(m) { `${FIXED[1]} ${FIXED.len()}` }";
        a_const_table_cannot_change: [FIXED: CopiedOnFirstUse]
            "fn on_message(m) { if m == \"1\" { FIXED.push(1) } else if m == \"2\" { FIXED[0] = 1 } else { FIXED = 1 } }";
        a_const_table_changed_by_reference_stays: [FIXED: CopiedOnFirstUse]
            "fn on_message(m) { push(FIXED, 1); FIXED.len() }";
        items_of_a_const_table_stay_constant: [FIXED: Shared]
            "fn on_message(m) { for row in FIXED { row.push(1); } }";
        is_def_var_sees_every_name: [spare: Shared, table: Shared]
            "fn on_message(m) { `${is_def_var(\"spare\")} ${is_def_var(\"table\")} ${is_def_var(\"nothing\")}` }";
        a_local_of_the_same_name: [table: Shared]
            "fn on_connect() { table.len() } fn on_message(m) { let table = [1]; table.push(m); table.len() }";
        a_parameter_of_the_same_name: [table: Unused]
            "fn on_message(table) { table.len() }";
        other_functions_do_not_see_the_top_level: [table: Unused]
            "fn helper() { table.len() } fn on_message(m) { helper() }";
        a_hook_called_as_a_function_does_not_either: [table: Shared]
            "fn on_connect() { table.len() } fn on_message(m) { on_connect() }";
        a_function_called_with_the_hooks_variables: [table: CopiedOnFirstUse, count: Small]
            "fn helper() { table.push(1); count += 1; table.len() } fn on_message(m) { helper!() }";
        a_function_pointer_called_with_the_table: [table: CopiedOnFirstUse]
            "fn g(t) { t.push(1); t[0] = 0; t.len() } fn on_message(m) { `${call(Fn(\"g\"), table)} ${table.len()} ${table[0]}` }";
        a_curried_table: [table: CopiedOnFirstUse]
            "fn g(t, x) { t.push(x); t.len() } fn on_message(m) { let f = curry(Fn(\"g\"), table); `${f.call(1)} ${table.len()}` }";
        membership: [table: CopiedOnFirstUse, index: CopiedOnFirstUse]
            "fn on_message(m) { `${[1, \"1\"] in table} ${\"k1\" in index}` }";
        a_function_style_pure_call: [table: CopiedOnFirstUse]
            "fn on_message(m) { len(table) }";
        a_function_style_change: [table: CopiedOnFirstUse]
            "fn on_message(m) { push(table, m); table.len() }";
        a_method_that_changes: [table: CopiedOnFirstUse]
            "fn on_message(m) { table.push(m); table.len() }";
        an_item_assigned: [table: CopiedOnFirstUse, index: CopiedOnFirstUse]
            "fn on_message(m) { table[0] = m; index.k1.n = m; `${table[0]} ${index.k1.n}` }";
        an_item_changed_by_a_method: [table: CopiedOnFirstUse]
            "fn on_message(m) { table[0].push(m); table[0] }";
        a_compound_assignment: [table: CopiedOnFirstUse, bytes: CopiedOnFirstUse]
            "fn on_message(m) { table += [m]; bytes += 1; `${table.len()} ${bytes.len()}` }";
        appended_to_a_private_table: [table: CopiedOnFirstUse]
            "let mine = []; fn on_message(m) { mine += table; mine[0].push(m); `${mine.len()} ${table[0]}` }";
        kept_in_an_array_literal: [table: CopiedOnFirstUse]
            "fn on_message(m) { let a = [table, 1]; a[0].push(m); `${a[0].len()} ${table.len()}` }";
        kept_by_a_method: [table: CopiedOnFirstUse]
            "let mine = []; fn on_message(m) { mine.push(table); mine[0].push(m); `${mine.len()} ${mine[0].len()}` }";
        thrown_and_caught: [table: CopiedOnFirstUse]
            "fn on_message(m) { try { throw table; } catch (e) { e.push(m); e[0] = m; } `${table.len()} ${table[0]}` }";
        coalesced_into_a_let: [table: Shared]
            "fn on_message(m) { let t = table ?? []; t.push(m); `${t.len()} ${table.len()}` }";
        coalesced_into_a_method: [table: CopiedOnFirstUse]
            "let mine = []; fn on_message(m) { mine.push(table ?? []); mine[0].push(m); mine[0].len() }";
        is_shared_says_no: [table: CopiedOnFirstUse]
            "fn on_message(m) { is_shared(table) }";
        type_of_a_table: [table: CopiedOnFirstUse, bytes: CopiedOnFirstUse]
            "fn on_message(m) { `${type_of(table)} ${type_of(bytes)}` }";
        a_script_method_on_a_table: [table: CopiedOnFirstUse]
            "fn grow() { this.push(0); this.len() } fn on_message(m) { table.grow() }";
        a_tag_set_by_the_top_level: [table: Shared]
            "table.tag = 42; fn on_message(m) { `${table.tag} ${table[0].tag}` }";
        a_big_curried_function: [bound: CopiedOnFirstUse]
            "fn g(t, x) { t.len() + x } let bound = Fn(\"g\").curry(table); fn on_message(m) { bound.call(1) }";
        a_module_function_given_the_table: [table: CopiedOnFirstUse]
            "fn on_message(m) { u::f(table) }";
        kept_in_the_shared_store: [table: CopiedOnFirstUse]
            "fn on_message(m) { shared_set(\"t\", table); let t = shared_get(\"t\"); t.push(m); `${t.len()} ${table.len()}` }";
        broadcast: [table: Shared]
            "fn on_message(m) { broadcast(table[0]); broadcast(table); table.len() }";
        sent_and_logged: [table: Shared]
            "fn on_message(m) { send(table[0]); send(table); log(table.len()); table.len() }";
        changed_in_one_hook_read_in_another: [table: CopiedOnFirstUse]
            "fn on_connect() { table.len() } fn on_message(m) { table.push(m); table.len() } fn on_disconnect() { table.len() }";
    }

    #[test]
    fn small_values_are_copied_and_unused_ones_left_out() {
        let found = kinds(
            "let a = [1, 2]; let b = 5; let c = \"text\"; let d = [1]; fn on_message(m) { a.push(b); c }",
        );
        assert_eq!(
            found,
            vec![
                ("a".into(), Kind::Small),
                ("b".into(), Kind::Small),
                ("c".into(), Kind::Small),
                ("d".into(), Kind::Unused),
            ]
        );
    }

    #[test]
    fn only_the_last_of_two_variables_of_one_name_is_seen() {
        let found = kinds("let a = blob(9000); let a = 1; fn on_message(m) { a }");
        assert_eq!(found, vec![("a".into(), Kind::Small)]);
    }

    #[test]
    fn each_thread_reads_its_own_copy() {
        let tables = Arc::new(Tables {
            names: vec!["t".into()],
            values: vec![Dynamic::from_array(vec![Dynamic::from_int(1); 10])],
            shared: vec![true],
        });
        let address = |tables: &Arc<Tables>| {
            let copy = Tables::thread_copy(tables, 0);
            copy.read_lock::<Array>().unwrap().as_ptr() as usize
        };
        let here = address(&tables);
        assert_eq!(address(&tables), here);
        let other = std::thread::scope(|s| s.spawn(|| address(&tables)).join().unwrap());
        assert_ne!(other, here);
    }

    /// Rhai, asked for a variable that holds a shared value, locks it for
    /// writing, even to read it: with the lock taken elsewhere it sleeps and
    /// retries for 50 ms, then fails. One copy read by two threads at once
    /// would stall both; hence a copy per thread.
    #[test]
    fn rhai_locks_a_shared_value_for_every_read() {
        let value = Dynamic::from_array(vec![Dynamic::from_int(1)]).into_shared();
        let reading_elsewhere = value.read_lock::<Dynamic>().unwrap();
        let mut scope = Scope::new();
        scope.push_dynamic("t", value.clone());
        let started = Instant::now();
        let err = Engine::new()
            .eval_with_scope::<INT>(&mut scope, "t[0]")
            .unwrap_err();
        assert!(matches!(*err, EvalAltResult::ErrorDataRace(..)), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(40));
        drop(reading_elsewhere);
        assert_eq!(
            Engine::new()
                .eval_with_scope::<INT>(&mut scope, "t[0]")
                .unwrap(),
            1
        );
    }

    /// Runs `code` where `t` is what the resolver hands out for a shared
    /// `[1, [2]]`, as in a hook.
    fn with_shared_copy(code: &str) -> Result<Dynamic, Box<EvalAltResult>> {
        let copy = read_only_copy(&Dynamic::from_array(vec![
            Dynamic::from_int(1),
            Dynamic::from_array(vec![Dynamic::from_int(2)]),
        ]));
        let mut engine = Engine::new();
        #[allow(deprecated)]
        engine.on_var(move |name, index, _| Ok((name == "t" && index == 0).then(|| copy.clone())));
        engine.eval::<Dynamic>(code)
    }

    #[test]
    fn assigning_to_a_shared_copy_fails_loudly() {
        let err = with_shared_copy("t = 1").unwrap_err();
        assert!(
            matches!(*err, EvalAltResult::ErrorAssignmentToConstant(..)),
            "{err}"
        );
        let err = with_shared_copy("t += [1]").unwrap_err();
        assert!(
            matches!(*err, EvalAltResult::ErrorAssignmentToConstant(..)),
            "{err}"
        );
    }

    #[test]
    fn a_changing_method_on_a_shared_copy_fails_loudly() {
        let err = with_shared_copy("t.push(1)").unwrap_err();
        assert!(
            matches!(*err, EvalAltResult::ErrorNonPureMethodCallOnConstant(..)),
            "{err}"
        );
    }

    #[test]
    fn a_native_function_changing_a_shared_copy_changes_a_copy_of_it() {
        let unchanged = with_shared_copy("push(t, 1); t.len()").unwrap();
        assert_eq!(unchanged.as_int(), Ok(2));
    }

    /// Which is why a table given to a native function as its first argument
    /// is copied per connection: shared, it would be copied on every call
    /// (and `len(t)` would cost as much as the table).
    #[test]
    fn a_shared_copy_given_by_reference_is_copied_each_time() {
        let copy = read_only_copy(&Dynamic::from_array(vec![Dynamic::from_int(1)]));
        let mut engine = Engine::new();
        #[allow(deprecated)]
        engine.on_var(move |name, _, _| Ok((name == "t").then(|| copy.clone())));
        engine.register_fn("same", |a: &mut Array| a.as_ptr() as i64);
        let code = "let by_ref = t.same(); let again = t.same(); let copied = same(t); \
                    by_ref == again && copied != by_ref";
        assert!(engine.eval::<bool>(code).unwrap());
    }

    /// Only the top level of a shared copy is constant: the reading of the
    /// hooks must find every change to an item.
    #[test]
    fn items_of_a_shared_copy_are_not_constant() {
        let changed = with_shared_copy("t[1].push(3); t[1].len()").unwrap();
        assert_eq!(changed.as_int(), Ok(2));
        let copied = with_shared_copy("let s = 0; for x in t { x = 10; s += x } s").unwrap();
        assert_eq!(copied.as_int(), Ok(20));
    }

    /// Every name in [`PURE_METHODS`] is a method of arrays, maps or blobs
    /// that Rhai lets a constant call.
    #[test]
    fn pure_methods_leave_constants_unchanged() {
        let engine = engine::new_engine(&Limits::default(), Params::default(), None);
        let calls: &[&str] = &[
            "x.all(|v| true)",
            "x.as_string()",
            "x.contains(1)",
            "x.contains(\"a\")",
            "x.filter(|v| true)",
            "x.filter(|k, v| true)",
            "x.find(|v| true)",
            "x.find_map(|v| v)",
            "x.get(0)",
            "x.get(\"a\")",
            "x.index_of(1)",
            "x.is_empty()",
            "x.keys()",
            "x.len()",
            "x.map(|v| v)",
            "x.reduce(|s, v| s)",
            "x.reduce_rev(|s, v| s)",
            "x.some(|v| true)",
            "x.to_array()",
            "x.to_debug()",
            "x.to_json()",
            "x.to_string()",
            "x.values()",
        ];
        let receivers = [
            "const x = [1, 2];",
            "const x = #{a: 1};",
            "const x = blob(2, 1);",
        ];
        for method in PURE_METHODS {
            let mut works = false;
            for call in calls
                .iter()
                .filter(|c| c.starts_with(&format!("x.{method}(")))
            {
                for receiver in receivers {
                    match engine.eval::<Dynamic>(&format!("{receiver} {call}")) {
                        Ok(_) => works = true,
                        Err(err) => assert!(
                            !matches!(*err, EvalAltResult::ErrorNonPureMethodCallOnConstant(..)),
                            "{receiver} {call}: {err}"
                        ),
                    }
                }
            }
            assert!(works, "`{method}` is no method of an array, map or blob");
        }
    }
}
