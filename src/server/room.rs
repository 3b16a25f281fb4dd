//! What connections of one server share: the room (who is connected, for
//! `broadcast` and `peers()`) and the shared store (state across
//! connections, for counters and chat nicknames).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use rhai::{Dynamic, Map};
use tokio::sync::mpsc;

/// Broadcasts waiting for one connection. A member that falls this far
/// behind loses broadcasts rather than making the server buffer without
/// bound.
pub(crate) const BROADCAST_BACKLOG: usize = 256;

/// One connected peer as the others see it.
struct Member {
    peer: String,
    inbox: mpsc::Sender<Bytes>,
}

/// The connections of a server whose script broadcasts.
#[derive(Default)]
pub(crate) struct Room {
    next_id: AtomicU64,
    /// Ordered by id, so `peers()` lists connections in the order they came.
    members: Mutex<BTreeMap<u64, Member>>,
}

impl Room {
    fn members(&self) -> MutexGuard<'_, BTreeMap<u64, Member>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a connection; returns its id and where its broadcasts arrive.
    pub(crate) fn join(&self, peer: String) -> (u64, mpsc::Receiver<Bytes>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (inbox, receiver) = mpsc::channel(BROADCAST_BACKLOG);
        self.members().insert(id, Member { peer, inbox });
        (id, receiver)
    }

    pub(crate) fn leave(&self, id: u64) {
        self.members().remove(&id);
    }

    /// Sends `message` to every member but `from`; returns the peers that
    /// were too far behind to take it.
    pub(crate) fn broadcast(&self, from: u64, message: &Bytes) -> Vec<String> {
        let mut lagging = Vec::new();
        for (id, member) in self.members().iter() {
            if *id != from && member.inbox.try_send(message.clone()).is_err() {
                lagging.push(member.peer.clone());
            }
        }
        lagging
    }

    /// Everyone connected, oldest first.
    pub(crate) fn peers(&self) -> Vec<String> {
        self.members().values().map(|m| m.peer.clone()).collect()
    }
}

/// State shared by all connections: a map guarded by one lock. Each call
/// is atomic; `shared_update` makes a read-modify-write atomic too.
#[derive(Default)]
pub(crate) struct SharedStore {
    values: Mutex<Map>,
}

impl SharedStore {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Map> {
        self.values.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, key: &str) -> Option<Dynamic> {
        self.lock().get(key).cloned()
    }

    pub(crate) fn set(&self, key: &str, value: Dynamic) {
        self.lock().insert(key.into(), value);
    }

    pub(crate) fn remove(&self, key: &str) -> Option<Dynamic> {
        self.lock().remove(key)
    }

    pub(crate) fn keys(&self) -> Vec<String> {
        self.lock().keys().map(|k| k.to_string()).collect()
    }
}
