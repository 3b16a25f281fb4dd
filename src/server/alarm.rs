//! A wake-up at a time, kept by a thread of its own rather than by the
//! runtime's timers.
//!
//! While a runtime holds any timer, every time it waits for the network it
//! asks the kernel to wake it by that timer's deadline too, and the kernel
//! arms and cancels a timer for each of those waits. In a virtual machine
//! that costs 2 to 3 µs a wait: a UDP server with one busy peer waits once
//! per datagram, and its idle limit (always armed while a session lives)
//! cost it a fifth of its CPU. This thread waits for the deadline instead,
//! and re-arms only when the deadline comes sooner. The UDP server keeps
//! its pauses (`sleep()` in a hook) here too, so its runtime has no timer
//! driver at all: one that has reads the clock and locks the driver
//! around every wait.
//!
//! It rings through a flag and the waker last registered, not a `Notify`:
//! the loop looks at the alarm before every wait, and a `Notify` takes a
//! lock to put its waiter in and again to take it out each time, which
//! cost a datagram about 500 instructions. The waker stays registered, so
//! a loop whose waker does not change looks at one flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::Instant;

pub(crate) struct Alarm {
    shared: Arc<Shared>,
    /// The deadline last given, so that an unchanged one costs no lock.
    due: Option<Instant>,
    /// The waker last given to the thread: the same one again is not.
    registered: Option<Waker>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    rung: AtomicBool,
    /// Set by [`Stopper::stop`], which rings too: the loop that waits on
    /// its alarm learns it is to stop with no other future to look at.
    stopped: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

#[derive(Default)]
struct State {
    due: Option<Instant>,
    stop: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn ring(&self) {
        self.rung.store(true, Ordering::Release);
        if let Some(waker) = lock(&self.waker).as_ref() {
            waker.wake_by_ref();
        }
    }
}

impl Alarm {
    pub(crate) fn new() -> std::io::Result<Alarm> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            rung: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        let thread = std::thread::Builder::new()
            .name("tcpscript-alarm".into())
            // It only waits: the smallest stack will do.
            .stack_size(64 * 1024)
            .spawn({
                let shared = shared.clone();
                move || keep(&shared)
            })?;
        Ok(Alarm {
            shared,
            due: None,
            registered: None,
            thread: Some(thread),
        })
    }

    /// What tells the loop to stop, from elsewhere.
    pub(crate) fn stopper(&self) -> Stopper {
        Stopper {
            shared: self.shared.clone(),
        }
    }

    /// Whether [`Stopper::stop`] was called; it rings the alarm too.
    pub(crate) fn stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }

    /// Rings by `due`: a setting already earlier is kept, as the caller
    /// looks at the time itself when it rings (moving the deadline later
    /// at every datagram woke the thread at every datagram); `None` unsets
    /// it.
    pub(crate) fn set_by(&mut self, due: Option<Instant>) {
        if let (Some(current), Some(due)) = (self.due, due)
            && current <= due
        {
            return;
        }
        self.set(due);
    }

    /// Rings at `due`, or never (`None`), instead of any earlier setting.
    fn set(&mut self, due: Option<Instant>) {
        if self.due == due {
            return;
        }
        self.due = due;
        self.shared.lock().due = due;
        self.shared.changed.notify_one();
    }

    /// Completes once the deadline set has passed; the alarm is then unset
    /// until set again. A ring that came while nobody waited is kept for
    /// the next wait, so none is lost; it may come late for a deadline
    /// changed since, and the caller looks at the time itself.
    #[cfg(test)]
    pub(crate) async fn rung(&mut self) {
        std::future::poll_fn(|cx| self.poll_rung(cx)).await;
    }

    /// [`Alarm::rung`] as a poll, for a loop that waits on several things.
    pub(crate) fn poll_rung(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            let waker = cx.waker().clone();
            // Registered before the flag is looked at: a ring after this
            // wakes it, one before is seen below.
            *lock(&self.shared.waker) = Some(waker.clone());
            self.registered = Some(waker);
        }
        if self.shared.rung.load(Ordering::Relaxed)
            && self.shared.rung.swap(false, Ordering::Acquire)
        {
            self.due = None;
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// Tells the loop waiting on an [`Alarm`] to stop.
pub(crate) struct Stopper {
    shared: Arc<Shared>,
}

impl Stopper {
    pub(crate) fn stop(self) {
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.ring();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing under these locks can panic half-way.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for Alarm {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The alarm's thread: waits for the deadline, rings, and waits for the
/// next, until told to stop.
fn keep(shared: &Shared) {
    let mut state = shared.lock();
    while !state.stop {
        state = match state.due {
            None => shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner),
            Some(due) => {
                let now = Instant::now();
                if due <= now {
                    state.due = None;
                    shared.ring();
                    continue;
                }
                shared
                    .changed
                    .wait_timeout(state, due - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn it_rings_at_the_deadline_and_not_before() {
        runtime().block_on(async {
            let mut alarm = Alarm::new().unwrap();
            let start = Instant::now();
            alarm.set(Some(start + Duration::from_millis(50)));
            alarm.rung().await;
            assert!(start.elapsed() >= Duration::from_millis(50));
        });
    }

    #[test]
    fn a_stopper_rings_an_alarm_that_is_not_due_and_says_stop() {
        runtime().block_on(async {
            let mut alarm = Alarm::new().unwrap();
            alarm.set(Some(Instant::now() + Duration::from_secs(60)));
            let stopper = alarm.stopper();
            assert!(!alarm.stopped());
            std::thread::spawn(move || stopper.stop());
            let waited = tokio::time::timeout(Duration::from_secs(5), alarm.rung()).await;
            assert!(waited.is_ok(), "a stop did not ring the alarm");
            assert!(alarm.stopped());
        });
    }

    #[test]
    fn set_by_keeps_an_earlier_ring_and_takes_an_earlier_deadline() {
        runtime().block_on(async {
            let mut alarm = Alarm::new().unwrap();
            let start = Instant::now();
            alarm.set_by(Some(start + Duration::from_millis(40)));
            alarm.set_by(Some(start + Duration::from_secs(60)));
            alarm.rung().await;
            let rang = start.elapsed();
            assert!(rang >= Duration::from_millis(40), "rang after {rang:?}");
            assert!(rang < Duration::from_secs(30), "rang after {rang:?}");

            let start = Instant::now();
            alarm.set_by(Some(start + Duration::from_secs(60)));
            alarm.set_by(Some(start + Duration::from_millis(20)));
            alarm.rung().await;
            assert!(start.elapsed() < Duration::from_secs(30));
        });
    }

    #[test]
    fn a_later_deadline_replaces_an_earlier_one_and_none_unsets_it() {
        runtime().block_on(async {
            let mut alarm = Alarm::new().unwrap();
            let start = Instant::now();
            alarm.set(Some(start + Duration::from_millis(20)));
            alarm.set(Some(start + Duration::from_millis(80)));
            alarm.rung().await;
            assert!(start.elapsed() >= Duration::from_millis(80));

            alarm.set(Some(Instant::now() + Duration::from_millis(20)));
            alarm.set(None);
            let waited = tokio::time::timeout(Duration::from_millis(100), alarm.rung()).await;
            assert!(waited.is_err(), "an unset alarm rang");
        });
    }
}
