//! The native stack under script code: no script, whatever its shape, may
//! overflow it, because an overflow aborts the whole process (exit 134, no
//! report) where every other script failure ends one connection or one test.
//!
//! Script code recurses on the native stack in two ways, and each has its
//! own bound:
//!
//! - **Code**: calls inside calls, expressions inside expressions. Rhai
//!   counts calls (64) and nesting per expression (checked when a script
//!   compiles), but not bytes: a hook recursing 60 calls deep with 16
//!   levels of parentheses in each needs 2.4 MB of stack in a release
//!   build and 8.7 MB in a debug one. Rhai calls [`check`] (through
//!   `on_progress`) at every statement and expression it evaluates; `check`
//!   stops the script with an error naming its `file:line:col` as soon as
//!   less than [`MARGIN`] is left. Between two checks a script can use at
//!   most [`GAP`] (one call's set-up, a native function, compiling an
//!   imported module), so a script that passed the last check still has
//!   `MARGIN - GAP` left whatever it does next.
//!
//! - **Data**: Rhai clones, drops, measures (for its size limits), hashes
//!   (`switch`) and, when formatting fails, prints nested arrays and maps
//!   by recursion, without checks in between. Those walks cannot be
//!   stopped, so they must fit: [`MARGIN`] holds the deepest value a script
//!   can build. Every array or map a script makes passes Rhai's size check
//!   (100,000 items in arrays, 100,000 in maps, counted through every level),
//!   and each level of nesting needs at least one item, so a value checked
//!   as a whole nests at most 200,000 deep; an assignment into a nested
//!   place (`a[0][0].push(x)`) checks the place, which an expression can
//!   reach at most [`NAVIGATION`] levels down. Function pointers hide their
//!   curried values from the size check, so `curry` refuses values nesting
//!   deeper than [`CURRY_DEPTH`], and closures may not capture variables at
//!   all ([`closures`]): a captured variable is shared by reference, and
//!   chains of them nest without any limit, one level per loop iteration. The
//!   formatting, comparison and JSON functions that Rhai implements by
//!   recursing through native calls (`print`, `==`, `to_json`...) are
//!   replaced for arrays and maps by versions that keep their own work list
//!   ([`values`]), and so is tcpscript's own formatting of values.
//!
//! So every thread that runs script code gets [`SIZE`] bytes of stack:
//! [`MARGIN`] for the checks above, plus [`NESTING`], enough for the deepest
//! code Rhai's limits allow (64 calls, each nesting expressions as deep as
//! a function body may), so that those limits, with their usual messages,
//! stop a script before the native check does. The sizes are virtual
//! memory: a thread only touches the pages it uses.
//!
//! The per-level costs these figures rest on are measured by the tests in
//! `stack/tests.rs`, in the build being tested (`cargo test` the debug
//! build, `cargo test --release` the release one); they fail if a Rhai
//! upgrade makes a level costlier than the constants here allow. The check
//! itself costs a script about 3% in a loop that does nothing else.

mod closures; // closures may not capture variables; curried values are depth-checked
mod values; // nested arrays and maps formatted, compared and converted without recursion

use std::cell::Cell;
use std::thread::{Builder, Scope, ScopedJoinHandle};

use rhai::{Dynamic, Engine};

use crate::engine::{MAX_CALL_DEPTH, MAX_EXPR_DEPTH, MAX_FN_EXPR_DEPTH, MAX_ITEMS};
use crate::error::Error;

pub(crate) use closures::captured_variable;
pub(crate) use values::{debug, display};

/// Debug builds use several times more stack per level than release ones.
const DEBUG: bool = cfg!(debug_assertions);

/// Stack one level of a nested array costs the costliest walk Rhai makes
/// over it: printing it with Rust's formatting, which Rhai falls back on
/// (measured: 1,312 bytes in a debug build, 159 in a release one).
const ARRAY_LEVEL: usize = if DEBUG { 1_536 } else { 192 };
/// Likewise for a map level, and for the levels of function pointers:
/// copying one (measured: 2,176 and 384 bytes).
const MAP_LEVEL: usize = if DEBUG { 2_560 } else { 448 };

/// How far below a variable an assignment or method call can reach:
/// an index or property chain is one expression (at most 128 levels at the
/// top level, 64 in a function), and a method called on a nested place
/// (`this`) can go as deep again, 64 calls in all.
const NAVIGATION: usize = MAX_EXPR_DEPTH + MAX_CALL_DEPTH * MAX_FN_EXPR_DEPTH;

/// How deep the values curried into a function pointer may nest.
const CURRY_DEPTH: usize = 64;

/// The deepest value a script can build (see the module documentation).
const DATA_DEPTH: usize = NAVIGATION + CURRY_DEPTH + MAX_ITEMS + MAX_ITEMS;

/// Stack the recursive walks over the deepest value can use: arrays and
/// maps in the proportion that costs most.
const WALK: usize = MAX_ITEMS * ARRAY_LEVEL + (DATA_DEPTH - MAX_ITEMS) * MAP_LEVEL;

/// The most stack script code can use between two checks: a call being set
/// up, a native function (compiling a regular expression, formatting),
/// Rhai compiling an imported module or a JSON text as deep as its
/// limits allow (measured: 748 KiB in a debug build, 111 KiB in a release
/// one, for a module as deep as Rhai compiles).
const GAP: usize = if DEBUG { 2 << 20 } else { 512 << 10 };

/// What must be left at every check: the deepest walk over data, after the
/// most a script can use before the next check, and again while an error
/// unwinds (dropping values at each level on its way out).
const MARGIN: usize = WALK + 2 * GAP;

/// The deepest code Rhai's own limits let through: 64 calls, each with its
/// expressions nested as deep as a function body may be (measured: 31 MiB
/// in a debug build, 3.8 MiB in a release one).
const NESTING: usize = if DEBUG { 40 << 20 } else { 8 << 20 };

/// What a thread uses before script code starts (the runtime's frames, the
/// call into a hook).
const BASE: usize = if DEBUG { 1 << 20 } else { 256 << 10 };

/// The stack of every thread that runs script code, in bytes.
pub(crate) const SIZE: usize = (MARGIN + NESTING + BASE).div_ceil(1 << 20) << 20;

/// The stack [`check`] guarantees script code on a thread not started with
/// [`SIZE`] (a unit test's, say): enough for ordinary nesting, not for the
/// deepest data. tcpscript's own commands never run scripts on such threads.
const SMALL_MARGIN: usize = 2 * GAP;

thread_local! {
    /// What [`poll`] compares the stack pointer with: the lowest address
    /// script code may reach on this thread (the stack's end plus the
    /// margin), or `usize::MAX` to make the next poll look further (the
    /// limit not yet measured, or an [`interrupt`]).
    static LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
    /// This thread's limit once measured.
    static MEASURED: Cell<usize> = const { Cell::new(usize::MAX) };
    static INTERRUPTED: Cell<bool> = const { Cell::new(false) };
}

/// What a [`poll`] found.
pub(crate) enum Poll {
    /// Go on.
    Go,
    /// Go on after looking at what [`interrupt`]ed: a memory ceiling
    /// passed, a failure waiting to be raised.
    Look,
    /// Stop the script with this error.
    Stop(Dynamic),
}

/// Rhai's `on_progress` hook calls this at every operation. One
/// thread-local read and one comparison, on the hot path of every hook;
/// the other checks every operation needs (memory, pending failures) ride
/// on the same comparison through [`interrupt`].
#[inline(always)]
pub(crate) fn poll() -> Poll {
    if stack_pointer() >= LIMIT.with(Cell::get) {
        return Poll::Go;
    }
    look()
}

/// [`poll`] for the stack alone: the error that stops the script, if any.
#[cfg(test)]
pub(crate) fn check() -> Option<Dynamic> {
    match poll() {
        Poll::Stop(too_deep) => Some(too_deep),
        Poll::Go | Poll::Look => None,
    }
}

/// Makes the next [`poll`] on this thread come back [`Poll::Look`]: for
/// what is noticed where the script cannot be stopped (the allocator, Rhai's
/// `print` hook). Safe to call from the allocator: it touches only
/// thread-local integers.
pub(crate) fn interrupt() {
    let _ = INTERRUPTED.try_with(|interrupted| interrupted.set(true));
    let _ = LIMIT.try_with(|limit| limit.set(usize::MAX));
}

#[cold]
#[inline(never)]
fn look() -> Poll {
    if MEASURED.with(Cell::get) == usize::MAX {
        MEASURED.with(|measured| measured.set(limit_for_this_thread()));
    }
    let limit = MEASURED.with(Cell::get);
    LIMIT.with(|current| current.set(limit));
    if stack_pointer() < limit {
        return Poll::Stop(Dynamic::from(format!(
            "script nests too deeply for the native stack: its calls and expressions \
             inside one another need more than the {} MiB this thread keeps for them",
            (SIZE - MARGIN) >> 20
        )));
    }
    if INTERRUPTED.with(|interrupted| interrupted.replace(false)) {
        Poll::Look
    } else {
        Poll::Go
    }
}

/// An address in the current frame: close enough to the stack pointer,
/// given margins counted in megabytes.
#[inline(always)]
fn stack_pointer() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

fn limit_for_this_thread() -> usize {
    let here = stack_pointer();
    let (low, size) = bounds().unwrap_or_else(|| {
        // Where the bounds are unknown, assume the current frame is near
        // the top of a small stack.
        let size = 1 << 20;
        (here.saturating_sub(size), size)
    });
    // The system may count the guard page out of the size asked for.
    let margin = if size >= MARGIN + NESTING {
        MARGIN
    } else {
        SMALL_MARGIN.min(size / 2)
    };
    low.saturating_add(margin)
}

/// The current thread's stack: its lowest address and its size.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn bounds() -> Option<(usize, usize)> {
    // SAFETY: `attr` is initialised by `pthread_getattr_np` before it is
    // read, and destroyed once.
    unsafe {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
            return None;
        }
        let mut low = std::ptr::null_mut();
        let mut size = 0;
        let found = libc::pthread_attr_getstack(attr.as_ptr(), &mut low, &mut size) == 0;
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        found.then_some((low as usize, size))
    }
}

/// The current thread's stack: its lowest address and its size.
#[cfg(target_os = "macos")]
fn bounds() -> Option<(usize, usize)> {
    // SAFETY: both functions only read the calling thread's attributes.
    unsafe {
        let thread = libc::pthread_self();
        let top = libc::pthread_get_stackaddr_np(thread) as usize;
        let size = libc::pthread_get_stacksize_np(thread);
        Some((top.checked_sub(size)?, size))
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "macos")))]
fn bounds() -> Option<(usize, usize)> {
    None
}

/// A thread builder with the stack every script thread gets.
pub(crate) fn thread(name: &str) -> Builder {
    Builder::new().name(name.into()).stack_size(SIZE)
}

/// Starts `f` on a scoped thread with a script-sized stack.
pub(crate) fn spawn_scoped<'scope, 'env, T: Send + 'scope>(
    scope: &'scope Scope<'scope, 'env>,
    name: &str,
    f: impl FnOnce() -> T + Send + 'scope,
) -> Result<ScopedJoinHandle<'scope, T>, Error> {
    thread(name)
        .spawn_scoped(scope, f)
        .map_err(|e| cannot_start(name, &e))
}

/// Runs `f` on a thread with a script-sized stack and returns what it
/// returns; a panic in it goes on in the caller.
pub(crate) fn run<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    std::thread::scope(|scope| {
        let handle = spawn_scoped(scope, name, f)?;
        Ok(handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    })
}

/// The error when the system refuses a thread of [`SIZE`].
pub(crate) fn cannot_start(name: &str, error: &std::io::Error) -> Error {
    Error::Usage(format!(
        "cannot start thread `{name}` with a {} MiB stack for scripts: {error} \
         (it is virtual memory: check `ulimit -v` and vm.overcommit_memory)",
        SIZE >> 20
    ))
}

/// Everything an engine needs for the bounds above: its own functions for
/// nested values, and `curry` routed through a depth check.
pub(crate) fn prepare(engine: &mut Engine) {
    values::register(engine);
    closures::register(engine);
}

#[cfg(test)]
mod tests;
