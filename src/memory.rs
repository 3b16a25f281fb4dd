//! Memory counted in bytes. Rhai's own limits count items (a map's keys not
//! at all), so a script can hold far more than they suggest. Two measures
//! close that gap:
//!
//! - the allocator counts, per thread, the bytes allocated minus the bytes
//!   freed: the growth of a hook call while it runs, map keys, copies and
//!   recursion included, read at every operation;
//! - after a call that grew (or shrank) much, the connection's variables
//!   are measured, so that what a connection keeps between calls is known
//!   exactly, whatever allocated or freed it.
//!
//! A server-wide [`Budget`] sets the limit those measures are held to.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use rhai::{Dynamic, Scope};

/// mimalloc, counting. Every message costs a few small allocations (Rhai
/// strings, script values); mimalloc makes those cheaper than the system
/// allocator, and a thread-local add per allocation is all the counting costs.
pub(crate) struct Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What this thread counts.
struct Counters {
    /// Bytes allocated minus bytes freed by this thread, wrapping.
    net: Cell<isize>,
    /// The count past which the running script must look at its memory
    /// budget: an allocation past it interrupts the script (see
    /// `stack::interrupt`), so operations need no check of their own.
    ceiling: Cell<isize>,
}

thread_local! {
    static COUNTERS: Counters = const {
        Counters {
            net: Cell::new(0),
            ceiling: Cell::new(isize::MAX),
        }
    };
}

fn count(bytes: isize) {
    // `try_with`: a thread being torn down may free after its locals are gone.
    let _ = COUNTERS.try_with(|c| {
        let net = c.net.get().wrapping_add(bytes);
        c.net.set(net);
        if net > c.ceiling.get() {
            // The script looks at its budget at its next operation.
            crate::stack::interrupt();
        }
    });
}

// SAFETY: every call is passed through to mimalloc unchanged; counting only
// touches a thread-local integer and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

/// This thread's running count; subtract two readings for what happened
/// between them.
pub(crate) fn thread_net() -> isize {
    COUNTERS.with(|c| c.net.get())
}

/// Runs `f` without counting what it allocates against the running call:
/// for memory that belongs to no connection (a worker thread's copy of a
/// shared table), which the connection that happens to trigger it must not
/// be charged for.
pub(crate) fn uncounted<T>(f: impl FnOnce() -> T) -> T {
    let before = thread_net();
    let value = f();
    let grown = thread_net().wrapping_sub(before);
    COUNTERS.with(|c| c.net.set(c.net.get().wrapping_sub(grown)));
    value
}

/// Whether this thread's count has passed its ceiling.
pub(crate) fn past_ceiling() -> bool {
    COUNTERS.with(|c| c.net.get() > c.ceiling.get())
}

/// Interrupts the running script once this thread's count passes
/// `ceiling` (at once if it has).
pub(crate) fn set_ceiling(ceiling: isize) {
    COUNTERS.with(|c| {
        c.ceiling.set(ceiling);
        if c.net.get() > ceiling {
            crate::stack::interrupt();
        }
    });
}

/// Growth below this needs no check and no new measure.
pub(crate) const FLOOR: usize = 64 * 1024;
/// Below this, a connection is never refused memory: a bystander's small
/// reply must go through even while others have used up the budget.
const SHARE_FLOOR: usize = 256 * 1024;

/// The memory all connections of a server may hold, and what they hold.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    /// What connections kept between hook calls, as last measured.
    held: AtomicUsize,
    connections: AtomicUsize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Budget {
            limit,
            held: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        }
    }

    /// Whether a connection may use `usage` bytes now (what it keeps plus
    /// what its running call has grown). It may not pass the limit alone;
    /// nor, when all connections together are over it, its fair share.
    pub(crate) fn check(&self, usage: usize, kept: usize) -> Result<(), String> {
        let mib = |bytes: usize| bytes.div_ceil(1024 * 1024);
        if usage > self.limit {
            return Err(format!(
                "this connection's script uses {} MiB, more than --max-memory ({} MiB)",
                mib(usage),
                mib(self.limit)
            ));
        }
        let total = (self.held.load(Ordering::Relaxed) + usage).saturating_sub(kept);
        let share = (self.limit / self.connections.load(Ordering::Relaxed).max(1)).max(SHARE_FLOOR);
        if total > self.limit && usage > share {
            return Err(format!(
                "the server's scripts use {} MiB in all, more than --max-memory ({} MiB), \
                 and this connection uses {} MiB, more than its share",
                mib(total),
                mib(self.limit),
                mib(usage)
            ));
        }
        Ok(())
    }

    pub(crate) fn join(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection's kept memory changed from `old` to `new` bytes.
    pub(crate) fn kept(&self, old: usize, new: usize) {
        if new >= old {
            self.held.fetch_add(new - old, Ordering::Relaxed);
        } else {
            self.held.fetch_sub(old - new, Ordering::Relaxed);
        }
    }

    pub(crate) fn leave(&self, kept: usize) {
        self.kept(kept, 0);
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bytes held by the variables of `scope`, map keys included. Values shared
/// with other connections (read-only top-level tables) are not theirs to
/// count.
pub(crate) fn scope_footprint(scope: &Scope) -> usize {
    scope
        .iter_raw()
        .filter(|(_, _, value)| !value.is_shared())
        .map(|(name, _, value)| name.len() + footprint(value))
        .sum()
}

/// What one value's words take beside what they point to.
const ITEM: usize = 16;
/// Deeper than this, [`footprint`] counts by taking a copy apart instead
/// of recursing, so that no nesting can exhaust the stack.
const MAX_WALK_DEPTH: usize = 256;

/// Roughly how many bytes `value` holds: its strings (its part of them,
/// when they are shared) and blobs, plus a word or two per item and per
/// map key.
pub(crate) fn footprint(value: &Dynamic) -> usize {
    walk(value, 0, true)
}

/// Every byte `value` keeps alive, strings shared with others included:
/// for what a store holds on its own once the others let go.
pub(crate) fn full_footprint(value: &Dynamic) -> usize {
    walk(value, 0, false)
}

fn walk(value: &Dynamic, depth: usize, split_shared: bool) -> usize {
    if depth > MAX_WALK_DEPTH {
        return taken_apart(value);
    }
    if let Ok(text) = value.as_immutable_string_ref() {
        // Strings are shared, not copied, between holders (every
        // connection's copy of a top-level string is the same one): each
        // holder counts its part.
        let holders = if split_shared { text.strong_count() } else { 1 };
        return ITEM + text.len() / holders.max(1);
    }
    if let Ok(blob) = value.as_blob_ref() {
        return ITEM + blob.len();
    }
    if let Ok(array) = value.as_array_ref() {
        return ITEM
            + array
                .iter()
                .map(|item| walk(item, depth + 1, split_shared))
                .sum::<usize>();
    }
    if let Ok(map) = value.as_map_ref() {
        return ITEM
            + map
                .iter()
                .map(|(key, item)| ITEM + key.len() + walk(item, depth + 1, split_shared))
                .sum::<usize>();
    }
    ITEM
}

/// [`footprint`] without recursion: a copy is taken apart piece by piece.
fn taken_apart(value: &Dynamic) -> usize {
    let mut total = 0;
    let mut pending = vec![value.clone().flatten()];
    while let Some(value) = pending.pop() {
        total += ITEM;
        if value.is_string() {
            total += value.into_immutable_string().map_or(0, |s| s.len());
        } else if value.is_blob() {
            total += value.into_blob().map_or(0, |b| b.len());
        } else if value.is_array() {
            let items = value.into_array().unwrap_or_default();
            pending.extend(items.into_iter().map(Dynamic::flatten));
        } else if let Some(map) = value.try_cast::<rhai::Map>() {
            for (key, item) in map {
                total += ITEM + key.len();
                pending.push(item.flatten());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocator_counts_what_this_thread_holds() {
        let before = thread_net();
        let kept = vec![0u8; 100_000];
        let grown = thread_net() - before;
        assert!((100_000..110_000).contains(&grown), "{grown}");
        drop(kept);
        assert!((thread_net() - before).abs() < 1000);
    }

    #[test]
    fn map_keys_count() {
        let mut map = rhai::Map::new();
        map.insert("k".repeat(10_000).into(), Dynamic::UNIT);
        let value = Dynamic::from_map(map);
        assert!(footprint(&value) > 10_000);
    }

    #[test]
    fn a_string_held_twice_counts_half_for_each() {
        let text = rhai::ImmutableString::from("s".repeat(10_000));
        let one = Dynamic::from(text.clone());
        let alone = footprint(&Dynamic::from("s".repeat(10_000)));
        assert!(footprint(&one) < alone / 2 + 100, "{}", footprint(&one));
        drop(text);
    }

    #[test]
    fn deep_nesting_is_counted_without_recursing_through_it() {
        let mut value = Dynamic::from("x".repeat(1000));
        for _ in 0..1000 {
            value = Dynamic::from_array(vec![value]);
        }
        assert!(footprint(&value) > 1000 + 1000 * ITEM);
    }

    #[test]
    fn a_connection_may_use_its_share_when_the_total_is_over() {
        let budget = Budget::new(1000 * 1024);
        for _ in 0..10 {
            budget.join();
        }
        budget.kept(0, 2000 * 1024);
        assert!(budget.check(200 * 1024, 0).is_ok(), "under the floor");
        assert!(budget.check(300 * 1024, 0).is_err(), "over its share");
        assert!(budget.check(2000 * 1024, 0).is_err(), "over the limit");
    }
}
