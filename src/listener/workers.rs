//! Per-thread workers: one event loop per thread, each with its own pingora HTTP app, so
//! each thread has its own pass-through connector and keep-alive pool (nginx's per-worker
//! model; `server.work_stealing = false`, the default).
//!
//! With pingora's own layout, one service running `threads` single-threaded runtimes, every
//! connection pingora returns to its shared pool gets its idle-watch task on a *random*
//! thread (`pingora_runtime::current_handle`), and the next request that reuses it runs on
//! another: two or three cross-thread wake-ups per pass-through request, and a race in
//! which the pooled connection is dropped ("failed to acquire reusable stream"). Here the
//! listeners live in a one-thread acceptor service, and each worker is a pingora background
//! service with one thread of its own: pingora still owns its runtime (start-up, graceful
//! shutdown, `graceful_shutdown_timeout`), and inside it `current_handle` is that thread.
//! An accepted connection is handed to the worker with the fewest open connections and
//! stays there, with every request, pooled upstream connection and batch item it causes.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::runtime::Handle;

/// The workers one acceptor hands connections to.
pub struct Workers<A> {
    workers: Vec<Worker<A>>,
    /// Where the search for the least busy worker starts: ties go round-robin.
    next: AtomicUsize,
}

/// One worker thread: its app and, once its runtime runs, the handle to spawn onto.
pub(super) struct Worker<A> {
    pub(super) app: Arc<A>,
    handle: OnceLock<Handle>,
    open: AtomicUsize,
}

/// A connection counted on its worker until it is dropped.
pub(super) struct OnWorker<A: Send + Sync + 'static> {
    workers: Arc<Workers<A>>,
    index: usize,
}

impl<A: Send + Sync + 'static> Drop for OnWorker<A> {
    fn drop(&mut self) {
        if let Some(worker) = self.workers.workers.get(self.index) {
            worker.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<A: Send + Sync + 'static> OnWorker<A> {
    pub(super) fn worker(&self) -> &Worker<A> {
        &self.workers.workers[self.index]
    }
}

impl<A: Send + Sync + 'static> Worker<A> {
    /// The worker's runtime, once its service has started.
    pub(super) fn handle(&self) -> Option<&Handle> {
        self.handle.get()
    }
}

impl<A: Send + Sync + 'static> Workers<A> {
    /// One worker per app.
    pub fn new(apps: Vec<A>) -> Arc<Self> {
        Arc::new(Workers {
            workers: apps
                .into_iter()
                .map(|app| Worker {
                    app: Arc::new(app),
                    handle: OnceLock::new(),
                    open: AtomicUsize::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
        })
    }

    /// The background services that run the workers, one thread each; the acceptor service
    /// depends on them, so no connection arrives before every worker's runtime is known.
    pub fn services(self: &Arc<Self>) -> Vec<WorkerService<A>> {
        (0..self.workers.len())
            .map(|index| WorkerService {
                workers: self.clone(),
                index,
            })
            .collect()
    }

    /// Counts a new connection on the worker with the fewest open ones.
    pub(super) fn assign(self: &Arc<Self>) -> OnWorker<A> {
        let n = self.workers.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let index = (0..n)
            .map(|i| (start + i) % n)
            .min_by_key(|&i| {
                self.workers
                    .get(i)
                    .map_or(usize::MAX, |w| w.open.load(Ordering::Relaxed))
            })
            .unwrap_or(0);
        if let Some(worker) = self.workers.get(index) {
            worker.open.fetch_add(1, Ordering::Relaxed);
        }
        OnWorker {
            workers: self.clone(),
            index,
        }
    }

    pub(super) fn apps(&self) -> impl Iterator<Item = &Arc<A>> {
        self.workers.iter().map(|w| &w.app)
    }
}

/// Runs one worker's event loop: a pingora background service whose only work is being the
/// runtime connections are spawned onto.
pub struct WorkerService<A> {
    workers: Arc<Workers<A>>,
    index: usize,
}

#[async_trait]
impl<A: Send + Sync + 'static> BackgroundService for WorkerService<A> {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        if let Some(worker) = self.workers.workers.get(self.index) {
            let _ = worker.handle.set(Handle::current());
        }
        ready.notify_ready();
        // The runtime lives until pingora shuts it down; connections on it end with it.
        let _ = shutdown.wait_for(|down| *down).await;
    }
}
