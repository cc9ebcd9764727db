//! The upstream client: sends one `SubRequest` to an upstream and returns an `Outcome`.
//!
//! It knows no batch. One `UpstreamClient` per configured upstream holds ready `HttpPeer`s and
//! keeps connections alive between items and batches. HTTP/1.1 items go through batchgate's own
//! lean exchange (`h1`) on connections made by pingora's `TransportConnector` and kept in an
//! idle pool per address (`pool`); h2c items go through pingora's HTTP/2 session and pool. A
//! connection goes back to the pool only after its response was read to the end with its
//! framing intact. Below any policy, a *reused* pooled connection that fails before any
//! answer (the upstream closed it while idle) is tried once more on a new connection. Above
//! it, per upstream and opt-in: retries with a budget (`retry`), hedging (`send`), passive
//! ejection (`eject`) and active health checks (`health`) decide which address an attempt
//! goes to and whether there is another. Whether a second attempt is safe, and whether an
//! attempt failed its address, is decided in `attempt` for all of them. The executor stops
//! waiting for an item at `Call::until`; an attempt it cuts off there fails its address.

mod attempt;
mod choice;
mod eject;
pub mod h1;
mod h2;
mod h2_streams;
pub mod health;
mod latency;
mod pool;
mod reload;
mod retry;

use crate::config::{Balance, HashOn, Hedge, RetryOn, UpstreamConfig, UpstreamProtocol};
use crate::item::{Failure, FailureKind, Outcome, Sent, SubRequest, UpstreamResponse};
use crate::metrics::{UpstreamConnectionMetrics, UpstreamSeries};
pub use attempt::may_send_again;
pub use choice::Tried;
use http::header::{HeaderName, HeaderValue};
use http::Method;
use pingora::connectors::http::Connector;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;
pub use reload::same_settings;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

/// Most bytes of an upstream response head (status line or pseudo-headers, and every header
/// field) accepted, by every upstream client: HTTP/1.1 items (`h1`), h2c items (the h2
/// `max_header_list_size` we advertise) and pass-through (checked on the parsed head). nginx's
/// `proxy_buffer_size` default is 4-8 KiB and Envoy's `max_response_headers_kb` 60 KiB.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;

/// The bytes a parsed response head took on the wire, near enough: every field's name and
/// value plus its `: ` and CRLF. For the clients that parse heads themselves (pingora's h2
/// and HTTP/1.1 pass-through), which bound what they buffer with their own, larger limits.
pub fn head_size(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// Most bytes reserved for a response body before they arrive.
const PREALLOCATE_LIMIT: usize = 64 * 1024;

/// The upstream clients of the config in effect (a reload swaps them), for the health
/// checker and `/readyz`.
pub type UpstreamClients = Arc<dyn Fn() -> Vec<Arc<UpstreamClient>> + Send + Sync>;

/// One upstream: its peers and its connection pool.
pub struct UpstreamClient {
    pub config: Arc<UpstreamConfig>,
    peers: Vec<HttpPeer>,
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
    /// HTTP/1.1: pingora makes the connections, one idle pool per peer keeps them.
    transport: TransportConnector,
    /// Shared with the client a reload builds for the same connections (`renewed`).
    pools: Arc<[pool::Pool]>,
    /// h2c and h2: pingora's HTTP/2 sessions (`None` for HTTP/1.1 upstreams).
    h2_connector: Option<Arc<Connector>>,
    /// One per address: h2 connections opened in turn (`h2_streams`); h2c ones are ours.
    h2_gates: Arc<[h2_streams::SessionGate]>,
    h2c_connections: Arc<[h2_streams::H2cConnections]>,
    timeouts: h1::Timeouts,
    metrics: Option<UpstreamConnectionMetrics>,
    /// Set by the reload that replaced or removed this client (`retire`) to the upstream's
    /// new settings (`None`: removed); held while one of its series is written
    /// (`record_series`).
    retired: reload::Retirement,
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
        let peers: Vec<HttpPeer> = config
            .addresses
            .iter()
            .map(|addr| peer(&config, *addr))
            .collect();
        let options = || Some(connector_options(&config));
        let h2_connector = matches!(
            config.protocol,
            UpstreamProtocol::H2c | UpstreamProtocol::H2
        )
        .then(|| Arc::new(Connector::new(options())));
        let pools = peers
            .iter()
            .map(|_| pool::Pool::new(config.pool_size, config.idle_timeout))
            .collect();
        let passthrough_peers = config
            .addresses
            .iter()
            .map(|addr| passthrough_peer(&config, *addr))
            .collect();
        UpstreamClient {
            peers,
            passthrough_peers,
            pools,
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
            transport: TransportConnector::new(options()),
            h2_connector,
            h2_gates: config
                .addresses
                .iter()
                .map(|_| Default::default())
                .collect(),
            h2c_connections: config
                .addresses
                .iter()
                .map(|_| Default::default())
                .collect(),
            timeouts: h1::Timeouts {
                read: config.read_timeout,
                write: config.write_timeout,
            },
            metrics: {
                crate::metrics::upstream_series(&config);
                UpstreamConnectionMetrics::new(&config.name)
            },
            retired: reload::Retirement::default(),
            config,
        }
    }

    /// Marks this client as replaced by a reload (`new`: the upstream's settings after it,
    /// `None`: removed); see `reload::Retirement`.
    pub fn retire(&self, new: Option<&Arc<UpstreamConfig>>) {
        self.retired.retire(new);
    }

    /// Runs `record`, a write to `series` of this client, unless a reload retired the client
    /// and removed that series.
    pub(crate) fn record_series(&self, series: UpstreamSeries<'_>, record: impl FnOnce()) {
        self.retired.record(series, record);
    }

    /// The client for `config` after a reload changed some of `old`'s settings. When the
    /// connections themselves would be the same (addresses, protocol, TLS, pool size and
    /// idle timeout), the new client takes over `old`'s idle pools and HTTP/2 sessions, so a
    /// changed timeout does not cost a reconnect per item.
    pub fn renewed(config: Arc<UpstreamConfig>, old: &UpstreamClient) -> Self {
        let mut client = UpstreamClient::new(config);
        if reload::same_connections(&old.config, &client.config) {
            client.pools = old.pools.clone();
            client.h2_connector = old.h2_connector.clone();
            client.h2_gates = old.h2_gates.clone();
            client.h2c_connections = old.h2c_connections.clone();
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
        let len = self.peers.len();
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
                self.record_series(UpstreamSeries::Retried(&previous), || {
                    crate::metrics::retried(&self.config.name, &previous.label(), success);
                });
            }
            let Some(reason) = again else {
                return outcome;
            };
            let skipped = |why| {
                self.record_series(UpstreamSeries::RetrySkipped, || {
                    crate::metrics::retry_skipped(&self.config.name, why);
                });
                outcome.clone()
            };
            if attempt >= policy.attempts {
                return skipped("attempts");
            }
            let Some(wait) = retry::wait(policy, &outcome, attempt) else {
                return skipped("retry_after");
            };
            if Instant::now() + wait >= until {
                return skipped("deadline");
            }
            if !self.budget.try_retry() {
                return skipped("budget");
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
            _ if !may_copy || self.peers.len() < 2 => None,
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
            self.record_series(UpstreamSeries::Hedged, || {
                crate::metrics::hedged(&self.config.name, "budget")
            });
            return (tried, first.await);
        }
        let tried = tried.with(m);
        let second = self.attempt(m, request, batch, call);
        tokio::pin!(second);
        let name = &self.config.name;
        tokio::select! {
            outcome = &mut first => {
                if matches!(outcome, Outcome::Response(_)) {
                    self.record_series(UpstreamSeries::Hedged, || crate::metrics::hedged(name, "lost"));
                    return (tried, outcome);
                }
                self.record_series(UpstreamSeries::Hedged, || crate::metrics::hedged(name, "won"));
                (tried, second.await)
            }
            outcome = &mut second => {
                if matches!(outcome, Outcome::Response(_)) {
                    self.record_series(UpstreamSeries::Hedged, || crate::metrics::hedged(name, "won"));
                    return (tried, outcome);
                }
                self.record_series(UpstreamSeries::Hedged, || crate::metrics::hedged(name, "lost"));
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
        let (Some(peer), Some(pool)) = (self.peers.get(n), self.pools.get(n)) else {
            let failure = Failure::new(FailureKind::Connect, Sent::Nothing);
            return Outcome::Failed(failure.with_detail("the upstream has no address"));
        };
        let _counted = self
            .chooser
            .counts_outstanding()
            .then(|| self.chooser.outstanding.get(n))
            .flatten()
            .map(InFlightAt::new);
        let outcome = self.exchange(n, peer, pool, request, batch, call).await;
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
        peer: &HttpPeer,
        pool: &pool::Pool,
        request: &SubRequest,
        batch: &BatchHeaders,
        call: &Call,
    ) -> Outcome {
        match &self.h2_connector {
            Some(connector) => self.send_h2(connector, n, peer, request, batch, call).await,
            None => self.send_h1(peer, pool, request, batch, call).await,
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
        self.record_series(UpstreamSeries::Address(socket), || {
            crate::metrics::upstream_ejected(&self.config.name, &address);
            crate::metrics::address_up(&self.config.name, &address, false);
        });
    }

    async fn send_h1(
        &self,
        peer: &HttpPeer,
        pool: &pool::Pool,
        request: &SubRequest,
        batch: &BatchHeaders,
        call: &Call,
    ) -> Outcome {
        if let Some(conn) = pool.take() {
            self.count_connection(true);
            match self.exchange_h1(conn, pool, request, batch).await {
                Ok(response) => return Outcome::Response(response),
                // The pooled connection turned out dead (closed before any answer: the
                // upstream closed it while idle): once more on a new connection, when that
                // is safe (RFC 9112 section 9.3.1). A POST that may have reached the
                // upstream gets an error rather than a second try: nothing is done twice.
                Err(error)
                    if (error.unsent() || error.nothing_received())
                        && attempt::may_send_again(error.sent(), call.repeatable) => {}
                Err(error) => return Outcome::Failed(h1_failure(error)),
            }
        }
        let conn = match self.transport.new_stream(peer).await {
            Ok(stream) => pool::Conn::new(stream),
            Err(error) => return Outcome::Failed(connect_failure(&error)),
        };
        self.count_connection(false);
        match self.exchange_h1(conn, pool, request, batch).await {
            Ok(response) => Outcome::Response(response),
            Err(error) => Outcome::Failed(h1_failure(error)),
        }
    }

    async fn exchange_h1(
        &self,
        mut conn: pool::Conn,
        pool: &pool::Pool,
        request: &SubRequest,
        batch: &BatchHeaders,
    ) -> Result<UpstreamResponse, h1::ExchangeError> {
        let exchanged = h1::exchange(&mut conn.stream, request, batch, self.timeouts).await?;
        if exchanged.reusable {
            pool.put(conn);
        }
        Ok(exchanged.response)
    }

    fn count_connection(&self, reused: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.request(reused);
        }
    }

    /// One item to address `n` (`peer`) over HTTP/2.
    async fn send_h2(
        &self,
        connector: &Connector,
        n: usize,
        peer: &HttpPeer,
        request: &SubRequest,
        batch: &BatchHeaders,
        call: &Call,
    ) -> Outcome {
        let streams = match self.config.protocol {
            UpstreamProtocol::H2c => {
                self.h2c_connections
                    .get(n)
                    .map(|connections| h2_streams::Streams::H2c {
                        connections,
                        transport: &self.transport,
                    })
            }
            _ => self
                .h2_gates
                .get(n)
                .map(|gate| h2_streams::Streams::Pingora { connector, gate }),
        };
        let Some(streams) = streams else {
            let failure = Failure::new(FailureKind::Connect, Sent::Nothing);
            return Outcome::Failed(failure.with_detail("the upstream has no address"));
        };
        // An error pingora marks retryable (a pooled connection the upstream had closed, a
        // refused stream) is tried once more on another connection. A stream the upstream
        // refused unprocessed (`h2::refused_unprocessed`) goes on to the next connection
        // until it is answered, fails otherwise, or runs out of `UNPROCESSED_ATTEMPTS` (an
        // upstream that takes one stream per connection needs one round per item in flight).
        let mut attempts = 0;
        let failure = loop {
            attempts += 1;
            let exchanged = h2::exchange(streams, peer, request, batch, |reused| {
                self.count_connection(reused)
            })
            .await;
            match exchanged {
                Ok(response) => return Outcome::Response(response),
                Err(h2::H2Error::Pingora {
                    mut error,
                    reused,
                    sent,
                }) => {
                    // pingora's rule: `ReusedOnly` errors are retryable only on a reused
                    // pooled connection, i.e. the upstream closed it while idle and saw nothing.
                    error.retry.decide_reuse(reused);
                    let trigger = match attempts {
                        1 => error.retry(),
                        n => n < UNPROCESSED_ATTEMPTS && h2::refused_unprocessed(&error),
                    };
                    // What pingora marks retryable the upstream did not process (a stream it
                    // refused, a connection it had closed): as good as nothing sent.
                    let sent = if error.retry() { Sent::Nothing } else { sent };
                    let again = trigger && attempt::may_send_again(sent, call.repeatable);
                    if !again {
                        return Outcome::Failed(h2::pingora_failure(&error, sent));
                    }
                }
                Err(other) => break other,
            }
        };
        Outcome::Failed(failure.into_failure())
    }
}

/// Attempts of one HTTP/2 item whose stream the upstream refused unprocessed, before the
/// refusal is its answer. Each round opens at most one connection per address, shared by
/// every item waiting (`h2_streams.rs`).
const UNPROCESSED_ATTEMPTS: u32 = 32;

/// The one rule, for every upstream protocol, of which response headers an item keeps: what
/// describes the resource. Hop-by-hop headers and `Content-Length` describe this message on
/// this connection (the body's length is known once it is read).
pub(crate) fn kept_response_header(name: &str) -> bool {
    !name.eq_ignore_ascii_case("content-length")
        && !HOP_BY_HOP_RESPONSE
            .iter()
            .any(|hop| name.eq_ignore_ascii_case(hop))
}

/// Interim (1xx) answers accepted before the final one, on every upstream protocol.
pub(crate) const MAX_INTERIM_RESPONSES: usize = 8;

/// Response headers about the connection rather than the resource.
const HOP_BY_HOP_RESPONSE: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

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

/// A connection that could not be made: nothing was sent. A failed TLS handshake is its own
/// kind: the fix is a certificate or a name, not the network.
fn connect_failure(error: &pingora::Error) -> Failure {
    let kind = match error.etype() {
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::TLSWantX509Lookup => {
            FailureKind::Tls
        }
        _ => FailureKind::Connect,
    };
    Failure::new(kind, Sent::Nothing).with_detail(error.to_string())
}

/// A timeout is a timeout wherever it fires: the item timeout (in the executor) or a shorter
/// per-read or per-write one here.
fn h1_failure(error: h1::ExchangeError) -> Failure {
    let kind = match error {
        h1::ExchangeError::TooLarge(limit) => FailureKind::ResponseTooLarge { limit },
        h1::ExchangeError::Timeout(_) => FailureKind::Timeout,
        _ => FailureKind::Connection,
    };
    Failure::new(kind, error.sent()).with_detail(error.to_string())
}

/// The one rule, for every upstream protocol, of which headers an item request carries
/// besides `Host`: the batch-wide ones (forwarded, `X-Forwarded-For`, `X-Request-Id`) unless
/// the item sets the same name itself (its own wins), then the item's own, repeats kept.
pub(crate) fn item_request_headers<'a>(
    request: &'a SubRequest,
    batch: &'a BatchHeaders,
) -> impl Iterator<Item = &'a (HeaderName, HeaderValue)> {
    batch
        .common
        .iter()
        .filter(|(name, _)| !request.headers.iter().any(|(n, _)| n == name))
        .chain(request.headers.iter())
}

/// The `Content-Length` an item request declares: its body's, or 0 for a bodiless POST, PUT
/// or PATCH (servers may refuse those without one); none for other bodiless methods.
pub(crate) fn item_content_length(request: &SubRequest) -> Option<usize> {
    match &request.body {
        Some(body) => Some(body.len()),
        None if matches!(request.method, Method::POST | Method::PUT | Method::PATCH) => Some(0),
        None => None,
    }
}

/// The item connectors' options: pool size, and for TLS the CA file and client certificate,
/// loaded once here (config validation has read them) instead of per connection.
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

fn connector_options(config: &UpstreamConfig) -> ConnectorOptions {
    let mut options = ConnectorOptions::new(config.pool_size);
    if let Some(tls) = &config.tls {
        options.ca_file = tls.ca_file.clone();
        options.cert_key_file = tls.client_cert_files.clone();
    }
    options
}

/// A peer for one address with the upstream's timeouts and TLS settings, for the item
/// clients (whose connectors hold the CA and client certificate).
pub fn peer(config: &UpstreamConfig, addr: std::net::SocketAddr) -> HttpPeer {
    let sni = config.tls.as_ref().map(|tls| tls.sni.clone());
    let mut peer = HttpPeer::new(addr, sni.is_some(), sni.unwrap_or_default());
    peer.options.connection_timeout = Some(config.connect_timeout);
    peer.options.read_timeout = Some(config.read_timeout);
    peer.options.write_timeout = Some(config.write_timeout);
    peer.options.idle_timeout = Some(config.idle_timeout);
    if let Some(tls) = &config.tls {
        peer.options.verify_cert = tls.verify;
        peer.options.verify_hostname = tls.verify;
    }
    match config.protocol {
        // ALPN offers only what the items speak, so the upstream cannot pick the other.
        UpstreamProtocol::Http1 => peer.options.set_http_version(1, 1),
        // Prior knowledge: no ALPN on cleartext, so pingora's h2 connector trusts (2, 2).
        UpstreamProtocol::H2c => peer.options.set_http_version(2, 2),
        // ALPN h2 first, HTTP/1.1 if the upstream declines it.
        UpstreamProtocol::H2 => peer.options.set_http_version(2, 1),
    }
    if config.protocol != UpstreamProtocol::Http1 {
        peer.options.max_h2_streams = config.max_h2_streams;
    }
    peer
}

/// The pass-through peer: the item peer plus the CA and client certificate per peer, since
/// pingora's proxy has one connector for every upstream.
pub fn passthrough_peer(config: &UpstreamConfig, addr: std::net::SocketAddr) -> HttpPeer {
    let mut peer = peer(config, addr);
    if let Some(tls) = &config.tls {
        peer.options.ca = tls.ca.clone();
        peer.client_cert_key = tls.client_cert.clone();
        // Pass-through relays what the client spoke; pingora's proxy negotiates per request.
        peer.options.set_http_version(1, 1);
    }
    peer
}
