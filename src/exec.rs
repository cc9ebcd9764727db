//! The executor: runs one batch's items with bounded concurrency and a deadline.
//!
//! It knows no dialect and no socket. Items go to an `Upstream` (one method), at most
//! `concurrency` of one batch and at most the global permits across all batches (granted
//! round-robin across clients, `crate::permits`).
//! When the batch deadline passes, the reply is built at once: unfinished items become
//! `DeadlineExceeded`. Dropping the future returned by `run` (client gone) never starts the
//! items waiting for a permit; those already sent run to their end in the background with
//! their permits (`Running`'s `Drop`). Items are either polled inside the
//! batch's own task (the default: without work stealing a batch's tasks would all share its
//! thread anyway) or spawned one task each so work stealing can spread them
//! (`Limits::spawn_items`); one loop drives both (`Running`).

mod graph;

use crate::item::{FailureKind, Outcome, Planned, Sent, SubRequest, Upstream, UpstreamResponse};
use crate::permits::{ClientId, Permit, Permits};
use graph::Graph;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

/// What the batch's owner learns of its items' resources while they run: when one starts,
/// when its work ends (also in the background, after its batch was answered), and which
/// answers are held for the reply. Per-item accounting (class, duration, log) is not here: it
/// is done once, on the outcomes `run` returns.
pub trait Observer: Send + Sync + 'static {
    /// An item got its permits after waiting `waited`.
    fn started(&self, _waited: Duration) {}
    /// A started item's work ended, however it ended (also if its task panicked).
    fn ended(&self) {}
    /// An answer of `bytes` (`UpstreamResponse::raw_size`) is kept for the reply, past the
    /// reply budget; it is held until the batch is answered.
    fn kept(&self, _bytes: usize) {}
}

/// What a run returns: one final outcome per item, in input order, and for each item that was
/// started and finished in time how long it took from its start.
#[derive(Debug)]
pub struct Ran {
    pub outcomes: Vec<Outcome>,
    pub elapsed: Vec<Option<Duration>>,
}

/// An observer that records nothing.
pub struct NoObserver;
impl Observer for NoObserver {}

/// Limits of one batch run.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Items of this batch in flight at once.
    pub concurrency: std::num::NonZeroUsize,
    /// Time one item may take once it holds its permits.
    pub item_timeout: Duration,
    /// When the reply must go out, finished or not.
    pub deadline: Instant,
    /// Largest sum of `reply_cost` over the responses kept for the reply.
    pub max_reply_bytes: usize,
    /// What one response adds to the reply, in bytes as the dialect will encode it (an
    /// escaped or base64 body is larger than the upstream's bytes): `UpstreamResponse::raw_size`
    /// or the dialect's own (`Dialect::reply_cost`).
    pub reply_cost: fn(&UpstreamResponse) -> usize,
    /// Turns true when the reply must go out now (the server is shutting down): unfinished
    /// items are then reported like at the deadline.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// A sequential batch that stops at its first failure (`Order::Sequential`, with
    /// `concurrency` 1): an item after a failed one (refused, failed, or answered 4xx/5xx)
    /// is not sent and reports `NotRun`.
    pub stop_on_failure: bool,
    /// One task per item, so work stealing can spread a batch over threads. Without work
    /// stealing every task of a batch lands on its own thread anyway, and polling the items
    /// inside the batch's task saves a spawn, a join and a cross-task wake-up per item.
    pub spawn_items: bool,
    /// The answers leave as they settle (a streamed reply, through `settled`): an outcome is
    /// not kept for a reply after that, only its status and headers (for the accounting), and
    /// the reply budget counts what has not been written to the client yet (`Unwritten`)
    /// instead of every answer.
    pub streamed: Option<Unwritten>,
}

/// A streamed reply's bytes, as the reply budget counts them (`reply_cost`), handed to the
/// writer and not yet written: the executor adds each kept answer's, the writer takes off what
/// it wrote. A client that reads keeps it low; one that stops reading fills it, and the next
/// answers fail `ReplyBudgetExceeded`.
pub type Unwritten = Arc<std::sync::atomic::AtomicUsize>;

/// Told each item's final outcome the moment it is final (after the reply budget), once per
/// item, in the order they settle: decided items first, then as they finish, then the ones
/// the deadline cut off.
pub type Settled<'a> = &'a mut (dyn FnMut(usize, &Outcome) + Send);

/// The global permits a batch draws on, and whose turn its items wait for.
pub struct Share<'a> {
    pub permits: &'a Arc<Permits>,
    pub client: &'a ClientId,
}

/// Runs every item and returns one outcome per item, in input order. Items that are already
/// decided (`Err(outcome)`: refused by the dialect) are passed through and never sent.
///
/// `after[i]` lists the items item `i` waits for (checked by the dialect: in range, no
/// cycle; empty or missing: none). An item starts once every item it depends on answered 2xx;
/// when one of them did not, it answers `DependencyFailed` at once and is never sent, and so
/// do the items waiting for it. Among the items ready, the lowest index starts first, and
/// permits are taken just before an item starts: without dependencies items start in request
/// order (a deadline then cuts off the end of a batch, not a random part of it), and an item
/// that never got its permits was never started. While the next item waits for them, the
/// running items keep being collected (and, when they are polled here, driven: they are what
/// frees the permits).
pub async fn run<U: Upstream, O: Observer>(
    limits: &Limits,
    global: Share<'_>,
    items: Vec<Result<Planned, Outcome>>,
    after: &[Vec<usize>],
    upstream: &Arc<U>,
    observer: &Arc<O>,
    settled: Settled<'_>,
) -> Ran {
    let (slots, to_send) = partition(items);
    let referenced = referenced(&to_send, slots.len());
    let mut graph = Graph::new(to_send, after, &slots);
    let batch_permits = Arc::new(Semaphore::new(limits.concurrency.get()));
    let mut running = Running::new(limits.spawn_items);
    let mut collector = Collector::new(slots, limits, observer.as_ref(), settled, referenced);
    let queued = Instant::now();
    let work = async {
        loop {
            while let Some((index, dependency)) = graph.take_blocked() {
                let kind = FailureKind::DependencyFailed { dependency };
                collector.record(index, Outcome::failed(kind, Sent::Nothing), None);
                graph.finished(index, false);
            }
            let Some((index, planned)) = graph.pop_ready() else {
                match running.next().await {
                    Some(done) => finish_node(&mut collector, &mut graph, done),
                    // Nothing ready, nothing running: every item is answered.
                    None => break,
                }
                continue;
            };
            let request = match planned {
                Planned::Ready(request) => request,
                // Every item it refers to has answered 2xx: it is one of its dependencies.
                Planned::Deferred(template) => match template.finish(&|i| collector.answer(i)) {
                    Ok(request) => request,
                    Err(failure) => {
                        collector.record(index, Outcome::Failed(failure), None);
                        graph.finished(index, false);
                        continue;
                    }
                },
            };
            let acquiring = acquire(&batch_permits, &global, observer);
            let finished = |done| finish_node(&mut collector, &mut graph, done);
            let Some(permits) = collect_until(acquiring, &mut running, finished).await else {
                // The permits are never closed; report it as cancellation if they ever are.
                collector.record(index, never_started(), None);
                graph.finished(index, false);
                continue;
            };
            // With concurrency 1 every earlier item has finished once the permits came.
            if limits.stop_on_failure && collector.failed_before(index) {
                let not_run = Outcome::failed(FailureKind::NotRun, Sent::Nothing);
                collector.record(index, not_run, None);
                graph.finished(index, false);
                continue;
            }
            running.push(start_item(
                index, request, permits, limits, upstream, observer, queued,
            ));
        }
    };
    let stopped = stop_signal(limits.stop.clone());
    let finished = tokio::select! {
        result = tokio::time::timeout_at(limits.deadline, work) => result.is_ok(),
        () = stopped => false,
    };
    collector.close(running, finished)
}

/// Records a finished item and tells the graph whether it succeeded (as recorded: a response
/// dropped for the reply budget did not).
fn finish_node<O: Observer>(collector: &mut Collector<'_, '_, O>, graph: &mut Graph, done: Done) {
    // A panicked task leaves no index: its dependents stay waiting and are reported as
    // internal failures when the run ends.
    if let Some((index, outcome, elapsed)) = done {
        collector.record(index, outcome, Some(elapsed));
        let ok = collector
            .slots
            .get(index)
            .and_then(Option::as_ref)
            .is_some_and(graph::succeeded);
        graph.finished(index, ok);
    }
}

/// Per item, whether a later item refers to its answer (empty when none does): a streamed
/// run keeps those answers' bodies until the run ends.
fn referenced(to_send: &[(usize, Planned)], items: usize) -> Vec<bool> {
    let mut referenced = Vec::new();
    for (_, planned) in to_send {
        if let Planned::Deferred(template) = planned {
            referenced.resize(items, false);
            for &source in template.sources() {
                if let Some(flag) = referenced.get_mut(source) {
                    *flag = true;
                }
            }
        }
    }
    referenced
}

/// An item whose permits never came.
fn never_started() -> Outcome {
    Outcome::failed(FailureKind::Cancelled, Sent::Nothing)
}

/// The items in flight, either polled inside the batch's own task (the default: without
/// work stealing every task of a batch lands on its thread anyway, and polling them here
/// saves a spawn, a join and a cross-task wake-up per item) or spawned one task each so work
/// stealing can spread them (`Limits::spawn_items`). One loop drives both.
enum Running<F: Future<Output = Finished> + Send + 'static> {
    Polled(futures_util::stream::FuturesUnordered<F>),
    Spawned(JoinSet<Finished>),
}

/// A finished item: its index, outcome and time from its start.
type Finished = (usize, Outcome, Duration);

/// A finished item, or `None` for a spawned item whose task panicked (its slot stays empty
/// and is reported as an internal failure).
type Done = Option<Finished>;

/// Items still running when their batch ends early (the client left or reset its stream, the
/// batch deadline passed, shutdown) are not cut off: they may already be on the wire, and the
/// upstream works on them either way. They run to their end (at most `item_timeout`) in the
/// background, keeping their permits until then, so cancelled batches can neither push
/// upstream concurrency past `max_in_flight` nor throw away connections in mid-exchange (the
/// next item reuses them). Items still waiting for permits never start: their wait is
/// dropped with the batch. (Outside a tokio runtime, which batches never are, polled items
/// would be dropped instead.)
impl<F: Future<Output = Finished> + Send + 'static> Drop for Running<F> {
    fn drop(&mut self) {
        match self {
            Running::Spawned(tasks) => tasks.detach_all(),
            Running::Polled(items) if !items.is_empty() => {
                let items = std::mem::take(items);
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    use futures_util::StreamExt;
                    runtime.spawn(items.for_each(|_| async {}));
                }
            }
            Running::Polled(_) => {}
        }
    }
}

impl<F: Future<Output = Finished> + Send + 'static> Running<F> {
    fn new(spawn: bool) -> Self {
        if spawn {
            Running::Spawned(JoinSet::new())
        } else {
            Running::Polled(futures_util::stream::FuturesUnordered::new())
        }
    }

    fn push(&mut self, item: F) {
        match self {
            Running::Polled(items) => items.push(item),
            Running::Spawned(tasks) => {
                // A task of its own starts with no span: keep the batch's (for an item that
                // has no span of its own, its trace context is the batch's).
                tasks.spawn(tracing::Instrument::in_current_span(item));
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Running::Polled(items) => items.is_empty(),
            Running::Spawned(tasks) => tasks.is_empty(),
        }
    }

    /// The next item to finish; `None` once none is running.
    async fn next(&mut self) -> Option<Done> {
        use futures_util::StreamExt;
        match self {
            Running::Polled(items) => items.next().await.map(Some),
            Running::Spawned(tasks) => tasks.join_next().await.map(Result::ok),
        }
    }

    /// An item that has already finished, without waiting.
    fn try_next(&mut self) -> Option<Done> {
        use futures_util::{FutureExt, StreamExt};
        match self {
            Running::Polled(items) => items.next().now_or_never().flatten().map(Some),
            Running::Spawned(tasks) => tasks.try_join_next().map(Result::ok),
        }
    }
}

/// One slot per item, already filled for decided items, and the items still to send with
/// their index.
fn partition(
    items: Vec<Result<Planned, Outcome>>,
) -> (Vec<Option<Outcome>>, Vec<(usize, Planned)>) {
    let mut slots: Vec<Option<Outcome>> = Vec::with_capacity(items.len());
    let mut to_send = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        match item {
            Err(decided) => slots.push(Some(decided)),
            Ok(planned) => {
                slots.push(None);
                to_send.push((index, planned));
            }
        }
    }
    (slots, to_send)
}

/// A child of the caller's batch span; disabled (and nearly free) below debug, and while
/// tracing, not made for a batch whose trace is not sampled (its items' upstream requests
/// then carry the batch's context, not sampled either).
fn item_span(index: usize, request: &SubRequest) -> tracing::Span {
    if crate::traces::on() && !crate::traces::current_sampled() {
        return tracing::Span::none();
    }
    tracing::debug_span!(
        "item",
        otel.kind = "client",
        index,
        method = %request.method,
        path = %request.path,
        status = tracing::field::Empty,
        outcome = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    )
}

/// Reports an item as started and builds its future, inside its tracing span.
fn start_item<U: Upstream, O: Observer>(
    index: usize,
    request: SubRequest,
    permits: ItemPermits,
    limits: &Limits,
    upstream: &Arc<U>,
    observer: &Arc<O>,
    queued: Instant,
) -> tracing::instrument::Instrumented<impl Future<Output = Finished>> {
    observer.started(queued.elapsed());
    let span = item_span(index, &request);
    run_item(
        index,
        request,
        limits.item_timeout,
        permits,
        upstream.clone(),
    )
    .instrument(span)
}

/// Puts outcomes in their slots, enforces the reply budget and reports each final outcome.
struct Collector<'o, 's, O> {
    slots: Vec<Option<Outcome>>,
    elapsed: Vec<Option<Duration>>,
    reply_bytes: usize,
    max_reply_bytes: usize,
    reply_cost: fn(&UpstreamResponse) -> usize,
    observer: &'o O,
    settled: Settled<'s>,
    streamed: Option<Unwritten>,
    /// Per item, whether a later item refers to its answer (`referenced`).
    referenced: Vec<bool>,
}

impl<'o, 's, O: Observer> Collector<'o, 's, O> {
    /// The items decided before the run (refused by the dialect) are settled at once.
    fn new(
        slots: Vec<Option<Outcome>>,
        limits: &Limits,
        observer: &'o O,
        settled: Settled<'s>,
        referenced: Vec<bool>,
    ) -> Self {
        let collector = Collector {
            elapsed: vec![None; slots.len()],
            slots,
            reply_bytes: 0,
            max_reply_bytes: limits.max_reply_bytes,
            reply_cost: limits.reply_cost,
            observer,
            settled,
            streamed: limits.streamed.clone(),
            referenced,
        };
        for (index, slot) in collector.slots.iter().enumerate() {
            if let Some(outcome) = slot {
                (collector.settled)(index, outcome);
            }
        }
        collector
    }

    /// Keeps what finished just before the deadline; the rest run to their end in the
    /// background with their permits (`Running`'s `Drop`), their answers unused.
    fn close<F>(mut self, mut running: Running<F>, finished: bool) -> Ran
    where
        F: Future<Output = Finished> + Send + 'static,
    {
        while let Some(done) = running.try_next() {
            self.finished(done);
        }
        drop(running);
        self.into_outcomes(finished)
    }

    /// One outcome per item; a slot still empty is `DeadlineExceeded` when the run stopped
    /// early (deadline or shutdown), and an internal failure otherwise (its task panicked).
    fn into_outcomes(self, finished: bool) -> Ran {
        // Whether an unfinished item had started is not tracked: it may have been sent.
        let unfinished = if !finished {
            Outcome::failed(FailureKind::BatchDeadline, Sent::Maybe)
        } else {
            Outcome::failed(FailureKind::Internal, Sent::Maybe)
        };
        let settled = self.settled;
        let outcomes = self
            .slots
            .into_iter()
            .enumerate()
            .map(|(index, slot)| {
                slot.unwrap_or_else(|| {
                    settled(index, &unfinished);
                    unfinished.clone()
                })
            })
            .collect();
        Ran {
            outcomes,
            elapsed: self.elapsed,
        }
    }

    /// Item `index`'s outcome, once it has one.
    fn answer(&self, index: usize) -> Option<&Outcome> {
        self.slots.get(index).and_then(Option::as_ref)
    }

    /// Whether an item before `index` failed (refused, failed, or answered 4xx/5xx).
    fn failed_before(&self, index: usize) -> bool {
        self.slots
            .iter()
            .take(index)
            .flatten()
            .any(|outcome| match outcome {
                Outcome::Response(response) => response.status >= 400,
                Outcome::Failed(_) => true,
            })
    }

    fn finished(&mut self, done: Done) {
        // A task only fails to join if it panicked; its slot stays empty and is reported as
        // an upstream failure instead of taking the batch down.
        if let Some((index, outcome, elapsed)) = done {
            self.record(index, outcome, Some(elapsed));
        }
    }

    /// An item's final outcome (`elapsed`: it ran, for that long).
    fn record(&mut self, index: usize, mut outcome: Outcome, elapsed: Option<Duration>) {
        if let Outcome::Response(response) = &outcome {
            // Body and headers as the reply will carry them; an item dropped for going over
            // is not charged, so later, smaller items can still fit.
            let size = (self.reply_cost)(response);
            let spent = match &self.streamed {
                Some(unwritten) => unwritten.load(std::sync::atomic::Ordering::Relaxed),
                None => self.reply_bytes,
            };
            let total = spent.saturating_add(size);
            if total > self.max_reply_bytes {
                let limit = self.max_reply_bytes;
                outcome = Outcome::failed(FailureKind::ReplyBudgetExceeded { limit }, Sent::All);
            } else {
                match &self.streamed {
                    Some(unwritten) => {
                        unwritten.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
                    }
                    None => self.reply_bytes = total,
                }
                self.observer.kept(response.raw_size());
            }
        }
        (self.settled)(index, &outcome);
        let referenced = self.referenced.get(index).copied().unwrap_or(false);
        if self.streamed.is_some() && !referenced {
            // Written already: what stays is what the accounting needs.
            if let Outcome::Response(response) = &mut outcome {
                response.body = bytes::Bytes::new();
            }
        }
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = Some(outcome);
        }
        if let Some(slot) = self.elapsed.get_mut(index) {
            *slot = elapsed;
        }
    }
}

/// Awaits `acquiring` while collecting (and, when they are polled here, driving) the
/// running items: they are what frees the permits.
async fn collect_until(
    acquiring: impl Future<Output = Option<ItemPermits>>,
    running: &mut Running<impl Future<Output = Finished> + Send + 'static>,
    mut finished: impl FnMut(Done),
) -> Option<ItemPermits> {
    tokio::pin!(acquiring);
    loop {
        tokio::select! {
            biased;
            permits = &mut acquiring => return permits,
            Some(done) = running.next(), if !running.is_empty() => finished(done),
        }
    }
}

/// Resolves when `stop` turns true; never without a stop channel or once its sender is gone.
async fn stop_signal(stop: Option<tokio::sync::watch::Receiver<bool>>) {
    if let Some(mut stop) = stop {
        if stop.wait_for(|stopped| *stopped).await.is_ok() {
            return;
        }
    }
    std::future::pending::<()>().await;
}

/// The batch permit, then a global one. Batch first: a batch waiting for global capacity
/// then has at most one waiter, so one big batch cannot queue ahead of every other batch.
async fn acquire<O: Observer>(
    batch: &Arc<Semaphore>,
    global: &Share<'_>,
    observer: &Arc<O>,
) -> Option<ItemPermits> {
    let batch = batch.clone().acquire_owned().await.ok()?;
    let global = global.permits.acquire(global.client).await?;
    Some(ItemPermits {
        _batch: batch,
        _global: global,
        ended: observer.clone(),
    })
}

/// Held by an item for its whole life, also after its batch was cancelled; dropped on
/// completion or timeout (or if its task panics), which tells the observer its work ended.
struct ItemPermits {
    _batch: OwnedSemaphorePermit,
    _global: Permit,
    ended: Arc<dyn Observer>,
}

impl Drop for ItemPermits {
    fn drop(&mut self) {
        self.ended.ended();
    }
}

async fn run_item<U: Upstream>(
    index: usize,
    request: SubRequest,
    item_timeout: Duration,
    _permits: ItemPermits,
    upstream: Arc<U>,
) -> Finished {
    let started = Instant::now();
    let until = started + item_timeout;
    let outcome = match tokio::time::timeout_at(until, upstream.send(request, until)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::failed(FailureKind::Timeout, Sent::Maybe),
    };
    let elapsed = started.elapsed();
    let span = tracing::Span::current();
    if !span.is_disabled() {
        span.record("status", outcome.status());
        span.record("outcome", outcome.class().as_str());
        span.record("duration_ms", elapsed.as_secs_f64() * 1000.0);
        tracing::debug!("item finished");
    }
    (index, outcome, elapsed)
}

#[cfg(test)]
mod tests;
