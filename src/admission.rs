//! Admission control: whether a decoded batch may wait for permits at all.
//!
//! Without it every batch queues ("they wait, they do not fail") and under overload all of
//! them are served slowly at once, most past their deadline: congestion collapse. Here a
//! batch is admitted only when
//! * its items fit the bounded queue (`max_queued_items` waiting beyond `max_in_flight`),
//!   and, once the queue is past half full, a client that already holds items stays within
//!   its share of it (`max_queued_items` ÷ (clients holding items + 1)): a lone flood then
//!   fills at most half the queue, and the rest stays open to clients that hold nothing,
//! * the queue ahead of it drains within `queue_budget` at the measured drain rate,
//! * its client stays within `per_client_items` outstanding items, and
//! * the memory admitted batches hold (their bodies, and the item responses kept for their
//!   replies) stays within `max_held_bytes`.
//!
//! Otherwise it is refused at once (503, or 429 for a per-client limit) with `Retry-After`.
//! An admitted batch is never starved: it holds a `Ticket` until its reply is written, and its
//! items are counted as outstanding until each finishes. Admitted items then get their
//! permits round-robin across clients (`crate::permits`), FIFO within a client: with the queue
//! bounded by time, FIFO keeps waits bounded, the turns keep one client's flood from delaying
//! another's batch, and the per-client cap keeps one client from filling the queue.

use crate::config::AdmissionLimits;
use crate::item::RejectionKind;
use crate::permits::ClientId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a batch was not admitted; each is a metric label and a `RejectionKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The queue of waiting items is full.
    QueueFull,
    /// The queue is past half full and this client holds its share of it: a per-client
    /// limit (429) that only applies under pressure.
    QueueShare,
    /// The queue would not reach this batch within `queue_budget`.
    QueueBudget,
    /// The client has `per_client_items` items outstanding already.
    ClientLimit,
    /// Held batch bodies and kept responses would exceed `max_held_bytes`.
    Memory,
}

impl Refusal {
    /// The whole-batch rejection it becomes (status, metric reason).
    pub fn kind(self) -> RejectionKind {
        match self {
            Refusal::QueueFull => RejectionKind::QueueFull,
            Refusal::QueueBudget => RejectionKind::QueueBudget,
            Refusal::ClientLimit | Refusal::QueueShare => RejectionKind::ClientLimit,
            Refusal::Memory => RejectionKind::MemoryBudget,
        }
    }

    /// The error code in the route's format (PDS style: a category and a detail).
    pub fn code(self) -> &'static str {
        match self {
            Refusal::QueueFull => "ServiceUnavailable.QueueFull",
            Refusal::QueueBudget => "ServiceUnavailable.QueueBudget",
            Refusal::ClientLimit => "TooManyRequests",
            Refusal::QueueShare => "TooManyRequests.QueueShare",
            Refusal::Memory => "ServiceUnavailable.Memory",
        }
    }

    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::QueueFull => "batchgate is at capacity and its queue is full; retry later",
            Refusal::QueueBudget => "batchgate is at capacity: this batch would wait longer than the queue budget; retry later",
            Refusal::ClientLimit => "this client has as many items in flight and queued as it may; retry when some finish",
            Refusal::QueueShare => "batchgate's queue is filling and this client holds its share of it; retry when some of its batches finish",
            Refusal::Memory => "batchgate holds as much batch data (bodies and replies) as its memory budget allows; retry later",
        }
    }
}

/// A refusal and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub why: Refusal,
    pub retry_after: Duration,
}

/// The process-wide admission state.
#[derive(Debug)]
pub struct Admission {
    /// `max_in_flight`, which a reload may change.
    max_in_flight: AtomicUsize,
    /// Whether `per_client_items` is set: finishing items then update per-client counts.
    counts_items: AtomicBool,
    state: Mutex<State>,
    /// Items admitted and not yet finished (in flight or waiting for permits). An atomic, so
    /// an item finishing takes no lock; admission adds to it under the lock, and a finish
    /// racing an admission only ever makes room.
    outstanding: AtomicUsize,
    /// Items finished since start: the drain rate is measured from it.
    finished: AtomicU64,
    /// Bytes admitted batches hold: bodies, and item responses kept for their replies. An
    /// atomic for the same reason as `outstanding`; responses only ever add to it.
    held_bytes: AtomicUsize,
}

#[derive(Debug)]
struct State {
    limits: AdmissionLimits,
    /// Clients with admitted batches; an entry lives while either count is above zero.
    per_client: HashMap<ClientId, ClientCounts>,
    drain: DrainRate,
}

/// What one client holds.
#[derive(Debug, Default)]
struct ClientCounts {
    /// Items of its admitted batches that have not ended (batch by batch, at admission and
    /// at the reply): its part of the queue for the share rule.
    admitted: usize,
    /// Items not finished yet, item by item; kept only when `per_client_items` is set.
    outstanding: usize,
}

/// Items finished per second, smoothed over sample windows of at least `WINDOW`.
#[derive(Debug)]
struct DrainRate {
    since: Instant,
    finished_then: u64,
    per_second: f64,
}

/// Shortest sample window of the drain rate; shorter gaps between batches keep the last rate.
const WINDOW: Duration = Duration::from_millis(250);

impl DrainRate {
    fn sample(&mut self, finished: u64, now: Instant) -> f64 {
        let elapsed = now.duration_since(self.since);
        if elapsed >= WINDOW {
            let rate = finished.saturating_sub(self.finished_then) as f64 / elapsed.as_secs_f64();
            // Half the weight to the newest window: it follows a change within a second.
            self.per_second = if self.per_second == 0.0 {
                rate
            } else {
                (self.per_second + rate) / 2.0
            };
            self.since = now;
            self.finished_then = finished;
        }
        self.per_second
    }
}

/// An admitted batch's place: released as its items finish and when it is dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    client: ClientId,
    /// The batch's items, all counted in its client's `admitted` until the ticket is dropped.
    items: usize,
    /// Items not yet finished.
    remaining: AtomicUsize,
    /// Bytes this batch holds: its body, then also its kept responses.
    bytes: AtomicUsize,
}

impl Ticket {
    /// One of the batch's items ended: it no longer counts as outstanding.
    pub fn item_ended(&self) {
        let was = self
            .remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if was.is_ok() {
            self.admission.finished.fetch_add(1, Ordering::Relaxed);
            self.admission.release_items(&self.client, 1);
        }
    }

    /// An answer of `held` bytes is kept for the reply until the ticket is dropped.
    pub fn hold(&self, held: usize) {
        if held > 0 {
            self.bytes.fetch_add(held, Ordering::Relaxed);
            self.admission.held_bytes.fetch_add(held, Ordering::Relaxed);
            // Live: a full budget admits nothing, so waiting for the next admission to
            // publish would leave the gauge wherever the last one left it.
            self.admission.publish();
        }
    }

    /// `held` bytes of kept answers are no longer held (a streamed reply wrote them).
    pub fn release(&self, held: usize) {
        let was = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                b.checked_sub(held)
            });
        if was.is_ok() && held > 0 {
            self.admission.held_bytes.fetch_sub(held, Ordering::Relaxed);
            self.admission.publish();
        }
    }

    /// Whose items these are: the key the permits take turns by.
    pub fn client(&self) -> &ClientId {
        &self.client
    }
}

/// The bytes of a batch body read so far, released when dropped (the batch's admission then
/// holds them, or it was refused).
#[derive(Debug)]
pub struct BodyBytes {
    admission: Arc<Admission>,
    /// `max_held_bytes` when the body began (a reload applies to the next body).
    max: usize,
    bytes: usize,
}

impl BodyBytes {
    /// `n` more bytes arrived; refused when they would take the held bytes past the budget.
    pub fn grow(&mut self, n: usize) -> Result<(), Refused> {
        let max = self.max;
        let held = self.admission.held_bytes.fetch_add(n, Ordering::Relaxed) + n;
        self.bytes += n;
        self.admission.publish();
        if held > max {
            return Err(Refused {
                why: Refusal::Memory,
                retry_after: Duration::from_secs(1),
            });
        }
        Ok(())
    }
}

impl Drop for BodyBytes {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.admission
                .held_bytes
                .fetch_sub(self.bytes, Ordering::Relaxed);
            self.admission.publish();
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let remaining = self.remaining.swap(0, Ordering::Relaxed);
        self.admission.release_items(&self.client, remaining);
        self.admission.release_batch(&self.client, self.items);
        let bytes = self.bytes.load(Ordering::Relaxed);
        self.admission
            .held_bytes
            .fetch_sub(bytes, Ordering::Relaxed);
        self.admission.publish();
    }
}

impl Admission {
    pub fn new(limits: AdmissionLimits, max_in_flight: usize) -> Self {
        Admission {
            max_in_flight: AtomicUsize::new(max_in_flight),
            counts_items: AtomicBool::new(limits.per_client_items > 0),
            state: Mutex::new(State {
                limits,
                per_client: HashMap::new(),
                drain: DrainRate {
                    since: Instant::now(),
                    finished_then: 0,
                    per_second: 0.0,
                },
            }),
            outstanding: AtomicUsize::new(0),
            finished: AtomicU64::new(0),
            held_bytes: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a batch of `items` items whose body holds `bytes`, for `client`.
    pub fn admit(
        self: &Arc<Self>,
        client: ClientId,
        items: usize,
        bytes: usize,
    ) -> Result<Ticket, Refused> {
        let finished = self.finished.load(Ordering::Relaxed);
        let mut state = self.lock();
        let rate = state.drain.sample(finished, Instant::now());
        self.check(&state, &client, items, bytes, rate)?;
        self.outstanding.fetch_add(items, Ordering::Relaxed);
        self.held_bytes.fetch_add(bytes, Ordering::Relaxed);
        let counts = state.per_client.entry(client.clone()).or_default();
        counts.admitted += items;
        // Items are only counted one by one when there is a per-client cap to hold them to.
        if self.counts_items.load(Ordering::Relaxed) {
            counts.outstanding += items;
        }
        drop(state);
        self.publish();
        Ok(Ticket {
            admission: self.clone(),
            client,
            items,
            remaining: AtomicUsize::new(items),
            bytes: AtomicUsize::new(bytes),
        })
    }

    /// A count of the bytes of one batch body as it is read, held against `max_held_bytes`
    /// like admitted batches' bytes: bodies half sent over many connections and HTTP/2
    /// streams then hold at most the budget, not connections × streams × `max_body_bytes`.
    pub fn body_bytes(self: &Arc<Self>) -> BodyBytes {
        BodyBytes {
            admission: self.clone(),
            max: self.lock().limits.max_held_bytes,
            bytes: 0,
        }
    }

    /// The refusal every batch of `client` would get now, whatever its size, decided before
    /// its body is read (`bytes` is its declared length, 0 when unknown): the conditions
    /// are checked for one item, and a batch with more items can only do worse. Under a
    /// burst this is what keeps a refusal from costing the read and decode of its body.
    pub fn refuse_early(&self, client: &ClientId, bytes: usize) -> Option<Refused> {
        let finished = self.finished.load(Ordering::Relaxed);
        let mut state = self.lock();
        let rate = state.drain.sample(finished, Instant::now());
        let refused = self.check(&state, client, 1, bytes, rate).err();
        drop(state);
        if refused.is_some() {
            self.publish();
        }
        refused
    }

    /// The conditions, in the order a client can act on them.
    fn check(
        &self,
        state: &State,
        client: &ClientId,
        items: usize,
        bytes: usize,
        rate: f64,
    ) -> Result<(), Refused> {
        let limits = &state.limits;
        let max_in_flight = self.max_in_flight.load(Ordering::Relaxed);
        let outstanding = self.outstanding.load(Ordering::Relaxed);
        let queued_ahead = outstanding.saturating_sub(max_in_flight);
        let queued_after = (outstanding + items).saturating_sub(max_in_flight);
        // The time for the queue ahead to drain; unknown (no rate yet) counts as no wait.
        let wait = (rate > 0.0).then(|| Duration::from_secs_f64(queued_ahead as f64 / rate));
        let retry_after = wait
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_secs(1));
        let refuse = |why| Err(Refused { why, retry_after });
        let counts = state.per_client.get(client);
        let outstanding_mine = counts.map_or(0, |c| c.outstanding);
        if limits.per_client_items > 0 && outstanding_mine + items > limits.per_client_items {
            return refuse(Refusal::ClientLimit);
        }
        if queued_after > limits.max_queued_items {
            return refuse(Refusal::QueueFull);
        }
        // Past half, the queue is shared: a client that holds nothing is always let in while
        // the queue has room; one that holds items only up to an equal share, with one share
        // kept for whoever comes next.
        let admitted_mine = counts.map_or(0, |c| c.admitted);
        if admitted_mine > 0 && queued_after > limits.max_queued_items / 2 {
            let share = limits.max_queued_items / (state.per_client.len() + 1);
            if admitted_mine + items > share {
                return refuse(Refusal::QueueShare);
            }
        }
        if wait.is_some_and(|wait| wait > limits.queue_budget) {
            return refuse(Refusal::QueueBudget);
        }
        if self.held_bytes() + bytes > limits.max_held_bytes {
            return refuse(Refusal::Memory);
        }
        Ok(())
    }

    /// `items` finished (or will never start): no lock unless there is a per-client count.
    fn release_items(&self, client: &ClientId, items: usize) {
        if items == 0 {
            return;
        }
        self.outstanding.fetch_sub(items, Ordering::Relaxed);
        if !self.counts_items.load(Ordering::Relaxed) {
            return;
        }
        self.update_client(client, |counts| {
            counts.outstanding = counts.outstanding.saturating_sub(items);
        });
    }

    /// A batch of `items` items ended (its reply is written, or it was dropped).
    fn release_batch(&self, client: &ClientId, items: usize) {
        self.update_client(client, |counts| {
            counts.admitted = counts.admitted.saturating_sub(items);
        });
    }

    fn update_client(&self, client: &ClientId, update: impl FnOnce(&mut ClientCounts)) {
        let mut state = self.lock();
        if let Some(counts) = state.per_client.get_mut(client) {
            update(counts);
            // With no batch left every item has finished, whatever `outstanding` says (it
            // stops being updated when a reload turns the cap off).
            if counts.admitted == 0 {
                state.per_client.remove(client);
            }
        }
    }

    /// The queue gauges, at each admission and each batch's end.
    fn publish(&self) {
        if let Some(families) = crate::metrics::families() {
            let queued = self.queued();
            let held = self.held_bytes();
            families
                .admission_queued_items
                .set(i64::try_from(queued).unwrap_or(i64::MAX));
            families
                .admission_held_bytes
                .set(i64::try_from(held).unwrap_or(i64::MAX));
        }
    }

    /// A reload's new limits. Admitted batches keep their place; the new limits decide who
    /// is admitted from now on. A cap turned on counts items of batches admitted from now.
    pub fn reconfigure(&self, limits: AdmissionLimits, max_in_flight: usize) {
        let mut state = self.lock();
        self.counts_items
            .store(limits.per_client_items > 0, Ordering::Relaxed);
        self.max_in_flight.store(max_in_flight, Ordering::Relaxed);
        state.limits = limits;
    }

    /// Items waiting for permits now (outstanding beyond `max_in_flight`).
    pub fn queued(&self) -> usize {
        self.outstanding
            .load(Ordering::Relaxed)
            .saturating_sub(self.max_in_flight.load(Ordering::Relaxed))
    }

    /// Bytes admitted batches hold: bodies and kept responses (and what the item caches
    /// hold, `hold_cached`).
    pub fn held_bytes(&self) -> usize {
        self.held_bytes.load(Ordering::Relaxed)
    }

    /// An item cache (`crate::cache`) keeps `bytes` more: they count against
    /// `max_held_bytes` like a batch's, until `release_cached`.
    pub fn hold_cached(&self, bytes: usize) {
        self.held_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// An item cache no longer keeps `bytes`.
    pub fn release_cached(&self, bytes: usize) {
        let _ = self
            .held_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                Some(held.saturating_sub(bytes))
            });
    }
}

#[cfg(test)]
mod tests;
