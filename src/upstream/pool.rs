//! Idle HTTP/1.1 connections to one upstream address, kept for the next item.
//!
//! Connections are made by pingora's `TransportConnector` (its connect timeout and socket
//! options); this pool only keeps the idle ones. It replaces pingora's keep-alive pool for batch
//! items because that one costs, per item, a spawned idle-watch task, a `getpeername` system
//! call, an LRU update and a lock hand-off, about a fifth of batchgate's CPU per item
//! (docs/PERFORMANCE.md). Here checkout and return are a `Vec` pop and push under an
//! uncontended mutex, and one sweeper task per pool closes connections idle for longer than the
//! upstream's `idle_timeout` or closed by the upstream.
//!
//! The newest idle connection is handed out first, so under light load the same few stay warm
//! and the rest age out.
//!
//! Idle connections are kept per thread (a shard per worker thread), and a connection always
//! goes back to the shard of the thread that opened it. With pingora's default of one
//! single-threaded runtime per thread, a socket's readiness is reported by the runtime that
//! registered it: an item on another thread would need a cross-thread wake-up for every read.
//! A thread whose shard is empty opens a connection of its own rather than borrowing one.

use pingora::protocols::Stream;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// How often the sweeper looks at idle connections, at most.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Shards per pool; threads beyond this share shards (still correct, only less local).
pub(super) const SHARDS: usize = 16;

thread_local! {
    /// This thread's shard, assigned on first use.
    static HOME: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
    };
}

/// The current thread's shard.
pub(super) fn home() -> usize {
    HOME.try_with(|home| *home).unwrap_or(0)
}

/// A connection and the shard it belongs to.
pub struct Conn {
    pub stream: Stream,
    home: usize,
}

impl Conn {
    /// A connection opened on this thread.
    pub fn new(stream: Stream) -> Self {
        Conn {
            stream,
            home: home(),
        }
    }
}

pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    shards: Vec<Mutex<Idle>>,
    /// Most idle connections per shard.
    max_idle: usize,
    idle_timeout: Duration,
    sweeper_started: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Idle {
    /// Oldest first.
    connections: Vec<(Stream, Instant)>,
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Pool {
            shared: Arc::new(Shared {
                shards: (0..SHARDS).map(|_| Mutex::new(Idle::default())).collect(),
                max_idle,
                idle_timeout,
                sweeper_started: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The most recently returned connection of this thread's shard that is still usable.
    pub fn take(&self) -> Option<Conn> {
        let home = home();
        loop {
            let (mut stream, since) = self.shared.lock(home)?.connections.pop()?;
            // Dropped (closed) outside the lock when stale.
            if since.elapsed() < self.shared.idle_timeout && still_open(&mut stream) {
                return Some(Conn { stream, home });
            }
        }
    }

    /// Keeps `conn` in its shard for the next item, unless the shard is full.
    pub fn put(&self, conn: Conn) {
        {
            let Some(mut idle) = self.shared.lock(conn.home) else {
                return;
            };
            if idle.connections.len() >= self.shared.max_idle {
                return;
            }
            idle.connections.push((conn.stream, Instant::now()));
        }
        let start_sweeper = !self.shared.sweeper_started.swap(true, Ordering::Relaxed);
        if start_sweeper {
            // Items always run on a runtime; without one the pool just has no sweeper.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(sweep(Arc::downgrade(&self.shared)));
            }
        }
    }
}

impl Shared {
    fn lock(&self, shard: usize) -> Option<MutexGuard<'_, Idle>> {
        // Nothing in the critical sections can panic, but a poisoned pool is still a pool.
        let shard = self.shards.get(shard)?;
        Some(
            shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

/// Closes expired and upstream-closed idle connections until the pool is dropped.
async fn sweep(shared: Weak<Shared>) {
    let interval = match shared.upgrade() {
        Some(shared) => {
            (shared.idle_timeout / 2).clamp(Duration::from_millis(10), MAX_SWEEP_INTERVAL)
        }
        None => return,
    };
    loop {
        tokio::time::sleep(interval).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        for shard in 0..SHARDS {
            let mut stale = Vec::new();
            if let Some(mut idle) = shared.lock(shard) {
                let mut keep = Vec::with_capacity(idle.connections.len());
                for (mut stream, since) in std::mem::take(&mut idle.connections) {
                    if since.elapsed() < shared.idle_timeout && still_open(&mut stream) {
                        keep.push((stream, since));
                    } else {
                        stale.push(stream);
                    }
                }
                idle.connections = keep;
            }
            // Closed here, outside the lock.
            drop(stale);
        }
    }
}

/// An idle connection is usable if reading from it would block: no EOF, no error, and no
/// bytes the upstream sent unasked (pingora's `test_reusable_stream` rule). This costs no
/// system call unless the runtime saw the socket become readable.
fn still_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    // `unconstrained`: an exhausted cooperative budget would also answer "pending".
    let read = std::pin::pin!(tokio::task::unconstrained(stream.read(&mut byte)));
    read.poll(&mut Context::from_waker(Waker::noop()))
        .is_pending()
}
