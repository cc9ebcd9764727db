//! The item cache (a route's `[routes.cache]`): fresh answers of identical items (the
//! coalescing key: `crate::coalesce::Scope`, scoped to the caller unless the route says public)
//! are served from memory, and only misses go upstream.
//!
//! What may be kept and for how long follows RFC 9111 for a shared cache: a `GET`/`HEAD` answer
//! with a status cacheable by default, fresh for `s-maxage`, else `max-age`, else `Expires`
//! minus `Date`, else the route's `ttl`; never one with `no-store`, `no-cache`, `private`,
//! `Vary: *` or a `Set-Cookie`; an item asking `no-cache` or `no-store` skips it. `Vary` is
//! honoured by keeping the varying request headers' values with the answer. A successful
//! unsafe item (`POST`, `PUT`, `DELETE`, ...) drops what is kept for its path (section 4.4).
//! A hit carries `Age`. The bound is in bytes (bodies and headers, `max_bytes`), enforced by
//! moka's weigher with TinyLFU admission; each entry expires when it stops being fresh. What it
//! holds also counts against the admission's memory budget (`max_held_bytes`).

use crate::admission::Admission;
use crate::coalesce::Key;
use crate::config::coalesce::CacheConfig;
use crate::item::{Outcome, SubRequest, UpstreamResponse};
use http::header::{HeaderName, HeaderValue, AGE, CACHE_CONTROL, DATE, EXPIRES, VARY};
use http::HeaderMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Statuses a shared cache may keep by default (RFC 9110 section 15.1).
const CACHEABLE_STATUSES: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// What an entry costs beside its body and headers.
const ENTRY_OVERHEAD: usize = 256;

/// One kept answer.
#[derive(Debug)]
struct Entry {
    response: UpstreamResponse,
    stored: Instant,
    fresh_for: Duration,
    /// The invalidation bucket of the upstream, `Host` and path (no query) it was asked for,
    /// and that bucket's generation when it was kept.
    bucket: usize,
    generation: u64,
    /// The request headers its answer varies by, with their values then.
    vary: Vec<(HeaderName, Option<HeaderValue>)>,
}

/// Expires each entry when it stops being fresh.
struct Freshness;

impl moka::Expiry<Key, Arc<Entry>> for Freshness {
    fn expire_after_create(
        &self,
        _key: &Key,
        entry: &Arc<Entry>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(entry.fresh_for)
    }
}

/// Invalidation buckets: a successful unsafe item bumps its path's bucket, and every entry
/// kept under an older generation of that bucket is stale. Paths share buckets by hash, so an
/// unrelated path may be dropped too (a miss, never a wrong answer); the table is fixed.
const BUCKETS: usize = 1024;

/// A route's cache.
pub struct ItemCache {
    entries: moka::sync::Cache<Key, Arc<Entry>>,
    generations: Box<[AtomicU64]>,
    /// On a public route a request with credentials is answered from the cache only when the
    /// answer says it may be (RFC 9111 section 3.5).
    public: bool,
    /// The bytes held: added on each store, taken off as each entry leaves, whatever the
    /// cause (for the gauge; the bound itself is the cache's own).
    held: Arc<AtomicU64>,
    /// The admission's memory budget, which counts what the cache holds too.
    budget: Arc<Admission>,
}

/// What the cache said about an item.
pub enum Lookup {
    /// A fresh answer, with `Age`.
    Hit(Outcome),
    /// Nothing fresh: send it, then offer the answer to `store`.
    Miss,
    /// The item asked not to be served from a cache (`no-cache`/`no-store` on the item), or
    /// cannot be: send it, store nothing.
    Bypass,
}

impl ItemCache {
    /// An empty cache; `evicted` is told each answer dropped for room.
    pub fn new(
        config: &CacheConfig,
        budget: Arc<Admission>,
        evicted: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        let held = Arc::new(AtomicU64::new(0));
        let released = held.clone();
        let budget_released = budget.clone();
        let entries = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|_key: &Key, entry: &Arc<Entry>| {
                u32::try_from(weight(&entry.response)).unwrap_or(u32::MAX)
            })
            .expire_after(Freshness)
            .eviction_listener(move |_key, entry: Arc<Entry>, cause| {
                // What the count still had of it (none once a reload dropped the cache).
                let bytes = weight(&entry.response) as u64;
                let before = released
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                        Some(held.saturating_sub(bytes))
                    })
                    .unwrap_or(0);
                let taken = usize::try_from(before.min(bytes)).unwrap_or(usize::MAX);
                budget_released.release_cached(taken);
                if cause == moka::notification::RemovalCause::Size {
                    evicted();
                }
            })
            .build();
        ItemCache {
            entries,
            generations: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            public: config.key.public,
            held,
            budget,
        }
    }

    /// A fresh answer for `request` (whose key is `key`), if one is kept and its `Vary`
    /// headers match; `headers`: what else the request carries upstream (forwarded ones).
    pub fn lookup(
        &self,
        key: &Key,
        request: &SubRequest,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Lookup {
        if asks_not_to(request) {
            return Lookup::Bypass;
        }
        let Some(entry) = self.entries.get(key) else {
            return Lookup::Miss;
        };
        let age = entry.stored.elapsed();
        let matches = entry
            .vary
            .iter()
            .all(|(name, value)| header(request, headers, name) == value.as_ref());
        let current = self.generations[entry.bucket].load(Ordering::Relaxed) == entry.generation;
        if age >= entry.fresh_for || !matches || !current {
            return Lookup::Miss;
        }
        let mut response = entry.response.clone();
        response
            .headers
            .insert(AGE, HeaderValue::from(age.as_secs()));
        Lookup::Hit(Outcome::Response(response))
    }

    /// Keeps `outcome` for `key` if it may be kept, for as long as it is fresh; `ttl`: how
    /// long an answer that says nothing of its freshness stays fresh (the route's, or a
    /// JSON-RPC method's); `target`: the upstream, `Host` and path, for invalidation.
    pub fn store(
        &self,
        key: Key,
        target: &str,
        request: &SubRequest,
        headers: &[(HeaderName, HeaderValue)],
        outcome: &Outcome,
        ttl: Option<Duration>,
    ) {
        let Outcome::Response(response) = outcome else {
            return;
        };
        if !crate::coalesce::shareable(outcome, false) {
            return;
        }
        let Some(fresh_for) = freshness(response, ttl) else {
            return;
        };
        let with_credentials = header(request, headers, &http::header::AUTHORIZATION).is_some();
        if self.public && with_credentials && !shared_with_credentials(response) {
            return;
        }
        let Some(vary) = vary(response, request, headers) else {
            return;
        };
        let bucket = bucket(target);
        let entry = Entry {
            response: response.clone(),
            stored: Instant::now(),
            fresh_for,
            bucket,
            generation: self.generations[bucket].load(Ordering::Relaxed),
            vary,
        };
        let bytes = weight(&entry.response);
        self.held.fetch_add(bytes as u64, Ordering::Relaxed);
        self.budget.hold_cached(bytes);
        self.entries.insert(key, Arc::new(entry));
    }

    /// Makes what is kept for `target` stale (an unsafe method succeeded on it): one counter,
    /// whatever the cache holds; the stale entries go as they are looked up or evicted.
    pub fn invalidate(&self, target: &str) {
        self.generations[bucket(target)].fetch_add(1, Ordering::Relaxed);
    }

    /// The bytes held (as weighed). Entries leave the count as they leave the cache, which
    /// moka does in its maintenance as the cache is used.
    pub fn bytes(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

/// A cache dropped by a reload gives its bytes back to the memory budget (its entries go
/// without telling the eviction listener).
impl Drop for ItemCache {
    fn drop(&mut self) {
        let held = usize::try_from(self.held.swap(0, Ordering::Relaxed)).unwrap_or(usize::MAX);
        self.budget.release_cached(held);
    }
}

fn bucket(target: &str) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let hash =
        BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(target);
    (hash % BUCKETS as u64) as usize
}

/// Whether an answer to a request with credentials may be reused for others (RFC 9111
/// section 3.5): it says `public`, `s-maxage` or `must-revalidate`.
fn shared_with_credentials(response: &UpstreamResponse) -> bool {
    response.headers.get_all(CACHE_CONTROL).iter().any(|value| {
        directives(value)
            .any(|(name, _)| matches!(name.as_str(), "public" | "s-maxage" | "must-revalidate"))
    })
}

/// An answer's bytes as the cache counts them.
fn weight(response: &UpstreamResponse) -> usize {
    response.raw_size() + ENTRY_OVERHEAD
}

/// The item's own `Cache-Control` asks for a fresh answer from the origin.
fn asks_not_to(request: &SubRequest) -> bool {
    request
        .headers
        .iter()
        .filter(|(name, _)| *name == CACHE_CONTROL)
        .any(|(_, value)| {
            directives(value).any(|(name, _)| name == "no-cache" || name == "no-store")
        })
}

/// `Cache-Control` directives, lower-cased names with their values. Read from the bytes
/// (non-ASCII ones replaced): a value with one stray byte still says `no-store`.
fn directives(value: &HeaderValue) -> impl Iterator<Item = (String, Option<String>)> {
    String::from_utf8_lossy(value.as_bytes())
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|directive| match directive.split_once('=') {
            Some((name, value)) => (
                name.trim().to_ascii_lowercase(),
                Some(value.trim().trim_matches('"').to_string()),
            ),
            None => (directive.to_ascii_lowercase(), None),
        })
        .collect::<Vec<_>>()
        .into_iter()
}

/// How long `response` is fresh, or `None` when it may not be kept.
fn freshness(response: &UpstreamResponse, ttl: Option<Duration>) -> Option<Duration> {
    if !CACHEABLE_STATUSES.contains(&response.status) {
        return None;
    }
    let mut max_age = None;
    let mut s_maxage = None;
    for value in response.headers.get_all(CACHE_CONTROL) {
        for (name, argument) in directives(value) {
            match name.as_str() {
                "no-store" | "no-cache" | "private" => return None,
                "max-age" => max_age = argument.and_then(|a| a.parse::<u64>().ok()),
                "s-maxage" => s_maxage = argument.and_then(|a| a.parse::<u64>().ok()),
                _ => {}
            }
        }
    }
    let lifetime = match s_maxage.or(max_age) {
        Some(seconds) => Duration::from_secs(seconds),
        None => match expires(&response.headers) {
            Some(lifetime) => lifetime,
            None => ttl?,
        },
    };
    // What the answer's age already used up (an upstream cache's `Age`).
    let age = response
        .headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let left = lifetime.saturating_sub(age);
    (!left.is_zero()).then_some(left)
}

/// `Expires` minus `Date` (or now); an unreadable `Expires` means already expired.
fn expires(headers: &HeaderMap) -> Option<Duration> {
    let at = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(httpdate::parse_http_date)
    };
    let expires = at(EXPIRES)?;
    let Ok(expires) = expires else {
        return Some(Duration::ZERO);
    };
    let date = at(DATE)
        .and_then(Result::ok)
        .unwrap_or_else(SystemTime::now);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// The request headers `response` varies by, with their values in `request`; `None` for
/// `Vary: *` (it varies by what no cache can see).
fn vary(
    response: &UpstreamResponse,
    request: &SubRequest,
    headers: &[(HeaderName, HeaderValue)],
) -> Option<Vec<(HeaderName, Option<HeaderValue>)>> {
    let mut out = Vec::new();
    for value in response.headers.get_all(VARY) {
        for name in value.to_str().unwrap_or("*").split(',').map(str::trim) {
            if name == "*" {
                return None;
            }
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                return None;
            };
            let value = header(request, headers, &name).cloned();
            out.push((name, value));
        }
    }
    Some(out)
}

/// A request header's value: the item's own, else one the batch adds.
fn header<'a>(
    request: &'a SubRequest,
    headers: &'a [(HeaderName, HeaderValue)],
    name: &HeaderName,
) -> Option<&'a HeaderValue> {
    request
        .headers
        .iter()
        .chain(headers)
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests;
