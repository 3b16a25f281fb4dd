//! Stopping a server: SIGINT or SIGTERM, then a grace period in which open
//! connections finish what they are doing, then a hard stop that cuts every
//! remaining wait (a long `sleep`, a peer that reads nothing) so that every
//! connection still ends through its `on_disconnect` and is counted.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::error::Error;

/// How long open connections may go on after the server is told to stop.
pub(crate) const GRACE: Duration = Duration::from_secs(5);

/// Tells every open connection that the server is stopping. Each one waits
/// on a oneshot of its own for the graceful stop: with one shared `watch`
/// or `Notify`, every connection would take the same lock once per message
/// to re-arm its waiter. The hard stop is a shared `watch`, looked at only
/// while a connection is already waiting on something slow.
pub(super) struct Stopping {
    waiting: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_id: AtomicU64,
    hard: watch::Sender<bool>,
}

/// One connection's side of [`Stopping`]; it leaves the roster when dropped.
pub(super) struct StopSignal {
    stopping: Arc<Stopping>,
    id: u64,
    graceful: oneshot::Receiver<()>,
    hard: watch::Receiver<bool>,
}

impl Stopping {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Stopping {
            waiting: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            hard: watch::Sender::new(false),
        })
    }

    pub(super) fn watch(self: &Arc<Self>) -> StopSignal {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, graceful) = oneshot::channel();
        self.roster().insert(id, sender);
        StopSignal {
            stopping: self.clone(),
            id,
            graceful,
            hard: self.hard.subscribe(),
        }
    }

    /// Connections finish their current message, then end.
    pub(super) fn stop_gracefully(&self) {
        for (_, sender) in self.roster().drain() {
            let _ = sender.send(());
        }
    }

    /// Whatever a connection still waits for is given up.
    pub(super) fn stop_now(&self) {
        self.hard.send_replace(true);
    }

    fn roster(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<()>>> {
        // A panic elsewhere cannot leave the map half-updated: use it anyway.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StopSignal {
    /// Ready once the server is stopping (gracefully or not).
    pub(super) fn poll_stopping(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.graceful).poll(cx).map(|_| ())
    }

    /// Whether the grace period is over.
    pub(super) fn is_hard(&self) -> bool {
        *self.hard.borrow()
    }

    /// Completes when the grace period is over.
    pub(super) async fn hard(&mut self) {
        // An error means the server is gone: stop as well.
        let _ = self.hard.wait_for(|stopped| *stopped).await;
    }
}

impl Drop for StopSignal {
    fn drop(&mut self) {
        self.stopping.roster().remove(&self.id);
    }
}

/// Completes at SIGINT or SIGTERM. The handlers are installed here, when
/// called, not when the future is first polled: a signal sent as soon as
/// `listening on` is printed must already stop the server gracefully
/// rather than kill it with replies still unsent.
pub(crate) fn signal() -> Result<impl Future<Output = ()>, Error> {
    let failed = |source: io::Error| Error::System {
        action: "watch for signals",
        source,
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).map_err(failed)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(failed)?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        let _ = failed;
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// What the summary at shutdown adds up; each connection adds its own
/// counts when it ends, and every connection ends before the summary.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) connections: AtomicU64,
    pub(super) messages_in: AtomicU64,
    pub(super) messages_out: AtomicU64,
    pub(super) errors: AtomicU64,
    /// Connections still open when the server gave up waiting for them.
    pub(super) unfinished: AtomicU64,
}

impl Counts {
    pub(super) fn summary(&self, broadcasts_dropped: u64) -> String {
        self.summary_of("connections", broadcasts_dropped)
    }

    /// The summary, counting `what` (UDP counts sessions).
    pub(super) fn summary_of(&self, what: &str, broadcasts_dropped: u64) -> String {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let mut line = format!(
            "shut down: {} {what}, {} messages in, {} out, {} errors",
            load(&self.connections),
            load(&self.messages_in),
            load(&self.messages_out),
            load(&self.errors),
        );
        if broadcasts_dropped > 0 {
            line += &format!(", {broadcasts_dropped} broadcasts dropped");
        }
        let unfinished = load(&self.unfinished);
        if unfinished > 0 {
            line += &format!(" ({unfinished} connections had not finished and are not counted)");
        }
        line
    }
}
