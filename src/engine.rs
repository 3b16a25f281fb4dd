//! The Rhai side shared by every command: building a locked-down engine,
//! compiling a script, the functions every script has, and turning Rhai's
//! errors into diagnostics that name `file:line:col`.

use std::collections::HashMap;
use std::fs::{File, FileType, Metadata};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use rhai::module_resolvers::FileModuleResolver;
use rhai::{
    AST, Blob, Dynamic, Engine, EvalAltResult, Module, ModuleResolver, NativeCallContext, Position,
    Scope, Shared,
};

use crate::diagnostic::{Diagnostic, Location};
use crate::error::{Error, ScriptFileProblem};
use crate::framing::Framing;
use crate::message;
use crate::report::events::TestEvents;

/// Nested calls a script may make; Rhai stops the next one with "Stack
/// overflow".
pub(crate) const MAX_CALL_DEPTH: usize = 64;
/// How deep expressions and statements may nest, at a script's top level
/// and inside functions; checked when the script compiles.
pub(crate) const MAX_EXPR_DEPTH: usize = 128;
pub(crate) const MAX_FN_EXPR_DEPTH: usize = 64;
/// Items in the arrays of one value, and likewise in its maps.
pub(crate) const MAX_ITEMS: usize = 100_000;

/// Resource limits for script code. Rhai's own defaults differ between
/// debug and release builds, so every one is set explicitly. The stack of
/// every script thread is sized for the defaults (see `stack`).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Operations per hook call (server) or per run (client); 0 = unlimited.
    pub(crate) max_operations: u64,
    pub(crate) max_string_size: usize,
    pub(crate) max_array_size: usize,
    pub(crate) max_map_size: usize,
    pub(crate) max_call_depth: usize,
    /// Bytes all of a server's connections may hold in script state (see
    /// `memory::Budget`); servers only.
    pub(crate) max_memory: usize,
}

impl Default for Limits {
    /// Generous for any conversation, small enough that a script building
    /// a runaway string or array stops long before memory runs out.
    fn default() -> Self {
        Limits {
            max_operations: 0,
            max_string_size: 8 * 1024 * 1024,
            max_array_size: MAX_ITEMS,
            max_map_size: MAX_ITEMS,
            max_call_depth: MAX_CALL_DEPTH,
            max_memory: DEFAULT_MAX_MEMORY,
        }
    }
}

impl Limits {
    /// Room for whole messages: a script holds a message of up to
    /// `--max-frame` bytes as one string or blob, and may join two of them
    /// (a reply quoting a request, a message and its continuation). Bytes
    /// held stay bounded by the allocator's count and `--max-memory`
    /// (see `memory`), whatever this allows one value.
    pub(crate) fn with_max_frame(mut self, max_frame: usize) -> Self {
        self.max_string_size = self.max_string_size.max(max_frame.saturating_mul(2));
        self
    }
}

/// Default for `--max-memory`: far more than any mock server needs, and
/// well inside what a CI machine can spare.
pub(crate) const DEFAULT_MAX_MEMORY: usize = 128 * 1024 * 1024;

/// `--set NAME=VALUE` parameters, read by `param()`.
pub(crate) type Params = Arc<HashMap<String, String>>;

/// A compiled script and the text it came from, for error snippets.
#[derive(Debug, Clone)]
pub(crate) struct Script {
    /// The path as the user wrote it: errors show it unchanged.
    pub(crate) path: String,
    pub(crate) source: String,
    pub(crate) ast: Arc<AST>,
}

impl Script {
    /// The framing the script declares with `const FRAMING = "...";` at
    /// its top level. A constant is read without running the script, so a
    /// client knows it before connecting, and one that could never deliver
    /// a message within `max_frame` is refused before anything connects.
    pub(crate) fn declared_framing(&self, max_frame: usize) -> Result<Option<Framing>, Error> {
        let framing = self.declared_framing_named("FRAMING")?;
        if let Some(framing) = &framing {
            framing.check_max_frame(max_frame).map_err(|e| {
                Error::Script(Box::new(Diagnostic::new(format!(
                    "{}: FRAMING {e}",
                    self.path
                ))))
            })?;
        }
        Ok(framing)
    }

    /// A framing declared by the constant `constant` (a proxy script's
    /// `UP_FRAMING`, say), read as `FRAMING` is.
    pub(crate) fn declared_framing_named(&self, constant: &str) -> Result<Option<Framing>, Error> {
        let Some((_, _, value)) = self
            .ast
            .iter_literal_variables(true, false)
            .find(|(name, _, _)| *name == constant)
        else {
            return Ok(None);
        };
        let text = value.into_string().map_err(|_| {
            Error::Script(Box::new(Diagnostic::new(format!(
                "{}: {constant} must be a string such as \"raw\" or \"len:u16\"",
                self.path
            ))))
        })?;
        text.parse().map(Some).map_err(|e: String| {
            Error::Script(Box::new(Diagnostic::new(format!(
                "{}: {constant}: {e}",
                self.path
            ))))
        })
    }

    /// Whether the script calls any of `names` anywhere, hooks included,
    /// as a function or a method (what it imports is not looked into).
    pub(crate) fn calls_any(&self, names: &[&str]) -> bool {
        use rhai::{ASTNode, Expr, Stmt};
        let mut found = false;
        self.ast.walk(&mut |path: &[ASTNode]| {
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

    /// Whether the script defines `name` taking `arity` parameters.
    pub(crate) fn has_fn(&self, name: &str, arity: usize) -> bool {
        self.ast
            .iter_functions()
            .any(|f| f.name == name && f.params.len() == arity)
    }

    /// A script error placed at the definition of function `name` (for
    /// what goes wrong with a hook's result, after the hook has returned).
    pub(crate) fn error_at_fn(&self, name: &str, message: String, note: String) -> Error {
        let mut diagnostic = Diagnostic::new(message).with_note(note);
        let definition = format!("fn {name}");
        diagnostic.location = self.source.lines().enumerate().find_map(|(index, line)| {
            let column = line.find(&definition)?;
            let after = line[column + definition.len()..].trim_start();
            after.starts_with('(').then(|| Location {
                file: self.path.clone(),
                line: index + 1,
                column: column + 1,
                source_line: Some(line.to_string()),
            })
        });
        Error::Script(Box::new(diagnostic))
    }

    fn location(&self, file: &str, position: Position) -> Option<Location> {
        let line = position.line()?;
        let column = position.position().unwrap_or(1);
        let text = if file == self.path {
            Some(self.source.clone())
        } else {
            read_script(Path::new(file)).ok()
        };
        // The end of the file, where an unclosed call is noticed, is an
        // empty line just past the last one.
        let source_line = text.and_then(|text| {
            let count = text.lines().count();
            match text.lines().nth(line - 1) {
                Some(found) => Some(found.to_string()),
                None => (line == count + 1).then(String::new),
            }
        });
        Some(Location {
            file: file.to_string(),
            line,
            column,
            source_line,
        })
    }
}

/// A failed expectation (or a broken connection) raised by a native
/// function. It travels through Rhai as the value of a runtime error, so a
/// script may catch it, and is told apart from script bugs when it escapes.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
    pub(crate) expected: Option<String>,
    pub(crate) actual: Option<String>,
    /// A line diff, when both sides are multi-line text.
    pub(crate) diff: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// Exit code 1: a wrong reply, a timeout, an unexpected close.
    Expectation,
    /// Exit code 4: reset, broken pipe.
    Network,
    /// Exit code 2: the command line lacks something the script needs.
    Usage,
    /// Exit code 3: the script misused an API (bad regex, bad hex).
    Script,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
            expected: None,
            actual: None,
            diff: Vec::new(),
        }
    }

    pub(crate) fn expectation(message: impl Into<String>) -> Self {
        Failure::new(FailureKind::Expectation, message)
    }

    pub(crate) fn script(message: impl Into<String>) -> Self {
        Failure::new(FailureKind::Script, message)
    }

    pub(crate) fn with_values(mut self, expected: String, actual: String) -> Self {
        self.expected = Some(expected);
        self.actual = Some(actual);
        self
    }
}

impl From<Failure> for Box<EvalAltResult> {
    fn from(failure: Failure) -> Self {
        Box::new(EvalAltResult::ErrorRuntime(
            Dynamic::from(failure),
            Position::NONE,
        ))
    }
}

pub(crate) type NativeResult<T> = Result<T, Box<EvalAltResult>>;

thread_local! {
    /// A failure noticed where no error can be returned (Rhai's `print`
    /// hook returns nothing), raised at the script's next operation.
    static PENDING: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

fn fail_at_next_operation(message: String) {
    PENDING.with(|pending| *pending.borrow_mut() = Some(message));
    // The check every operation makes already: no second one for this.
    crate::stack::interrupt();
}

/// For `on_progress` callbacks, once `stack::poll` says to look: the
/// failure to raise now, if any.
pub(crate) fn take_pending_failure() -> Option<Dynamic> {
    PENDING
        .with(|pending| pending.borrow_mut().take())
        .map(Dynamic::from)
}

/// `print(x)`: a line on stdout, through the console queue so that a
/// stdout nobody reads never blocks the script's thread. Control
/// characters are escaped (lines are kept): printed peer bytes must not
/// drive the terminal.
fn print_line(text: &str) {
    let escaped: Vec<_> = text.split('\n').map(message::escape_controls).collect();
    if let Err(closed) = crate::console::out(&escaped.join("\n")) {
        fail_at_next_operation(format!("print(): {closed}"));
    }
}

/// An engine with limits set, `eval` refused, and the functions that every
/// script has whatever its role.
pub(crate) fn new_engine(limits: &Limits, params: Params, script_dir: Option<&Path>) -> Engine {
    let mut engine = Engine::new();
    engine.disable_symbol("eval");
    // Interning every computed string (`${i}` in a loop) fills Rhai's
    // cache and trims it again and again; with threads it is also one
    // shared lock. Scripts here gain nothing from it.
    engine.set_max_strings_interned(0);
    engine
        .set_max_operations(limits.max_operations)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        .set_max_call_levels(limits.max_call_depth)
        .set_max_expr_depths(MAX_EXPR_DEPTH, MAX_FN_EXPR_DEPTH)
        .set_max_modules(64);
    crate::stack::prepare(&mut engine);
    match script_dir {
        Some(dir) => {
            engine.set_module_resolver(FolderResolver::new(dir));
        }
        // A script given as text has no folder, so nothing to import from.
        None => {
            engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
        }
    }
    engine.on_print(print_line);
    engine.on_debug(|text, source, position| {
        let place = match (source, position.line()) {
            (Some(source), Some(line)) => format!("{source}:{line}: "),
            _ => String::new(),
        };
        crate::console::err(&format!(
            "[debug] {place}{}",
            message::escape_controls(text)
        ));
    });
    register_common(&mut engine, params);
    crate::builtins::register(&mut engine);
    crate::protocols::register(&mut engine);
    engine
}

/// Resolves `import "name"` only to files inside the script's own folder:
/// no absolute paths, no `..`, no symbolic link that leads outside, and
/// only regular files of at most [`MAX_SCRIPT_BYTES`]. Rhai's
/// `FileModuleResolver` alone follows any path it is given and reads
/// whatever is there, `/dev/zero` or a FIFO included; it is kept here
/// only to name the file an import means. Modules are compiled here, so
/// that they meet the same rules as scripts (closures may not capture
/// variables).
struct FolderResolver {
    folder: PathBuf,
    files: FileModuleResolver,
    /// Modules by file, evaluated once: an `import` inside a hook runs at
    /// every message. Only modules that loaded are kept, so the folder's
    /// files bound it.
    loaded: Mutex<HashMap<PathBuf, Shared<Module>>>,
}

impl FolderResolver {
    fn new(dir: &Path) -> Self {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let folder = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        FolderResolver {
            files: FileModuleResolver::new_with_path(&folder),
            folder,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    fn admit(&self, path: &str, position: Position) -> Result<(), Box<EvalAltResult>> {
        let relative = Path::new(path);
        let plain = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        let inside = plain
            && match self.files.get_file_path(path, None).canonicalize() {
                Ok(real) => real.starts_with(&self.folder),
                // Missing files are reported when they are read.
                Err(_) => true,
            };
        if inside {
            return Ok(());
        }
        let failure = Failure::script(format!(
            "import \"{path}\" is refused: modules must be inside the script's folder ({}), \
             without absolute paths or `..`",
            self.folder.display()
        ));
        Err(Box::new(EvalAltResult::ErrorRuntime(
            Dynamic::from(failure),
            position,
        )))
    }

    /// Reads, compiles and runs the module in `file`, as Rhai's file
    /// resolver would: the same errors for a missing module or one that
    /// fails, and a shebang line skipped.
    fn load(
        &self,
        engine: &Engine,
        file: &Path,
        path: &str,
        position: Position,
    ) -> Result<Shared<Module>, Box<EvalAltResult>> {
        let in_module =
            |error| Box::new(EvalAltResult::ErrorInModule(path.into(), error, position));
        let mut source = match read_script(file) {
            Ok(source) => source,
            Err(Error::ReadFile { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(Box::new(EvalAltResult::ErrorModuleNotFound(
                    path.into(),
                    position,
                )));
            }
            // The same refusal as for the script itself: the file given is
            // unusable, which is a usage error rather than a script bug.
            Err(error) => {
                let failure = Failure::new(FailureKind::Usage, error.to_string());
                return Err(Box::new(EvalAltResult::ErrorRuntime(
                    Dynamic::from(failure),
                    position,
                )));
            }
        };
        if source.starts_with("#!") {
            source.drain(..source.find('\n').unwrap_or(source.len()));
        }
        let mut ast = engine.compile(source).map_err(|e| in_module(e.into()))?;
        if let Some((name, at)) = crate::stack::captured_variable(&ast) {
            let failure = Failure::script(format!(
                "{}:{}:{}: {}; {}",
                file.display(),
                at.line().unwrap_or(0),
                at.position().unwrap_or(0),
                captures_refused(&name),
                capture_help(&name)
            ));
            let err = EvalAltResult::ErrorRuntime(Dynamic::from(failure), Position::NONE);
            return Err(in_module(err.into()));
        }
        ast.set_source(path);
        let module = Module::eval_ast_as_new(Scope::new(), &ast, engine).map_err(in_module)?;
        Ok(module.into())
    }
}

impl ModuleResolver for FolderResolver {
    fn resolve(
        &self,
        engine: &Engine,
        _source: Option<&str>,
        path: &str,
        position: Position,
    ) -> Result<Shared<Module>, Box<EvalAltResult>> {
        self.admit(path, position)?;
        let file = self.files.get_file_path(path, None);
        let cached = self
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&file)
            .cloned();
        if let Some(module) = cached {
            return Ok(module);
        }
        let module = self.load(engine, &file, path, position)?;
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(file, module.clone());
        Ok(module)
    }
}

fn register_common(engine: &mut Engine, params: Params) {
    engine
        .register_type_with_name::<Failure>("Failure")
        .register_fn("to_string", |f: &mut Failure| f.message.clone())
        .register_get("message", |f: &mut Failure| f.message.clone());

    let p = params.clone();
    engine.register_fn("param", move |name: &str| -> NativeResult<String> {
        p.get(name).cloned().ok_or_else(|| {
            Failure::new(
                FailureKind::Usage,
                format!("parameter `{name}` is not set: pass --set {name}=VALUE"),
            )
            .into()
        })
    });
    engine.register_fn(
        "param",
        move |name: &str, default: Dynamic| -> NativeResult<Dynamic> {
            match params.get(name) {
                None => Ok(default),
                Some(value) => typed_like(name, value, &default),
            }
        },
    );
    engine.register_fn("env", |name: &str| -> Dynamic {
        std::env::var(name)
            .map(Dynamic::from)
            .unwrap_or(Dynamic::UNIT)
    });

    engine.register_fn(
        "assert",
        |ctx: NativeCallContext, cond: bool| -> NativeResult<()> {
            assert_that(&ctx, cond, "assertion failed")
        },
    );
    engine.register_fn(
        "assert",
        |ctx: NativeCallContext, cond: bool, msg: &str| -> NativeResult<()> {
            assert_that(&ctx, cond, msg)
        },
    );
    engine.register_fn(
        "assert_eq",
        |ctx: NativeCallContext, actual: Dynamic, expected: Dynamic| -> NativeResult<()> {
            assert_equal(&ctx, actual, expected, "values differ")
        },
    );
    engine.register_fn(
        "assert_eq",
        |ctx: NativeCallContext, actual: Dynamic, expected: Dynamic, msg: &str| {
            assert_equal(&ctx, actual, expected, msg)
        },
    );
    engine.register_fn(
        "fail",
        |ctx: NativeCallContext, msg: &str| -> NativeResult<()> {
            note_assertion(&ctx, "fail", false);
            Err(Failure::expectation(msg).into())
        },
    );

    // Regular expressions for server scripts, which route on what arrives.
    engine.register_fn(
        "matches",
        |text: &str, pattern: &str| -> NativeResult<bool> {
            Ok(compile_regex(pattern)?.is_match(text))
        },
    );
    engine.register_fn(
        "captures",
        |text: &str, pattern: &str| -> NativeResult<Dynamic> {
            Ok(match compile_regex(pattern)?.captures(text) {
                Some(captures) => Dynamic::from_array(
                    captures
                        .iter()
                        .map(|g| g.map_or(Dynamic::UNIT, |g| Dynamic::from(g.as_str().to_string())))
                        .collect(),
                ),
                None => Dynamic::UNIT,
            })
        },
    );

    // `msg.to_blob()` whatever the message was: Rhai has it for strings only.
    engine.register_fn("to_blob", |blob: Blob| blob);
    engine.register_fn("hex", |ctx: NativeCallContext, blob: Blob| {
        crate::builtins::hex(&ctx, &blob)
    });
    engine.register_fn("hex", |ctx: NativeCallContext, text: &str| {
        crate::builtins::hex(&ctx, text.as_bytes())
    });
    engine.register_fn("unhex", |text: &str| -> NativeResult<Blob> {
        message::unhex(text).map_err(|e| Failure::script(e).into())
    });
}

/// Patterns are compiled once per thread: a hook matching every message
/// should not pay for compiling the same expression each time.
fn compile_regex(pattern: &str) -> NativeResult<regex::Regex> {
    thread_local! {
        static CACHE: std::cell::RefCell<HashMap<String, regex::Regex>> =
            std::cell::RefCell::new(HashMap::new());
    }
    CACHE.with(|cache| {
        if let Some(regex) = cache.borrow().get(pattern) {
            return Ok(regex.clone());
        }
        let regex = regex::Regex::new(pattern)
            .map_err(|e| Failure::script(format!("invalid regular expression: {e}")))?;
        let mut cache = cache.borrow_mut();
        // A script building patterns from input must not grow this forever.
        if cache.len() >= 256 {
            cache.clear();
        }
        cache.insert(pattern.to_string(), regex.clone());
        Ok(regex)
    })
}

thread_local! {
    /// Where a client run on this thread reports its assertions: one
    /// engine serves many threads (load mode's users), so the events
    /// cannot ride on the engine.
    static EVENTS: std::cell::RefCell<Option<TestEvents>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with `events` receiving the assertions made on this thread.
pub(crate) fn with_events<T>(events: Option<TestEvents>, f: impl FnOnce() -> T) -> T {
    let before = EVENTS.replace(events);
    let result = f();
    EVENTS.set(before);
    result
}

/// Reports an assertion to `--json`.
pub(crate) fn note_assertion(ctx: &NativeCallContext, function: &str, ok: bool) {
    EVENTS.with_borrow(|events| {
        let Some(events) = events else { return };
        events.emit(
            "assertion",
            serde_json::json!({
                "function": function,
                "ok": ok,
                "line": ctx.call_position().line(),
            }),
        );
    });
}

fn assert_that(ctx: &NativeCallContext, cond: bool, msg: &str) -> NativeResult<()> {
    note_assertion(ctx, "assert", cond);
    if cond {
        Ok(())
    } else {
        Err(Failure::expectation(msg).into())
    }
}

fn assert_equal(
    ctx: &NativeCallContext,
    actual: Dynamic,
    expected: Dynamic,
    msg: &str,
) -> NativeResult<()> {
    let equal = values_equal(ctx, &actual, &expected);
    note_assertion(ctx, "assert_eq", equal);
    if equal {
        return Ok(());
    }
    let failure = Failure::expectation(msg);
    let failure = match (bytes_of(&expected), bytes_of(&actual)) {
        (Some(e), Some(a)) if !message::is_text(&e) || !message::is_text(&a) => {
            failure.with_values(message::display_hex(&e), message::display_hex(&a))
        }
        (Some(e), Some(a)) if e.contains(&b'\n') && a.contains(&b'\n') => {
            let mut failure = failure.with_values(
                message::display_value(&expected),
                message::display_value(&actual),
            );
            failure.diff = line_diff(&String::from_utf8_lossy(&e), &String::from_utf8_lossy(&a));
            failure
        }
        _ => failure.with_values(
            message::display_value(&expected),
            message::display_value(&actual),
        ),
    };
    Err(failure.into())
}

/// `-` lines only expected, `+` lines only actual, ` ` lines in both.
fn line_diff(expected: &str, actual: &str) -> Vec<String> {
    similar::TextDiff::from_lines(expected, actual)
        .iter_all_changes()
        .map(|change| {
            let sign = match change.tag() {
                similar::ChangeTag::Delete => '-',
                similar::ChangeTag::Insert => '+',
                similar::ChangeTag::Equal => ' ',
            };
            format!("{sign}{}", change.value().trim_end_matches('\n'))
        })
        .collect()
}

/// Byte equality when both are strings or blobs, without copying them.
fn same_bytes(a: &Dynamic, b: &Dynamic) -> Option<bool> {
    fn with_bytes<T>(v: &Dynamic, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        if let Ok(text) = v.as_immutable_string_ref() {
            return Some(f(text.as_bytes()));
        }
        v.read_lock::<Blob>().map(|blob| f(&blob))
    }
    with_bytes(a, |x| with_bytes(b, |y| x == y)).flatten()
}

/// The bytes of a string or blob.
fn bytes_of(value: &Dynamic) -> Option<Vec<u8>> {
    if let Ok(text) = value.as_immutable_string_ref() {
        return Some(text.as_bytes().to_vec());
    }
    value.read_lock::<Blob>().map(|blob| blob.clone())
}

/// Rhai's `==`, plus byte equality between strings and blobs: a received
/// message may be either, and `assert_eq(recv(), "ok")` should not care.
fn values_equal(ctx: &NativeCallContext, a: &Dynamic, b: &Dynamic) -> bool {
    if let Some(equal) = same_bytes(a, b) {
        return equal;
    }
    if a.type_name() != b.type_name() {
        let numeric = |v: &Dynamic| v.is_int() || v.is_float();
        if !(numeric(a) && numeric(b)) {
            return false;
        }
    }
    ctx.call_native_fn::<bool>("==", (a.clone(), b.clone()))
        .unwrap_or(false)
}

/// A `--set` value, converted to the type of the script's default.
fn typed_like(name: &str, value: &str, default: &Dynamic) -> NativeResult<Dynamic> {
    let bad = |kind: &str| -> Box<EvalAltResult> {
        Failure::new(
            FailureKind::Usage,
            format!("parameter `{name}` must be {kind}, got {value:?}"),
        )
        .into()
    };
    if default.is_int() {
        return value
            .trim()
            .parse::<rhai::INT>()
            .map(Dynamic::from)
            .map_err(|_| bad("an integer"));
    }
    if default.is_float() {
        return value
            .trim()
            .parse::<rhai::FLOAT>()
            .map(Dynamic::from)
            .map_err(|_| bad("a number"));
    }
    if default.is_bool() {
        return match value.trim() {
            "true" | "1" | "yes" => Ok(Dynamic::TRUE),
            "false" | "0" | "no" => Ok(Dynamic::FALSE),
            _ => Err(bad("true or false")),
        };
    }
    Ok(Dynamic::from(value.to_string()))
}

/// The largest script or module tcpscript reads, in bytes. Shipped
/// scripts are a few KiB, and a recorded session of 10,000 exchanges fits
/// (and compiles in 0.05 s). Rhai's parser slows down with the square of
/// the number of variables or functions: 1 MiB of them compiles in 1.5
/// to 10 s and 90 MiB, 4 MiB took 37 s to 4 minutes. A bigger file is a
/// mistake (a log, an image, `/dev/zero`), not a script.
pub(crate) const MAX_SCRIPT_BYTES: u64 = 1024 * 1024;

/// The text of the script at `path`: a regular file of at most
/// [`MAX_SCRIPT_BYTES`], in UTF-8.
pub(crate) fn read_script(path: &Path) -> Result<String, Error> {
    let unreadable = |source| Error::ReadFile {
        path: path.display().to_string(),
        source,
    };
    let refused = |problem| Error::ScriptFile {
        path: path.display().to_string(),
        problem,
    };
    // Looked at before opening: opening a FIFO blocks until a writer comes.
    let metadata = std::fs::metadata(path).map_err(unreadable)?;
    usable_script(&metadata).map_err(refused)?;
    let file = File::open(path).map_err(unreadable)?;
    // The path may lead elsewhere now than when it was looked at.
    usable_script(&file.metadata().map_err(unreadable)?).map_err(refused)?;
    // At most one byte past the limit: the file may still be growing.
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(MAX_SCRIPT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_SCRIPT_BYTES {
        return Err(refused(ScriptFileProblem::Grew {
            limit: MAX_SCRIPT_BYTES,
        }));
    }
    String::from_utf8(bytes).map_err(|e| unreadable(io::Error::new(io::ErrorKind::InvalidData, e)))
}

fn usable_script(metadata: &Metadata) -> Result<(), ScriptFileProblem> {
    if !metadata.is_file() {
        return Err(ScriptFileProblem::NotRegular(kind_of(metadata.file_type())));
    }
    if metadata.len() > MAX_SCRIPT_BYTES {
        return Err(ScriptFileProblem::TooLarge {
            size: metadata.len(),
            limit: MAX_SCRIPT_BYTES,
        });
    }
    Ok(())
}

/// What a path that is not a regular file is, for the error message.
fn kind_of(kind: FileType) -> &'static str {
    if kind.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    "something else"
}

/// Reads and compiles `path`. A file that cannot be read, or is not a
/// regular file of a bounded size, is a usage error; a syntax error is a
/// script error pointing at the offending token.
pub(crate) fn compile(engine: &Engine, path: &Path) -> Result<Script, Error> {
    let source = read_script(path)?;
    compile_source(engine, path.display().to_string(), source)
}

pub(crate) fn compile_source(
    engine: &Engine,
    path: String,
    source: String,
) -> Result<Script, Error> {
    let mut script = Script {
        path,
        source,
        ast: Arc::new(AST::empty()),
    };
    match engine.compile(&script.source) {
        Ok(mut ast) => {
            if let Some((name, position)) = crate::stack::captured_variable(&ast) {
                let mut diagnostic = Diagnostic::new(captures_refused(&name));
                diagnostic.location = script.location(&script.path, position);
                diagnostic.notes.push(capture_help(&name));
                return Err(Error::Script(Box::new(diagnostic)));
            }
            if let Some(invalid) = crate::patterns::invalid_pattern(&ast) {
                let mut diagnostic = Diagnostic::new(invalid.message());
                diagnostic.location = script.location(&script.path, invalid.position);
                return Err(Error::Script(Box::new(diagnostic)));
            }
            ast.set_source(script.path.as_str());
            script.ast = Arc::new(ast);
            Ok(script)
        }
        Err(err) => {
            let mut diagnostic = Diagnostic::new(err.err_type().to_string());
            diagnostic.location = script.location(&script.path, err.position());
            Err(Error::Script(Box::new(diagnostic)))
        }
    }
}

fn captures_refused(name: &str) -> String {
    format!("closures cannot capture variables: `{name}` comes from outside this closure")
}

fn capture_help(name: &str) -> String {
    format!(
        "pass it in as a parameter instead, as a copy: `(|{name}, ...| ...).curry({name})`; \
         captured variables are shared, and chains of them could nest deep enough to overflow \
         the native stack"
    )
}

/// Turns an error out of script code into an [`Error`] with the innermost
/// position Rhai knows. `context` names what was running (a hook) for the
/// errors that carry no position, such as limits.
pub(crate) fn diagnose(err: &EvalAltResult, script: &Script, context: Option<&str>) -> Error {
    let mut notes = Vec::new();
    let mut file = script.path.clone();
    let mut position = Position::NONE;
    let mut current = err;
    loop {
        match current {
            EvalAltResult::ErrorInFunctionCall(name, source, inner, call_site) => {
                if !call_site.is_none() {
                    position = *call_site;
                }
                if !name.is_empty() && !is_hook_call(context, name) {
                    notes.push(format!("in function `{name}`"));
                }
                if !source.is_empty() {
                    file = source.clone();
                }
                current = inner;
            }
            EvalAltResult::ErrorInModule(name, inner, call_site) => {
                if !call_site.is_none() {
                    position = *call_site;
                }
                notes.push(format!("in module `{name}`"));
                current = inner;
            }
            _ => break,
        }
    }
    if !current.position().is_none() {
        position = current.position();
    }
    if position.is_none() && file == script.path {
        // A limit (operations, time, nested calls, the native stack) met
        // inside a function keeps only the position of the outermost call,
        // and a hook is called from outside any script: name the hook.
        position = script
            .ast
            .iter_fn_def()
            .find(|f| is_hook_call(context, &f.name))
            .map_or(position, |f| f.body.start_position());
    }
    if let Some(context) = context {
        notes.insert(0, context.to_string());
    }
    notes.reverse();

    let (kind, mut diagnostic) = match current {
        EvalAltResult::ErrorRuntime(value, _) if value.is::<Failure>() => {
            let failure = value.clone_cast::<Failure>();
            let diagnostic = Diagnostic {
                message: failure.message,
                expected: failure.expected,
                actual: failure.actual,
                diff: failure.diff,
                ..Diagnostic::default()
            };
            (failure.kind, diagnostic)
        }
        EvalAltResult::ErrorRuntime(value, _) => (
            FailureKind::Script,
            Diagnostic::new(format!("script threw: {}", crate::stack::display(value))),
        ),
        EvalAltResult::ErrorTooManyOperations(_) => (
            FailureKind::Script,
            Diagnostic::new("operation limit reached: the script ran too long (see --max-ops)"),
        ),
        EvalAltResult::ErrorTerminated(token, _) => {
            (FailureKind::Script, Diagnostic::new(token.to_string()))
        }
        other => {
            // Rhai appends " (line L, position P)"; the location shows it better.
            let text = other.to_string();
            let suffix = format!(" ({})", other.position());
            let text = text.strip_suffix(&suffix).unwrap_or(&text).to_string();
            (FailureKind::Script, Diagnostic::new(text))
        }
    };
    diagnostic.location = script.location(&file, position);
    if diagnostic.location.is_none() {
        diagnostic.notes.push(format!("in script {}", script.path));
    }
    diagnostic.notes.extend(notes);
    let diagnostic = Box::new(diagnostic);
    match kind {
        FailureKind::Expectation => Error::Failed(diagnostic),
        FailureKind::Network => Error::Network(diagnostic),
        FailureKind::Usage => Error::ScriptUsage(diagnostic),
        FailureKind::Script => Error::Script(diagnostic),
    }
}

/// The hook itself is already named by the context note.
fn is_hook_call(context: Option<&str>, name: &str) -> bool {
    context.is_some_and(|c| c.contains(&format!("`{name}`")))
}

#[cfg(test)]
mod tests {
    use rhai::Scope;

    use super::*;

    fn engine(limits: &Limits) -> Engine {
        new_engine(limits, Params::default(), None)
    }

    /// `script`'s value, with `big` a blob of 300,000 bytes (three times
    /// the array limit) and `bad` the blob `[ff]`, not UTF-8.
    fn eval(limits: &Limits, script: &str) -> Result<Dynamic, Box<EvalAltResult>> {
        let mut scope = Scope::new();
        let big: Blob = (0..300_000_u32).map(|i| (i % 251) as u8).collect();
        scope.push("big", big);
        scope.push("bad", vec![0xff_u8]);
        engine(limits).eval_with_scope::<Dynamic>(&mut scope, script)
    }

    fn value(script: &str) -> Dynamic {
        eval(&Limits::default(), script).unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    fn blob(script: &str) -> Blob {
        value(script)
            .into_blob()
            .unwrap_or_else(|t| panic!("{script}: a {t}"))
    }

    fn string(script: &str) -> String {
        value(script)
            .into_string()
            .unwrap_or_else(|t| panic!("{script}: a {t}"))
    }

    #[test]
    fn blob_bytes_count_as_bytes_not_items() {
        assert_eq!(value("big.len()").as_int(), Ok(300_000));
        assert_eq!(value("let b = big; b.len()").as_int(), Ok(300_000));
        assert_eq!(value("big.to_blob().len()").as_int(), Ok(300_000));
        assert_eq!(value("big.extract(1..200_001).len()").as_int(), Ok(200_000));
        assert_eq!(value("big.extract(250_000).len()").as_int(), Ok(50_000));
        assert_eq!(value("big[299_999]").as_int(), Ok(299_999 % 251));
        assert_eq!(value("let b = big; b == big").as_bool(), Ok(true));
        assert_eq!(value("(big + big).len()").as_int(), Ok(600_000));
        assert_eq!(
            value("let b = big; b += big; b.len()").as_int(),
            Ok(600_000)
        );
        assert_eq!(value("[big, big].len()").as_int(), Ok(2));
        assert_eq!(value("#{ b: big }.b.len()").as_int(), Ok(300_000));
    }

    #[test]
    fn blob_bytes_are_held_to_the_string_limit() {
        let limits = Limits {
            max_string_size: 400_000,
            ..Limits::default()
        };
        for script in [
            "big + big",
            "let b = big; b += big; b",
            "blob(400_001)",
            "[big, big]",
            "\"x\" + big + big",
        ] {
            let err = eval(&limits, script).expect_err(script);
            assert!(
                matches!(*err, EvalAltResult::ErrorDataTooLarge(..)),
                "{script}: {err}"
            );
        }
        assert!(eval(&limits, "blob(400_000).len()").is_ok());
    }

    #[test]
    fn a_string_and_a_blob_join_without_losing_a_byte() {
        assert_eq!(blob(r#""ab" + bad"#), b"ab\xff");
        assert_eq!(blob(r#"bad + "ab""#), b"\xffab");
        assert_eq!(blob(r#"let s = "ab"; s += bad; s"#), b"ab\xff");
        assert_eq!(blob(r#"let b = bad; b += "ab"; b"#), b"\xffab");
        assert_eq!(blob(r#"("ab" + big).extract(2)"#), blob("big"));
        assert_eq!(blob(r#"(big + "ab").extract(0, 300_000)"#), blob("big"));
        // Text that is UTF-8 either way stays text, as a message would.
        assert_eq!(string(r#""ab" + "é".to_blob()"#), "abé");
        assert_eq!(string(r#""é".to_blob() + "ab""#), "éab");
        assert_eq!(string(r#"let s = "ab"; s += "é".to_blob(); s"#), "abé");
        assert_eq!(string(r#"let s = "ab"; s.append("é".to_blob()); s"#), "abé");
        // A string cannot hold the bytes, and is not changed into a blob
        // by a method: refused rather than replaced with U+FFFD.
        let err = eval(&Limits::default(), r#"let s = "ab"; s.append(bad); s"#).unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
        // Interpolation shows a blob as before.
        assert_eq!(string(r#"`<${bad}>`"#), "<[ff]>");
        assert_eq!(string(r#"let b = bad; b += 0; `${b}`"#), "[ff00]");
    }

    #[test]
    fn the_string_limit_has_room_for_two_messages() {
        let default = Limits::default().max_string_size;
        assert_eq!(
            Limits::default().with_max_frame(1024).max_string_size,
            default
        );
        assert_eq!(
            Limits::default().with_max_frame(256 << 20).max_string_size,
            512 << 20
        );
    }
}
