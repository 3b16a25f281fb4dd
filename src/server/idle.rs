//! `--idle-timeout` for TCP connections, kept off the runtime's timers.
//!
//! A timer per connection, restarted at every message, left the runtime
//! always holding one, and a runtime that holds a timer passes its deadline
//! to every wait for the network: the kernel then arms and cancels a timer
//! for each wait, 2 to 3 µs apiece in a virtual machine (see `alarm`). One
//! connection's echo cost 30 % more CPU with `--idle-timeout 30s` than
//! without. Here each connection only notes when it last became ready for
//! its peer, and one thread per server looks over all of them a few times
//! per limit, waking those idle past it. A connection closes between the
//! limit and the limit plus one look (an eighth of it, from 10 ms to 1 s),
//! never before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The idle limit of one server's connections.
pub(crate) struct IdleClock {
    shared: Arc<Shared>,
}

struct Shared {
    limit: Duration,
    /// What `last` counts from.
    start: Instant,
    /// Every connection watched; gone ones are dropped at each look.
    watches: Mutex<Vec<Weak<Watch>>>,
}

/// One connection's part.
pub(crate) struct Watch {
    /// Milliseconds from the clock's start to when the connection last
    /// became ready for its peer.
    last: AtomicU64,
    /// Told when the connection has been idle past the limit; the
    /// connection checks the time itself before closing.
    pub(crate) rung: Notify,
}

impl IdleClock {
    /// The clock and its thread, which ends once the clock is dropped.
    pub(crate) fn start(limit: Duration) -> std::io::Result<IdleClock> {
        let shared = Arc::new(Shared {
            limit,
            start: Instant::now(),
            watches: Mutex::new(Vec::new()),
        });
        let look = (limit / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("tcpscript-idle".into())
            // It only compares numbers: the smallest stack will do.
            .stack_size(64 * 1024)
            .spawn(move || {
                loop {
                    std::thread::sleep(look);
                    let Some(shared) = weak.upgrade() else {
                        return;
                    };
                    shared.look();
                }
            })?;
        Ok(IdleClock { shared })
    }

    pub(crate) fn limit(&self) -> Duration {
        self.shared.limit
    }

    /// A new connection's watch, ready now.
    pub(crate) fn watch(&self) -> Arc<Watch> {
        let watch = Arc::new(Watch {
            last: AtomicU64::new(self.shared.now()),
            rung: Notify::new(),
        });
        self.shared
            .watches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(&watch));
        watch
    }

    /// The connection is ready for its peer again: its idle time starts.
    pub(crate) fn ready(&self, watch: &Watch) {
        watch.last.store(self.shared.now(), Ordering::Relaxed);
    }

    /// Whether the connection has been idle past the limit.
    pub(crate) fn expired(&self, watch: &Watch) -> bool {
        self.shared.expired(watch, self.shared.now())
    }
}

impl Shared {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn expired(&self, watch: &Watch, now: u64) -> bool {
        let idle = now.saturating_sub(watch.last.load(Ordering::Relaxed));
        u128::from(idle) >= self.limit.as_millis()
    }

    /// Wakes every connection idle past the limit, and forgets gone ones.
    fn look(&self) {
        let now = self.now();
        let mut watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        watches.retain(|watch| match watch.upgrade() {
            Some(watch) => {
                if self.expired(&watch, now) {
                    watch.rung.notify_one();
                }
                true
            }
            None => false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn a_watch_rings_once_idle_past_the_limit_and_not_before() {
        runtime().block_on(async {
            let clock = IdleClock::start(Duration::from_millis(100)).unwrap();
            let watch = clock.watch();
            let start = Instant::now();
            watch.rung.notified().await;
            assert!(start.elapsed() >= Duration::from_millis(100));
            assert!(clock.expired(&watch));
            clock.ready(&watch);
            assert!(!clock.expired(&watch));
        });
    }

    #[test]
    fn a_watch_kept_ready_never_rings() {
        runtime().block_on(async {
            let clock = IdleClock::start(Duration::from_millis(100)).unwrap();
            let watch = clock.watch();
            for _ in 0..10 {
                clock.ready(&watch);
                let rang =
                    tokio::time::timeout(Duration::from_millis(30), watch.rung.notified()).await;
                assert!(rang.is_err(), "rang while the connection was busy");
            }
        });
    }
}
