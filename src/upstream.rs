//! The upstream client: sends one `SubRequest` to an upstream and returns an `Outcome`.
//!
//! It knows no batch. One `UpstreamClient` per configured upstream holds its `Transport`
//! (`transport`: the connections to its addresses, one variant per protocol, with the one
//! `exchange` that items and health checks use) and keeps connections alive between items
//! and batches. Below any policy, a *reused* pooled connection that fails before any answer
//! (the upstream closed it while idle) is tried once more on a new connection. Above it, per
//! upstream and opt-in: retries with a budget (`retry`), hedging (`send`), passive
//! ejection (`eject`) and active health checks (`health`) decide which address an attempt
//! goes to and whether there is another. Whether a second attempt is safe, and whether an
//! attempt failed its address, is decided in `attempt` for all of them. The executor stops
//! waiting for an item at `Call::until`; an attempt it cuts off there fails its address.

mod attempt;
mod choice;
mod eject;
mod exchange_error;
pub mod h1;
mod h2;
mod h2_streams;
pub mod health;
mod latency;
mod message;
mod passthrough;
mod pool;
mod reload;
mod retry;
mod transport;

use crate::config::{Balance, HashOn, Hedge, RetryOn, UpstreamConfig};
use crate::item::{FailureKind, Outcome, Sent, SubRequest};
use crate::metrics::{Hedged, RetrySkipped, UpstreamMetrics};
pub use attempt::may_send_again;
pub use choice::Tried;
pub use h1::head_end;
pub use h1::relay::{Answered, Buffers as RelayBuffers, Outbound, RelayError};
use http::header::{HeaderName, HeaderValue};
pub use message::{head_size, MAX_RESPONSE_HEAD_BYTES};
pub use passthrough::Relayed;
use pingora::upstreams::peer::HttpPeer;
pub use reload::same_settings;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

/// The upstream clients of the config in effect (a reload swaps them), for the health
/// checker and `/readyz`.
pub type UpstreamClients = Arc<dyn Fn() -> Vec<Arc<UpstreamClient>> + Send + Sync>;

/// One upstream: its peers and its connection pool.
pub struct UpstreamClient {
    pub config: Arc<UpstreamConfig>,
    /// The connections to the addresses, one protocol's.
    transport: transport::Transport,
    /// The same addresses for pingora's pass-through proxy (see `passthrough_peer`).
    passthrough_peers: Vec<HttpPeer>,
    /// The balance policy and its state.
    chooser: choice::Chooser,
    /// Addresses out of the choice after consecutive connection failures.
    ejections: eject::Ejections,
    /// Addresses out of the choice after failing their active checks.
    health: Arc<health::Health>,
    /// Retries and hedges of the last seconds, against the requests (`retry::Budget`).
    budget: retry::Budget,
    /// Recent answer latency, for `Hedge::Quantile`.
    latency: latency::Latency,
    /// Its series, resolved once (none without a metrics registry).
    metrics: Option<UpstreamMetrics>,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("name", &self.config.name)
            .finish()
    }
}

impl UpstreamClient {
    pub fn new(config: Arc<UpstreamConfig>) -> Self {
        let passthrough_peers = config
            .addresses
            .iter()
            .map(|addr| transport::passthrough_peer(&config, *addr))
            .collect();
        UpstreamClient {
            transport: transport::Transport::new(&config),
            passthrough_peers,
            chooser: choice::Chooser::new(&config),
            latency: latency::Latency::default(),
            ejections: eject::Ejections::new(
                config.addresses.len(),
                config.eject_after,
                config.eject_for,
            ),
            health: Arc::new(health::Health::new(
                config.addresses.len(),
                config.health_check.clone(),
            )),
            budget: config.retry.as_ref().map_or_else(
                || retry::Budget::new(0.2, 10),
                |r| retry::Budget::new(r.budget, r.min_retries_per_second),
            ),
            metrics: UpstreamMetrics::new(&config),
            config,
        }
    }

    /// The client for `config` after a reload changed some of `old`'s settings. When the
    /// connections themselves would be the same (addresses, protocol, TLS, pool size and
    /// idle timeout), the new client takes over `old`'s idle pools and HTTP/2 sessions, so a
    /// changed timeout does not cost a reconnect per item.
    pub fn renewed(config: Arc<UpstreamConfig>, old: &UpstreamClient) -> Self {
        let mut client = UpstreamClient::new(config);
        if reload::same_connections(&old.config, &client.config) {
            client.transport.keep_connections(&old.transport);
            // The same addresses checked the same way: what the checks found still holds.
            if old.config.health_check == client.config.health_check {
                client.health = old.health.clone();
            }
        }
        client.publish_state();
        client
    }

    /// The pass-through peer for the next request: chosen as an item's address is (balance,
    /// ejections, health checks), so a failing address is left out for both.
    pub fn pick_peer(&self, tried: Tried, key: Option<&[u8]>) -> Option<(usize, &HttpPeer)> {
        let n = self.choose(tried, key);
        self.passthrough_peers.get(n).map(|peer| (n, peer))
    }

    /// How a pass-through request to address `n` ended, for ejection: its connection failed,
    /// it was answered (the status), or it failed after connecting and before an answer.
    pub fn passthrough_outcome(&self, n: usize, outcome: &Outcome) {
        self.address_outcome(n, outcome);
    }

    /// What `balance = "hash"` hashes for a request with this path and header lookup.
    pub fn hash_key<'a>(
        &self,
        path: &'a str,
        header: impl Fn(&HeaderName) -> Option<&'a [u8]>,
    ) -> Option<&'a [u8]> {
        match &self.config.balance {
            Balance::Hash(HashOn::Path) => Some(path.as_bytes()),
            Balance::Hash(HashOn::Header(name)) => header(name),
            _ => None,
        }
    }

    /// The address for the next attempt (`choice`): never an ejected one, and not one that
    /// fails its health checks or was `tried` already (by a retry's or hedge's item) while
    /// another is left. When every address fails its checks, the checks are ignored (Envoy's
    /// panic threshold): trying is better than failing every item unsent.
    fn choose(&self, tried: Tried, key: Option<&[u8]>) -> usize {
        let len = self.config.addresses.len();
        let usable = |i: usize| !self.ejections.is_out(i) && !tried.contains(i);
        let healthy_left = (0..len).any(|i| usable(i) && self.health.is_healthy(i));
        self.chooser
            .choose(key, |i| {
                usable(i) && (!healthy_left || self.health.is_healthy(i))
            })
            .or_else(|| self.chooser.choose(key, |i| !self.ejections.is_out(i)))
            .or_else(|| self.chooser.choose(key, |_| true))
            .unwrap_or(0)
    }

    /// What `balance = "hash"` hashes for an item.
    fn item_key<'a>(&self, request: &'a SubRequest, batch: &'a BatchHeaders) -> Option<&'a [u8]> {
        self.hash_key(&request.path, |name| {
            request
                .headers
                .iter()
                .chain(&batch.common)
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_bytes())
        })
    }

    /// Sends one item: one attempt, hedged after `call.hedge_after` when it is slow, tried
    /// again as the upstream's retry policy allows (`retry`); the executor stops waiting at
    /// `call.until` (the item timeout).
    pub async fn send(&self, request: &SubRequest, batch: &BatchHeaders, call: &Call) -> Outcome {
        let hedges =
            attempt::may_send_again(Sent::Maybe, call.repeatable) && call.hedge_after.is_some();
        if self.config.retry.is_none() && !hedges {
            let n = self.choose(Tried::default(), self.item_key(request, batch));
            return self.attempt(n, request, batch, call).await;
        }
        // Boxed: the retry loop holds up to two attempts at once (a hedge), and an item
        // future that large costs every item its copies (docs/PERFORMANCE.md).
        Box::pin(self.send_with_policy(request, batch, call)).await
    }

    /// `send` with retries or hedging.
    async fn send_with_policy(
        &self,
        request: &SubRequest,
        batch: &BatchHeaders,
        call: &Call,
    ) -> Outcome {
        let until = call.until.min(call.deadline);
        let policy = self.config.retry.as_ref();
        if policy.is_some() || call.hedge_after.is_some() {
            self.budget.request();
        }
        let mut tried = Tried::default();
        let mut retried: Option<RetryOn> = None;
        let mut attempt = 1;
        loop {
            let (used, outcome) = self.hedged(request, batch, call, tried, until).await;
            tried = used;
            let Some(policy) = policy else {
                return outcome;
            };
            let again = retry::reason(policy, &outcome, call.repeatable);
            if let Some(previous) = retried.take() {
                let success = again.is_none() && matches!(outcome, Outcome::Response(_));
                self.count(|m| m.retried(previous, success));
            }
            let Some(reason) = again else {
                return outcome;
            };
            let skipped = |why| {
                self.count(|m| m.retry_skipped(why));
                outcome.clone()
            };
            if attempt >= policy.attempts {
                return skipped(RetrySkipped::Attempts);
            }
            let Some(wait) = retry::wait(policy, &outcome, attempt) else {
                return skipped(RetrySkipped::RetryAfter);
            };
            if Instant::now() + wait >= until {
                return skipped(RetrySkipped::Deadline);
            }
            if !self.budget.try_retry() {
                return skipped(RetrySkipped::Budget);
            }
            tokio::time::sleep(wait).await;
            tracing::debug!(upstream = %self.config.name, reason = %reason.label(), attempt, "item retried");
            retried = Some(reason);
            attempt += 1;
        }
    }

    /// One attempt, and after `hedge_after` a copy to another address when the item may be
    /// sent twice and the budget allows: the first answer wins and the other is dropped
    /// (cancelled); a failure waits for the other copy. Returns the address that answered.
    async fn hedged(
        &self,
        request: &SubRequest,
        batch: &BatchHeaders,
        call: &Call,
        tried: Tried,
        until: Instant,
    ) -> (Tried, Outcome) {
        let key = self.item_key(request, batch);
        let n = self.choose(tried, key);
        let tried = tried.with(n);
        let first = self.attempt(n, request, batch, call);
        // A copy while the first is running: as if the first may have reached the upstream.
        let may_copy = attempt::may_send_again(Sent::Maybe, call.repeatable);
        let delay = match call.hedge_after {
            _ if !may_copy || self.config.addresses.len() < 2 => None,
            Some(Hedge::After(delay)) => Some(delay),
            Some(Hedge::Quantile(q)) => self.latency.quantile(q),
            None => None,
        };
        let Some(delay) = delay else {
            return (tried, first.await);
        };
        tokio::pin!(first);
        tokio::select! {
            outcome = &mut first => return (tried, outcome),
            () = tokio::time::sleep(delay) => {}
        }
        let m = self.choose(tried, key);
        if m == n || Instant::now() >= until {
            return (tried, first.await);
        }
        if !self.budget.try_retry() {
            self.count(|m| m.hedged(Hedged::Budget));
            return (tried, first.await);
        }
        let tried = tried.with(m);
        let second = self.attempt(m, request, batch, call);
        tokio::pin!(second);
        tokio::select! {
            outcome = &mut first => {
                if matches!(outcome, Outcome::Response(_)) {
                    self.count(|m| m.hedged(Hedged::Lost));
                    return (tried, outcome);
                }
                self.count(|m| m.hedged(Hedged::Won));
                (tried, second.await)
            }
            outcome = &mut second => {
                if matches!(outcome, Outcome::Response(_)) {
                    self.count(|m| m.hedged(Hedged::Won));
                    return (tried, outcome);
                }
                self.count(|m| m.hedged(Hedged::Lost));
                (tried, first.await)
            }
        }
    }

    /// One attempt at address `n`, with its ejection and latency bookkeeping. An attempt cut
    /// off at the item's `until` (the executor stops waiting then) fails its address like a
    /// timeout: a silent address is ejected like one that refuses.
    async fn attempt(
        &self,
        n: usize,
        request: &SubRequest,
        batch: &BatchHeaders,
        call: &Call,
    ) -> Outcome {
        let started = Instant::now();
        let cut_off = CutOff {
            client: self,
            address: n,
            until: call.until,
            armed: true,
        };
        let _counted = self
            .chooser
            .counts_outstanding()
            .then(|| self.chooser.outstanding.get(n))
            .flatten()
            .map(InFlightAt::new);
        let outcome = self.exchange(n, request, batch, call.repeatable).await;
        cut_off.disarm();
        if let Outcome::Response(_) = &outcome {
            self.latency.record(started.elapsed());
        }
        self.address_outcome(n, &outcome);
        outcome
    }

    /// One exchange with address `n` over the upstream's protocol: what items and health
    /// checks both send.
    async fn exchange(
        &self,
        n: usize,
        request: &SubRequest,
        batch: &BatchHeaders,
        repeatable: bool,
    ) -> Outcome {
        let count = |carried| self.count(|m| m.request(carried));
        match self
            .transport
            .exchange(n, request, batch, repeatable, count)
            .await
        {
            Ok(response) => Outcome::Response(response),
            Err(error) => Outcome::Failed(error.into()),
        }
    }

    /// Writes to this upstream's series (none without a metrics registry).
    fn count(&self, write: impl FnOnce(&UpstreamMetrics)) {
        if let Some(metrics) = &self.metrics {
            write(metrics);
        }
    }

    /// Ejection bookkeeping for an attempt at address `n` (an item's or a pass-through
    /// request's) that ended with `outcome`.
    fn address_outcome(&self, n: usize, outcome: &Outcome) {
        if !attempt::address_failed(outcome, self.config.eject_on_5xx) {
            self.ejections.succeeded(n);
        } else if self.ejections.failed(n) {
            self.count_ejection(n);
        }
    }

    /// Logs and counts that address `n` was taken out of the choice.
    fn count_ejection(&self, n: usize) {
        let Some(socket) = self.config.addresses.get(n) else {
            return;
        };
        let address = socket.to_string();
        tracing::warn!(upstream = %self.config.name, %address, "address ejected after consecutive failures");
        self.count(|m| m.ejected(n));
    }
}

/// Headers every item of one batch carries, built once per batch.
#[derive(Debug, Clone)]
pub struct BatchHeaders {
    pub host: HeaderValue,
    /// Forwarded outer headers, `X-Forwarded-For`, `X-Request-Id`.
    pub common: Vec<(HeaderName, HeaderValue)>,
    pub max_response_bytes: usize,
    /// The route's item timeout, which bounds every exchange anyway: per-operation timeouts
    /// at least as long are not armed (a timer per read and write is measurable per item).
    pub item_timeout: std::time::Duration,
}

/// What one item may do beyond a single attempt, from its route and batch.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// The item may be sent twice (its method is one of the route's `idempotent_methods`).
    pub repeatable: bool,
    pub hedge_after: Option<Hedge>,
    /// The batch deadline: no retry or hedge starts that would end after it.
    pub deadline: Instant,
    /// When the item must be answered (its start plus the item timeout).
    pub until: Instant,
}

/// An attempt at `address` that has not ended. Dropped armed at or after `until` (the
/// executor's item timeout cut it off), its address failed to answer in time; dropped
/// earlier (a hedge's other copy answered first), nothing is counted.
struct CutOff<'a> {
    client: &'a UpstreamClient,
    address: usize,
    until: Instant,
    armed: bool,
}

impl CutOff<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CutOff<'_> {
    fn drop(&mut self) {
        if self.armed && Instant::now() >= self.until {
            let timed_out = Outcome::failed(FailureKind::Timeout, Sent::Maybe);
            self.client.address_outcome(self.address, &timed_out);
        }
    }
}

/// One item in flight at an address, for `Balance::LeastOutstanding`; dropped (also when
/// the item is cancelled) it is no longer counted.
struct InFlightAt<'a>(&'a AtomicUsize);

impl<'a> InFlightAt<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        InFlightAt(count)
    }
}

impl Drop for InFlightAt<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
