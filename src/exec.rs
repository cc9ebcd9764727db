//! The executor: runs one batch's items with bounded concurrency and a deadline.
//!
//! It knows no dialect and no socket. Items go to an `Upstream` (one method), at most
//! `concurrency` of one batch and at most the global semaphore's permits across all batches.
//! When the batch deadline passes, the reply is built at once: unfinished items become
//! `DeadlineExceeded`. Dropping the future returned by `run` (client gone) aborts every item
//! task, so items waiting for a permit are never started.

use crate::dialect::{Outcome, SubRequest};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Sends one sub-request and reports what happened. Implemented over pingora's connector in
/// `upstream.rs`, and by in-memory fakes in tests.
pub trait Upstream: Send + Sync + 'static {
    fn send(&self, request: SubRequest) -> impl Future<Output = Outcome> + Send;
}

/// Hooks for metrics and logs; the executor itself records nothing.
pub trait Observer: Send + Sync + 'static {
    /// An item got its permits after waiting `waited`.
    fn started(&self, _index: usize, _waited: Duration) {}
    /// An item that was sent finished after `elapsed` (from start, not from queueing).
    fn finished(&self, _index: usize, _outcome: &Outcome, _elapsed: Duration) {}
}

/// An observer that records nothing.
pub struct NoObserver;
impl Observer for NoObserver {}

/// Limits of one batch run.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Items of this batch in flight at once.
    pub concurrency: usize,
    /// Time one item may take once it holds its permits.
    pub item_timeout: Duration,
    /// When the reply must go out, finished or not.
    pub deadline: Instant,
    /// Largest sum of upstream bodies kept for the reply.
    pub max_reply_bytes: usize,
}

/// Runs every item and returns one outcome per item, in input order. Items that are already
/// decided (`Err(outcome)`: refused by the dialect) are passed through and never sent.
pub async fn run<U: Upstream, O: Observer>(
    limits: &Limits,
    global: &Arc<Semaphore>,
    items: Vec<Result<SubRequest, Outcome>>,
    upstream: &Arc<U>,
    observer: &Arc<O>,
) -> Vec<Outcome> {
    let mut slots: Vec<Option<Outcome>> = Vec::with_capacity(items.len());
    let batch_permits = Arc::new(Semaphore::new(limits.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for (index, item) in items.into_iter().enumerate() {
        match item {
            Err(decided) => slots.push(Some(decided)),
            Ok(request) => {
                slots.push(None);
                tasks.spawn(run_item(
                    index,
                    request,
                    limits.clone(),
                    batch_permits.clone(),
                    global.clone(),
                    upstream.clone(),
                    observer.clone(),
                ));
            }
        }
    }

    let mut reply_bytes = 0usize;
    let collected = tokio::time::timeout_at(limits.deadline, async {
        while let Some(joined) = tasks.join_next().await {
            // A task only fails to join if it panicked; its slot stays empty and is
            // reported below as an upstream failure instead of taking the batch down.
            let Ok((index, mut outcome)) = joined else {
                continue;
            };
            if let Outcome::Response(response) = &outcome {
                reply_bytes = reply_bytes.saturating_add(response.body.len());
                if reply_bytes > limits.max_reply_bytes {
                    outcome = Outcome::ReplyBudgetExceeded {
                        limit: limits.max_reply_bytes,
                    };
                }
            }
            if let Some(slot) = slots.get_mut(index) {
                *slot = Some(outcome);
            }
        }
    })
    .await;
    // Dropping the JoinSet aborts whatever is still queued or in flight; owned permits are
    // released with the aborted tasks.
    drop(tasks);
    let unfinished = if collected.is_err() {
        Outcome::DeadlineExceeded
    } else {
        Outcome::UpstreamFailed("internal error while running the item".to_string())
    };
    slots
        .into_iter()
        .map(|slot| slot.unwrap_or_else(|| unfinished.clone()))
        .collect()
}

async fn run_item<U: Upstream, O: Observer>(
    index: usize,
    request: SubRequest,
    limits: Limits,
    batch_permits: Arc<Semaphore>,
    global: Arc<Semaphore>,
    upstream: Arc<U>,
    observer: Arc<O>,
) -> (usize, Outcome) {
    let queued = Instant::now();
    // Batch permit first: a batch waiting for global capacity then holds at most
    // `concurrency` global waiters, so one big batch cannot starve the others.
    let (Ok(_batch), Ok(_global)) = (
        batch_permits.acquire_owned().await,
        global.acquire_owned().await,
    ) else {
        // The semaphores are never closed; treat it as cancellation if they ever are.
        return (index, Outcome::Cancelled);
    };
    let started = Instant::now();
    if started >= limits.deadline {
        return (index, Outcome::DeadlineExceeded);
    }
    observer.started(index, started - queued);
    let outcome = match tokio::time::timeout(limits.item_timeout, upstream.send(request)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::TimedOut,
    };
    observer.finished(index, &outcome, started.elapsed());
    (index, outcome)
}

#[cfg(test)]
mod tests;
