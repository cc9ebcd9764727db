//! The shared store: each charge is one atomic Lua script on Redis (GCRA on Redis's own clock,
//! `TIME`, so the replicas' clocks do not matter), through the `redis` crate's managed
//! connection (one multiplexed connection, reconnected in the background).
//!
//! Nothing waits on Redis longer than `redis_timeout`. After an error Redis is left alone for
//! `redis_retry_interval` (the caller's `on_store_error` applies), then tried again: recovery
//! needs nothing but Redis answering.

use super::{Policy, Verdict};
use crate::config::rate_limit::RateLimitStore;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// KEYS[1]: the client's key. ARGV: interval and tolerance in microseconds, the cost (the
/// least that must fit) and the most to take (more than the cost for a lease).
/// Returns {items taken (0: refused), retry after µs, remaining items, µs until the bucket is
/// empty}. The key expires when the bucket is empty, so idle clients leave nothing behind.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local most = tonumber(ARGV[4])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local room = math.floor((tolerance - (tat - now)) / interval)
if room < cost then
  local retry = tat + cost * interval - tolerance - now
  return {0, retry, math.max(room, 0), tat - now}
end
local taken = math.min(room, most)
local new_tat = tat + taken * interval
local backlog = new_tat - now
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.floor(backlog / 1000) + 1)
return {taken, 0, room - taken, backlog}
";

/// What one call took from the shared count.
#[derive(Debug, Clone, Copy)]
pub(super) struct Grant {
    /// Items taken: 0 when refused, the cost or more (up to a lease) when allowed.
    pub taken: u64,
    pub verdict: Verdict,
}

/// Why Redis gave no verdict.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
    /// Left alone after an error, for `redis_retry_interval`.
    #[error("resting after an error")]
    Resting,
}

impl StoreError {
    /// The metric label of a fresh error (none for `Resting`, already counted).
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            StoreError::Timeout(_) => Some("timeout"),
            StoreError::Failed(_) => Some("error"),
            StoreError::Resting => None,
        }
    }
}

pub(super) struct RedisStore {
    client: ::redis::Client,
    /// Made on first use (Redis may start after batchgate), by a task of its own.
    connection: Arc<Connecting>,
    script: ::redis::Script,
    timeout: Duration,
    retry_interval: Duration,
    prefix: String,
    resting_until: Mutex<Option<Instant>>,
}

impl RedisStore {
    /// `None` for a URL `check` would have refused.
    pub(super) fn new(url: &str, settings: &RateLimitStore) -> Option<RedisStore> {
        Some(RedisStore {
            client: ::redis::Client::open(url).ok()?,
            connection: Arc::new(Connecting {
                made: Mutex::new(None),
                attempt: watch::channel(Attempt::default()).0,
            }),
            script: ::redis::Script::new(GCRA),
            timeout: settings.redis_timeout,
            retry_interval: settings.redis_retry_interval,
            prefix: settings.redis_key_prefix.clone(),
            resting_until: Mutex::new(None),
        })
    }

    /// Takes at least `cost` and at most `most` items (`Grant::taken`), or none.
    pub(super) async fn charge(
        &self,
        key: &[u8; 16],
        policy: Policy,
        cost: u64,
        most: u64,
    ) -> Result<Grant, StoreError> {
        if self
            .resting_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until)
        {
            return Err(StoreError::Resting);
        }
        let asked = tokio::time::timeout(self.timeout, self.ask(key, policy, cost, most)).await;
        let result = match asked {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        let mut resting = self.resting_until.lock().unwrap_or_else(|e| e.into_inner());
        *resting = result
            .is_err()
            .then(|| Instant::now() + self.retry_interval);
        result
    }

    async fn ask(
        &self,
        key: &[u8; 16],
        policy: Policy,
        cost: u64,
        most: u64,
    ) -> Result<Grant, StoreError> {
        let mut connection = self.connection().await?;
        let mut name = format!("{}rl:", self.prefix);
        for byte in key {
            let _ = write!(name, "{byte:02x}");
        }
        let (taken, retry_after, remaining, reset): (u64, u64, u64, u64) = self
            .script
            .key(name)
            .arg(policy.interval_us)
            .arg(policy.tolerance_us)
            .arg(cost)
            .arg(most.max(cost))
            .invoke_async(&mut connection)
            .await
            .map_err(|e| StoreError::Failed(e.to_string()))?;
        Ok(Grant {
            taken,
            verdict: Verdict {
                allowed: taken > 0,
                retry_after: Duration::from_micros(retry_after),
                remaining,
                reset: Duration::from_micros(reset),
            },
        })
    }

    /// The managed connection. The first call starts making it on a task of its own and
    /// waits (within the caller's timeout); a connection slower than one timeout is still
    /// made, for the calls after it. One attempt at a time; a failed one is retried by the
    /// next call (after the retry interval's rest).
    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let state = &self.connection;
        if let Some(connection) = state.made() {
            return Ok(connection);
        }
        // Atomically: join the attempt running, or start the next one.
        let mut started = false;
        state.attempt.send_if_modified(|attempt| {
            if attempt.running {
                return false;
            }
            *attempt = Attempt {
                number: attempt.number + 1,
                running: true,
                failed: false,
            };
            started = true;
            true
        });
        let mut attempt = state.attempt.subscribe();
        let number = attempt.borrow_and_update().number;
        if started {
            self.start_connecting();
        }
        // The attempt's end (a dropped sender cannot happen: the store holds it).
        let _ = attempt.wait_for(|a| a.number > number || !a.running).await;
        state
            .made()
            .ok_or_else(|| StoreError::Failed("could not connect".into()))
    }

    fn start_connecting(&self) {
        let state = self.connection.clone();
        let client = self.client.clone();
        // Connecting may take longer than one call's timeout; each command keeps that bound.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout.max(CONNECT_TIMEOUT))
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1);
        tokio::spawn(async move {
            let made = ConnectionManager::new_with_config(client, config).await;
            let failed = match made {
                Ok(connection) => {
                    *state.made.lock().unwrap_or_else(|e| e.into_inner()) = Some(connection);
                    false
                }
                Err(error) => {
                    tracing::warn!(error = %error, "rate limit store: cannot connect to Redis");
                    true
                }
            };
            state.attempt.send_modify(|a| {
                a.running = false;
                a.failed = failed;
            });
        });
    }
}

/// The connection being made, and made.
struct Connecting {
    made: Mutex<Option<ConnectionManager>>,
    attempt: watch::Sender<Attempt>,
}

impl Connecting {
    fn made(&self) -> Option<ConnectionManager> {
        self.made.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Attempt {
    number: u64,
    running: bool,
    failed: bool,
}

/// The longest one connection attempt may take (beyond a call's own timeout, which it
/// outlives on its task).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
