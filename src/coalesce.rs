//! In-flight coalescing (a route's `[routes.coalesce]`): an item identical to one already in
//! flight waits for that one's answer instead of going upstream, within one batch and across
//! batches and clients.
//!
//! "Identical" is a SHA-256 key (`Key`) over everything the upstream would see that can change
//! its answer: the upstream, method, `Host`, path with its query parameters in a canonical
//! order, body, the item's own headers, and the caller's identity (the forwarded headers,
//! credentials among them, and the caller's `client_key`) unless the route says the data is
//! public. The first item of a key (the leader) starts the request on its own task; it and the
//! others (followers) wait for its answer until their own item deadline. Any of them may leave
//! without cancelling it; it is cancelled when all have left. The table holds a key only while
//! its request runs and someone waits for it, so it is bounded by the items in flight
//! (`max_in_flight`).
//!
//! Nothing per caller is shared: an answer that sets a cookie (`PER_CALLER_HEADERS`) is not
//! handed to followers, who then send their own request. Failures are shared with the
//! followers of that attempt; nothing is kept after it.

use crate::config::coalesce::CoalesceConfig;
use crate::item::{FailureKind, ItemSharing, Outcome, Sent, SubRequest};
use http::{HeaderName, HeaderValue};
use ring::digest;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

/// Response headers that belong to one caller and are never handed to another.
pub const PER_CALLER_HEADERS: &[&str] = &["set-cookie", "set-cookie2"];

/// The response header that says where an item's answer came from, on routes that coalesce:
/// `sent` (it went upstream), `coalesced` (another identical item's answer), `cache` (a fresh
/// answer kept by the route's cache, `crate::cache`).
pub const SOURCE_HEADER: HeaderName = HeaderName::from_static("x-batchgate-source");

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Sent,
    Coalesced,
    Cache,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Sent => "sent",
            Source::Coalesced => "coalesced",
            Source::Cache => "cache",
        }
    }
}

/// What identifies one upstream request for coalescing.
pub type Key = [u8; 32];

/// The answer a leader publishes: `None` until it has one.
type Published = watch::Sender<Option<Outcome>>;

/// The flights in progress (one table for every route: the key names the upstream).
#[derive(Default)]
pub struct Coalescer {
    flights: Mutex<HashMap<Key, Arc<Published>>>,
}

/// One batch's coalescing: the flights, and how its items are keyed.
pub struct Scope {
    pub coalescer: Arc<Coalescer>,
    pub keys: Keys,
}

/// How one batch's items are keyed (for coalescing and for the cache): the route's rules and
/// the part of the key every item of the batch shares (who is asking, where).
pub struct Keys {
    pub config: Arc<CoalesceConfig>,
    /// The dialect's rule for items that carry their own identity (JSON-RPC ids).
    pub sharing: Option<ItemSharing>,
    /// Upstream name, `Host`, and (unless public) the caller's identity, digested.
    batch: digest::Digest,
}

impl Keys {
    /// `forwarded`: the forwarded headers (name, value); `client`: the caller's `client_key`.
    pub fn new(
        config: Arc<CoalesceConfig>,
        sharing: Option<ItemSharing>,
        upstream: &str,
        host: &HeaderValue,
        forwarded: &[(HeaderName, HeaderValue)],
        client: &str,
        max_response_bytes: usize,
    ) -> Self {
        let mut context = digest::Context::new(&digest::SHA256);
        field(&mut context, upstream.as_bytes());
        field(&mut context, host.as_bytes());
        // Routes with another answer size limit would get (or fail) an answer differently.
        field(&mut context, &(max_response_bytes as u64).to_be_bytes());
        if config.public {
            for name in &config.key_headers {
                for (_, value) in forwarded.iter().filter(|(n, _)| n == name) {
                    field(&mut context, name.as_str().as_bytes());
                    field(&mut context, value.as_bytes());
                }
            }
        } else {
            for (name, value) in forwarded {
                field(&mut context, name.as_str().as_bytes());
                field(&mut context, value.as_bytes());
            }
            field(&mut context, client.as_bytes());
        }
        Keys {
            config,
            sharing,
            batch: context.finish(),
        }
    }

    /// Whether `other` keys every request as this does (the same batch part: rules, caller and
    /// upstream), so one key serves both.
    pub fn same_as(&self, other: &Keys) -> bool {
        self.batch.as_ref() == other.batch.as_ref()
    }

    /// Whether `request` may share an answer at all (its method is one the route coalesces).
    pub fn applies(&self, request: &SubRequest) -> bool {
        if !self.config.methods.contains(&request.method) {
            return false;
        }
        match &self.sharing {
            None => true,
            Some(sharing) => (sharing.method)(request)
                .is_some_and(|method| self.config.rpc_methods.contains(&method)),
        }
    }

    /// The key of `request` in this batch.
    pub fn key(&self, request: &SubRequest) -> Key {
        let mut context = digest::Context::new(&digest::SHA256);
        field(&mut context, self.batch.as_ref());
        field(&mut context, request.method.as_str().as_bytes());
        let (path, query) = request
            .path
            .split_once('?')
            .map_or((request.path.as_str(), None), |(p, q)| (p, Some(q)));
        field(&mut context, path.as_bytes());
        // `b=2&a=1` and `a=1&b=2` ask the same; repeated names keep their order. Each list
        // is counted first, so query pairs can never pass for headers.
        let mut pairs: Vec<&str> = query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .collect();
        pairs.sort_by_key(|pair| pair.split('=').next().unwrap_or_default());
        field(&mut context, &(pairs.len() as u64).to_be_bytes());
        for pair in pairs {
            field(&mut context, pair.as_bytes());
        }
        let mut headers: Vec<(&str, &[u8])> = request
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        headers.sort_unstable();
        field(&mut context, &(headers.len() as u64).to_be_bytes());
        for (name, value) in headers {
            field(&mut context, name.as_bytes());
            field(&mut context, value);
        }
        field(&mut context, b"body");
        match self.sharing.and_then(|sharing| (sharing.key_body)(request)) {
            Some(call) => field(&mut context, &call),
            None => field(&mut context, request.body.as_deref().unwrap_or_default()),
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(context.finish().as_ref());
        key
    }
}

/// Each field with its length first, so no two different field lists digest the same bytes.
fn field(context: &mut digest::Context, bytes: &[u8]) {
    context.update(&(bytes.len() as u64).to_be_bytes());
    context.update(bytes);
}

impl Coalescer {
    /// The answer for an item with `key`: that of the identical item's request in flight,
    /// or of a request started with `start` when none is. The request runs on its own task,
    /// so the item that started it may leave (its deadline, its client gone) while others
    /// still wait: it is cancelled only when every item waiting for it has left. Waited for
    /// until `until`. An answer with something per caller in it (`shareable`) is not handed
    /// on: each follower then sends its own request, all at once.
    pub async fn send<F>(
        self: &Arc<Self>,
        key: Key,
        across_callers: bool,
        until: Instant,
        start: impl Fn() -> F,
    ) -> (Outcome, Source)
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        // A flight that ended without an answer (everyone had left as this item joined, or
        // its task failed) is joined anew, once; then this item asks for itself.
        for _ in 0..2 {
            let (mut answer, leader) = self.join(key, &start);
            let waited = tokio::time::timeout_at(until, answer.wait_for(Option::is_some)).await;
            let shared = match waited {
                // Copied out before anything else is awaited.
                Ok(Ok(shared)) => shared.clone(),
                Ok(Err(_)) => continue,
                Err(_) => {
                    let gave_up = Outcome::failed(FailureKind::Timeout, Sent::Nothing);
                    let source = if leader {
                        Source::Sent
                    } else {
                        Source::Coalesced
                    };
                    return (gave_up, source);
                }
            };
            let Some(outcome) = shared else { continue };
            if leader {
                return (outcome, Source::Sent);
            }
            if shareable(&outcome, across_callers) {
                return (outcome, Source::Coalesced);
            }
            break;
        }
        (start().await, Source::Sent)
    }

    /// A receiver for `key`'s answer, and whether this item started its request.
    fn join<F>(self: &Arc<Self>, key: Key, start: impl Fn() -> F) -> (Answer, bool)
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(published) = flights.get(&key) {
            return (published.subscribe(), false);
        }
        let (published, answer) = watch::channel(None);
        let published = Arc::new(published);
        flights.insert(key, published.clone());
        let flight = Flight {
            coalescer: self.clone(),
            key,
            published,
        };
        tokio::spawn(flight.fly(start()).in_current_span());
        (answer, true)
    }
}

type Answer = watch::Receiver<Option<Outcome>>;

/// Whether an answer may be handed to another item (or kept for one): nothing in it is one
/// caller's alone. Across callers (a public route) also not an answer the upstream marked
/// `private`, nor one that varies by request headers the key may not cover (`Vary`).
pub fn shareable(outcome: &Outcome, across_callers: bool) -> bool {
    let Outcome::Response(response) = outcome else {
        return true;
    };
    let per_caller = PER_CALLER_HEADERS
        .iter()
        .any(|name| response.headers.contains_key(*name));
    let private = || {
        response
            .headers
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .any(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .to_ascii_lowercase()
                    .contains("private")
            })
    };
    let varies = || response.headers.contains_key(http::header::VARY);
    !per_caller && !(across_callers && (private() || varies()))
}

/// One request in flight: its key leaves the table when it ends, answered or not.
struct Flight {
    coalescer: Arc<Coalescer>,
    key: Key,
    published: Arc<Published>,
}

impl Flight {
    /// Sends and publishes the answer, or drops the request when every item waiting for it
    /// has left.
    async fn fly(self, send: impl Future<Output = Outcome>) {
        tokio::select! {
            outcome = send => {
                self.published.send_replace(Some(outcome));
            }
            () = self.published.closed() => {}
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut flights = self
            .coalescer
            .flights
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if flights
            .get(&self.key)
            .is_some_and(|p| Arc::ptr_eq(p, &self.published))
        {
            flights.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests;
