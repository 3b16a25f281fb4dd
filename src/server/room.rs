//! What connections of one server share: the room (who is connected, for
//! `broadcast` and `peers()`) and the shared store (state across
//! connections, for counters and chat nicknames).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rhai::{Dynamic, INT};
use tokio::sync::mpsc;

use crate::console;
use crate::memory::full_footprint;
use crate::transcript::Verbosity;

/// Bytes of broadcasts waiting for one connection. A member that falls
/// this far behind loses broadcasts rather than making the server buffer
/// without bound; one message larger than this still reaches a member that
/// has nothing waiting.
pub(crate) const BROADCAST_BACKLOG: usize = 4 * 1024 * 1024;
/// What each waiting broadcast counts beyond its bytes, so that many empty
/// messages cannot pile up for free.
const MESSAGE_COST: usize = 64;
/// Dropped broadcasts are reported at most this often.
const DROP_NOTE_EVERY: Duration = Duration::from_secs(1);

/// One connected peer as the others see it.
struct Member {
    peer: String,
    inbox: mpsc::UnboundedSender<Bytes>,
    /// Bytes sent to the inbox and not yet taken out of it.
    waiting: Arc<AtomicUsize>,
}

/// Where a connection's broadcasts arrive.
pub(crate) struct Inbox {
    receiver: mpsc::UnboundedReceiver<Bytes>,
    waiting: Arc<AtomicUsize>,
}

impl Inbox {
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let polled = self.receiver.poll_recv(cx);
        if let Poll::Ready(Some(message)) = &polled {
            self.waiting
                .fetch_sub(message.len() + MESSAGE_COST, Ordering::Relaxed);
        }
        polled
    }
}

/// The connections of a server whose script broadcasts.
pub(crate) struct Room {
    next_id: AtomicU64,
    /// Ordered by id, so `peers()` lists connections in the order they came.
    members: Mutex<BTreeMap<u64, Member>>,
    dropped: AtomicU64,
    /// Drops not yet reported, and when the last report was.
    unreported: Mutex<(u64, Option<Instant>)>,
    verbosity: Verbosity,
}

impl Room {
    pub(crate) fn new(verbosity: Verbosity) -> Self {
        Room {
            next_id: AtomicU64::new(0),
            members: Mutex::new(BTreeMap::new()),
            dropped: AtomicU64::new(0),
            unreported: Mutex::new((0, None)),
            verbosity,
        }
    }

    fn members(&self) -> MutexGuard<'_, BTreeMap<u64, Member>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a connection; returns its id and where its broadcasts arrive.
    pub(crate) fn join(&self, peer: String) -> (u64, Inbox) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (inbox, receiver) = mpsc::unbounded_channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        self.members().insert(
            id,
            Member {
                peer,
                inbox,
                waiting: waiting.clone(),
            },
        );
        (id, Inbox { receiver, waiting })
    }

    pub(crate) fn leave(&self, id: u64) {
        self.members().remove(&id);
    }

    /// Sends `message` to every member but `from`. A member whose backlog
    /// would pass [`BROADCAST_BACKLOG`] misses it.
    pub(crate) fn broadcast(&self, from: u64, message: Bytes) {
        let cost = message.len() + MESSAGE_COST;
        let mut dropped = 0;
        for (id, member) in self.members().iter() {
            if *id == from {
                continue;
            }
            let admitted = member
                .waiting
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |waiting| {
                    (waiting == 0 || waiting + cost <= BROADCAST_BACKLOG).then_some(waiting + cost)
                })
                .is_ok();
            if !admitted {
                dropped += 1;
            } else if member.inbox.send(message.clone()).is_err() {
                // Leaving: nobody will take it out again.
                member.waiting.fetch_sub(cost, Ordering::Relaxed);
            }
        }
        if dropped > 0 {
            self.note_dropped(dropped);
        }
    }

    /// One line a second at most, however many broadcasts are dropped.
    fn note_dropped(&self, count: u64) {
        self.dropped.fetch_add(count, Ordering::Relaxed);
        let mut unreported = self.unreported.lock().unwrap_or_else(|e| e.into_inner());
        unreported.0 += count;
        let due = unreported
            .1
            .is_none_or(|last| last.elapsed() >= DROP_NOTE_EVERY);
        if due && self.verbosity >= Verbosity::Normal {
            console::err(&format!(
                "{} broadcasts dropped: their receivers read too slowly (more than {} MiB waiting each)",
                unreported.0,
                BROADCAST_BACKLOG / (1024 * 1024)
            ));
            *unreported = (0, Some(Instant::now()));
        }
    }

    /// Broadcasts dropped since the server started.
    pub(crate) fn broadcasts_dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Everyone connected, oldest first.
    pub(crate) fn peers(&self) -> Vec<String> {
        self.members().values().map(|m| m.peer.clone()).collect()
    }
}

/// How many keys the shared store holds at most.
pub(crate) const STORE_MAX_KEYS: usize = 10_000;
/// How many bytes its keys and values take at most (see [`footprint`]).
pub(crate) const STORE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// How often `shared_update` runs its function again when other
/// connections keep changing the value under it.
const UPDATE_ATTEMPTS: usize = 64;

/// State shared by all connections. Values are kept behind `Arc`s, so a
/// read holds the lock only to copy a pointer, and script code never runs
/// under it: `shared_update` runs its function on a copy and stores the
/// result only if nobody changed the value meanwhile, else runs it again.
#[derive(Default)]
pub(crate) struct SharedStore {
    state: Mutex<Store>,
}

#[derive(Default)]
struct Store {
    slots: HashMap<String, Slot>,
    bytes: usize,
    /// Stamped on every write, so an update can tell that its value moved.
    writes: u64,
}

struct Slot {
    value: Arc<Dynamic>,
    bytes: usize,
    version: u64,
}

/// Why the store refused a write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StoreError {
    #[error(
        "the shared store is full: it holds {STORE_MAX_KEYS} keys, its limit (remove some with shared_remove)"
    )]
    TooManyKeys,
    #[error(
        "the shared store is full: storing `{key}` ({size} bytes) would take it past its limit of {} MiB",
        STORE_MAX_BYTES / (1024 * 1024)
    )]
    TooManyBytes { key: String, size: usize },
    #[error(
        "shared_update(`{0}`): other connections changed the value {UPDATE_ATTEMPTS} times while the function ran"
    )]
    Contended(String),
    #[error("shared_add: `{key}` holds a {kind}, not an integer")]
    NotAnInteger { key: String, kind: &'static str },
    #[error("shared_add overflowed")]
    Overflow,
}

impl SharedStore {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the value: the deep copy is made outside the lock.
    pub(crate) fn get(&self, key: &str) -> Option<Dynamic> {
        let value = self.lock().slots.get(key).map(|slot| slot.value.clone())?;
        Some((*value).clone())
    }

    pub(crate) fn set(&self, key: &str, value: Dynamic) -> Result<(), StoreError> {
        let old = self.write(key, value, None)?;
        drop(old);
        Ok(())
    }

    pub(crate) fn remove(&self, key: &str) -> Option<Dynamic> {
        let slot = {
            let mut store = self.lock();
            let slot = store.slots.remove(key)?;
            store.bytes -= slot.bytes;
            slot
        };
        Some(Arc::try_unwrap(slot.value).unwrap_or_else(|shared| (*shared).clone()))
    }

    pub(crate) fn keys(&self) -> Vec<String> {
        self.lock().slots.keys().cloned().collect()
    }

    pub(crate) fn add(&self, key: &str, by: INT) -> Result<INT, StoreError> {
        let mut store = self.lock();
        let current = match store.slots.get(key) {
            None => 0,
            Some(slot) => slot
                .value
                .as_int()
                .map_err(|kind| StoreError::NotAnInteger {
                    key: key.to_string(),
                    kind,
                })?,
        };
        let sum = current.checked_add(by).ok_or(StoreError::Overflow)?;
        store.install(key, Dynamic::from(sum))?;
        Ok(sum)
    }

    /// Replaces the value with `update(value)`, as if atomically: `update`
    /// runs without the lock, and again if the value changed meanwhile.
    pub(crate) fn update<E: From<StoreError>>(
        &self,
        key: &str,
        mut update: impl FnMut(Dynamic) -> Result<Dynamic, E>,
    ) -> Result<Dynamic, E> {
        for _ in 0..UPDATE_ATTEMPTS {
            let (current, version) = match self.lock().slots.get(key) {
                Some(slot) => (Some(slot.value.clone()), Some(slot.version)),
                None => (None, None),
            };
            let current = current.map_or(Dynamic::UNIT, |value| (*value).clone());
            let updated = update(current)?.flatten();
            let old = self.write(key, updated.clone(), Some(version))?;
            match old {
                Written::Stale => continue,
                Written::Replaced(old) => {
                    drop(old);
                    return Ok(updated);
                }
            }
        }
        Err(StoreError::Contended(key.to_string()).into())
    }

    /// Stores `value` under `key`; with `expected`, only if the key's
    /// version is still that (`None`: still absent). The footprint is
    /// measured, and the old value dropped, outside the lock.
    fn write(
        &self,
        key: &str,
        value: Dynamic,
        expected: Option<Option<u64>>,
    ) -> Result<Written, StoreError> {
        let bytes = full_footprint(&value) + key.len();
        let mut store = self.lock();
        if let Some(expected) = expected
            && store.slots.get(key).map(|slot| slot.version) != expected
        {
            return Ok(Written::Stale);
        }
        store
            .install_measured(key, value, bytes)
            .map(Written::Replaced)
    }
}

enum Written {
    Stale,
    Replaced(Option<Arc<Dynamic>>),
}

impl Store {
    fn install(&mut self, key: &str, value: Dynamic) -> Result<Option<Arc<Dynamic>>, StoreError> {
        let bytes = full_footprint(&value) + key.len();
        self.install_measured(key, value, bytes)
    }

    fn install_measured(
        &mut self,
        key: &str,
        value: Dynamic,
        bytes: usize,
    ) -> Result<Option<Arc<Dynamic>>, StoreError> {
        let replaced = self.slots.get(key).map_or(0, |slot| slot.bytes);
        if replaced == 0 && !self.slots.contains_key(key) && self.slots.len() >= STORE_MAX_KEYS {
            return Err(StoreError::TooManyKeys);
        }
        if self.bytes - replaced + bytes > STORE_MAX_BYTES {
            return Err(StoreError::TooManyBytes {
                key: key.to_string(),
                size: bytes,
            });
        }
        self.writes += 1;
        let slot = Slot {
            value: Arc::new(value),
            bytes,
            version: self.writes,
        };
        self.bytes = self.bytes - replaced + bytes;
        Ok(self
            .slots
            .insert(key.to_string(), slot)
            .map(|old| old.value))
    }
}
