//! The global item permits (`server.max_in_flight`), granted round-robin across clients.
//!
//! A FIFO semaphore grants in arrival order: a client with sixty batches waiting is ahead of
//! a light client's one batch sixty times over, for each of its items. Here waiters queue per
//! client and a freed permit goes to the next client in turn, so a waiting client's next item
//! gets a permit after at most one grant to each other waiting client (wait ≤ waiting clients
//! ÷ drain rate), however many batches the others have queued. Within a client, FIFO. The
//! executor takes a batch's permits item by item, so there is at most one waiter per admitted
//! batch: admission bounds the queues.
//!
//! The total may change while permits are out (`resize`): a lower total is reached as permits
//! come back, none is revoked.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// Who a batch's items count against: its client key (`crate::admission`), shared by the
/// admission ticket and the permit queue.
pub type ClientId = Arc<str>;

/// The permit pool.
#[derive(Debug)]
pub struct Permits {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    total: usize,
    in_use: usize,
    /// Waiters per client. A client has an entry exactly while it is in `turns`; a cancelled
    /// waiter can leave an entry empty, which its next turn removes.
    queues: HashMap<ClientId, VecDeque<Waiter>>,
    /// Clients with waiters, in the order they get their next permit.
    turns: VecDeque<ClientId>,
    /// Waiters in all queues.
    waiting: usize,
    next_id: u64,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    grant: oneshot::Sender<()>,
}

/// One permit; it goes back (to the next client in turn) when dropped.
#[derive(Debug)]
pub struct Permit {
    permits: Arc<Permits>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.permits.release();
    }
}

impl Permits {
    pub fn new(total: usize) -> Arc<Self> {
        Arc::new(Permits {
            state: Mutex::new(State {
                total,
                in_use: 0,
                queues: HashMap::new(),
                turns: VecDeque::new(),
                waiting: 0,
                next_id: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A permit for one of `client`'s items, at once when one is free and nobody waits, else
    /// in the client's turn. `None` only if the pool is gone (it never is while `self` lives).
    /// Dropping the future gives up the place, or the permit if it had just been granted.
    pub async fn acquire(self: &Arc<Self>, client: &ClientId) -> Option<Permit> {
        let (id, granted) = {
            let mut state = self.lock();
            if state.waiting == 0 && state.in_use < state.total {
                state.in_use += 1;
                return Some(Permit {
                    permits: self.clone(),
                });
            }
            state.enqueue(client)
        };
        let mut waiting = Waiting {
            permits: self,
            client,
            id,
            granted: Some(granted),
        };
        let receiver = waiting.granted.as_mut()?;
        let result = receiver.await;
        waiting.granted = None;
        result.ok().map(|()| Permit {
            permits: self.clone(),
        })
    }

    /// Sets the number of permits; more are granted at once, fewer as permits come back.
    pub fn resize(&self, total: usize) {
        let mut state = self.lock();
        state.total = total;
        state.grant_spare();
    }

    /// Permits held now.
    pub fn in_use(&self) -> usize {
        self.lock().in_use
    }

    /// Items waiting for a permit now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    fn release(&self) {
        let mut state = self.lock();
        state.in_use = state.in_use.saturating_sub(1);
        state.grant_spare();
    }
}

impl State {
    fn enqueue(&mut self, client: &ClientId) -> (u64, oneshot::Receiver<()>) {
        let id = self.next_id;
        self.next_id += 1;
        let (grant, granted) = oneshot::channel();
        let waiter = Waiter { id, grant };
        match self.queues.entry(client.clone()) {
            Entry::Occupied(mut queue) => queue.get_mut().push_back(waiter),
            Entry::Vacant(slot) => {
                slot.insert(VecDeque::from([waiter]));
                self.turns.push_back(client.clone());
            }
        }
        self.waiting += 1;
        (id, granted)
    }

    /// Grants free permits to waiters in turn. The grant is sent under the lock, so a waiter
    /// that is cancelled and no longer queued has had its grant sent already (`Waiting::drop`).
    fn grant_spare(&mut self) {
        while self.in_use < self.total {
            let Some(waiter) = self.next_waiter() else {
                return;
            };
            if waiter.grant.send(()).is_ok() {
                self.in_use += 1;
            }
        }
    }

    /// The first waiter of the client whose turn it is; the client goes to the back of the
    /// turns if it has more.
    fn next_waiter(&mut self) -> Option<Waiter> {
        while let Some(client) = self.turns.pop_front() {
            let Some(queue) = self.queues.get_mut(&client) else {
                continue;
            };
            let Some(waiter) = queue.pop_front() else {
                self.queues.remove(&client);
                continue;
            };
            if queue.is_empty() {
                self.queues.remove(&client);
            } else {
                self.turns.push_back(client);
            }
            self.waiting -= 1;
            return Some(waiter);
        }
        None
    }

    /// Takes waiter `id` out of `client`'s queue; false when it is no longer there (granted).
    fn cancel(&mut self, client: &ClientId, id: u64) -> bool {
        let Some(queue) = self.queues.get_mut(client) else {
            return false;
        };
        let Some(position) = queue.iter().position(|w| w.id == id) else {
            return false;
        };
        queue.remove(position);
        self.waiting -= 1;
        true
    }
}

/// A queued acquisition; dropping it before the grant arrives gives the place or the permit up.
struct Waiting<'a> {
    permits: &'a Arc<Permits>,
    client: &'a ClientId,
    id: u64,
    /// `None` once the grant (or the pool's end) has been received.
    granted: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(mut granted) = self.granted.take() else {
            return;
        };
        if self.permits.lock().cancel(self.client, self.id) {
            return;
        }
        // Not queued any more: the grant was sent under the lock, so it is in the channel.
        if granted.try_recv().is_ok() {
            self.permits.release();
        }
    }
}

#[cfg(test)]
mod tests;
