//! Rate limits per client and route (`[routes.rate_limit]`), charged per item: a 100-item
//! batch costs 100 (more with `weights`), in one step, so a batch fits whole or is refused
//! whole (429 with `Retry-After` and the IETF `RateLimit` / `RateLimit-Policy` headers).
//!
//! The algorithm is GCRA (the generic cell rate algorithm, a leaky bucket kept as one number):
//! each client has a theoretical arrival time (`tat`), the time at which its bucket would be
//! empty. A charge of `cost` items moves it `cost` emission intervals (1 ÷ rate) later, and is
//! allowed when the new `tat` lies at most `burst` intervals past now. It is exact (no windows
//! to straddle) and needs one number per client, which expires with it.
//!
//! The count is kept in this process (`local`, a bounded table whose idle clients expire) or
//! in Redis (`redis`, `redis.rs`): every replica then shares one count through one atomic
//! script run on Redis's clock. When Redis cannot answer within `redis_timeout` the route's
//! `on_store_error` decides, and Redis is left alone for `redis_retry_interval`.

mod redis;

use crate::config::rate_limit::{OnStoreError, RateLimitConfig, RateLimitStore, StoreKind};
use crate::permits::ClientId;
use http::{HeaderName, HeaderValue};
use ring::digest;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use self::redis::StoreError;

/// One limit as GCRA counts it, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The time one item's cost takes to drain (1 ÷ items per second).
    pub interval_us: u64,
    /// How far ahead of now the bucket may be filled: `burst` intervals.
    pub tolerance_us: u64,
    pub burst: u64,
}

impl Policy {
    /// The limit at `fraction` of its rate and burst (a replica's share while Redis is away).
    pub fn new(config: &RateLimitConfig, fraction: f64) -> Policy {
        let rate = config.items_per_second * fraction;
        let interval_us = ((1e6 / rate).round() as u64).max(1);
        let burst = ((config.burst as f64 * fraction).floor() as u64).max(1);
        Policy {
            interval_us,
            tolerance_us: interval_us.saturating_mul(burst),
            burst,
        }
    }
}

/// What one charge decided, and where the client stands after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// When the refused charge would fit (zero when allowed).
    pub retry_after: Duration,
    /// Items the client may still send at once.
    pub remaining: u64,
    /// Until its bucket is empty again.
    pub reset: Duration,
}

/// GCRA: the charge of `cost` items at `now_us` to a client whose bucket empties at `tat_us`
/// (none: empty), and the new `tat` to keep when allowed.
pub fn gcra(policy: Policy, now_us: u64, tat_us: Option<u64>, cost: u64) -> (Verdict, Option<u64>) {
    let tat = tat_us.unwrap_or(now_us).max(now_us);
    let new_tat = tat.saturating_add(cost.saturating_mul(policy.interval_us));
    let allow_at = new_tat.saturating_sub(policy.tolerance_us);
    let stands = |tat: u64| {
        let backlog = tat - now_us;
        let remaining = policy.tolerance_us.saturating_sub(backlog) / policy.interval_us;
        (remaining, Duration::from_micros(backlog))
    };
    if now_us < allow_at {
        let (remaining, reset) = stands(tat);
        let verdict = Verdict {
            allowed: false,
            retry_after: Duration::from_micros(allow_at - now_us),
            remaining,
            reset,
        };
        return (verdict, None);
    }
    let (remaining, reset) = stands(new_tat);
    let verdict = Verdict {
        allowed: true,
        retry_after: Duration::ZERO,
        remaining,
        reset,
    };
    (verdict, Some(new_tat))
}

/// The outcome of charging a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Charge {
    /// Within the limit (or let through while the store is away: `degraded`).
    Allowed(Option<Verdict>),
    /// Over the limit: 429.
    Limited(Verdict),
    /// More items than the burst: no wait makes it fit.
    TooLarge { cost: u64, burst: u64 },
    /// The store cannot be asked and the route fails closed: 503.
    StoreUnavailable,
}

/// The process's rate limiters: the local table, and Redis when configured.
pub struct Limiter {
    local: Local,
    /// Items taken from Redis ahead of need, per client (`lease`).
    leases: Leases,
    redis: Option<redis::RedisStore>,
    settings: RateLimitStore,
    /// Called with each store error's reason (`timeout`, `error`) and the degraded state.
    observe: Box<dyn Fn(Option<&'static str>, bool) + Send + Sync>,
}

impl Limiter {
    pub fn new(
        settings: &RateLimitStore,
        observe: impl Fn(Option<&'static str>, bool) + Send + Sync + 'static,
    ) -> Limiter {
        Limiter {
            local: Local::new(settings.max_local_clients),
            leases: Leases::new(settings.max_local_clients),
            redis: settings
                .redis_url
                .as_deref()
                .and_then(|url| redis::RedisStore::new(url, settings)),
            settings: settings.clone(),
            observe: Box::new(observe),
        }
    }

    /// Whether this limiter can serve a config with `settings` as it is (a reload keeps it,
    /// and with it the local counts and the Redis connection).
    pub fn serves(&self, settings: &RateLimitStore) -> bool {
        &self.settings == settings
    }

    /// Charges `cost` items to `client` on `route`.
    pub async fn charge(
        &self,
        route: &str,
        config: &RateLimitConfig,
        client: &ClientId,
        cost: u64,
    ) -> Charge {
        let policy = Policy::new(config, 1.0);
        if cost == 0 {
            // Every item refused by the dialect: nothing is sent, nothing to charge.
            return Charge::Allowed(None);
        }
        if cost > policy.burst {
            return Charge::TooLarge {
                cost,
                burst: policy.burst,
            };
        }
        let key = client_key(route, client);
        let on_error = match (config.store, &self.redis) {
            (StoreKind::Local, _) => return verdict(self.local.charge(key, policy, cost)),
            (StoreKind::Redis, Some(redis)) => match self.shared(redis, key, config, cost).await {
                Ok(charge) => {
                    (self.observe)(None, false);
                    return charge;
                }
                Err(error) => {
                    if let Some(reason) = error.reason() {
                        tracing::warn!(route, error = %error, "rate limit store unavailable");
                        (self.observe)(Some(reason), true);
                    }
                    config.on_store_error
                }
            },
            // Not reachable from a valid config (a redis route needs a redis_url).
            (StoreKind::Redis, None) => config.on_store_error,
        };
        match on_error {
            OnStoreError::FailOpen => Charge::Allowed(None),
            OnStoreError::FailClosed => Charge::StoreUnavailable,
            OnStoreError::Local(fraction) => {
                let policy = Policy::new(config, fraction);
                if cost > policy.burst {
                    return Charge::Limited(Verdict {
                        allowed: false,
                        retry_after: self.settings.redis_retry_interval,
                        remaining: 0,
                        reset: Duration::ZERO,
                    });
                }
                verdict(self.local.charge(key, policy, cost))
            }
        }
    }

    /// The charge against the shared count: straight to Redis, or with a `lease` from the
    /// items this process already took for the client, taking a new lease (at least what is
    /// missing) when they do not cover the batch. Leased items are charged in Redis before
    /// they are spent, so the shared count never admits more than the limit; a lease spent
    /// later than it was taken shifts at most `lease - 1` items per replica and client.
    async fn shared(
        &self,
        redis: &redis::RedisStore,
        key: [u8; 16],
        config: &RateLimitConfig,
        cost: u64,
    ) -> Result<Charge, StoreError> {
        let policy = Policy::new(config, 1.0);
        let Some(lease) = config.lease else {
            let grant = redis.charge(&key, policy, cost, cost).await?;
            return Ok(verdict(grant.verdict));
        };
        let held = self.leases.take(key);
        if held.items >= cost {
            self.leases.put_back(key, held.items - cost, held.verdict);
            let left = Verdict {
                remaining: held.verdict.remaining + held.items - cost,
                ..held.verdict
            };
            return Ok(Charge::Allowed(Some(left)));
        }
        let missing = cost - held.items;
        let grant = match redis
            .charge(&key, policy, missing, lease.max(missing))
            .await
        {
            Ok(grant) => grant,
            Err(error) => {
                self.leases.put_back(key, held.items, held.verdict);
                return Err(error);
            }
        };
        if grant.taken == 0 {
            self.leases.put_back(key, held.items, held.verdict);
            return Ok(Charge::Limited(grant.verdict));
        }
        let left = held.items + grant.taken - cost;
        self.leases.put_back(key, left, grant.verdict);
        Ok(Charge::Allowed(Some(Verdict {
            remaining: grant.verdict.remaining + left,
            ..grant.verdict
        })))
    }
}

fn verdict(verdict: Verdict) -> Charge {
    if verdict.allowed {
        Charge::Allowed(Some(verdict))
    } else {
        Charge::Limited(verdict)
    }
}

/// A client of a route as the stores know it: a digest, so a huge client key costs no more
/// than a small one, and the route name so routes count apart.
fn client_key(route: &str, client: &ClientId) -> [u8; 16] {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(&(route.len() as u64).to_be_bytes());
    context.update(route.as_bytes());
    context.update(client.as_bytes());
    let mut key = [0; 16];
    key.copy_from_slice(&context.finish().as_ref()[..16]);
    key
}

/// The in-process table: each client's `tat`, expiring when its bucket is empty, at most
/// `max_local_clients` of them (past that the least used are dropped, which forgets their
/// counts: a bounded over-admission, never unbounded memory).
struct Local {
    tats: moka::sync::Cache<[u8; 16], u64>,
    epoch: Instant,
}

struct UntilEmpty {
    epoch: Instant,
}

impl moka::Expiry<[u8; 16], u64> for UntilEmpty {
    fn expire_after_create(&self, _: &[u8; 16], tat: &u64, now: Instant) -> Option<Duration> {
        Some(self.left(*tat, now))
    }
    fn expire_after_update(
        &self,
        _: &[u8; 16],
        tat: &u64,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.left(*tat, now))
    }
}

impl UntilEmpty {
    fn left(&self, tat_us: u64, now: Instant) -> Duration {
        let now_us = now.saturating_duration_since(self.epoch).as_micros() as u64;
        Duration::from_micros(tat_us.saturating_sub(now_us)) + Duration::from_millis(1)
    }
}

impl Local {
    fn new(max_clients: u64) -> Local {
        let epoch = Instant::now();
        Local {
            tats: moka::sync::Cache::builder()
                .max_capacity(max_clients)
                .expire_after(UntilEmpty { epoch })
                .build(),
            epoch,
        }
    }

    fn charge(&self, key: [u8; 16], policy: Policy, cost: u64) -> Verdict {
        let now_us = self.epoch.elapsed().as_micros() as u64;
        let mut decided = None;
        self.tats.entry(key).and_compute_with(|entry| {
            let (verdict, new_tat) = gcra(policy, now_us, entry.map(|e| e.into_value()), cost);
            decided = Some(verdict);
            match new_tat {
                Some(tat) => moka::ops::compute::Op::Put(tat),
                None => moka::ops::compute::Op::Nop,
            }
        });
        decided.unwrap_or(Verdict {
            allowed: true,
            retry_after: Duration::ZERO,
            remaining: 0,
            reset: Duration::ZERO,
        })
    }

    #[cfg(test)]
    fn len(&self) -> u64 {
        self.tats.run_pending_tasks();
        self.tats.entry_count()
    }
}

/// Leased items per client: taken out whole by a charge and put back with what is left (two
/// batches of one client at once each see their own part, never the same items twice).
/// Bounded like the local table; a lease unused for `LEASE_FOR` is dropped (its items were
/// charged in Redis and are not refunded: under-admission, never over).
struct Leases {
    held: moka::sync::Cache<[u8; 16], Lease>,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    items: u64,
    /// Where the client stood when the items were taken.
    verdict: Verdict,
}

/// How long leased items stay usable after the last charge that touched them.
pub const LEASE_FOR: Duration = Duration::from_secs(1);

impl Leases {
    fn new(max_clients: u64) -> Leases {
        Leases {
            held: moka::sync::Cache::builder()
                .max_capacity(max_clients)
                .time_to_live(LEASE_FOR)
                .build(),
        }
    }

    fn take(&self, key: [u8; 16]) -> Lease {
        self.held.remove(&key).unwrap_or(Lease {
            items: 0,
            verdict: Verdict {
                allowed: true,
                retry_after: Duration::ZERO,
                remaining: 0,
                reset: Duration::ZERO,
            },
        })
    }

    fn put_back(&self, key: [u8; 16], items: u64, verdict: Verdict) {
        if items == 0 {
            return;
        }
        self.held.entry(key).and_upsert_with(|held| {
            let earlier = held.map_or(0, |e| e.into_value().items);
            Lease {
                items: earlier + items,
                verdict,
            }
        });
    }
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers): the policy as a
/// quota `q` of `burst` items refilled over `w` seconds, and the client's remaining items `r`
/// with the seconds `t` until its quota is whole again.
pub fn headers(config: &RateLimitConfig, verdict: &Verdict) -> [(HeaderName, HeaderValue); 2] {
    let window = (config.burst as f64 / config.items_per_second)
        .ceil()
        .max(1.0) as u64;
    let policy = format!("\"items\";q={};w={window}", config.burst);
    let reset = verdict.reset.as_secs() + u64::from(verdict.reset.subsec_nanos() > 0);
    let state = format!("\"items\";r={};t={reset}", verdict.remaining);
    [
        (
            HeaderName::from_static("ratelimit-policy"),
            HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("\"items\"")),
        ),
        (
            HeaderName::from_static("ratelimit"),
            HeaderValue::from_str(&state).unwrap_or(HeaderValue::from_static("\"items\"")),
        ),
    ]
}

/// A shared limiter for a config's store settings: the previous one when it serves them.
pub fn limiter_for(
    settings: &RateLimitStore,
    previous: Option<&Arc<Limiter>>,
    observe: impl Fn(Option<&'static str>, bool) + Send + Sync + 'static,
) -> Arc<Limiter> {
    match previous {
        Some(limiter) if limiter.serves(settings) => limiter.clone(),
        _ => Arc::new(Limiter::new(settings, observe)),
    }
}

#[cfg(test)]
mod tests;
