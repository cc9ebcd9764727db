//! Which failed attempts of an item are tried again, when, and how many retries an upstream
//! can afford: the typed failure decides (`RetryPolicy::reason`), a `Retry-After` or a
//! jittered exponential backoff says when (`RetryPolicy::wait`), and a budget of a share of
//! recent requests (`Budget`, as Finagle's `RetryBudget` and Envoy's retry budgets) keeps
//! retries and hedges from multiplying an overload.

use crate::config::{RetryOn, RetryPolicy};
use crate::item::{FailureKind, Outcome, Sent};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Why an attempt is tried again: the condition of the policy it met, when sending it
/// again is safe (`attempt::may_send_again`).
pub fn reason(policy: &RetryPolicy, outcome: &Outcome, repeatable: bool) -> Option<RetryOn> {
    let (condition, sent) = match outcome {
        // An answer the policy retries on (a 503) may follow work the upstream did.
        Outcome::Response(response) => (RetryOn::Status(response.status), Sent::Maybe),
        Outcome::Failed(failure) => {
            let condition = match failure.kind {
                FailureKind::Connect | FailureKind::Tls => RetryOn::Connect,
                FailureKind::Connection => RetryOn::Reset,
                FailureKind::Timeout => RetryOn::Timeout,
                _ => return None,
            };
            (condition, failure.sent)
        }
    };
    let safe = super::attempt::may_send_again(sent, repeatable);
    (safe && policy.on.contains(&condition)).then_some(condition)
}

/// How long to wait before retry `retry` (1 for the first), or `None` when the answer's
/// `Retry-After` asks for longer than `max_retry_after` (the answer then stands).
pub fn wait(policy: &RetryPolicy, outcome: &Outcome, retry: u32) -> Option<Duration> {
    let ceiling = policy
        .backoff
        .saturating_mul(1 << retry.saturating_sub(1).min(20))
        .min(policy.max_backoff);
    let backoff = ceiling.mul_f64(rand::random::<f64>());
    match retry_after(outcome) {
        Some(asked) if asked > policy.max_retry_after => None,
        Some(asked) => Some(asked.max(backoff)),
        None => Some(backoff),
    }
}

/// An answer's `Retry-After`: delay-seconds or an HTTP date (RFC 9110 section 10.2.3).
pub fn retry_after(outcome: &Outcome) -> Option<Duration> {
    let Outcome::Response(response) = outcome else {
        return None;
    };
    let value = response
        .headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// Seconds in the budget's window.
const WINDOW_SECONDS: u64 = 10;

/// Retries allowed as a share of the requests of the last `WINDOW_SECONDS`, with a floor
/// per second. Lock-free: one bucket per second, reset when its second comes round again; a
/// race at a bucket's turn can lose a count or two, which a budget can afford.
#[derive(Debug)]
pub struct Budget {
    share: f64,
    floor: u64,
    started: Instant,
    buckets: [Bucket; WINDOW_SECONDS as usize],
}

#[derive(Debug, Default)]
struct Bucket {
    /// The second (since `started`, plus one: 0 is never used) the counts belong to.
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl Budget {
    pub fn new(share: f64, min_per_second: u32) -> Self {
        Budget {
            share,
            floor: u64::from(min_per_second) * WINDOW_SECONDS,
            started: Instant::now(),
            buckets: Default::default(),
        }
    }

    fn second(&self) -> u64 {
        self.started.elapsed().as_secs() + 1
    }

    fn bucket(&self, second: u64) -> &Bucket {
        let bucket = &self.buckets[usize::try_from(second % WINDOW_SECONDS).unwrap_or(0)];
        let was = bucket.second.load(Ordering::Relaxed);
        if was != second
            && bucket
                .second
                .compare_exchange(was, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            bucket.requests.store(0, Ordering::Relaxed);
            bucket.retries.store(0, Ordering::Relaxed);
        }
        bucket
    }

    /// An item was sent (its first attempt).
    pub fn request(&self) {
        let second = self.second();
        self.bucket(second).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry (or hedge) from the budget; false when it is spent.
    pub fn try_retry(&self) -> bool {
        let now = self.second();
        let (mut requests, mut retries) = (0u64, 0u64);
        for bucket in &self.buckets {
            let second = bucket.second.load(Ordering::Relaxed);
            if second != 0 && second <= now && now - second < WINDOW_SECONDS {
                requests += bucket.requests.load(Ordering::Relaxed);
                retries += bucket.retries.load(Ordering::Relaxed);
            }
        }
        // Precision loss only past 2^52 requests in 10 s.
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let allowed = ((requests as f64) * self.share) as u64;
        if retries >= allowed.max(self.floor) {
            return false;
        }
        self.bucket(now).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{Failure, UpstreamResponse};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            on: vec![RetryOn::Connect, RetryOn::Reset, RetryOn::Status(503)],
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            max_retry_after: Duration::from_secs(2),
            budget: 0.2,
            min_retries_per_second: 0,
        }
    }

    fn answer(status: u16, retry_after: Option<&str>) -> Outcome {
        let mut headers = http::HeaderMap::new();
        if let Some(value) = retry_after {
            headers.insert(http::header::RETRY_AFTER, value.parse().expect("value"));
        }
        Outcome::Response(UpstreamResponse {
            status,
            headers,
            body: bytes::Bytes::new(),
        })
    }

    #[test]
    fn only_what_cannot_have_reached_the_upstream_is_retried_for_any_method() {
        let p = policy();
        let failed = |kind, sent| Outcome::Failed(Failure::new(kind, sent));
        let connect = failed(FailureKind::Connect, Sent::Nothing);
        assert_eq!(reason(&p, &connect, false), Some(RetryOn::Connect));
        let unsent = failed(FailureKind::Connection, Sent::Nothing);
        assert_eq!(reason(&p, &unsent, false), Some(RetryOn::Reset));
        let maybe = failed(FailureKind::Connection, Sent::Maybe);
        assert_eq!(
            reason(&p, &maybe, false),
            None,
            "a POST that may have arrived"
        );
        assert_eq!(reason(&p, &maybe, true), Some(RetryOn::Reset));
        assert_eq!(reason(&p, &answer(503, None), false), None);
        assert_eq!(
            reason(&p, &answer(503, None), true),
            Some(RetryOn::Status(503))
        );
        assert_eq!(reason(&p, &answer(500, None), true), None, "not in `on`");
        let timeout = failed(FailureKind::Timeout, Sent::Maybe);
        assert_eq!(reason(&p, &timeout, true), None, "not in `on`");
        let cut = failed(FailureKind::Connection, Sent::All);
        assert_eq!(reason(&p, &cut, false), None, "a POST that was acted on");
        assert_eq!(
            reason(&p, &cut, true),
            Some(RetryOn::Reset),
            "a cut answer to what may be done twice"
        );
    }

    #[test]
    fn backoff_grows_to_its_cap_and_retry_after_is_honoured_up_to_its_cap() {
        let p = policy();
        for retry in 1..=8 {
            let w = wait(&p, &answer(503, None), retry).expect("waits");
            assert!(w <= Duration::from_millis(10 << (retry - 1)).min(p.max_backoff));
        }
        let asked = wait(&p, &answer(503, Some("1")), 1).expect("waits");
        assert!(asked >= Duration::from_secs(1));
        assert_eq!(
            wait(&p, &answer(503, Some("5")), 1),
            None,
            "over max_retry_after"
        );
        let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
        assert_eq!(wait(&p, &answer(503, Some(&date)), 1), None);
        assert_eq!(retry_after(&answer(503, Some("soon"))), None);
    }

    #[test]
    fn the_budget_is_a_share_of_recent_requests_with_a_floor() {
        let budget = Budget::new(0.2, 0);
        for _ in 0..50 {
            budget.request();
        }
        let granted = (0..100).filter(|_| budget.try_retry()).count();
        assert_eq!(granted, 10, "20% of 50");
        let floor = Budget::new(0.0, 2);
        let granted = (0..100).filter(|_| floor.try_retry()).count();
        assert_eq!(granted, 20, "2 per second over the 10 s window");
    }
}
