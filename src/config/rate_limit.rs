//! Validation of rate limits: a route's `[routes.rate_limit]` (items per second per client,
//! with a burst, charged per item) and the file's `[rate_limits]` (the shared store, Redis,
//! and the bound of the in-process table).

use super::file::{RateLimitSection, RateLimitsSection, RouteSection};
use super::problems::Problems;
use std::collections::BTreeMap;
use std::time::Duration;

/// Where a route's counts are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// In this process: each replica counts alone.
    Local,
    /// In Redis (`[rate_limits] redis_url`): every replica shares one count.
    Redis,
}

/// What a route does while its Redis cannot be asked (down, slow, unreachable).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OnStoreError {
    /// Batches are let through uncounted.
    FailOpen,
    /// Batches are refused (503).
    FailClosed,
    /// Counted in this process against this fraction of the limit (1 ÷ replicas keeps the
    /// sum near the shared limit).
    Local(f64),
}

/// A route's `[routes.rate_limit]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// The sustained rate, in items per second per client.
    pub items_per_second: f64,
    /// How many items a client may send at once after being idle.
    pub burst: u64,
    pub store: StoreKind,
    pub on_store_error: OnStoreError,
    /// Items that cost more than one (by JSON-RPC method on jsonrpc routes, by HTTP method
    /// elsewhere).
    pub weights: BTreeMap<String, u64>,
    /// With Redis: items taken at once and spent in the process, so most batches do not
    /// ask Redis (none: every batch asks).
    pub lease: Option<u64>,
}

/// The file's `[rate_limits]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitStore {
    /// `redis://host:port/db` (or `redis+unix:///path`); required when a route uses Redis.
    pub redis_url: Option<String>,
    /// The longest a batch waits for Redis; past it the route's `on_store_error` applies.
    pub redis_timeout: Duration,
    /// Put in front of every key batchgate writes, so several deployments can share one Redis.
    pub redis_key_prefix: String,
    /// After an error, Redis is left alone this long (`on_store_error` applies meanwhile):
    /// a stalled Redis costs one timeout per interval, not one per batch.
    pub redis_retry_interval: Duration,
    /// The bound of the in-process table of clients (every local limit and degraded mode).
    pub max_local_clients: u64,
}

pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
pub const DEFAULT_REDIS_RETRY_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_LOCAL_CLIENTS: i64 = 100_000;
pub const DEFAULT_KEY_PREFIX: &str = "batchgate:";
/// Far past any real limit, and small enough that a burst in microseconds fits in what
/// Redis's Lua numbers hold exactly.
const MAX_RATE: f64 = 1e6;
/// One item per 1,000 s: slower rates would put a client's bucket times past what Redis's
/// Lua numbers hold exactly.
const MIN_RATE: f64 = 0.001;
const MAX_BURST: i64 = 1_000_000;
const MAX_WEIGHT: i64 = 1_000_000;

pub(super) fn store(
    section: Option<&RateLimitsSection>,
    problems: &mut Problems,
) -> RateLimitStore {
    let empty = RateLimitsSection::default();
    let section = section.unwrap_or(&empty);
    let at = |key: &'static str| ["rate_limits", key];
    if let Some(url) = &section.redis_url {
        match redis::Client::open(url.as_str()) {
            Ok(_) if url.starts_with("rediss") => problems.push(
                &at("redis_url"),
                "rediss:// (TLS) is not supported; use redis:// on a trusted network or redis+unix://",
            ),
            Ok(_) => {}
            Err(_) => problems.push(
                &at("redis_url"),
                format!("{url:?} is not a Redis URL (redis://host:port/db or redis+unix:///path)"),
            ),
        }
    }
    let key_prefix = section
        .redis_key_prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_string());
    if key_prefix.len() > 64
        || key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        problems.push(
            &at("redis_key_prefix"),
            "at most 64 characters, no spaces or control characters",
        );
    }
    RateLimitStore {
        redis_url: section.redis_url.clone(),
        redis_timeout: super::values::duration(
            &section.redis_timeout,
            DEFAULT_REDIS_TIMEOUT,
            &at("redis_timeout"),
            problems,
        ),
        redis_key_prefix: key_prefix,
        redis_retry_interval: super::values::duration(
            &section.redis_retry_interval,
            DEFAULT_REDIS_RETRY_INTERVAL,
            &at("redis_retry_interval"),
            problems,
        ),
        max_local_clients: super::values::bounded(
            section.max_local_clients,
            DEFAULT_MAX_LOCAL_CLIENTS as usize,
            1,
            100_000_000,
            &at("max_local_clients"),
            problems,
        ) as u64,
    }
}

pub(super) fn rate_limit_config(
    section: &RouteSection,
    i: &str,
    store: &RateLimitStore,
    problems: &mut Problems,
) -> Option<RateLimitConfig> {
    let limit: &RateLimitSection = section.rate_limit.as_ref()?;
    let at = |key: &'static str| ["routes", i, "rate_limit", key];
    let items_per_second = match limit.items_per_second {
        Some(rate) if (MIN_RATE..=MAX_RATE).contains(&rate) => rate,
        Some(rate) => {
            problems.push(
                &at("items_per_second"),
                format!("{rate} is not allowed (at least {MIN_RATE}, at most {MAX_RATE})"),
            );
            1.0
        }
        None => {
            problems.push(
                &at("items_per_second"),
                "required: the sustained rate per client",
            );
            1.0
        }
    };
    let burst = super::values::bounded(
        limit.burst,
        items_per_second.ceil() as usize,
        1,
        MAX_BURST,
        &at("burst"),
        problems,
    ) as u64;
    let store_kind =
        match super::values::noted(limit.store.as_deref(), "local", &at("store"), problems) {
            None | Some("local") => StoreKind::Local,
            Some("redis") => {
                if store.redis_url.is_none() {
                    problems.push(
                        &at("store"),
                        "\"redis\" needs [rate_limits] redis_url = \"redis://host:port/0\"",
                    );
                }
                StoreKind::Redis
            }
            Some(other) => {
                problems.push(
                    &at("store"),
                    format!("{other:?} is not \"local\" or \"redis\""),
                );
                StoreKind::Local
            }
        };
    let fraction = match limit.local_fraction {
        Some(f) if f > 0.0 && f <= 1.0 => f,
        Some(f) => {
            problems.push(
                &at("local_fraction"),
                format!("{f} is not allowed (above 0, at most 1)"),
            );
            1.0
        }
        None => 1.0,
    };
    let on_store_error = match limit.on_store_error.as_deref() {
        None | Some("local") => OnStoreError::Local(fraction),
        Some("fail_open") => OnStoreError::FailOpen,
        Some("fail_closed") => OnStoreError::FailClosed,
        Some(other) => {
            problems.push(
                &at("on_store_error"),
                format!("{other:?} is not \"local\", \"fail_open\" or \"fail_closed\""),
            );
            OnStoreError::FailOpen
        }
    };
    if store_kind == StoreKind::Local
        && (limit.on_store_error.is_some() || limit.local_fraction.is_some())
    {
        problems.push(
            &["routes", i, "rate_limit"],
            "on_store_error and local_fraction are for store = \"redis\" (a local count has no store to lose)",
        );
    }
    if limit.local_fraction.is_some() && !matches!(on_store_error, OnStoreError::Local(_)) {
        problems.push(
            &at("local_fraction"),
            "only with on_store_error = \"local\"",
        );
    }
    let mut weights = BTreeMap::new();
    for (method, weight) in limit.weights.iter().flatten() {
        let path = ["routes", i, "rate_limit", "weights", method.as_str()];
        let weight = super::values::bounded(Some(*weight), 1, 1, MAX_WEIGHT, &path, problems);
        if section.dialect != "jsonrpc" && http::Method::from_bytes(method.as_bytes()).is_err() {
            problems.push(&path, format!("{method:?} is not an HTTP method"));
        }
        if weight as u64 > burst {
            problems.push(
                &path,
                format!(
                    "{weight} is more than the burst ({burst}): such an item could never be sent"
                ),
            );
        }
        weights.insert(method.clone(), weight as u64);
    }
    let lease = limit.lease.map(|lease| {
        let path = ["routes", i, "rate_limit", "lease"];
        if store_kind != StoreKind::Redis {
            problems.push(
                &path,
                "only with store = \"redis\" (a local count is not shared)",
            );
        }
        super::values::bounded(Some(lease), 2, 2, burst as i64, &path, problems) as u64
    });
    Some(RateLimitConfig {
        items_per_second,
        burst,
        store: store_kind,
        on_store_error,
        weights,
        lease,
    })
}
