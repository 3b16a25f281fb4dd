//! Connections on threads with a runtime of their own. A connection's task
//! is woken by the reactor on its own thread, as in socat's poll loop: on
//! a shared runtime, one worker waits in `epoll_wait` and wakes another to
//! run what arrived, a futex call and a thread switch per round trip,
//! which one busy connection pays on every message.
//!
//! Unscripted connections share a lane per core ([`Lanes`]). A scripted
//! connection's hooks run on the thread that carries it, and one slow hook
//! must not hold up the connections beside it: it gets a lane to itself
//! while one of [`Solos`] is free, and the shared runtime otherwise, where
//! a slow hook hands its worker's other connections to a new thread.
//! Measured with the bench's pass-through script and one connection, a
//! lane of its own runs a round trip on 31 us of CPU where the shared
//! runtime takes 35, and turns 13,200 to 13,500 round trips/s against
//! 11,500 to 11,900.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::{Shared, connection};
use crate::console;

/// Accepted connections waiting for their lane; past this the accept loop
/// waits, and the kernel's backlog holds the rest.
const QUEUE: usize = 1024;

/// One accepted connection on its way to the thread that carries it: its
/// stream is a std one between runtimes.
pub(super) struct Job<S = std::net::TcpStream> {
    pub(super) stream: S,
    pub(super) peer: SocketAddr,
    pub(super) index: u64,
    pub(super) hard: watch::Receiver<bool>,
    /// Dropped when the connection is done (see `serve`).
    pub(super) done: mpsc::Sender<()>,
}

impl<S> Job<S> {
    /// The same job with its stream moved from one runtime to another
    /// (or out of any); `None`, counted and said, if the system refuses.
    pub(super) fn try_map<T>(
        self,
        move_stream: impl FnOnce(S) -> std::io::Result<T>,
        shared: &Shared,
    ) -> Option<Job<T>> {
        let Job {
            stream,
            peer,
            index,
            hard,
            done,
        } = self;
        match move_stream(stream) {
            Ok(stream) => Some(Job {
                stream,
                peer,
                index,
                hard,
                done,
            }),
            Err(e) => {
                console::err(&format!("#{index} {peer}: cannot take the connection: {e}"));
                shared.counts.errors.fetch_add(1, Ordering::Relaxed);
                shared.counts.connections.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

impl Job<tokio::net::TcpStream> {
    /// Carries the connection to its end.
    pub(super) async fn carry(self, shared: &Shared) {
        connection::proxy(self.stream, self.peer, self.index, shared, self.hard).await;
        drop(self.done);
    }
}

/// Starts `thread` running `body` on a current-thread runtime of
/// its own; `None` if the system refuses either.
fn own_runtime(
    thread: std::thread::Builder,
    body: impl std::future::Future<Output = ()> + Send + 'static,
) -> Option<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .ok()?;
    thread.spawn(move || runtime.block_on(body)).ok()?;
    Some(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The lanes' queues. Dropping them ends each lane once its connections
/// have ended; nothing waits for that beyond `serve`'s own grace period,
/// so a connection that never ends cannot hold the proxy's exit up.
pub(super) struct Lanes {
    queues: Vec<mpsc::Sender<Job>>,
    next: usize,
}

impl Lanes {
    /// A lane per core; `None` if the system refuses a thread or a
    /// runtime, and the shared runtime carries every connection instead.
    pub(super) fn start(shared: &Arc<Shared>) -> Option<Lanes> {
        let mut lanes = Lanes {
            queues: Vec::with_capacity(cores()),
            next: 0,
        };
        for _ in 0..cores() {
            let (queue, jobs) = mpsc::channel(QUEUE);
            let thread = std::thread::Builder::new().name("tcpscript-lane".into());
            own_runtime(thread, lane(jobs, shared.clone()))?;
            lanes.queues.push(queue);
        }
        Some(lanes)
    }

    /// Gives `job` to the next lane in turn.
    pub(super) async fn hand(&mut self, job: Job) {
        let lane = self.next % self.queues.len();
        self.next = self.next.wrapping_add(1);
        // A lane ends only once its queue is closed, when `self` goes.
        let _ = self.queues[lane].send(job).await;
    }
}

/// A lane: runs the connections it is given until its queue closes and
/// they have all ended.
async fn lane(mut jobs: mpsc::Receiver<Job>, shared: Arc<Shared>) {
    let mut running = JoinSet::new();
    loop {
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => {
                    let shared = shared.clone();
                    running.spawn(async move {
                        carry(job, &shared).await;
                    });
                }
                None => break,
            },
            // Reaped as they end, so that a long run holds no finished ones.
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    }
    while running.join_next().await.is_some() {}
}

async fn carry(job: Job, shared: &Shared) {
    if let Some(job) = job.try_map(tokio::net::TcpStream::from_std, shared) {
        job.carry(shared).await;
    }
}

/// Lanes for one scripted connection each, one per core.
pub(super) struct Solos {
    lanes: Vec<Solo>,
}

struct Solo {
    queue: mpsc::Sender<Job>,
    /// Set by the lane when its connection has ended; taken by `claim`.
    free: Arc<AtomicBool>,
}

impl Solos {
    /// A lane per core; `None` if the system refuses a thread or a runtime,
    /// and the shared runtime carries every connection instead.
    pub(super) fn start(shared: &Arc<Shared>) -> Option<Solos> {
        let mut lanes = Vec::with_capacity(cores());
        for _ in 0..cores() {
            let (queue, jobs) = mpsc::channel(1);
            let free = Arc::new(AtomicBool::new(true));
            // Hooks run here: the stack every script thread gets.
            let thread = crate::stack::thread("tcpscript-solo");
            own_runtime(thread, solo(jobs, shared.clone(), free.clone()))?;
            lanes.push(Solo { queue, free });
        }
        Some(Solos { lanes })
    }

    /// A free lane, taken: `hand` gives it its connection.
    pub(super) fn claim(&self) -> Option<usize> {
        self.lanes.iter().position(|lane| {
            lane.free
                .compare_exchange(true, false, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })
    }

    /// Gives `job` to the lane `claim` took, or gives it back if that
    /// lane is gone.
    pub(super) fn hand(&self, lane: usize, job: Job) -> Result<(), Job> {
        // The lane's one slot is empty: it took its last job before it
        // said it was free.
        self.lanes[lane]
            .queue
            .try_send(job)
            .map_err(|e| e.into_inner())
    }
}

/// A lane of [`Solos`]: one connection at a time until its queue closes.
async fn solo(mut jobs: mpsc::Receiver<Job>, shared: Arc<Shared>, free: Arc<AtomicBool>) {
    while let Some(job) = jobs.recv().await {
        let shared = shared.clone();
        // A task, so that a panic ends the connection, not the lane.
        let _ = tokio::spawn(async move { carry(job, &shared).await }).await;
        free.store(true, Ordering::Release);
    }
}
